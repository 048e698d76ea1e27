//! agentq-store: the durable queue, the one source of truth for tasks and their history.
//!
//! It owns the [`Store`] trait, the interface the daemon and the CLI use; its two backends,
//! [`sqlite::SqliteStore`] (embedded, the default) and [`postgres::PgStore`] (shared by several
//! hosts, over TLS as libpq's `sslmode` says: [`url`], [`tls`]), each with its numbered migrations
//! in `migrations/`; and [`open`], which picks one from its [`StoreSettings`]. It stands on
//! `agentq-core` and knows nothing of the daemon. Both pass the same test suite (`suite`), write their
//! events' words through [`common`] and what `/metrics` counts as tasks end through [`counters`],
//! so nothing but the SQL differs. Nothing backend-specific
//! crosses the interface: times are milliseconds since the Unix epoch passed in by the caller (so backends agree
//! on the clock and tests control it), ids are integers, and every state change is one transaction
//! that also appends its event, so the history can never disagree with the state. One exception:
//! a shared store's leases, which hosts with different clocks compare, run by its own clock
//! (PostgreSQL's), and `now` only dates what claims, heartbeats and recoveries change.
//!
//! Fencing: a claim hands out a random token. Heartbeat, finish and release name the token, and
//! change nothing unless the task is still `running` under that same token. Whoever lost a claim (its
//! lease expired and the task was recovered, or it was cancelled) learns it from a `false` return and
//! can never overwrite the newer owner's result.

pub mod common;
pub mod counters;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub mod suite;
pub mod tls;
pub mod url;

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use agentq_core::domain::TaskState;
use agentq_core::error::Result;
use agentq_core::logfile::EventLog;
use agentq_core::wake::Ring;
use agentq_core::worktree::Worktree;

/// Where the queue lives: `[store] url`, or `AGENTQ_DATABASE_URL`, which wins.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StoreSettings {
    /// The embedded SQLite file in the state folder (the default).
    #[default]
    Sqlite,
    /// A PostgreSQL database, which several hosts' daemons may share.
    Postgres(url::DatabaseUrl),
}

impl StoreSettings {
    /// The store as it may be shown: the SQLite file, or the database URL without its password.
    pub fn describe(&self, db_path: &std::path::Path) -> String {
        match self {
            StoreSettings::Sqlite => db_path.display().to_string(),
            StoreSettings::Postgres(url) => url.redacted(),
        }
    }
}

/// Opens the store `settings` name (PostgreSQL, or the SQLite file `db_path` in the state folder
/// `state_dir`), creating the state folder if need be, bringing its schema up to date, with the
/// events it commits also appended to `log`.
pub async fn open(
    settings: &StoreSettings,
    state_dir: &std::path::Path,
    db_path: &std::path::Path,
    log: Option<std::sync::Arc<EventLog>>,
) -> Result<Box<dyn Store>> {
    // The state folder holds the SQLite file, and the event log whichever the store.
    agentq_core::state::ensure_dir(state_dir)?;
    Ok(match settings {
        StoreSettings::Sqlite => {
            let store = sqlite::SqliteStore::open(db_path)?;
            Box::new(match log {
                Some(log) => store.with_event_log(log),
                None => store,
            })
        }
        StoreSettings::Postgres(url) => {
            let store = postgres::PgStore::connect(url).await?;
            Box::new(match log {
                Some(log) => store.with_event_log(log),
                None => store,
            })
        }
    })
}

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Millis)
        .unwrap_or(0)
}

/// The instant `age` before now (what `finished_before` of a [`Prune`] takes for an age).
pub fn ms_ago(age: Duration) -> Millis {
    now_ms() - age.as_millis() as Millis
}

#[derive(Clone, Debug)]
pub struct NewTask {
    pub worker: String,
    pub prompt: String,
    pub priority: i64,
    pub max_attempts: u32,
    /// Overrides the worker's timeout for this task.
    pub timeout_ms: Option<u64>,
    pub not_before: Millis,
    /// Where it came from: `cli`, `file:<name>`, ...
    pub source: String,
    /// A key that makes submission idempotent: a second submit with the same key returns the
    /// first task's id instead of making another (prompt-file intake uses it across crashes).
    pub dedup_key: Option<String>,
    /// Where it runs and why.
    pub routing: Routing,
    /// Its own git worktree, as planned at submit time (`isolation = "worktree"`).
    pub worktree: Option<Worktree>,
    pub now: Millis,
}

