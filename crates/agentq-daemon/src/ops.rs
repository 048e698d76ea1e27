//! What a client asks of the queue, written once for the command line and the HTTP API.
//!
//! Each operation acts on the [`Store`], rings whoever must hear of the change through a [`Bell`]
//! and answers with the JSON that `agentq <command> --json` prints and the API returns. The bell
//! is the difference between the two callers: the CLI sends a datagram to the daemon's doorbell
//! ([`agentq_core::wake::send_ring`]), the API, inside the daemon, wakes the runner directly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{Config, POOL};
use crate::output::TaskRecord;
use crate::route::{Ask, Plan};
use agentq_core::domain::TaskState;
use agentq_core::error::{Error, Result};
use agentq_core::logfile::{LogEvent, LogFilter};
use agentq_core::wake::Ring;
use agentq_store::{Millis, PoolCounts, Store, Task, TaskFilter, now_ms};

/// What [`clean`] removed (or, dry, would remove).
#[derive(Debug, Default, Serialize)]
pub struct Cleaned {
    pub tasks: Vec<agentq_store::Pruned>,
    /// Output files and agent logs removed.
    pub files: u64,
    /// Of those, the files of tasks that were no longer in the store (see [`remove_orphan_files`]).
    pub orphans: u64,
    /// Bytes the database gave back, where it says.
    pub reclaimed_bytes: Option<u64>,
}

impl Cleaned {
    /// ` (3 of tasks no longer in the store)`, when there were any.
    pub fn orphans_removed(&self) -> String {
        match self.orphans {
            0 => String::new(),
            n => format!(" ({n} of tasks no longer in the store)"),
        }
    }

    /// `; the database gave back 1.2 MiB`, when it gave back anything.
    pub fn gave_back(&self) -> String {
        self.reclaimed_bytes
            .filter(|b| *b > 0)
            .map(|b| {
                format!(
                    "; the database gave back {}",
                    agentq_agents::memory::human(b)
                )
            })
            .unwrap_or_default()
    }
}

/// Removes finished tasks as `rule` says, in batches of `rule.limit` (each its own transaction),
/// with their output files (`.output/<worker>/task_<id>.*`) and agent logs
/// (`.agentq/logs/<worker>/task_<id>.log*`), then gives the database's space back. Queued and
/// running tasks are never touched (the store checks, in the transaction that removes). Dry, it
/// only lists. `pause` runs between batches: the daemon yields there to its own work.
pub async fn clean(
    config: &Config,
    store: &dyn Store,
    mut rule: agentq_store::Prune,
    pause: Duration,
) -> Result<Cleaned> {
    let mut cleaned = Cleaned::default();
    if rule.dry_run {
        rule.limit = u32::MAX;
        cleaned.tasks = store.prune(&rule, now_ms()).await?;
        return Ok(cleaned);
    }
    loop {
        let batch = store.prune(&rule, now_ms()).await?;
        cleaned.files += remove_task_files(config, &batch);
        let done = batch.len() < rule.limit as usize;
        cleaned.tasks.extend(batch);
        if done {
            break;
        }
        tokio::time::sleep(pause).await;
    }
    if !cleaned.tasks.is_empty() {
        cleaned.reclaimed_bytes = store.reclaim().await?;
    }
    cleaned.orphans = remove_orphan_files(config, store, rule.worker.as_deref()).await?;
    cleaned.files += cleaned.orphans;
    Ok(cleaned)
}

/// How old a task's file must be before it may be taken for an orphan: its task's row was
/// committed before it was written, so this is only a margin.
const ORPHAN_AGE: Duration = Duration::from_secs(60);

