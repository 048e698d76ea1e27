//! Claude workers end to end: the real `claude` CLI (installed by scripts/test) against the fake
//! Anthropic API on loopback, driven through the real agentq binary.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use fake_anthropic::FakeServer;

fn history_survives_restarts(mode: &str) {
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(&fake, &format!("mode = \"{mode}\""));
    let ids: Vec<i64> = (1..=10)
        .map(|k| p.submit("c", &format!("task {k}")))
        .collect();
    let daemon = p.start();
    p.wait_all(&ids);

    let mut session = None;
    for (k, id) in ids.iter().enumerate() {
        let (n, prompts) = seen(&p.output(*id));
        assert_eq!(n, k + 1, "task {} saw {prompts:?}", k + 1);
        assert_eq!(
            prompts,
            (1..=k + 1).map(|j| format!("task {j}")).collect::<Vec<_>>()
        );
        let t = p.task(*id);
        assert!(t["cost_usd"].as_f64().unwrap() > 0.0, "cost recorded");
        assert!(t["input_tokens"].as_i64().unwrap() > 0, "tokens recorded");
        let sid = t["session_id"].as_str().unwrap().to_string();
        assert_eq!(*session.get_or_insert(sid.clone()), sid, "one conversation");
    }
    // The CLI reports the conversation's total; each task is charged its own part, so the parts
    // add up to the total.
    let charged: f64 = ids
        .iter()
        .map(|id| p.task(*id)["cost_usd"].as_f64().unwrap())
        .sum();
    let total = p.json(&["status"])["workers"][0]["session_cost_usd"]
        .as_f64()
        .unwrap();
    assert!(
        (charged - total).abs() < 1e-9,
        "charged {charged}, conversation cost {total}"
    );
    assert!(daemon.stop().success());

    // A new daemon continues the same conversation.
    let daemon = p.start();
    let id = p.submit("c", "task 11");
    p.ok(&["wait", "--timeout", "60s", &id.to_string()]);
    assert_eq!(seen(&p.output(id)).0, 11);
    assert_eq!(p.task(id)["session_id"].as_str(), session.as_deref());
    assert!(daemon.stop().success());
}

fn gone_conversation(mode: &str) {
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(&fake, &format!("mode = \"{mode}\""));
    let daemon = p.start();
    let first = p.submit("c", "remember me");
    p.ok(&["wait", "--timeout", "60s", &first.to_string()]);
    let old = p.task(first)["session_id"].as_str().unwrap().to_string();

    // Claude keeps conversations under HOME/.claude/projects/<folder>/<session>.jsonl.
    // A live persistent process holds the conversation in memory: delete it while none runs.
    assert!(daemon.stop().success());
    let mut removed = 0;
    for dir in std::fs::read_dir(p.path("home/.claude/projects"))
        .unwrap()
        .flatten()
    {
        let file = dir.path().join(format!("{old}.jsonl"));
        if file.exists() {
            std::fs::remove_file(file).unwrap();
            removed += 1;
        }
    }
    assert_eq!(
        removed, 1,
        "the conversation file was where Claude keeps it"
    );

    let daemon = p.start();
    let second = p.submit("c", "after the loss");
    p.ok(&["wait", "--timeout", "60s", &second.to_string()]);
    let t = p.task(second);
    assert_eq!(
        seen(&p.output(second)),
        (1, vec!["after the loss".to_string()])
    );
    assert_eq!(t["attempts"], 1, "the reset did not spend an attempt");
    assert_ne!(t["session_id"].as_str().unwrap(), old);
    let resets = p.json(&["events", "--kind", "session_reset"]);
    assert_eq!(resets.as_array().unwrap().len(), 1, "{resets}");
    assert!(resets[0]["message"].as_str().unwrap().contains(&old));
    assert!(daemon.stop().success());
}

fn megabyte_prompt(mode: &str) {
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(&fake, &format!("mode = \"{mode}\""));
    let daemon = p.start();
    let mut prompt = String::from("the big one\n");
    while prompt.len() < (1 << 20) {
        prompt.push_str("lorem ipsum dolor sit amet, consectetur adipiscing elit\n");
    }
    let mut child = p
        .cmd(&["submit", "--wait", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), prompt.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        daemon.log()
    );
    assert_eq!(text(&out.stdout).trim(), "seen 1: the big one");
    assert!(daemon.stop().success());
}

