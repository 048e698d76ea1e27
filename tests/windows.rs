//! The Windows suite's end-to-end tests: the Windows build of agentq (`agentq.exe`) through its
//! CLI, with the Windows build of the misbehaving test agent as a worker's command. Run under Wine
//! by `scripts/windows/test` (CI), or on real Windows with `cargo test --test windows`.
//!
//! What Wine does not implement is not asserted here (see README, "Windows"): job memory limits,
//! CTRL_BREAK to another process group, accounting. Stopping the daemon is a hard kill
//! (TerminateProcess), the one stop Wine delivers to another process: that it loses nothing and
//! leaves nothing is the point of several tests.
#![cfg(windows)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_agentq");
const TEST_AGENT: &str = env!("CARGO_BIN_EXE_agentq-test-agent");

/// A project folder, with a space and a non-ASCII letter in its path, holding agentq.toml.
struct Project {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Project {
    /// One worker `w` running the test agent, which writes every pid it starts to pids.log.
    fn new(extra: &str) -> Project {
        let dir = tempfile::Builder::new()
            .prefix("agentq win")
            .tempdir()
            .unwrap();
        let root = dir.path().join("prøject dir");
        std::fs::create_dir_all(&root).unwrap();
        let pids = root.join("pids.log");
        // TOML literal strings: Windows paths keep their backslashes.
        let config = format!(
            "[defaults]\nbackoff = \"10ms\"\nmax_backoff = \"50ms\"\nkill_timeout = \"500ms\"\n{extra}\n\
             [[worker]]\nname = \"w\"\ncommand = ['{TEST_AGENT}']\nenv = {{ AGENTQ_TEST_PIDS = '{}' }}\n",
            pids.display()
        );
        std::fs::write(root.join("agentq.toml"), config).unwrap();
        Project { _dir: dir, root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(&self.root)
            .env_remove("AGENTQ_CONFIG");
        // Nor the API keys of whoever runs the tests (`service install` would carry them).
        for var in agentq::service::carried_by_default() {
            c.env_remove(var);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "agentq {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        serde_json::from_str(&self.ok(&all)).unwrap()
    }

    fn submit(&self, prompt: &str) -> i64 {
        self.ok(&["submit", "--worker", "w", prompt])
            .trim()
            .parse()
            .unwrap()
    }

    fn wait(&self, id: i64) -> Value {
        self.run(&["wait", "--timeout", "60s", &id.to_string()]);
        self.json(&["show", &id.to_string()])
    }

    fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path("pids.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Starts `agentq run` and waits until it says it is running.
    fn start(&self) -> Daemon {
        self.start_with(self.cmd(&["run"]))
    }

    /// Starts `agentq run` as `cmd` says (another PATH, say).
    fn start_with(&self, mut cmd: Command) -> Daemon {
        let log = self.path(&format!("daemon-{}.log", rand_suffix()));
        let child = cmd
            .env("AGENTQ_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut daemon = Daemon { child, log };
        wait_until(Duration::from_secs(60), "the daemon to start", || {
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
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// TerminateProcess: the daemon gets no say.
    fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn alive(pid: u32) -> bool {
    agentq_platform::process::alive(pid)
}

fn none_left(pids: &[u32]) {
    assert!(!pids.is_empty(), "the agent wrote no pid");
    wait_until(
        Duration::from_secs(10),
        "every agent process to be gone",
        || pids.iter().all(|p| !alive(*p)),
    );
}

#[test]
fn a_command_worker_runs_tasks_in_order_with_their_output() {
    let p = Project::new("");
    let _d = p.start();
    let ids: Vec<i64> = (1..=3).map(|i| p.submit(&format!("task {i} ✓"))).collect();
    for (i, id) in ids.iter().enumerate() {
        let t = p.wait(*id);
        assert_eq!(t["state"], "succeeded", "{t}");
        assert_eq!(t["output"], format!("done: task {} ✓\n", i + 1), "{t}");
        let file = p.path(&format!(".output/w/task_{id}.txt"));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!("done: task {} ✓\n", i + 1)
        );
    }
}

#[test]
fn a_hung_agent_is_stopped_by_its_timeout_and_its_grandchildren_end_with_it() {
    let p = Project::new("timeout = \"2s\"\nmax_attempts = 1\n");
    let _d = p.start();
    let started = Instant::now();
    let id = p.submit("[[grandchildren 2]] [[hang]]");
    let t = p.wait(id);
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(t["cause"], "timeout", "{t}");
    assert!(started.elapsed() < Duration::from_secs(30));
    let pids = p.pids();
    assert_eq!(pids.len(), 3, "the agent and two grandchildren: {pids:?}");
    none_left(&pids);
    // The worker goes on.
    let next = p.submit("next");
    assert_eq!(p.wait(next)["state"], "succeeded");
}

/// More processes than `max_processes` at once: the job is counted (Wine does not enforce the
/// system's active-process limit, so the count is what ends it here), ended whole, and the task
/// fails as `process_limit`; the worker goes on.
#[test]
fn more_processes_than_max_processes_end_the_attempt_as_a_process_limit() {
    let p = Project::new("max_processes = 4\nmax_attempts = 1\n");
    let _d = p.start();
    let id = p.submit("[[grandchildren 8]] [[hang]]");
    let t = p.wait(id);
    assert_eq!(t["cause"], "process_limit", "{t}");
    assert!(
        t["error"]
            .as_str()
            .unwrap_or("")
            .contains("more than 4 processes"),
        "{t}"
    );
    none_left(&p.pids());
    let next = p.submit("next");
    assert_eq!(p.wait(next)["state"], "succeeded");
}

#[test]
fn a_crashed_agent_is_retried_and_the_worker_goes_on() {
    let p = Project::new("max_attempts = 2\n");
    let _d = p.start();
    let id = p.submit("[[crash SEGV]]");
    let t = p.wait(id);
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(t["attempts"], 2, "{t}");
    assert_eq!(t["cause"], "crashed", "{t}");
    assert_eq!(
        t["error"], "crashed (exit code 0xC0000005, access violation)",
        "{t}"
    );
    let next = p.submit("after the crash");
    assert_eq!(p.wait(next)["state"], "succeeded");
}

#[test]
fn the_daemon_killed_hard_loses_nothing_and_leaves_nothing_running() {
    let p = Project::new("");
    let d = p.start();
    let id = p.submit("[[grandchildren 1]] [[sleep 3000]]");
    wait_until(
        Duration::from_secs(30),
        "the agent and its grandchild",
        || p.pids().len() >= 2,
    );
    let pids = p.pids();
    d.kill_hard();
    // Kill-on-job-close: the agent's tree ends with the daemon's handle to its job.
    none_left(&pids);
    let _d = p.start();
    let t = p.wait(id);
    assert_eq!(
        t["state"], "succeeded",
        "the task is run again and finishes: {t}"
    );
}

#[test]
fn a_second_daemon_is_refused_while_the_first_holds_the_folder() {
    let p = Project::new("");
    let d = p.start();
    let out = p.run(&["run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already"), "{err}");
    assert!(
        err.contains(&d.child.id().to_string()),
        "names the holder: {err}"
    );
    let status = p.json(&["status"]);
    assert_eq!(status["daemon"]["pid"], d.child.id(), "{status}");
}

#[test]
fn the_http_api_asks_for_the_token() {
    let p = Project::new("[http]\nlisten = \"127.0.0.1:0\"\n");
    let d = p.start();
    let log = d.log();
    let at = log
        .find("HTTP API on http://")
        .expect("the API's address is logged");
    let addr = log[at + "HTTP API on http://".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let token = std::fs::read_to_string(p.path(".agentq/token")).unwrap();
    let get = |auth: Option<&str>| -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let header = auth.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        write!(
            s,
            "GET /api/tasks HTTP/1.1\r\nHost: x\r\n{header}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    assert!(get(None).starts_with("HTTP/1.1 401"), "{}", get(None));
    assert!(get(Some(token.trim())).starts_with("HTTP/1.1 200"));
    // Wine keeps no DACL (access is the Unix mode there): checked on real Windows only.
    let token_access = agentq_platform::fs::exposure(&p.path(".agentq/token")).unwrap();
    if !agentq_platform::under_wine() {
        assert_eq!(token_access, agentq_platform::fs::Exposure::Private);
    }
}

#[test]
fn a_prompt_file_becomes_a_task_and_a_bad_one_is_set_aside() {
    let p = Project::new("[intake]\nsettle = \"100ms\"\n");
    let _d = p.start();
    let q = p.path(".queue/w");
    wait_until(Duration::from_secs(10), "the queue folder", || q.is_dir());
    std::fs::write(q.join("a.prompt"), "from a file\r\n").unwrap();
    std::fs::write(q.join("empty.prompt"), "").unwrap();
    wait_until(
        Duration::from_secs(30),
        "the file's task to be done",
        || {
            let tasks = p.json(&["tasks"]);
            tasks
                .as_array()
                .is_some_and(|a| a.iter().any(|t| t["state"] == "succeeded"))
        },
    );
    wait_until(Duration::from_secs(10), "the empty file set aside", || {
        q.join("rejected/empty.prompt").exists() && q.join("rejected/empty.prompt.reason").exists()
    });
    assert!(!q.join("a.prompt").exists());
}

#[test]
fn doctor_finds_the_state_folder_private() {
    let p = Project::new("");
    p.submit("creates the state folder");
    let out = p.run(&["doctor", "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let checks: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let state = checks
        .as_array()
        .and_then(|a| a.iter().find(|c| c["check"] == "state folder").cloned())
        .unwrap_or_else(|| panic!("no state folder check: {text}"));
    if agentq_platform::under_wine() {
        // Wine reads back Everyone's access whatever was set: doctor says so, with the fix.
        assert_eq!(state["status"], "fail", "{state}");
        assert!(
            state["detail"].as_str().unwrap().contains("S-1-1-0"),
            "{state}"
        );
        assert!(state["fix"].as_str().unwrap().contains("icacls"), "{state}");
    } else {
        assert_eq!(state["status"], "ok", "{state}");
    }
}

/// The Windows build of Claude Code (`claude.exe` of the pinned version, which
/// scripts/windows/test installs with `npm install --os=win32`), named by AGENTQ_TEST_CLAUDE_EXE.
fn claude_exe() -> String {
    std::env::var("AGENTQ_TEST_CLAUDE_EXE")
        .expect("AGENTQ_TEST_CLAUDE_EXE names claude.exe: run scripts/windows/test")
}

/// `seen N: p1 | ... | pN`, the fake model's answer: which prompts it saw in the conversation.
fn seen(output: &str) -> (usize, Vec<String>) {
    let rest = output
        .strip_prefix("seen ")
        .unwrap_or_else(|| panic!("not a seen answer: {output:?}"));
    let (n, list) = rest.trim_end().split_once(": ").unwrap();
    (
        n.parse().unwrap(),
        list.split(" | ").map(str::to_string).collect(),
    )
}

/// A worker `c` running the real claude.exe against the fake Anthropic API on loopback, with a
/// profile folder of its own.
fn claude_project(fake: &fake_anthropic::FakeServer, mode: &str) -> Project {
    let p = Project::new("");
    let home = p.path("home");
    std::fs::create_dir_all(&home).unwrap();
    let config = format!(
        "[defaults]\nbackoff = \"10ms\"\nmax_backoff = \"50ms\"\n\
         [[worker]]\nname = \"c\"\nagent = \"claude\"\nclaude_bin = '{exe}'\nmode = \"{mode}\"\n\
         [worker.env]\nANTHROPIC_BASE_URL = \"{url}\"\nANTHROPIC_API_KEY = \"test-key\"\n\
         USERPROFILE = '{home}'\nHOME = '{home}'\nDISABLE_AUTOUPDATER = \"1\"\n\
         DISABLE_TELEMETRY = \"1\"\nCLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC = \"1\"\n\
         CLAUDE_CODE_MAX_RETRIES = \"0\"\n",
        exe = claude_exe(),
        url = fake.url(),
        home = home.display(),
    );
    std::fs::write(p.path("agentq.toml"), config).unwrap();
    p
}

fn submit_to(p: &Project, worker: &str, prompt: &str) -> i64 {
    p.ok(&["submit", "--worker", worker, prompt])
        .trim()
        .parse()
        .unwrap()
}

/// Three tasks, one conversation; the daemon killed hard leaves no claude.exe behind; a new
/// daemon goes on with the same conversation.
fn claude_keeps_its_conversation(mode: &str) {
    let fake = fake_anthropic::FakeServer::start().unwrap();
    let p = claude_project(&fake, mode);
    let d = p.start();
    let mut session = None;
    for k in 1..=3 {
        let id = submit_to(&p, "c", &format!("task {k}"));
        let t = p.wait(id);
        assert_eq!(t["state"], "succeeded", "{t}");
        let (n, prompts) = seen(t["output"].as_str().unwrap());
        assert_eq!(n, k, "task {k} saw {prompts:?}");
        let sid = t["session_id"].as_str().unwrap().to_string();
        assert_eq!(*session.get_or_insert(sid.clone()), sid, "one conversation");
    }
    // What the daemon started and still runs (persistent mode: the claude.exe serving the
    // worker) ends with it, by kill-on-job-close.
    let left = agentq_platform::process::children(d.child.id());
    if mode == "persistent" {
        assert!(
            !left.is_empty(),
            "the persistent claude.exe runs under the daemon"
        );
    }
    d.kill_hard();
    wait_until(
        Duration::from_secs(10),
        "the daemon's processes to end",
        || left.iter().all(|pid| !alive(*pid)),
    );
    let _d = p.start();
    let id = submit_to(&p, "c", "task 4");
    let t = p.wait(id);
    assert_eq!(t["state"], "succeeded", "{t}");
    assert_eq!(seen(t["output"].as_str().unwrap()).0, 4, "{t}");
    assert_eq!(t["session_id"].as_str(), session.as_deref());
}

#[test]
fn claude_exe_as_an_exec_worker_keeps_its_conversation() {
    claude_keeps_its_conversation("exec");
}

#[test]
fn claude_exe_as_a_persistent_worker_keeps_its_conversation() {
    claude_keeps_its_conversation("persistent");
}

#[test]
fn a_tree_over_max_memory_is_stopped_with_its_grandchildren_and_reports_on_the_way() {
    // Sampled from the job's working sets (Wine does not enforce job memory limits: agentq does
    // not rely on them).
    let p = Project::new(
        "max_memory = \"150MiB\"\nmemory_report_interval = \"200ms\"\nmax_attempts = 1\n\
         [daemon]\nmemory_sample_interval = \"100ms\"",
    );
    let _d = p.start();
    let id = p.submit("[[grandchildren 1]] [[grow 20 100]]");
    let t = p.wait(id);
    assert_eq!(t["cause"], "memory_limit", "{t}");
    let peak = t["memory_peak_mb"].as_f64().unwrap();
    assert!(peak > 150.0 && peak < 600.0, "peak {peak} MiB");
    none_left(&p.pids());
    let reports = p.json(&[
        "events",
        "--kind",
        "memory_report",
        "--task",
        &id.to_string(),
    ]);
    assert!(reports.as_array().unwrap().len() >= 2, "{reports}");
}

#[test]
fn a_command_naming_a_cmd_shim_on_path_is_found_through_pathext_and_gets_its_prompt_on_stdin() {
    // As npm installs CLIs on Windows: `name.cmd` in a folder on PATH, forwarding its arguments.
    let p = Project::new("");
    let shims = p.path("npm shims");
    std::fs::create_dir_all(&shims).unwrap();
    std::fs::write(
        shims.join("fakeagent.cmd"),
        format!(
            "@echo off\r\n\"{}\" %*\r\n",
            std::path::absolute(TEST_AGENT).unwrap().display()
        ),
    )
    .unwrap();
    let config = std::fs::read_to_string(p.path("agentq.toml"))
        .unwrap()
        .replace(
            &format!("command = ['{TEST_AGENT}']"),
            "command = ['fakeagent', 'an \"argument\" & more']",
        );
    std::fs::write(p.path("agentq.toml"), config).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    let mut run = p.cmd(&["run"]);
    run.env("PATH", format!("{};{path}", shims.display()));
    let d = p.start_with(run);
    let id = p.submit("through a shim; \"quotes\" & ampersands | pipes");
    let t = p.wait(id);
    assert_eq!(t["state"], "succeeded", "{t}\n{}", d.log());
    assert_eq!(
        t["output"], "done: through a shim; \"quotes\" & ampersands | pipes\n",
        "{t}"
    );
}

#[test]
fn prompt_files_from_windows_editors_are_read_as_they_were_meant() {
    let p = Project::new("[intake]\nsettle = \"100ms\"\n");
    let _d = p.start();
    let q = p.path(".queue/w");
    wait_until(Duration::from_secs(10), "the queue folder", || q.is_dir());
    let text = "héllo ✓ 日本\r\nsecond line\r\n";
    let mut utf16 = vec![0xFF, 0xFE];
    utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
    std::fs::write(q.join("notepad.prompt"), utf16).unwrap();
    let mut bom = vec![0xEF, 0xBB, 0xBF];
    bom.extend_from_slice(text.as_bytes());
    std::fs::write(q.join("bom.prompt"), bom).unwrap();
    wait_until(
        Duration::from_secs(30),
        "both files' tasks to be done",
        || {
            let tasks = p.json(&["tasks"]);
            tasks
                .as_array()
                .is_some_and(|a| a.iter().filter(|t| t["state"] == "succeeded").count() == 2)
        },
    );
    for t in p.json(&["tasks"]).as_array().unwrap() {
        let shown = p.json(&["show", &t["id"].to_string()]);
        assert_eq!(shown["prompt"], "héllo ✓ 日本\nsecond line\n", "{shown}");
    }
}

/// The Task Scheduler task of a project, deleted when dropped (should a test fail half-way), and
/// the folder agentq keeps its copy in (`LOCALAPPDATA` of the test's own).
struct Task {
    name: String,
    local: tempfile::TempDir,
}

impl Task {
    fn of(install_said: &str) -> String {
        install_said
            .split("Registered the task ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no task named in: {install_said}"))
            .to_string()
    }

    fn copy(&self) -> PathBuf {
        self.local
            .path()
            .join("agentq")
            .join("tasks")
            .join(format!("{}.xml", self.name))
    }

    /// Whether Task Scheduler has it: `schtasks /Query` on Windows; under Wine, whose schtasks
    /// has no `/Query`, the definition Wine keeps in system32\Tasks.
    fn registered(&self) -> bool {
        if agentq_platform::under_wine() {
            let root = std::env::var("SystemRoot").unwrap_or_else(|_| r"C:\windows".into());
            PathBuf::from(root)
                .join("System32")
                .join("Tasks")
                .join(&self.name)
                .exists()
        } else {
            Command::new("schtasks")
                .args(["/Query", "/TN", &self.name])
                .output()
                .unwrap()
                .status
                .success()
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let _ = Command::new("schtasks")
                .args(["/Delete", "/TN", &self.name, "/F"])
                .output();
        }
    }
}

impl Project {
    /// `agentq service ARGS` with `local` as LOCALAPPDATA.
    fn service(&self, local: &std::path::Path, args: &[&str]) -> Output {
        let mut all = vec!["service"];
        all.extend(args);
        self.cmd(&all).env("LOCALAPPDATA", local).output().unwrap()
    }
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn service_install_registers_a_logon_task_doctor_reports_it_and_uninstall_removes_it() {
    let p = Project::new("");
    let mut task = Task {
        name: String::new(),
        local: tempfile::tempdir().unwrap(),
    };
    let local = task.local.path().to_path_buf();
    let root = agentq_platform::fs::canonical(&p.root).unwrap();

    // --print: the task's XML, with the paths as written, registering nothing.
    let out = p.service(&local, &["install", "--print"]);
    assert!(out.status.success(), "{}", said(&out));
    let xml = String::from_utf8_lossy(&out.stdout).into_owned();
    let exe = agentq_platform::fs::canonical(std::path::Path::new(BIN)).unwrap();
    for part in [
        format!("<Command>{}</Command>", exe.display()),
        "<LogonTrigger>".to_string(),
        "<LogonType>InteractiveToken</LogonType>".to_string(),
        "<ExecutionTimeLimit>PT0S</ExecutionTimeLimit>".to_string(),
        format!("<WorkingDirectory>{}</WorkingDirectory>", root.display()),
        format!(
            "<Arguments>service run --config &quot;{}&quot;</Arguments>",
            root.join("agentq.toml").display()
        ),
    ] {
        assert!(xml.contains(&part), "{part} missing from:\n{xml}");
    }
    assert!(!xml.contains(r"\\?\"), "{xml}");
    assert!(!local.join("agentq").exists());

    let out = p.service(&local, &["install"]);
    assert!(out.status.success(), "{}", said(&out));
    task.name = Task::of(&said(&out));
    assert!(
        task.name.starts_with("agentq-pr-ject-dir-"),
        "{}",
        task.name
    );
    let copy = std::fs::read(task.copy()).unwrap();
    assert_eq!(copy[..2], [0xFF, 0xFE], "UTF-16LE with its byte-order mark");
    assert!(task.registered(), "{}", said(&out));
    assert!(
        said(&out).contains(&format!("schtasks /Run /TN {}", task.name)),
        "{}",
        said(&out)
    );

    let service_check = |local: &std::path::Path| -> Value {
        let out = p
            .cmd(&["doctor", "--json"])
            .env("LOCALAPPDATA", local)
            .output()
            .unwrap();
        let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
        checks
            .as_array()
            .and_then(|a| a.iter().find(|c| c["check"] == "service").cloned())
            .unwrap_or_else(|| panic!("no service check: {checks}"))
    };
    let check_here = service_check(&local);
    assert_eq!(check_here["status"], "ok", "{check_here}");
    let detail = check_here["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(&format!("task {} (", task.name)),
        "{detail}"
    );
    if agentq_platform::under_wine() {
        assert!(detail.contains("its state is unknown"), "{detail}");
    }

    let out = p.service(&local, &["install"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(said(&out).starts_with("Unchanged:"), "{}", said(&out));

    let out = p.service(&local, &["uninstall"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).contains(&format!("Ran `schtasks /Delete /TN {} /F`", task.name)),
        "{}",
        said(&out)
    );
    assert!(!task.copy().exists());
    assert!(!task.registered());

    let out = p.service(&local, &["uninstall"]);
    assert!(out.status.success(), "{}", said(&out));
    assert!(
        said(&out).starts_with("No agentq service is installed for "),
        "{}",
        said(&out)
    );
}

/// Ends process `pid` at once, as Task Manager does.
fn terminate(pid: u32) {
    use windows_sys::Win32::Foundation::CloseHandle;
    use windows_sys::Win32::System::Threading::{OpenProcess, PROCESS_TERMINATE, TerminateProcess};
    // SAFETY: a handle opened here by id, used once and closed.
    unsafe {
        let process = OpenProcess(PROCESS_TERMINATE, 0, pid);
        assert!(!process.is_null(), "process {pid} cannot be opened");
        TerminateProcess(process, 1);
        CloseHandle(process);
    }
}

#[test]
fn an_agent_cannot_break_away_from_its_job() {
    let p = Project::new("");
    let _d = p.start();
    let id = p.submit("[[escape]]");
    let t = p.wait(id);
    assert_eq!(t["state"], "succeeded", "{t}");
    let out = t["output"].as_str().unwrap();
    assert!(out.starts_with("escape refused: "), "{out}");
}

#[test]
fn service_run_starts_a_daemon_that_died_again_and_takes_it_along_when_ended() {
    let p = Project::new("");
    let mut supervisor = p
        .cmd(&["service", "run"])
        .env("AGENTQ_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let daemon = || -> Option<u32> {
        let status = p.json(&["status"]);
        (status["daemon"]["running"] == true)
            .then(|| status["daemon"]["pid"].as_u64().map(|p| p as u32))
            .flatten()
    };
    let mut first = None;
    wait_until(Duration::from_secs(60), "the daemon to start", || {
        first = daemon();
        first.is_some()
    });
    let first = first.unwrap();
    terminate(first);
    let mut second = None;
    wait_until(Duration::from_secs(60), "the daemon to start again", || {
        second = daemon().filter(|p| *p != first);
        second.is_some()
    });
    let second = second.unwrap();
    let log = std::fs::read_to_string(p.path(".agentq/service.log")).unwrap();
    assert!(
        log.contains("the daemon ended (exit code 1); starting it again in 5s"),
        "{log}"
    );
    // Its agents run in jobs of their own inside the daemon's.
    let id = p.submit("under the supervisor");
    assert_eq!(p.wait(id)["state"], "succeeded");

    // `schtasks /End` ends the task's process: the daemon's job goes with it.
    let _ = supervisor.kill();
    let _ = supervisor.wait();
    wait_until(Duration::from_secs(10), "the daemon to end with it", || {
        !alive(second)
    });
}
