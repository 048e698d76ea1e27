//! `agentq status` as text, and its live form: `agentq status --watch` and `agentq top`.
//!
//! [`render`] is a pure function of a [`Status`] and the time, so the table is tested as a
//! snapshot without a daemon. [`watch`] redraws it every interval: on a terminal in the
//! alternate screen (as `top` and `watch` do, leaving the shell's screen as it was), elsewhere as
//! one frame after another, so its output can be logged or piped. With `--json` each frame is
//! one line of JSON.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::Path;

use agentq_core::error::Result;
use agentq_core::logfile::LogEvent;
use agentq_daemon::config::Config;
use agentq_daemon::ops::{Status, WorkerStatus};
use agentq_store::{Millis, Store, now_ms};

/// The status as `agentq status` prints it.
pub fn render(status: &Status, root: &Path, now: Millis) -> String {
    let mut out = String::new();
    match status.pid {
        Some(pid) => {
            let up = status.started_at.map(|t| format!(", up {}", ago(t, now)));
            let memory = status.memory_mb.map(|m| format!(", {}", megabytes(m)));
            writeln!(
                out,
                "daemon: running (pid {pid}{}{})  {}",
                up.unwrap_or_default(),
                memory.unwrap_or_default(),
                root.display()
            )
        }
        None => writeln!(
            out,
            "daemon: not running (start it with `agentq run`)  {}",
            root.display()
        ),
    }
    .expect("writing to a String");
    if let Some(low) = &status.disk_full {
        let what = match status.pid {
            Some(_) => "claiming paused",
            None => "`agentq run` would claim nothing",
        };
        writeln!(
            out,
            "disk full: {what}: {}; {}",
            low.describe(),
            agentq_daemon::space::FIX
        )
        .expect("writing to a String");
    }
    // Several daemons share the store: which host runs which worker, and who they are.
    let shared = !status.hosts.is_empty();
    if shared {
        let hosts: Vec<String> = status
            .hosts
            .iter()
            .map(|h| {
                let here = if h.host == status.host {
                    ", this project's"
                } else {
                    ""
                };
                format!(
                    "{} (pid {}, up {}{here})",
                    h.host,
                    h.pid,
                    ago(h.started_at, now)
                )
            })
            .collect();
        writeln!(out, "hosts: {}", hosts.join(", ")).expect("writing to a String");
    }
    let mut rows: Vec<Vec<String>> = status.workers.iter().map(|w| row(w, now)).collect();
    let mut headers = vec![
        "WORKER",
        "AGENT",
        "MODE",
        "STATE",
        "TASK",
        "PID",
        "SESSION",
        "DONE",
        "FAILED",
        "QUEUED",
        "MEMORY",
        "PEAK",
        "RESTARTS",
        "UPTIME",
        "COST TODAY",
    ];
    if shared {
        headers.insert(4, "HOST");
        for (r, w) in rows.iter_mut().zip(&status.workers) {
            r.insert(4, w.host.clone().unwrap_or_else(|| "-".into()));
        }
    }
    out.push_str(&table(&headers, &rows));
    for w in status.workers.iter().filter(|w| w.pause_reason.is_some()) {
        let reason = w.pause_reason.as_deref().unwrap_or("");
        if w.errored {
            writeln!(
                out,
                "{} errored: {reason}; `agentq worker restart {}` clears it",
                w.name, w.name
            )
        } else {
            writeln!(out, "{} paused: {reason}", w.name)
        }
        .expect("writing to a String");
    }
    let ids: Vec<String> = status.pool_tasks.iter().map(i64::to_string).collect();
    writeln!(
        out,
        "pool: {} of {} running{}, {} queued; classes: {} long, {} short",
        status.pool_tasks.len(),
        status.max_workers,
        if ids.is_empty() {
            String::new()
        } else {
            format!(" (tasks {})", ids.join(", "))
        },
        status.pool.queued,
        status.pool.long,
        status.pool.short
    )
    .expect("writing to a String");
    let t = status.totals();
    writeln!(
        out,
        "total: {} queued, {} running, {} succeeded, {} failed, {} dead, {} cancelled",
        t["queued"], t["running"], t["succeeded"], t["failed"], t["dead"], t["cancelled"]
    )
    .expect("writing to a String");
    out
}

