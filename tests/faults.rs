//! Fault injection: the project's misbehaving agent (`agentq-test-agent`) hangs, ignores SIGTERM,
//! leaves grandchildren, eats memory, crashes, floods its output and lingers, and each time the
//! recorded cause, the timing, the process table and the next task on the worker are checked.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const TEST_AGENT: &str = env!("CARGO_BIN_EXE_agentq-test-agent");

/// A project with one worker `w` running the test agent, which writes every pid it starts
/// (grandchildren too) to `pids.log`.
fn project(extra: &str) -> Project {
    let p = Project::new("");
    let config = format!(
        "[defaults]\nbackoff = \"10ms\"\nmax_backoff = \"50ms\"\nkill_timeout = \"500ms\"\n{extra}\n\
         [[worker]]\nname = \"w\"\ncommand = [\"{TEST_AGENT}\"]\nenv = {{ AGENTQ_TEST_PIDS = \"{}\" }}\n",
        p.path("pids.log").display()
    );
    std::fs::write(p.path("agentq.toml"), config).unwrap();
    p
}

/// Every pid the test agent wrote.
fn pids(p: &Project) -> Vec<i32> {
    std::fs::read_to_string(p.path("pids.log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits (bounded) until none of the agent's processes is left in the process table.
fn none_left(p: &Project) {
    let all = pids(p);
    assert!(!all.is_empty(), "the agent wrote no pid");
    wait_until(
        Duration::from_secs(5),
        "every agent process to be gone",
        || all.iter().all(|pid| !alive(*pid)),
    );
}

/// Runs one faulty task with `max_attempts = 1`, then a good one on the same worker; returns the
/// faulty task's record and how long it took to end.
fn fault(p: &Project, prompt: &str) -> (serde_json::Value, Duration) {
    let started = Instant::now();
    let id = p.submit("w", prompt);
    p.run(&["wait", "--timeout", "60s", &id.to_string()]);
    let took = started.elapsed();
    let next = p.submit("w", "next one");
    p.ok(&["wait", "--timeout", "60s", &next.to_string()]);
    assert_eq!(p.output(next), "done: next one\n", "the next task runs");
    (p.task(id), took)
}

#[test]
fn a_timeout_kills_a_grandchild_that_ignores_sigterm() {
    let p = project("timeout = \"1s\"\nmax_attempts = 1");
    let daemon = p.start();
    let (t, took) = fault(&p, "[[ignore-term]] [[grandchildren 2]] [[hang]]");
    assert_eq!(t["state"], "dead");
    assert_eq!(t["cause"], "timeout");
    assert!(t["error"].as_str().unwrap().starts_with("timeout"), "{t}");
    // 1 s of timeout, 0.5 s of grace, then SIGKILL: well under 5 s.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(
        pids(&p).len(),
        3 + 1,
        "agent, two grandchildren, the next task"
    );
    none_left(&p);
    assert!(daemon.stop().success());
}

#[test]
fn a_silent_agent_is_stopped_by_the_idle_watchdog_and_a_busy_one_is_not() {
    let p = project("idle_timeout = \"700ms\"\nmax_attempts = 1");
    let daemon = p.start();
    let (t, took) = fault(&p, "[[say started]] [[hang]]");
    assert_eq!(t["cause"], "idle_timeout", "{t}");
    assert!(t["error"].as_str().unwrap().contains("no output for 700ms"));
    assert!(took < Duration::from_secs(4), "{took:?}");
    none_left(&p);
    // Output every 200 ms for two seconds: busy, never idle for 700 ms.
    let id = p.submit("w", "[[tick 2000 200]]");
    p.ok(&["wait", "--timeout", "60s", &id.to_string()]);
    assert_eq!(p.state(id), "succeeded");
    assert!(daemon.stop().success());
}

#[test]
fn a_tree_over_max_memory_is_stopped_with_its_peak_and_reports_on_the_way() {
    let p = project(
        "max_memory = \"150MiB\"\nmemory_report_interval = \"200ms\"\nmax_attempts = 1\n\
         [daemon]\nmemory_sample_interval = \"100ms\"",
    );
    let daemon = p.start();
    let (t, took) = fault(&p, "[[grow 20 100]]");
    assert_eq!(t["cause"], "memory_limit", "{t}");
    let peak = t["memory_peak_mb"].as_f64().unwrap();
    assert!(peak > 150.0 && peak < 400.0, "peak {peak} MiB");
    assert!(took < Duration::from_secs(10), "{took:?}");
    none_left(&p);
    let reports = p.json(&["events", "--kind", "memory_report", "--task", "1"]);
    let reports = reports.as_array().unwrap();
    assert!(reports.len() >= 2, "{reports:?}");
    assert!(
        reports
            .iter()
            .all(|r| r["peak_mb"].as_f64().unwrap() >= r["rss_mb"].as_f64().unwrap())
    );
    // A task that finishes records its duration and its true peak, even one too short for a
    // scheduled sample (the kernel's figure, from the wait).
    let short = p.submit("w", "[[alloc 64]]");
    p.ok(&["wait", "--timeout", "60s", &short.to_string()]);
    let done = p.task(short);
    assert!(done["duration_ms"].as_i64().unwrap() < 1000, "{done}");
    let peak = done["memory_peak_mb"].as_f64().unwrap();
    assert!(peak >= 64.0, "peak {peak} MiB");
    assert!(daemon.stop().success());
}

#[test]
fn a_crash_by_signal_is_recorded_as_such_and_retried() {
    let p = project("max_attempts = 2");
    let daemon = p.start();
    let (t, _) = fault(&p, "[[crash SEGV]]");
    assert_eq!(t["state"], "dead");
    assert_eq!(t["cause"], "crashed");
    assert!(
        t["error"].as_str().unwrap().contains("signal 11, SIGSEGV"),
        "{t}"
    );
    let history = t["attempt_history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "every attempt is kept: {history:?}");
    assert!(history.iter().all(|a| a["cause"] == "crashed"));
    // A dead task comes back by hand.
    p.ok(&["retry", "1"]);
    let again = p.run(&["wait", "--timeout", "60s", "1"]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(p.task(1)["attempt_history"].as_array().unwrap().len(), 4);
    assert!(daemon.stop().success());
}

#[test]
fn garbage_and_huge_output_are_kept_within_the_cap() {
    let p = project(
        "max_attempts = 1\n[daemon]\noutput_cap = \"1MiB\"\nlog_max_size = \"1MiB\"\nlog_backups = 2",
    );
    let daemon = p.start();
    let (t, _) = fault(&p, "[[garbage 5000]] [[huge 50000000]] [[stderr 3000000]]");
    assert_eq!(t["state"], "succeeded", "{t}");
    // Invalid bytes are kept as U+FFFD, three bytes each: at most three times the cap.
    assert!(t["output"].as_str().unwrap().len() <= 3 << 20);
    assert!(t["stderr_tail"].as_str().unwrap().len() <= 64 << 10);
    let kinds = event_kinds(&t);
    assert!(kinds.contains(&"output_truncated"), "{kinds:?}");
    // The agent log has the stream, rotated: the newest 1 MiB and one older file.
    let log = std::path::PathBuf::from(t["agent_log"].as_str().unwrap());
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let rotated = |n: u32| std::path::PathBuf::from(format!("{}.{n}", log.display()));
    assert!(size(&log) > 0 && size(&log) <= (1 << 20) + (64 << 10));
    assert!(size(&rotated(1)) > 0);
    assert!(!rotated(2).exists(), "one older file per task log");
    assert!(
        !std::path::PathBuf::from(format!("{}.lock", log.display())).exists(),
        "a task log has one writer and no lock file"
    );
    none_left(&p);
    assert!(daemon.stop().success());
}

#[test]
fn a_claude_exec_run_that_hangs_after_its_result_line_is_stopped_and_succeeds() {
    // The test agent stands in for the CLI: it prints a result line like `claude -p
    // --output-format json` and keeps stdout open, as the CLI has been seen to.
    let p = Project::new("");
    std::fs::write(
        p.path("agentq.toml"),
        format!(
            "[defaults]\nlinger_timeout = \"500ms\"\nkill_timeout = \"500ms\"\n\
             [[worker]]\nname = \"w\"\nagent = \"claude\"\nclaude_bin = \"{TEST_AGENT}\"\n\
             env = {{ AGENTQ_TEST_PIDS = \"{}\" }}\n",
            p.path("pids.log").display()
        ),
    )
    .unwrap();
    let daemon = p.start();
    let started = Instant::now();
    let id = p.submit("w", "hello [[claude-json]] [[linger]]");
    p.ok(&["wait", "--timeout", "60s", &id.to_string()]);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(p.output(id), "done: hello");
    let t = p.task(id);
    let kinds = event_kinds(&t);
    assert!(kinds.contains(&"task_lingered"), "{kinds:?}");
    none_left(&p);
    assert!(daemon.stop().success());
}

#[test]
fn a_long_lived_process_that_keeps_dying_leaves_the_worker_errored_until_restarted() {
    let p = Project::new("");
    let bin = p.path("dies-at-once");
    std::fs::write(&bin, "#!/bin/sh\necho 'cannot start' >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&bin, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        p.path("agentq.toml"),
        format!(
            "[defaults]\nbackoff = \"10ms\"\nmax_backoff = \"20ms\"\n\
             max_restarts = 2\nrestart_delay = \"50ms\"\nmin_uptime = \"10s\"\n\
             [[worker]]\nname = \"c\"\nmode = \"persistent\"\nclaude_bin = \"{}\"\n",
            bin.display()
        ),
    )
    .unwrap();
    let daemon = p.start();
    let id = p.submit("c", "anything");
    wait_until(Duration::from_secs(20), "the worker to go errored", || {
        p.json(&["status"])["workers"][0]["state"]
            .as_str()
            .unwrap()
            .starts_with("errored")
    });
    let state = p.json(&["status"])["workers"][0]["state"].clone();
    assert!(
        state.as_str().unwrap().contains("died 3 times in a row"),
        "{state}"
    );
    // The process never got to the task: no attempt was spent on it. Errored, it claims nothing.
    assert_eq!(p.task(id)["attempts"], 0);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(p.task(id)["attempts"], 0);
    assert_eq!(p.state(id), "queued");
    // A restart clears it; the process is then allowed its restarts again.
    std::fs::write(
        &bin,
        "#!/bin/sh\nwhile read line; do printf '{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"result\":\"ok\"}\\n'; done\n",
    )
    .unwrap();
    assert!(
        p.ok(&["worker", "restart", "c"])
            .contains("no longer errored")
    );
    p.ok(&["wait", "--timeout", "60s", &id.to_string()]);
    assert_eq!(p.output(id), "ok");
    let events = p.json(&["events", "--worker", "c"]);
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in ["agent_restarting", "worker_errored", "worker_restarted"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    // The status counts the restarts of this daemon's run, and the worker is up since the last.
    let restarts = kinds.iter().filter(|k| **k == "agent_restarting").count();
    let restarted_at = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "worker_restarted")
        .map(|e| e["ts"].as_i64().unwrap())
        .max()
        .unwrap();
    let c = p.json(&["status"])["workers"][0].clone();
    assert_eq!(c["restarts"], restarts as u64, "{c}");
    assert_eq!(c["up_since"], restarted_at, "{c}");
    assert_eq!(c["mode"], "persistent");
    assert!(
        c["pid"].as_i64().is_some(),
        "the long-lived process runs: {c}"
    );
    assert!(daemon.stop().success());
}

#[test]
fn the_guardian_kills_what_a_killed_daemon_left_and_without_it_the_next_daemon_does() {
    let p = project("");
    // An agent that ignores SIGTERM, with a grandchild.
    let daemon = p.start();
    let first = daemon.guardian().expect("the daemon has a guardian");
    // A guardian that someone kills is started again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut guardian = 0;
    wait_until(Duration::from_secs(10), "another guardian", || {
        guardian = daemon.guardian().unwrap_or(first);
        guardian != first
    });
    let id = p.submit("w", "[[grandchildren 1]] [[ignore-term]] [[sleep 60000]]");
    wait_until(
        Duration::from_secs(20),
        "the agent and its grandchild",
        || p.state(id) == "running" && pids(&p).len() >= 2,
    );
    // SIGKILL: no chance to clean up. The guardian does it.
    let started = Instant::now();
    daemon.kill9();
    wait_until(
        Duration::from_secs(5),
        "the agents to die with the daemon",
        || pids(&p).iter().all(|pid| !alive(*pid)),
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "{took:?}");
    wait_until(Duration::from_secs(5), "the guardian to end", || {
        !alive(guardian)
    });

    // Both the daemon and its guardian killed (`pkill -9 agentq`): the agents live on until the
    // next daemon starts, which reaps them from the book before it runs anything.
    let daemon = p.start();
    wait_until(
        Duration::from_secs(20),
        "the recovered task to run again",
        || p.state(id) == "running" && pids(&p).iter().filter(|pid| alive(**pid)).count() >= 2,
    );
    let guardian = daemon.guardian().expect("the daemon has a guardian");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guardian),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    daemon.kill9();
    std::thread::sleep(Duration::from_millis(300));
    let left: Vec<i32> = pids(&p).into_iter().filter(|pid| alive(*pid)).collect();
    assert!(
        left.len() >= 2,
        "the agent and its grandchild outlive both: {left:?}"
    );
    let daemon = p.start();
    wait_until(
        Duration::from_secs(10),
        "the next daemon to reap them",
        || left.iter().all(|pid| !alive(*pid)),
    );
    let reaped = p.json(&["events", "--kind", "agent_reaped", "--limit", "0"]);
    assert!(!reaped.as_array().unwrap().is_empty(), "nothing was reaped");
    p.ok(&["cancel", &id.to_string()]);
    assert!(daemon.stop().success());
    none_left(&p);
}

#[test]
fn kill_9_of_the_daemon_under_load_loses_nothing_and_leaves_no_process() {
    // 4 workers x 50 prompt files. Each agent leaves a grandchild that ignores SIGTERM, so a
    // crashed daemon's leftovers are there to be reaped.
    let p = Project::new("");
    let mut config =
        String::from("[defaults]\nkill_timeout = \"500ms\"\n[intake]\nsettle = \"50ms\"\n");
    for w in ["a", "b", "c", "d"] {
        config.push_str(&format!(
            "[[worker]]\nname = \"{w}\"\ncommand = [\"{TEST_AGENT}\"]\nenv = {{ AGENTQ_TEST_PIDS = \"{}\" }}\n",
            p.path("pids.log").display()
        ));
    }
    std::fs::write(p.path("agentq.toml"), config).unwrap();
    let daemon = p.start();
    for i in 0..50 {
        for w in ["a", "b", "c", "d"] {
            p.drop_file(
                &format!(".queue/{w}/{i:03}.prompt"),
                format!("{w}{i} [[grandchildren 1]] [[sleep 50]]").as_bytes(),
            );
        }
    }
    wait_until(Duration::from_secs(60), "some tasks to finish", || {
        p.totals()["succeeded"].as_u64().unwrap_or(0) >= 40
    });
    let first_pid = daemon.pid();
    daemon.kill9();
    // The first daemon's agents and their grandchildren (which ignore SIGTERM) die with it: its
    // guardian kills them at once.
    wait_until(
        Duration::from_secs(5),
        "the guardian to kill what the daemon left",
        || pids(&p).iter().all(|pid| !alive(*pid)),
    );
    let seen_before = pids(&p);
    let daemon = p.start();
    wait_until(Duration::from_secs(120), "all 200 tasks to finish", || {
        p.totals()["succeeded"].as_u64().unwrap_or(0) == 200
    });
    assert!(!alive(first_pid));
    assert!(daemon.stop().success());
    // The first daemon was killed mid-task: the second took its tasks back.
    let recovered = p.json(&["events", "--kind", "task_recovered", "--limit", "0"]);
    assert!(
        !recovered.as_array().unwrap().is_empty(),
        "no task was running at the kill"
    );
    // Everything either daemon started is gone.
    let all = pids(&p);
    assert!(
        all.len() > seen_before.len(),
        "the second daemon ran agents too"
    );
    wait_until(Duration::from_secs(10), "no agent process left", || {
        all.iter().all(|pid| !alive(*pid))
    });
    // Each task completed exactly once, and each prompt became exactly one task.
    let tasks = p.json(&["tasks", "--limit", "0"]);
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 200);
    let mut prompts: Vec<String> = Vec::new();
    for t in tasks {
        let id = t["id"].as_i64().unwrap();
        let full = p.task(id);
        assert_eq!(full["state"], "succeeded");
        let finished = full["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "task_finished")
            .count();
        assert_eq!(finished, 1, "task {id}: {full}");
        prompts.push(full["prompt"].as_str().unwrap().to_string());
    }
    prompts.sort();
    prompts.dedup();
    assert_eq!(prompts.len(), 200, "no prompt file taken twice");
    for w in ["a", "b", "c", "d"] {
        let left: Vec<_> = std::fs::read_dir(p.path(&format!(".queue/{w}")))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != ".taking" && n != "rejected")
            .collect();
        assert!(left.is_empty(), "{w}: {left:?}");
        let taking = p.path(&format!(".queue/{w}/.taking"));
        assert!(
            std::fs::read_dir(&taking).map_or(true, |d| d.count() == 0),
            "{w}: files left mid-take"
        );
    }
}

#[test]
fn sigterm_lets_running_tasks_finish_and_a_second_one_stops_the_rest_losing_nothing() {
    let p = Project::new("");
    let mut config =
        String::from("[defaults]\nkill_timeout = \"500ms\"\n[daemon]\nshutdown_grace = \"30s\"\n");
    for w in ["quick", "stuck"] {
        config.push_str(&format!(
            "[[worker]]\nname = \"{w}\"\ncommand = [\"{TEST_AGENT}\"]\nenv = {{ AGENTQ_TEST_PIDS = \"{}\" }}\n",
            p.path("pids.log").display()
        ));
    }
    std::fs::write(p.path("agentq.toml"), config).unwrap();
    let mut daemon = p.start();
    let quick = p.submit("quick", "[[sleep 1000]]");
    let stuck = p.submit("stuck", "[[ignore-term]] [[hang]]");
    let queued = p.submit("quick", "behind the quick one");
    wait_until(Duration::from_secs(10), "both agents to run", || {
        pids(&p).len() == 2
    });
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    // The running task finishes within the grace; nothing new starts.
    wait_until(Duration::from_secs(10), "the quick task to finish", || {
        p.state(quick) == "succeeded"
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.state(queued), "queued", "no claim after the first signal");
    assert_eq!(p.state(stuck), "running");
    // The second signal stops the rest at once: SIGTERM, 500 ms, SIGKILL.
    let second = Instant::now();
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(daemon.wait(Duration::from_secs(10)).success());
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "{:?}",
        second.elapsed()
    );
    let t = p.task(stuck);
    assert_eq!(
        (t["state"].as_str(), t["attempts"].as_i64()),
        (Some("queued"), Some(0))
    );
    none_left(&p);
    // And the next daemon runs what was left.
    let daemon = p.start();
    p.ok(&["wait", "--timeout", "60s", &queued.to_string()]);
    p.ok(&["cancel", &stuck.to_string()]);
    assert!(daemon.stop().success());
    none_left(&p);
}

#[test]
fn a_daemon_started_with_sigchld_ignored_still_sees_how_its_agents_end() {
    use std::os::unix::process::CommandExt;
    let p = project("max_attempts = 1");
    let mut cmd = p.cmd(&["run"]);
    // SAFETY: between fork and exec only signal(2) is called.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            Ok(())
        });
    }
    let daemon = p.start_with(cmd);
    let good = p.submit("w", "fine");
    let bad = p.submit("w", "[[exit 3]]");
    p.run(&[
        "wait",
        "--timeout",
        "60s",
        &good.to_string(),
        &bad.to_string(),
    ]);
    assert_eq!(p.state(good), "succeeded");
    let t = p.task(bad);
    assert_eq!(
        (t["state"].as_str(), t["exit_code"].as_i64()),
        (Some("dead"), Some(3)),
        "{t}"
    );
    assert!(daemon.stop().success());
}

