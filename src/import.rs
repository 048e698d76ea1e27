//! `agentq import pm2`: a PM2 ecosystem file's `apps` as `[[worker]]` tables.
//!
//! The file is JavaScript (`module.exports = { apps: [...] }`), so `node` evaluates it and prints
//! it as JSON ([`read_ecosystem`]); a `.json` one is read without node. Each app becomes a worker
//! ([`pm2`], pure): a `command` worker running `script` with its `args` (through its
//! `interpreter`, as PM2 would), or a `claude` worker when the script is `claude` itself, its
//! flags mapped to the worker's settings; and PM2's settings that agentq has too (memory, kill
//! timeout, restart policy, folder, environment; README's table). What agentq has no counterpart
//! for, or what cannot be read with certainty, is listed by app and key ([`Imported::notes`]) and
//! left out: an app whose command is not certain is left out whole.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use agentq_core::error::{Error, Result};
use agentq_core::units::{format_duration, format_size, parse_duration};

/// How long node may take to evaluate the file.
const NODE_LIMIT: Duration = Duration::from_secs(60);

/// What node runs: imports the file (CommonJS or an ES module) and prints its export as JSON.
const NODE_SCRIPT: &str = r#"const path = require("path"), url = require("url");
import(url.pathToFileURL(path.resolve(process.argv[1])).href)
  .then(m => { const v = m && m.default !== undefined ? m.default : m; process.stdout.write(JSON.stringify(v === undefined ? null : v)); })
  .catch(e => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });"#;

/// The ecosystem file at `path` as JSON: parsed, for a `.json` file; evaluated by node otherwise.
pub fn read_ecosystem(path: &Path) -> Result<Value> {
    let shown = path.display();
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match extension.as_deref() {
        Some("json") => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
            return serde_json::from_str(&text)
                .map_err(|e| Error::Usage(format!("{shown}: not valid JSON: {e}")));
        }
        Some("yaml" | "yml") => {
            return Err(Error::Usage(format!(
                "{shown}: a YAML ecosystem file is not read; write it as JSON (.json) or JavaScript (.js)"
            )));
        }
        _ => {}
    }
    if !path.is_file() {
        return Err(Error::Usage(format!(
            "{shown}: no such file; give the path of a PM2 ecosystem file (ecosystem.config.js)"
        )));
    }
    let absolute = std::path::absolute(path).map_err(|e| Error::io("resolving", path, e))?;
    let Some(absolute) = absolute.to_str() else {
        return Err(Error::Usage(format!(
            "{shown}: node is given paths as text, and this one is not UTF-8; copy the file to a plainer path"
        )));
    };
    let ran = crate::service::run_tool(&["node", "-e", NODE_SCRIPT, "--", absolute], NODE_LIMIT)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::ProgramMissing {
                program: "node".into(),
                needed_for: format!("read {shown}, which is JavaScript"),
                fix: "install Node.js (as PM2 itself needs), or write the file as JSON and pass the .json".into(),
            },
            _ => Error::io("running node to read", path, e),
        })?;
    if !ran.ok {
        let said: Vec<&str> = ran.stderr.trim().lines().take(8).collect();
        return Err(Error::Usage(format!(
            "{shown}: node could not evaluate it:\n{}",
            said.join("\n")
        )));
    }
    serde_json::from_str(&ran.stdout)
        .map_err(|e| Error::Usage(format!("{shown}: its export is not JSON data: {e}")))
}

/// The workers an ecosystem file makes, and what was left out of them.
#[derive(Debug, Default)]
pub struct Imported {
    pub workers: Vec<Worker>,
    /// What was not carried over, one line each: `app NAME: KEY ...: why`.
    pub notes: Vec<String>,
}

