//! Claude Code (`agent = "claude"`): the command line, the result, the session, the environment,
//! and its long-lived stream-json mode.
//!
//! Everything here is plain code over values; the runner (`worker.rs`) does the I/O. Facts about
//! the CLI this relies on were checked against the pinned version (see the README's test command):
//! - the prompt is read from stdin with `-p`; nothing else may be positional, since a stray
//!   positional argument silently *replaces* the stdin prompt. Every value therefore travels as one
//!   `--flag=value` argument, which also keeps a value starting with `-` from being read as a flag;
//! - `--session-id <uuid>` starts a conversation under an id the caller chose, `--resume <id>`
//!   continues it, and a resume of an unknown id fails with `No conversation found with session ID`;
//! - `--output-format json` prints one result object; its fields are read tolerantly;
//!   `--output-format stream-json --verbose` prints the run as it goes, one event per line
//!   (`system` init, `assistant` and `user` messages with text, thinking, tool calls and their
//!   results), ending with that same result object as a line: exec mode uses it, so that a
//!   task's transcript is live and its idle watchdog has something to watch;
//! - `--input-format stream-json --output-format stream-json --verbose` stays up and serves one
//!   user message per line, each ending with a `result` line; a `control_request` of subtype
//!   `interrupt` ends the task in flight with a result within milliseconds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::transcript::{
    Kind, Note, Transcribe, not_json, session_started, summarise_input, text_of,
};

use super::{
    Conversation, Counted, Driver, End, Environment, Join, Limit, Line, LongLived, Output, Package,
    Read, Reply, Reported, SessionPolicy, parse_reset,
};
use agentq_core::domain::Cause;

/// How a worker runs Claude.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One `claude -p --output-format stream-json` process per task.
    Exec,
    /// One long-lived stream-json process per worker.
    Persistent,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// From config; `AGENTQ_CLAUDE_BIN` overrides it, and `claude` on PATH is the default.
    pub bin: Option<PathBuf>,
    pub mode: Mode,
    pub model: Option<String>,
    pub permission_mode: Option<String>,
    pub allowed_tools: Vec<String>,
    pub disallowed_tools: Vec<String>,
    pub append_system_prompt: Option<String>,
    pub max_turns: Option<u32>,
    pub max_budget_usd: Option<f64>,
    pub add_dirs: Vec<PathBuf>,
    pub extra_args: Vec<String>,
    pub skip_permissions: bool,
    pub session: SessionPolicy,
    /// Pause the worker for the rest of the (local) day once it has spent this much.
    pub budget_usd_per_day: Option<f64>,
    /// Persistent mode: replace the process (resuming its conversation) after this many tasks.
    pub recycle_after_tasks: Option<u32>,
}

impl Settings {
    /// Claude with the CLI's own defaults: exec mode, one conversation resumed for ever.
    pub const DEFAULT: Settings = Settings {
        bin: None,
        mode: Mode::Exec,
        model: None,
        permission_mode: None,
        allowed_tools: Vec::new(),
        disallowed_tools: Vec::new(),
        append_system_prompt: None,
        max_turns: None,
        max_budget_usd: None,
        add_dirs: Vec::new(),
        extra_args: Vec::new(),
        skip_permissions: false,
        session: SessionPolicy::Resume,
        budget_usd_per_day: None,
        recycle_after_tasks: None,
    };
}

impl Default for Settings {
    fn default() -> Self {
        Settings::DEFAULT
    }
}

/// The npm package; scripts/test installs the tested version.
pub const PACKAGE: Package = Package {
    title: "Claude Code",
    bin_variable: "AGENTQ_CLAUDE_BIN",
    install: "npm install -g @anthropic-ai/claude-code",
    tested_version: "2.1.330",
    credentials: &[
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "CLAUDE_CODE_OAUTH_TOKEN",
    ],
};

