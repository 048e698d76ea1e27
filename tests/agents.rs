//! Codex and Gemini workers end to end: the real `codex` and `gemini` CLIs (installed by
//! scripts/test at pinned versions) against the fake OpenAI Responses and Gemini APIs on
//! loopback, driven through the real agentq binary. Each scenario runs once per CLI, the way
//! Claude's run in tests/claude.rs: the same guarantees for every driver.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::*;
use fake_anthropic::FakeServer;

/// One agent CLI under test.
struct Cli {
    /// Its worker's name in the project `project` makes.
    worker: &'static str,
    project: fn(&FakeServer, &str) -> Project,
    /// Model calls the fake has answered for it.
    requests: fn(&FakeServer) -> u64,
    /// The input tokens the fake counts for the third prompt of a conversation, alone: the
    /// OpenAI fake 1000 per prompt seen, the Gemini fake 1000 in all (plus the prompts' bytes / 4).
    third_input: std::ops::Range<i64>,
}

const CODEX: Cli = Cli {
    worker: "x",
    project: Project::with_codex,
    requests: FakeServer::responses_requests,
    third_input: 3000..4000,
};

const GEMINI: Cli = Cli {
    worker: "g",
    project: Project::with_gemini,
    requests: FakeServer::gemini_requests,
    third_input: 1000..1100,
};

/// Three tasks on one worker, a daemon restart between the second and the third: the third
/// answer proves the model saw the first two, in one conversation the agent kept; each task is
/// charged its own tokens.
fn context_is_kept_across_tasks_and_restarts(cli: &Cli) {
    let fake = FakeServer::start().unwrap();
    let p = (cli.project)(&fake, "");
    let w = cli.worker;
    let first = p.submit(w, "alpha: remember apples");
    let second = p.submit(w, "beta: and pears");
    let daemon = p.start();
    p.ok(&[
        "wait",
        "--timeout",
        "120s",
        &first.to_string(),
        &second.to_string(),
    ]);
    assert!(daemon.stop().success());
    let daemon = p.start();
    let third = p.submit(w, "gamma: what fruit?");
    let out = p.run(&["wait", "--timeout", "120s", &third.to_string()]);
    assert!(out.status.success(), "{}\n{}", p.task(third), daemon.log());
    assert_eq!(
        seen(&p.output(third)),
        (
            3,
            vec![
                "alpha: remember apples".to_string(),
                "beta: and pears".to_string(),
                "gamma: what fruit?".to_string()
            ]
        )
    );
    let tasks: Vec<_> = [first, second, third]
        .iter()
        .map(|id| p.task(*id))
        .collect();
    let session = tasks[0]["session_id"].as_str().unwrap();
    for t in &tasks {
        assert_eq!(
            t["session_id"].as_str(),
            Some(session),
            "one conversation: {t}"
        );
        assert_eq!(t["attempts"], 1, "{t}");
        assert!(t["output_tokens"].as_i64().unwrap() > 0, "{t}");
    }
    // The third task is charged what its own model call read, not the conversation's running
    // total (Codex reports that; agentq charges the difference).
    let input = tasks[2]["input_tokens"].as_i64().unwrap();
    assert!(cli.third_input.contains(&input), "{}", tasks[2]);
    let status = p.json(&["status"]);
    assert_eq!(status["workers"][0]["session_id"].as_str(), Some(session));
    assert!(status["workers"][0]["tokens_today"].as_i64().unwrap() > 0);
    assert_eq!((cli.requests)(&fake), 3);
    // Its transcript: the session (thread), the answer, and how the run ended.
    let transcript = p.json(&["logs", &third.to_string()]);
    // (Gemini says a word or two on stderr first.)
    let kinds: Vec<&str> = transcript
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .filter(|k| *k != "stderr")
        .collect();
    assert_eq!(kinds.first(), Some(&"status"), "{transcript}");
    assert_eq!(kinds.last(), Some(&"result"), "{transcript}");
    let answer = transcript
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "text")
        .unwrap_or_else(|| panic!("an answer: {transcript}"));
    assert!(
        answer["text"].as_str().unwrap().starts_with("seen 3: "),
        "{transcript}"
    );
    assert!(daemon.stop().success());
}

/// A 429 from the model pauses the worker; the task goes back to the queue without spending an
/// attempt, and runs again (and succeeds) when the worker resumes.
fn a_rate_limit_pauses_the_worker_and_the_task_comes_back(cli: &Cli) {
    let fake = FakeServer::start().unwrap();
    let p = (cli.project)(&fake, "");
    let w = cli.worker;
    let daemon = p.start();
    let id = p.submit(w, "limited [[status 429 x1]]");
    wait_until(Duration::from_secs(60), "the worker to pause", || {
        p.json(&["status"])["workers"][0]["state"]
            .as_str()
            .unwrap()
            .starts_with("paused until")
    });
    let status = p.json(&["status"]);
    let reason = status["workers"][0]["pause_reason"].as_str().unwrap();
    assert!(reason.starts_with("usage limit"), "{reason}");
    let t = p.task(id);
    assert_eq!(
        (t["state"].as_str(), t["attempts"].as_i64()),
        (Some("queued"), Some(0)),
        "attempt not counted: {t}"
    );
    // Gemini's answer says when to try again (2 s), Codex's does not (a minute): resume by hand
    // rather than wait for either.
    p.ok(&["worker", "resume", w]);
    p.ok(&["wait", "--timeout", "60s", &id.to_string()]);
    let t = p.task(id);
    assert_eq!(t["attempts"], 1, "{t}\n{}", daemon.log());
    assert_eq!(seen(&p.output(id)).0, 1);
    assert!(daemon.stop().success());
}