/// Where a task runs, and what it was judged to be.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Routing {
    /// Runs in the pool (a fresh process, its own conversation) rather than on its worker.
    pub pool: bool,
    pub class: Option<String>,
    pub complexity: Option<f64>,
    pub route_reason: Option<String>,
    /// Bytes its process tree may hold; overrides the worker's `max_memory`.
    pub max_memory: Option<u64>,
}

impl Routing {
    /// Who runs a task of `worker` routed so: the pool, or the worker.
    pub fn runs_on<'a>(&self, worker: &'a str) -> &'a str {
        if self.pool {
            agentq_core::domain::POOL
        } else {
            worker
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    New(i64),
    /// A task with the same dedup key already exists.
    Duplicate(i64),
}

impl Submitted {
    pub fn id(self) -> i64 {
        match self {
            Submitted::New(id) | Submitted::Duplicate(id) => id,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Task {
    pub id: i64,
    pub worker: String,
    pub prompt: String,
    pub priority: i64,
    pub state: TaskState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub timeout_ms: Option<u64>,
    pub not_before: Millis,
    pub created_at: Millis,
    pub updated_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub owner: Option<String>,
    pub lease_expires: Option<Millis>,
    pub exit_code: Option<i32>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub stderr_tail: Option<String>,
    pub duration_ms: Option<i64>,
    pub source: String,
    /// Attempts cut short by the death of their daemon (not counted in `attempts`).
    pub interruptions: u32,
    /// Why the last attempt failed, as a code: `timeout`, `memory_limit`, `crashed`, ...
    pub cause: Option<String>,
    /// The most resident memory the last attempt's process tree held, MiB.
    pub memory_peak_mb: Option<f64>,
    /// What the agent reported about its last attempt (Claude workers).
    #[serde(flatten)]
    pub usage: Usage,
    #[serde(flatten)]
    pub routing: Routing,
    /// Its own git worktree, if it runs in one. A record the store holds but this agentq cannot
    /// read (written by a newer one, or damaged) reads as `None`, with a warning, rather than
    /// keeping the task from being read.
    pub worktree: Option<Worktree>,
}

impl Task {
    /// Who runs it: the pool, or its worker (whose doorbell a change to it rings).
    pub fn runs_on(&self) -> &str {
        self.routing.runs_on(&self.worker)
    }
}

/// What an agent reports about one attempt: its conversation and what it cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Usage {
    pub session_id: Option<String>,
    pub cost_usd: Option<f64>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub num_turns: Option<i64>,
}

/// One row of a listing: a task without its large fields.
#[derive(Clone, Debug, Serialize)]
pub struct TaskSummary {
    pub id: i64,
    pub worker: String,
    pub state: TaskState,
    pub priority: i64,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
    pub duration_ms: Option<i64>,
    pub error: Option<String>,
    /// The first line of the prompt, at most 80 characters.
    pub prompt_preview: String,
    /// Runs (or ran) in the pool.
    pub pool: bool,
    pub class: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub state: Option<TaskState>,
    pub worker: Option<String>,
    /// Newest first, at most this many.
    pub limit: Option<u32>,
}

/// Proof of a claim: the task and the token that fences it.
#[derive(Clone, Debug)]
pub struct Claim {
    pub task: Task,
    pub token: String,
}

impl Claim {
    pub fn fence(&self) -> Fence {
        Fence {
            id: self.task.id,
            token: self.token.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub id: i64,
    pub token: String,
}

/// The result of an attempt, and where the task goes next.
#[derive(Clone, Debug)]
pub struct Finish {
    /// `Succeeded`, `Failed`, `Dead`, or `Queued` for a retry at `not_before`.
    pub state: TaskState,
    pub not_before: Option<Millis>,
    pub exit_code: Option<i32>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub stderr_tail: Option<String>,
    pub duration_ms: i64,
    pub usage: Usage,
    /// Why the attempt failed, as a code (`None` when it succeeded).
    pub cause: Option<String>,
    /// The most resident memory the attempt's process tree held, MiB.
    pub memory_peak_mb: Option<f64>,
    pub now: Millis,
}

/// Runs inside `finish`'s transaction when a task ends: after the result is written and before it
/// is committed, with the task and its history exactly as they will be committed. Whoever sees the
/// task ended therefore also sees what the hook did (the runner writes the output files with it, so
/// `agentq wait N && cat .output/w/task_N.txt` never races). An error it returns undoes the
/// result: the transaction is rolled back, `finish` returns that error, and the claim is still
/// held, for the caller to give the task back (the runner does so when the disk is full, so that
/// no task is ever done without its output files). An error the result should outlive, it reports
/// itself and returns `Ok`.
pub type EndHook = Box<dyn FnOnce(&Task, &[Event]) -> Result<()> + Send + 'static>;

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub id: i64,
    pub ts: Millis,
    pub task_id: Option<i64>,
    pub worker: Option<String>,
    pub kind: String,
    pub message: String,
    /// The event's figures (attempt, state, cause, duration_ms, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Event {
    /// The event as a line of the JSON-lines event log.
    pub fn to_log(&self) -> agentq_core::logfile::LogEvent {
        let mut line =
            agentq_core::logfile::LogEvent::new(&self.kind, self.ts).message(&self.message);
        if let Some(task) = self.task_id {
            line = line.task(task);
        }
        if let Some(worker) = &self.worker {
            line = line.worker(worker);
        }
        if let Some(serde_json::Value::Object(data)) = &self.data {
            for (k, v) in data {
                line = line.with(k, v.clone());
            }
        }
        line.with("event_id", self.id)
    }
}

#[derive(Clone, Debug)]
pub struct NewEvent {
    pub task_id: Option<i64>,
    pub worker: Option<String>,
    pub kind: String,
    pub message: String,
    pub data: Option<serde_json::Value>,
    pub now: Millis,
}

impl NewEvent {
    /// The event as recorded under `id`.
    pub fn recorded(self, id: i64) -> Event {
        Event {
            id,
            ts: self.now,
            task_id: self.task_id,
            worker: self.worker,
            kind: self.kind,
            message: self.message,
            data: self.data,
        }
    }
}

/// One attempt of a task, as it ended.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub owner: Option<String>,
    pub started_at: Option<Millis>,
    pub ended_at: Millis,
    /// `succeeded`, `failed`, `interrupted` (its daemon died) or `released` (given back unspent).
    pub outcome: String,
    pub cause: Option<String>,
    pub reason: Option<String>,
    pub exit_code: Option<i32>,
    pub duration_ms: Option<i64>,
    pub memory_peak_mb: Option<f64>,
}

#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub task_id: Option<i64>,
    pub worker: Option<String>,
    pub kind: Option<String>,
    /// The latest this many, returned oldest first.
    pub limit: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pause {
    pub worker: String,
    pub until: Millis,
    pub reason: String,
    /// `paused` (ends by itself at `until`) or `errored` (waits for `agentq worker restart`).
    pub kind: String,
}

impl Pause {
    pub fn errored(&self) -> bool {
        self.kind == "errored"
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Spend {
    pub worker: String,
    pub cost_usd: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub attempts: i64,
}

/// What a worker did since its daemon started (see [`Store::activity_since`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Activity {
    pub worker: String,
    pub restarts: u64,
    pub last_restart: Option<Millis>,
    pub memory_peak_mb: Option<f64>,
}

/// The pool at a glance.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PoolCounts {
    pub queued: u64,
    pub running: u64,
    /// Tasks of each class (`long`, `short`), any state.
    pub long: u64,
    pub short: u64,
}

/// How many tasks a worker has in each state.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WorkerCounts {
    pub worker: String,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub cancelled: u64,
    pub dead: u64,
}

/// Observations counted into buckets: `counts[i]` of them are at most `bounds[i]` (cumulative,
/// as Prometheus wants), `count` in all, adding up to `sum`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub bounds: Vec<f64>,
    pub counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

/// What [`Store::metrics`] reads.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// Tasks there are or were (removed ones stay counted), by (state, class, how many).
    pub tasks: Vec<(TaskState, Option<String>, u64)>,
    /// What was counted as tasks ended and retries were scheduled.
    pub counters: counters::Counters,
    /// (kind, worker, how many).
    pub events: Vec<(String, Option<String>, u64)>,
}