impl Driver for Settings {
    fn name(&self) -> &'static str {
        "claude"
    }

    fn package(&self) -> Option<&'static Package> {
        Some(&PACKAGE)
    }

    fn configured_bin(&self) -> Option<&PathBuf> {
        self.bin.as_ref()
    }

    fn conversation(&self) -> Option<Conversation> {
        Some(Conversation {
            policy: self.session,
            named_by_caller: true,
        })
    }

    fn command(&self, program: &Path, join: Option<&Join>, spent_usd: f64) -> Vec<String> {
        exec_argv(
            program,
            &self.budgeted(spent_usd),
            join.unwrap_or(&Join::New),
        )
    }

    /// Without the parent session's markers, and on Windows with Git Bash found for it (finding
    /// it by hand cost the seeds hours).
    fn environment(&self, parent: &BTreeMap<String, String>) -> Environment {
        #[allow(unused_mut)]
        let mut env = Environment::default().removing(parent, MARKERS, MARKER_PREFIXES);
        #[cfg(windows)]
        if !parent.contains_key("CLAUDE_CODE_GIT_BASH_PATH")
            && let Some(bash) = find_git_bash(parent, &|p| std::path::Path::new(p).is_file())
        {
            env.set.insert("CLAUDE_CODE_GIT_BASH_PATH".into(), bash);
        }
        env
    }

    /// Its stream-json output is a stream of events ending with the result.
    fn output_is_a_stream(&self) -> bool {
        true
    }

    /// The CLI has been seen to hang after printing its result: the result line is final.
    fn final_line(&self) -> Option<fn(&str) -> bool> {
        Some(ClaudeResult::is_result_line)
    }

    fn read(&self, out: &Output) -> Read {
        match ClaudeResult::from_exec_stdout(out.stdout) {
            // stream-json ends a failed resume with an error result that says so.
            Some(result) if result.is_error && conversation_gone(out.stderr, &result.text) => {
                Read::Gone
            }
            Some(result) => Read::Reply(result.reply(out.exit_code.unwrap_or(0), out.now)),
            None if conversation_gone(out.stderr, out.stdout) => Read::Gone,
            None => Read::Nothing,
        }
    }

    fn long_lived(&self) -> Option<&dyn LongLived> {
        (self.mode == Mode::Persistent).then_some(self as &dyn LongLived)
    }

    fn transcriber(&self) -> Box<dyn Transcribe> {
        Box::new(Transcriber::default())
    }

    fn daily_budget_usd(&self) -> Option<f64> {
        self.budget_usd_per_day
    }

    fn warnings(&self, _idle_timeout: Option<std::time::Duration>) -> Vec<String> {
        let mut out = Vec::new();
        if self.skip_permissions {
            out.push(
                "runs claude with --dangerously-skip-permissions: it may run any tool without asking"
                    .to_string(),
            );
        }
        out
    }
}

impl LongLived for Settings {
    fn command(&self, program: &Path, join: &Join, spent_usd: f64) -> Vec<String> {
        let mut argv = vec![
            program.to_string_lossy().into_owned(),
            "-p".into(),
            "--input-format=stream-json".into(),
            "--output-format=stream-json".into(),
            "--verbose".into(),
        ];
        push_common(&mut argv, &self.budgeted(spent_usd), join);
        argv
    }

    fn task_line(&self, prompt: &str) -> String {
        json!({ "type": "user", "message": { "role": "user", "content": prompt } }).to_string()
    }

    fn interrupt_line(&self, n: u64) -> String {
        json!({
            "type": "control_request",
            "request_id": format!("agentq_{n}"),
            "request": { "subtype": "interrupt" }
        })
        .to_string()
    }

    fn read_line(&self, line: &str, now: chrono::DateTime<chrono::Local>) -> Line {
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            return Line::Other;
        };
        if let Some(result) = ClaudeResult::from_value(&value) {
            return Line::Reply(result.reply(0, now));
        }
        if let Some(limit) = rate_limit_of(&value) {
            return Line::Limit(limit);
        }
        match value.get("session_id").and_then(Value::as_str) {
            Some(id) => Line::Session(id.to_string()),
            None => Line::Other,
        }
    }

    fn gone(&self, stderr: &str, text: &str) -> bool {
        conversation_gone(stderr, text)
    }

    fn recycle_after_tasks(&self) -> Option<u32> {
        self.recycle_after_tasks
    }

    fn budget_usd(&self) -> Option<f64> {
        self.max_budget_usd
    }
}

impl Settings {
    /// The CLI checks `--max-budget-usd` against the whole conversation's cost: the budget of one
    /// task is on top of what the conversation has spent.
    fn budgeted(&self, spent_usd: f64) -> Settings {
        Settings {
            max_budget_usd: self.max_budget_usd.map(|b| b + spent_usd),
            ..self.clone()
        }
    }
}

/// A `rate_limit_event` that says the limit rejected the request, with when it resets.
pub fn rate_limit_of(v: &Value) -> Option<Limit> {
    if v.get("type").and_then(Value::as_str) != Some("rate_limit_event") {
        return None;
    }
    let info = v.get("rate_limit_info").unwrap_or(v);
    if info.get("status").and_then(Value::as_str) != Some("rejected") {
        return None;
    }
    let until = info
        .get("resetsAt")
        .or_else(|| info.get("resets_at"))
        .and_then(Value::as_i64)
        .map(|n| if n > 100_000_000_000 { n } else { n * 1000 });
    Some(Limit {
        until,
        message: "usage limit reached (rate_limit_event)".into(),
    })
}