/// One `[[worker]]` as it is written.
#[derive(Debug, Default, Serialize)]
pub struct Worker {
    pub name: String,
    pub agent: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claude_bin: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permission_mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_tools: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disallowed_tools: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub append_system_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_budget_usd: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub add_dirs: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dangerously_skip_permissions: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autorestart: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_restarts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_uptime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart_delay: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

/// The workers as TOML: a `[[worker]]` table each.
pub fn to_toml(workers: &[Worker]) -> String {
    #[derive(Serialize)]
    struct File<'a> {
        worker: &'a [Worker],
    }
    let mut text = toml::to_string(&File { worker: workers }).expect("workers are TOML");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// PM2's settings that have no counterpart in agentq, with why (or what to do instead).
const NO_COUNTERPART: &[(&str, &str)] = &[
    (
        "exec_mode",
        "Node's cluster mode has no counterpart: a worker runs one agent process",
    ),
    (
        "instances",
        "a worker runs one task at a time: define more [[worker]]s, or route tasks to the [pool] (max_workers)",
    ),
    ("cron_restart", "agentq restarts nothing on a schedule"),
    ("watch", "agentq restarts nothing when files change"),
    ("ignore_watch", "agentq restarts nothing when files change"),
    ("watch_options", "agentq restarts nothing when files change"),
    (
        "exp_backoff_restart_delay",
        "agentq's restart_delay already doubles with each quick death: set restart_delay",
    ),
    ("namespace", "agentq's workers are named in one agentq.toml"),
    (
        "out_file",
        "agentq keeps each task's agent log in .agentq/logs/<worker>/, its result in .output/<worker>/",
    ),
    (
        "error_file",
        "agentq keeps each task's agent log in .agentq/logs/<worker>/, its result in .output/<worker>/",
    ),
    (
        "log_file",
        "agentq keeps each task's agent log in .agentq/logs/<worker>/, its result in .output/<worker>/",
    ),
    (
        "output",
        "agentq keeps each task's agent log in .agentq/logs/<worker>/, its result in .output/<worker>/",
    ),
    (
        "error",
        "agentq keeps each task's agent log in .agentq/logs/<worker>/, its result in .output/<worker>/",
    ),
    (
        "log",
        "agentq keeps each task's agent log in .agentq/logs/<worker>/, its result in .output/<worker>/",
    ),
    ("merge_logs", "agentq keeps each task's agent log apart"),
    ("combine_logs", "agentq keeps each task's agent log apart"),
    ("log_date_format", "agentq's logs carry their times"),
    ("time", "agentq's logs carry their times"),
];

/// PM2's defaults, which agentq has too: nothing to say of them.
fn is_pm2_default(key: &str, value: &Value) -> bool {
    match key {
        "instances" => value == 1 || value == "1",
        "exec_mode" => value == "fork" || value == "fork_mode",
        "watch" | "merge_logs" | "combine_logs" | "time" => value == false,
        _ => false,
    }
}

/// The workers of an ecosystem (`{ apps: [...] }`, or the list itself), whose file is in `base`
/// (relative paths in it are relative to that folder).
pub fn pm2(ecosystem: &Value, base: &Path, file: &str) -> Result<Imported> {
    let apps = match ecosystem {
        Value::Array(apps) => apps,
        Value::Object(o) => match o.get("apps") {
            Some(Value::Array(apps)) => apps,
            Some(Value::Object(_)) => {
                return pm2(&Value::Array(vec![o["apps"].clone()]), base, file);
            }
            _ => &Vec::new(),
        },
        _ => &Vec::new(),
    };
    if apps.is_empty() {
        return Err(Error::Usage(format!(
            "{file} has no apps: a PM2 ecosystem file exports {{ apps: [{{ name, script, ... }}] }}"
        )));
    }
    let mut imported = Imported::default();
    for (n, app) in apps.iter().enumerate() {
        let Value::Object(app) = app else {
            imported
                .notes
                .push(format!("app #{}: not an object; left out", n + 1));
            continue;
        };
        let mut notes = Vec::new();
        let worker = import_app(app, base, &mut notes);
        let label = match &worker {
            Some(w) => w.name.clone(),
            None => app
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{}", n + 1), str::to_string),
        };
        imported
            .notes
            .extend(notes.into_iter().map(|note| format!("app {label}: {note}")));
        if let Some(worker) = worker {
            if imported.workers.iter().any(|w| w.name == worker.name) {
                imported.notes.push(format!(
                    "app {label}: an app before it is imported under that name; left out"
                ));
            } else {
                imported.workers.push(worker);
            }
        }
    }
    Ok(imported)
}

/// One app as a worker, or `None` when what it runs is not certain; `notes` gets what was left
/// out.
fn import_app(
    app: &serde_json::Map<String, Value>,
    base: &Path,
    notes: &mut Vec<String>,
) -> Option<Worker> {
    let text = |key: &str| app.get(key).and_then(Value::as_str);
    let cwd = text("cwd").map(|c| absolute(base, c));
    let folder = cwd.clone().unwrap_or_else(|| base.to_path_buf());

    let Some(script) = text("script").filter(|s| !s.trim().is_empty()) else {
        notes.push("no script, so nothing to run; left out".into());
        return None;
    };
    let name = match text("name") {
        Some(name) => name.to_string(),
        // PM2 names an app after its script.
        None => Path::new(script.split_whitespace().next().unwrap_or(script))
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    let worker_name = worker_name(&name);
    if worker_name.is_empty() {
        notes.push(format!(
            "name {name:?} has nothing a worker's name can hold; left out"
        ));
        return None;
    }
    if worker_name != name {
        notes.push(format!("name {name:?} becomes the worker {worker_name:?}"));
    }

    let argv = match command_of(app, script, &folder) {
        Ok(argv) => argv,
        Err(why) => {
            notes.push(format!("{why}; left out"));
            return None;
        }
    };
    let mut worker = Worker {
        name: worker_name,
        cwd: cwd.map(|c| c.display().to_string()),
        ..Worker::default()
    };
    let program = Path::new(&argv[0]);
    let stem = program
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if matches!(stem.as_str(), "claude" | "claude.exe" | "claude.cmd") {
        worker.agent = "claude";
        if argv[0].contains(['/', '\\']) {
            worker.claude_bin = Some(argv[0].clone());
        }
        claude_flags(&argv[1..], &folder, &mut worker, notes);
    } else {
        worker.agent = "command";
        worker.command = Some(argv);
    }

    for (key, value) in app {
        match key.as_str() {
            "name" | "script" | "args" | "interpreter" | "exec_interpreter" | "interpreter_args"
            | "node_args" | "cwd" => {}
            "env" => match value {
                Value::Object(vars) => {
                    for (var, value) in vars {
                        match value {
                            Value::String(s) => {
                                worker.env.insert(var.clone(), s.clone());
                            }
                            Value::Number(_) | Value::Bool(_) => {
                                worker.env.insert(var.clone(), value.to_string());
                            }
                            _ => notes.push(format!(
                                "env {var} is not a string, number or boolean; left out"
                            )),
                        }
                    }
                }
                _ => notes.push("env is not an object of variables; left out".into()),
            },
            "max_memory_restart" => match pm2_size(value) {
                Some(bytes) => worker.max_memory = Some(format_size(bytes)),
                None => notes.push(format!(
                    "max_memory_restart = {value} is not a size PM2 reads (\"200M\", \"1G\"); left out"
                )),
            },
            "kill_timeout" | "restart_delay" => match milliseconds(value) {
                Some(d) if key == "kill_timeout" => worker.kill_timeout = Some(format_duration(d)),
                Some(d) => worker.restart_delay = Some(format_duration(d)),
                None => notes.push(format!(
                    "{key} = {value} is not a number of milliseconds; left out"
                )),
            },
            "min_uptime" => match uptime(value) {
                Some(d) => worker.min_uptime = Some(format_duration(d)),
                None => notes.push(format!(
                    "min_uptime = {value} is not a duration PM2 reads (milliseconds, or \"10s\"); left out"
                )),
            },
            "max_restarts" => match value.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) => worker.max_restarts = Some(n),
                None => notes.push(format!(
                    "max_restarts = {value} is not a whole number; left out"
                )),
            },
            "autorestart" => match value.as_bool() {
                Some(b) => worker.autorestart = Some(b),
                None => notes.push(format!("autorestart = {value} is not true or false; left out")),
            },
            key if is_pm2_default(key, value) => {}
            key if key.starts_with("env_") => notes.push(format!(
                "{key}: PM2's environments have no counterpart; copy the one you start with into env"
            )),
            key => match NO_COUNTERPART.iter().find(|(k, _)| *k == key) {
                Some((_, why)) => notes.push(format!("{key} = {value}: {why}")),
                None => notes.push(format!("{key} = {value}: no counterpart in agentq")),
            },
        }
    }
    Some(worker)
}

