//! `agentq status`, `status --watch` and `top` against a real daemon: the table and the JSON as
//! snapshots (with what changes from run to run, such as pids, memory and uptime, masked), and
//! the figures behind them checked against the processes themselves.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use serde_json::Value;

const FINISHING_AGENT: &str = r#"["sh", "-c", "cat > /dev/null; sleep 1; echo ok"]"#;

fn project() -> Project {
    Project::new(&format!(
        "[[worker]]\nname = \"busy\"\ncommand = {SLEEPING_AGENT}\n\
         [[worker]]\nname = \"done\"\ncommand = {FINISHING_AGENT}\n\
         [[worker]]\nname = \"held\"\ncommand = {FINISHING_AGENT}\n\
         [pool]\nmax_workers = 2\ncommand = {FINISHING_AGENT}\n"
    ))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Replaces the values of `keys` (anywhere in `v`) that change from run to run with a mark that
/// still says whether there was one.
fn mask(v: &mut Value, keys: &[&str]) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                if keys.contains(&k.as_str()) && !x.is_null() {
                    *x = Value::String(format!("[{k}]"));
                } else {
                    mask(x, keys);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|x| mask(x, keys)),
        _ => {}
    }
}

#[test]
fn status_shows_each_workers_process_memory_peak_and_uptime() {
    let p = project();
    let daemon = p.start();
    let done = p.submit("done", "finish");
    p.ok(&["wait", "--timeout", "60s", &done.to_string()]);
    p.ok(&["worker", "pause", "held", "--for", "1h"]);
    p.submit("held", "waits for the pause");
    let busy = p.submit("busy", "sleep");
    let agent = p.sleeping_agent_pid();
    wait_until(Duration::from_secs(20), "the agent to be seen", || {
        p.json(&["status"])["workers"][0]["pid"] == agent
    });

    let status = p.json(&["status"]);
    let now = now_ms();
    let daemon_json = &status["daemon"];
    assert_eq!(daemon_json["pid"], daemon.pid());
    let started = daemon_json["started_at"].as_i64().unwrap();
    assert!(started <= now && now - started < 120_000, "{daemon_json}");
    assert!(daemon_json["memory_mb"].as_f64().unwrap() > 1.0);
    let w = |name: &str| -> Value {
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .unwrap()
            .clone()
    };
    let b = w("busy");
    assert_eq!(
        (b["task"].as_i64(), b["mode"].as_str()),
        (Some(busy), Some("exec"))
    );
    // The memory now is the agent's (a shell exec'd into sleep: under 50 MiB, above nothing).
    let now_mb = b["memory_mb"].as_f64().unwrap();
    assert!(now_mb > 0.0 && now_mb < 50.0, "{b}");
    assert!(b["memory_peak_mb"].as_f64().unwrap() >= now_mb, "{b}");
    let up = b["up_since"].as_i64().unwrap();
    assert!(up >= started && up <= now, "{b}");
    assert_eq!(b["restarts"], 0);
    // An idle worker has no process but keeps the peak of its attempt.
    let d = w("done");
    assert!(d["pid"].is_null() && d["memory_mb"].is_null(), "{d}");
    assert!(d["memory_peak_mb"].as_f64().unwrap() > 0.0, "{d}");
    assert!(
        w("held")["state"]
            .as_str()
            .unwrap()
            .starts_with("paused until")
    );

    let mut masked = status.clone();
    mask(
        &mut masked,
        &[
            "pid",
            "pids",
            "started_at",
            "memory_mb",
            "memory_peak_mb",
            "up_since",
            "paused_until",
            "config",
            "host",
        ],
    );
    // "paused until 14:03" (or "Nov 23 00:12" across midnight)
    masked["workers"][2]["state"] = Value::String("paused until [time]".into());
    insta::assert_json_snapshot!("status_json", masked);

    // The table says the same; masked alike, with its columns squeezed to one width.
    let root = p.dir.path().to_str().unwrap().to_string();
    let text = p
        .ok(&["status"])
        .replace(&root, "[root]")
        .replace(&daemon.pid().to_string(), "[pid]")
        .replace(&agent.to_string(), "[pid]");
    insta::with_settings!({filters => vec![
        (r"\d+(\.\d+)? [MG]iB", "[mem]"),
        (r"\b\d+d \d+h\b|\b\d+h \d+m\b|\b\d+m \d+s\b|\b\d+s\b", "[up]"),
        (r"paused until (\w{3} \d\d )?\d\d:\d\d", "paused until [time]"),
        (r" {2,}", "  "),
    ]}, {
        insta::assert_snapshot!("status_text", text);
    });

    // Once the agent is gone, so are its pid and memory now; the peak stays.
    p.ok(&["cancel", &busy.to_string()]);
    wait_until(Duration::from_secs(20), "the cancel", || {
        p.state(busy) == "cancelled"
    });
    let b = p.json(&["status"])["workers"][0].clone();
    assert!(b["pid"].is_null() && b["memory_mb"].is_null(), "{b}");
    assert!(!alive(agent));
    assert!(daemon.stop().success());

    // With no daemon: what the store knows, and nothing of processes or uptime.
    let b = p.json(&["status"])["workers"][0].clone();
    assert_eq!(b["state"], "stopped");
    for key in ["pid", "memory_mb", "memory_peak_mb", "restarts", "up_since"] {
        assert!(b[key].is_null(), "{key}: {b}");
    }
}

#[test]
fn watch_redraws_until_its_count_and_top_shows_the_latest_events() {
    let p = project();
    let _daemon = p.start();
    let id = p.submit("done", "one");
    p.ok(&["wait", "--timeout", "60s", &id.to_string()]);

    // Not a terminal: frames one after another, no escape codes.
    let out = p.ok(&["status", "--watch", "--interval", "100ms", "--count", "3"]);
    assert_eq!(out.matches("agentq status every 100ms").count(), 3, "{out}");
    assert_eq!(out.matches("WORKER  AGENT").count(), 3, "{out}");
    assert!(!out.contains('\x1b'), "{out:?}");

    let out = p.ok(&["status", "--watch", "--json", "-n", "100ms", "--count", "2"]);
    let frames: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().all(|f| f["daemon"]["running"] == true));

    let out = p.ok(&["top", "--count", "1"]);
    assert!(out.contains("agentq top every 1s"), "{out}");
    assert!(out.contains("latest events:"), "{out}");
    let finished = format!("task {id}     task_finished");
    assert!(out.contains(&finished), "{out}");

    // Until interrupted: SIGTERM (or Ctrl-C) ends it cleanly.
    let mut top = p
        .cmd(&["top", "-n", "100ms"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = top.stdout.take().unwrap();
    let mut first = [0u8; 10];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"agentq top");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(top.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = top.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "top did not stop"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
