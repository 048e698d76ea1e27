//! The benchmark's trivial agent: appends the time it started (nanoseconds since the Unix epoch,
//! one line) to the file named by its argument, and exits 0. Every system the benchmark compares
//! runs this same program, so a submit-to-start latency is "when the agent process was running".
//! It does not read its stdin: some queues give their tasks a stdin that never closes.
//! `bench-agent LOG --with-task` adds the agentq task id (`AGENTQ_TASK_ID`) to the line, after a
//! space: the soak counts what ran against what was submitted by it.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: bench-agent LOG");
        std::process::exit(2);
    };
    // One write of one short line to a file opened for appending: lines from agents running at
    // once never interleave.
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("opening {path:?}: {e}"));
    let line = match std::env::args_os().nth(2) {
        Some(flag) if flag == "--with-task" => {
            let task = std::env::var("AGENTQ_TASK_ID").unwrap_or_else(|_| "-".into());
            format!("{started} {task}\n")
        }
        _ => format!("{started}\n"),
    };
    log.write_all(line.as_bytes())
        .unwrap_or_else(|e| panic!("writing {path:?}: {e}"));
}