/// A name a worker may have: letters, digits, '-' and '_' (others become '-'), at most 64, not
/// starting with '-'.
fn worker_name(name: &str) -> String {
    let mut clean = String::new();
    for c in name.trim().chars() {
        if c.is_ascii_alphanumeric() || c == '_' {
            clean.push(c);
        } else if !clean.ends_with('-') {
            clean.push('-');
        }
    }
    let clean: String = clean.trim_matches('-').chars().take(64).collect();
    match agentq_daemon::config::validate_name(&clean) {
        Ok(()) => clean,
        // A reserved name ("pool"): kept apart from it.
        Err(_) if !clean.is_empty() => format!("{clean}-pm2"),
        Err(_) => String::new(),
    }
}

/// The command line PM2 runs for an app: its interpreter (given, or by the script's extension, as
/// PM2 picks it) and that interpreter's arguments, the script, then `args`. An `Err` says why it
/// is not certain.
fn command_of(
    app: &serde_json::Map<String, Value>,
    script: &str,
    folder: &Path,
) -> std::result::Result<Vec<String>, String> {
    // A script that is no file but has spaces is a command line ("claude -p"), as PM2 runs it.
    let mut words = if script.contains(char::is_whitespace) && !folder.join(script).is_file() {
        split_words(script).map_err(|why| format!("script {script:?}: {why}"))?
    } else {
        vec![script.to_string()]
    };
    let program = words[0].clone();
    // A bare name is looked up on PATH unless it is a file there, or a script's name (PM2 finds
    // `app.js` in the app's folder, whether or not it is there yet).
    let extension = Path::new(&program)
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let on_path = !program.contains(['/', '\\'])
        && !folder.join(&program).is_file()
        && extension
            .as_deref()
            .is_none_or(|e| matches!(e, "exe" | "cmd" | "bat" | "com"));
    if !on_path {
        words[0] = absolute(folder, &program).display().to_string();
    }
    let list = |key: &str| -> std::result::Result<Vec<String>, String> {
        match app.get(key) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => split_words(s).map_err(|why| format!("{key} {s:?}: {why}")),
            Some(Value::Array(items)) => items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(_) | Value::Bool(_) => Ok(i.to_string()),
                    other => Err(format!("{key} holds {other}, not a word")),
                })
                .collect(),
            Some(other) => Err(format!("{key} = {other} is neither text nor a list")),
        }
    };
    let args = list("args")?;
    let interpreter = app
        .get("interpreter")
        .or_else(|| app.get("exec_interpreter"))
        .and_then(Value::as_str);
    let interpreter = match interpreter {
        Some("none") | Some("") => None,
        Some(given) => Some(given.to_string()),
        None if on_path => None,
        None => match extension.as_deref() {
            Some("js" | "cjs" | "mjs") => Some("node".into()),
            Some("sh") => Some("bash".into()),
            Some("py") => Some("python".into()),
            Some("rb") => Some("ruby".into()),
            Some("php") => Some("php".into()),
            Some("pl") => Some("perl".into()),
            Some(other @ ("ts" | "coffee" | "ls" | "tsx" | "jsx")) => {
                return Err(format!(
                    "PM2 picks the interpreter of a .{other} script by what is installed; set interpreter in the ecosystem file, or write the worker's command by hand"
                ));
            }
            _ => None,
        },
    };
    let mut argv = Vec::new();
    if let Some(interpreter) = interpreter {
        argv.push(interpreter);
        let mut interpreter_args = list("interpreter_args")?;
        interpreter_args.extend(list("node_args")?);
        argv.extend(interpreter_args);
    }
    argv.extend(words);
    argv.extend(args);
    Ok(argv)
}

