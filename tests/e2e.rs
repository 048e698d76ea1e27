//! End-to-end: the real binary, real SQLite files, real agent processes, in temporary folders.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(60);

#[test]
fn init_writes_a_working_config_and_a_private_state_folder() {
    let dir = tempfile::tempdir().unwrap();
    let project = Project { dir };
    std::fs::remove_file(project.path("agentq.toml")).ok();
    let out = project.ok(&["init"]);
    assert!(out.contains("agentq.toml"), "{out}");
    let mode = std::fs::metadata(project.path(".agentq"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o700);
    assert!(project.path(".agentq/agentq.db").exists());

    // The template's `cat` worker runs as it is.
    let daemon = project.start();
    let out = project.ok(&["submit", "--wait", "echo me"]);
    assert_eq!(out, "echo me\n");
    assert!(daemon.stop().success());

    // A second init keeps the file; --force rewrites it.
    std::fs::write(
        project.path("agentq.toml"),
        format!("{}\n# mine\n", read(&project.path("agentq.toml"))),
    )
    .unwrap();
    assert!(project.ok(&["init"]).contains("already exists"));
    assert!(read(&project.path("agentq.toml")).contains("# mine"));
    project.ok(&["init", "--force"]);
    assert!(!read(&project.path("agentq.toml")).contains("# mine"));
}

#[test]
fn commands_find_the_config_in_a_parent_folder_or_by_flag() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "");
    std::fs::create_dir_all(p.path("deep/er")).unwrap();
    let out = p
        .cmd(&["status", "--json"])
        .current_dir(p.path("deep/er"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let elsewhere = tempfile::tempdir().unwrap();
    let config = p.path("agentq.toml");
    let out = p
        .cmd(&["--config", config.to_str().unwrap(), "status"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = p
        .cmd(&["status"])
        .current_dir(elsewhere.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("agentq init"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_bad_config_names_file_line_and_expectation() {
    let p = Project::new("[defaults]\ntimeout = \"10m\"\nmax_attempts = \"three\"\n");
    let out = p.run(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("agentq.toml:3:"), "{err}");
    assert!(err.contains("expected a whole number"), "{err}");
}

#[test]
fn hundred_prompt_files_across_three_workers_are_each_done_exactly_once() {
    let p = Project::with_workers(&["alpha", "beta", "gamma"], RECORDING_AGENT, "");
    let workers = ["alpha", "beta", "gamma"];
    // Some files wait before the daemon starts; the rest arrive while it runs, written directly
    // (not renamed into place), so intake must wait for them to settle. Intake takes the oldest
    // file first (modification time, then name): each file's time is read from the still-open
    // handle, since the clock the kernel stamps files with may step or come in coarse grains.
    let mut stamped: BTreeMap<usize, std::time::SystemTime> = BTreeMap::new();
    let mut write = |i: usize| {
        let w = workers[i % 3];
        std::fs::create_dir_all(p.path(&format!(".queue/{w}"))).unwrap();
        let mut f = std::fs::File::create(p.path(&format!(".queue/{w}/{i:03}.prompt"))).unwrap();
        f.write_all(format!("prompt {i}").as_bytes()).unwrap();
        stamped.insert(i, f.metadata().unwrap().modified().unwrap());
    };
    for i in 0..30 {
        write(i);
    }
    let daemon = p.start();
    for i in 30..100 {
        write(i);
    }
    wait_until(LONG, "100 tasks to succeed", || {
        p.totals()["succeeded"] == 100
    });

    let runs = p.runs();
    assert_eq!(runs.len(), 100, "each prompt ran once: {runs:?}");
    let prompts: HashSet<&str> = runs.iter().map(|l| l.split_once(' ').unwrap().1).collect();
    assert_eq!(prompts.len(), 100);

    let tasks = p.json(&["tasks", "--limit", "0"]);
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 100, "no file was taken twice");
    let mut by_worker: BTreeMap<String, Vec<(i64, usize)>> = BTreeMap::new();
    for t in tasks {
        let id = t["id"].as_i64().unwrap();
        let worker = t["worker"].as_str().unwrap().to_string();
        let n: usize = t["prompt_preview"]
            .as_str()
            .unwrap()
            .trim_start_matches("prompt ")
            .parse()
            .unwrap();
        assert_eq!(workers[n % 3], worker);
        let out = read(&p.path(&format!(".output/{worker}/task_{id}.txt")));
        assert_eq!(out, format!("done: prompt {n}"));
        let record: serde_json::Value =
            serde_json::from_str(&read(&p.path(&format!(".output/{worker}/task_{id}.json"))))
                .unwrap();
        assert_eq!(record["state"], "succeeded");
        assert_eq!(record["source"], format!("file:{n:03}.prompt"));
        by_worker.entry(worker).or_default().push((id, n));
    }
    for (worker, mut list) in by_worker {
        // Oldest file first: task ids follow the order the files were written in.
        list.sort();
        let order: Vec<usize> = list.iter().map(|(_, n)| *n).collect();
        let mut oldest_first = order.clone();
        oldest_first.sort_by_key(|n| (stamped[n], *n));
        let times: Vec<_> = order.iter().map(|n| (n, stamped[n])).collect();
        assert_eq!(
            order, oldest_first,
            "{worker} took its files out of order; their times: {times:?}"
        );
        assert!(p.path(&format!(".output/{worker}/latest.txt")).exists());
        let left: Vec<_> = std::fs::read_dir(p.path(&format!(".queue/{worker}")))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n != "rejected" && n != ".taking")
            .collect();
        assert!(left.is_empty(), "{worker} left {left:?}");
        let taking = std::fs::read_dir(p.path(&format!(".queue/{worker}/.taking")))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(taking, 0, "{worker} left files in .taking/");
    }
    assert!(daemon.stop().success());
}

#[test]
fn bad_prompt_files_are_set_aside_with_reasons_while_good_ones_succeed() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "max_prompt_size = \"1KiB\"");
    let q = p.path(".queue/w");
    std::fs::create_dir_all(&q).unwrap();
    let daemon = p.start();
    p.drop_file(".queue/w/good1.prompt", b"first good");
    p.drop_file(".queue/w/empty.prompt", b"");
    p.drop_file(".queue/w/blank.prompt", b"  \n\n\t ");
    p.drop_file(".queue/w/latin1.prompt", b"caf\xe9");
    p.drop_file(".queue/w/huge.prompt", &[b'x'; 2000]);
    p.drop_file(".queue/w/good2.prompt", b"second good");
    std::fs::write(p.path("target.txt"), "outside").unwrap();
    std::os::unix::fs::symlink(p.path("target.txt"), q.join("link.prompt")).unwrap();
    std::fs::create_dir(q.join("folder.prompt")).unwrap();
    nix::unistd::mkfifo(&q.join("pipe.prompt"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    p.drop_file(".queue/w/locked.prompt", b"locked away");
    std::fs::set_permissions(
        q.join("locked.prompt"),
        std::fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    p.drop_file(".queue/w/good3.prompt", b"third good");
    let root = nix::unistd::geteuid().is_root();

    let expected: &[(&str, &str)] = &[
        ("empty.prompt", "empty"),
        ("blank.prompt", "empty"),
        ("latin1.prompt", "not valid UTF-8"),
        ("huge.prompt", "over max_prompt_size"),
        ("link.prompt", "symbolic link"),
        ("folder.prompt", "directory"),
        ("pipe.prompt", "not a regular file"),
    ];
    let good = if root { 4 } else { 3 }; // root can read a mode-0 file
    wait_until(LONG, "good files done and bad ones set aside", || {
        p.totals()["succeeded"] == good
            && expected
                .iter()
                .all(|(n, _)| q.join("rejected").join(format!("{n}.reason")).exists())
    });
    for (name, why) in expected {
        let reason = read(&q.join("rejected").join(format!("{name}.reason")));
        assert!(
            reason.starts_with(&format!("{name}: ")) && reason.contains(why),
            "{name}: {reason}"
        );
        assert!(
            q.join("rejected").join(name).symlink_metadata().is_ok(),
            "{name} was kept, not deleted"
        );
    }
    if !root {
        assert!(read(&q.join("rejected/locked.prompt.reason")).contains("unreadable"));
    }
    // Set aside as it was: the link still points where it did, the bytes are untouched.
    assert_eq!(
        std::fs::read_link(q.join("rejected/link.prompt")).unwrap(),
        p.path("target.txt")
    );
    assert_eq!(
        std::fs::read(q.join("rejected/latin1.prompt")).unwrap(),
        b"caf\xe9"
    );

    let events = p.json(&["events", "--kind", "file_rejected"]);
    assert_eq!(
        events.as_array().unwrap().len(),
        expected.len() + usize::from(!root)
    );
    let runs = p.runs();
    for good in ["first good", "second good", "third good"] {
        assert!(
            runs.iter().any(|l| l.ends_with(good)),
            "{good} ran: {runs:?}"
        );
    }
    assert!(
        p.json(&["status"])["daemon"]["running"].as_bool().unwrap(),
        "the daemon goes on"
    );
    assert!(daemon.stop().success());
}

#[test]
fn prompt_files_from_windows_editors_become_utf8_prompts_with_lf() {
    // An agent that keeps the exact bytes it was given on stdin.
    const KEEPING_AGENT: &str = r#"["sh", "-c", "cat > \"stdin-$AGENTQ_TASK_ID.txt\""]"#;
    let p = Project::with_workers(&["w"], KEEPING_AGENT, "[intake]\nsettle = \"50ms\"");
    let q = p.path(".queue/w");
    let daemon = p.start();

    /// `text` as UTF-16 with its byte-order mark, as Notepad saves "Unicode" (LE) and
    /// "Unicode big endian".
    fn utf16(text: &str, big_endian: bool) -> Vec<u8> {
        std::iter::once(0xFEFF)
            .chain(text.encode_utf16())
            .flat_map(|u| {
                if big_endian {
                    u.to_be_bytes()
                } else {
                    u.to_le_bytes()
                }
            })
            .collect()
    }
    let crlf = b"first line\r\nsecond line\r\n".to_vec();
    let mut bom8 = b"\xEF\xBB\xBF".to_vec();
    bom8.extend_from_slice("héllo ✓ 日本 as UTF-8\r\n".as_bytes());
    let mut odd = utf16("cut short", false);
    odd.push(b'!');
    let good: &[(&str, Vec<u8>, &str)] = &[
        ("crlf.prompt", crlf, "first line\nsecond line\n"),
        ("bom8.prompt", bom8, "héllo ✓ 日本 as UTF-8\n"),
        (
            "le.prompt",
            utf16("héllo ✓ 日本\r\nlittle end 😀\r\n", false),
            "héllo ✓ 日本\nlittle end 😀\n",
        ),
        (
            "be.prompt",
            utf16("héllo ✓ 日本\r\nbig end\r", true),
            "héllo ✓ 日本\nbig end\n",
        ),
    ];
    for (name, bytes, _) in good {
        p.drop_file(&format!(".queue/w/{name}"), bytes);
    }
    p.drop_file(".queue/w/odd.prompt", &odd);

    let reason_file = q.join("rejected/odd.prompt.reason");
    wait_until(LONG, "four tasks done and the odd file set aside", || {
        p.totals()["succeeded"] == 4 && reason_file.exists()
    });
    let tasks = p.json(&["tasks", "--limit", "0"]);
    let tasks = tasks.as_array().unwrap();
    assert_eq!(tasks.len(), 4, "{tasks:?}");
    for t in tasks {
        let id = t["id"].as_i64().unwrap();
        let task = p.task(id);
        let source = task["source"].as_str().unwrap();
        let (name, _, expected) = good
            .iter()
            .find(|(name, _, _)| source == format!("file:{name}"))
            .unwrap_or_else(|| panic!("task {id} from an unexpected file: {task}"));
        assert_eq!(task["prompt"], *expected, "{name}");
        assert_eq!(
            std::fs::read(p.path(&format!("stdin-{id}.txt"))).unwrap(),
            expected.as_bytes(),
            "{name}: the agent got the decoded bytes"
        );
    }
    let reason = read(&reason_file);
    assert!(
        reason.starts_with("odd.prompt: is UTF-16LE by its byte-order mark but has an odd number of bytes: the last, at offset 20, is half a character; save it as UTF-8\n"),
        "{reason}"
    );
    assert_eq!(
        std::fs::read(q.join("rejected/odd.prompt")).unwrap(),
        odd,
        "set aside untouched"
    );
    assert!(daemon.stop().success());
}

#[test]
fn fifty_concurrent_submits_against_a_running_daemon_lose_nothing() {
    let p = Project::with_workers(&["a", "b"], RECORDING_AGENT, "");
    let daemon = p.start();
    let children: Vec<_> = (0..50)
        .map(|i| {
            p.cmd(&[
                "submit",
                "--worker",
                if i % 2 == 0 { "a" } else { "b" },
                &format!("concurrent {i}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    let mut ids = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "submit failed: {}", text(&out.stderr));
        ids.push(text(&out.stdout).trim().parse::<i64>().unwrap());
    }
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 50);
    p.wait_all(&ids);
    assert_eq!(p.runs().len(), 50);
    assert!(daemon.stop().success());
}

#[test]
fn a_failing_agent_is_retried_with_backoff_then_dead_and_can_be_retried() {
    let p = Project::with_workers(
        &["w"],
        r#"["sh", "-c", "cat > /dev/null; echo attempt >> runs.log; echo broken >&2; exit 7"]"#,
        "max_attempts = 3",
    );
    let daemon = p.start();
    let id = p.submit("w", "doomed");
    let out = p.run(&["wait", &id.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("dead: crashed (exit code 7)"),
        "{}",
        text(&out.stdout)
    );

    let t = p.task(id);
    assert_eq!(t["state"], "dead");
    assert_eq!(t["attempts"], 3);
    assert_eq!(t["exit_code"], 7);
    assert_eq!(t["stderr_tail"], "broken\n");
    let kinds = event_kinds(&t);
    assert_eq!(
        kinds,
        [
            "task_queued",
            "task_started",
            "task_retrying",
            "task_started",
            "task_retrying",
            "task_started",
            "task_finished"
        ]
    );
    assert_eq!(p.runs().len(), 3);
    assert!(p.path(&format!(".output/w/task_{id}.json")).exists());
    let result = p.run(&["result", &id.to_string()]);
    assert_eq!(result.status.code(), Some(1));

    p.ok(&["retry", &id.to_string()]);
    let out = p.run(&["wait", &id.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(p.runs().len(), 6, "a retried task gets its attempts back");
    assert!(daemon.stop().success());
}

#[test]
fn an_agent_that_cannot_start_fails_without_retries() {
    let p = Project::with_workers(&["w"], r#"["/nonexistent/agent"]"#, "");
    let daemon = p.start();
    let id = p.submit("w", "x");
    assert_eq!(p.run(&["wait", &id.to_string()]).status.code(), Some(1));
    let t = p.task(id);
    assert_eq!(
        (t["state"].as_str(), t["attempts"].as_i64()),
        (Some("failed"), Some(1))
    );
    assert!(t["error"].as_str().unwrap().contains("/nonexistent/agent"));
    assert!(daemon.stop().success());
}

#[test]
fn a_worker_whose_agent_cli_is_not_installed_waits_for_it_and_its_tasks_are_not_failed() {
    // A Codex worker whose codex is not there yet; a stand-in that prints what `codex exec
    // --json` prints is put there later, as an install would.
    let p = Project::new(
        "[[worker]]\nname = \"x\"\nagent = \"codex\"\ncodex_bin = \"bin/codex\"\nskip_git_repo_check = true\n",
    );
    let daemon = p.start();
    let id = p.submit("x", "hello");
    wait_until(Duration::from_secs(30), "the worker to pause", || {
        p.json(&["status"])["workers"][0]["state"]
            .as_str()
            .unwrap()
            .starts_with("paused until")
    });
    let status = p.json(&["status"]);
    let reason = status["workers"][0]["pause_reason"].as_str().unwrap();
    assert!(
        reason.contains("codex is not installed")
            && reason.contains("npm install -g @openai/codex"),
        "{reason}"
    );
    let t = p.task(id);
    assert_eq!(
        (t["state"].as_str(), t["attempts"].as_i64()),
        (Some("queued"), Some(0)),
        "the task waits, unspent: {t}"
    );
    let out = p
        .cmd(&["doctor", "--json"])
        .env_remove("AGENTQ_CODEX_BIN")
        .output()
        .unwrap();
    let (code, checks): (_, serde_json::Value) = (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap(),
    );
    assert_eq!(code, Some(1), "doctor fails: {checks}");
    let agent = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "worker x: agent")
        .unwrap_or_else(|| panic!("{checks}"));
    assert_eq!(agent["status"], "fail", "{agent}");
    assert!(
        agent["fix"]
            .as_str()
            .unwrap()
            .contains("npm install -g @openai/codex"),
        "{agent}"
    );

    std::fs::create_dir_all(p.path("bin")).unwrap();
    let script = p.path("bin/codex");
    std::fs::write(
        &script,
        "#!/bin/sh\ncat >/dev/null\necho '{\"type\":\"thread.started\",\"thread_id\":\"t-1\"}'\necho '{\"type\":\"item.completed\",\"item\":{\"id\":\"i\",\"type\":\"agent_message\",\"text\":\"installed now\"}}'\necho '{\"type\":\"turn.completed\",\"usage\":{\"input_tokens\":10,\"output_tokens\":2}}'\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The pause would end by itself; resuming by hand need not wait for it.
    p.ok(&["worker", "resume", "x"]);
    p.ok(&["wait", "--timeout", "30s", &id.to_string()]);
    let t = p.task(id);
    assert_eq!(t["output"], "installed now");
    assert_eq!(t["attempts"], 1);
    assert_eq!(t["session_id"], "t-1");
    assert_eq!(t["input_tokens"], 10);
    assert!(daemon.stop().success());
}

#[test]
fn a_second_run_is_refused_and_names_the_holder() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "");
    let daemon = p.start();
    let out = p.run(&["run"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("already running") && err.contains(&format!("pid {}", daemon.pid())),
        "{err}"
    );
    assert_eq!(p.json(&["status"])["daemon"]["pid"], daemon.pid());
    assert!(daemon.stop().success());
    assert_eq!(p.json(&["status"])["daemon"]["running"], false);
}

#[test]
fn tasks_wait_in_the_store_until_a_daemon_runs_them_by_priority_then_fifo() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "");
    let low = p.submit("w", "low");
    let high1 = p.submit_at("w", 5, "high one");
    let mid = p.submit_at("w", 1, "mid");
    let high2 = p.submit_at("w", 5, "high two");
    let neg = p.submit_at("w", -3, "negative");
    assert_eq!(p.state(low), "queued");
    let daemon = p.start();
    p.ok(&["wait", &low.to_string(), &neg.to_string()]);
    let order: Vec<i64> = p
        .runs()
        .iter()
        .map(|l| l.split_once(' ').unwrap().0.parse().unwrap())
        .collect();
    assert_eq!(order, [high1, high2, mid, low, neg]);
    assert!(daemon.stop().success());
}

#[test]
fn submit_wait_prints_the_result_and_a_megabyte_prompt_travels_on_stdin() {
    let p = Project::with_workers(&["w"], r#"["sh", "-c", "wc -c | tr -d ' '"]"#, "");
    let daemon = p.start();
    let mut child = p
        .cmd(&["submit", "--wait", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let prompt = "y".repeat(1 << 20);
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), prompt.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(text(&out.stdout).trim(), (1 << 20).to_string());

    let out = p.run(&["submit", "   "]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("empty"));
    let out = p.run(&["submit", "--worker", "nobody", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("workers: w"));
    assert!(daemon.stop().success());
}

#[test]
fn submit_lines_queues_a_task_per_line_and_a_running_daemon_runs_them_in_order() {
    let p = Project::with_workers(&["w", "v"], RECORDING_AGENT, "max_prompt_size = 20");
    // From stdin: blank lines are skipped, ids come one a line.
    let mut child = p
        .cmd(&["submit", "--lines", "-w", "w", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"one\n\n   \ntwo\nthree").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "1\n2\n3\n");

    // From the argument, with --json: where each would run.
    let out = p.json(&["submit", "--lines", "-w", "v", "four\nfive"]);
    let ids: Vec<i64> = out
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["worker"], "v");
            t["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids, [4, 5]);

    // One bad line refuses them all, naming the line.
    let out = p.run(&[
        "submit",
        "--lines",
        "-w",
        "w",
        "six\nthis line is over twenty bytes",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("line 2"),
        "{}",
        text(&out.stderr)
    );
    let out = p.run(&["submit", "--lines", "-w", "w", "\n \n"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(p.totals()["queued"], 5);
    assert_eq!(
        p.run(&["submit", "--lines", "--wait", "x"]).status.code(),
        Some(2)
    );

    // The daemon is rung once per runner and runs each worker's tasks in order.
    let daemon = p.start();
    let more = p.ok(&["submit", "--lines", "-w", "w", "seven\neight"]);
    assert_eq!(more, "6\n7\n");
    p.wait_all(&[1, 2, 3, 4, 5, 6, 7]);
    let on_w: Vec<String> = p
        .runs()
        .into_iter()
        .filter(|r| !r.ends_with("four") && !r.ends_with("five"))
        .collect();
    assert_eq!(on_w, ["1 one", "2 two", "3 three", "6 seven", "7 eight"]);
    assert!(daemon.stop().success());
}

#[test]
fn cancelling_a_running_task_stops_its_agent() {
    let p = Project::with_workers(&["w"], SLEEPING_AGENT, "");
    let daemon = p.start();
    let id = p.submit("w", "long");
    let pid = p.sleeping_agent_pid();
    assert!(p.ok(&["cancel", &id.to_string()]).contains("was running"));
    wait_until(Duration::from_secs(10), "the agent to be stopped", || {
        !alive(pid)
    });
    assert_eq!(p.state(id), "cancelled");
    wait_until(Duration::from_secs(10), "the stop to be recorded", || {
        p.json(&["events", "--task", &id.to_string()])
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "task_stopped")
    });
    // A cancelled task does not come back by itself, and the worker goes on with the next one.
    let next = p.submit("w", "next");
    wait_until(LONG, "the next task to start", || {
        p.state(next) == "running"
    });
    assert_eq!(p.state(id), "cancelled");
    p.ok(&["cancel", &next.to_string()]);
    let out = p.run(&["cancel", &id.to_string()]);
    assert_eq!(out.status.code(), Some(2), "cancelling twice is an error");
    assert!(daemon.stop().success());
}

#[test]
fn sigterm_stops_cleanly_and_puts_running_tasks_back_without_spending_an_attempt() {
    let p = Project::with_workers(
        &["w"],
        SLEEPING_AGENT,
        "[daemon]\nshutdown_grace = \"300ms\"",
    );
    let daemon = p.start();
    let id = p.submit("w", "long");
    let pid = p.sleeping_agent_pid();
    assert_eq!(p.state(id), "running");
    let status = daemon.stop();
    assert!(status.success(), "{status}");
    assert!(!alive(pid), "the agent was stopped with the daemon");
    let t = p.task(id);
    assert_eq!(
        (t["state"].as_str(), t["attempts"].as_i64()),
        (Some("queued"), Some(0))
    );
}

#[test]
fn after_kill_9_the_next_daemon_recovers_the_running_task() {
    // The agent takes a while, so the daemon dies mid-task.
    let p = Project::with_workers(
        &["w"],
        r#"["sh", "-c", "cat > /dev/null; echo run >> runs.log; sleep 1; echo finished"]"#,
        "",
    );
    let daemon = p.start();
    let id = p.submit("w", "survive");
    wait_until(LONG, "the task to start", || p.state(id) == "running");
    daemon.kill9();
    assert_eq!(p.state(id), "running", "nobody has recorded anything yet");

    let daemon = p.start();
    p.ok(&["wait", "--timeout", "60s", &id.to_string()]);
    let t = p.task(id);
    let kinds = event_kinds(&t);
    assert_eq!(
        kinds.iter().filter(|k| **k == "task_finished").count(),
        1,
        "{kinds:?}"
    );
    assert!(kinds.contains(&"task_recovered"), "{kinds:?}");
    assert_eq!(t["attempts"], 1, "the interrupted attempt was not counted");
    assert_eq!(t["output"], "finished\n");
    assert!(daemon.stop().success());
}

#[test]
fn prompt_files_caught_mid_take_by_a_crash_are_finished_exactly_once() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "[intake]\nsettle = \"50ms\"");
    let daemon = p.start();
    p.drop_file(".queue/w/first.prompt", b"first");
    wait_until(LONG, "the first task", || p.totals()["succeeded"] == 1);
    assert!(daemon.stop().success());

    // The token the first file was taken under, as the store recorded it.
    let db = rusqlite::Connection::open(p.path(".agentq/agentq.db")).unwrap();
    let key: String = db
        .query_row("SELECT dedup_key FROM tasks WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    let token = key.rsplit(':').next().unwrap().to_string();
    assert_eq!(token.len(), 32, "{key}");

    // Crash after submit, before removal: the file is still in .taking/ under its token.
    let taking = p.path(".queue/w/.taking");
    std::fs::create_dir_all(&taking).unwrap();
    std::fs::write(taking.join(format!("{token}.first.prompt")), "first").unwrap();
    // Crash after the rename, before submit: a token the store has never seen.
    let fresh = "0123456789abcdef0123456789abcdef";
    std::fs::write(taking.join(format!("{fresh}.second.prompt")), "second").unwrap();

    let daemon = p.start();
    wait_until(LONG, "the second task", || p.totals()["succeeded"] == 2);
    wait_until(LONG, ".taking/ to be emptied", || {
        std::fs::read_dir(&taking).unwrap().count() == 0
    });
    assert_eq!(p.runs().len(), 2, "{:?}", p.runs());
    assert!(daemon.stop().success());
}

#[test]
fn the_same_file_dropped_again_is_a_new_task() {
    // As `cp -p` does daily: same name, same content, same modification time. A file system may
    // even hand out the freed inode again. It is still a new task.
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "[intake]\nsettle = \"50ms\"");
    let daemon = p.start();
    let mtime = std::time::SystemTime::now() - Duration::from_secs(3600);
    for round in 1..=3 {
        std::fs::write(p.path("daily.tmp"), "daily report").unwrap();
        std::fs::File::options()
            .write(true)
            .open(p.path("daily.tmp"))
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(p.path("daily.tmp"), p.path(".queue/w/daily.prompt")).unwrap();
        wait_until(LONG, "the drop to be taken", || {
            p.totals()["succeeded"] == round
        });
    }
    assert_eq!(p.runs().len(), 3);
    assert!(daemon.stop().success());
}

#[test]
fn every_data_command_speaks_json_and_help_is_everywhere() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "");
    let id = p.submit("w", "x");
    for args in [
        vec!["status"],
        vec!["tasks"],
        vec!["show", "1"],
        vec!["events"],
    ] {
        p.json(&args);
    }
    assert_eq!(p.json(&["submit", "-w", "w", "y"])["worker"], "w");
    assert_eq!(
        p.json(&["cancel", &id.to_string()])[0]["state"],
        "cancelled"
    );
    assert_eq!(p.json(&["retry", &id.to_string()])[0]["state"], "queued");
    for cmd in [
        "init", "run", "submit", "status", "tasks", "show", "events", "result", "wait", "cancel",
        "retry",
    ] {
        let out = p.run(&[cmd, "--help"]);
        assert!(
            out.status.success() && text(&out.stdout).contains("Usage"),
            "{cmd} --help"
        );
    }
    let out = p.run(&["result", &id.to_string()]);
    assert_eq!(out.status.code(), Some(2), "no result yet");

    // Several ids: every one is acted on, each failure is reported, and the exit says so.
    let other = p.submit("w", "z");
    let out = p.run(&[
        "cancel",
        "--json",
        &id.to_string(),
        "999",
        &other.to_string(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    assert_eq!(report[0]["state"], "cancelled");
    assert!(report[1]["error"].as_str().unwrap().contains("no task 999"));
    assert_eq!(report[2]["state"], "cancelled");
    assert_eq!(p.state(other), "cancelled");

    let out = p.run(&[
        "wait",
        "--timeout",
        "100ms",
        &p.submit("w", "never runs").to_string(),
    ]);
    assert_eq!(out.status.code(), Some(124), "no daemon runs it");
}

#[test]
fn a_running_daemon_and_a_logged_run_in_json() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "");
    let child = p
        .cmd(&["--log-format", "json", "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let id = p.submit("w", "logged");
    p.ok(&["wait", "--timeout", "30s", &id.to_string()]);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    );
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines = text(&out.stderr);
    assert!(lines.lines().count() >= 3);
    for line in lines.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string());
    }
}

#[test]
fn with_polling_instead_of_events_files_are_still_taken() {
    // What a network drive gets: no file-system events, a scan every poll_interval.
    let p = Project::with_workers(
        &["a", "b"],
        RECORDING_AGENT,
        "[intake]\npoll = true\npoll_interval = \"100ms\"\nsettle = \"50ms\"",
    );
    let daemon = p.start();
    for i in 0..10 {
        let w = if i % 2 == 0 { "a" } else { "b" };
        std::fs::write(
            p.path(&format!(".queue/{w}/{i}.prompt")),
            format!("polled {i}"),
        )
        .unwrap();
    }
    wait_until(LONG, "10 polled files done", || {
        p.totals()["succeeded"] == 10
    });
    assert_eq!(p.runs().len(), 10);
    assert!(daemon.stop().success());
}

#[test]
fn processes_racing_to_create_the_database_all_succeed() {
    // A fresh folder: the first commands to run create the database and its schema together.
    for round in 0..5 {
        let p = Project::with_workers(&["w"], RECORDING_AGENT, "");
        let children: Vec<_> = (0..6)
            .map(|i| {
                p.cmd(&["submit", "-w", "w", &format!("race {round}.{i}")])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {}", text(&out.stderr));
        }
        assert_eq!(p.totals()["queued"], 6);
    }
}

#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "");
    for i in 0..200 {
        p.submit("w", &format!("task {i}"));
    }
    let mut child = p
        .cmd(&["tasks", "--limit", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away at once, as `| head -0` would
    let out = child.wait_with_output().unwrap();
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_hangup_stops_the_daemon_gracefully() {
    let p = Project::with_workers(
        &["w"],
        SLEEPING_AGENT,
        "[daemon]\nshutdown_grace = \"200ms\"",
    );
    let mut daemon = p.start();
    let id = p.submit("w", "long");
    p.sleeping_agent_pid();
    daemon.signal(Signal::SIGHUP);
    assert!(daemon.wait(Duration::from_secs(30)).success());
    assert_eq!(p.state(id), "queued", "released, not left running");
}

#[test]
fn a_writer_that_pauses_longer_than_the_settle_time_is_waited_for() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "[intake]\nsettle = \"50ms\"");
    let daemon = p.start();
    let path = p.path(".queue/w/typed.prompt");
    let mut writer = std::fs::File::create(&path).unwrap();
    std::io::Write::write_all(&mut writer, b"part one").unwrap();
    // Quiet for many settle times, but still open: not taken. (A negative check needs a pause.)
    std::thread::sleep(Duration::from_millis(800));
    assert!(path.exists(), "taken while its writer still had it open");
    assert_eq!(p.totals()["queued"], 0);
    std::io::Write::write_all(&mut writer, b", part two").unwrap();
    drop(writer);
    wait_until(LONG, "the finished file to be done", || {
        p.totals()["succeeded"] == 1
    });
    assert_eq!(p.runs(), ["1 part one, part two"]);
    assert!(daemon.stop().success());
}

/// CPU ticks (1/100 s) the process has used so far.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = read(std::path::Path::new(&format!("/proc/{pid}/stat")));
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn after_taking_files_and_while_one_is_held_open_the_daemon_stays_idle() {
    // A scan that triggers the next one (through the watcher seeing intake's own opens) spins a
    // core: about 150 ticks in 1.5 s. An idle daemon uses next to none; 30 leaves room for a
    // noisy machine while still catching a spin.
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "[intake]\nsettle = \"50ms\"");
    let daemon = p.start();
    p.drop_file(".queue/w/one.prompt", b"one");
    wait_until(LONG, "the task", || p.totals()["succeeded"] == 1);
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(daemon.pid());
    std::thread::sleep(Duration::from_millis(1500));
    let idle = cpu_ticks(daemon.pid()) - before;
    assert!(idle < 30, "{idle} ticks in 1.5 s after taking a file");

    let mut writer = std::fs::File::create(p.path(".queue/w/held.prompt")).unwrap();
    std::io::Write::write_all(&mut writer, b"held").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(daemon.pid());
    std::thread::sleep(Duration::from_millis(1500));
    let held = cpu_ticks(daemon.pid()) - before;
    assert!(
        held < 30,
        "{held} ticks in 1.5 s while a settled file is held open"
    );
    drop(writer);
    wait_until(LONG, "the held file, once closed", || {
        p.totals()["succeeded"] == 2
    });
    assert!(daemon.stop().success());
}

#[test]
fn long_names_and_strangers_in_taking_are_handled() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "[intake]\nsettle = \"50ms\"");
    let long = format!("{}.prompt", "n".repeat(240));
    std::fs::create_dir_all(p.path(".queue/w/.taking")).unwrap();
    std::fs::write(
        p.path(".queue/w/.taking/not-ours.prompt"),
        "who put this here",
    )
    .unwrap();
    let daemon = p.start();
    p.drop_file(&format!(".queue/w/{long}"), b"a long name");
    wait_until(LONG, "the long-named file", || p.totals()["succeeded"] == 1);
    wait_until(LONG, "the stranger set aside", || {
        p.path(".queue/w/rejected/not-ours.prompt.reason").exists()
    });
    assert!(read(&p.path(".queue/w/rejected/not-ours.prompt.reason")).contains("does not give"));
    assert_eq!(p.runs(), ["1 a long name"]);
    assert!(daemon.stop().success());
}

#[test]
fn when_wait_returns_the_output_files_are_there() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "");
    let daemon = p.start();
    for i in 0..20 {
        let id = p.submit("w", &format!("n{i}"));
        p.ok(&["wait", &id.to_string()]);
        // No waiting here: the end and the files are committed together.
        assert_eq!(
            read(&p.path(&format!(".output/w/task_{id}.txt"))),
            format!("done: n{i}")
        );
        let record: serde_json::Value =
            serde_json::from_str(&read(&p.path(&format!(".output/w/task_{id}.json")))).unwrap();
        assert_eq!(record["state"], "succeeded");
        assert_eq!(
            record["events"].as_array().unwrap().last().unwrap()["kind"],
            "task_finished"
        );
        assert_eq!(read(&p.path(".output/w/latest.txt")), format!("done: n{i}"));
    }
    assert!(daemon.stop().success());
}

#[test]
fn a_worker_paused_by_hand_waits_until_resumed() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "");
    let daemon = p.start();
    assert!(p.ok(&["worker", "pause", "w"]).contains("paused until"));
    let id = p.submit("w", "held");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(p.state(id), "queued");
    let status = p.json(&["status"]);
    assert!(
        status["workers"][0]["state"]
            .as_str()
            .unwrap()
            .starts_with("paused"),
        "{status}"
    );
    p.ok(&["worker", "resume", "w"]);
    p.ok(&["wait", "--timeout", "30s", &id.to_string()]);
    assert!(p.ok(&["worker", "resume", "w"]).contains("was not paused"));
    p.ok(&["worker", "pause", "w", "--for", "200ms"]);
    let later = p.submit("w", "after a short pause");
    p.ok(&["wait", "--timeout", "30s", &later.to_string()]);
    assert!(daemon.stop().success());
}

#[test]
fn events_follow_the_log_as_it_grows_and_fall_back_to_the_store_without_it() {
    use std::io::BufRead;
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "");
    let daemon = p.start();
    let mut follower = p
        .cmd(&["events", "-f", "--json", "--worker", "w"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let id = p.submit("w", "followed");
    p.ok(&["wait", "--timeout", "60s", &id.to_string()]);
    // One JSON object per line, ending with the task's end.
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut kinds = Vec::new();
    while !kinds.contains(&"task_finished".to_string()) {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no task_finished followed; saw {kinds:?}"));
        let e: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(e["worker"], "w");
        kinds.push(e["kind"].as_str().unwrap().to_string());
    }
    assert_eq!(kinds[..2], ["task_queued", "task_started"]);
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(daemon.stop().success());

    // Without the log file, the store's history is shown.
    std::fs::remove_file(p.path(".agentq/events.jsonl")).unwrap();
    let stored = p.json(&["events", "--task", &id.to_string()]);
    let kinds: Vec<&str> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["task_queued", "task_started", "task_finished"]);
}

#[test]
fn classify_says_long_or_short_and_why_with_the_configs_rules_or_the_seeds() {
    // No config anywhere above a bare temporary folder: the seed's rules.
    let bare = tempfile::tempdir().unwrap();
    let run = |dir: &std::path::Path, args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .env_remove("AGENTQ_CONFIG")
            .output()
            .unwrap()
    };
    let out = run(
        bare.path(),
        &[
            "classify",
            "--json",
            "Implement comprehensive authentication system",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["class"], "long");
    assert_eq!(
        v["long_keywords"],
        serde_json::json!(["implement", "comprehensive"])
    );
    let out = run(bare.path(), &["classify", "Fix login button bug"]);
    let said = text(&out.stdout);
    assert!(
        said.starts_with("short\n") && said.contains("why: "),
        "{said}"
    );
    // Overrides, and a bad complexity is refused with what to write.
    let out = run(
        bare.path(),
        &["classify", "--complexity", "0.9", "Fix typo"],
    );
    assert!(text(&out.stdout).starts_with("long\n"));
    let out = run(bare.path(), &["classify", "--complexity", "7", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("from 0 to 1"));

    // A project's own rules.
    let p = Project::new("[classify]\nlong_keywords = [\"audit\"]\nshort_keywords = [\"typo\"]\n");
    let v = p.json(&["classify", "Audit the payment logs"]);
    assert_eq!(
        (v["class"].as_str(), v["long_keywords"][0].as_str()),
        (Some("long"), Some("audit"))
    );
    assert_eq!(p.json(&["classify", "Implement it"])["class"], "short");

    // With workers, it says where the task would run.
    let p = Project::new(
        "[[worker]]\nname = \"a\"\ncommand = [\"cat\"]\nroute = \"auto\"\n[[worker]]\nname = \"b\"\ncommand = [\"cat\"]\n",
    );
    let v = p.json(&["classify", "-w", "a", "Refactor the whole codebase"]);
    assert_eq!((&v["worker"], &v["pool"]), (&"a".into(), &true.into()));
    let out = p.ok(&["classify", "-w", "b", "Refactor the whole codebase"]);
    assert!(out.contains("runs on: worker b (route = worker)"), "{out}");
    let out = p.run(&["classify", "-w", "ghost", "x"]);
    assert!(text(&out.stderr).contains("no worker named \"ghost\""));
    // Several workers and none named: the class alone.
    assert!(p.json(&["classify", "x"]).get("worker").is_none());
}

/// `agentq clean`: a dry run lists and keeps; filters by state, worker and age; what goes takes
/// its events, output files, agent log and transcript with it; queued tasks are never touched; a state that
/// is not finished is refused with the reason.
#[test]
fn clean_removes_finished_tasks_with_their_files_and_never_queued_ones() {
    let p = Project::with_workers(&["w", "v"], r#"["cat"]"#, "");
    let daemon = p.start();
    let ids: Vec<i64> = (0..3).map(|i| p.submit("w", &format!("w {i}"))).collect();
    let v = p.submit("v", "v 0");
    p.wait_all(&[ids.clone(), vec![v]].concat());
    assert!(daemon.stop().success());
    let queued = p.submit("w", "waits for the next daemon");
    let files = |id: i64| {
        [
            p.path(&format!(".output/w/task_{id}.txt")),
            p.path(&format!(".output/w/task_{id}.json")),
            p.path(&format!(".agentq/logs/w/task_{id}.log")),
            p.path(&format!(".agentq/transcripts/w/task_{id}.jsonl")),
        ]
    };
    assert!(
        files(ids[0]).iter().all(|f| f.exists()),
        "{:?}",
        files(ids[0])
    );

    let dry = p.json(&["clean", "--dry-run"]);
    assert_eq!(dry["removed"], 4, "{dry}");
    assert!(p.path(&format!(".output/w/task_{}.txt", ids[0])).exists());
    assert!(
        p.ok(&["clean", "--dry-run"])
            .starts_with("would remove 4 finished task(s)")
    );

    assert_eq!(p.json(&["clean", "--state", "dead"])["removed"], 0);
    assert_eq!(p.json(&["clean", "--older-than", "1h"])["removed"], 0);
    let out = p.json(&["clean", "--worker", "v"]);
    assert_eq!(out["removed"], 1, "{out}");
    assert!(!p.run(&["show", &v.to_string()]).status.success());

    let out = p.ok(&["clean", "--state", "succeeded"]);
    assert!(out.starts_with("removed 3 finished task(s)"), "{out}");
    // (Their events left the database with them, as the store's suite checks; events.jsonl is a
    // log, bounded by its rotation, and keeps its lines.)
    for id in &ids {
        assert!(files(*id).iter().all(|f| !f.exists()), "{:?}", files(*id));
        assert!(!p.run(&["show", &id.to_string()]).status.success());
    }
    assert_eq!(p.state(queued), "queued");
    assert_eq!(
        p.ok(&["clean"]).trim(),
        "no finished task matches: nothing to remove"
    );

    let refused = p.run(&["clean", "--state", "queued"]);
    assert!(!refused.status.success());
    let err = text(&refused.stderr);
    assert!(err.contains("queued tasks are never removed"), "{err}");

    // Files whose task is no longer in the store (a crash between the two, or another host's
    // retention on a shared store) go with the next clean, once a minute old; a live task's
    // files, and a young orphan, stay.
    let old = std::time::SystemTime::now() - Duration::from_secs(120);
    let orphan = p.path(".output/w/task_9999.txt");
    let young = p.path(".output/w/task_9998.txt");
    let log = p.path(".agentq/logs/v/task_9999.log.1");
    let transcript = p.path(".agentq/transcripts/v/task_9999.jsonl");
    let live = p.path(&format!(".output/w/task_{queued}.txt"));
    for f in [&orphan, &young, &log, &transcript, &live] {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, "x").unwrap();
        if *f != young {
            std::fs::File::options()
                .write(true)
                .open(f)
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
    }
    assert_eq!(p.json(&["clean", "--dry-run"])["orphan_files"], 0);
    assert!(orphan.exists());
    assert_eq!(
        p.ok(&["clean"]).trim(),
        "no finished task matches; removed 3 file(s) of tasks no longer in the store"
    );
    assert!(!orphan.exists() && !log.exists() && !transcript.exists());
    assert!(young.exists() && live.exists());
}

/// Runs agentq in an empty folder with no agentq.toml in reach (`--config` names a missing one):
/// completions and man pages must work anywhere, e.g. in a package's build.
fn run_anywhere(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("AGENTQ_CONFIG", dir.join("missing/agentq.toml"))
        .env_remove("AGENTQ_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Checks a script's syntax with `shell` and `flag`, or says why it cannot.
fn check_syntax(shell: &str, flag: &str, script: &std::path::Path) {
    match std::process::Command::new(shell)
        .arg(flag)
        .arg(script)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "{shell} {flag}: {}",
            text(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("skipped the {shell} syntax check: {shell} is not on PATH")
        }
        Err(e) => panic!("{shell}: {e}"),
    }
}

#[test]
fn completions_for_every_shell_need_no_project_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = run_anywhere(dir.path(), &["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for command in ["submit", "status", "worker", "restart", "completions"] {
            assert!(script.contains(command), "{shell} completes no {command}");
        }
        // The daemon's own commands (hidden) are not offered.
        assert!(!script.contains("guard"), "{shell} offers `guard`");
        assert!(
            !script.contains("Internal"),
            "{shell} offers a hidden command"
        );
        let file = dir.path().join(format!("agentq.{shell}"));
        std::fs::write(&file, &script).unwrap();
        match shell {
            "bash" => check_syntax("bash", "-n", &file),
            "zsh" => check_syntax("zsh", "-n", &file),
            "fish" => check_syntax("fish", "--no-execute", &file),
            _ => {}
        }
    }
    assert!(
        !dir.path().join(".agentq").exists(),
        "no state folder, no store"
    );

    let out = run_anywhere(dir.path(), &["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("tcsh") && err.contains("bash, elvish, fish, powershell, zsh"),
        "{err}"
    );
}

#[test]
fn man_prints_agentq_1_or_writes_a_page_per_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_anywhere(dir.path(), &["man"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let page = text(&out.stdout);
    let title = page.lines().find(|l| l.starts_with(".TH")).unwrap();
    assert!(title.starts_with(".TH agentq 1"), "{title}");
    assert!(
        page.contains("Exit codes:"),
        "the page lists the exit codes"
    );

    let folder = dir.path().join("share/man/man1");
    let out = run_anywhere(dir.path(), &["man", "--dir", folder.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: HashSet<String> = text(&out.stdout).lines().map(String::from).collect();
    for name in [
        "agentq.1",
        "agentq-submit.1",
        "agentq-worker.1",
        "agentq-worker-restart.1",
        "agentq-service-install.1",
    ] {
        let path = folder.join(name);
        assert!(
            listed.contains(path.to_str().unwrap()),
            "{name} not listed in {listed:?}"
        );
        let page = std::fs::read_to_string(&path).unwrap();
        assert!(page.contains(".TH"), "{name}");
    }
    assert_eq!(
        std::fs::read_to_string(folder.join("agentq.1")).unwrap(),
        page,
        "the folder's agentq.1 is the page printed"
    );
    // Internal commands and clap's `help` get no page.
    for name in ["agentq-guard.1", "agentq-service-run.1", "agentq-help.1"] {
        assert!(!folder.join(name).exists(), "{name}");
    }
    assert_eq!(std::fs::read_dir(&folder).unwrap().count(), listed.len());
    assert!(!dir.path().join(".agentq").exists());
}

#[test]
fn help_lists_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_anywhere(dir.path(), &["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    let codes = &help[help.find("Exit codes:").expect("an Exit codes section")..];
    for code in ["0", "1", "2", "3", "124"] {
        assert!(
            codes
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{code} "))),
            "exit code {code} is not listed:\n{codes}"
        );
    }
}

/// An agent that writes a line on stdout and one on stderr, then its answer; it fails its first
/// attempt when the prompt says `flaky`.
const CHATTY_AGENT: &str = r#"["sh", "-c", "read p; echo \"working on $p\"; echo \"careful $p\" >&2; case $p in flaky*) [ \"$AGENTQ_ATTEMPT\" -gt 1 ] || { echo broke >&2; exit 3; };; esac; echo \"done $p\""]"#;

/// Reads lines from a child's stdout on a thread, so a test can wait for them with a limit.
fn lines_of(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn logs_interleave_workers_follow_new_tasks_and_print_a_task_whole() {
    let p = Project::with_workers(&["alpha", "beta"], CHATTY_AGENT, "");
    let daemon = p.start();
    let first = p.submit("alpha", "one");
    p.ok(&["wait", "--timeout", "60s", &first.to_string()]);

    // A finished task: its whole transcript.
    let whole = p.ok(&["logs", &first.to_string()]);
    let lines: Vec<&str> = whole
        .lines()
        .map(|l| l.split_once(' ').unwrap().1)
        .collect();
    // Each pipe's lines in order (stdout and stderr are read apart, so not against each other).
    let stdout: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| !l.starts_with("stderr:"))
        .collect();
    assert_eq!(stdout, ["working on one", "done one"], "{whole}");
    assert!(lines.contains(&"stderr: careful one"), "{whole}");
    let last = p.ok(&["logs", "-n", "1", &first.to_string()]);
    assert_eq!(last.lines().count(), 1, "{last}");
    assert!(whole.ends_with(&last), "the last line: {last}");

    // Following every worker: what was there, then new tasks of both workers as they run.
    let mut follow = p
        .cmd(&["logs", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = lines_of(&mut follow);
    let backlog = lines.recv_timeout(LONG).unwrap();
    assert!(backlog.contains(&format!(" alpha#{first} ")), "{backlog}");
    let a = p.submit("alpha", "two");
    let b = p.submit("beta", "three");
    let mut seen = Vec::new();
    let want = [
        format!("alpha#{a} working on two"),
        format!("alpha#{a} done two"),
        format!("beta#{b} stderr: careful three"),
        format!("beta#{b} done three"),
    ];
    while !want
        .iter()
        .all(|w| seen.iter().any(|l: &String| l.ends_with(w.as_str())))
    {
        match lines.recv_timeout(LONG) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("logs -f printed {seen:?}, not all of {want:?}"),
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(follow.id() as i32),
        Signal::SIGINT,
    )
    .unwrap();
    assert!(
        follow.wait().unwrap().success(),
        "Ctrl-C ends logs -f cleanly"
    );

    // One worker's, as JSON, each line naming worker and task.
    let beta = p.json(&["logs", "beta"]);
    let beta = beta.as_array().unwrap();
    assert!(!beta.is_empty());
    assert!(beta.iter().all(|l| l["worker"] == "beta" && l["task"] == b));

    // Mistakes and a task with nothing yet.
    let out = p.run(&["logs", "999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no task 999"));
    let out = p.run(&["logs", "gamma"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr)
            .contains("\"gamma\" is neither a task id nor a worker (workers: alpha, beta"),
        "{}",
        text(&out.stderr)
    );
    p.ok(&["worker", "pause", "beta"]);
    let waiting = p.submit("beta", "later");
    let out = p.run(&["logs", &waiting.to_string()]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains(&format!(
            "task {waiting} has no transcript yet: it is queued"
        )),
        "{}",
        text(&out.stderr)
    );
    assert!(daemon.stop().success());
}

#[test]
fn submit_wait_tells_what_happens_on_stderr_and_follow_adds_the_transcript() {
    let p = Project::with_workers(&["w"], CHATTY_AGENT, "");
    let daemon = p.start();
    let out = p.run(&["submit", "--wait", "--follow", "flaky job"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).trim_end(),
        "working on flaky job\ndone flaky job"
    );
    let told = text(&out.stderr);
    let find = |needle: &str| {
        told.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in:\n{told}"))
    };
    // In the order it happened: queued, started, the first attempt's lines, the retry and why,
    // the second attempt, the end.
    let order = [
        find("task 1 queued: from cli"),
        find("task 1 started: attempt 1 of 3"),
        find("stderr: broke"),
        find("task 1 retrying: attempt 1 failed: crashed (exit code 3); retry in"),
        find("task 1 started: attempt 2 of 3"),
        find("done flaky job"),
        find("task 1 finished: succeeded: attempt 2"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{told}");

    // Without --follow: what happens, not what the agent says.
    let out = p.run(&["submit", "--wait", "steady"]);
    assert!(out.status.success());
    let told = text(&out.stderr);
    assert!(told.contains("task 2 finished: succeeded"), "{told}");
    assert!(!told.contains("working on"), "{told}");
    assert!(daemon.stop().success());
}