fn row(w: &WorkerStatus, now: Millis) -> Vec<String> {
    let dash = || "-".to_string();
    vec![
        w.name.clone(),
        w.agent.clone(),
        w.mode.clone(),
        // An errored worker's reason is long: it goes below the table.
        if w.errored {
            "errored".to_string()
        } else {
            w.state.clone()
        },
        w.task.map_or_else(dash, |t| t.to_string()),
        w.pid.map_or_else(dash, |p| p.to_string()),
        w.session_id
            .as_deref()
            .map_or_else(dash, |s| s.chars().take(8).collect()),
        w.succeeded.to_string(),
        // Failed for good, either way: at once, or after its attempts ran out.
        (w.failed + w.dead).to_string(),
        w.queued.to_string(),
        w.memory_mb.map_or_else(dash, megabytes),
        w.memory_peak_mb.map_or_else(dash, megabytes),
        w.restarts.map_or_else(dash, |r| r.to_string()),
        w.up_since.map_or_else(dash, |t| ago(t, now)),
        spent_today(w),
    ]
}

/// What a worker spent today: dollars where its agent reports a cost (Claude), tokens where it
/// reports only those (Codex, Gemini).
fn spent_today(w: &WorkerStatus) -> String {
    if w.cost_today_usd > 0.0 || w.tokens_today == 0 {
        return format!("${:.2}", w.cost_today_usd);
    }
    match w.tokens_today {
        t if t < 10_000 => format!("{t} tok"),
        t if t < 10_000_000 => format!("{:.1}k tok", t as f64 / 1000.0),
        t => format!("{:.1}M tok", t as f64 / 1_000_000.0),
    }
}

pub(crate) fn megabytes(mb: f64) -> String {
    match mb {
        mb if mb < 10.0 => format!("{mb:.1} MiB"),
        mb if mb < 1024.0 => format!("{mb:.0} MiB"),
        mb => format!("{:.1} GiB", mb / 1024.0),
    }
}

/// How long ago `since` was, in its two largest units: `45s`, `12m 5s`, `3h 12m`, `2d 4h`.
pub fn ago(since: Millis, now: Millis) -> String {
    let s = ((now - since).max(0) / 1000) as u64;
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m {}s", s % 60),
        (0, h, m) => format!("{h}h {m}m"),
        (d, h, _) => format!("{d}d {h}h"),
    }
}

/// Rows under headers, each column as wide as its widest cell, two spaces apart.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let _ = write!(text, "{cell:<width$}  ", width = widths[i]);
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

/// One event as `agentq events` prints it.
pub fn event_line(e: &LogEvent) -> String {
    let task = e.task.map_or_else(|| "-".into(), |t| format!("task {t}"));
    let worker = e.worker.as_deref().unwrap_or("-");
    format!(
        "{}  {worker:<12} {task:<10} {:<16} {}",
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.ts.max(0) as u64)
        ),
        e.kind,
        e.message
    )
}

/// What to show and how often.
pub struct Watch {
    pub interval: std::time::Duration,
    /// Stop after this many frames (0: until interrupted).
    pub count: u32,
    /// The latest events beneath the table.
    pub events: bool,
    pub json: bool,
}

/// Redraws the status every interval until a request to stop (Ctrl-C, SIGTERM) or `count` frames.
pub async fn watch(config: &Config, store: &dyn Store, how: Watch) -> Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut requests = agentq_platform::signals::StopRequests::listen()
                .expect("the stop signals can be handled");
            requests.recv().await;
            stop.cancel();
        });
    }
    let terminal = !how.json && std::io::stdout().is_terminal();
    let screen = terminal.then(Screen::enter);
    let mut frames = 0u32;
    let mut tick = tokio::time::interval(how.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = stop.cancelled() => break Ok(()),
            _ = tick.tick() => {}
        }
        let frame = match frame(config, store, &how, terminal).await {
            Ok(frame) => frame,
            Err(e) => break Err(e),
        };
        let mut stdout = std::io::stdout().lock();
        let written = if terminal {
            // Home, each line cleared to its end, then the rest of the screen cleared: no flicker.
            let body = frame.replace('\n', "\x1b[K\n");
            write!(stdout, "\x1b[H{body}\x1b[J")
        } else if how.json {
            writeln!(stdout, "{frame}")
        } else {
            // Frames one after another, for a log or a pipe.
            writeln!(stdout, "{frame}")
        };
        // A closed pipe (`agentq top | head`) ends the watch quietly.
        if written.and_then(|_| stdout.flush()).is_err() {
            break Ok(());
        }
        frames += 1;
        if how.count > 0 && frames >= how.count {
            break Ok(());
        }
    };
    drop(screen);
    result
}