/// Which finished tasks [`Store::prune`] removes: those in a terminal state (of `states`, all
/// four when empty), of `worker` if given (the pool's under `pool`), that are either finished
/// before `finished_before` or beyond the newest `keep_newest` of their worker (the pool's under
/// `pool`). With neither of the two, every such task. At most `limit` of them, oldest first.
/// Never a task its worktree record holds ([`Worktree::holds_the_task`]), though it counts
/// among its worker's newest.
#[derive(Clone, Debug, Default)]
pub struct Prune {
    pub finished_before: Option<Millis>,
    pub keep_newest: Option<u32>,
    pub states: Vec<TaskState>,
    pub worker: Option<String>,
    pub limit: u32,
    /// Only say what would go.
    pub dry_run: bool,
}

/// A task [`Store::prune`] removed (or, dry, would remove).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pruned {
    pub id: i64,
    pub worker: String,
    pub pool: bool,
    pub state: TaskState,
    pub finished_at: Option<Millis>,
}

impl Pruned {
    /// The folder name its files are under (`.output/<name>/`, its agent logs): its worker's,
    /// or `pool`.
    pub fn runs_on(&self) -> &str {
        if self.pool {
            agentq_core::domain::POOL
        } else {
            &self.worker
        }
    }
}

/// A task that has a worktree record, as [`Store::worktrees`] lists it.
#[derive(Clone, Debug, Serialize)]
pub struct WorktreeRow {
    pub id: i64,
    pub worker: String,
    pub state: TaskState,
    /// Runs (or ran) in the pool.
    pub pool: bool,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
    pub worktree: Worktree,
}

