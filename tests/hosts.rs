//! Several daemons, one queue, through the real binary against a real PostgreSQL server
//! (`AGENTQ_TEST_DATABASE_URL`, which scripts/test starts): each "host" is a project folder of
//! its own with its own `[daemon] host`, so only the database connects them. The store itself is
//! read directly (the same `Store` the binary uses) to count what happened.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use agentq::store::postgres::PgStore;
use agentq::store::url::DatabaseUrl;
use agentq::store::{Event, EventFilter, NewTask, Store, TaskFilter};
use common::*;

/// A host's project: `workers` are (name, pinned host) running the recording agent, plus a pool;
/// `daemon` is added to its `[daemon]` table.
fn host(url: &str, id: &str, workers: &[(&str, Option<&str>)], daemon: &str) -> Project {
    let mut config = format!(
        "[defaults]\nbackoff = \"10ms\"\nmax_backoff = \"50ms\"\n\
         [daemon]\nhost = \"{id}\"\n{daemon}\n\
         [intake]\nrescan_interval = \"1h\"\n\
         [store]\nurl = \"{url}\"\n\
         [pool]\nmax_workers = 4\ncommand = {RECORDING_AGENT}\n"
    );
    for (name, pin) in workers {
        config.push_str(&format!(
            "[[worker]]\nname = \"{name}\"\nagent = \"command\"\ncommand = {RECORDING_AGENT}\n"
        ));
        if let Some(pin) = pin {
            config.push_str(&format!("host = \"{pin}\"\n"));
        }
    }
    Project::new(&config)
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn store(db: &agentq::store::postgres::test_db::TestDb) -> PgStore {
    block_on(PgStore::connect(&db.url)).unwrap()
}

fn events(s: &PgStore, kind: &str) -> Vec<Event> {
    block_on(s.events(&EventFilter {
        kind: Some(kind.into()),
        ..Default::default()
    }))
    .unwrap()
}

/// Queues `n` tasks over `workers` in turn, `pool_every` for each (the first of them in the
/// pool, the rest on the worker).
fn queue(s: &PgStore, n: usize, workers: &[&str], pool_every: usize) -> Vec<i64> {
    let now = agentq::store::now_ms();
    let tasks = (0..n)
        .map(|i| {
            let mut t = NewTask {
                worker: workers[(i / pool_every) % workers.len()].into(),
                prompt: format!("task {i}"),
                priority: 0,
                max_attempts: 3,
                timeout_ms: None,
                not_before: now,
                source: "test".into(),
                dedup_key: None,
                routing: Default::default(),
                worktree: None,
                now,
            };
            t.routing.pool = i % pool_every == 0;
            t
        })
        .collect();
    block_on(s.submit_many(tasks))
        .unwrap()
        .into_iter()
        .map(|s| s.id())
        .collect()
}

/// Every task succeeded, with exactly one `task_finished` event each; returns how many ran where
/// (by the host in their `task_started` owner).
fn all_succeeded_once(s: &PgStore, ids: &[i64]) {
    let tasks = block_on(s.list(&TaskFilter {
        limit: Some(100_000),
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(tasks.len(), ids.len(), "no task lost, none made up");
    for t in &tasks {
        assert_eq!(t.state.as_str(), "succeeded", "task {}: {t:?}", t.id);
        assert!(t.attempts >= 1, "task {}: attempts recorded", t.id);
    }
    let mut finished: HashMap<i64, usize> = HashMap::new();
    for e in events(s, "task_finished") {
        *finished.entry(e.task_id.unwrap()).or_default() += 1;
    }
    for id in ids {
        assert_eq!(finished.get(id), Some(&1), "task {id} finished once");
    }
}

fn wait_all_succeeded(p: &Project, ids: &[i64], limit: Duration) {
    let deadline = Instant::now() + limit;
    for chunk in ids.chunks(200) {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut args = vec![
            "wait".to_string(),
            "--timeout".into(),
            format!("{}ms", left.as_millis().max(1)),
        ];
        args.extend(chunk.iter().map(i64::to_string));
        let out = p.run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(
            out.status.success(),
            "waiting for tasks: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn two_hosts_drain_500_tasks_each_run_to_completion_once() {
    let Some(db) = pg_database() else { return };
    let url = db.url.expose();
    // w1 is a's, w3 is b's; w2 and w4 go to whichever daemon takes them first.
    let workers = [
        ("w1", Some("a")),
        ("w2", None),
        ("w3", Some("b")),
        ("w4", None),
    ];
    let a = host(url, "a", &workers, "");
    let b = host(url, "b", &workers, "");
    let s = store(&db);
    let _da = a.start();
    let _db = b.start();
    let started = Instant::now();
    let ids = queue(&s, 500, &["w1", "w2", "w3", "w4"], 2);
    wait_all_succeeded(&a, &ids, Duration::from_secs(60));
    let took = started.elapsed();
    all_succeeded_once(&s, &ids);
    // Every task ran once: no crash here, so the agents' own records agree.
    let (ran_a, ran_b) = (a.runs(), b.runs());
    assert_eq!(ran_a.len() + ran_b.len(), 500, "each task ran once");
    // Both hosts worked: each its pinned worker and a share of the pool.
    for (runs, pinned) in [(&ran_a, "w1"), (&ran_b, "w3")] {
        let pinned_ids: Vec<i64> = ids
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 1 && ["w1", "w2", "w3", "w4"][(i / 2) % 4] == pinned)
            .map(|(_, id)| *id)
            .collect();
        for id in pinned_ids {
            assert!(
                runs.iter().any(|r| r.starts_with(&format!("{id} "))),
                "{pinned}'s task {id} ran on its host"
            );
        }
    }
    let pooled_on = |runs: &[String]| {
        runs.iter()
            .filter(|r| {
                let id: i64 = r.split(' ').next().unwrap().parse().unwrap();
                (id - ids[0]) % 2 == 0
            })
            .count()
    };
    assert!(
        pooled_on(&ran_a) > 0 && pooled_on(&ran_b) > 0,
        "both pools ran tasks"
    );
    // `status` says which host runs what, and which daemons there are.
    let status = a.json(&["status"]);
    assert_eq!(status["daemon"]["host"], "a", "{status}");
    let hosts: Vec<&str> = status["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["a", "b"], "{status}");
    let host_of = |w: &str| {
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == w)
            .unwrap()["host"]
            .clone()
    };
    assert_eq!((host_of("w1"), host_of("w3")), ("a".into(), "b".into()));
    assert!(b.ok(&["status"]).contains("HOST"));
    eprintln!("500 tasks on two hosts in {took:?}");
}

#[test]
fn kill_9_of_one_host_the_other_finishes_its_work_and_takes_its_workers() {
    let Some(db) = pg_database() else { return };
    let url = db.url.expose();
    let slow = r#"["sh", "-c", "p=$(cat); sleep 0.1; printf '%s %s\n' \"$AGENTQ_TASK_ID\" \"$p\" >> runs.log; printf 'done: %s' \"$p\""]"#;
    let config = |id: &str| {
        format!(
            "[defaults]\nbackoff = \"10ms\"\nmax_backoff = \"50ms\"\n\
             [daemon]\nhost = \"{id}\"\nlease = \"1s\"\n\
             [store]\nurl = \"{url}\"\n\
             [pool]\nmax_workers = 2\ncommand = {slow}\n\
             [[worker]]\nname = \"w1\"\nagent = \"command\"\ncommand = {slow}\n\
             [[worker]]\nname = \"w2\"\nagent = \"command\"\ncommand = {slow}\n"
        )
    };
    let a = Project::new(&config("a"));
    let b = Project::new(&config("b"));
    let s = store(&db);
    let da = a.start();
    // A holds both workers before B starts.
    wait_until(Duration::from_secs(10), "a to hold both workers", || {
        block_on(s.worker_leases(0)).unwrap().len() == 2
    });
    let _db = b.start();
    let ids = queue(&s, 60, &["w1", "w2"], 3);
    wait_until(Duration::from_secs(20), "a to run some tasks", || {
        a.runs().len() >= 6
    });
    da.kill9();
    let killed = Instant::now();
    wait_all_succeeded(&b, &ids, Duration::from_secs(30));
    eprintln!("b finished a's work {:?} after the kill", killed.elapsed());
    all_succeeded_once(&s, &ids);
    // B runs both workers now, having taken them from A.
    let leases = block_on(s.worker_leases(0)).unwrap();
    assert!(leases.iter().all(|l| l.host == "b"), "{leases:?}");
    let moved = events(&s, "worker_moved");
    for w in ["w1", "w2"] {
        assert!(
            moved
                .iter()
                .any(|e| e.worker.as_deref() == Some(w) && e.message.contains("(it ran on a)")),
            "{w} moved to b: {moved:?}"
        );
    }
    // Command workers have no conversation to lose.
    assert!(events(&s, "session_reset").is_empty());
    // Tasks A was running were recovered, not lost; the agents' records show every task.
    let mut ran: Vec<String> = a.runs().into_iter().chain(b.runs()).collect();
    ran.sort();
    ran.dedup();
    assert_eq!(ran.len(), 60, "every task ran (at least once)");
    // `show` names the host of each attempt: every one ran on A or B, and those cut short by
    // A's death on A.
    for id in &ids {
        let shown = b.ok(&["show", &id.to_string()]);
        let attempts: Vec<&str> = shown
            .split("--- attempts\n")
            .nth(1)
            .unwrap()
            .lines()
            .take_while(|l| !l.is_empty())
            .collect();
        for line in attempts {
            let on_a = line.contains(" on a");
            assert!(on_a || line.contains(" on b"), "task {id}: {line}");
            assert!(!line.contains("interrupted") || on_a, "task {id}: {line}");
        }
    }
}

#[test]
fn a_pinned_worker_never_runs_on_another_host() {
    let Some(db) = pg_database() else { return };
    let url = db.url.expose();
    let workers = [("free", None), ("p", Some("b"))];
    let a = host(url, "a", &workers, "");
    let b = host(url, "b", &workers, "");
    let s = store(&db);
    let _da = a.start();
    let pinned = a.submit("p", "pinned");
    let pinned_pool = a.json(&["submit", "--pool", "--worker", "p", "pinned, pool"])["id"]
        .as_i64()
        .unwrap();
    // A runs what it may (its pool too) and leaves p's alone.
    let free = a.submit("free", "free");
    let pooled = a.json(&["submit", "--pool", "pool"])["id"]
        .as_i64()
        .unwrap();
    a.wait_all(&[free, pooled]);
    assert_eq!(a.state(pinned), "queued");
    assert_eq!(a.state(pinned_pool), "queued");
    assert!(
        block_on(s.worker_leases(0))
            .unwrap()
            .iter()
            .all(|l| l.worker != "p")
    );
    // In A's status, p runs nowhere yet.
    let worker = |p: &Project, name: &str| {
        let status = p.json(&["status"]);
        let w = status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name);
        w.cloned()
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    let p_on_a = worker(&a, "p");
    assert_eq!(p_on_a["state"], "stopped", "{p_on_a}");
    assert!(p_on_a["host"].is_null(), "{p_on_a}");
    // B, p's host, runs them.
    let _db = b.start();
    b.wait_all(&[pinned, pinned_pool]);
    // Every host's status (and that of one running no daemon) says where each worker runs; what
    // A knows of its own processes is not given for B's worker.
    let c = host(url, "c", &workers, "");
    for (project, viewer) in [(&a, "a"), (&c, "c")] {
        let p = worker(project, "p");
        assert_eq!(
            (p["state"].as_str(), p["host"].as_str()),
            (Some("idle"), Some("b")),
            "from {viewer}: {p}"
        );
        assert!(
            p["restarts"].is_null() && p["up_since"].is_null(),
            "from {viewer}: {p}"
        );
        let free = worker(project, "free");
        assert_eq!(
            (free["state"].as_str(), free["host"].as_str()),
            (Some("idle"), Some("a")),
            "from {viewer}: {free}"
        );
    }
    assert_eq!(worker(&a, "free")["restarts"], 0);
    assert!(
        a.runs().iter().all(|r| !r.contains("pinned")),
        "{:?}",
        a.runs()
    );
    assert_eq!(
        b.runs().iter().filter(|r| r.contains("pinned")).count(),
        2,
        "{:?}",
        b.runs()
    );
}

#[test]
fn a_worker_moves_at_once_when_its_host_stops_cleanly() {
    let Some(db) = pg_database() else { return };
    let url = db.url.expose();
    // A long lease: only the release can explain a prompt move.
    let daemon = "lease = \"30s\"\nshutdown_grace = \"1s\"";
    let a = host(url, "a", &[("w", None)], daemon);
    let b = host(url, "b", &[("w", None)], daemon);
    let s = store(&db);
    let da = a.start();
    let first = a.submit("w", "on a");
    a.wait_all(&[first]);
    let _db = b.start();
    assert_eq!(block_on(s.worker_leases(0)).unwrap()[0].host, "a");
    assert!(da.stop().success());
    let stopped = Instant::now();
    let second = b.submit("w", "on b");
    b.wait_all(&[second]);
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "w moved to b {took:?} after a stopped (lease 30s)"
    );
    assert!(b.runs().iter().any(|r| r.ends_with("on b")));
    let moved = events(&s, "worker_moved");
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert!(moved[0].message.contains("host b"), "{moved:?}");
}

#[test]
fn a_second_daemon_under_a_running_host_id_is_refused_and_a_restart_recovers_at_once() {
    let Some(db) = pg_database() else { return };
    let url = db.url.expose();
    let a = host(url, "a", &[("w", None)], "");
    let twin = host(url, "a", &[("w", None)], "");
    let da = a.start();
    // Another folder claiming the same host id while A runs is a configuration error.
    let refused = twin.run(&["run"]);
    assert!(!refused.status.success());
    let message = text(&refused.stderr);
    assert!(message.contains("host id \"a\""), "{message}");
    // A killed daemon's running task comes back at once when its host starts again, though its
    // task lease (30s) has not run out.
    let sleeping =
        Project::new(&read(&a.path("agentq.toml")).replace(RECORDING_AGENT, SLEEPING_AGENT));
    assert!(da.stop().success());
    let d1 = sleeping.start();
    let id = sleeping.submit("w", "sleep");
    sleeping.sleeping_agent_pid();
    d1.kill9();
    let restarted = Instant::now();
    let _d2 = sleeping.start();
    sleeping.sleeping_agent_pid();
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "the task ran again {:?} after the restart",
        restarted.elapsed()
    );
    assert_eq!(sleeping.state(id), "running");
    assert_eq!(sleeping.task(id)["interruptions"], 1);
}

/// The backend holding host id `id`'s session advisory lock, if any.
const HOST_LOCK_HOLDER: &str = "SELECT pid FROM pg_locks \
     WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
       AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
       AND ((classid::bigint << 32) | objid::bigint) = hashtextextended('agentq.host:' || $1, 0)";

/// A connection as the store makes them (TLS and all), driven until the client drops.
async fn connect(url: &DatabaseUrl) -> tokio_postgres::Client {
    agentq::store::postgres::test_db::connect(url)
        .await
        .unwrap()
        .0
}

fn lock_holder(url: &DatabaseUrl, id: &str) -> Option<i32> {
    block_on(async {
        let c = connect(url).await;
        c.query_opt(HOST_LOCK_HOLDER, &[&id])
            .await
            .unwrap()
            .map(|r| r.get(0))
    })
}

#[test]
fn a_daemon_whose_host_id_connection_breaks_takes_the_id_again_and_runs_on() {
    let Some(db) = pg_database() else { return };
    let url = db.url.expose();
    // Lease 1s: the host id is checked every third of it.
    let a = host(url, "a", &[("w", None)], "lease = \"1s\"");
    let da = a.start();
    let first = a.submit("w", "before");
    a.wait_all(&[first]);
    let before = lock_holder(&db.url, "a").expect("daemon a holds its host id");
    block_on(async {
        let c = connect(&db.url).await;
        c.execute("SELECT pg_terminate_backend($1)", &[&before])
            .await
            .unwrap();
    });
    wait_until(Duration::from_secs(10), "the host id taken again", || {
        lock_holder(&db.url, "a").is_some_and(|p| p != before)
    });
    let second = a.submit("w", "after");
    a.wait_all(&[second]);
    let log = da.log();
    assert!(log.contains("took this daemon's host id again"), "{log}");
    // While it holds the id, a second daemon under it is still refused.
    let twin = host(url, "a", &[("w", None)], "");
    assert!(!twin.run(&["run"]).status.success());
    assert!(da.stop().success());
}

#[test]
fn a_daemon_whose_host_id_was_taken_while_its_connection_was_down_stops_its_agents() {
    let Some(db) = pg_database() else { return };
    let url = db.url.expose();
    let config = read(&host(url, "a", &[("w", None)], "lease = \"1s\"").path("agentq.toml"))
        .replace(RECORDING_AGENT, SLEEPING_AGENT);
    let a = Project::new(&config);
    let mut da = a.start();
    let id = a.submit("w", "sleep");
    let agent = a.sleeping_agent_pid();
    let before = lock_holder(&db.url, "a").expect("daemon a holds its host id");
    // Another session ends the daemon's and queues for the lock in one statement, so it is
    // granted the lock before the daemon can try again: as if a twin daemon had started.
    // A runtime of its own keeps the thief's connection (and its lock) alive past block_on.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let thief = rt.block_on(async {
        let c = connect(&db.url).await;
        c.execute(
            "SELECT pg_terminate_backend($1), \
                    pg_advisory_lock(hashtextextended('agentq.host:' || $2, 0))",
            &[&before, &"a"],
        )
        .await
        .unwrap();
        c
    });
    let status = da.wait(Duration::from_secs(15));
    assert!(!status.success(), "the daemon stops with an error");
    let log = da.log();
    assert!(log.contains("lost this daemon's host id"), "{log}");
    assert!(log.contains("host id \"a\""), "{log}");
    wait_until(Duration::from_secs(5), "the agent killed", || !alive(agent));
    // Not ended by the daemon that lost the id: back in the queue, for whoever holds it next.
    assert_eq!(a.state(id), "queued");
    drop(thief);
    drop(rt);
}

/// A host's project with one Claude worker `c` (the real CLI against `fake`, HOME its own unless
/// `home` names another's) working in `cwd`, which Claude's session store is keyed by.
fn claude_host(
    fake: &fake_anthropic::FakeServer,
    url: &str,
    id: &str,
    cwd: &std::path::Path,
    daemon: &str,
    home: Option<&Project>,
) -> Project {
    let p = Project::with_claude(fake, &format!("cwd = \"{}\"", cwd.display()));
    let mut config = read(&p.path("agentq.toml"));
    if let Some(other) = home {
        config = config.replace(
            &p.path("home").display().to_string(),
            &other.path("home").display().to_string(),
        );
    }
    config.push_str(&format!(
        "[daemon]\nhost = \"{id}\"\nshutdown_grace = \"5s\"\n{daemon}\n[store]\nurl = \"{url}\"\n"
    ));
    std::fs::write(p.path("agentq.toml"), config).unwrap();
    p
}

/// `c` on host a answers "one" and "two", a stops, and host b takes `c` over for "three":
/// how many prompts the model saw in each task, and its session id.
fn claude_moves(
    db: &agentq::store::postgres::test_db::TestDb,
    shared_sessions: bool,
) -> Vec<(usize, String)> {
    let url = db.url.expose();
    let fake = fake_anthropic::FakeServer::start().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let daemon = format!("shared_sessions = {shared_sessions}");
    let a = claude_host(&fake, url, "a", cwd.path(), &daemon, None);
    let home = shared_sessions.then_some(&a);
    let b = claude_host(&fake, url, "b", cwd.path(), &daemon, home);
    let da = a.start();
    let mut ids = vec![a.submit("c", "one"), a.submit("c", "two")];
    a.wait_all(&ids);
    assert!(da.stop().success());
    let d = b.start();
    ids.push(b.submit("c", "three"));
    b.wait_all(&ids[2..]);
    assert!(d.stop().success());
    ids.iter()
        .map(|id| {
            let session = b.task(*id)["session_id"].as_str().unwrap().to_string();
            (seen(&b.output(*id)).0, session)
        })
        .collect()
}

#[test]
fn a_claude_worker_that_moves_host_starts_a_new_conversation_unless_sessions_are_shared() {
    let Some(db) = pg_database() else { return };
    let runs = claude_moves(&db, false);
    assert_eq!(runs[0].0, 1);
    assert_eq!(runs[1], (2, runs[0].1.clone()), "one conversation on a");
    assert_eq!(runs[2].0, 1, "a new conversation on b: {runs:?}");
    assert_ne!(runs[2].1, runs[0].1);
    let s = store(&db);
    let reset = events(&s, "session_reset");
    assert_eq!(reset.len(), 1, "{reset:?}");
    let why = &reset[0].message;
    assert!(why.contains("host a") && why.contains("host b"), "{why}");
    assert!(
        why.contains(&runs[0].1),
        "names the conversation left: {why}"
    );
    assert_eq!(events(&s, "worker_moved").len(), 1);
}

#[test]
fn a_claude_worker_that_moves_between_hosts_sharing_sessions_goes_on_with_its_conversation() {
    let Some(db) = pg_database() else { return };
    let runs = claude_moves(&db, true);
    assert_eq!(
        runs[2],
        (3, runs[0].1.clone()),
        "the conversation went on: {runs:?}"
    );
    let s = store(&db);
    assert!(events(&s, "session_reset").is_empty());
    assert_eq!(events(&s, "worker_moved").len(), 1);
}

/// `agentq doctor --json`'s `hosts` check, from project `p`.
fn hosts_check(p: &Project) -> serde_json::Value {
    let out = p.run(&["doctor", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}): {}", text(&out.stdout)));
    let found = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "hosts");
    found
        .cloned()
        .unwrap_or_else(|| panic!("no hosts check in {checks:#}"))
}