/// A model call that never answers is stopped by the task's timeout, and nothing the agent
/// started is left running.
fn a_hung_model_call_is_stopped_by_the_timeout(cli: &Cli) {
    let fake = FakeServer::start().unwrap();
    let p = (cli.project)(&fake, "max_attempts = 1\nkill_timeout = \"1s\"");
    let w = cli.worker;
    let daemon = p.start();
    let id: i64 = p
        .ok(&["submit", "-w", w, "--timeout", "3s", "stuck [[hang]]"])
        .trim()
        .parse()
        .unwrap();
    let out = p.run(&["wait", "--timeout", "60s", &id.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let t = p.task(id);
    assert_eq!(t["state"], "dead", "its one attempt spent: {t}");
    assert!(
        t["error"]
            .as_str()
            .unwrap()
            .starts_with("timeout: still running after 3s"),
        "{t}"
    );
    wait_until(
        Duration::from_secs(5),
        "the agent's processes to be gone",
        || p.agent_processes().is_empty(),
    );
    assert!(daemon.stop().success());
}

#[test]
fn codex_keeps_its_conversation_across_tasks_and_restarts() {
    context_is_kept_across_tasks_and_restarts(&CODEX);
}

#[test]
fn gemini_keeps_its_conversation_across_tasks_and_restarts() {
    context_is_kept_across_tasks_and_restarts(&GEMINI);
}

#[test]
fn codex_rate_limit_pauses_the_worker() {
    a_rate_limit_pauses_the_worker_and_the_task_comes_back(&CODEX);
}

#[test]
fn gemini_rate_limit_pauses_the_worker() {
    a_rate_limit_pauses_the_worker_and_the_task_comes_back(&GEMINI);
}

#[test]
fn codex_hung_model_call_is_stopped_by_the_timeout() {
    a_hung_model_call_is_stopped_by_the_timeout(&CODEX);
}

#[test]
fn gemini_hung_model_call_is_stopped_by_the_timeout() {
    a_hung_model_call_is_stopped_by_the_timeout(&GEMINI);
}

#[test]
fn codex_runs_in_the_configured_sandbox_on_every_resume() {
    // `codex exec resume` does not keep the session's sandbox: agentq passes it every time, so
    // the second task may write too.
    let fake = FakeServer::start().unwrap();
    let p = Project::with_codex(&fake, "sandbox = \"workspace-write\"");
    let daemon = p.start();
    let first = p.submit("x", "one [[exec echo first > first.txt]]");
    p.ok(&["wait", "--timeout", "60s", &first.to_string()]);
    let second = p.submit("x", "two [[exec echo second > second.txt]]");
    p.ok(&["wait", "--timeout", "60s", &second.to_string()]);
    assert_eq!(
        p.task(first)["session_id"],
        p.task(second)["session_id"],
        "the second resumed the first's thread"
    );
    let transcript = p.json(&["logs", &first.to_string()]);
    let call = transcript
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "tool_call")
        .unwrap_or_else(|| panic!("a tool call: {transcript}"));
    assert_eq!(call["tool"], "shell");
    assert!(
        call["text"]
            .as_str()
            .unwrap()
            .contains("echo first > first.txt"),
        "{transcript}"
    );
    for file in ["first.txt", "second.txt"] {
        assert!(
            p.path(file).exists(),
            "{file} was written: {}\n{}",
            p.task(second),
            daemon.log()
        );
    }
    assert!(daemon.stop().success());
}

#[test]
fn a_gemini_conversation_that_is_gone_is_started_again_without_spending_an_attempt() {
    let fake = FakeServer::start().unwrap();
    let p = Project::with_gemini(&fake, "");
    let daemon = p.start();
    let first = p.submit("g", "remember me");
    p.ok(&["wait", "--timeout", "60s", &first.to_string()]);
    let old = p.task(first)["session_id"].as_str().unwrap().to_string();
    assert!(daemon.stop().success());
    // Gemini keeps sessions under <home>/.gemini/tmp/<project>/chats/.
    let home = p.path("home/.gemini/tmp");
    let mut removed = 0;
    for project in std::fs::read_dir(&home).unwrap().flatten() {
        let chats = project.path().join("chats");
        for file in std::fs::read_dir(&chats).into_iter().flatten().flatten() {
            std::fs::remove_file(file.path()).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0, "the session was where Gemini keeps it");
    let daemon = p.start();
    let second = p.submit("g", "after the loss");
    p.ok(&["wait", "--timeout", "60s", &second.to_string()]);
    let t = p.task(second);
    assert_eq!(
        seen(&p.output(second)),
        (1, vec!["after the loss".to_string()])
    );
    assert_eq!(t["attempts"], 1, "{t}");
    assert_ne!(t["session_id"].as_str().unwrap(), old);
    let resets = p.json(&["events", "--kind", "session_reset"]);
    assert_eq!(resets.as_array().unwrap().len(), 1, "{resets}");
    assert!(daemon.stop().success());
}