/// Removes output files, agent logs and transcripts (`task_<id>.*` under `.output/<folder>/`,
/// `.agentq/logs/<folder>/` and `.agentq/transcripts/<folder>/`, of every folder or of `only`'s) whose task is no longer in the
/// store: left by a crash between a task's removal and its files', or by another host's
/// retention on a shared store, which removes this host's tasks but cannot reach their files.
/// Files younger than a minute are left alone.
pub async fn remove_orphan_files(
    config: &Config,
    store: &dyn Store,
    only: Option<&str>,
) -> Result<u64> {
    let roots: Vec<PathBuf> = [
        config.output_dir("_"),
        config.task_log_dir("_"),
        config.transcript_dir("_"),
    ]
    .iter()
    .filter_map(|d| d.parent().map(Path::to_path_buf))
    .collect();
    let only = only.map(str::to_string);
    let found = run_blocking(move || {
        let mut found: Vec<(PathBuf, i64)> = Vec::new();
        let now = std::time::SystemTime::now();
        for root in roots {
            let Ok(folders) = std::fs::read_dir(&root) else {
                continue;
            };
            for folder in folders.flatten() {
                let name = folder.file_name();
                if only.as_deref().is_some_and(|o| name.to_str() != Some(o)) {
                    continue;
                }
                let Ok(files) = std::fs::read_dir(folder.path()) else {
                    continue;
                };
                for file in files.flatten() {
                    let name = file.file_name();
                    let Some(id) = name
                        .to_str()
                        .and_then(|n| n.strip_prefix("task_"))
                        .and_then(|n| n.split('.').next())
                        .and_then(|n| n.parse::<i64>().ok())
                    else {
                        continue;
                    };
                    let old = file
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| now.duration_since(t).is_ok_and(|age| age >= ORPHAN_AGE));
                    if old {
                        found.push((file.path(), id));
                    }
                }
            }
        }
        found
    })
    .await?;
    if found.is_empty() {
        return Ok(0);
    }
    let mut ids: Vec<i64> = found.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    let known: std::collections::HashSet<i64> =
        store.known_tasks(&ids).await?.into_iter().collect();
    let gone: Vec<PathBuf> = found
        .into_iter()
        .filter(|(_, id)| !known.contains(id))
        .map(|(path, _)| path)
        .collect();
    run_blocking(move || {
        gone.iter()
            .filter(|path| std::fs::remove_file(path).is_ok())
            .count() as u64
    })
    .await
}

/// Runs file-system work off the async threads.
async fn run_blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    Ok(tokio::task::spawn_blocking(work).await?)
}

