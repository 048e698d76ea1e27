//! The web dashboard in a real browser: Debian's Chromium (installed by scripts/test), headless,
//! driven through the DevTools protocol (`common::cdp`) against a real daemon on loopback. The
//! test types and clicks as a person would (the token comes in the address's #fragment, which
//! never reaches the server), waits for the page to show what follows, and asks the CLI whether
//! the queue really did it. Screenshots are kept under target/tmp/dashboard/ as artifacts.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::cdp::Browser;
use common::*;
use serde_json::{Value, json};

/// An agent that answers at once, unless the prompt says "slow": then it works for two minutes
/// (so it is still running when the test clicks cancel).
const AGENT: &str = r#"["sh", "-c", "p=$(cat); case \"$p\" in *slow*) exec sleep 120;; esac; printf 'done: %s' \"$p\""]"#;

/// How long any one thing may take to show, on a loaded machine.
const WAIT: Duration = Duration::from_secs(60);

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

/// A JavaScript expression: task `id`'s row in the page, or null.
fn task_row(id: i64) -> String {
    format!(r#"document.querySelector('#tasks tr[data-id="{id}"]')"#)
}

/// A JavaScript expression: worker `name`'s row in the page, or null.
fn worker_row(name: &str) -> String {
    format!(r#"document.querySelector('#workers tr[data-worker="{name}"]')"#)
}

/// Waits until task `id`'s row shows one of `states`; returns that state.
fn wait_row(b: &mut Browser, id: i64, states: &[&str]) -> String {
    let expression = format!(
        "(r => r && {}.includes(r.dataset.state) ? r.dataset.state : null)({})",
        json!(states),
        task_row(id)
    );
    let state = b.wait_for(WAIT, &format!("task {id} to show {states:?}"), &expression);
    state.as_str().unwrap().to_string()
}

/// Worker `name` in `agentq status --json`.
fn worker(p: &Project, name: &str) -> Value {
    let status = p.json(&["status"]);
    let found = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == name)
        .cloned();
    found.unwrap_or_else(|| panic!("no worker {name} in {status}"))
}

#[test]
fn the_dashboards_buttons_submit_cancel_retry_and_pause_and_a_wrong_token_is_refused() {
    let p = Project::with_workers(&["w", "v"], AGENT, "[http]\nlisten = \"127.0.0.1:0\"\n");
    let daemon = p.start();
    let base = format!("http://{}/", api_address(&daemon.log()));
    let token = p.ok(&["token"]).trim().to_string();
    let mut b = Browser::launch(&chromium(), &artifacts());

    // A wrong token is refused, and nothing of the queue is shown.
    b.goto(&format!("{base}#token=not-the-token"));
    let auth = b.wait_for(
        WAIT,
        "the token's answer",
        "document.body?.dataset.auth ?? null",
    );
    assert_eq!(auth, "refused");
    let said = b.evaluate("document.querySelector('#auth-error').innerText");
    assert!(said.as_str().unwrap().contains("Token refused"), "{said}");
    assert_eq!(b.evaluate("document.querySelector('#app').hidden"), true);
    assert_eq!(
        b.evaluate("document.querySelector('[data-worker]')"),
        Value::Null
    );
    b.screenshot("wrong-token.png");

    // The right one opens the queue, live, and leaves the address at once.
    b.goto(&format!("{base}#token={token}"));
    let auth = b.wait_for(
        WAIT,
        "the token's answer",
        "document.body?.dataset.auth ?? null",
    );
    assert_eq!(auth, "ok");
    assert_eq!(b.evaluate("location.hash"), "");
    b.wait_for(
        WAIT,
        "the event stream",
        "document.querySelector('#live').className === 'on'",
    );
    for name in ["w", "v"] {
        assert_ne!(
            b.evaluate(&worker_row(name)),
            Value::Null,
            "no row for {name}"
        );
    }
    // One daemon on its own store: no host column, no hosts line.
    assert_eq!(
        b.evaluate("document.querySelector('#host-col').hidden"),
        true
    );
    assert_eq!(b.evaluate("document.querySelector('#hosts').hidden"), true);
    let pool = b.evaluate("document.querySelector('#pool').innerText");
    assert!(
        pool.as_str().unwrap().contains("pool: 0 of 4 running"),
        "{pool}"
    );

    // The form: type a prompt, choose the second worker, click Submit.
    b.click("#prompt");
    b.type_text("Fix the login button");
    let typed = b.evaluate("document.querySelector('#prompt').value");
    assert_eq!(typed, "Fix the login button");
    let chosen = b.evaluate(
        "(s => { s.value = 'v'; s.dispatchEvent(new Event('change')); return s.value; })\
         (document.querySelector('#worker'))",
    );
    assert_eq!(chosen, "v");
    b.click("#submit button[type=submit]");
    let id = b.wait_for(
        WAIT,
        "the form to say which task it queued",
        "document.querySelector('#submit-result').dataset.id ?? null",
    );
    let id: i64 = id.as_str().unwrap().parse().unwrap();
    assert_eq!(b.evaluate("document.querySelector('#prompt').value"), "");
    wait_row(&mut b, id, &["queued", "running", "succeeded"]);
    let row = b.evaluate(&format!("{}.innerText", task_row(id)));
    assert!(
        row.as_str().unwrap().contains("Fix the login button"),
        "{row}"
    );
    wait_row(&mut b, id, &["succeeded"]);
    let task = p.task(id);
    assert_eq!(task["prompt"], "Fix the login button", "{task}");
    assert_eq!(task["worker"], "v", "{task}");
    assert_eq!(task["state"], "succeeded", "{task}");
    assert_eq!(p.output(id), "done: Fix the login button");
    // Its row opens its detail, with the agent's answer.
    b.click(&format!(r#"#tasks tr[data-id="{id}"]"#));
    b.wait_for(
        WAIT,
        "the task's detail",
        "document.querySelector('#detail-output')?.innerText === 'done: Fix the login button'",
    );
    b.screenshot("succeeded.png");

    // A task submitted elsewhere shows up running, with its agent's pid and memory on its
    // worker's row, as `agentq status` has them.
    let slow = p.submit("w", "slow: rewrite the parser");
    wait_row(&mut b, slow, &["running"]);
    wait_until(WAIT, "status to name w's agent", || {
        worker(&p, "w")["pid"].is_i64()
    });
    let pid = worker(&p, "w")["pid"].as_i64().unwrap();
    let cells = format!("[...{}.cells].map(c => c.innerText)", worker_row("w"));
    b.wait_for(
        WAIT,
        "w's row to show its agent's pid and memory",
        &format!("(c => c.includes('{pid}') && c.some(t => / MiB/.test(t)))({cells})"),
    );
    b.screenshot("running.png");

    // Cancel, with its button: the page, the CLI and the agent's process agree.
    let button = |id: i64, action: &str| {
        format!(r#"#tasks tr[data-id="{id}"] button[data-action="{action}"]"#)
    };
    // A running task is cancelled on a second, confirming click only.
    b.click(&button(slow, "cancel"));
    b.wait_for(
        WAIT,
        "the cancel button to ask for confirmation",
        &format!(
            "document.querySelector('{}') !== null",
            button(slow, "confirm-cancel")
        ),
    );
    assert_eq!(p.state(slow), "running", "one click cancels nothing");
    b.click(&button(slow, "confirm-cancel"));
    wait_row(&mut b, slow, &["cancelled"]);
    assert_eq!(p.state(slow), "cancelled");
    wait_until(WAIT, "the cancelled agent to be stopped", || {
        !alive(pid as i32)
    });
    assert_eq!(
        b.evaluate(&format!(
            "document.querySelector('{}') === null",
            button(slow, "cancel")
        )),
        true,
        "an ended task offers no cancel"
    );
    b.screenshot("cancelled.png");

    // Retry, with its button: queued again, and run again.
    b.click(&button(slow, "retry"));
    wait_row(&mut b, slow, &["running"]);
    let again = p.task(slow);
    assert_eq!(again["state"], "running", "{again}");
    assert_eq!(
        again["attempts"], 1,
        "a retry starts its attempts again: {again}"
    );
    p.ok(&["cancel", &slow.to_string()]);
    wait_row(&mut b, slow, &["cancelled"]);

    // Pause and resume w with its button; `agentq status --json` agrees each time.
    let phase = |p: &Project| worker(p, "w")["state"].as_str().unwrap().to_string();
    b.click(r#"#workers tr[data-worker="w"] button[data-action="pause"]"#);
    wait_until(WAIT, "status to report w paused", || {
        phase(&p).starts_with("paused")
    });
    assert!(worker(&p, "w")["paused_until"].is_i64());
    let shows = |state: &str, button: &str| {
        format!(
            "(r => r.dataset.state === '{state}' && !!r.querySelector('button[data-action={button}]'))({})",
            worker_row("w")
        )
    };
    b.wait_for(WAIT, "w to show paused", &shows("paused", "resume"));
    b.screenshot("paused.png");
    b.click(r#"#workers tr[data-worker="w"] button[data-action="resume"]"#);
    wait_until(WAIT, "status to report w idle", || {
        phase(&p).starts_with("idle")
    });
    assert!(worker(&p, "w")["paused_until"].is_null());
    b.wait_for(WAIT, "w to show idle", &shows("idle", "pause"));

    assert!(
        b.problems.is_empty(),
        "the page alerted or threw: {:?}",
        b.problems
    );
    drop(b);
    assert!(daemon.stop().success());
}

#[test]
fn on_a_shared_store_the_dashboard_and_metrics_show_which_host_runs_each_worker() {
    let Some(db) = pg_database() else { return };
    let url = db.url.expose();
    // Two hosts, one queue: w is pinned to a, v to b; the dashboard is a's.
    let config = |id: &str, http: &str| {
        format!(
            "[daemon]\nhost = \"{id}\"\n[store]\nurl = \"{url}\"\n{http}\
             [[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = {AGENT}\nhost = \"a\"\n\
             [[worker]]\nname = \"v\"\nagent = \"command\"\ncommand = {AGENT}\nhost = \"b\"\n"
        )
    };
    let a = Project::new(&config("a", "[http]\nlisten = \"127.0.0.1:0\"\n"));
    let b_host = Project::new(&config("b", ""));
    let da = a.start();
    let _db = b_host.start();
    // Each takes its worker's lease with its first task.
    let ids = [a.submit("w", "on a"), a.submit("v", "on b")];
    a.wait_all(&ids);
    let base = format!("http://{}/", api_address(&da.log()));
    let token = a.ok(&["token"]).trim().to_string();
    let mut b = Browser::launch(&chromium(), &artifacts());
    b.goto(&format!("{base}#token={token}"));
    b.wait_for(
        WAIT,
        "the host column",
        "document.querySelector('#host-col')?.hidden === false || null",
    );
    for (worker, host) in [("w", "a"), ("v", "b")] {
        let shown = b.evaluate(&format!(
            "{}.querySelector('td.host').innerText",
            worker_row(worker)
        ));
        assert_eq!(shown, host, "worker {worker}");
    }
    let hosts = b.evaluate("document.querySelector('#hosts').innerText");
    let hosts = hosts.as_str().unwrap();
    assert!(
        hosts.starts_with("hosts: a (pid ") && hosts.contains(", b (pid "),
        "{hosts}"
    );
    let daemon = b.evaluate("document.querySelector('#daemon').innerText");
    assert!(daemon.as_str().unwrap().ends_with("host a"), "{daemon}");
    b.screenshot("hosts.png");
    // /metrics says the same, for Prometheus.
    let metrics = b.evaluate(&format!(
        "fetch('/metrics', {{ headers: {{ Authorization: 'Bearer {token}' }} }}).then(r => r.text())"
    ));
    let metrics = metrics.as_str().unwrap();
    for line in [
        "agentq_hosts 2",
        "agentq_worker_host{worker=\"w\",host=\"a\"} 1",
        "agentq_worker_host{worker=\"v\",host=\"b\"} 1",
        "agentq_worker_moves_total{worker=\"w\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line:?} in:\n{metrics}"
        );
    }
}

/// First fails (exit 3), then on its second attempt says a line and waits for `go` before its
/// last one.
const STEPPING: &str = r#"["sh", "-c", "read p; echo \"step one $p\"; echo careful >&2; [ \"$AGENTQ_ATTEMPT\" = 1 ] && exit 3; while [ ! -e go ]; do sleep 0.05; done; echo \"step two $p\""]"#;

/// Whether the page scrolls sideways, as a JavaScript expression.
const SIDEWAYS: &str = "document.documentElement.scrollWidth > window.innerWidth";

fn viewport(b: &mut Browser, width: u32, height: u32, mobile: bool) {
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
    );
}

#[test]
fn the_task_panel_follows_the_transcript_across_attempts_and_fits_a_phone() {
    let p = Project::new(&format!(
        "[defaults]\nbackoff = \"3s\"\nmax_backoff = \"3s\"\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = {STEPPING}\n\
         [[worker]]\nname = \"v\"\nagent = \"command\"\ncommand = [\"cat\"]\n"
    ));
    let daemon = p.start();
    let base = format!("http://{}/", api_address(&daemon.log()));
    let token = p.ok(&["token"]).trim().to_string();
    let mut b = Browser::launch(&chromium(), &artifacts());
    // A phone first: nothing scrolls sideways, the workers' table included.
    viewport(&mut b, 390, 844, true);
    b.goto(&format!("{base}#token={token}"));
    b.wait_for(
        WAIT,
        "the workers",
        &format!("{} !== null || null", worker_row("w")),
    );
    assert_eq!(
        b.evaluate(SIDEWAYS),
        false,
        "the page scrolls sideways at 390 px"
    );
    // Many tasks below the fold: the panel must come into view when a row is clicked.
    let fillers: Vec<i64> = (0..12)
        .map(|i| p.submit("v", &format!("filler {i}")))
        .collect();
    p.wait_all(&fillers);
    let id = p.submit("w", "job");
    wait_row(&mut b, id, &["queued", "running"]);
    b.click(&format!(r#"#tasks tr[data-id="{id}"]"#));
    b.wait_for(
        WAIT,
        "the panel to open in view",
        "(r => r.top >= -1 && r.top < window.innerHeight)(document.querySelector('#detail').getBoundingClientRect()) || null",
    );

    // The first attempt fails: the panel says the task waits for a retry, when, and why.
    b.wait_for(
        WAIT,
        "the panel to say it waits for a retry and why",
        "(s => s && /for a retry at .*because attempt 1 ended: .*exit code 3/.test(s.innerText))(document.querySelector('#detail-waiting')) || null",
    );
    b.screenshot("retry-waiting-phone.png");
    // The second runs: the transcript streams both attempts' lines, and the elapsed time ticks.
    b.wait_for(
        WAIT,
        "the second attempt's first line in the transcript",
        "[...document.querySelectorAll('#transcript [data-kind=stdout]')].filter(e => e.innerText === 'step one job').length === 2 || null",
    );
    let stderr =
        b.evaluate("[...document.querySelectorAll('#transcript .t-stderr')].map(e => e.innerText)");
    assert!(
        stderr.as_array().unwrap().iter().any(|t| t == "careful"),
        "{stderr}"
    );
    let first = b.wait_for(
        WAIT,
        "the elapsed time",
        "document.querySelector('#detail-elapsed')?.innerText ?? null",
    );
    b.wait_for(
        WAIT,
        "the elapsed time to tick",
        &format!("document.querySelector('#detail-elapsed')?.innerText !== {first} || null"),
    );
    assert_eq!(
        b.evaluate(SIDEWAYS),
        false,
        "the open panel scrolls sideways at 390 px"
    );
    b.screenshot("running-phone.png");

    // A desktop: the same panel, the tables as tables.
    viewport(&mut b, 1280, 900, false);
    assert_eq!(b.evaluate(SIDEWAYS), false);
    assert_eq!(
        b.evaluate("getComputedStyle(document.querySelector('#tasks thead')).display"),
        "table-header-group"
    );
    b.screenshot("running-desktop.png");

    std::fs::write(p.path("go"), "").unwrap();
    b.wait_for(
        WAIT,
        "the last line and the end of the transcript",
        "document.querySelector('#transcript').dataset.ended === '1' && document.querySelector('#detail').dataset.state === 'succeeded' || null",
    );
    let lines = b.evaluate(
        "[...document.querySelectorAll('#transcript [data-kind=stdout]')].map(e => e.innerText)",
    );
    assert_eq!(
        lines,
        json!(["step one job", "step one job", "step two job"])
    );
    // Every attempt, with its cause.
    let attempts =
        b.evaluate("[...document.querySelectorAll('#attempts tbody tr')].map(r => r.innerText)");
    let attempts = attempts.as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        attempts[0].as_str().unwrap().contains("crashed"),
        "{attempts:?}"
    );
    assert!(
        attempts[1].as_str().unwrap().contains("succeeded"),
        "{attempts:?}"
    );

    // The worker's restart button reaches the daemon.
    b.click(r#"#workers tr[data-worker="w"] button[data-action="restart"]"#);
    wait_until(WAIT, "the restart to be recorded", || {
        !p.json(&["events", "--kind", "worker_restarted"])
            .as_array()
            .unwrap()
            .is_empty()
    });
    assert!(
        b.problems.is_empty(),
        "the page alerted or threw: {:?}",
        b.problems
    );
    drop(b);
    assert!(daemon.stop().success());
}

/// A task in a worktree of its own: the panel shows its branch, the files it changed and the
/// patch coloured, and merges it on a second click of merge (the repository's checkout follows);
/// another's change is thrown away by discard; at phone width nothing scrolls sideways.
#[test]
fn the_task_panel_shows_a_change_and_merges_or_discards_it() {
    let agent = r#"["sh", "-c", "p=$(cat); echo \"$p\" > \"$p.txt\"; echo done"]"#;
    let p = Project::new(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = {agent}\nisolation = \"worktree\"\nworktree = \"per-task\"\nrepo = \"repo\"\n"
    ));
    let repo = p.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    git(&["init", "-q", "-b", "main"]);
    git(&[
        "-c",
        "user.name=T",
        "-c",
        "user.email=t@e",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "first",
    ]);
    let daemon = p.start();
    let base = format!("http://{}/", api_address(&daemon.log()));
    let token = p.ok(&["token"]).trim().to_string();
    let kept = p.submit("w", "kept");
    let thrown = p.submit("w", "thrown");
    p.wait_all(&[kept, thrown]);
    let mut b = Browser::launch(&chromium(), &artifacts());
    viewport(&mut b, 390, 844, true);
    b.goto(&format!("{base}#token={token}"));
    wait_row(&mut b, kept, &["succeeded"]);
    b.click(&format!(r#"#tasks tr[data-id="{kept}"]"#));
    b.wait_for(
        WAIT,
        "the patch, its added line coloured",
        "[...document.querySelectorAll('#detail-diff .add')].some(e => e.innerText.trim() === '+kept') || null",
    );
    let files =
        b.evaluate("[...document.querySelectorAll('#change-files td.path')].map(e => e.innerText)");
    assert_eq!(files, json!(["kept.txt"]));
    let change = b.evaluate("document.querySelector('#change').innerText");
    assert!(
        change
            .as_str()
            .unwrap()
            .contains(&format!("agentq/w/{kept}")),
        "{change}"
    );
    assert_eq!(
        b.evaluate(SIDEWAYS),
        false,
        "the change scrolls sideways at 390 px"
    );
    b.screenshot("change-phone.png");
    // Mobile emulation's click coordinates drift after a long scroll: the buttons are clicked
    // at a desktop's width.
    viewport(&mut b, 1280, 900, false);
    b.click(r#"#change-actions button[data-action="merge"]"#);
    b.wait_for(
        WAIT,
        "merge to ask for confirmation",
        r#"document.querySelector('#change-actions button[data-action="confirm-merge"]') !== null || null"#,
    );
    assert_eq!(
        p.task(kept)["worktree"]["stage"],
        "ready",
        "one click merges nothing"
    );
    b.click(r#"#change-actions button[data-action="confirm-merge"]"#);
    wait_until(WAIT, "the merge", || {
        p.task(kept)["worktree"]["stage"] == "merged"
    });
    assert_eq!(
        read(&repo.join("kept.txt")),
        "kept\n",
        "the checkout follows"
    );

    b.click(&format!(r#"#tasks tr[data-id="{thrown}"]"#));
    b.wait_for(
        WAIT,
        "the other task's change",
        &format!("document.querySelector('#detail').dataset.id === '{thrown}' && document.querySelector('#change-actions button[data-action=\"discard\"]') !== null || null"),
    );
    b.click(r#"#change-actions button[data-action="discard"]"#);
    b.click(r#"#change-actions button[data-action="confirm-discard"]"#);
    wait_until(WAIT, "the discard", || {
        p.task(thrown)["worktree"]["stage"] == "discarded"
    });
    assert!(!repo.join("thrown.txt").exists());
    assert!(daemon.stop().success());
}
