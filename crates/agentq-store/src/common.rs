//! What every backend writes the same way: the words and figures of its events, claim tokens,
//! prompt previews, and the folding of rows into the interface's types. The backends differ in
//! SQL only; what a person reads in `agentq show` or `events.jsonl` does not depend on the store.

use rand::RngExt;
use serde_json::{Value, json};

use super::{Activity, Finish, Millis, NewTask, Task, WorkerCounts};
use agentq_core::domain::TaskState;

/// A task's columns, in the order both backends read them.
pub const TASK_COLUMNS: &str = "id, worker, prompt, priority, state, attempts, max_attempts, timeout_ms, \
     not_before, created_at, updated_at, started_at, finished_at, owner, lease_expires, exit_code, \
     output, error, stderr_tail, duration_ms, source, interruptions, session_id, cost_usd, input_tokens, \
     output_tokens, num_turns, cause, memory_peak_mb, pool, class, complexity, route_reason, max_memory";

/// A fresh claim token: 128 random bits, in hex.
pub fn new_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

/// The first line of a prompt, cut to 80 characters.
pub fn preview(prompt: &str) -> String {
    let line = prompt
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if line.chars().count() > 80 {
        let cut: String = line.chars().take(79).collect();
        format!("{cut}…")
    } else {
        line.to_string()
    }
}

/// The `task_queued` event's message and figures.
pub fn queued(t: &NewTask) -> (String, Value) {
    let place = if t.routing.pool {
        "the pool"
    } else {
        "its worker"
    };
    let why = t
        .routing
        .route_reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let message = format!(
        "from {}, priority {}, {} bytes; runs on {place}{why}",
        t.source,
        t.priority,
        t.prompt.len()
    );
    let data = json!({ "pool": t.routing.pool, "class": t.routing.class, "complexity": t.routing.complexity });
    (message, data)
}

/// The `task_started` event's message; `place` is `""` or `" in the pool"`.
pub fn started(task: &Task, place: &str, owner: &str) -> String {
    format!(
        "attempt {} of {}{place} by {owner}",
        task.attempts, task.max_attempts
    )
}

/// The event that records an attempt's result: its kind, message and figures.
pub fn finished(f: &Finish, attempts: i64) -> (&'static str, String, Value) {
    let reason = f.error.as_deref().unwrap_or("");
    let (kind, message) = match f.state {
        TaskState::Succeeded => (
            "task_finished",
            format!("succeeded: attempt {attempts} in {} ms", f.duration_ms),
        ),
        TaskState::Queued => (
            "task_retrying",
            format!(
                "attempt {attempts} failed: {reason}; retry in {} ms",
                f.not_before.unwrap_or(f.now) - f.now
            ),
        ),
        TaskState::Dead => (
            "task_finished",
            format!("dead: attempt {attempts} failed: {reason}; no attempts left"),
        ),
        _ => (
            "task_finished",
            format!(
                "{}: attempt {attempts} failed: {reason}; not retryable",
                f.state
            ),
        ),
    };
    let data = json!({
        "attempt": attempts,
        "state": f.state.as_str(),
        "cause": f.cause,
        "exit_code": f.exit_code,
        "duration_ms": f.duration_ms,
        "memory_peak_mb": f.memory_peak_mb,
        "cost_usd": f.usage.cost_usd,
    });
    let data = Value::Object(
        data.as_object()
            .expect("an object")
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    (kind, message, data)
}

/// What recovering a running task writes: `Some(error)` when it is now dead (its daemon died
/// under it more than `max_attempts` times), with the event's message either way.
pub fn recovered(
    interruptions: i64,
    max_attempts: i64,
    owner: Option<&str>,
    why: &str,
) -> (Option<String>, String) {
    let owner = owner.unwrap_or("?");
    if interruptions > max_attempts {
        let error = format!(
            "interrupted {interruptions} times: its daemon died while running it each time"
        );
        let message = format!("dead: {why} (was held by {owner}); {error}");
        return (Some(error), message);
    }
    (
        None,
        format!("{why} (was held by {owner}); queued again, attempt not counted"),
    )
}

/// The `worker_paused` event's message and figures.
pub fn paused(reason: &str, until: Millis) -> (String, Value) {
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(until.max(0) as u64),
    );
    (
        format!("{reason}; paused until {when}"),
        json!({ "until": until }),
    )
}