/// Words of a command line as a shell splits them (single and double quotes, backslashes); an
/// `Err` for what only a shell would do (pipes, redirections, variables, `&&`...), which agentq
/// does not run a shell for.
fn split_words(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("a quote is not closed".into()),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => w.extend(['\\', c]),
                            None => return Err("a quote is not closed".into()),
                        },
                        Some('$' | '`') => {
                            return Err("it needs a shell (a variable or a command inside)".into());
                        }
                        Some(c) => w.push(c),
                        None => return Err("a quote is not closed".into()),
                    }
                }
            }
            '\\' => word.get_or_insert_with(String::new).extend(chars.next()),
            '|' | '&' | ';' | '<' | '>' | '$' | '`' | '(' | ')' | '*' | '?' => {
                return Err(format!(
                    "it needs a shell ({c:?}), which agentq does not run a command through"
                ));
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    if words.is_empty() {
        return Err("it is empty".into());
    }
    Ok(words)
}

/// Claude's flags on a PM2 command line, as a Claude worker's settings; what agentq passes
/// itself, or has no setting for, goes to `notes`.
fn claude_flags(args: &[String], folder: &Path, worker: &mut Worker, notes: &mut Vec<String>) {
    let mut args = args.iter().peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let takes_value = matches!(
            flag,
            "--model"
                | "--permission-mode"
                | "--allowedTools"
                | "--allowed-tools"
                | "--disallowedTools"
                | "--disallowed-tools"
                | "--append-system-prompt"
                | "--max-turns"
                | "--max-budget-usd"
                | "--add-dir"
                | "--output-format"
                | "--input-format"
                | "--resume"
                | "-r"
                | "--session-id"
        );
        let value = if takes_value {
            match inline.or_else(|| args.next().cloned()) {
                Some(v) => Some(v),
                None => {
                    notes.push(format!("claude's {flag} has no value; left out"));
                    continue;
                }
            }
        } else {
            None
        };
        let value_str = value.clone().unwrap_or_default();
        let tools = |v: &str| -> Vec<String> {
            v.split([',', ' '])
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect()
        };
        match flag {
            "-p" | "--print" => {}
            "--model" => worker.model = value,
            "--permission-mode" => worker.permission_mode = value,
            "--allowedTools" | "--allowed-tools" => worker
                .allowed_tools
                .get_or_insert_with(Vec::new)
                .extend(tools(&value_str)),
            "--disallowedTools" | "--disallowed-tools" => worker
                .disallowed_tools
                .get_or_insert_with(Vec::new)
                .extend(tools(&value_str)),
            "--append-system-prompt" => worker.append_system_prompt = value,
            "--max-turns" => match value_str.parse() {
                Ok(n) => worker.max_turns = Some(n),
                Err(_) => notes.push(format!(
                    "claude's --max-turns {value_str:?} is not a whole number; left out"
                )),
            },
            "--max-budget-usd" => match value_str.parse() {
                Ok(n) => worker.max_budget_usd = Some(n),
                Err(_) => notes.push(format!(
                    "claude's --max-budget-usd {value_str:?} is not a number; left out"
                )),
            },
            "--add-dir" => worker
                .add_dirs
                .get_or_insert_with(Vec::new)
                .push(absolute(folder, &value_str).display().to_string()),
            "--dangerously-skip-permissions" => worker.dangerously_skip_permissions = Some(true),
            "--output-format" | "--input-format" | "--verbose" => notes.push(format!(
                "claude's {flag}: agentq chooses how it talks to claude itself; left out"
            )),
            "--resume" | "-r" | "--session-id" | "--continue" | "-c" => notes.push(format!(
                "claude's {flag}: agentq keeps the worker's conversation itself (session = \"resume\"); left out"
            )),
            flag if flag.starts_with('-') => notes.push(format!(
                "claude's {flag} has no agentq setting; left out (add it to extra_args if it takes no value of its own)"
            )),
            prompt => notes.push(format!(
                "claude's prompt {prompt:?}: agentq gives each task's prompt itself (agentq submit, .queue/<worker>/); left out"
            )),
        }
    }
}

