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

/// `agentq top` on a terminal (a pty of 80x24, read through a terminal emulator): the screen it
/// draws, and its keys.
mod tui {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::sync::{Arc, Mutex};

    struct Pty {
        child: std::process::Child,
        input: std::fs::File,
        screen: Arc<Mutex<vt100::Parser>>,
    }

    impl Pty {
        fn spawn(p: &Project, args: &[&str], env: &[(&str, &str)]) -> Pty {
            let size = nix::pty::Winsize {
                ws_row: 24,
                ws_col: 80,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            let pty = nix::pty::openpty(Some(&size), None).unwrap();
            let slave: OwnedFd = pty.slave;
            let mut cmd = p.cmd(args);
            cmd.env("TERM", "xterm-256color").env_remove("NO_COLOR");
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd.stdin(slave.try_clone().unwrap())
                .stdout(slave.try_clone().unwrap())
                .stderr(slave.try_clone().unwrap());
            let fd = slave.as_raw_fd();
            // SAFETY: only async-signal-safe calls between fork and exec: a new session whose
            // controlling terminal is the pty, as a terminal emulator starts a shell.
            unsafe {
                cmd.pre_exec(move || {
                    nix::unistd::setsid().map_err(std::io::Error::from)?;
                    if libc::ioctl(fd, libc::TIOCSCTTY as _, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().unwrap();
            drop(slave);
            let master = std::fs::File::from(pty.master);
            let input = master.try_clone().unwrap();
            let screen = Arc::new(Mutex::new(vt100::Parser::new(24, 80, 0)));
            let parser = screen.clone();
            std::thread::spawn(move || {
                let mut master = master;
                let mut buf = [0u8; 8192];
                while let Ok(n) = master.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    parser.lock().unwrap().process(&buf[..n]);
                }
            });
            Pty {
                child,
                input,
                screen,
            }
        }

        fn contents(&self) -> String {
            self.screen.lock().unwrap().screen().contents()
        }

        fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let shown = self.contents();
                if check(&shown) {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "waiting for {what}; the screen shows:\n{shown}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }

        fn keys(&mut self, keys: &str) {
            self.input.write_all(keys.as_bytes()).unwrap();
        }

        fn exit(mut self) -> std::process::ExitStatus {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    return status;
                }
                assert!(std::time::Instant::now() < deadline, "top did not quit");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    const TALKER: &str = r#"["sh", "-c", "read p; echo \"thinking about $p\"; while [ ! -e go ]; do sleep 0.05; done; echo \"finished $p\""]"#;

    #[test]
    fn top_on_a_terminal_selects_follows_a_transcript_filters_cancels_and_quits() {
        let p = Project::new(&format!(
            "[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = {TALKER}\n\
             [[worker]]\nname = \"v\"\nagent = \"command\"\ncommand = [\"cat\"]\n"
        ));
        let daemon = p.start();
        let done = p.submit("v", "warm up");
        p.ok(&["wait", "--timeout", "60s", &done.to_string()]);
        let running = p.submit("w", "the long one");
        let mut top = Pty::spawn(&p, &["top", "-n", "200ms"], &[]);
        top.wait_for("the workers and tasks", |s| {
            s.contains("WORKER") && s.contains("the long one") && s.contains("q quit")
        });
        // Every row fits its line: nothing wrapped onto the next.
        {
            let parser = top.screen.lock().unwrap();
            let screen = parser.screen();
            assert!(screen.alternate_screen(), "drawn in the alternate screen");
            for row in 0..24 {
                assert!(
                    !screen.row_wrapped(row),
                    "row {row} wrapped:\n{}",
                    screen.contents()
                );
            }
        }
        // The newest task is selected; Enter shows its live transcript.
        top.keys("\r");
        top.wait_for("the running task's transcript", |s| {
            s.contains(&format!("task {running} transcript"))
                && s.contains("thinking about the long one")
        });
        // Down selects the older task, whose transcript follows.
        top.keys("\x1b[B");
        top.wait_for("the other task's transcript", |s| {
            s.contains(&format!("task {done} transcript")) && s.contains("warm up")
        });
        top.keys("\r");
        top.wait_for("the events again", |s| s.contains("latest events"));
        // A filter, which leaves the running task alone and selected; a cancel of it, confirmed.
        top.keys("/long");
        top.wait_for("the filter being typed", |s| s.contains("filter: long"));
        top.keys("\r");
        top.keys("c");
        top.wait_for("the question", |s| s.contains("y to confirm"));
        assert_eq!(p.state(running), "running", "one key cancels nothing");
        top.keys("y");
        top.wait_for("the cancel to be done", |s| {
            s.contains(&format!("task {running} cancelled"))
        });
        assert_eq!(p.state(running), "cancelled");
        top.keys("q");
        let screen = top.screen.clone();
        assert!(top.exit().success());
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !screen.lock().unwrap().screen().alternate_screen(),
            "q gives the terminal's own screen back"
        );
        assert!(daemon.stop().success());
    }

    #[test]
    fn top_honours_no_color_and_gives_the_terminal_back_on_sigterm() {
        let p = Project::with_workers(&["w"], r#"["cat"]"#, "");
        let daemon = p.start();
        let id = p.submit("w", "colourful");
        p.ok(&["wait", "--timeout", "60s", &id.to_string()]);
        let colour_of = |env: &[(&str, &str)]| {
            let top = Pty::spawn(&p, &["top", "-n", "200ms"], env);
            top.wait_for("the finished task", |s| s.contains("colourful"));
            let coloured = {
                let parser = top.screen.lock().unwrap();
                let screen = parser.screen();
                (0..24).any(|row| {
                    (0..80).any(|col| {
                        screen
                            .cell(row, col)
                            .is_some_and(|c| c.fgcolor() != vt100::Color::Default)
                    })
                })
            };
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(top.child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            let screen = top.screen.clone();
            assert!(top.exit().success());
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                !screen.lock().unwrap().screen().alternate_screen(),
                "the terminal's own screen is back"
            );
            coloured
        };
        assert!(colour_of(&[]), "states are coloured");
        assert!(!colour_of(&[("NO_COLOR", "1")]), "NO_COLOR: no colour");
        assert!(daemon.stop().success());
    }
}
