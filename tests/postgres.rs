//! The PostgreSQL store through the real binary, against a real server (`AGENTQ_TEST_DATABASE_URL`,
//! which scripts/test starts): a project on PostgreSQL runs its tasks, and a submit from another
//! "host" (another project folder on the same database, so no doorbell socket is shared) wakes a
//! running daemon through NOTIFY within milliseconds; hosts running different workers say nothing
//! of each other's; a daemon rides out the server ending all its connections.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A password the URLs carry (the test server trusts loopback, so it is never checked) and that
/// must never be printed.
const PASSWORD: &str = "pg-s3cret-never-shown";

/// `url` with [`PASSWORD`] as its user's password, when it is a URL naming a user.
fn with_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    match rest.find('@') {
        Some(at) if !rest[..at].contains(':') => format!(
            "{}{}:{PASSWORD}{}",
            &url[..scheme_end + 3],
            &rest[..at],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

fn project_on(url: &str, extra: &str) -> Project {
    Project::with_workers(
        &["w"],
        RECORDING_AGENT,
        &format!("{extra}\n[store]\nurl = \"{url}\"\n"),
    )
}

#[test]
fn a_project_on_postgres_runs_its_tasks_and_never_shows_the_password() {
    let Some(db) = pg_database() else { return };
    let url = with_password(db.url.expose());
    let p = project_on(&url, "");
    let daemon = p.start();
    let ids: Vec<i64> = (0..5)
        .map(|i| p.submit("w", &format!("task {i}")))
        .collect();
    p.wait_all(&ids);
    let mut runs = p.runs();
    runs.sort();
    assert_eq!(runs.len(), 5, "{runs:?}");
    for id in &ids {
        assert_eq!(p.output(*id), format!("done: task {}", id - ids[0]));
    }
    // The files beside the database, as with SQLite: results and the event log.
    assert!(p.path(&format!(".output/w/task_{}.txt", ids[0])).exists());
    let events = read(&p.path(".agentq/events.jsonl"));
    assert!(events.contains("task_finished"), "{events}");
    // Nothing went to an SQLite file.
    assert!(!p.path(".agentq/agentq.db").exists());
    assert_eq!(p.totals()["succeeded"], 5, "{}", p.totals());

    let doctor = p.run(&["doctor"]);
    let report = text(&doctor.stdout);
    assert!(report.contains("PostgreSQL"), "{report}");
    assert!(report.contains("as this agentq"), "{report}");
    let status = p.ok(&["status"]);
    let shown = [
        report,
        text(&doctor.stderr),
        status,
        p.ok(&["tasks"]),
        daemon.log(),
        events,
    ];
    if url.contains(PASSWORD) {
        assert!(shown[0].contains(":***@"), "{}", shown[0]);
        for s in &shown {
            assert!(!s.contains(PASSWORD), "the password was shown:\n{s}");
        }
    }
    assert!(daemon.stop().success());
}

#[test]
fn a_submit_from_another_host_wakes_the_running_daemon_through_notify() {
    let Some(db) = pg_database() else { return };
    let url = db.url.expose();
    // Host A runs the daemon; nothing else would wake it for a long while (no timer in an idle
    // daemon; intake's safety rescan is an hour away and wakes no runner anyway).
    let a = project_on(url, "[intake]\nrescan_interval = \"1h\"\n");
    let daemon = a.start();
    // Host B: another folder, so its submit rings no doorbell A listens on; only the database
    // connects them.
    let b = project_on(url, "");
    // The daemon's listener connects before its runners first look; a first task proves it.
    let first = b.submit("w", "warm up");
    b.wait_all(&[first]);
    for round in 0..3 {
        let asked = Instant::now();
        let id = b.submit("w", &format!("from b {round}"));
        let out = b.run(&["wait", "--timeout", "10s", &id.to_string()]);
        let took = asked.elapsed();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            took < Duration::from_secs(2),
            "a task submitted on another host took {took:?} to finish"
        );
    }
    // A's view of the shared queue is B's.
    assert_eq!(a.totals()["succeeded"], 4, "{}", a.totals());
    assert!(daemon.stop().success());
}

#[test]
fn agents_do_not_inherit_the_database_url() {
    let Some(db) = pg_database() else { return };
    let url = with_password(db.url.expose());
    // The store comes from the environment alone; the agent prints what it inherited.
    let p = Project::with_workers(
        &["w"],
        r#"["sh", "-c", "cat > /dev/null; printf '%s|%s' \"${AGENTQ_DATABASE_URL:-unset}\" \"${AGENTQ_TEST_DATABASE_URL:-unset}\""]"#,
        "",
    );
    let mut run = p.cmd(&["run"]);
    run.env("AGENTQ_DATABASE_URL", &url);
    let _daemon = p.start_with(run);
    let submitted = p
        .cmd(&["submit", "--wait", "-w", "w", "what do you see?"])
        .env("AGENTQ_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(submitted.status.success(), "{}", text(&submitted.stderr));
    assert_eq!(text(&submitted.stdout).trim(), "unset|unset");
    assert!(
        !p.path(".agentq/agentq.db").exists(),
        "the store was PostgreSQL"
    );
}

#[test]
fn a_pool_task_released_by_a_stopping_host_is_taken_by_another_at_once() {
    let Some(db) = pg_database() else { return };
    let url = db.url.expose();
    // Two hosts (two folders, no shared doorbell) whose pools run a sleeping agent; nothing
    // polls for long (the intake rescan is an hour).
    let extra = |host: &str| {
        format!(
            "[daemon]\nhost = \"{host}\"\nshutdown_grace = \"200ms\"\n[intake]\nrescan_interval = \"1h\"\n\
             [pool]\ncommand = {SLEEPING_AGENT}\n"
        )
    };
    let a = project_on(url, &extra("a"));
    let b = project_on(url, &extra("b"));
    let mut host_a = a.start();
    let id = a.json(&["submit", "--pool", "long"])["id"]
        .as_i64()
        .unwrap();
    a.sleeping_agent_pid();
    let _host_b = b.start();
    // A stops: the task goes back to the queue, and B, whose pool had nothing to do and no timer,
    // hears of it through NOTIFY.
    host_a.signal(nix::sys::signal::Signal::SIGTERM);
    host_a.wait(Duration::from_secs(30));
    let released = Instant::now();
    b.sleeping_agent_pid();
    assert!(
        released.elapsed() < Duration::from_secs(10),
        "B took task {id} only after {:?}",
        released.elapsed()
    );
    assert_eq!(b.state(id), "running");
}

/// Hosts sharing a database run different workers (as advised: each named worker on one host).
/// A daemon hears of the others' tasks, in the queue it finds at start and in every ring, and
/// says nothing of them: they are not its to run, nor a mistake in its config.
#[test]
fn a_daemon_does_not_warn_of_the_workers_other_hosts_run() {
    let Some(db) = pg_database() else { return };
    let store = format!("[store]\nurl = \"{}\"\n", db.url.expose());
    // Two daemons on one database need host ids of their own.
    let on = |host: &str| format!("{store}[daemon]\nhost = \"{host}\"\n");
    let a = Project::with_workers(&["w"], RECORDING_AGENT, &on("a"));
    let b = Project::with_workers(&["v"], RECORDING_AGENT, &on("b"));
    // One of B's tasks is queued before either daemon starts.
    let mut for_b = vec![b.submit("v", "queued first")];
    let host_a = a.start();
    let host_b = b.start();
    for_b.extend((0..3).map(|i| b.submit("v", &format!("v {i}"))));
    b.wait_all(&for_b);
    // Submitted from a third folder (no daemon, so only the database rings A): when A runs it,
    // A has heard every ring sent before.
    let c = Project::with_workers(&["w", "v"], RECORDING_AGENT, &store);
    let for_a = c.submit("w", "for a");
    a.wait_all(&[for_a]);
    assert_eq!(a.output(for_a), "done: for a");
    for (host, other) in [(&host_a, "\"v\""), (&host_b, "\"w\"")] {
        let log = host.log();
        assert!(
            !log.contains(other) && !log.contains("WARN"),
            "a daemon spoke of another host's worker {other}:\n{log}"
        );
    }
}

#[test]
fn a_daemon_rides_out_the_server_cutting_every_connection() {
    let Some(db) = pg_database() else { return };
    let url = db.url.expose();
    // As if the server restarted: every connection of the daemon's (its pool, its listener, the
    // one holding its host id) is ended while a task runs and the daemon idles otherwise.
    const AGENT: &str = r#"["sh", "-c", "p=$(cat); case \"$p\" in *slow*) sleep 2;; esac; printf 'done: %s' \"$p\""]"#;
    let a = Project::with_workers(
        &["w"],
        AGENT,
        &format!(
            "[daemon]\nhost = \"a\"\nlease = \"1s\"\n[intake]\nrescan_interval = \"1h\"\n\
             [store]\nurl = \"{url}\"\n"
        ),
    );
    let daemon = a.start();
    let slow = a.submit("w", "slow");
    wait_until(Duration::from_secs(20), "the slow task to run", || {
        a.state(slow) == "running"
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ended: i64 = rt.block_on(async {
        let (client, _driver) = agentq::store::postgres::test_db::connect(&db.url)
            .await
            .unwrap();
        client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    });
    assert!(
        ended >= 3,
        "pool, listener and host id: {ended} connections"
    );
    // The running task's result still lands, through a new connection.
    let out = a.run(&["wait", "--timeout", "20s", &slow.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(a.output(slow), "done: slow");
    // Another host's submit wakes it again (the listener came back), within moments.
    let b = Project::with_workers(&["w"], AGENT, &format!("[store]\nurl = \"{url}\"\n"));
    let asked = Instant::now();
    let id = b.submit("w", "after the cut");
    let out = b.run(&["wait", "--timeout", "20s", &id.to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );
    // And it holds its host id again: a twin is still refused.
    wait_until(Duration::from_secs(10), "the host id held again", || {
        daemon.log().contains("took this daemon's host id again")
    });
    let twin = Project::with_workers(
        &["w"],
        AGENT,
        &format!("[daemon]\nhost = \"a\"\n[store]\nurl = \"{url}\"\n"),
    );
    assert!(!twin.run(&["run"]).status.success());
    // Said in agentq's words, not the connection pool's ("Connection error: db error").
    let log = daemon.log();
    assert!(log.contains("listening for wake-ups"), "{log}");
    assert!(!log.contains("deadpool"), "{log}");
    assert!(daemon.stop().success());
}