/// Removes the output files, agent logs and transcripts of removed tasks: each folder is listed
/// once.
fn remove_task_files(config: &Config, tasks: &[agentq_store::Pruned]) -> u64 {
    use std::collections::{BTreeMap, HashSet};
    let mut by_folder: BTreeMap<&str, HashSet<String>> = BTreeMap::new();
    // A pool task's output is under `pool`, its logs and transcript under the worker whose
    // settings its runner had: both folders are looked in.
    for t in tasks {
        for folder in [t.runs_on(), t.worker.as_str()] {
            by_folder
                .entry(folder)
                .or_default()
                .insert(format!("task_{}", t.id));
        }
    }
    let mut removed = 0;
    for (name, stems) in by_folder {
        for dir in [
            config.output_dir(name),
            config.task_log_dir(name),
            config.transcript_dir(name),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let file = entry.file_name();
                let Some(file) = file.to_str() else { continue };
                // task_<id>.txt, .json, .log, .log.1, ...: the stem is what precedes the first dot.
                let stem = file.split('.').next().unwrap_or(file);
                if stems.contains(stem) && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
    }
    removed
}

/// Who is told of a change: the daemon's runners.
pub type Bell<'a> = &'a (dyn Fn(Ring) + Send + Sync);

/// Refuses an empty prompt and one over `max_prompt_size`.
pub fn check_prompt(prompt: &str, cap: u64) -> Result<()> {
    if prompt.len() as u64 > cap {
        return Err(Error::Usage(format!(
            "the prompt is over max_prompt_size ({cap} bytes); raise [defaults] max_prompt_size or shorten it"
        )));
    }
    if prompt.trim().is_empty() {
        return Err(Error::Usage("the prompt is empty".into()));
    }
    Ok(())
}

/// A queued task, as `submit --json` reports it.
pub fn submitted(id: i64, plan: &Plan) -> Value {
    json!({
        "id": id,
        "worker": plan.worker,
        "pool": plan.routing.pool,
        "class": plan.routing.class,
        "route_reason": plan.routing.route_reason,
    })
}

/// Routes and queues `prompt` and rings its runner. Returns the task's id and [`submitted`].
pub async fn submit(
    config: &Config,
    store: &dyn Store,
    bell: Bell<'_>,
    prompt: String,
    ask: &Ask<'_>,
    source: &str,
) -> Result<(i64, Value)> {
    check_prompt(&prompt, config.max_prompt_size)?;
    let plan = crate::route::plan(config, &prompt, ask)?;
    let id = store
        .submit(&plan.task(prompt, source, None, now_ms()).await?)
        .await?
        .id();
    bell(Ring::Worker(plan.runs_on().to_string()));
    Ok((id, submitted(id, &plan)))
}

/// Cancels a task; a running one's runner is told to look at its claim, and stops its agent.
pub async fn cancel(store: &dyn Store, bell: Bell<'_>, id: i64) -> Result<Value> {
    let was = store.cancel(id, now_ms()).await?;
    if was == TaskState::Running
        && let Some(task) = store.get(id).await?
    {
        bell(Ring::Check(task.runs_on().to_string()));
    } else if let Some(task) = store.get(id).await?
        && let Some(rec) = &task.worktree
        && rec.stage == agentq_core::worktree::Stage::Active
    {
        // Waiting for a retry in its worktree: no runner will end it, so its change is recorded
        // now (a running one's runner does it when its agent has stopped).
        crate::worktree::conclude(store, &task, rec, false).await;
    }
    Ok(json!({ "id": id, "was": was, "state": TaskState::Cancelled }))
}

/// Queues an ended task again, attempts reset.
pub async fn retry(store: &dyn Store, bell: Bell<'_>, id: i64) -> Result<Value> {
    store.retry(id, now_ms()).await?;
    let task = store.get(id).await?;
    bell(match &task {
        Some(t) => Ring::Worker(t.runs_on().to_string()),
        None => Ring::Everyone,
    });
    Ok(json!({ "id": id, "state": TaskState::Queued }))
}

/// Pauses a worker (or `pool`) for `duration`, or until resumed.
pub async fn pause(
    config: &Config,
    store: &dyn Store,
    name: &str,
    duration: Option<Duration>,
    reason: &str,
) -> Result<Value> {
    let worker = config.resolve_queue(name)?;
    let now = now_ms();
    // "Until resumed" is a pause a century long.
    let until = now + duration.map_or(100 * 365 * 86_400_000, |d| d.as_millis() as i64);
    store.pause_worker(&worker.name, until, reason, now).await?;
    Ok(json!({ "worker": worker.name, "paused_until": until }))
}

/// Ends a worker's (or the pool's) pause.
pub async fn resume(
    config: &Config,
    store: &dyn Store,
    bell: Bell<'_>,
    name: &str,
    why: &str,
) -> Result<Value> {
    let worker = config.resolve_queue(name)?;
    let was = store.resume_worker(&worker.name, why, now_ms()).await?;
    // Everyone: the worker's tasks in the pool wait for it too.
    bell(Ring::Everyone);
    Ok(json!({ "worker": worker.name, "was_paused": was }))
}

/// Has a Claude worker's next task start a new conversation.
pub async fn reset_session(
    config: &Config,
    store: &dyn Store,
    name: &str,
    why: &str,
) -> Result<Value> {
    let worker = config.resolve_worker(Some(name))?;
    if worker.agent.kind() != "claude" {
        return Err(Error::Usage(format!(
            "worker {:?} runs agent = \"{}\", which keeps no conversation",
            worker.name,
            worker.agent.kind()
        )));
    }
    let had = store
        .reset_worker_session(&worker.name, why, now_ms())
        .await?;
    Ok(json!({ "worker": worker.name, "had_session": had }))
}

/// `agentq worker restart` (and `POST /api/workers/{name}/restart`): clears the worker's pause
/// or error and has its runner start its agent afresh (a long-lived process is replaced).
pub async fn restart(
    config: &Config,
    store: &dyn Store,
    bell: Bell<'_>,
    name: &str,
) -> Result<Value> {
    let worker = config.resolve_worker(Some(name))?;
    let cleared = store.restart_worker(&worker.name, now_ms()).await?;
    bell(Ring::Restart(worker.name.clone()));
    Ok(json!({
        "worker": worker.name,
        "was_errored": cleared.as_ref().is_some_and(|p| p.errored()),
        "was_paused": cleared.as_ref().is_some_and(|p| !p.errored()),
        "was": cleared.as_ref().map(|p| p.reason.clone()),
    }))
}

/// How many of a running task's latest transcript entries `show` gives.
pub const LATEST_LINES: usize = 10;

/// Everything about one task, as `agentq show --json` prints it: the task, its events, its
/// attempts, where its agent log and transcript are, and, while it runs, how long it has been
/// running and its latest transcript entries.
pub async fn task_record(config: &Config, store: &dyn Store, id: i64) -> Result<(Task, Value)> {
    let task = store.get(id).await?.ok_or(Error::NoSuchTask { id })?;
    let events = store.events_of(id).await?;
    let attempts = store.attempts_of(id).await?;
    let agent_log = config
        .task_log_dir(&task.worker)
        .join(format!("task_{id}.log"));
    let agent_log = agent_log.exists().then_some(agent_log);
    let mut record = serde_json::to_value(TaskRecord {
        task: &task,
        events: &events,
    })
    .expect("our types serialise");
    let mut history = serde_json::to_value(&attempts).expect("our types serialise");
    // What each attempt cost, from the event that recorded its end.
    for a in history.as_array_mut().into_iter().flatten() {
        let ended = events.iter().rev().find(|e| {
            matches!(e.kind.as_str(), "task_finished" | "task_retrying")
                && e.data.as_ref().and_then(|d| d.get("attempt")) == a.get("attempt")
        });
        if let Some(data) = ended.and_then(|e| e.data.as_ref()) {
            for key in ["cost_usd", "input_tokens", "output_tokens"] {
                a[key] = data.get(key).cloned().unwrap_or(Value::Null);
            }
        }
    }
    record["attempt_history"] = history;
    record["agent_log"] = serde_json::to_value(&agent_log).expect("paths serialise");
    let transcript = crate::watch::path_of(config, &task);
    let exists = agentq_core::transcript::exists(&transcript);
    record["transcript"] =
        serde_json::to_value(exists.then_some(&transcript)).expect("paths serialise");
    if task.state == agentq_core::domain::TaskState::Running {
        if let Some(started) = task.started_at {
            record["elapsed_ms"] = json!((now_ms() - started).max(0));
        }
        let latest = if exists {
            agentq_core::transcript::read_last(&transcript, LATEST_LINES).unwrap_or_default()
        } else {
            Vec::new()
        };
        record["transcript_latest"] = serde_json::to_value(latest).expect("entries serialise");
    }
    Ok((task, record))
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkerStatus {
    pub name: String,
    pub agent: String,
    /// `exec` (a process per task) or `persistent` (one long-lived process); `-` when the config
    /// no longer names the worker.
    pub mode: String,
    /// idle, running, stopped (no daemon), paused until ..., errored: ..., or not in config
    /// (tasks of a worker the config no longer defines)
    pub state: String,
    pub task: Option<i64>,
    pub queued: u64,
    pub running: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub dead: u64,
    pub cancelled: u64,
    pub paused_until: Option<Millis>,
    pub pause_reason: Option<String>,
    /// The pause is an errored state (`agentq worker restart` clears it).
    #[serde(skip)]
    pub errored: bool,
    pub cost_today_usd: f64,
    pub tokens_today: i64,
    pub cost_total_usd: f64,
    /// Tokens its attempts read and wrote since the queue began, as its agent reported them.
    pub input_tokens_total: i64,
    pub output_tokens_total: i64,
    pub session_id: Option<String>,
    /// What the current conversation has cost so far.
    pub session_cost_usd: Option<f64>,
    /// The worker's agent process (the leader of its group) while one runs: its long-lived
    /// process, or the process of the task it runs. `None` for the pool (see its `pids`).
    pub pid: Option<i32>,
    /// Resident memory of its agents' process groups now, MiB.
    pub memory_mb: Option<f64>,
    /// The most any of its attempts held since the daemon started (or now, if more), MiB.
    pub memory_peak_mb: Option<f64>,
    /// Restarts of its long-lived agent since the daemon started; `None` with no daemon.
    pub restarts: Option<u64>,
    /// Up since (ms since the epoch): the daemon's start, or the worker's last restart.
    pub up_since: Option<Millis>,
    /// The host id of the daemon that runs it: on a shared store, its lease holder's; else this
    /// project's daemon's, while it runs. `None`: no daemon runs it now.
    pub host: Option<String>,
}

impl WorkerStatus {
    /// The state as one word: `running`, `idle`, `paused`, `errored`, `stopped` or `unknown`.
    pub fn phase(&self) -> &'static str {
        match self.state.as_str() {
            s if s.starts_with("running") => "running",
            s if s.starts_with("idle") => "idle",
            s if s.starts_with("stopped") => "stopped",
            _ if self.errored => "errored",
            s if s.starts_with("paused") => "paused",
            _ => "unknown",
        }
    }
}

/// The daemon, its workers, the pool and the queue at a glance (`agentq status`).
#[derive(Clone, Debug)]
pub struct Status {
    pub pid: Option<i32>,
    /// When the daemon started (ms since the epoch, to the second).
    pub started_at: Option<Millis>,
    /// The daemon's own resident memory, MiB.
    pub memory_mb: Option<f64>,
    pub workers: Vec<WorkerStatus>,
    /// Pool tasks running now.
    pub pool_tasks: Vec<i64>,
    /// Their agents' processes.
    pub pool_pids: Vec<i32>,
    pub pool: PoolCounts,
    pub max_workers: u32,
    pub config: std::path::PathBuf,
    /// The host id of this project's daemon (running or not: the one it runs, or would run, as).
    pub host: String,
    /// On a shared store, every daemon using it (empty on SQLite: the one daemon is `pid`).
    pub hosts: Vec<agentq_store::HostRow>,
    /// A folder (`.agentq/`, `.output/`) whose file system has less free than the daemon needs:
    /// while it does, a daemon claims no task.
    pub disk_full: Option<crate::space::Low>,
}

impl Status {
    pub fn total(&self, f: fn(&WorkerStatus) -> u64) -> u64 {
        self.workers.iter().map(f).sum()
    }

    pub fn totals(&self) -> Value {
        json!({
            "queued": self.total(|w| w.queued),
            "running": self.total(|w| w.running),
            "succeeded": self.total(|w| w.succeeded),
            "failed": self.total(|w| w.failed),
            "dead": self.total(|w| w.dead),
            "cancelled": self.total(|w| w.cancelled),
        })
    }

    /// What `agentq status --json` prints.
    pub fn to_json(&self) -> Value {
        json!({
            "daemon": {
                "running": self.pid.is_some(),
                "pid": self.pid,
                "started_at": self.started_at,
                "memory_mb": self.memory_mb,
                "host": self.host,
            },
            "hosts": self.hosts,
            "disk_full": self.disk_full,
            "config": self.config,
            "workers": self.workers,
            "pool": {
                "max_workers": self.max_workers,
                "running": self.pool_tasks.len(),
                "queued": self.pool.queued,
                "tasks": self.pool_tasks,
                "pids": self.pool_pids,
            },
            "classes": { "long": self.pool.long, "short": self.pool.short },
            "totals": self.totals(),
        })
    }
}

/// The host id of the daemon `pid` running this project: the daemon itself knows it (its config
/// has it); a client reads the lock file. (Never the daemon through the file: closing any of its
/// descriptors of the lock file would drop its lock.)
pub fn daemon_host(config: &Config, pid: Option<i32>) -> String {
    if pid == Some(std::process::id() as i32) {
        return config.daemon.host.clone();
    }
    agentq_core::state::holder_host(&config.state_dir())
        .unwrap_or_else(|| config.daemon.host.clone())
}

/// Reads the status. `pid` is the daemon's, if one runs: the CLI asks the state lock, the daemon
/// knows its own (a process cannot see its own record lock with `F_GETLK`).
pub async fn status(config: &Config, store: &dyn Store, pid: Option<i32>) -> Result<Status> {
    let r = Readings::read(config, store, pid).await?;
    let workers: Vec<WorkerStatus> = r
        .rows(config)
        .into_iter()
        .map(|(name, agent)| r.worker_status(config, name, agent))
        .collect();
    let pool_pids = r.pool_pids();
    Ok(Status {
        pid,
        started_at: r.started_at,
        memory_mb: pid
            .and_then(|p| agentq_agents::procs::rss(p as u32))
            .map(mib),
        workers,
        pool_tasks: r.pool_tasks,
        pool_pids,
        pool: r.pool_counts,
        max_workers: config.pool.max_workers,
        config: config.path.clone(),
        host: r.host,
        hosts: r.hosts,
        disk_full: crate::space::look(
            &config.root,
            crate::space::needed(config.daemon.min_free_space),
        ),
    })
}

/// Everything [`status`] reads of the store and of the machine, read once before any row is
/// built, so the rows agree with each other.
struct Readings {
    /// The daemon's, if one runs.
    pid: Option<i32>,
    shared: bool,
    sessions: Vec<(String, Option<agentq_core::domain::SessionState>)>,
    counts: Vec<agentq_store::WorkerCounts>,
    pauses: Vec<agentq_store::Pause>,
    /// Since local midnight.
    spend: Vec<agentq_store::Spend>,
    /// What was counted since the queue began (all-time tokens and cost), which removing
    /// history leaves alone.
    counters: agentq_store::counters::Counters,
    running: Vec<agentq_store::TaskSummary>,
    pool_counts: PoolCounts,
    /// The host id of this project's daemon.
    host: String,
    /// On a shared store, the daemons on it and the worker leases they hold.
    hosts: Vec<agentq_store::HostRow>,
    leases: Vec<agentq_store::WorkerLease>,
    started_at: Option<Millis>,
    /// What the daemon's current run did, by worker.
    activity: Vec<agentq_store::Activity>,
    groups: Vec<agentq_agents::procs::LiveGroup>,
    /// Pool tasks running now.
    pool_tasks: Vec<i64>,
}

impl Readings {
    async fn read(config: &Config, store: &dyn Store, pid: Option<i32>) -> Result<Readings> {
        let mut sessions: Vec<(String, Option<agentq_core::domain::SessionState>)> = Vec::new();
        for w in &config.workers {
            sessions.push((w.name.clone(), store.worker_session(&w.name).await?));
        }
        let counts = store.counts().await?;
        let now = now_ms();
        let pauses = store.pauses(now).await?;
        let (today, _) = agentq_agents::local_day(chrono::Local::now());
        let spend = store.spend_since(today).await?;
        let counters = store.counters().await?;
        let running = store
            .list(&TaskFilter {
                state: Some(TaskState::Running),
                ..Default::default()
            })
            .await?;
        let pool_counts = store.pool_counts().await?;
        let host = daemon_host(config, pid);
        let (hosts, leases) = if store.shared() {
            (store.hosts(now).await?, store.worker_leases(now).await?)
        } else {
            (Vec::new(), Vec::new())
        };
        // What this run of the daemon did, and the processes it runs now (from its book of process
        // groups: the CLI sees them from outside, as `ps` would).
        let started_at = pid.and_then(agentq_agents::procs::started_at).map(epoch_ms);
        let activity = match (pid, started_at) {
            (Some(pid), Some(t)) => {
                let owner = crate::daemon::owner_prefix(&host, pid);
                store.activity_since(t, &owner).await?
            }
            _ => Vec::new(),
        };
        let groups = agentq_agents::procs::live_groups(&config.state_dir());
        let pool_tasks: Vec<i64> = running.iter().filter(|t| t.pool).map(|t| t.id).collect();
        Ok(Readings {
            pid,
            shared: store.shared(),
            sessions,
            counts,
            pauses,
            spend,
            counters,
            running,
            pool_counts,
            host,
            hosts,
            leases,
            started_at,
            activity,
            groups,
            pool_tasks,
        })
    }

    /// The rows, as (worker, agent): the config's workers, then the workers it no longer names
    /// that still have tasks.
    fn rows(&self, config: &Config) -> Vec<(String, String)> {
        // The pool's row: when agentq.toml has a [pool], or tasks were submitted to it.
        let mut names: Vec<(String, String)> = config
            .workers
            .iter()
            .chain(config.pool.defined.then_some(&config.pool.worker))
            .map(|w| (w.name.clone(), w.agent.kind().to_string()))
            .collect();
        for c in &self.counts {
            if !names.iter().any(|(n, _)| n == &c.worker) {
                let agent = config
                    .settings_of(&c.worker)
                    .map_or("-", |w| w.agent.kind());
                names.push((c.worker.clone(), agent.into()));
            }
        }
        names
    }

    /// One worker's row (or the pool's).
    fn worker_status(&self, config: &Config, name: String, agent: String) -> WorkerStatus {
        let c = self
            .counts
            .iter()
            .find(|c| c.worker == name)
            .cloned()
            .unwrap_or_default();
        // The worker's own agent; its tasks in the pool show in the pool's line.
        let task = self
            .running
            .iter()
            .find(|t| t.worker == name && !t.pool)
            .map(|t| t.id);
        let pause = self.pauses.iter().find(|p| p.worker == name);
        let spent = self.spend.iter().find(|s| s.worker == name);
        let ever = &self.counters;
        let ever = (
            ever.cost_of(&name),
            ever.tokens_of(&name, "input") as i64,
            ever.tokens_of(&name, "output") as i64,
        );
        let session = self
            .sessions
            .iter()
            .find(|(w, _)| *w == name)
            .and_then(|(_, s)| s.as_ref());
        let own = self.groups_of(&name, task);
        let memory_mb = (!own.is_empty()).then(|| mib(own.iter().map(|g| g.rss).sum::<u64>()));
        let done = self.activity.iter().find(|a| a.worker == name);
        let memory_peak_mb = match (done.and_then(|a| a.memory_peak_mb), memory_mb) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let configured = config.settings_of(&name).is_some();
        let held_by = self.held_by(config, &name, configured);
        // What this daemon saw of a worker another host runs says nothing of it.
        let elsewhere = self.shared && name != POOL && held_by.as_deref() != Some(&*self.host);
        let run_start = self.started_at.filter(|_| configured && !elsewhere);
        WorkerStatus {
            mode: mode(config, &name).to_string(),
            pid: own.first().filter(|_| name != POOL).map(|g| g.agent),
            memory_mb,
            memory_peak_mb,
            restarts: run_start.map(|_| done.map_or(0, |a| a.restarts)),
            up_since: run_start.map(|t| done.and_then(|a| a.last_restart).map_or(t, |r| r.max(t))),
            state: self.state(config, &name, held_by.is_some(), task, pause),
            host: held_by,
            name,
            agent,
            task,
            paused_until: pause.map(|p| p.until),
            pause_reason: pause.map(|p| p.reason.clone()),
            errored: pause.is_some_and(|p| p.errored()),
            cost_today_usd: spent.map_or(0.0, |s| s.cost_usd),
            cost_total_usd: ever.0,
            input_tokens_total: ever.1,
            output_tokens_total: ever.2,
            session_id: session.map(|s| s.id.clone()),
            session_cost_usd: session.map(|s| s.cost_usd),
            tokens_today: spent.map_or(0, |s| s.input_tokens + s.output_tokens),
            queued: c.queued,
            running: c.running,
            succeeded: c.succeeded,
            failed: c.failed,
            dead: c.dead,
            cancelled: c.cancelled,
        }
    }

    /// A worker's process groups, its long-lived agent first, then the process of the task it
    /// runs; the pool's are those of its running tasks.
    fn groups_of(&self, name: &str, task: Option<i64>) -> Vec<&agentq_agents::procs::LiveGroup> {
        let mut own: Vec<&agentq_agents::procs::LiveGroup> = self
            .groups
            .iter()
            .filter(|g| match (name == POOL, g.record.task) {
                (true, t) => t.is_some_and(|t| self.pool_tasks.contains(&t)),
                (false, None) => g.record.worker == name,
                (false, t) => g.record.worker == name && t == task,
            })
            .collect();
        own.sort_by_key(|g| g.record.task.is_some()); // the long-lived process first
        own
    }

    /// The host id of the daemon that runs the worker now, if one does.
    fn held_by(&self, config: &Config, name: &str, configured: bool) -> Option<String> {
        let runs_here = config
            .workers
            .iter()
            .find(|w| w.name == name)
            .is_none_or(|w| crate::daemon::runs_here(w, &self.host));
        match self.shared {
            true if name == POOL => None,
            true => self
                .leases
                .iter()
                .find(|l| l.worker == name)
                .map(|l| l.host.clone()),
            false => self
                .pid
                .filter(|_| runs_here && configured)
                .map(|_| self.host.clone()),
        }
    }

    /// A worker's state in words (see [`WorkerStatus::state`]).
    fn state(
        &self,
        config: &Config,
        name: &str,
        held: bool,
        task: Option<i64>,
        pause: Option<&agentq_store::Pause>,
    ) -> String {
        // Whether a daemon runs this worker: on a shared store, the one holding its lease,
        // wherever it is (the pool: any daemon on the store); else this project's daemon.
        let alive = match self.shared {
            true if name == POOL => self.pid.is_some() || !self.hosts.is_empty(),
            true => held,
            false => self.pid.is_some(),
        };
        let state = match (alive.then_some(()), config.settings_of(name), task, pause) {
            (_, None, _, _) => "not in config".to_string(),
            (None, _, _, _) => "stopped".to_string(),
            (Some(_), _, _, None) if name == POOL => {
                if self.running.iter().any(|t| t.pool) {
                    "running".to_string()
                } else {
                    "idle".to_string()
                }
            }
            (Some(_), _, Some(_), _) => "running".to_string(),
            (_, _, _, Some(p)) if p.errored() => format!("errored: {}", p.reason),
            (Some(_), _, None, Some(p)) => {
                format!("paused until {}", short_time(p.until))
            }
            (Some(_), _, None, None) => "idle".to_string(),
        };
        // Its tasks running in the pool are counted in its row; say so beside its state.
        let in_pool = self
            .running
            .iter()
            .filter(|t| t.worker == name && t.pool && name != POOL)
            .count();
        match in_pool {
            0 => state,
            n => format!("{state}, {n} in the pool"),
        }
    }

    /// The process groups of the pool's running tasks.
    fn pool_pids(&self) -> Vec<i32> {
        // Occupancy from the same read as the running list, so the two agree.
        let mut pool_pids: Vec<i32> = self
            .groups
            .iter()
            .filter(|g| g.record.task.is_some_and(|t| self.pool_tasks.contains(&t)))
            .map(|g| g.agent)
            .collect();
        pool_pids.sort_unstable();
        pool_pids
    }
}

/// `exec` (a process per task), `persistent` (one long-lived process), or `-` for a worker the
/// config no longer names.
fn mode(config: &Config, name: &str) -> &'static str {
    match config.settings_of(name).map(|w| w.agent.driver()) {
        Some(d) if d.long_lived().is_some() => "persistent",
        Some(_) => "exec",
        None => "-",
    }
}