/// The command line of one exec-mode task (the prompt goes to stdin).
pub fn exec_argv(bin: &Path, settings: &Settings, join: &Join) -> Vec<String> {
    let mut argv = vec![
        bin.to_string_lossy().into_owned(),
        "-p".into(),
        "--output-format=stream-json".into(),
        "--verbose".into(),
    ];
    push_common(&mut argv, settings, join);
    argv
}

/// The flags both modes share: conversation, then the worker's settings.
fn push_common(argv: &mut Vec<String>, s: &Settings, join: &Join) {
    let mut flag = |name: &str, value: &str| argv.push(format!("--{name}={value}"));
    match join {
        Join::Start(id) => flag("session-id", id),
        Join::Resume(id) => flag("resume", id),
        // Claude names a new conversation itself when no id is given.
        Join::New => {}
    }
    if let Some(m) = &s.model {
        flag("model", m);
    }
    if let Some(m) = &s.permission_mode {
        flag("permission-mode", m);
    }
    for t in &s.allowed_tools {
        flag("allowed-tools", t);
    }
    for t in &s.disallowed_tools {
        flag("disallowed-tools", t);
    }
    if let Some(p) = &s.append_system_prompt {
        flag("append-system-prompt", p);
    }
    if let Some(n) = s.max_turns {
        flag("max-turns", &n.to_string());
    }
    if let Some(b) = s.max_budget_usd {
        flag("max-budget-usd", &b.to_string());
    }
    for d in &s.add_dirs {
        flag("add-dir", &d.to_string_lossy());
    }
    if s.skip_permissions {
        argv.push("--dangerously-skip-permissions".into());
    }
    argv.extend(s.extra_args.iter().cloned());
}

/// What a result object says. Every field may be missing in some version.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClaudeResult {
    pub text: String,
    pub is_error: bool,
    pub subtype: Option<String>,
    pub session_id: Option<String>,
    pub total_cost_usd: Option<f64>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub num_turns: Option<u64>,
    pub duration_ms: Option<u64>,
    pub api_error_status: Option<i64>,
}

