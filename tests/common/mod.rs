//! A project in a temporary folder, driven through the real `agentq` binary.
//!
//! Waits are bounded polls (`wait_until`), never bare sleeps; a daemon started here is stopped when
//! its handle drops, so a failing test leaves no process behind.

#![allow(dead_code)]

pub mod cdp;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_agentq");

/// An agent that records each run in `runs.log` (task id and prompt on one line) and answers
/// "done: <prompt>".
pub const RECORDING_AGENT: &str = r#"["sh", "-c", "p=$(cat); printf '%s %s\n' \"$AGENTQ_TASK_ID\" \"$p\" >> runs.log; printf 'done: %s' \"$p\""]"#;

/// An agent that writes its pid to `agent.pid` and then sleeps for a minute.
pub const SLEEPING_AGENT: &str =
    r#"["sh", "-c", "echo $$ > agent.pid.tmp; mv agent.pid.tmp agent.pid; exec sleep 60"]"#;

pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A project whose agentq.toml is `config`.
    pub fn new(config: &str) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("agentq-test")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("agentq.toml"), config).unwrap();
        Project { dir }
    }

    /// A project with the given workers, each running `agent` (a TOML array), with fast retries.
    pub fn with_workers(names: &[&str], agent: &str, extra: &str) -> Project {
        let mut config =
            format!("[defaults]\nbackoff = \"10ms\"\nmax_backoff = \"50ms\"\n{extra}\n");
        for name in names {
            config.push_str(&format!(
                "[[worker]]\nname = \"{name}\"\nagent = \"command\"\ncommand = {agent}\n"
            ));
        }
        Project::new(&config)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.dir.path())
            .env_remove("AGENTQ_LOG")
            .env_remove("AGENTQ_CONFIG");
        // Nor the database's URL or API keys of whoever runs the tests (`service install` would
        // carry them).
        for var in agentq::service::carried_by_default() {
            c.env_remove(var);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).stdin(Stdio::null()).output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "agentq {args:?} failed: {}\n{}",
            out.status,
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    /// A project with one Claude worker named `c`, running the real CLI against `fake`, with a
    /// HOME of its own (where Claude keeps its conversations). `extra` is added to the worker.
    pub fn with_claude(fake: &fake_anthropic::FakeServer, extra: &str) -> Project {
        let p = Project::new("");
        let home = p.path("home");
        std::fs::create_dir_all(&home).unwrap();
        let config = format!(
            r#"[defaults]
backoff = "10ms"
max_backoff = "50ms"

[[worker]]
name = "c"
agent = "claude"
claude_bin = "{bin}"
{extra}
[worker.env]
ANTHROPIC_BASE_URL = "{url}"
ANTHROPIC_API_KEY = "test-key"
HOME = "{home}"
DISABLE_AUTOUPDATER = "1"
DISABLE_TELEMETRY = "1"
CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = "1"
CLAUDE_CODE_MAX_RETRIES = "0"
"#,
            bin = claude_bin().display(),
            url = fake.url(),
            home = home.display(),
        );
        std::fs::write(p.path("agentq.toml"), config).unwrap();
        p
    }

    /// A project with one Codex worker named `x`, running the real CLI against `fake`'s OpenAI
    /// Responses API, with a CODEX_HOME of its own whose config.toml names the fake as its model
    /// provider (`wire_api = "responses"`). `extra` is added to the worker.
    pub fn with_codex(fake: &fake_anthropic::FakeServer, extra: &str) -> Project {
        let p = Project::new("");
        let (home, codex_home, tmp) = (p.path("home"), p.path("codex-home"), p.path("tmp"));
        for dir in [&home, &codex_home, &tmp] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(
            codex_home.join("config.toml"),
            format!(
                r#"model = "gpt-5.5"
model_provider = "fake"
approval_policy = "never"
[analytics]
enabled = false
[features]
plugins = false
[model_providers.fake]
name = "fake"
base_url = "{url}"
env_key = "FAKE_OPENAI_KEY"
wire_api = "responses"
"#,
                url = fake.openai_url()
            ),
        )
        .unwrap();
        let config = format!(
            r#"[defaults]
backoff = "10ms"
max_backoff = "50ms"

[[worker]]
name = "x"
agent = "codex"
codex_bin = "{bin}"
skip_git_repo_check = true
{extra}
[worker.env]
FAKE_OPENAI_KEY = "sk-fake"
CODEX_HOME = "{codex_home}"
HOME = "{home}"
TMPDIR = "{tmp}"
"#,
            bin = agent_bin("codex").display(),
            codex_home = codex_home.display(),
            home = home.display(),
            tmp = tmp.display(),
        );
        std::fs::write(p.path("agentq.toml"), config).unwrap();
        p
    }

    /// A project with one Gemini worker named `g`, running the real CLI against `fake`'s Gemini
    /// API, with a GEMINI_CLI_HOME of its own whose settings.json takes an API key, sends no
    /// statistics, tries each request once and keeps its sessions (its default clean-up can
    /// delete a resumed session). `extra` is added to the worker.
    pub fn with_gemini(fake: &fake_anthropic::FakeServer, extra: &str) -> Project {
        let p = Project::new("");
        let (home, tmp) = (p.path("home"), p.path("tmp"));
        for dir in [&home.join(".gemini"), &tmp] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(
            home.join(".gemini/settings.json"),
            r#"{ "security": {"auth": {"selectedType": "gemini-api-key"}},
  "privacy": {"usageStatisticsEnabled": false},
  "telemetry": {"enabled": false},
  "general": {"enableAutoUpdate": false, "enableAutoUpdateNotification": false, "maxAttempts": 1,
              "sessionRetention": {"enabled": false}} }"#,
        )
        .unwrap();
        let config = format!(
            r#"[defaults]
backoff = "10ms"
max_backoff = "50ms"

[[worker]]
name = "g"
agent = "gemini"
gemini_bin = "{bin}"
model = "gemini-2.5-flash"
trust_workspace = true
{extra}
[worker.env]
GOOGLE_GEMINI_BASE_URL = "{url}"
GEMINI_API_KEY = "fake-key"
GEMINI_CLI_HOME = "{home}"
HOME = "{home}"
TMPDIR = "{tmp}"
"#,
            bin = agent_bin("gemini").display(),
            url = fake.url(),
            home = home.display(),
            tmp = tmp.display(),
        );
        std::fs::write(p.path("agentq.toml"), config).unwrap();
        p
    }

    /// The processes running in this project's folder other than agentq's own (the daemon and
    /// its guardian): what an agent left behind.
    pub fn agent_processes(&self) -> Vec<(i32, String)> {
        let root = std::fs::canonicalize(self.dir.path()).unwrap();
        let agentq = std::fs::canonicalize(BIN).unwrap();
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| {
                let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
                let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                (cwd.starts_with(&root) && exe != agentq)
                    .then(|| (pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
            })
            .collect()
    }

    /// A task's result text.
    pub fn output(&self, id: i64) -> String {
        self.task(id)["output"].as_str().unwrap_or("").to_string()
    }

    /// Submits a prompt; returns the task id.
    pub fn submit(&self, worker: &str, prompt: &str) -> i64 {
        self.ok(&["submit", "--worker", worker, prompt])
            .trim()
            .parse()
            .unwrap()
    }

    /// Submits a prompt at a priority; returns the task id.
    pub fn submit_at(&self, worker: &str, priority: i64, prompt: &str) -> i64 {
        let priority = priority.to_string();
        self.ok(&[
            "submit",
            "--worker",
            worker,
            "--priority",
            &priority,
            prompt,
        ])
        .trim()
        .parse()
        .unwrap()
    }

    /// Waits (bounded) for every task to end, and requires that all succeeded.
    pub fn wait_all(&self, ids: &[i64]) {
        let mut args = vec!["wait".to_string(), "--timeout".into(), "120s".into()];
        args.extend(ids.iter().map(i64::to_string));
        let out = self.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "wait {ids:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }

    pub fn task(&self, id: i64) -> Value {
        self.json(&["show", &id.to_string()])
    }

    pub fn state(&self, id: i64) -> String {
        self.task(id)["state"].as_str().unwrap().to_string()
    }

    pub fn totals(&self) -> Value {
        self.json(&["status"])["totals"].clone()
    }

    /// Starts `agentq run` and waits until it says it is running.
    pub fn start(&self) -> Daemon {
        self.start_with(self.cmd(&["run"]))
    }

    /// Starts `agentq run` as `cmd` says (e.g. with signals set up differently).
    pub fn start_with(&self, mut cmd: Command) -> Daemon {
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let log = self.path(&format!(
            "daemon-{}.log",
            STARTS.fetch_add(1, Ordering::SeqCst)
        ));
        let child = cmd
            .env("AGENTQ_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child, log };
        wait_until(Duration::from_secs(20), "the daemon to start", || {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "the daemon exited at start with {status}:\n{}",
                    daemon.log()
                );
            }
            daemon.log().contains("agentq running")
        });
        daemon
    }

    /// Waits for `SLEEPING_AGENT` to start and returns its pid (then removes `agent.pid`, so the
    /// next call waits for the next agent).
    pub fn sleeping_agent_pid(&self) -> i32 {
        let file = self.path("agent.pid");
        wait_until(Duration::from_secs(60), "the agent to start", || {
            file.exists()
        });
        let pid = read(&file).trim().parse().unwrap();
        std::fs::remove_file(&file).unwrap();
        pid
    }

    /// Lines of `runs.log` written by the recording agent.
    pub fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("runs.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Writes a file atomically (temporary name, then rename), as a careful producer would.
    pub fn drop_file(&self, rel: &str, bytes: &[u8]) {
        let target = self.path(rel);
        let tmp = target.with_file_name(format!(
            ".{}.tmp",
            target.file_name().unwrap().to_string_lossy()
        ));
        std::fs::File::create(&tmp)
            .unwrap()
            .write_all(bytes)
            .unwrap();
        std::fs::rename(tmp, target).unwrap();
    }
}

impl Drop for Project {
    /// A failing test shows what its daemons logged.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("daemon-") && name.ends_with(".log") {
                eprintln!(
                    "----- {name}\n{}",
                    std::fs::read_to_string(entry.path()).unwrap_or_default()
                );
            }
        }
    }
}

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
}