/// What [`Store::take_worker_lease`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseTake {
    /// The caller holds the worker now (taken, or renewed). `moved_from`: the host that held it
    /// last, when that was another host (the worker just moved here).
    Held { moved_from: Option<String> },
    /// Another daemon holds it, for this much longer unless it renews or releases it.
    Busy {
        host: String,
        owner: String,
        expires_in: Duration,
    },
}

/// A named worker held by a daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerLease {
    pub worker: String,
    pub host: String,
    pub owner: String,
    /// How long it holds unless renewed, milliseconds.
    pub expires_in_ms: i64,
}

/// A daemon using the store, as it announced itself ([`Store::join_host`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostRow {
    pub host: String,
    pub owner: String,
    pub pid: i64,
    pub started_at: Millis,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Whether daemons of other state folders (other hosts) may use this store at the same time.
    /// A shared store's running tasks may be another daemon's, alive: a daemon takes back only
    /// expired leases ([`Store::recover_expired`]), never [`Store::recover_all_but`].
    fn shared(&self) -> bool;

    /// The rings that other processes send through the store itself, as they come, until `stop`:
    /// how a shared store wakes the daemons of other hosts (PostgreSQL's `LISTEN`/`NOTIFY`; every
    /// change below that makes work claimable or voids a claim sends one in its transaction).
    /// After a lost connection comes back it rings [`Ring::Everyone`] once, as rings may have been
    /// missed meanwhile. `None`: the store carries none (SQLite: the doorbell socket serves).
    fn rings(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<Ring>>;

    /// Adds a task in state `queued`, or returns the existing one with the same dedup key.
    async fn submit(&self, task: &NewTask) -> Result<Submitted>;

    /// Adds many tasks, in order, as [`Store::submit`] does each. A backend that can should do it
    /// in one transaction (SQLite does: all or none, and one commit instead of one per task, which
    /// is what makes queueing thousands at once fast); this default submits them one by one.
    async fn submit_many(&self, tasks: Vec<NewTask>) -> Result<Vec<Submitted>> {
        let mut out = Vec::with_capacity(tasks.len());
        for task in &tasks {
            out.push(self.submit(task).await?);
        }
        Ok(out)
    }

    /// Atomically takes `worker`'s next task: the highest priority, oldest first, among queued
    /// tasks due by `now`, and only while none of that worker's tasks is running (a worker runs one
    /// task at a time, whichever daemon runs it). Counts an attempt. The lease runs `lease` from
    /// `now` (a shared store: from now by its own clock).
    async fn claim(
        &self,
        worker: &str,
        owner: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<Option<Claim>>;

    /// Extends a claim's lease to `lease` from `now` (a shared store: from now by its own clock).
    /// `false`: the claim is no longer held.
    async fn heartbeat(&self, fence: &Fence, now: Millis, lease: Duration) -> Result<bool>;

    /// Records an attempt's result. `false`: the claim is no longer held and nothing was written.
    /// When the task ends (any state but `queued`), `on_end` runs inside the same transaction; see
    /// [`EndHook`].
    async fn finish(&self, fence: &Fence, finish: &Finish, on_end: Option<EndHook>)
    -> Result<bool>;

    /// Gives a claimed task back to the queue without spending its attempt (shutdown).
    async fn release(&self, fence: &Fence, reason: &str, now: Millis) -> Result<bool>;

    /// Puts back in the queue every running task whose lease has expired by `now` (a shared store:
    /// by its own clock, so that a host whose clock runs ahead takes back no live task), without
    /// spending the interrupted attempt (a task interrupted more than `max_attempts` times is
    /// `dead`). Returns their ids.
    async fn recover_expired(&self, now: Millis) -> Result<Vec<i64>>;

    /// Puts back every running task not held by `owner`. Only for a store that one daemon has to
    /// itself (SQLite behind the state-folder lock), where any other owner is known to be gone.
    async fn recover_all_but(&self, owner: &str, now: Millis) -> Result<Vec<i64>>;

    /// Cancels a queued or running task; returns the state it was in. A running task's claim is
    /// voided, so its runner learns of it at its next heartbeat or wake-up.
    async fn cancel(&self, id: i64, now: Millis) -> Result<TaskState>;

    /// Queues a failed, dead or cancelled task again with its attempts reset.
    async fn retry(&self, id: i64, now: Millis) -> Result<()>;

    async fn get(&self, id: i64) -> Result<Option<Task>>;
    async fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>>;
    /// A task's history, oldest first.
    async fn events_of(&self, task_id: i64) -> Result<Vec<Event>>;
    /// The event log, filtered: the latest `limit` events, oldest first.
    async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>>;
    async fn record_event(&self, event: &NewEvent) -> Result<()>;
    async fn counts(&self) -> Result<Vec<WorkerCounts>>;

    /// The conversation a worker is in, if it has one.
    async fn worker_session(
        &self,
        worker: &str,
    ) -> Result<Option<agentq_core::domain::SessionState>>;
    /// Records the conversation a worker is in (before its process starts, and after each result).
    async fn save_worker_session(
        &self,
        worker: &str,
        session: &agentq_core::domain::SessionState,
        now: Millis,
    ) -> Result<()>;
    /// Updates a worker's conversation record, only while it still holds `joined`. Returns
    /// whether it did (not, if the session was reset meanwhile).
    async fn update_worker_session(
        &self,
        worker: &str,
        joined: &str,
        session: &agentq_core::domain::SessionState,
        now: Millis,
    ) -> Result<bool>;
    /// Forgets a worker's conversation, so its next task starts a new one. Returns whether it had
    /// one; records a `session_reset` event with `why`.
    async fn reset_worker_session(&self, worker: &str, why: &str, now: Millis) -> Result<bool>;

    /// Pauses a worker until `until`: it claims nothing meanwhile, and resumes by itself.
    async fn pause_worker(
        &self,
        worker: &str,
        until: Millis,
        reason: &str,
        now: Millis,
    ) -> Result<()>;
    /// Ends a worker's pause early. Returns whether it was paused. An errored worker stays errored:
    /// that takes [`Store::restart_worker`].
    async fn resume_worker(&self, worker: &str, why: &str, now: Millis) -> Result<bool>;
    /// Marks a worker errored (its restart policy gave up): it claims nothing until restarted.
    async fn error_worker(&self, worker: &str, reason: &str, now: Millis) -> Result<()>;
    /// Clears a worker's errored state or pause, recording `worker_restarted`. Returns what it
    /// cleared, if anything.
    async fn restart_worker(&self, worker: &str, now: Millis) -> Result<Option<Pause>>;
    /// Every attempt of a task, oldest first.
    async fn attempts_of(&self, task_id: i64) -> Result<Vec<AttemptRecord>>;
    /// The pauses in force at `now`.
    async fn pauses(&self, now: Millis) -> Result<Vec<Pause>>;
    /// What each worker's attempts cost since `since`, from the usage ledger.
    async fn spend_since(&self, since: Millis) -> Result<Vec<Spend>>;

    /// When `worker`'s earliest queued task becomes due (counting a pause), if it has any queued.
    /// Its pool tasks are not its own queue's.
    async fn next_due(&self, worker: &str) -> Result<Option<Millis>>;

    /// Atomically takes the pool's next task (highest priority, oldest first, due, its worker one
    /// of `workers` and not paused), only while fewer than `max_running` pool tasks run. Counts an
    /// attempt.
    async fn claim_pool(
        &self,
        owner: &str,
        now: Millis,
        lease: Duration,
        max_running: u32,
        workers: &[String],
    ) -> Result<Option<Claim>>;
    /// When the pool's earliest queued task of one of `workers` becomes due, if it has any.
    async fn next_due_pool(&self, workers: &[String]) -> Result<Option<Millis>>;
    /// The pool's queued and running tasks, and every task's class, counted.
    async fn pool_counts(&self) -> Result<PoolCounts>;
    /// When the earliest lease of any running task expires, by the caller's clock (a shared
    /// store: the time its own clock leaves, from this host's [`now_ms`]).
    async fn next_lease_expiry(&self) -> Result<Option<Millis>>;

    // Hosts and worker leases: which daemon runs which named worker. On PostgreSQL, lease times
    // are the server's clock (`now` is only SQLite's), so hosts need not agree on the time;
    // what comes back is a length, not an instant.

    /// Announces the daemon run `owner` under host id `host` (pid `pid`), for `lease` unless
    /// renewed ([`Store::renew_leases`]). Refused with [`agentq_core::error::Error::HostInUse`] while
    /// another live daemon runs under the same id (PostgreSQL: a session advisory lock, held on a
    /// connection of its own for the store's life, so a killed daemon's lock goes with its
    /// connection). Holding the id proves that any other owner beginning `host:` is a previous
    /// run, gone: its worker leases are taken over at once and [`Store::recover_host`] takes back
    /// its tasks.
    async fn join_host(
        &self,
        host: &str,
        owner: &str,
        pid: i32,
        now: Millis,
        lease: Duration,
    ) -> Result<()>;
    /// Keeps holding the host id [`Store::join_host`] took: if the connection that holds it
    /// broke, takes it again. `true`: it was taken again; [`agentq_core::error::Error::HostInUse`]:
    /// another daemon took the id meanwhile (it has recovered this run's tasks and may take its
    /// workers: this run must stop). A store without host ids always holds.
    async fn hold_host(&self, _host: &str) -> Result<bool> {
        Ok(false)
    }
    /// The daemon run `owner` leaves: its worker leases are released (their workers rung) and
    /// its host row removed.
    async fn leave_host(&self, host: &str, owner: &str, now: Millis) -> Result<()>;
    /// Takes or renews `worker`'s lease for `owner` on `host`: granted when no live lease is
    /// held by another owner (a released or expired one, or one of a previous run of this host).
    /// A lease taken from another host records `worker_moved`.
    async fn take_worker_lease(
        &self,
        worker: &str,
        host: &str,
        owner: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<LeaseTake>;

    /// Renews the host row and every worker lease `owner` still holds, expired or not, unless
    /// released; returns those workers (one that is missing was lost: another daemon took it).
    async fn renew_leases(
        &self,
        host: &str,
        owner: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<Vec<String>>;
    /// Gives up `owner`'s lease of `worker` (the host that held it stays on record), ringing the
    /// worker so another daemon takes it at once. `false`: `owner` did not hold it.
    async fn release_worker_lease(&self, worker: &str, owner: &str, now: Millis) -> Result<bool>;
    /// The worker leases in force, by worker.
    async fn worker_leases(&self, now: Millis) -> Result<Vec<WorkerLease>>;
    /// The daemons whose host row is in force, by host id.
    async fn hosts(&self, now: Millis) -> Result<Vec<HostRow>>;
    /// Puts back every running task whose owner is a previous run of `host` (begins `host:` and
    /// is not `owner`), at once: only after [`Store::join_host`] proved that run gone.
    async fn recover_host(&self, host: &str, owner: &str, now: Millis) -> Result<Vec<i64>>;
    /// Per worker, for the daemon run that started at `since` and claims as `owner` (or as any
    /// owner that begins so): how often its long-lived agent was restarted, when it last was (by
    /// the restart policy or `agentq worker restart`), and the highest memory peak of its
    /// attempts. The pool's tasks count under `pool`, not their worker.
    async fn activity_since(&self, since: Millis, owner: &str) -> Result<Vec<Activity>>;
    /// The figures behind `/metrics`: tasks by state and class, the [`counters`] (kept as tasks
    /// end, not counted here), and the count of events of each of `kinds` by worker.
    async fn metrics(&self, kinds: &[&str]) -> Result<Metrics>;

    /// The [`counters`]: what was counted as tasks ended and retries were scheduled, a few
    /// rows however long the history.
    async fn counters(&self) -> Result<counters::Counters>;

    /// Records task `id`'s worktree as `worktree` says now (and whether it holds the task in the
    /// store: [`Worktree::holds_the_task`]), in one transaction with `event`, if given: an event
    /// `(kind, message)` of the task and its worker, appended to the event log once committed.
    /// `false`: there is no such task, and nothing was written.
    async fn set_worktree(
        &self,
        id: i64,
        worktree: &Worktree,
        event: Option<(&str, &str)>,
        now: Millis,
    ) -> Result<bool>;

    /// Every task that has a worktree record, by id. A record this agentq cannot read is left
    /// out, with a warning (see [`Task::worktree`]).
    async fn worktrees(&self) -> Result<Vec<WorktreeRow>>;

    /// Removes finished tasks as `rule` says, with their attempts and events, in one transaction;
    /// queued and running tasks are never touched, nor a task whose worktree record holds it
    /// ([`Worktree::holds_the_task`]: its change is not merged or discarded yet), checked in the
    /// statement that removes. The [`counters`] are not touched either, and
    /// what goes is first folded into the counts that `metrics` adds to what is left (tasks by
    /// state and class, events by kind), so `/metrics` counters only grow. Returns what went,
    /// oldest first. Task-less events finished before `rule.finished_before` go too, and the
    /// usage ledger's rows older than that and than two days (budgets count today's).
    async fn prune(&self, rule: &Prune, now: Millis) -> Result<Vec<Pruned>>;

    /// Which of `ids` are tasks in the store: the daemon removes the output files and agent logs
    /// of those that are not (a crash between a task's removal and its files', or another
    /// host's retention on a shared store, which cannot reach this host's files).
    async fn known_tasks(&self, ids: &[i64]) -> Result<Vec<i64>>;

    /// Checks that the store's files are whole (SQLite: `PRAGMA quick_check`), for the daemon
    /// to refuse a damaged one at start. PostgreSQL looks after its own.
    async fn verify(&self) -> Result<()> {
        Ok(())
    }

    /// Gives back the space removed rows leave (SQLite: incremental vacuum; PostgreSQL's
    /// autovacuum does it on its own). Returns the bytes given back, where known.
    async fn reclaim(&self) -> Result<Option<u64>> {
        Ok(None)
    }
}