impl ClaudeResult {
    /// Reads a `type: "result"` object; `None` if `value` is not one.
    pub fn from_value(v: &Value) -> Option<ClaudeResult> {
        if v.get("type").and_then(Value::as_str) != Some("result") {
            return None;
        }
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let num = |k: &str| v.get(k).and_then(Value::as_u64);
        let usage = v.get("usage");
        // Input counts what the model read: fresh input plus cache reads and writes.
        let input_tokens = usage.map(|u| {
            [
                "input_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
            ]
            .iter()
            .filter_map(|k| u.get(*k).and_then(Value::as_u64))
            .sum()
        });
        // Some error results have no `result` text but an `errors` list.
        let errors = v
            .get("errors")
            .and_then(Value::as_array)
            .map(|list| {
                list.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .filter(|e| !e.is_empty());
        Some(ClaudeResult {
            text: text("result")
                .filter(|t| !t.is_empty())
                .or(errors)
                .unwrap_or_default(),
            is_error: v.get("is_error").and_then(Value::as_bool).unwrap_or(false),
            subtype: text("subtype"),
            session_id: text("session_id"),
            total_cost_usd: v.get("total_cost_usd").and_then(Value::as_f64),
            input_tokens,
            output_tokens: usage
                .and_then(|u| u.get("output_tokens"))
                .and_then(Value::as_u64),
            num_turns: num("num_turns"),
            duration_ms: num("duration_ms"),
            api_error_status: v.get("api_error_status").and_then(Value::as_i64),
        })
    }

    /// Finds the result in exec mode's stdout: one JSON object, though a version that prints
    /// anything around it (a warning line) is tolerated by taking the last line that parses.
    pub fn from_exec_stdout(stdout: &str) -> Option<ClaudeResult> {
        if let Some(r) = serde_json::from_str::<Value>(stdout.trim())
            .ok()
            .as_ref()
            .and_then(Self::from_value)
        {
            return Some(r);
        }
        stdout
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
            .find_map(|v| Self::from_value(&v))
    }

    /// Whether a line of output is the result line the CLI ends with.
    pub fn is_result_line(line: &str) -> bool {
        super::is_json_of_type(line, &["result"])
    }

    /// The result as a reply: a usage limit, a failure (an error result, or any result of a
    /// process that exited with an error), or done.
    pub fn reply(self, exit_code: i32, now: chrono::DateTime<chrono::Local>) -> Reply {
        let end = if let Some(limit) = limit_of(&self, now) {
            End::Limited(limit)
        } else if self.is_error || exit_code != 0 {
            self.failed()
        } else {
            End::Done
        };
        Reply {
            usage: Reported {
                cost_usd: self.total_cost_usd.map(Counted::Conversation),
                input_tokens: self.input_tokens.map(Counted::Run),
                output_tokens: self.output_tokens.map(Counted::Run),
                turns: self.num_turns,
            },
            session: self.session_id,
            text: self.text,
            end,
        }
    }

    /// An error result as a failure: a request the API refused as malformed (400, 413) is bad
    /// input, refused credentials (401, 403) are the worker's setup; limits the task itself hit
    /// would be hit again. Anything else may pass.
    fn failed(&self) -> End {
        let (reason, retryable) = self.failure();
        let cause = match self.api_error_status {
            Some(400 | 413) => Cause::BadInput,
            Some(401 | 403) => Cause::Config,
            _ => Cause::AgentError,
        };
        End::Failed {
            cause,
            reason,
            retryable: retryable && cause.retryable(),
        }
    }

    /// Why an error result failed, in words, and whether running again could help.
    pub fn failure(&self) -> (String, bool) {
        let subtype = self.subtype.as_deref().unwrap_or("error");
        let detail = self.text.lines().next().unwrap_or("").trim();
        let mut reason = match self.api_error_status {
            Some(status) => format!("claude {subtype} (API status {status})"),
            None => format!("claude {subtype}"),
        };
        if !detail.is_empty() {
            reason.push_str(": ");
            reason.push_str(&detail.chars().take(300).collect::<String>());
        }
        // Limits the task itself hit would be hit again; everything else may pass.
        let retryable = !matches!(subtype, "error_max_turns" | "error_max_budget_usd");
        (reason, retryable)
    }
}

/// Reads a limit out of a result, the ways the CLI has reported one:
/// `Claude AI usage limit reached|<epoch>`, `... limit · resets 3pm`, or an API status 429.
pub fn limit_of(result: &ClaudeResult, now: chrono::DateTime<chrono::Local>) -> Option<Limit> {
    // A successful answer may well talk about limits; only a failed one can be a limit. (The old
    // `...|<epoch>` form came as the whole result text, so it is taken wherever it stands first.)
    let text = result.text.trim();
    if !result.is_error
        && result.api_error_status.is_none()
        && !text.starts_with("Claude AI usage limit reached|")
    {
        return None;
    }
    let message = text
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    let lower = text.to_lowercase();
    if let Some(rest) = lower.split("usage limit reached|").nth(1) {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let until = digits
            .parse::<i64>()
            .ok()
            .map(|n| if n > 100_000_000_000 { n } else { n * 1000 });
        return Some(Limit {
            until,
            message: "Claude AI usage limit reached".into(),
        });
    }
    if lower.contains("limit") && lower.contains("resets") {
        let after = lower.rsplit("resets").next().unwrap_or("");
        let until = parse_reset(after, now).map(|t| t.timestamp_millis());
        return Some(Limit { until, message });
    }
    if result.api_error_status == Some(429) {
        return Some(Limit {
            until: None,
            message,
        });
    }
    None
}

/// Finds Git for Windows' `bash.exe`, which Claude Code on Windows needs in
/// `CLAUDE_CODE_GIT_BASH_PATH`. Candidates come from `git.exe` on `PATH` (`<Git>\cmd\git.exe`,
/// `<Git>\bin\git.exe` or `<Git>\mingw64\bin\git.exe`) and the usual install folders; each is
/// checked with `exists`, preferring `<Git>\usr\bin\bash.exe` (the real bash) over the
/// `<Git>\bin\bash.exe` launcher. Plain string work, so it is tested on any OS.
pub fn find_git_bash(
    env: &BTreeMap<String, String>,
    exists: &dyn Fn(&str) -> bool,
) -> Option<String> {
    let get = |k: &str| {
        env.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.trim_end_matches('\\').to_string())
    };
    let mut roots: Vec<String> = Vec::new();
    if let Some(path) = get("PATH") {
        for dir in path
            .split(';')
            .map(|d| d.trim().trim_end_matches('\\'))
            .filter(|d| !d.is_empty())
        {
            if !exists(&format!("{dir}\\git.exe")) {
                continue;
            }
            let lower = dir.to_ascii_lowercase();
            for suffix in ["\\mingw64\\bin", "\\mingw32\\bin", "\\cmd", "\\bin"] {
                if lower.ends_with(suffix) {
                    roots.push(dir[..dir.len() - suffix.len()].to_string());
                    break;
                }
            }
        }
    }
    for (var, below) in [
        ("ProgramFiles", "Git"),
        ("ProgramW6432", "Git"),
        ("ProgramFiles(x86)", "Git"),
        ("LOCALAPPDATA", "Programs\\Git"),
    ] {
        if let Some(base) = get(var) {
            roots.push(format!("{base}\\{below}"));
        }
    }
    roots.push("C:\\Program Files\\Git".into());
    roots
        .iter()
        .flat_map(|r| {
            [
                format!("{r}\\usr\\bin\\bash.exe"),
                format!("{r}\\bin\\bash.exe"),
            ]
        })
        .find(|c| exists(c))
}

/// Whether a failed resume means the conversation no longer exists.
pub fn conversation_gone(stderr: &str, stdout: &str) -> bool {
    const MARK: &str = "No conversation found with session ID";
    stderr.contains(MARK) || stdout.contains(MARK)
}

/// Environment variables that mark a parent Claude Code session. A `claude` started with them
/// may take itself for a nested session (older versions refused to run), so they are removed
/// unless the worker's own `env` sets them.
pub fn inherited_markers(
    parent: &BTreeMap<String, String>,
    worker_env: &BTreeMap<String, String>,
) -> Vec<String> {
    super::named_in(parent, MARKERS, MARKER_PREFIXES)
        .filter(|k| !worker_env.contains_key(*k))
        .map(str::to_string)
        .collect()
}

const MARKERS: &[&str] = &[
    "CLAUDECODE",
    "CLAUDE_CODE_ENTRYPOINT",
    "CLAUDE_CODE_SSE_PORT",
    "CLAUDE_CODE_SESSION_ID",
    "CLAUDE_CODE_SESSION_ACCESS_TOKEN",
    "CLAUDE_CODE_PARENT_SESSION_ID",
];
const MARKER_PREFIXES: &[&str] = &["CLAUDECODE_"];

/// Claude's stream-json events as transcript entries: `system` init as a status, each block of an
/// `assistant` message (text, thinking, tool use), each `tool_result` of a `user` message (named
/// by its call), a rejected rate limit, and the `result` as how the run ended.
#[derive(Default)]
pub struct Transcriber {
    /// Tool call ids and their tools' names, to name their results.
    tools: BTreeMap<String, String>,
}

impl Transcribe for Transcriber {
    fn line(&mut self, line: &str, out: &mut Vec<Note>) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return not_json(line, out);
        };
        let field = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        match v.get("type").and_then(Value::as_str) {
            Some("system") => match field(&v, "subtype").as_deref() {
                Some("init") => out.push(session_started(
                    field(&v, "session_id").as_deref(),
                    field(&v, "model").as_deref(),
                )),
                Some(other) => {
                    let detail = field(&v, "message")
                        .or_else(|| field(&v, "error"))
                        .map(|m| format!(": {m}"))
                        .unwrap_or_default();
                    out.push(Note::new(Kind::Status, format!("{other}{detail}")));
                }
                None => {}
            },
            Some("assistant") => {
                for block in blocks(&v) {
                    match block.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            if let Some(text) = field(block, "text").filter(|t| !t.is_empty()) {
                                out.push(Note::new(Kind::Text, text));
                            }
                        }
                        Some("thinking") => {
                            if let Some(text) = field(block, "thinking").filter(|t| !t.is_empty()) {
                                out.push(Note::new(Kind::Thinking, text));
                            }
                        }
                        Some("tool_use" | "server_tool_use") => {
                            let name = field(block, "name").unwrap_or_else(|| "tool".into());
                            if let Some(id) = field(block, "id") {
                                self.tools.insert(id, name.clone());
                            }
                            let input = block.get("input").cloned().unwrap_or(Value::Null);
                            out.push(Note::new(Kind::ToolCall, summarise_input(&input)).tool(name));
                        }
                        _ => {}
                    }
                }
            }
            Some("user") => {
                for block in blocks(&v) {
                    if block.get("type").and_then(Value::as_str) != Some("tool_result") {
                        continue;
                    }
                    let name = field(block, "tool_use_id")
                        .and_then(|id| self.tools.get(&id).cloned())
                        .unwrap_or_else(|| "tool".into());
                    let error = block.get("is_error").and_then(Value::as_bool) == Some(true);
                    let text = text_of(block.get("content").unwrap_or(&Value::Null));
                    out.push(Note::new(Kind::ToolResult, text).tool(name).error(error));
                }
            }
            Some("rate_limit_event") => {
                if let Some(limit) = rate_limit_of(&v) {
                    out.push(Note::new(Kind::Status, limit.message).error(true));
                }
            }
            Some("result") => {
                if let Some(r) = ClaudeResult::from_value(&v) {
                    out.push(Note::new(Kind::Result, r.summary()).error(r.is_error));
                }
            }
            _ => {}
        }
    }
}