/// Bytes as MiB, to a tenth.
fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

fn epoch_ms(t: std::time::SystemTime) -> Millis {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// The latest events of the log, and how far they were read (for [`follow_events`]).
pub struct Recent {
    /// The latest `limit` events matching the filter, oldest first.
    pub events: Vec<LogEvent>,
    /// The last event read, to find the place again; `None` when read from the store.
    last: Option<LogEvent>,
    /// How many matching events were read in all.
    read: usize,
    /// Read from the store: the same events may reach the log a moment later (a writer appends
    /// them after its commit), so they are skipped by what they are, not by position.
    from_store: std::collections::HashSet<String>,
}

/// The latest `limit` events (0: all) of the event log, or of the store when there is no log
/// file (yet, or a database from before there was one).
pub async fn recent_events(
    config: &Config,
    store: &dyn Store,
    filter: &LogFilter,
    limit: u32,
) -> Result<Recent> {
    let path = config.event_log_path();
    let from_store = agentq_core::logfile::generations(&path).is_empty();
    if from_store {
        let events = store
            .events(&agentq_store::EventFilter {
                task_id: filter.task,
                worker: filter.worker.clone(),
                kind: filter.kind.clone(),
                limit: None,
            })
            .await?;
        let mut list: Vec<LogEvent> = events.iter().map(agentq_store::Event::to_log).collect();
        let seen_in_store = list.iter().map(event_key).collect();
        let read = list.len();
        if limit > 0 {
            list.drain(..list.len().saturating_sub(limit as usize));
        }
        return Ok(Recent {
            read,
            events: list,
            last: None,
            from_store: seen_in_store,
        });
    }
    // Only the latest `limit` are kept while the whole log is read: memory as the limit, not as
    // the log (a long log used to be held whole, several times its size).
    let mut latest = std::collections::VecDeque::new();
    let (mut read, mut last) = (0, None);
    agentq_core::logfile::for_each_event(&path, filter, |e| {
        read += 1;
        if limit > 0 && latest.len() == limit as usize {
            latest.pop_front();
        }
        latest.push_back(e);
    })
    .map_err(|e| Error::io("reading the event log", &path, e))?;
    if let Some(e) = latest.back() {
        last = Some(e.clone());
    }
    Ok(Recent {
        events: latest.into(),
        last,
        read,
        from_store: Default::default(),
    })
}

fn event_key(e: &LogEvent) -> String {
    serde_json::to_string(e).expect("events serialise")
}

/// Calls `emit` with every event appended to the log after `recent` was read, until `stop`.
pub async fn follow_events(
    config: &Config,
    filter: &LogFilter,
    recent: Recent,
    stop: tokio_util::sync::CancellationToken,
    mut emit: impl FnMut(LogEvent),
) -> Result<()> {
    let path = config.event_log_path();
    // Read again from the start and skip what was read: following from the end would lose what
    // was appended between the read and the follow's start. Skipping goes up to the last event
    // read (found again by its content), or as many events as were read if it is gone (the log
    // rotated it away meanwhile).
    let Recent {
        mut last,
        read: mut seen,
        from_store,
        ..
    } = recent;
    if last.is_none() {
        seen = 0;
    }
    agentq_core::logfile::follow(&path, filter, true, Duration::from_millis(200), stop, |e| {
        match &last {
            Some(l) if seen > 0 => {
                seen -= 1;
                if e == *l {
                    last = None;
                }
            }
            _ if !from_store.is_empty() && from_store.contains(&event_key(&e)) => {}
            _ => emit(e),
        }
    })
    .await
    .map_err(|e| Error::io("following the event log", &path, e))
}

/// A time of day for a table, with the date when it is not today.
fn short_time(ms: Millis) -> String {
    use chrono::TimeZone;
    match chrono::Local.timestamp_millis_opt(ms).single() {
        Some(t) if t.date_naive() == chrono::Local::now().date_naive() => {
            t.format("%H:%M").to_string()
        }
        Some(_) if ms - now_ms() > 50 * 365 * 86_400_000 => "resumed by hand".to_string(),
        Some(t) => t.format("%b %d %H:%M").to_string(),
        None => format!("{ms} ms after the epoch"),
    }
}