impl Daemon {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The daemon's guardian (`agentq guard`, its child), once it has started.
    pub fn guardian(&self) -> Option<i32> {
        let me = self.pid();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid: i32 = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            (ppid == me && args.get(1) == Some(&&b"guard"[..])).then_some(pid)
        })
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig);
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.wait(Duration::from_secs(30))
    }

    /// SIGKILL: the daemon dies without any chance to clean up.
    pub fn kill9(mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        self.wait(Duration::from_secs(10));
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not exit within {limit:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The claude CLI the tests run: the one scripts/test installs (or `AGENTQ_TEST_CLAUDE_BIN`).
/// The address the daemon's HTTP API listens on, from its log ("HTTP API on http://ADDR").
pub fn api_address(log: &str) -> String {
    let at = log
        .find("HTTP API on http://")
        .unwrap_or_else(|| panic!("no HTTP API address in the log:\n{log}"));
    log[at + "HTTP API on http://".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// An agent CLI the tests run: `AGENTQ_TEST_<NAME>_BIN`, else the one scripts/test installs in
/// `.tools/<name>`.
pub fn agent_bin(name: &str) -> PathBuf {
    if let Some(bin) = std::env::var_os(format!("AGENTQ_TEST_{}_BIN", name.to_uppercase())) {
        return bin.into();
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!(".tools/{name}/node_modules/.bin/{name}"));
    assert!(
        local.exists(),
        "the {name} CLI these tests run is not installed: run scripts/test once (it installs the pinned version into .tools/{name})"
    );
    local
}

pub fn claude_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("AGENTQ_TEST_CLAUDE_BIN") {
        return bin.into();
    }
    let local =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/claude-code/node_modules/.bin/claude");
    assert!(
        local.exists(),
        "the claude CLI these tests run is not installed: run scripts/test once (it installs the pinned version into .tools/claude-code)"
    );
    local
}

/// A fresh PostgreSQL database on the test server (`AGENTQ_TEST_DATABASE_URL`), dropped when the
/// value is; `None` when there is no server and `AGENTQ_TEST_PG=skip` allows that.
pub fn pg_database() -> Option<agentq::store::postgres::test_db::TestDb> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(agentq::store::postgres::test_db::TestDb::create())
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `check` every 20 ms until it holds; fails the test after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The kinds of a task record's events, in order.
pub fn event_kinds(task: &Value) -> Vec<&str> {
    task["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect()
}

/// `seen N: ...` answers, as the fake gives them: which prompts the model saw.
pub fn seen(output: &str) -> (usize, Vec<String>) {
    let rest = output
        .strip_prefix("seen ")
        .unwrap_or_else(|| panic!("not a seen answer: {output:?}"));
    let (n, list) = rest.split_once(": ").unwrap();
    (
        n.parse().unwrap(),
        list.split(" | ").map(str::to_string).collect(),
    )
}