#[test]
fn doctor_names_the_daemons_on_the_store_a_taken_host_id_and_a_worker_no_daemon_runs() {
    let Some(db) = pg_database() else { return };
    let url = db.url.expose();
    let workers = [("free", None), ("p", Some("b"))];
    let a = host(url, "a", &workers, "");
    let b = host(url, "b", &workers, "");
    let _da = a.start();
    // p is pinned to b, and no daemon of b runs.
    let check = hosts_check(&a);
    assert_eq!(check["status"], "warn", "{check}");
    let detail = check["detail"].as_str().unwrap();
    assert!(detail.starts_with("a (pid "), "{detail}");
    assert!(
        detail.contains("no daemon runs p (pinned to b)"),
        "{detail}"
    );
    // Another folder under a's id (two folders of one machine default to one id).
    let twin = host(url, "a", &workers, "");
    let check = hosts_check(&twin);
    assert_eq!(check["status"], "warn", "{check}");
    assert!(
        check["fix"]
            .as_str()
            .unwrap()
            .contains("host id a is taken"),
        "{check}"
    );
    // With b running, all is well.
    let _db = b.start();
    wait_until(Duration::from_secs(10), "b on the store", || {
        hosts_check(&a)["status"] == "ok"
    });
    let detail = hosts_check(&b)["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("a (pid ") && detail.contains(", b (pid "),
        "{detail}"
    );
    assert!(detail.ends_with("this project's host id is b"), "{detail}");
}