/// The `worker_errored` event's message.
pub fn errored(worker: &str, reason: &str) -> String {
    format!("{reason}; it runs nothing until `agentq worker restart {worker}`")
}

/// The `worker_restarted` event's message, given what the restart cleared.
pub fn restarted(cleared: Option<&super::Pause>) -> String {
    match cleared {
        Some(p) if p.errored() => format!("restarted by hand; it was errored: {}", p.reason),
        Some(p) => format!("restarted by hand; it was paused: {}", p.reason),
        None => "restarted by hand".to_string(),
    }
}

/// `worker_moved`: a worker's lease was taken by a daemon of another host.
pub fn moved(from: &str, to: &str) -> (String, Value) {
    (
        format!("now runs on host {to} (it ran on {from})"),
        json!({ "from_host": from, "to_host": to }),
    )
}

/// Why a previous run's tasks go back to the queue at once when its host starts again.
pub fn previous_run(host: &str) -> String {
    format!("a previous run on host {host} is gone (its host id is taken again)")
}

/// A worker's lease as its row says: host, owner, and when it expires.
pub type HeldLease = (String, String, super::Millis);

/// Whether `owner`, a daemon of `host`, may take the worker lease `held` at `now`: not while a
/// live lease is another daemon's ([`super::LeaseTake::Busy`]), unless that daemon was a previous
/// run of the same host (gone: the host id is held). Else the host the worker moves from, if
/// another.
pub fn may_take_lease(
    held: Option<HeldLease>,
    host: &str,
    owner: &str,
    now: super::Millis,
) -> std::result::Result<Option<String>, super::LeaseTake> {
    match held {
        Some((h, o, expires)) if o != owner && h != host && expires > now => {
            Err(super::LeaseTake::Busy {
                host: h,
                owner: o,
                expires_in: std::time::Duration::from_millis((expires - now) as u64),
            })
        }
        held => Ok(held.map(|(h, _, _)| h).filter(|h| h != host)),
    }
}

/// The `session_reset` event's message, given the conversation left (if any).
pub fn session_reset(why: &str, old: Option<&str>) -> String {
    match old {
        Some(id) => format!("{why}; conversation {id} left, the next task starts a new one"),
        None => format!("{why}; the next task starts a new conversation"),
    }
}

/// Folds `(worker, state, how many)` rows, ordered by worker, into one count per worker.
pub fn fold_counts(rows: impl IntoIterator<Item = (String, TaskState, u64)>) -> Vec<WorkerCounts> {
    let mut out: Vec<WorkerCounts> = Vec::new();
    for (worker, state, n) in rows {
        if out.last().map(|c| c.worker != worker).unwrap_or(true) {
            out.push(WorkerCounts {
                worker: worker.clone(),
                ..Default::default()
            });
        }
        let c = out.last_mut().expect("pushed above");
        *match state {
            TaskState::Queued => &mut c.queued,
            TaskState::Running => &mut c.running,
            TaskState::Succeeded => &mut c.succeeded,
            TaskState::Failed => &mut c.failed,
            TaskState::Cancelled => &mut c.cancelled,
            TaskState::Dead => &mut c.dead,
        } += n;
    }
    out
}

/// Joins each worker's restarts with its memory peak (`(worker, peak)` rows), sorted by worker.
pub fn merge_activity(mut activity: Vec<Activity>, peaks: Vec<(String, f64)>) -> Vec<Activity> {
    for (worker, peak) in peaks {
        match activity.iter_mut().find(|a| a.worker == worker) {
            Some(a) => a.memory_peak_mb = Some(peak),
            None => activity.push(Activity {
                worker,
                memory_peak_mb: Some(peak),
                ..Default::default()
            }),
        }
    }
    activity.sort_by(|a, b| a.worker.cmp(&b.worker));
    activity
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews_are_one_short_line() {
        assert_eq!(preview("\n  hello\nworld"), "hello");
        assert_eq!(preview(&"x".repeat(100)).chars().count(), 80);
    }
}