async fn frame(config: &Config, store: &dyn Store, how: &Watch, terminal: bool) -> Result<String> {
    let pid = agentq_core::state::holder(&config.state_dir())?;
    let status = agentq_daemon::ops::status(config, store, pid).await?;
    let now = now_ms();
    if how.json {
        return Ok(serde_json::to_string(&status.to_json()).expect("status serialises"));
    }
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
    let mut out = format!(
        "agentq {} every {}  {stamp}{}\n\n",
        if how.events { "top" } else { "status" },
        humantime::format_duration(how.interval),
        if terminal { "  (Ctrl-C quits)" } else { "" }
    );
    out.push_str(&render(&status, &config.root, now));
    if how.events {
        let used = out.lines().count() + 2;
        let room = match terminal.then(terminal_rows).flatten() {
            Some(rows) => rows.saturating_sub(used + 1).max(1),
            None => 10,
        };
        // From the store, by its index: the latest few, not a read of the whole event log every
        // refresh (the log also holds memory reports, which would crowd a small screen).
        let latest = store
            .events(&agentq_store::EventFilter {
                limit: Some(room as u32),
                ..Default::default()
            })
            .await?;
        let recent: Vec<LogEvent> = latest.iter().map(agentq_store::Event::to_log).collect();
        out.push_str("\nlatest events:\n");
        if recent.is_empty() {
            out.push_str("(none yet)\n");
        }
        for e in &recent {
            let mut line = event_line(e);
            if terminal {
                // One screen line each, so the frame fits the screen.
                if let Some(cols) = terminal_cols() {
                    line = line.chars().take(cols).collect();
                }
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}

/// The terminal's alternate screen with the cursor hidden, restored when dropped.
struct Screen;

impl Screen {
    fn enter() -> Screen {
        agentq_platform::term::enable_escapes();
        print!("\x1b[?1049h\x1b[?25l");
        Screen
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
    }
}

fn terminal_rows() -> Option<usize> {
    agentq_platform::term::size().map(|(_, rows)| rows as usize)
}

fn terminal_cols() -> Option<usize> {
    agentq_platform::term::size().map(|(cols, _)| cols as usize)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use agentq_store::PoolCounts;

    pub(crate) const NOW: Millis = 1_795_000_000_000;
    const MIN: Millis = 60_000;

    fn worker(name: &str, state: &str) -> WorkerStatus {
        WorkerStatus {
            name: name.into(),
            agent: "claude".into(),
            mode: "exec".into(),
            state: state.into(),
            task: None,
            queued: 0,
            running: 0,
            succeeded: 0,
            failed: 0,
            dead: 0,
            cancelled: 0,
            paused_until: None,
            pause_reason: None,
            errored: false,
            cost_today_usd: 0.0,
            tokens_today: 0,
            cost_total_usd: 0.0,
            input_tokens_total: 0,
            output_tokens_total: 0,
            session_id: None,
            session_cost_usd: None,
            pid: None,
            memory_mb: None,
            memory_peak_mb: None,
            restarts: Some(0),
            up_since: Some(NOW - 3 * 60 * MIN - 12 * MIN),
            host: None,
        }
    }

    /// Every kind of row: a persistent worker at work, an idle one, a paused one, an errored
    /// one, the pool, and tasks of a worker the config no longer names.
    pub(crate) fn busy() -> Status {
        let reviewer = WorkerStatus {
            mode: "persistent".into(),
            task: Some(412),
            pid: Some(48_213),
            session_id: Some("3f2a9c1b-8d4e-4b7a-9c1e-0a1b2c3d4e5f".into()),
            succeeded: 128,
            failed: 2,
            dead: 1,
            queued: 7,
            running: 1,
            memory_mb: Some(212.4),
            memory_peak_mb: Some(640.0),
            restarts: Some(1),
            up_since: Some(NOW - 47 * MIN),
            cost_today_usd: 4.213,
            ..worker("reviewer", "running")
        };
        let docs = WorkerStatus {
            agent: "command".into(),
            succeeded: 9,
            memory_peak_mb: Some(3.1),
            ..worker("docs", "idle")
        };
        let nightly = WorkerStatus {
            agent: "codex".into(),
            tokens_today: 45_210,
            paused_until: Some(NOW + 90 * MIN),
            pause_reason: Some("usage limit reached; resets at 15:00".into()),
            queued: 3,
            ..worker("nightly", "paused until 15:00")
        };
        let flaky = WorkerStatus {
            mode: "persistent".into(),
            errored: true,
            pause_reason: Some("the agent died 5 times in 60s (exit 1: boom)".into()),
            restarts: Some(5),
            state: "errored: the agent died 5 times in 60s (exit 1: boom)".into(),
            ..worker("flaky", "")
        };
        let pool = WorkerStatus {
            succeeded: 40,
            failed: 1,
            queued: 5,
            running: 2,
            memory_mb: Some(1024.0),
            memory_peak_mb: Some(2900.0),
            ..worker("pool", "running")
        };
        let gone = WorkerStatus {
            agent: "-".into(),
            mode: "-".into(),
            succeeded: 3,
            restarts: None,
            up_since: None,
            ..worker("retired", "not in config")
        };
        Status {
            pid: Some(48_100),
            started_at: Some(NOW - 3 * 60 * MIN - 12 * MIN),
            memory_mb: Some(9.1),
            workers: vec![reviewer, docs, nightly, flaky, pool, gone],
            pool_tasks: vec![7, 9],
            pool_pids: vec![48_300, 48_301],
            pool: PoolCounts {
                queued: 5,
                running: 2,
                long: 10,
                short: 30,
            },
            max_workers: 4,
            config: "/srv/agents/agentq.toml".into(),
            host: "build-1".into(),
            hosts: Vec::new(),
            disk_full: None,
        }
    }

    #[test]
    fn a_full_disk_is_said_under_the_daemon_with_what_to_do() {
        let mut status = busy();
        status.disk_full = Some(agentq_daemon::space::Low {
            path: "/srv/agents/.output".into(),
            free_bytes: 300 << 10,
            needed_bytes: 64 << 20,
        });
        let text = render(&status, Path::new("/srv/agents"), NOW);
        let line = text.lines().nth(1).unwrap();
        assert!(
            line.starts_with("disk full: claiming paused: /srv/agents/.output has 300 KiB free, under the 64.0 MiB"),
            "{line}"
        );
        assert!(line.contains("agentq clean"), "{line}");
        status.pid = None;
        let text = render(&status, Path::new("/srv/agents"), NOW);
        assert!(
            text.contains("disk full: `agentq run` would claim nothing"),
            "{text}"
        );
        assert_eq!(status.to_json()["disk_full"]["free_bytes"], 300 << 10);
    }

    #[test]
    fn status_table_snapshot() {
        insta::assert_snapshot!(render(&busy(), Path::new("/srv/agents"), NOW));
    }

    #[test]
    fn status_table_of_a_stopped_daemon_snapshot() {
        let mut status = busy();
        status.pid = None;
        status.started_at = None;
        status.memory_mb = None;
        status.pool_tasks.clear();
        for w in &mut status.workers {
            *w = WorkerStatus {
                state: "stopped".into(),
                task: None,
                pid: None,
                memory_mb: None,
                memory_peak_mb: None,
                restarts: None,
                up_since: None,
                ..w.clone()
            };
        }
        insta::assert_snapshot!(render(&status, Path::new("/srv/agents"), NOW));
    }

    #[test]
    fn status_table_of_several_hosts_snapshot() {
        let mut status = busy();
        status.hosts = vec![
            agentq_store::HostRow {
                host: "build-1".into(),
                owner: "build-1:48100:0badc0de".into(),
                pid: 48_100,
                started_at: NOW - 3 * 60 * MIN - 12 * MIN,
            },
            agentq_store::HostRow {
                host: "build-2".into(),
                owner: "build-2:7100:0ddba11".into(),
                pid: 7_100,
                started_at: NOW - 5 * MIN,
            },
        ];
        for (w, host) in status.workers.iter_mut().zip(["build-1", "build-2"]) {
            w.host = Some(host.into());
        }
        insta::assert_snapshot!(render(&status, Path::new("/srv/agents"), NOW));
    }

    #[test]
    fn status_json_snapshot() {
        insta::assert_json_snapshot!(busy().to_json());
    }

    #[test]
    fn ago_names_the_two_largest_units() {
        let s = 1000;
        assert_eq!(ago(0, 45 * s), "45s");
        assert_eq!(ago(0, 12 * 60 * s + 5 * s), "12m 5s");
        assert_eq!(ago(0, 3 * 3600 * s + 12 * 60 * s + 9 * s), "3h 12m");
        assert_eq!(ago(0, 2 * 86_400 * s + 4 * 3600 * s), "2d 4h");
        assert_eq!(ago(10 * s, 0), "0s", "a clock step back is not negative");
    }
}
