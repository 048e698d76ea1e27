//! What every backend decides and writes the same way: the events of each change (kind, words,
//! figures), the attempt row that ends an attempt, what recovering a task does to it, the usage
//! an attempt adds to the ledger, which changes the queue's rules allow, claim tokens, prompt
//! previews, and the folding of rows into the interface's types. The backends differ in SQL only:
//! they read and write the rows, and what a person reads in `agentq show` or `events.jsonl` does
//! not depend on the store.

use rand::RngExt;
use serde_json::{Value, json};

use super::{Activity, Finish, Millis, NewEvent, NewTask, Task, WorkerCounts};
use agentq_core::domain::TaskState;
use agentq_core::error::Error;
use agentq_core::worktree::Worktree;

/// A task's columns, in the order both backends read them.
pub const TASK_COLUMNS: &str = "id, worker, prompt, priority, state, attempts, max_attempts, timeout_ms, \
     not_before, created_at, updated_at, started_at, finished_at, owner, lease_expires, exit_code, \
     output, error, stderr_tail, duration_ms, source, interruptions, session_id, cost_usd, input_tokens, \
     output_tokens, num_turns, cause, memory_peak_mb, pool, class, complexity, route_reason, max_memory, \
     worktree";

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

/// An event of `worker` (and of task `task_id`, if any) at `ts`.
fn event(
    ts: Millis,
    task_id: Option<i64>,
    worker: &str,
    kind: &str,
    message: String,
    data: Option<Value>,
) -> NewEvent {
    NewEvent {
        task_id,
        worker: Some(worker.to_string()),
        kind: kind.to_string(),
        message,
        data,
        now: ts,
    }
}

/// A worktree record as the `worktree` column holds it.
pub fn worktree_json(worktree: &Worktree) -> String {
    serde_json::to_string(worktree).expect("a worktree record serialises")
}

/// Task `id`'s worktree record, from its `worktree` column. One that does not read (written by
/// a newer agentq, or damaged) is `None`, so that the task itself can still be read, shown and
/// removed; it is warned of once per task in this process, as `top` reads tasks every second.
pub fn read_worktree(id: i64, text: Option<&str>) -> Option<Worktree> {
    static WARNED: std::sync::Mutex<std::collections::BTreeSet<i64>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    match serde_json::from_str(text?) {
        Ok(worktree) => Some(worktree),
        Err(e) => {
            let first = WARNED.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
            if first {
                tracing::warn!("task {id}: its worktree record does not read ({e}); shown as none");
            }
            None
        }
    }
}

/// An event of task `id` and its `worker` about its worktree, now at `worktree`'s stage
/// ([`super::Store::set_worktree`]).
pub fn worktree_event(
    id: i64,
    worker: &str,
    (kind, message): (&str, &str),
    worktree: &Worktree,
    now: Millis,
) -> NewEvent {
    let data = json!({ "stage": worktree.stage.as_str(), "branch": worktree.branch });
    event(now, Some(id), worker, kind, message.to_string(), Some(data))
}

/// `task_queued`: task `id` was added as `t` says.
pub fn queued(t: &NewTask, id: i64) -> NewEvent {
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
    event(
        t.now,
        Some(id),
        &t.worker,
        "task_queued",
        message,
        Some(data),
    )
}

/// `task_started`: `owner` claimed `task` (as the claim left it) at `now`; `place` is `""` or
/// `" in the pool"`.
pub fn started(task: &Task, place: &str, owner: &str, now: Millis) -> NewEvent {
    let message = format!(
        "attempt {} of {}{place} by {owner}",
        task.attempts, task.max_attempts
    );
    event(
        now,
        Some(task.id),
        &task.worker,
        "task_started",
        message,
        None,
    )
}

/// The event that records the result `f` of attempt `attempts` of task `id`: `task_finished`,
/// or `task_retrying` when it goes back to the queue.
pub fn finished(f: &Finish, id: i64, worker: &str, attempts: i64) -> NewEvent {
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
        "input_tokens": f.usage.input_tokens,
        "output_tokens": f.usage.output_tokens,
    });
    let data = Value::Object(
        data.as_object()
            .expect("an object")
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    event(f.now, Some(id), worker, kind, message, Some(data))
}