#[test]
fn reset_session_and_fresh_sessions_start_new_conversations() {
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(&fake, "");
    let daemon = p.start();
    let a = p.submit("c", "one");
    p.ok(&["wait", "--timeout", "60s", &a.to_string()]);
    // A reset made while a task runs stands: the finishing task does not undo it.
    let slow = p.submit("c", "slow [[delay 1500ms]]");
    wait_until(Duration::from_secs(30), "the slow task to run", || {
        p.state(slow) == "running"
    });
    p.ok(&["worker", "reset-session", "c"]);
    p.ok(&["wait", "--timeout", "60s", &slow.to_string()]);
    let b = p.submit("c", "two");
    p.ok(&["wait", "--timeout", "60s", &b.to_string()]);
    assert_eq!(
        seen(&p.output(b)).0,
        1,
        "a new conversation after reset-session"
    );
    assert_ne!(p.task(a)["session_id"], p.task(b)["session_id"]);
    assert!(daemon.stop().success());

    let fresh = FakeServer::start().unwrap();
    let p = Project::with_claude(&fresh, "session = \"fresh\"");
    let daemon = p.start();
    for prompt in ["x", "y"] {
        let id = p.submit("c", prompt);
        p.ok(&["wait", "--timeout", "60s", &id.to_string()]);
        assert_eq!(seen(&p.output(id)), (1, vec![prompt.to_string()]));
    }
    assert!(daemon.stop().success());

    let out = p.run(&["worker", "reset-session", "nobody"]);
    assert_eq!(out.status.code(), Some(2));
}

fn overloaded_api(mode: &str) {
    // The CLI is told not to retry (CLAUDE_CODE_MAX_RETRIES = 0), so the 529 reaches agentq as an
    // error result; agentq retries with backoff and the second attempt gets an answer.
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(&fake, &format!("mode = \"{mode}\""));
    let daemon = p.start();
    let id = p.submit("c", "busy [[status 529 x1]]");
    p.ok(&["wait", "--timeout", "60s", &id.to_string()]);
    let t = p.task(id);
    assert_eq!(t["attempts"], 2);
    let kinds = event_kinds(&t);
    assert!(kinds.contains(&"task_retrying"), "{kinds:?}");
    let retry = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "task_retrying")
        .unwrap();
    assert!(
        retry["message"].as_str().unwrap().contains("529"),
        "{retry}"
    );
    assert!(daemon.stop().success());
}

#[test]
fn flags_environment_and_prompt_reach_the_cli_as_configured() {
    // A stand-in for claude that reports what it was given, as a result object.
    let p = Project::new("");
    let script = p.path("fake-claude.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nprompt=$(cat)\nprintf '{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"session_id\":\"%s\",\"result\":\"argv=%s|prompt=%s|CLAUDECODE=%s|KEEP=%s\"}' \"reported-id\" \"$*\" \"$prompt\" \"${CLAUDECODE:-unset}\" \"${CLAUDE_CODE_ENTRYPOINT:-unset}\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        p.path("agentq.toml"),
        format!(
            "[[worker]]\nname = \"c\"\nagent = \"claude\"\nclaude_bin = \"{}\"\nmodel = \"opus\"\nallowed_tools = [\"Read\", \"Bash(git log:*)\"]\nappend_system_prompt = \"-be brief\"\nmax_turns = 3\nenv = {{ CLAUDE_CODE_ENTRYPOINT = \"kept\" }}\n",
            script.display()
        ),
    )
    .unwrap();
    let daemon = p
        .cmd(&["run"])
        .env("CLAUDECODE", "1")
        .env("AGENTQ_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = Daemon {
        child: daemon,
        log: p.path("none.log"),
    };
    let first = p.submit("c", "hello there");
    p.ok(&["wait", "--timeout", "30s", &first.to_string()]);
    let out = p.output(first);
    assert!(out.contains("|prompt=hello there|"), "{out}");
    assert!(
        out.contains("CLAUDECODE=unset"),
        "a parent session's marker is removed: {out}"
    );
    assert!(
        out.contains("KEEP=kept"),
        "unless the worker sets it: {out}"
    );
    let argv = out.split('|').next().unwrap();
    assert!(
        argv.starts_with("argv=-p --output-format=stream-json --verbose --session-id="),
        "{argv}"
    );
    assert!(argv.contains("--model=opus --allowed-tools=Read --allowed-tools=Bash(git log:*) --append-system-prompt=-be brief --max-turns=3"), "{argv}");
    assert!(!argv.contains("dangerously"), "{argv}");

    // The id the result reported is the one resumed next.
    let second = p.submit("c", "again");
    p.ok(&["wait", "--timeout", "30s", &second.to_string()]);
    assert!(
        p.output(second).contains("--resume=reported-id"),
        "{}",
        p.output(second)
    );
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(30)).success());
}