/// A database file that is not one, or whose pages are damaged, is refused at start with an
/// error naming the file and how to recover; the file is left exactly as it was (never replaced
/// by a new, empty database), and `doctor` fails on it too.
#[test]
fn a_damaged_database_is_refused_at_start_and_left_as_it_was() {
    for damage in ["not a database", "damaged pages"] {
        let p = Project::with_workers(&["w"], r#"["cat"]"#, "");
        for i in 0..50 {
            p.submit("w", &format!("task {i} {}", "x".repeat(2000)));
        }
        let db = p.path(".agentq/agentq.db");
        match damage {
            "not a database" => std::fs::write(&db, b"this is not an SQLite file").unwrap(),
            _ => {
                // Overwrite pages in the middle of the file (not its header).
                use std::io::{Seek, SeekFrom, Write};
                let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
                f.seek(SeekFrom::Start(8192)).unwrap();
                f.write_all(&[0xA5; 16384]).unwrap();
            }
        }
        let before = std::fs::read(&db).unwrap();
        let out = p.run(&["run"]);
        assert_eq!(out.status.code(), Some(3), "{damage}: {out:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("the database {} is damaged", db.display()))
                && err.contains("will not run on it")
                && err.contains(".recover"),
            "{damage}: {err}"
        );
        assert_eq!(
            std::fs::read(&db).unwrap(),
            before,
            "{damage}: the file was changed"
        );
        let doctor = p.run(&["doctor"]);
        assert!(!doctor.status.success(), "{damage}");
        let report = text(&doctor.stdout);
        assert!(
            report
                .lines()
                .any(|l| l.starts_with("FAIL") && l.contains("database")),
            "{damage}: {report}"
        );
    }
}

/// After a clean stop the database file holds everything: its write-ahead log and shared-memory
/// files deleted, the next daemon finds every task as it was.
#[test]
fn a_deleted_wal_after_a_clean_stop_loses_nothing() {
    let p = Project::with_workers(&["w"], r#"["cat"]"#, "");
    let daemon = p.start();
    let ids: Vec<i64> = (0..20)
        .map(|i| p.submit("w", &format!("task {i}")))
        .collect();
    p.wait_all(&ids);
    assert!(daemon.stop().success());
    let queued = p.submit("w", "queued while no daemon runs");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(p.path(&format!(".agentq/agentq.db{suffix}")));
    }
    for id in &ids {
        assert_eq!(p.state(*id), "succeeded");
        assert_eq!(p.output(*id), format!("task {}", id - 1));
    }
    assert_eq!(p.state(queued), "queued");
    let daemon = p.start();
    p.wait_all(&[queued]);
    assert!(daemon.stop().success());
}

/// Three `kill -9`s of the daemon while 500 tasks run: every task ends succeeded exactly once,
/// and every run of an agent is one of its task's recorded attempts (a run cut short by a kill is
/// recorded as interrupted and run again, never as an unrecorded extra).
#[test]
fn three_kill_9s_during_500_tasks_record_each_task_done_exactly_once() {
    let p = Project::new("");
    let effects = p.path("effects.log");
    let mut config = String::from("[defaults]\nkill_timeout = \"200ms\"\nmax_attempts = 10\n");
    for w in ["a", "b", "c", "d"] {
        config.push_str(&format!(
            "[[worker]]\nname = \"{w}\"\ncommand = [\"sh\", \"-c\", \
             \"cat >/dev/null; echo \\\"$AGENTQ_TASK_ID $AGENTQ_ATTEMPT\\\" >> {}; sleep 0.01; echo done\"]\n",
            effects.display()
        ));
    }
    std::fs::write(p.path("agentq.toml"), config).unwrap();
    let mut ids = Vec::new();
    for w in ["a", "b", "c", "d"] {
        let lines: String = (0..125).map(|i| format!("{w} {i}\n")).collect();
        let mut cmd = p.cmd(&["submit", "--worker", w, "--lines", "-"]);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(lines.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        ids.extend(
            text(&out.stdout)
                .lines()
                .filter_map(|l| l.trim().parse::<i64>().ok()),
        );
    }
    assert_eq!(ids.len(), 500);
    for goal in [60, 180, 300] {
        let daemon = p.start();
        wait_until(Duration::from_secs(120), "tasks to run", || {
            p.totals()["succeeded"].as_u64().unwrap_or(0) >= goal
        });
        daemon.kill9();
    }
    let daemon = p.start();
    wait_until(Duration::from_secs(180), "all 500 to succeed", || {
        p.totals()["succeeded"].as_u64().unwrap_or(0) == 500
    });
    assert!(daemon.stop().success());
    let mut runs: std::collections::HashMap<i64, Vec<u32>> = Default::default();
    for line in read(&effects).lines() {
        let mut words = line.split_whitespace();
        let (Some(id), Some(attempt)) = (words.next(), words.next()) else {
            panic!("effect line {line:?}");
        };
        runs.entry(id.parse().unwrap())
            .or_default()
            .push(attempt.parse().unwrap());
    }
    let mut rerun = 0;
    for id in &ids {
        let t = p.task(*id);
        assert_eq!(t["state"], "succeeded", "{t}");
        let finished = t["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "task_finished")
            .count();
        assert_eq!(finished, 1, "task {id} done once: {t}");
        // Every run is a row of its attempt history: a run cut short by a kill is recorded as
        // `interrupted` (its attempt given back, so the re-run carries the same number), and
        // exactly one run succeeded.
        let history = t["attempt_history"].as_array().unwrap();
        let outcomes: Vec<&str> = history
            .iter()
            .map(|a| a["outcome"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(
            outcomes.iter().filter(|o| **o == "succeeded").count(),
            1,
            "task {id}: {outcomes:?}"
        );
        assert!(
            outcomes
                .iter()
                .all(|o| *o == "succeeded" || *o == "interrupted"),
            "task {id}: {outcomes:?}"
        );
        let seen = runs.remove(id).unwrap_or_default();
        assert!(
            !seen.is_empty() && seen.len() <= history.len(),
            "task {id}: {} run(s) against {} recorded attempt(s): {outcomes:?}",
            seen.len(),
            history.len()
        );
        rerun += usize::from(seen.len() > 1);
    }
    assert!(runs.is_empty(), "runs of unknown tasks: {runs:?}");
    eprintln!("{rerun} task(s) ran again after a kill");
}

/// A small tmpfs mounted on a folder for one test, unmounted when dropped (declare it before the
/// daemon, so the daemon stops first).
struct Tmpfs {
    dir: std::path::PathBuf,
}

impl Tmpfs {
    /// Mounts `size` (as mount's `size=` takes it) on `dir`. `None`, with the reason printed,
    /// where this machine does not let the test mount one (not root, no mount namespace): the
    /// test is skipped, not failed.
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0755"),
                "tmpfs",
            ])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs on {} ({}): {}",
                    dir.display(),
                    o.status,
                    text(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    /// Fills the file system with `filler` until `leave` bytes are free (or it is full).
    fn fill(&self, leave: u64) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 16 << 10];
        let free = |dir: &std::path::Path| {
            let st = nix::sys::statvfs::statvfs(dir).unwrap();
            st.blocks_available() as u64 * st.fragment_size() as u64
        };
        while free(&self.dir) > leave {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let umount = |args: &[&str]| {
            std::process::Command::new("umount")
                .args(args)
                .arg(&self.dir)
                .status()
                .is_ok_and(|s| s.success())
        };
        // Lazily if something still holds it, so the temporary folder can go.
        if !umount(&[]) && !umount(&["-l"]) {
            eprintln!("could not unmount {}", self.dir.display());
        }
    }
}

/// The `disk_full` and `disk_space_back` events recorded so far.
fn disk_events(p: &Project) -> (Vec<Value>, Vec<Value>) {
    let of = |kind: &str| {
        p.json(&["events", "--kind", kind])
            .as_array()
            .unwrap()
            .clone()
    };
    (of("disk_full"), of("disk_space_back"))
}

/// The `disk` line of `agentq doctor --json`.
fn doctor_disk(p: &Project) -> Value {
    let out = p.run(&["doctor", "--json"]);
    let checks: Value = serde_json::from_slice(&out.stdout).unwrap();
    checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "disk")
        .cloned()
        .unwrap_or_else(|| panic!("no disk check: {checks:#}"))
}

#[test]
fn a_full_disk_under_output_pauses_claiming_until_there_is_room_and_loses_nothing() {
    let p = Project::with_workers(
        &["w"],
        RECORDING_AGENT,
        "[daemon]\nmin_free_space = \"1MiB\"",
    );
    let Some(disk) = Tmpfs::mount(&p.path(".output"), "4m") else {
        return;
    };
    let filler = disk.fill(512 << 10);
    let daemon = p.start();
    let ids = [
        p.submit("w", "one"),
        p.submit("w", "two"),
        p.ok(&["submit", "--pool", "--worker", "w", "three"])
            .trim()
            .parse()
            .unwrap(),
    ];
    wait_until(Duration::from_secs(20), "a disk_full event", || {
        !disk_events(&p).0.is_empty()
    });
    let (full, _) = disk_events(&p);
    let said = full[0]["message"].as_str().unwrap();
    assert!(
        said.contains(&p.path(".output").display().to_string()),
        "{said}"
    );
    assert!(
        said.contains("agentq clean") && said.contains("resumes by itself"),
        "{said}"
    );
    assert!(
        full[0]["free_bytes"].as_u64().unwrap() < 1 << 20,
        "{:?}",
        full[0]
    );
    assert!(
        daemon.log().contains("the disk is full"),
        "{}",
        daemon.log()
    );
    // Nothing is claimed meanwhile, by the worker or the pool, and it is said once.
    std::thread::sleep(Duration::from_millis(2500));
    for id in ids {
        assert_eq!(p.state(id), "queued", "task {id}");
    }
    assert!(p.runs().is_empty(), "no agent ran: {:?}", p.runs());
    assert_eq!(disk_events(&p).0.len(), 1, "one event for one pause");
    let check = doctor_disk(&p);
    assert_eq!(check["status"], "fail", "{check}");
    assert!(
        check["detail"].as_str().unwrap().contains(".output has"),
        "{check}"
    );
    assert!(
        check["fix"].as_str().unwrap().contains("free space"),
        "{check}"
    );
    let status = p.json(&["status"]);
    assert!(
        status["disk_full"]["free_bytes"].as_u64().is_some(),
        "{status}"
    );
    assert!(p.ok(&["status"]).contains("disk full: claiming paused"));

    std::fs::remove_file(filler).unwrap();
    p.wait_all(&ids);
    for id in ids {
        assert_eq!(
            read(&p.path(&format!(".output/w/task_{id}.txt"))),
            p.output(id),
            "task {id} is done with its output"
        );
    }
    let (full, back) = disk_events(&p);
    assert_eq!((full.len(), back.len()), (1, 1), "{full:?} {back:?}");
    assert!(back[0]["ts"].as_i64() > full[0]["ts"].as_i64());
    assert_eq!(doctor_disk(&p)["status"], "ok");
    assert!(p.json(&["status"])["disk_full"].is_null());
    assert!(daemon.stop().success());
}

#[test]
fn a_result_whose_files_do_not_fit_is_not_done_and_runs_again_when_there_is_room() {
    let p = project("max_attempts = 1\n[daemon]\nmin_free_space = \"1MiB\"");
    let Some(disk) = Tmpfs::mount(&p.path(".output"), "8m") else {
        return;
    };
    // Room enough to claim, not for a result of a million bytes written twice (text and record).
    let filler = disk.fill(1536 << 10);
    let daemon = p.start();
    let big = p.submit("w", "[[huge 1000000]]");
    wait_until(Duration::from_secs(30), "a disk_full event", || {
        !disk_events(&p).0.is_empty()
    });
    let t = p.task(big);
    assert_eq!(t["state"], "queued", "not done without its files: {t}");
    assert_eq!(t["attempts"], 0, "its attempt was given back: {t}");
    let kinds = event_kinds(&t);
    assert!(!kinds.contains(&"task_finished"), "{kinds:?}");
    let full = &disk_events(&p).0[0];
    let said = full["message"].as_str().unwrap();
    assert!(said.contains("No space left on device"), "{said}");
    assert!(
        !p.path(".output/w/task_1.txt").exists(),
        "no text without its record"
    );
    let next = p.submit("w", "small");
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(p.state(next), "queued", "claiming is paused");
    assert_eq!(p.state(big), "queued");
    assert_eq!(disk_events(&p).0.len(), 1);

    std::fs::remove_file(filler).unwrap();
    p.wait_all(&[big, next]);
    assert_eq!(read(&p.path(".output/w/task_1.txt")), p.output(big));
    assert!(p.output(big).len() >= 1_000_000);
    assert!(p.path(".output/w/task_1.json").exists());
    assert_eq!(
        read(&p.path(&format!(".output/w/task_{next}.txt"))),
        "done: small\n"
    );
    let t = p.task(big);
    assert_eq!(t["attempts"], 1, "one attempt counted: {t}");
    assert_eq!(disk_events(&p).1.len(), 1);
    assert!(daemon.stop().success());
}