/// `path` against `base` unless it is absolute.
fn absolute(base: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path).components().collect()
    }
}

/// A size as PM2's `max_memory_restart` takes it: bytes, or a number and K, M or G (powers of
/// 1024).
fn pm2_size(value: &Value) -> Option<u64> {
    if let Some(n) = value.as_u64() {
        return Some(n);
    }
    let text = value.as_str()?.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        _ => return None,
    };
    Some((number * factor as f64) as u64)
}

/// A number of milliseconds, written as a number or as text.
fn milliseconds(value: &Value) -> Option<Duration> {
    match value {
        Value::Number(n) => n.as_u64().map(Duration::from_millis),
        Value::String(s) => s.trim().parse().ok().map(Duration::from_millis),
        _ => None,
    }
}

/// `min_uptime`: milliseconds, or a duration with its unit ("10s", "1m").
fn uptime(value: &Value) -> Option<Duration> {
    milliseconds(value).or_else(|| parse_duration(value.as_str()?).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A path of these tests as the platform writes it (`\\srv\\eco\\...` on Windows).
    fn native(path: &str) -> String {
        Path::new(path)
            .components()
            .collect::<PathBuf>()
            .to_string_lossy()
            .into_owned()
    }
    use serde_json::json;

    fn import(apps: Value) -> Imported {
        pm2(
            &json!({ "apps": apps }),
            Path::new("/srv/eco"),
            "ecosystem.config.js",
        )
        .unwrap()
    }

    #[test]
    fn an_app_becomes_a_command_worker_with_pm2s_settings_that_agentq_has() {
        let got = import(json!([{
            "name": "indexer",
            "script": "bin/index.js",
            "args": "--fast 'two words'",
            "node_args": ["--max-old-space-size=512"],
            "cwd": "work",
            "env": { "MODE": "batch", "N": 3, "ON": true },
            "max_memory_restart": "300M",
            "kill_timeout": 5000,
            "min_uptime": "10s",
            "max_restarts": 10,
            "restart_delay": 1500,
            "autorestart": false,
            "instances": 1,
            "exec_mode": "fork",
            "watch": false,
        }]));
        assert_eq!(got.notes, Vec::<String>::new());
        let w = &got.workers[0];
        assert_eq!((w.name.as_str(), w.agent), ("indexer", "command"));
        assert_eq!(
            w.command.as_deref().unwrap(),
            [
                "node",
                "--max-old-space-size=512",
                native("/srv/eco/work/bin/index.js").as_str(),
                "--fast",
                "two words"
            ]
        );
        assert_eq!(w.cwd.as_deref(), Some(native("/srv/eco/work").as_str()));
        assert_eq!(w.max_memory.as_deref(), Some("300MiB"));
        assert_eq!(w.kill_timeout.as_deref(), Some("5s"));
        assert_eq!(w.min_uptime.as_deref(), Some("10s"));
        assert_eq!(w.restart_delay.as_deref(), Some("1s 500ms"));
        assert_eq!((w.max_restarts, w.autorestart), (Some(10), Some(false)));
        assert_eq!(w.env["N"], "3");
        assert_eq!(w.env["ON"], "true");
        let toml = to_toml(&got.workers);
        assert!(
            toml.starts_with("[[worker]]\nname = \"indexer\"\nagent = \"command\"\n"),
            "{toml}"
        );
        assert!(
            toml.contains("\n[worker.env]\nMODE = \"batch\"\n"),
            "{toml}"
        );
    }

    #[test]
    fn a_claude_invocation_becomes_a_claude_worker() {
        let got = import(json!([{
            "name": "coder",
            "script": "claude",
            "args": ["-p", "--model", "opus", "--dangerously-skip-permissions",
                     "--allowedTools", "Read,Edit", "--add-dir=../shared", "--output-format", "json",
                     "--resume", "abc", "--frobnicate", "fix the bug"],
        }, {
            "name": "direct",
            "script": "/opt/bin/claude -p --max-turns 5",
            "interpreter": "none",
        }]));
        let c = &got.workers[0];
        assert_eq!(c.agent, "claude");
        assert_eq!(c.command, None);
        assert_eq!(c.claude_bin, None, "claude on PATH");
        assert_eq!(c.model.as_deref(), Some("opus"));
        assert_eq!(c.dangerously_skip_permissions, Some(true));
        assert_eq!(c.allowed_tools.as_deref().unwrap(), ["Read", "Edit"]);
        assert_eq!(
            c.add_dirs.as_deref().unwrap(),
            [native("/srv/eco/../shared")]
        );
        let notes = got.notes.join("\n");
        for part in [
            "app coder: claude's --output-format: agentq chooses",
            "app coder: claude's --resume: agentq keeps the worker's conversation",
            "app coder: claude's --frobnicate has no agentq setting",
            "app coder: claude's prompt \"fix the bug\"",
        ] {
            assert!(notes.contains(part), "{part} not in:\n{notes}");
        }
        let d = &got.workers[1];
        assert_eq!(
            d.claude_bin.as_deref(),
            Some(native("/opt/bin/claude").as_str())
        );
        assert_eq!(d.max_turns, Some(5));
    }

    #[test]
    fn what_agentq_has_not_is_listed_by_app_and_key_and_an_uncertain_app_left_out() {
        let got = import(json!([
            { "name": "web", "script": "server.js", "instances": 4, "exec_mode": "cluster",
              "cron_restart": "0 * * * *", "watch": ["src"], "env_production": {"X": "1"},
              "vizion": false },
            { "name": "piped", "script": "run.sh", "args": "a | tee log" },
            { "name": "typed", "script": "main.ts" },
            { "script": "" },
            { "name": "my app.v2", "script": "/usr/bin/worker" },
            { "name": "pool", "script": "/usr/bin/worker" },
            { "name": "web", "script": "/usr/bin/other" },
        ]));
        let names: Vec<&str> = got.workers.iter().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["web", "my-app-v2", "pool-pm2"]);
        let notes = got.notes.join("\n");
        for part in [
            "app web: instances = 4: a worker runs one task at a time",
            "app web: exec_mode = \"cluster\": Node's cluster mode has no counterpart",
            "app web: cron_restart = \"0 * * * *\": agentq restarts nothing on a schedule",
            "app web: watch = [\"src\"]: agentq restarts nothing when files change",
            "app web: env_production: PM2's environments have no counterpart",
            "app web: vizion = false: no counterpart in agentq",
            "app piped: args \"a | tee log\": it needs a shell ('|')",
            "app typed: PM2 picks the interpreter of a .ts script",
            "app #4: no script, so nothing to run; left out",
            "app my-app-v2: name \"my app.v2\" becomes the worker \"my-app-v2\"",
            "app web: an app before it is imported under that name; left out",
        ] {
            assert!(notes.contains(part), "{part} not in:\n{notes}");
        }
    }

    #[test]
    fn an_ecosystem_without_apps_is_refused() {
        for eco in [json!({}), json!({"apps": []}), json!(3)] {
            let e = pm2(&eco, Path::new("/"), "e.js").unwrap_err().to_string();
            assert!(e.contains("e.js has no apps"), "{e}");
        }
    }

    #[test]
    fn sizes_and_times_as_pm2_writes_them() {
        assert_eq!(pm2_size(&json!("100M")), Some(100 << 20));
        assert_eq!(pm2_size(&json!("1.5G")), Some(3 << 29));
        assert_eq!(pm2_size(&json!("200K")), Some(200 << 10));
        assert_eq!(pm2_size(&json!(4096)), Some(4096));
        assert_eq!(pm2_size(&json!("lots")), None);
        assert_eq!(uptime(&json!(1000)), Some(Duration::from_secs(1)));
        assert_eq!(uptime(&json!("60s")), Some(Duration::from_secs(60)));
        assert_eq!(uptime(&json!("1h")), Some(Duration::from_secs(3600)));
        assert_eq!(
            split_words(r#"a "b c" 'd $e' f\ g"#).unwrap(),
            ["a", "b c", "d $e", "f g"]
        );
        assert!(split_words("a && b").is_err());
        assert!(split_words("\"$HOME\"").is_err());
    }
}