/// The usage-ledger row an attempt's result adds, `(cost_usd, input_tokens, output_tokens)`: only
/// when its agent reported a cost or tokens.
pub fn usage_row(f: &Finish) -> Option<(f64, i64, i64)> {
    let u = &f.usage;
    (u.cost_usd.is_some() || u.input_tokens.is_some()).then(|| {
        (
            u.cost_usd.unwrap_or(0.0),
            u.input_tokens.unwrap_or(0),
            u.output_tokens.unwrap_or(0),
        )
    })
}

/// `task_released`: a claimed task was given back to the queue, its attempt unspent.
pub fn released(id: i64, worker: &str, reason: &str, now: Millis) -> NewEvent {
    let message = format!("{reason}; queued again, attempt not counted");
    event(now, Some(id), worker, "task_released", message, None)
}

/// Whether task `id`, in state `was`, may be cancelled.
pub fn may_cancel(id: i64, was: TaskState) -> Result<(), Error> {
    was.check_cancel()
        .map_err(|what| wrong_state(id, was, what))
}

/// Whether task `id`, in state `was`, may be queued again ([`super::Store::retry`]).
pub fn may_retry(id: i64, was: TaskState) -> Result<(), Error> {
    was.check_retry().map_err(|what| wrong_state(id, was, what))
}

fn wrong_state(id: i64, state: TaskState, what: &'static str) -> Error {
    Error::WrongState {
        id,
        state: state.to_string(),
        what,
    }
}

/// `task_cancelled`: task `id` was cancelled while in state `was`.
pub fn cancelled(id: i64, worker: &str, was: TaskState, now: Millis) -> NewEvent {
    let message = format!("cancelled while {was}");
    event(now, Some(id), worker, "task_cancelled", message, None)
}

/// `task_retried`: task `id`, which had ended in state `was`, was queued again.
pub fn retried(id: i64, worker: &str, was: TaskState, now: Millis) -> NewEvent {
    let message = format!("was {was}; queued again with attempts reset");
    event(now, Some(id), worker, "task_retried", message, None)
}

/// How an attempt ended, as a row of the attempts table.
#[derive(Default)]
pub struct AttemptEnding<'a> {
    /// `succeeded`, `failed`, `interrupted`, `released` or `cancelled`.
    pub outcome: &'a str,
    pub cause: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<i64>,
    pub memory_peak_mb: Option<f64>,
}

impl<'a> AttemptEnding<'a> {
    /// An attempt that came to the result `f`: `succeeded`, or `failed` with its cause.
    pub fn finished(f: &'a Finish) -> Self {
        AttemptEnding {
            outcome: if f.cause.is_none() {
                "succeeded"
            } else {
                "failed"
            },
            cause: f.cause.as_deref(),
            reason: f.error.as_deref(),
            exit_code: f.exit_code,
            duration_ms: Some(f.duration_ms),
            memory_peak_mb: f.memory_peak_mb,
        }
    }

    /// An attempt given back unspent ([`super::Store::release`]).
    pub fn released(reason: &'a str) -> Self {
        AttemptEnding {
            outcome: "released",
            reason: Some(reason),
            ..Default::default()
        }
    }

    /// An attempt cut short by recovery: its daemon died, or its lease ran out.
    pub fn interrupted(why: &'a str) -> Self {
        AttemptEnding {
            outcome: "interrupted",
            reason: Some(why),
            ..Default::default()
        }
    }

    /// An attempt ended by cancelling its task while it ran.
    pub fn cancelled() -> Self {
        AttemptEnding {
            outcome: "cancelled",
            cause: Some("cancelled"),
            reason: Some("cancelled while running"),
            ..Default::default()
        }
    }
}

