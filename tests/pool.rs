//! The ephemeral pool and routing by class, through the real binary: the pool's running limit
//! (read from the agents' own start and end marks), a pool task over its memory stopped alone,
//! and `route = "auto"` sending short tasks to the worker and long ones to the pool.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const TEST_AGENT: &str = env!("CARGO_BIN_EXE_agentq-test-agent");

/// An agent that appends `+ <task>` to `marks.log` when it starts and `- <task>` when it ends
/// (appends to one file are ordered, so replaying them gives how many ran at once), with the pool
/// flag and pid it ran with.
const MARKING_AGENT: &str = r#"["sh", "-c", "p=$(cat); echo \"+ $AGENTQ_TASK_ID $$\" >> marks.log; sleep 0.6; echo \"- $AGENTQ_TASK_ID\" >> marks.log; printf 'pool=%s %s' \"${AGENTQ_POOL:-0}\" \"$p\""]"#;

/// The most agents that ran at once, by the marks in `marks.log`.
fn most_at_once(p: &Project) -> (usize, usize) {
    let (mut now, mut most, mut starts) = (0usize, 0usize, 0usize);
    for line in read(&p.path("marks.log")).lines() {
        match line.split_whitespace().next() {
            Some("+") => {
                now += 1;
                starts += 1;
                most = most.max(now);
            }
            Some("-") => now -= 1,
            _ => panic!("a bad mark: {line:?}"),
        }
    }
    assert_eq!(now, 0, "every agent that started ended");
    (most, starts)
}

fn submit_json(p: &Project, args: &[&str]) -> Value {
    let mut all = vec!["submit"];
    all.extend_from_slice(args);
    p.json(&all)
}

