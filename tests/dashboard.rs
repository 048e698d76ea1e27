//! The web dashboard in a real browser: Debian's Chromium (installed by scripts/test), headless,
//! against a real daemon on loopback. Each look loads the page, lets its scripts run (the token
//! comes in the address's #fragment, which never reaches the server), and reads the DOM it built;
//! a screenshot of each is kept under target/tmp/dashboard/ as a test artifact.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

/// An agent that takes a moment, so a task can be seen running and then succeeded.
const SLOW_AGENT: &str = r#"["sh", "-c", "p=$(cat); sleep 4; printf 'done: %s' \"$p\""]"#;

fn chromium() -> PathBuf {
    let bin = std::env::var_os("AGENTQ_TEST_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("chromium"));
    let found = Command::new(&bin).arg("--version").output();
    assert!(
        found.as_ref().is_ok_and(|o| o.status.success()),
        "the dashboard tests need Chromium ({}); scripts/test installs Debian's package: {found:?}",
        bin.display()
    );
    bin
}

fn artifacts() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Loads `url` headless and returns the DOM after its scripts ran; saves a screenshot as `shot`.
fn look(url: &str, shot: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let base = |c: &mut Command| {
        c.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-extensions",
            "--virtual-time-budget=5000",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()));
    };
    let mut dump = Command::new(chromium());
    base(&mut dump);
    let out = dump.args(["--dump-dom", url]).output().unwrap();
    assert!(out.status.success(), "chromium: {}", text(&out.stderr));
    let mut screenshot = Command::new(chromium());
    base(&mut screenshot);
    let path = artifacts().join(shot);
    let taken = screenshot
        .arg(format!("--screenshot={}", path.display()))
        .arg(url)
        .output()
        .unwrap();
    assert!(taken.status.success(), "chromium: {}", text(&taken.stderr));
    assert!(path.exists(), "no screenshot at {}", path.display());
    text(&out.stdout)
}

#[test]
fn the_dashboard_shows_a_task_move_to_succeeded_and_refuses_a_wrong_token() {
    let p = Project::with_workers(&["w"], SLOW_AGENT, "[http]\nlisten = \"127.0.0.1:0\"\n");
    let daemon = p.start();
    let base = format!("http://{}/", api_address(&daemon.log()));
    let token = p.ok(&["token"]).trim().to_string();

    let refused = look(&format!("{base}#token=not-the-token"), "wrong-token.png");
    assert!(refused.contains(r#"data-auth="refused""#), "{refused}");
    assert!(refused.contains("Token refused"), "{refused}");
    assert!(
        !refused.contains("data-worker="),
        "nothing is shown without the token"
    );

    let id = p.submit("w", "Fix the login button");
    wait_until(Duration::from_secs(20), "the task to start", || {
        p.state(id) == "running"
    });
    let running = look(&format!("{base}#token={token}"), "running.png");
    assert!(running.contains(r#"data-auth="ok""#), "{running}");
    assert!(running.contains(r#"data-worker="w""#), "{running}");
    let row = format!(r#"data-id="{id}" data-state="running""#);
    assert!(running.contains(&row), "{running}");
    assert!(
        running.contains(">cancel</button>"),
        "a running task can be cancelled"
    );
    assert!(running.contains("Fix the login button"));
    // The worker's row shows its agent's memory and pid, as `agentq status` has them.
    let w = p.json(&["status"])["workers"][0].clone();
    if let Some(pid) = w["pid"].as_i64() {
        assert!(
            running.contains(&format!("<td class=\"dim\">{pid}</td>")),
            "{running}"
        );
    }
    assert!(running.contains(" MiB"), "no memory figure: {running}");

    p.ok(&["wait", "--timeout", "30s", &id.to_string()]);
    let done = look(&format!("{base}#token={token}"), "succeeded.png");
    let row = format!(r#"data-id="{id}" data-state="succeeded""#);
    assert!(done.contains(&row), "{done}");
    assert!(done.contains("pool: 0 of 4 running"), "{done}");
    assert!(daemon.stop().success());
}