/// What recovering one running task does to it: back to the queue with its interrupted attempt
/// given back, or `dead` when its daemon has died under it more than `max_attempts` times (it
/// may be what kills the daemon, and it must not do so forever).
pub struct Recovery {
    pub id: i64,
    pub worker: String,
    /// The task's interruptions, this one counted.
    pub interruptions: i64,
    /// `Some(error)`: the task is dead, with this error.
    pub dead: Option<String>,
    /// `task_recovered`, or `task_finished` when it is dead.
    pub event: NewEvent,
}

impl Recovery {
    /// Recovering task `id` of `worker`, held by `owner`, with `interruptions` this one counted,
    /// for the reason `why`, at `now`.
    pub fn new(
        id: i64,
        worker: String,
        owner: Option<&str>,
        interruptions: i64,
        max_attempts: i64,
        why: &str,
        now: Millis,
    ) -> Recovery {
        let owner = owner.unwrap_or("?");
        let (dead, kind, message) = if interruptions > max_attempts {
            let error = format!(
                "interrupted {interruptions} times: its daemon died while running it each time"
            );
            let message = format!("dead: {why} (was held by {owner}); {error}");
            (Some(error), "task_finished", message)
        } else {
            let message = format!("{why} (was held by {owner}); queued again, attempt not counted");
            (None, "task_recovered", message)
        };
        let event = event(now, Some(id), &worker, kind, message, None);
        Recovery {
            id,
            worker,
            interruptions,
            dead,
            event,
        }
    }

    /// The state the task is left in.
    pub fn state(&self) -> TaskState {
        if self.dead.is_some() {
            TaskState::Dead
        } else {
            TaskState::Queued
        }
    }
}

/// `worker_paused`: `worker` claims nothing until `until`.
pub fn paused(worker: &str, reason: &str, until: Millis, now: Millis) -> NewEvent {
    let when = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(until.max(0) as u64),
    );
    let message = format!("{reason}; paused until {when}");
    let data = json!({ "until": until });
    event(now, None, worker, "worker_paused", message, Some(data))
}

/// `worker_resumed`: `worker`'s pause was ended early.
pub fn resumed(worker: &str, why: &str, now: Millis) -> NewEvent {
    event(now, None, worker, "worker_resumed", why.to_string(), None)
}

/// `worker_errored`: `worker` runs nothing until restarted by hand.
pub fn errored(worker: &str, reason: &str, now: Millis) -> NewEvent {
    let message = format!("{reason}; it runs nothing until `agentq worker restart {worker}`");
    event(now, None, worker, "worker_errored", message, None)
}

/// `worker_restarted`, given what the restart cleared.
pub fn restarted(worker: &str, cleared: Option<&super::Pause>, now: Millis) -> NewEvent {
    let message = match cleared {
        Some(p) if p.errored() => format!("restarted by hand; it was errored: {}", p.reason),
        Some(p) => format!("restarted by hand; it was paused: {}", p.reason),
        None => "restarted by hand".to_string(),
    };
    event(now, None, worker, "worker_restarted", message, None)
}