#[test]
fn twelve_pool_tasks_run_four_at_a_time_and_all_finish() {
    let p = Project::new(&format!(
        "[pool]\ncommand = {MARKING_AGENT}\n\n[[worker]]\nname = \"w\"\ncommand = [\"cat\"]\n"
    ));
    let _daemon = p.start();
    // Everything is queued before anything starts, however slow the submits.
    p.ok(&["worker", "pause", "pool"]);
    let mut ids = Vec::new();
    for i in 0..10 {
        let s = submit_json(&p, &["--pool", &format!("task {i}")]);
        assert_eq!(s["worker"], "pool");
        assert_eq!(s["pool"], true);
        ids.push(s["id"].as_i64().unwrap());
    }
    // The pool's prompt folder too.
    p.drop_file(".queue/pool/a.prompt", b"from a file");
    p.drop_file(".queue/pool/b.prompt", b"from another file");
    wait_until(Duration::from_secs(20), "both files taken", || {
        p.json(&["tasks"]).as_array().unwrap().len() == 12
    });
    assert_eq!(p.json(&["status"])["pool"]["queued"], 12);
    p.ok(&["worker", "resume", "pool"]);
    // While they run, status shows the pool full and the rest waiting.
    let mut seen_full = false;
    wait_until(Duration::from_secs(60), "every pool task to end", || {
        let status = p.json(&["status"]);
        let pool = &status["pool"];
        let running = pool["running"].as_u64().unwrap();
        assert!(running <= 4, "{pool}");
        assert_eq!(pool["max_workers"], 4);
        assert_eq!(pool["tasks"].as_array().unwrap().len() as u64, running);
        seen_full |= running == 4 && pool["queued"].as_u64().unwrap() > 0;
        status["totals"]["succeeded"] == 12
    });
    assert!(seen_full, "status never showed the pool full with a queue");
    let (most, starts) = most_at_once(&p);
    assert_eq!(starts, 12);
    assert_eq!(
        most, 4,
        "at most pool.max_workers at once, and the pool is used"
    );

    let all = p.json(&["tasks", "--limit", "0"]);
    for t in all.as_array().unwrap() {
        let task = p.task(t["id"].as_i64().unwrap());
        assert_eq!(task["state"], "succeeded", "{task}");
        assert_eq!(task["pool"], true);
        assert!(task["output"].as_str().unwrap().starts_with("pool=1 "));
        assert!(task["duration_ms"].as_i64().unwrap() >= 600, "{task}");
        assert!(task["memory_peak_mb"].as_f64().is_some(), "{task}");
        assert!(task["class"].is_string(), "every task is classified");
    }
    let status = p.ok(&["status"]);
    assert!(
        status.contains("pool: 0 of 4 running, 0 queued; classes: "),
        "{status}"
    );
    // The worker itself took none of them.
    assert_eq!(
        p.json(&["tasks", "--worker", "w"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_pool_task_over_its_memory_is_stopped_alone() {
    let p = Project::new(&format!(
        "[defaults]\nmax_attempts = 1\nkill_timeout = \"500ms\"\n\
         [daemon]\nmemory_sample_interval = \"100ms\"\n\
         [pool]\ncommand = [\"{TEST_AGENT}\"]\nmax_memory = \"120MiB\"\n\
         [[worker]]\nname = \"w\"\ncommand = [\"cat\"]\n"
    ));
    let _daemon = p.start();
    let calm: Vec<i64> = (0..3)
        .map(|i| {
            submit_json(&p, &["--pool", &format!("calm {i} [[sleep 4000]]")])["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let greedy = submit_json(&p, &["--pool", "greedy [[sleep 300]] [[grow 40 50]]"])["id"]
        .as_i64()
        .unwrap();
    // A task may ask for less than the pool allows.
    let small = submit_json(
        &p,
        &[
            "--pool",
            "--max-memory",
            "60MiB",
            "small [[sleep 300]] [[alloc 100]] [[hang]]",
        ],
    )["id"]
        .as_i64()
        .unwrap();
    p.run(&[
        "wait",
        "--timeout",
        "60s",
        &greedy.to_string(),
        &small.to_string(),
    ]);
    let g = p.task(greedy);
    assert_eq!(g["state"], "dead", "{g}");
    assert_eq!(g["cause"], "memory_limit", "{g}");
    assert!(g["error"].as_str().unwrap().contains("120 MiB"), "{g}");
    let s = p.task(small);
    assert_eq!(s["cause"], "memory_limit", "{s}");
    assert!(s["error"].as_str().unwrap().contains("60 MiB"), "{s}");
    assert_eq!(s["max_memory"], 60 << 20);
    // The others were running when it was stopped, and went on to finish.
    for id in &calm {
        let c = p.task(*id);
        assert_eq!(c["state"], "running", "{c}");
    }
    p.wait_all(&calm);
    for id in &calm {
        let c = p.task(*id);
        assert_eq!(c["output"], format!("done: calm {}\n", id - 1), "{c}");
        assert!(c["started_at"].as_i64().unwrap() < g["finished_at"].as_i64().unwrap());
    }
}

#[test]
fn cancelling_a_running_pool_task_stops_it_at_once() {
    let p = Project::new(&format!(
        "[pool]\ncommand = [\"{TEST_AGENT}\"]\n[[worker]]\nname = \"w\"\ncommand = [\"cat\"]\n"
    ));
    let _daemon = p.start();
    let hang = submit_json(&p, &["--pool", "[[hang]]"])["id"]
        .as_i64()
        .unwrap();
    let other = submit_json(&p, &["--pool", "[[sleep 3000]]"])["id"]
        .as_i64()
        .unwrap();
    wait_until(Duration::from_secs(20), "both running", || {
        p.state(hang) == "running" && p.state(other) == "running"
    });
    let started = std::time::Instant::now();
    p.ok(&["cancel", &hang.to_string()]);
    wait_until(Duration::from_secs(5), "the agent stopped", || {
        common::event_kinds(&p.task(hang)).contains(&"task_stopped")
    });
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped by the ring, not the lease's next heartbeat: {:?}",
        started.elapsed()
    );
    assert_eq!(
        p.state(other),
        "running",
        "the other pool task is untouched"
    );
    p.wait_all(&[other]);
}

#[test]
fn auto_routing_sends_short_tasks_to_the_warm_worker_and_long_ones_to_the_pool() {
    let p = Project::new(&format!(
        "[class.long]\ntimeout = \"3m\"\npriority = 2\n\
         [[worker]]\nname = \"w\"\nroute = \"auto\"\ncommand = {MARKING_AGENT}\n\
         [[worker]]\nname = \"plain\"\ncommand = {MARKING_AGENT}\n"
    ));
    let _daemon = p.start();
    let short = submit_json(&p, &["-w", "w", "Fix login button bug"]);
    assert_eq!(
        (&short["pool"], &short["class"]),
        (&Value::Bool(false), &Value::from("short"))
    );
    let long = submit_json(
        &p,
        &["-w", "w", "Implement comprehensive authentication system"],
    );
    assert_eq!(
        (&long["pool"], &long["class"]),
        (&Value::Bool(true), &Value::from("long"))
    );
    assert_eq!(long["worker"], "w", "a routed task stays its worker's");
    // A file in the worker's folder is routed the same way.
    p.drop_file(
        ".queue/w/big.prompt",
        b"Refactor the entire codebase to the new architecture",
    );
    // route = "worker" (the default) keeps even a long task on the worker.
    let kept = submit_json(
        &p,
        &[
            "-w",
            "plain",
            "Implement comprehensive authentication system",
        ],
    );
    assert_eq!(kept["pool"], false);
    // --class overrides the classifier.
    let forced = submit_json(&p, &["-w", "w", "--class", "long", "Fix a typo"]);
    assert_eq!(forced["pool"], true);

    let ids: Vec<i64> = [&short, &long, &kept, &forced]
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect();
    p.wait_all(&ids);
    wait_until(Duration::from_secs(20), "the file's task to end", || {
        p.json(&["tasks", "--state", "succeeded"])
            .as_array()
            .unwrap()
            .len()
            == 5
    });
    let by_prompt = |prefix: &str| -> Value {
        let list = p.json(&["tasks", "--limit", "0"]);
        let id = list
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["prompt_preview"].as_str().unwrap().starts_with(prefix))
            .unwrap()["id"]
            .as_i64()
            .unwrap();
        p.task(id)
    };
    let s = p.task(ids[0]);
    assert_eq!(s["output"], "pool=0 Fix login button bug");
    assert_eq!(
        s["route_reason"].as_str().unwrap().split(':').next(),
        Some("route = auto, short")
    );
    assert_eq!(s["priority"], 0);
    let l = p.task(ids[1]);
    assert_eq!(
        l["output"],
        "pool=1 Implement comprehensive authentication system"
    );
    assert!(
        l["route_reason"]
            .as_str()
            .unwrap()
            .starts_with("route = auto, long: "),
        "{l}"
    );
    assert_eq!(
        (&l["timeout_ms"], &l["priority"]),
        (&Value::from(180_000), &Value::from(2)),
        "[class.long] applies"
    );
    let f = by_prompt("Refactor");
    assert_eq!(
        (&f["worker"], &f["pool"], &f["class"]),
        (&Value::from("w"), &Value::Bool(true), &Value::from("long"))
    );
    assert!(f["output"].as_str().unwrap().starts_with("pool=1 "));
    assert_eq!(
        p.task(ids[2])["output"],
        "pool=0 Implement comprehensive authentication system"
    );
    assert_eq!(p.task(ids[3])["output"], "pool=1 Fix a typo");
    // The show command says where and why.
    let shown = p.ok(&["show", &ids[1].to_string()]);
    assert!(
        shown.contains("runs on:     the pool (route = auto, long: "),
        "{shown}"
    );
    let listed = p.ok(&["tasks"]);
    assert!(listed.contains("long, pool"), "{listed}");
}

#[test]
fn pausing_the_pool_holds_its_tasks_until_resumed() {
    let p = Project::new(&format!(
        "[pool]\ncommand = {MARKING_AGENT}\n[[worker]]\nname = \"w\"\ncommand = [\"cat\"]\nroute = \"pool\"\n"
    ));
    let _daemon = p.start();
    p.ok(&["worker", "pause", "pool"]);
    p.ok(&["worker", "pause", "w"]);
    let own = submit_json(&p, &["--pool", "held"])["id"].as_i64().unwrap();
    let routed = submit_json(&p, &["-w", "w", "routed"])["id"]
        .as_i64()
        .unwrap();
    assert_eq!(p.json(&["status"])["pool"]["queued"], 2);
    p.ok(&["worker", "resume", "pool"]);
    p.wait_all(&[own]);
    assert_eq!(
        p.state(routed),
        "queued",
        "a paused worker's pool tasks wait with it"
    );
    p.ok(&["worker", "resume", "w"]);
    p.wait_all(&[routed]);
    // `worker restart` (which clears an errored worker, or a pause) lets its pool tasks go too.
    p.ok(&["worker", "pause", "w"]);
    let held = submit_json(&p, &["-w", "w", "held again"])["id"]
        .as_i64()
        .unwrap();
    p.ok(&["worker", "restart", "w"]);
    p.ok(&["wait", "--timeout", "10s", &held.to_string()]);
    let out = p.run(&["worker", "pause", "nobody"]);
    assert!(text(&out.stderr).contains("no worker named \"nobody\""));
}

#[test]
fn kill_9_of_the_daemon_with_a_full_pool_loses_nothing_and_leaves_no_process() {
    let p = Project::new("");
    std::fs::write(
        p.path("agentq.toml"),
        format!(
            "[defaults]\nkill_timeout = \"500ms\"\n[intake]\nsettle = \"50ms\"\n\
             [pool]\ncommand = [\"{TEST_AGENT}\"]\nenv = {{ AGENTQ_TEST_PIDS = \"{}\" }}\n",
            p.path("pids.log").display()
        ),
    )
    .unwrap();
    let daemon = p.start();
    for i in 0..12 {
        p.drop_file(
            &format!(".queue/pool/{i:03}.prompt"),
            format!("p{i} [[grandchildren 1]] [[sleep 700]]").as_bytes(),
        );
    }
    wait_until(Duration::from_secs(60), "a full pool", || {
        p.json(&["status"])["pool"]["running"] == 4
    });
    daemon.kill9();
    // Its guardian kills the four agents and their grandchildren at once.
    let started: Vec<i32> = read(&p.path("pids.log"))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(started.len() >= 8, "{started:?}");
    wait_until(
        Duration::from_secs(5),
        "the killed daemon's agents to die",
        || started.iter().all(|pid| !alive(*pid)),
    );
    let daemon = p.start();
    wait_until(Duration::from_secs(120), "all 12 tasks to finish", || {
        p.totals()["succeeded"] == 12
    });
    assert!(daemon.stop().success());
    let pids: Vec<i32> = read(&p.path("pids.log"))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    wait_until(Duration::from_secs(10), "no agent process left", || {
        pids.iter().all(|pid| !alive(*pid))
    });
    let tasks = p.json(&["tasks", "--limit", "0"]);
    let mut prompts = Vec::new();
    for t in tasks.as_array().unwrap() {
        let full = p.task(t["id"].as_i64().unwrap());
        let kinds = event_kinds(&full);
        assert_eq!(
            kinds.iter().filter(|k| **k == "task_finished").count(),
            1,
            "{full}"
        );
        prompts.push(full["prompt"].as_str().unwrap().to_string());
    }
    prompts.sort();
    prompts.dedup();
    assert_eq!(prompts.len(), 12, "no prompt file taken twice");
}