/// The content blocks of a message event.
fn blocks(v: &Value) -> impl Iterator<Item = &Value> {
    v.pointer("/message/content")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

impl ClaudeResult {
    /// How the run ended, in one line: its kind, cost, tokens and turns, and the error's text.
    pub fn summary(&self) -> String {
        let mut parts = vec![match (&self.subtype, self.is_error) {
            (Some(s), _) if s != "success" => s.clone(),
            (_, true) => "error".to_string(),
            _ => "done".to_string(),
        }];
        if let Some(cost) = self.total_cost_usd {
            parts.push(format!("${cost:.4}"));
        }
        if let (Some(i), Some(o)) = (self.input_tokens, self.output_tokens) {
            parts.push(format!("{i} in / {o} out tokens"));
        }
        if let Some(n) = self.num_turns {
            parts.push(format!("{n} turn{}", if n == 1 { "" } else { "s" }));
        }
        let mut line = parts.join(" · ");
        if self.is_error && !self.text.is_empty() {
            line.push_str(": ");
            line.push_str(&self.text);
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_recorded_stream_reads_as_status_tool_call_result_text_and_end() {
        let recorded = include_str!("../../../fake-anthropic/fixtures/claude/stream-tool.jsonl");
        let notes = crate::transcript::read_all(Transcriber::default(), recorded);
        let got: Vec<(Kind, Option<&str>, &str)> = notes
            .iter()
            .map(|n| (n.kind, n.tool.as_deref(), n.text.as_str()))
            .collect();
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0].0, Kind::Status);
        assert!(got[0].2.starts_with("session 79a8e422"), "{got:?}");
        assert_eq!(
            got[1],
            (
                Kind::ToolCall,
                Some("Bash"),
                "echo hello > f.txt && cat f.txt"
            )
        );
        assert_eq!(got[2], (Kind::ToolResult, Some("Bash"), "hello"));
        assert_eq!(got[3], (Kind::Text, None, "ran: hello"));
        assert_eq!(got[4].0, Kind::Result);
        assert!(got[4].2.starts_with("done · $0.0007"), "{got:?}");
        // And the same stream is still read for its result.
        let read = Settings::DEFAULT.read(&Output {
            stdout: recorded,
            stderr: "",
            exit_code: Some(0),
            now: chrono::Local::now(),
        });
        assert!(matches!(read, Read::Reply(r) if r.text == "ran: hello"));
    }

    #[test]
    fn an_error_result_and_a_failed_tool_say_so() {
        let mut t = Transcriber::default();
        let mut notes = Vec::new();
        t.line(r#"{"type":"assistant","message":{"content":[{"type":"tool_use","id":"t1","name":"Read","input":{"file_path":"/x"}},{"type":"thinking","thinking":"hmm"}]}}"#, &mut notes);
        t.line(r#"{"type":"user","message":{"content":[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"no such file"}],"is_error":true}]}}"#, &mut notes);
        t.line(r#"{"type":"result","subtype":"error_max_turns","is_error":true,"errors":["too many turns"]}"#, &mut notes);
        t.line("not json", &mut notes);
        assert_eq!(notes[0], Note::new(Kind::ToolCall, "/x").tool("Read"));
        assert_eq!(notes[1], Note::new(Kind::Thinking, "hmm"));
        assert_eq!(
            notes[2],
            Note::new(Kind::ToolResult, "no such file")
                .tool("Read")
                .error(true)
        );
        assert_eq!(
            notes[3],
            Note::new(Kind::Result, "error_max_turns: too many turns").error(true)
        );
        assert_eq!(notes[4], Note::new(Kind::Stdout, "not json"));
    }

    #[test]
    fn every_value_is_one_argument_and_nothing_is_positional() {
        let s = Settings {
            model: Some("opus".into()),
            permission_mode: Some("acceptEdits".into()),
            allowed_tools: vec!["Read".into(), "Bash(git log:*)".into()],
            disallowed_tools: vec!["WebFetch".into()],
            append_system_prompt: Some("-starts with a dash".into()),
            max_turns: Some(5),
            max_budget_usd: Some(0.25),
            add_dirs: vec![PathBuf::from("/data")],
            extra_args: vec!["--verbose".into()],
            ..Settings::default()
        };
        let argv = exec_argv(Path::new("/bin/claude"), &s, &Join::Start("u-1".into()));
        assert_eq!(
            argv,
            [
                "/bin/claude",
                "-p",
                "--output-format=stream-json",
                "--verbose",
                "--session-id=u-1",
                "--model=opus",
                "--permission-mode=acceptEdits",
                "--allowed-tools=Read",
                "--allowed-tools=Bash(git log:*)",
                "--disallowed-tools=WebFetch",
                "--append-system-prompt=-starts with a dash",
                "--max-turns=5",
                "--max-budget-usd=0.25",
                "--add-dir=/data",
                "--verbose",
            ]
        );
        assert!(!argv.iter().any(|a| a == "--dangerously-skip-permissions"));
        let resume = exec_argv(
            Path::new("claude"),
            &Settings {
                skip_permissions: true,
                ..Settings::default()
            },
            &Join::Resume("u-2".into()),
        );
        assert_eq!(resume[4], "--resume=u-2");
        assert_eq!(resume.last().unwrap(), "--dangerously-skip-permissions");
    }

    #[test]
    fn results_are_read_tolerantly() {
        let full = json!({
            "type": "result", "subtype": "success", "is_error": false, "result": "hi",
            "session_id": "s-1", "total_cost_usd": 0.5, "num_turns": 2, "duration_ms": 10,
            "api_error_status": null, "an_unknown_field": [1, 2],
            "usage": { "input_tokens": 3, "cache_read_input_tokens": 4, "cache_creation_input_tokens": 5, "output_tokens": 6 }
        });
        let r = ClaudeResult::from_exec_stdout(&full.to_string()).unwrap();
        assert_eq!(
            (r.text.as_str(), r.is_error, r.session_id.as_deref()),
            ("hi", false, Some("s-1"))
        );
        assert_eq!(
            (r.input_tokens, r.output_tokens, r.total_cost_usd),
            (Some(12), Some(6), Some(0.5))
        );
        let bare = ClaudeResult::from_exec_stdout("{\"type\":\"result\"}").unwrap();
        assert_eq!(bare, ClaudeResult::default());
        let noisy = format!(
            "a warning line\n{}\n",
            json!({"type": "result", "result": "x"})
        );
        assert_eq!(ClaudeResult::from_exec_stdout(&noisy).unwrap().text, "x");
        assert!(ClaudeResult::from_exec_stdout("not json").is_none());
        assert!(ClaudeResult::from_exec_stdout("{\"type\":\"system\"}").is_none());
    }

    #[test]
    fn failures_say_why_and_whether_to_retry() {
        let r = ClaudeResult {
            is_error: true,
            subtype: Some("error_during_execution".into()),
            api_error_status: Some(529),
            text: "Overloaded\nmore".into(),
            ..Default::default()
        };
        assert_eq!(
            r.failure(),
            (
                "claude error_during_execution (API status 529): Overloaded".into(),
                true
            )
        );
        let turns = ClaudeResult {
            is_error: true,
            subtype: Some("error_max_turns".into()),
            ..Default::default()
        };
        assert!(!turns.failure().1);
    }

    #[test]
    fn parent_session_markers_are_removed_unless_the_worker_sets_them() {
        let parent: BTreeMap<String, String> = [
            "CLAUDECODE",
            "CLAUDE_CODE_ENTRYPOINT",
            "CLAUDECODE_SESSION_ID",
            "CLAUDE_CODE_GIT_BASH_PATH",
            "HOME",
        ]
        .iter()
        .map(|k| (k.to_string(), "x".to_string()))
        .collect();
        let mut worker = BTreeMap::new();
        assert_eq!(
            inherited_markers(&parent, &worker),
            [
                "CLAUDECODE",
                "CLAUDECODE_SESSION_ID",
                "CLAUDE_CODE_ENTRYPOINT"
            ]
        );
        worker.insert("CLAUDECODE".to_string(), "1".to_string());
        assert_eq!(
            inherited_markers(&parent, &worker),
            ["CLAUDECODE_SESSION_ID", "CLAUDE_CODE_ENTRYPOINT"]
        );
    }

    #[test]
    fn limits_are_read_from_results() {
        use chrono::{Datelike, Local, TimeZone, Timelike};
        let now = Local.with_ymd_and_hms(2026, 11, 22, 10, 0, 0).unwrap();
        let text = |t: &str| ClaudeResult {
            text: t.into(),
            ..Default::default()
        };
        assert_eq!(
            limit_of(&text("Claude AI usage limit reached|1767225600"), now)
                .unwrap()
                .until,
            Some(1_767_225_600_000)
        );
        let limited = ClaudeResult {
            text: "5-hour limit reached \u{b7} resets 3pm".into(),
            is_error: true,
            ..Default::default()
        };
        let at3 = limit_of(&limited, now).unwrap().until.unwrap();
        assert_eq!(
            Local.timestamp_millis_opt(at3).unwrap(),
            Local.with_ymd_and_hms(2026, 11, 22, 15, 0, 0).unwrap()
        );
        let at9 = parse_reset(" 9:30am (Europe/Berlin)", now).unwrap();
        assert_eq!(
            (at9.day(), at9.hour(), at9.minute()),
            (23, 9, 30),
            "9:30 has passed today: tomorrow"
        );
        let dated = parse_reset(" Nov 25, 3pm", now).unwrap();
        assert_eq!((dated.day(), dated.hour()), (25, 15));
        assert_eq!(parse_reset(" 12am", now).unwrap().hour(), 0);
        assert_eq!(parse_reset(" 15:00", now).unwrap().hour(), 15);
        assert_eq!(parse_reset(" soon", now), None);
        let err = |t: &str| ClaudeResult {
            text: t.into(),
            is_error: true,
            ..Default::default()
        };
        assert_eq!(
            limit_of(
                &text("Done. Note: the API rate limit resets every hour"),
                now
            ),
            None,
            "a successful answer that talks about limits is not one"
        );
        let unknown = limit_of(&err("You've hit your limit \u{b7} resets whenever"), now).unwrap();
        assert_eq!(unknown.until, None);
        let api = ClaudeResult {
            api_error_status: Some(429),
            text: "API Error: Request rejected (429)".into(),
            ..Default::default()
        };
        assert_eq!(limit_of(&api, now).unwrap().until, None);
        assert_eq!(limit_of(&text("all fine, no limits here"), now), None);
        let overloaded = ClaudeResult {
            api_error_status: Some(529),
            ..Default::default()
        };
        assert_eq!(
            limit_of(&overloaded, now),
            None,
            "overload is retried, not paused"
        );
    }

    #[test]
    fn git_bash_is_found_where_it_really_is() {
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let only = |files: &'static [&'static str]| move |p: &str| files.contains(&p);
        // The seeds' machine: Git in D:\Git, on PATH through cmd\; only usr\bin\bash.exe is real.
        let e = env(&[("Path", "C:\\Windows;D:\\Git\\cmd\\")]);
        let found = find_git_bash(
            &e,
            &only(&["D:\\Git\\cmd\\git.exe", "D:\\Git\\usr\\bin\\bash.exe"]),
        );
        assert_eq!(found.as_deref(), Some("D:\\Git\\usr\\bin\\bash.exe"));
        // Only the launcher exists: take it rather than a path that is not there.
        let found = find_git_bash(
            &e,
            &only(&["D:\\Git\\cmd\\git.exe", "D:\\Git\\bin\\bash.exe"]),
        );
        assert_eq!(found.as_deref(), Some("D:\\Git\\bin\\bash.exe"));
        // git.exe from mingw64\bin.
        let e = env(&[("PATH", "E:\\Tools\\Git\\mingw64\\bin")]);
        let found = find_git_bash(
            &e,
            &only(&[
                "E:\\Tools\\Git\\mingw64\\bin\\git.exe",
                "E:\\Tools\\Git\\usr\\bin\\bash.exe",
            ]),
        );
        assert_eq!(found.as_deref(), Some("E:\\Tools\\Git\\usr\\bin\\bash.exe"));
        // Not on PATH: the usual install folders.
        let e = env(&[("LOCALAPPDATA", "C:\\Users\\u\\AppData\\Local")]);
        let found = find_git_bash(
            &e,
            &only(&["C:\\Users\\u\\AppData\\Local\\Programs\\Git\\usr\\bin\\bash.exe"]),
        );
        assert_eq!(
            found.as_deref(),
            Some("C:\\Users\\u\\AppData\\Local\\Programs\\Git\\usr\\bin\\bash.exe")
        );
        assert_eq!(find_git_bash(&env(&[]), &|_| false), None);
    }

    #[test]
    fn a_gone_conversation_is_recognised() {
        assert!(conversation_gone(
            "Error: No conversation found with session ID: abc\n",
            ""
        ));
        assert!(!conversation_gone("Error: something else", ""));
    }
}