/// `worker_moved`: `worker`'s lease was taken by a daemon of host `to`, from host `from`.
pub fn moved(worker: &str, from: &str, to: &str, ts: Millis) -> NewEvent {
    let message = format!("now runs on host {to} (it ran on {from})");
    let data = json!({ "from_host": from, "to_host": to });
    event(ts, None, worker, "worker_moved", message, Some(data))
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

/// `session_reset`: `worker`'s conversation (`old`, if it had one) was forgotten.
pub fn session_reset(worker: &str, why: &str, old: Option<&str>, now: Millis) -> NewEvent {
    let message = match old {
        Some(id) => format!("{why}; conversation {id} left, the next task starts a new one"),
        None => format!("{why}; the next task starts a new conversation"),
    };
    event(now, None, worker, "session_reset", message, None)
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

    #[test]
    fn a_task_interrupted_more_than_max_attempts_times_is_dead() {
        let back = Recovery::new(7, "w".into(), Some("h:1:a"), 3, 3, "lease expired", 5);
        assert_eq!(back.state(), TaskState::Queued);
        assert_eq!(back.event.kind, "task_recovered");
        assert_eq!(
            back.event.message,
            "lease expired (was held by h:1:a); queued again, attempt not counted"
        );
        let dead = Recovery::new(7, "w".into(), None, 4, 3, "lease expired", 5);
        assert_eq!(dead.state(), TaskState::Dead);
        assert_eq!(dead.event.kind, "task_finished");
        assert_eq!((dead.event.task_id, dead.event.now), (Some(7), 5));
        assert!(dead.dead.unwrap().starts_with("interrupted 4 times"));
    }
}

/// What removed tasks leave in `/metrics`' count of tasks: how many of each state and class
/// (`''` for none). (Its counters are kept apart, and removing tasks does not touch them.)
#[derive(Debug, Default, PartialEq)]
pub struct Fold {
    pub counts: std::collections::BTreeMap<(String, String), i64>,
}

/// One removed task's figures, as [`fold`] reads them.
pub struct Gone {
    pub state: TaskState,
    pub class: Option<String>,
}

/// Folds removed tasks into what `/metrics` keeps of them.
pub fn fold(gone: &[Gone]) -> Fold {
    let mut fold = Fold::default();
    for g in gone {
        *fold
            .counts
            .entry((
                g.state.as_str().to_string(),
                g.class.clone().unwrap_or_default(),
            ))
            .or_insert(0) += 1;
    }
    fold
}

/// The terminal states of `wanted` (all four when empty), quoted for an SQL `IN` list.
pub fn prunable_states(wanted: &[TaskState]) -> String {
    TaskState::ALL
        .iter()
        .filter(|s| s.is_terminal() && (wanted.is_empty() || wanted.contains(s)))
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The usage ledger keeps what today's budgets count: rows go once older than the retention's
/// cutoff and than two days.
pub fn ledger_cutoff(cutoff: super::Millis, now: super::Millis) -> super::Millis {
    cutoff.min(now - 2 * 24 * 3600 * 1000)
}

/// The rows of the `pruned_*` tables, each as (name, second key, figure): counts (state,
/// class, n), events (kind, worker, n).
pub struct PrunedRows {
    pub counts: Vec<(String, String, i64)>,
    pub events: Vec<(String, String, i64)>,
}

/// Adds what removed tasks counted to the metrics of what is left: `/metrics` counters only grow.
pub fn add_pruned(metrics: &mut super::Metrics, kept: &PrunedRows, kinds: &[String]) {
    use std::collections::BTreeMap;
    // By state's name, then class: the order the stores read them in.
    let mut tasks: BTreeMap<(&'static str, Option<String>), (TaskState, u64)> = BTreeMap::new();
    for (state, class, n) in metrics.tasks.drain(..) {
        tasks.entry((state.as_str(), class)).or_insert((state, 0)).1 += n;
    }
    for (state, class, n) in &kept.counts {
        if let Ok(state) = state.parse::<TaskState>() {
            let class = (!class.is_empty()).then(|| class.clone());
            tasks.entry((state.as_str(), class)).or_insert((state, 0)).1 += *n as u64;
        }
    }
    metrics.tasks = tasks
        .into_iter()
        .filter(|(_, (_, n))| *n > 0)
        .map(|((_, c), (s, n))| (s, c, n))
        .collect();
    let mut events: BTreeMap<(String, Option<String>), u64> = BTreeMap::new();
    for (kind, worker, n) in metrics.events.drain(..) {
        *events.entry((kind, worker)).or_insert(0) += n;
    }
    for (kind, worker, n) in &kept.events {
        if kinds.contains(kind) {
            let worker = (!worker.is_empty()).then(|| worker.clone());
            *events.entry((kind.clone(), worker)).or_insert(0) += *n as u64;
        }
    }
    metrics.events = events.into_iter().map(|((k, w), n)| (k, w, n)).collect();
}