fn usage_limit(mode: &str) {
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(&fake, &format!("mode = \"{mode}\""));
    let daemon = p.start();
    // The fake sets the reset four seconds after it answers, so a slow start cannot race it.
    let id = p.submit("c", "limited [[usage-limit +4 x1]]");
    let behind = p.submit("c", "behind it");
    wait_until(Duration::from_secs(60), "the worker to pause", || {
        p.json(&["status"])["workers"][0]["state"]
            .as_str()
            .unwrap()
            .starts_with("paused until")
    });
    let status = p.json(&["status"]);
    let until = status["workers"][0]["paused_until"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        until > now && until <= now + 5_000,
        "paused until the reset the answer gave: {status}"
    );
    assert_eq!(until % 1000, 0, "a whole second, as the answer gave it");
    let t = p.task(id);
    assert_eq!(
        (t["state"].as_str(), t["attempts"].as_i64()),
        (Some("queued"), Some(0)),
        "attempt not counted"
    );
    assert_eq!(p.state(behind), "queued", "nothing runs while paused");

    // It resumes by itself after the reset, with the limited task first.
    p.ok(&[
        "wait",
        "--timeout",
        "60s",
        &id.to_string(),
        &behind.to_string(),
    ]);
    let t = p.task(id);
    assert_eq!(t["attempts"], 1);
    assert!(
        t["started_at"].as_i64().unwrap() >= until,
        "ran again only after the reset"
    );
    assert!(
        t["finished_at"].as_i64() < p.task(behind)["finished_at"].as_i64(),
        "the limited task went first"
    );
    assert_eq!(
        p.json(&["events", "--kind", "worker_paused"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(daemon.stop().success());
}

#[test]
fn a_spent_daily_budget_pauses_the_worker_and_resume_lets_it_go_on() {
    let fake = FakeServer::start().unwrap();
    // Each answer from the fake costs a little more than this.
    let p = Project::with_claude(&fake, "budget_usd_per_day = 0.0001");
    let daemon = p.start();
    let first = p.submit("c", "spend");
    p.ok(&["wait", "--timeout", "60s", &first.to_string()]);
    let status = p.json(&["status"]);
    let w = &status["workers"][0];
    assert!(
        w["state"].as_str().unwrap().starts_with("paused until"),
        "{w}"
    );
    assert!(
        w["pause_reason"].as_str().unwrap().contains("daily budget"),
        "{w}"
    );
    assert!(w["cost_today_usd"].as_f64().unwrap() > 0.0001);
    let second = p.submit("c", "over budget");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.state(second), "queued", "paused for the rest of the day");
    assert!(p.ok(&["worker", "resume", "c"]).contains("resumed"));
    p.ok(&["wait", "--timeout", "60s", &second.to_string()]);
    assert!(daemon.stop().success());
}

/// The kinds, tools and texts of a task's transcript, from `agentq logs --json`.
fn transcript(p: &Project, id: i64) -> Vec<(String, String, String)> {
    p.json(&["logs", &id.to_string()])
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
            (s("kind"), s("tool"), s("text"))
        })
        .collect()
}

/// A task's transcript is live while it runs, and holds the tool call, its result, the answer and
/// how the run ended; each task of a long-lived process has its own.
fn transcripts(mode: &str) {
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(
        &fake,
        &format!("mode = \"{mode}\"\nallowed_tools = [\"Bash\"]"),
    );
    let daemon = p.start();
    let slow = p.submit("c", "take your time [[delay 3s]]");
    wait_until(
        Duration::from_secs(60),
        "the running task's transcript to say its session",
        || {
            transcript(&p, slow)
                .iter()
                .any(|(kind, _, text)| kind == "status" && text.starts_with("session "))
        },
    );
    let shown = p.ok(&["show", &slow.to_string()]);
    if p.task(slow)["state"] == "running" {
        assert!(shown.contains("elapsed:"), "{shown}");
        assert!(shown.contains("· session "), "{shown}");
    }
    p.ok(&["wait", "--timeout", "60s", &slow.to_string()]);

    let tool = p.submit("c", "look [[bash echo hi there]]");
    p.ok(&["wait", "--timeout", "60s", &tool.to_string()]);
    let t = transcript(&p, tool);
    let kinds: Vec<&str> = t.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(
        kinds,
        ["status", "tool_call", "tool_result", "text", "result"],
        "{t:?}"
    );
    assert_eq!(t[1].1, "Bash");
    assert_eq!(t[1].2, "echo hi there");
    assert_eq!(t[2].2, "hi there");
    assert_eq!(t[3].2, "ran: hi there");
    assert!(t[4].2.starts_with("done · $"), "{t:?}");
    let text = p.ok(&["logs", &tool.to_string()]);
    assert!(text.contains("→ Bash echo hi there"), "{text}");
    assert!(text.contains("= done"), "{text}");
    assert!(daemon.stop().success());
}

