//! The fake OpenAI Responses API against the real `codex` CLI: a thread of three turns keeps its
//! context, and a quota error fails the turn. Runs the codex in `AGENTQ_TEST_CODEX_BIN`, or the one
//! installed in the workspace's `.tools/codex`; skipped (with a note) when there is none.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use fake_anthropic::FakeServer;
use serde_json::Value;

fn codex_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("AGENTQ_TEST_CODEX_BIN") {
        return Some(bin.into());
    }
    let local =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/codex/node_modules/.bin/codex");
    local.exists().then_some(local)
}

/// A CODEX_HOME with a config pointing codex at the fake, and a working directory.
struct Codex {
    bin: PathBuf,
    root: PathBuf,
    home: PathBuf,
    cwd: PathBuf,
    tmp: PathBuf,
}

impl Codex {
    fn new(bin: PathBuf, fake: &FakeServer, name: &str) -> Codex {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("codex-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (home, cwd, tmp) = (root.join("home"), root.join("cwd"), root.join("tmp"));
        for dir in [&home, &cwd, &tmp] {
            std::fs::create_dir_all(dir).unwrap();
        }
        let config = format!(
            r#"model = "gpt-5.5"
model_provider = "fake"
approval_policy = "never"
[analytics]
enabled = false
[features]
plugins = false
[model_providers.fake]
name = "fake"
base_url = "{}"
env_key = "FAKE_OPENAI_KEY"
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0
"#,
            fake.openai_url()
        );
        std::fs::write(home.join("config.toml"), config).unwrap();
        Codex {
            bin,
            root,
            home,
            cwd,
            tmp,
        }
    }

    /// Runs `codex exec` (or `exec resume THREAD`) with the prompt on stdin: exit code and the
    /// JSONL events.
    fn run(&self, resume: Option<&str>, prompt: &str) -> (i32, Vec<Value>) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("exec");
        if resume.is_some() {
            cmd.arg("resume");
        }
        cmd.args(["--json", "--skip-git-repo-check"]);
        cmd.args(resume);
        cmd.arg("-")
            .current_dir(&self.cwd)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("CODEX_HOME", &self.home)
            .env("TMPDIR", &self.tmp)
            .env("FAKE_OPENAI_KEY", "sk-fake")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(prompt.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let events = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        (out.status.code().unwrap_or(-1), events)
    }
}

impl Drop for Codex {
    /// Kept when the test fails, to be looked at.
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn of_type<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == kind).collect()
}

#[test]
fn a_codex_thread_keeps_its_context_and_a_quota_error_fails_the_turn() {
    let Some(bin) = codex_bin() else {
        eprintln!(
            "skipped: no codex CLI (set AGENTQ_TEST_CODEX_BIN or install it in .tools/codex)"
        );
        return;
    };
    let fake = FakeServer::start().unwrap();
    let codex = Codex::new(bin, &fake, "thread");
    std::fs::write(codex.cwd.join("AGENTS.md"), "Be brief.\n").unwrap();

    let (code, events) = codex.run(None, "alpha: first\nmore of alpha");
    assert_eq!(code, 0, "{events:?}");
    let thread = of_type(&events, "thread.started")[0]["thread_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (code, _) = codex.run(Some(&thread), "beta: second");
    assert_eq!(code, 0);
    let (code, events) = codex.run(Some(&thread), "gamma: third");
    assert_eq!(code, 0);
    assert_eq!(of_type(&events, "thread.started")[0]["thread_id"], *thread);
    let message = of_type(&events, "item.completed")
        .into_iter()
        .find(|e| e["item"]["type"] == "agent_message")
        .unwrap();
    assert_eq!(
        message["item"]["text"],
        "seen 3: alpha: first | beta: second | gamma: third"
    );
    // Usage is the thread's total: three requests with 1, 2 and 3 prompts.
    let usage = &of_type(&events, "turn.completed")[0]["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap() > 6000, "{usage}");
    assert_eq!(usage["cached_input_tokens"], 3000);
    assert_eq!(fake.responses_requests(), 3);

    let codex = Codex::new(codex.bin.clone(), &fake, "quota");
    let (code, events) = codex.run(None, "hello [[quota]]");
    assert_eq!(code, 1);
    assert_eq!(
        of_type(&events, "turn.failed")[0]["error"]["message"],
        "Quota exceeded. Check your plan and billing details."
    );
    assert_eq!(fake.responses_requests(), 4);
}