#[test]
fn transcripts_exec() {
    transcripts("exec");
}

#[test]
fn transcripts_persistent() {
    transcripts("persistent");
}

#[test]
fn history_survives_restarts_exec() {
    history_survives_restarts("exec");
}

#[test]
fn history_survives_restarts_persistent() {
    history_survives_restarts("persistent");
}

#[test]
fn gone_conversation_exec() {
    gone_conversation("exec");
}

#[test]
fn gone_conversation_persistent() {
    gone_conversation("persistent");
}

#[test]
fn megabyte_prompt_exec() {
    megabyte_prompt("exec");
}

#[test]
fn megabyte_prompt_persistent() {
    megabyte_prompt("persistent");
}

#[test]
fn overloaded_api_exec() {
    overloaded_api("exec");
}

#[test]
fn overloaded_api_persistent() {
    overloaded_api("persistent");
}

#[test]
fn usage_limit_exec() {
    usage_limit("exec");
}

#[test]
fn usage_limit_persistent() {
    usage_limit("persistent");
}

/// The pids of the long-lived processes a daemon started, from its log.
fn claude_pids(daemon: &Daemon) -> Vec<i32> {
    daemon
        .log()
        .lines()
        .filter(|l| l.contains("started a long-lived claude process"))
        .filter_map(|l| {
            l.split("pid=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[test]
fn a_hung_model_call_is_interrupted_and_the_same_process_serves_the_next_task() {
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(&fake, "mode = \"persistent\"\nmax_attempts = 1");
    let daemon = p.start();
    let warm = p.submit("c", "warm up");
    p.ok(&["wait", "--timeout", "60s", &warm.to_string()]);
    let hung = p
        .ok(&["submit", "-w", "c", "--timeout", "2s", "stuck [[hang]]"])
        .trim()
        .parse::<i64>()
        .unwrap();
    let out = p.run(&["wait", "--timeout", "60s", &hung.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let t = p.task(hung);
    assert!(
        t["error"]
            .as_str()
            .unwrap()
            .contains("interrupted; the process lives on"),
        "{t}"
    );
    let next = p.submit("c", "after the hang");
    p.ok(&["wait", "--timeout", "60s", &next.to_string()]);
    let (n, prompts) = seen(&p.output(next));
    assert_eq!(
        prompts.first().map(String::as_str),
        Some("warm up"),
        "same conversation: {prompts:?}"
    );
    assert!(n >= 3, "{prompts:?}");
    assert_eq!(
        claude_pids(&daemon).len(),
        1,
        "one process served all three:\n{}",
        daemon.log()
    );
    assert!(daemon.stop().success());
}

#[test]
fn a_claude_process_killed_mid_task_is_replaced_and_the_task_retried() {
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(&fake, "mode = \"persistent\"");
    let daemon = p.start();
    let warm = p.submit("c", "warm up");
    p.ok(&["wait", "--timeout", "60s", &warm.to_string()]);
    let first = claude_pids(&daemon)[0];
    let slow = p.submit("c", "slow [[delay 2s]]");
    wait_until(Duration::from_secs(30), "the slow task to run", || {
        p.state(slow) == "running"
    });
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    p.ok(&["wait", "--timeout", "60s", &slow.to_string()]);
    let t = p.task(slow);
    assert_eq!(t["attempts"], 2, "{t}");
    let pids = claude_pids(&daemon);
    assert_eq!(pids.len(), 2, "a new process took over: {pids:?}");
    assert!(!alive(first));
    // The new process resumed the conversation.
    assert_eq!(
        seen(&p.output(slow)).1.first().map(String::as_str),
        Some("warm up")
    );
    assert!(daemon.stop().success());
    assert!(!alive(pids[1]), "the process stops with the daemon");
}

#[test]
fn a_persistent_process_over_max_memory_is_stopped_mid_task_and_the_conversation_goes_on() {
    // Over the limit mid-task, the long-lived process is killed at once (memory_limit) and the
    // next process resumes the same conversation. The limit applies from the second task on, by
    // raising the claude process's footprint past it: a limit of 1 KiB stops every task, so the
    // first task is given room with a per-worker limit well above claude's size instead.
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(
        &fake,
        "mode = \"persistent\"\nmax_memory = \"1KiB\"\nmax_attempts = 1",
    );
    let daemon = p.start();
    let id = p.submit("c", "m1 [[delay 3000]]");
    p.run(&["wait", "--timeout", "60s", &id.to_string()]);
    let t = p.task(id);
    assert_eq!(t["state"], "dead", "{t}");
    assert_eq!(t["cause"], "memory_limit", "{t}");
    assert!(
        t["error"]
            .as_str()
            .unwrap()
            .contains("over max_memory (1 KiB)"),
        "{t}"
    );
    assert!(t["memory_peak_mb"].as_f64().unwrap() > 1.0, "{t}");
    assert!(claude_pids(&daemon).iter().all(|pid| !alive(*pid)));
    assert!(daemon.stop().success());
}

#[test]
fn rotate_starts_a_new_conversation_after_so_many_tasks_and_recycle_keeps_it() {
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(&fake, "session = \"rotate\"\nrotate_after_tasks = 2");
    let daemon = p.start();
    let ids: Vec<i64> = ["r1", "r2", "r3"]
        .iter()
        .map(|q| p.submit("c", q))
        .collect();
    p.wait_all(&ids);
    assert_eq!(seen(&p.output(ids[1])).0, 2);
    assert_eq!(
        seen(&p.output(ids[2])),
        (1, vec!["r3".to_string()]),
        "rotated after two tasks"
    );
    assert!(daemon.stop().success());

    // recycle_after_tasks replaces the process, never the conversation.
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(&fake, "mode = \"persistent\"\nrecycle_after_tasks = 2");
    let daemon = p.start();
    let ids: Vec<i64> = ["a", "b", "c", "d"]
        .iter()
        .map(|q| p.submit("c", q))
        .collect();
    p.wait_all(&ids);
    assert_eq!(seen(&p.output(ids[3])).0, 4);
    assert_eq!(
        claude_pids(&daemon).len(),
        2,
        "two processes, two tasks each:\n{}",
        daemon.log()
    );
    assert!(daemon.stop().success());
}

#[test]
fn a_long_task_routed_to_the_pool_gets_its_own_conversation_and_the_workers_goes_on() {
    let fake = FakeServer::start().unwrap();
    let p = Project::with_claude(&fake, "mode = \"persistent\"\nroute = \"auto\"");
    let _daemon = p.start();
    let run = |prompt: &str| {
        let id = p.submit("c", prompt);
        p.ok(&["wait", "--timeout", "60s", &id.to_string()]);
        p.task(id)
    };
    let first = run("Fix the first bug");
    assert_eq!(first["pool"], false);
    let worker_session = first["session_id"].as_str().unwrap().to_string();

    let long = run("Implement comprehensive authentication system");
    assert_eq!(
        (&long["pool"], &long["worker"]),
        (&true.into(), &"c".into())
    );
    let (n, prompts) = seen(long["output"].as_str().unwrap());
    assert_eq!(
        (n, prompts),
        (
            1,
            vec!["Implement comprehensive authentication system".to_string()]
        ),
        "a conversation of its own"
    );
    let pool_session = long["session_id"].as_str().unwrap();
    assert_ne!(pool_session, worker_session);
    assert!(
        long["cost_usd"].as_f64().unwrap() > 0.0,
        "its cost is its own"
    );

    let next = run("Fix the second bug");
    assert_eq!(next["pool"], false);
    assert_eq!(next["session_id"].as_str().unwrap(), worker_session);
    let (n, prompts) = seen(next["output"].as_str().unwrap());
    assert_eq!(
        (n, prompts),
        (
            2,
            vec!["Fix the first bug".into(), "Fix the second bug".into()]
        ),
        "the worker's conversation did not see the pool's task"
    );
    let status = p.json(&["status"]);
    assert_eq!(status["workers"][0]["session_id"], worker_session.as_str());
}
