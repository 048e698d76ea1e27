//! The embedded store: one SQLite file, `.agentq/agentq.db`.
//!
//! WAL journal, so readers (`agentq status` while the daemon works) never block the writer; every
//! write in a `BEGIN IMMEDIATE` transaction, so two processes that both mean to write take the
//! write lock up front instead of failing mid-transaction; a busy timeout, so fifty `agentq submit`
//! processes at once queue up on that lock instead of failing.
//!
//! Two levels of durability, chosen per write ([`Sync`]). What a person or a client was told is
//! done — a submit, a cancel, a pause — commits with `synchronous = FULL`: when the call returns it
//! is on disk. The daemon's own bookkeeping — claims, lease renewals, results, releases, recovery
//! — commits with `NORMAL`: in WAL mode that is just as atomic and survives a crash of the process,
//! and only a power cut can take back the last of them, which the queue already tolerates, since it
//! promises at least once: a lost claim leaves the task queued, a lost result leaves it running
//! under a lease that runs out, and either way it runs again. (The next FULL commit flushes the WAL
//! with everything before it.) This is what lets a trivial task cost the daemon one fsync instead
//! of five.
//!
//! rusqlite is blocking, so each call runs on tokio's blocking pool holding the one connection.
//! Migrations are numbered SQL files applied in order and tracked in `PRAGMA user_version`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};

use super::{
    Claim, EndHook, Event, EventFilter, Fence, Finish, Millis, NewEvent, NewTask, Store, Submitted,
    Task, TaskFilter, TaskSummary, WorkerCounts, WorktreeRow, common, counters,
};
use agentq_core::domain::TaskState;
use agentq_core::error::{Error, Result};
use agentq_core::logfile::EventLog;
use agentq_core::worktree::Worktree;
use common::{AttemptEnding, TASK_COLUMNS};
use counters::Bump;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/0001_init.sql"),
    include_str!("../migrations/sqlite/0002_claude.sql"),
    include_str!("../migrations/sqlite/0003_supervision.sql"),
    include_str!("../migrations/sqlite/0004_pool.sql"),
    include_str!("../migrations/sqlite/0005_event_kinds.sql"),
    include_str!("../migrations/sqlite/0006_worker_activity.sql"),
    include_str!("../migrations/sqlite/0007_hosts.sql"),
    include_str!("../migrations/sqlite/0008_agents.sql"),
    include_str!("../migrations/sqlite/0009_retention.sql"),
    include_str!("../migrations/sqlite/0010_counters.sql"),
    include_str!("../migrations/sqlite/0011_worktrees.sql"),
];

/// The schema version this binary writes (`PRAGMA user_version` after every migration).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// How durable a write must be when it returns (see the module's notes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sync {
    /// On disk: what a caller was told is done (`synchronous = FULL`).
    Full,
    /// Atomic and safe from a crash of the process; a power cut may take it back, and the task
    /// then runs again (`synchronous = NORMAL`). Only for the daemon's claims, leases and results.
    Lazy,
}

/// The connection, and the `synchronous` level it is set to now.
struct Conn {
    conn: Connection,
    sync: Sync,
}

#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Conn>>,
    path: PathBuf,
    /// Where committed events are also appended, for people and `agentq events -f`.
    log: Option<Arc<EventLog>>,
}

thread_local! {
    /// The events of the transaction running on this thread, appended to the event log once it
    /// commits (a transaction runs whole on one blocking-pool thread).
    static PENDING: std::cell::RefCell<Vec<Event>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What a store operation can fail with inside its transaction: SQL, or a rule of the queue.
enum OpError {
    Sql(rusqlite::Error),
    Rule(Error),
}

impl From<rusqlite::Error> for OpError {
    fn from(e: rusqlite::Error) -> Self {
        OpError::Sql(e)
    }
}

type Op<T> = std::result::Result<T, OpError>;

/// Statements through the connection's cache of prepared statements. Parsing and planning a
/// statement cost more than running one of the queue's (a claim spent most of its time in
/// `sqlite3_prepare`), and the same few dozen run over and over.
trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// More than the queue's distinct statements, so none is parsed twice.
const STATEMENT_CACHE: usize = 128;

/// Each statement is parsed and planned once per connection. Two things stand in the way: no
/// cache (hence [`Cached`]), and, with the STAT4 planner the bundled SQLite is built with, a
/// re-prepare at every step of any statement that compares a bound value with an indexed column
/// (`worker = ?`), in case the value deserves another plan. The query planner stability guarantee
/// turns that off: the queue's statements have one right plan whatever the values.
fn plan_once(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        let db = |about: &'static str| move |source| database_error(about, path, source);
        let mut conn = Connection::open(path).map_err(db("opening"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(db("setting busy timeout"))?;
        // Space removed rows leave is given back a little at a time (`reclaim`): set on a new,
        // empty file only (setting it on an existing one writes its header, every time); an
        // older file is converted by the first `reclaim`.
        let pages: i64 = conn
            .row("PRAGMA page_count", [], |r| r.get(0))
            .map_err(db("reading the database"))?;
        if pages == 0 {
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
                .map_err(db("setting auto_vacuum"))?;
        }
        enable_wal(&conn).map_err(db("enabling WAL"))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db("setting synchronous"))?;
        migrate(&mut conn, path)?;
        plan_once(&conn).map_err(db("configuring the connection"))?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(Conn {
                conn,
                sync: Sync::Full,
            })),
            path: path.to_path_buf(),
            log: None,
        })
    }

    /// Also appends every event this store commits to `log`.
    pub fn with_event_log(mut self, log: Arc<EventLog>) -> SqliteStore {
        self.log = Some(log);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `op` on the blocking pool with the connection.
    async fn call<T, F>(&self, about: &'static str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Op<T> + Send + 'static,
    {
        self.call_with(about, move |c| op(&mut c.conn)).await
    }

    async fn call_with<T, F>(&self, about: &'static str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Conn) -> Op<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves the connection usable: SQLite rolls back an
            // unfinished transaction when it is dropped.
            let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            op(&mut guard).map_err(|e| match e {
                OpError::Sql(source) => database_error(about, &path, source),
                OpError::Rule(e) => e,
            })
        })
        .await?
    }

    /// Runs `op` in a `BEGIN IMMEDIATE` transaction, committed (on disk) if it returns `Ok`.
    async fn write<T, F>(&self, about: &'static str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction) -> Op<T> + Send + 'static,
    {
        self.write_with(Sync::Full, about, op).await
    }

    /// [`write`](Self::write) for the daemon's own bookkeeping: committed atomically, but a power
    /// cut may take it back (see the module's notes on why the queue tolerates that).
    async fn write_lazy<T, F>(&self, about: &'static str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction) -> Op<T> + Send + 'static,
    {
        self.write_with(Sync::Lazy, about, op).await
    }

    async fn write_with<T, F>(&self, sync: Sync, about: &'static str, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction) -> Op<T> + Send + 'static,
    {
        let log = self.log.clone();
        self.call_with(about, move |c| {
            if c.sync != sync {
                let level = match sync {
                    Sync::Full => "FULL",
                    Sync::Lazy => "NORMAL",
                };
                c.conn.pragma_update(None, "synchronous", level)?;
                c.sync = sync;
            }
            let conn = &mut c.conn;
            PENDING.with_borrow_mut(Vec::clear);
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = op(&tx)?;
            tx.commit()?;
            let committed = PENDING.with_borrow_mut(std::mem::take);
            if let Some(log) = log {
                for e in &committed {
                    if let Err(err) = log.append(&e.to_log()) {
                        tracing::warn!("cannot append to the event log: {err}");
                        break;
                    }
                }
            }
            Ok(out)
        })
        .await
    }
}

/// A database error as [`Error::Database`], or [`Error::DatabaseDamaged`] when SQLite says the
/// file is not a database or is corrupt: the daemon refuses such a file with how to recover,
/// rather than go on (or have it replaced by a new, empty one). SQLITE_FULL is
/// [`Error::StorageFull`]: nothing was written, and the daemon waits for room.
fn database_error(about: &'static str, path: &Path, source: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(e, _) = &source
        && matches!(
            e.code,
            rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
        )
    {
        return Error::DatabaseDamaged {
            path: path.to_path_buf(),
            detail: format!("{about}: {source}"),
        };
    }
    if let rusqlite::Error::SqliteFailure(e, _) = &source
        && e.code == rusqlite::ErrorCode::DiskFull
    {
        return Error::StorageFull {
            about,
            path: path.to_path_buf(),
            detail: source.to_string(),
        };
    }
    Error::Database {
        about,
        path: path.to_path_buf(),
        source,
    }
}

/// Adds the events `ids` (a query selecting event ids) to what `/metrics` keeps of removed ones.
fn fold_events<P: rusqlite::Params>(
    tx: &Connection,
    ids: &str,
    params: P,
) -> rusqlite::Result<usize> {
    tx.exec(
        &format!(
            "INSERT INTO pruned_events (kind, worker, n) \
             SELECT kind, coalesce(worker, ''), count(*) FROM events WHERE id IN ({ids}) \
             GROUP BY 1, 2 ON CONFLICT (kind, worker) DO UPDATE SET n = n + excluded.n"
        ),
        params,
    )
}

/// Adds `bumps` to the counters, in the caller's transaction.
fn bump(tx: &Connection, bumps: &[Bump]) -> rusqlite::Result<()> {
    for b in bumps {
        tx.exec(
            "INSERT INTO counters (name, labels, value) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name, labels) DO UPDATE SET value = value + excluded.value",
            params![b.name, b.labels, b.by],
        )?;
    }
    Ok(())
}

/// The counters, read whole (a few rows a worker).
fn read_counters(conn: &Connection) -> rusqlite::Result<counters::Counters> {
    let rows = conn
        .prepare_cached("SELECT name, labels, value FROM counters")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(counters::Counters::read(rows))
}

/// Switches a database to WAL. On a new file this needs the database to itself, and SQLite answers
/// "locked" at once, without its busy handler, while another process is still creating the schema:
/// so the switch is retried for as long as the busy timeout would have waited.
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let started = std::time::Instant::now();
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let db = |about: &'static str| {
        move |source| Error::Database {
            about,
            path: path.to_path_buf(),
            source,
        }
    };
    let known = SCHEMA_VERSION;
    // Every command opens the store: read the version without a lock, and take the write lock only
    // when a migration is due (then check again under it, as another process may have done it).
    let current: i64 = conn
        .row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db("reading schema version"))?;
    if current == known {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(db("starting migration"))?;
    let version: i64 = tx
        .row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(db("reading schema version"))?;
    if version > known {
        return Err(Error::SchemaTooNew {
            database: path.display().to_string(),
            found: version,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql).map_err(db("applying migration"))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(db("recording schema version"))?;
    }
    tx.commit().map_err(db("committing migration"))
}

fn task_from_row(r: &Row) -> rusqlite::Result<Task> {
    let id = r.get(0)?;
    Ok(Task {
        id,
        worker: r.get(1)?,
        prompt: r.get(2)?,
        priority: r.get(3)?,
        state: state_from(r, 4)?,
        attempts: r.get::<_, i64>(5)? as u32,
        max_attempts: r.get::<_, i64>(6)? as u32,
        timeout_ms: r.get::<_, Option<i64>>(7)?.map(|t| t as u64),
        not_before: r.get(8)?,
        created_at: r.get(9)?,
        updated_at: r.get(10)?,
        started_at: r.get(11)?,
        finished_at: r.get(12)?,
        owner: r.get(13)?,
        lease_expires: r.get(14)?,
        exit_code: r.get(15)?,
        output: r.get(16)?,
        error: r.get(17)?,
        stderr_tail: r.get(18)?,
        duration_ms: r.get(19)?,
        source: r.get(20)?,
        interruptions: r.get::<_, i64>(21)? as u32,
        usage: super::Usage {
            session_id: r.get(22)?,
            cost_usd: r.get(23)?,
            input_tokens: r.get(24)?,
            output_tokens: r.get(25)?,
            num_turns: r.get(26)?,
        },
        cause: r.get(27)?,
        memory_peak_mb: r.get(28)?,
        routing: super::Routing {
            pool: r.get(29)?,
            class: r.get(30)?,
            complexity: r.get(31)?,
            route_reason: r.get(32)?,
            max_memory: r.get::<_, Option<i64>>(33)?.map(|m| m as u64),
        },
        worktree: common::read_worktree(id, r.get::<_, Option<String>>(34)?.as_deref()),
    })
}

/// A `worker_pauses` row selected as `worker, until, reason, kind`.
fn pause_from_row(r: &Row) -> rusqlite::Result<super::Pause> {
    Ok(super::Pause {
        worker: r.get(0)?,
        until: r.get(1)?,
        reason: r.get(2)?,
        kind: r.get(3)?,
    })
}

fn state_from(r: &Row, idx: usize) -> rusqlite::Result<TaskState> {
    let text: String = r.get(idx)?;
    text.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, e.into())
    })
}

/// Records an event, to be appended to the event log once committed.
fn record(tx: &rusqlite::Transaction, e: NewEvent) -> rusqlite::Result<()> {
    let text = e.data.as_ref().map(|d| d.to_string());
    tx.exec(
        "INSERT INTO events (ts, task_id, worker, kind, message, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![e.now, e.task_id, e.worker, e.kind, e.message, text],
    )?;
    let id = tx.last_insert_rowid();
    PENDING.with_borrow_mut(|p| p.push(e.recorded(id)));
    Ok(())
}

/// Records how a running task's attempt ended, in the attempts table, and says whether it did:
/// with a `claim` token, only while the task is still running under it (so this is also the
/// fence check). Call it while the task still names its owner, before the update that ends the
/// claim.
fn attempt_row(
    tx: &rusqlite::Transaction,
    task_id: i64,
    claim: Option<&str>,
    e: &AttemptEnding,
    now: Millis,
) -> rusqlite::Result<bool> {
    let n = tx.exec(
        "INSERT INTO attempts (task_id, attempt, worker, owner, started_at, ended_at, outcome, cause, \
         reason, exit_code, duration_ms, memory_peak_mb) \
         SELECT id, attempts, worker, owner, started_at, ?2, ?3, ?4, ?5, ?6, ?7, ?8 FROM tasks \
         WHERE id = ?1 AND state = 'running' AND (?9 IS NULL OR claim_token = ?9)",
        params![
            task_id,
            now,
            e.outcome,
            e.cause,
            e.reason,
            e.exit_code,
            e.duration_ms,
            e.memory_peak_mb,
            claim
        ],
    )?;
    Ok(n == 1)
}

/// Claims the task the subquery `pick` chooses, if `only_if` holds, in one statement (so a limit in
/// `only_if` is checked where the claim is made). Both see `?1` owner, `?2` token, `?3` lease
/// expiry, `?4` now, and `extra` from `?5` on. Counts the attempt and records `task_started`, in
/// the caller's transaction.
#[allow(clippy::too_many_arguments)]
fn claim_one(
    tx: &rusqlite::Transaction,
    pick: &str,
    only_if: &str,
    extra: &[&dyn rusqlite::ToSql],
    owner: &str,
    expires: Millis,
    now: Millis,
    place: &str,
) -> rusqlite::Result<Option<Claim>> {
    let token = common::new_token();
    let mut values: Vec<&dyn rusqlite::ToSql> = vec![&owner, &token, &expires, &now];
    values.extend_from_slice(extra);
    let task = tx
        .row(
            &format!(
                "UPDATE tasks SET state = 'running', attempts = attempts + 1, owner = ?1, \
                 claim_token = ?2, lease_expires = ?3, started_at = ?4, updated_at = ?4 \
                 WHERE id = ({pick}) AND {only_if} RETURNING {TASK_COLUMNS}"
            ),
            values.as_slice(),
            task_from_row,
        )
        .optional()?;
    let Some(task) = task else { return Ok(None) };
    record(tx, common::started(&task, place, owner, now))?;
    Ok(Some(Claim { task, token }))
}

fn state_of(tx: &rusqlite::Transaction, id: i64) -> Op<(TaskState, String)> {
    let row = tx
        .row("SELECT state, worker FROM tasks WHERE id = ?1", [id], |r| {
            Ok((state_from(r, 0)?, r.get::<_, String>(1)?))
        })
        .optional()?;
    row.ok_or(OpError::Rule(Error::NoSuchTask { id }))
}

/// Returns running tasks matching `condition` to the queue, with their interrupted attempt given
/// back, or `dead` (see [`common::Recovery`]).
fn recover_where(
    tx: &rusqlite::Transaction,
    condition: &str,
    arg: &dyn rusqlite::ToSql,
    now: Millis,
    why: &str,
) -> Op<Vec<i64>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT id, worker, owner, interruptions + 1, max_attempts FROM tasks \
         WHERE state = 'running' AND {condition}"
    ))?;
    let recoveries = stmt
        .query_map([arg], |r| {
            let owner: Option<String> = r.get(2)?;
            Ok(common::Recovery::new(
                r.get(0)?,
                r.get(1)?,
                owner.as_deref(),
                r.get(3)?,
                r.get(4)?,
                why,
                now,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut ids = Vec::with_capacity(recoveries.len());
    for r in recoveries {
        attempt_row(tx, r.id, None, &AttemptEnding::interrupted(why), now)?;
        if let Some(error) = &r.dead {
            tx.exec(
                "UPDATE tasks SET state = 'dead', interruptions = ?2, error = ?3, owner = NULL, \
                 claim_token = NULL, lease_expires = NULL, finished_at = ?4, updated_at = ?4 WHERE id = ?1",
                params![r.id, r.interruptions, error, now],
            )?;
            let ended = counters::ended(&r.worker, TaskState::Dead, counters::INTERRUPTED);
            bump(tx, &ended)?;
        } else {
            tx.exec(
                "UPDATE tasks SET state = 'queued', attempts = max(attempts - 1, 0), interruptions = ?3, \
                 owner = NULL, claim_token = NULL, lease_expires = NULL, not_before = ?2, updated_at = ?2 \
                 WHERE id = ?1",
                params![r.id, now, r.interruptions],
            )?;
        }
        record(tx, r.event)?;
        ids.push(r.id);
    }
    Ok(ids)
}

/// The event log, filtered: the latest `limit` events, oldest first.
fn query_events(conn: &Connection, f: &EventFilter) -> rusqlite::Result<Vec<Event>> {
    // Only the filters given are in the statement: SQLite plans `?1 IS NULL OR task_id = ?1` as a
    // scan of every event, which made recording each result cost as much as the whole history.
    let mut sql = String::from(
        "SELECT id, ts, task_id, worker, kind, message, data FROM (SELECT * FROM events WHERE 1",
    );
    for (set, term) in [
        (f.task_id.is_some(), " AND task_id = ?1"),
        (f.worker.is_some(), " AND worker = ?2"),
        (f.kind.is_some(), " AND kind = ?3"),
    ] {
        if set {
            sql.push_str(term);
        }
    }
    sql.push_str(" ORDER BY id DESC LIMIT ?4) ORDER BY id");
    let mut stmt = conn.prepare_cached(&sql)?;
    let limit = f.limit.map(i64::from).unwrap_or(-1);
    // Numbered parameters: a statement has as many as its highest number, used or not.
    let rows = stmt.query_map(params![f.task_id, f.worker, f.kind, limit], |r| {
        Ok(Event {
            id: r.get(0)?,
            ts: r.get(1)?,
            task_id: r.get(2)?,
            worker: r.get(3)?,
            kind: r.get(4)?,
            message: r.get(5)?,
            data: r
                .get::<_, Option<String>>(6)?
                .and_then(|d| serde_json::from_str(&d).ok()),
        })
    })?;
    rows.collect()
}

/// Inserts one task as `queued` with its `task_queued` event, in the caller's transaction; or
/// finds the task that already holds its dedup key.
fn insert_task(tx: &rusqlite::Transaction, t: &NewTask) -> Op<Submitted> {
    if let Some(key) = &t.dedup_key {
        let existing: Option<i64> = tx
            .row("SELECT id FROM tasks WHERE dedup_key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(id) = existing {
            return Ok(Submitted::Duplicate(id));
        }
    }
    tx.exec(
        "INSERT INTO tasks (worker, prompt, priority, state, attempts, max_attempts, timeout_ms, \
         not_before, created_at, updated_at, source, dedup_key, pool, class, complexity, \
         route_reason, max_memory, worktree, worktree_held) \
         VALUES (?1, ?2, ?3, 'queued', 0, ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
        params![
            t.worker,
            t.prompt,
            t.priority,
            t.max_attempts as i64,
            t.timeout_ms.map(|v| v as i64),
            t.not_before,
            t.now,
            t.source,
            t.dedup_key,
            t.routing.pool,
            t.routing.class,
            t.routing.complexity,
            t.routing.route_reason,
            t.routing.max_memory.map(|m| m as i64),
            t.worktree.as_ref().map(common::worktree_json),
            t.worktree.as_ref().is_some_and(Worktree::holds_the_task)
        ],
    )?;
    let id = tx.last_insert_rowid();
    record(tx, common::queued(t, id))?;
    Ok(Submitted::New(id))
}

#[async_trait]
impl Store for SqliteStore {
    /// One daemon has the file to itself, behind the state folder's lock.
    fn shared(&self) -> bool {
        false
    }

    fn rings(
        &self,
        _stop: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::sync::mpsc::UnboundedReceiver<agentq_core::wake::Ring>> {
        None
    }

    async fn submit(&self, t: &NewTask) -> Result<Submitted> {
        let t = t.clone();
        self.write("submitting a task", move |tx| insert_task(tx, &t))
            .await
    }

    async fn submit_many(&self, tasks: Vec<NewTask>) -> Result<Vec<Submitted>> {
        self.write("submitting tasks", move |tx| {
            tasks.iter().map(|t| insert_task(tx, t)).collect()
        })
        .await
    }

    async fn claim(
        &self,
        worker: &str,
        owner: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<Option<Claim>> {
        let (worker, owner) = (worker.to_string(), owner.to_string());
        let expires = now + lease.as_millis() as Millis;
        self.write_lazy("claiming a task", move |tx| {
            // One task at a time per worker, none while it is paused. The worker's own index, by
            // name: left to itself SQLite picks `tasks_pool`, and walks every worker's queue.
            let pick = "SELECT id FROM tasks INDEXED BY tasks_claim WHERE worker = ?5 AND state = 'queued' \
                        AND pool = 0 AND not_before <= ?4 ORDER BY priority DESC, id ASC LIMIT 1";
            let only_if = "NOT EXISTS (SELECT 1 FROM tasks INDEXED BY tasks_claim \
                                       WHERE worker = ?5 AND state = 'running' AND pool = 0) \
                           AND NOT EXISTS (SELECT 1 FROM worker_pauses WHERE worker = ?5 AND until > ?4) \
                           AND NOT EXISTS (SELECT 1 FROM worker_leases WHERE worker = ?5 AND owner <> ?1)";
            Ok(claim_one(tx, pick, only_if, &[&worker], &owner, expires, now, "")?)
        })
        .await
    }

    async fn heartbeat(&self, fence: &Fence, now: Millis, lease: Duration) -> Result<bool> {
        let fence = fence.clone();
        let expires = now + lease.as_millis() as Millis;
        self.write_lazy("renewing a lease", move |tx| {
            let n = tx.exec(
                "UPDATE tasks SET lease_expires = ?3 WHERE id = ?1 AND claim_token = ?2 AND state = 'running'",
                params![fence.id, fence.token, expires],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn finish(&self, fence: &Fence, f: &Finish, on_end: Option<EndHook>) -> Result<bool> {
        let (fence, f) = (fence.clone(), f.clone());
        self.write_lazy("recording a result", move |tx| {
            let terminal = f.state.is_terminal();
            let ending = AttemptEnding::finished(&f);
            if !attempt_row(tx, fence.id, Some(&fence.token), &ending, f.now)? {
                return Ok(false);
            }
            let n = tx.exec(
                "UPDATE tasks SET state = ?3, not_before = coalesce(?4, not_before), exit_code = ?5, \
                 output = ?6, error = ?7, stderr_tail = ?8, duration_ms = ?9, \
                 finished_at = CASE WHEN ?10 THEN ?11 ELSE NULL END, owner = NULL, claim_token = NULL, \
                 lease_expires = NULL, updated_at = ?11, session_id = coalesce(?12, session_id), \
                 cost_usd = ?13, input_tokens = ?14, output_tokens = ?15, num_turns = ?16, \
                 cause = ?17, memory_peak_mb = ?18 \
                 WHERE id = ?1 AND claim_token = ?2 AND state = 'running'",
                params![
                    fence.id,
                    fence.token,
                    f.state.as_str(),
                    f.not_before,
                    f.exit_code,
                    f.output,
                    f.error,
                    f.stderr_tail,
                    f.duration_ms,
                    terminal,
                    f.now,
                    f.usage.session_id,
                    f.usage.cost_usd,
                    f.usage.input_tokens,
                    f.usage.output_tokens,
                    f.usage.num_turns,
                    f.cause,
                    f.memory_peak_mb
                ],
            )?;
            if n == 0 {
                return Ok(false);
            }
            // The wait for the first attempt: the attempts' rows keep its start.
            let (attempts, worker, waited): (i64, String, Option<i64>) = tx.row(
                "SELECT attempts, worker, (SELECT min(started_at) FROM attempts WHERE task_id = ?1) \
                 - created_at FROM tasks WHERE id = ?1",
                [fence.id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            record(tx, common::finished(&f, fence.id, &worker, attempts))?;
            bump(tx, &counters::finished(&f, &worker, waited))?;
            if let Some((cost_usd, input_tokens, output_tokens)) = common::usage_row(&f) {
                tx.exec(
                    "INSERT INTO usage_log (ts, worker, task_id, cost_usd, input_tokens, output_tokens) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![f.now, worker, fence.id, cost_usd, input_tokens, output_tokens],
                )?;
            }
            if let (true, Some(hook)) = (terminal, on_end) {
                let task = tx.row(
                    &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
                    [fence.id],
                    task_from_row,
                )?;
                let events = query_events(
                    tx,
                    &EventFilter {
                        task_id: Some(fence.id),
                        ..Default::default()
                    },
                )?;
                // A hook that fails undoes the result: the transaction is dropped, rolled back.
                hook(&task, &events).map_err(OpError::Rule)?;
            }
            Ok(true)
        })
        .await
    }

    async fn release(&self, fence: &Fence, reason: &str, now: Millis) -> Result<bool> {
        let (fence, reason) = (fence.clone(), reason.to_string());
        self.write_lazy("releasing a task", move |tx| {
            let ending = AttemptEnding::released(&reason);
            if !attempt_row(tx, fence.id, Some(&fence.token), &ending, now)? {
                return Ok(false);
            }
            let worker: Option<String> = tx
                .row(
                    "UPDATE tasks SET state = 'queued', attempts = max(attempts - 1, 0), owner = NULL, \
                     claim_token = NULL, lease_expires = NULL, updated_at = ?3 \
                     WHERE id = ?1 AND claim_token = ?2 AND state = 'running' RETURNING worker",
                    params![fence.id, fence.token, now],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(worker) = worker else { return Ok(false) };
            record(tx, common::released(fence.id, &worker, &reason, now))?;
            Ok(true)
        })
        .await
    }

    async fn recover_expired(&self, now: Millis) -> Result<Vec<i64>> {
        self.write_lazy("recovering expired leases", move |tx| {
            recover_where(tx, "lease_expires < ?1", &now, now, "lease expired")
        })
        .await
    }

    async fn recover_all_but(&self, owner: &str, now: Millis) -> Result<Vec<i64>> {
        let owner = owner.to_string();
        self.write_lazy("recovering tasks of a previous daemon", move |tx| {
            recover_where(
                tx,
                "coalesce(owner, '') <> ?1",
                &owner,
                now,
                "its daemon is gone",
            )
        })
        .await
    }

    async fn cancel(&self, id: i64, now: Millis) -> Result<TaskState> {
        self.write("cancelling a task", move |tx| {
            let (state, worker) = state_of(tx, id)?;
            common::may_cancel(id, state).map_err(OpError::Rule)?;
            // A running attempt ends here, not when its agent is stopped (that finish is fenced
            // out): its row says so, with how long it ran.
            if state == TaskState::Running {
                attempt_row(tx, id, None, &AttemptEnding::cancelled(), now)?;
                tx.exec(
                    "UPDATE attempts SET duration_ms = ended_at - started_at \
                     WHERE id = last_insert_rowid() AND started_at IS NOT NULL",
                    [],
                )?;
            }
            tx.exec(
                "UPDATE tasks SET state = 'cancelled', owner = NULL, claim_token = NULL, \
                 lease_expires = NULL, finished_at = ?2, updated_at = ?2, \
                 error = 'cancelled' WHERE id = ?1",
                params![id, now],
            )?;
            record(tx, common::cancelled(id, &worker, state, now))?;
            let ended = counters::ended(&worker, TaskState::Cancelled, counters::CANCELLED);
            bump(tx, &ended)?;
            Ok(state)
        })
        .await
    }

    async fn retry(&self, id: i64, now: Millis) -> Result<()> {
        self.write("retrying a task", move |tx| {
            let (state, worker) = state_of(tx, id)?;
            common::may_retry(id, state).map_err(OpError::Rule)?;
            tx.exec(
                "UPDATE tasks SET state = 'queued', attempts = 0, interruptions = 0, not_before = ?2, \
                 finished_at = NULL, exit_code = NULL, output = NULL, error = NULL, stderr_tail = NULL, \
                 duration_ms = NULL, cause = NULL, memory_peak_mb = NULL, updated_at = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            record(tx, common::retried(id, &worker, state, now))?;
            Ok(())
        })
        .await
    }

    async fn get(&self, id: i64) -> Result<Option<Task>> {
        self.call("reading a task", move |conn| {
            Ok(conn
                .row(
                    &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"),
                    [id],
                    task_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>> {
        let filter = filter.clone();
        self.call("listing tasks", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, worker, state, priority, attempts, max_attempts, created_at, finished_at, \
                 duration_ms, error, substr(prompt, 1, 400), pool, class FROM tasks \
                 WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR worker = ?2) \
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(
                params![
                    filter.state.map(|s| s.as_str()),
                    filter.worker,
                    filter.limit.map(i64::from).unwrap_or(-1)
                ],
                |r| {
                    let prompt: String = r.get(10)?;
                    Ok(TaskSummary {
                        id: r.get(0)?,
                        worker: r.get(1)?,
                        state: state_from(r, 2)?,
                        priority: r.get(3)?,
                        attempts: r.get::<_, i64>(4)? as u32,
                        max_attempts: r.get::<_, i64>(5)? as u32,
                        created_at: r.get(6)?,
                        finished_at: r.get(7)?,
                        duration_ms: r.get(8)?,
                        error: r.get(9)?,
                        prompt_preview: common::preview(&prompt),
                        pool: r.get(11)?,
                        class: r.get(12)?,
                    })
                },
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn events_of(&self, task_id: i64) -> Result<Vec<Event>> {
        self.events(&EventFilter {
            task_id: Some(task_id),
            ..Default::default()
        })
        .await
    }

    async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        let f = filter.clone();
        self.call("reading events", move |conn| Ok(query_events(conn, &f)?))
            .await
    }

    async fn record_event(&self, e: &NewEvent) -> Result<()> {
        let e = e.clone();
        self.write("recording an event", move |tx| Ok(record(tx, e)?))
            .await
    }

    async fn counts(&self) -> Result<Vec<WorkerCounts>> {
        self.call("counting tasks", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT worker, state, sum(n) FROM task_counts WHERE n > 0 \
                 GROUP BY worker, state ORDER BY worker",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    state_from(r, 1)?,
                    r.get::<_, i64>(2)? as u64,
                ))
            })?;
            Ok(common::fold_counts(
                rows.collect::<rusqlite::Result<Vec<_>>>()?,
            ))
        })
        .await
    }

    async fn worker_session(
        &self,
        worker: &str,
    ) -> Result<Option<agentq_core::domain::SessionState>> {
        let worker = worker.to_string();
        self.call("reading a worker's session", move |conn| {
            Ok(conn
                .row(
                    "SELECT session_id, cwd, tasks, input_tokens, cost_usd, agent, output_tokens FROM worker_sessions WHERE worker = ?1",
                    [worker],
                    |r| {
                        Ok(agentq_core::domain::SessionState {
                            id: r.get(0)?,
                            cwd: r.get(1)?,
                            tasks: r.get::<_, i64>(2)? as u32,
                            input_tokens: r.get::<_, i64>(3)? as u64,
                            cost_usd: r.get(4)?,
                            agent: r.get(5)?,
                            output_tokens: r.get::<_, i64>(6)? as u64,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    async fn save_worker_session(
        &self,
        worker: &str,
        session: &agentq_core::domain::SessionState,
        now: Millis,
    ) -> Result<()> {
        let (worker, s) = (worker.to_string(), session.clone());
        self.write("saving a worker's session", move |tx| {
            tx.exec(
                "INSERT INTO worker_sessions (worker, session_id, cwd, tasks, input_tokens, cost_usd, started_at, updated_at, agent, output_tokens) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?7, ?6, ?6, ?8, ?9) \
                 ON CONFLICT (worker) DO UPDATE SET \
                   started_at = CASE WHEN session_id = excluded.session_id THEN started_at ELSE excluded.started_at END, \
                   session_id = excluded.session_id, cwd = excluded.cwd, tasks = excluded.tasks, \
                   input_tokens = excluded.input_tokens, cost_usd = excluded.cost_usd, updated_at = excluded.updated_at, \
                   agent = excluded.agent, output_tokens = excluded.output_tokens",
                params![worker, s.id, s.cwd, s.tasks as i64, s.input_tokens as i64, now, s.cost_usd, s.agent, s.output_tokens as i64],
            )?;
            Ok(())
        })
        .await
    }

    async fn update_worker_session(
        &self,
        worker: &str,
        joined: &str,
        session: &agentq_core::domain::SessionState,
        now: Millis,
    ) -> Result<bool> {
        let (worker, joined, s) = (worker.to_string(), joined.to_string(), session.clone());
        self.write("updating a worker's session", move |tx| {
            let n = tx.exec(
                "UPDATE worker_sessions SET session_id = ?3, cwd = ?4, tasks = ?5, input_tokens = ?6, \
                 cost_usd = ?7, updated_at = ?8, agent = ?9, output_tokens = ?10 WHERE worker = ?1 AND session_id = ?2",
                params![worker, joined, s.id, s.cwd, s.tasks as i64, s.input_tokens as i64, s.cost_usd, now, s.agent, s.output_tokens as i64],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn reset_worker_session(&self, worker: &str, why: &str, now: Millis) -> Result<bool> {
        let (worker, why) = (worker.to_string(), why.to_string());
        self.write("resetting a worker's session", move |tx| {
            let old: Option<String> = tx
                .row(
                    "DELETE FROM worker_sessions WHERE worker = ?1 RETURNING session_id",
                    [&worker],
                    |r| r.get(0),
                )
                .optional()?;
            record(
                tx,
                common::session_reset(&worker, &why, old.as_deref(), now),
            )?;
            Ok(old.is_some())
        })
        .await
    }

    async fn pause_worker(
        &self,
        worker: &str,
        until: Millis,
        reason: &str,
        now: Millis,
    ) -> Result<()> {
        let (worker, reason) = (worker.to_string(), reason.to_string());
        self.write("pausing a worker", move |tx| {
            tx.exec(
                "INSERT INTO worker_pauses (worker, until, reason, since) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (worker) DO UPDATE SET \
                   reason = CASE WHEN excluded.until >= until THEN excluded.reason ELSE reason END, \
                   since = CASE WHEN excluded.until >= until THEN excluded.since ELSE since END, \
                   until = max(until, excluded.until)",
                params![worker, until, reason, now],
            )?;
            record(tx, common::paused(&worker, &reason, until, now))?;
            Ok(())
        })
        .await
    }

    async fn resume_worker(&self, worker: &str, why: &str, now: Millis) -> Result<bool> {
        let (worker, why) = (worker.to_string(), why.to_string());
        self.write("resuming a worker", move |tx| {
            // Clears the worker's pause row, in force or expired; only one in force was a pause.
            let until: Option<Millis> = tx
                .row(
                    "DELETE FROM worker_pauses WHERE worker = ?1 AND kind = 'paused' RETURNING until",
                    [&worker],
                    |r| r.get(0),
                )
                .optional()?;
            let was_paused = until.is_some_and(|u| u > now);
            if was_paused {
                record(tx, common::resumed(&worker, &why, now))?;
            }
            Ok(was_paused)
        })
        .await
    }

    async fn pauses(&self, now: Millis) -> Result<Vec<super::Pause>> {
        self.call("reading pauses", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT worker, until, reason, kind FROM worker_pauses WHERE until > ?1 ORDER BY worker",
            )?;
            let rows = stmt.query_map([now], pause_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn error_worker(&self, worker: &str, reason: &str, now: Millis) -> Result<()> {
        let (worker, reason) = (worker.to_string(), reason.to_string());
        self.write("marking a worker errored", move |tx| {
            tx.exec(
                "INSERT INTO worker_pauses (worker, until, reason, since, kind) \
                 VALUES (?1, ?2, ?3, ?4, 'errored') ON CONFLICT (worker) DO UPDATE SET \
                 until = excluded.until, reason = excluded.reason, since = excluded.since, kind = 'errored'",
                params![worker, Millis::MAX, reason, now],
            )?;
            record(tx, common::errored(&worker, &reason, now))?;
            Ok(())
        })
        .await
    }

    async fn restart_worker(&self, worker: &str, now: Millis) -> Result<Option<super::Pause>> {
        let worker = worker.to_string();
        self.write("restarting a worker", move |tx| {
            let cleared = tx
                .row(
                    "DELETE FROM worker_pauses WHERE worker = ?1 AND until > ?2 RETURNING worker, until, reason, kind",
                    params![worker, now],
                    pause_from_row,
                )
                .optional()?;
            record(tx, common::restarted(&worker, cleared.as_ref(), now))?;
            Ok(cleared)
        })
        .await
    }

    async fn attempts_of(&self, task_id: i64) -> Result<Vec<super::AttemptRecord>> {
        self.call("reading attempts", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT attempt, owner, started_at, ended_at, outcome, cause, reason, exit_code, \
                 duration_ms, memory_peak_mb FROM attempts WHERE task_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([task_id], |r| {
                Ok(super::AttemptRecord {
                    attempt: r.get::<_, i64>(0)? as u32,
                    owner: r.get(1)?,
                    started_at: r.get(2)?,
                    ended_at: r.get(3)?,
                    outcome: r.get(4)?,
                    cause: r.get(5)?,
                    reason: r.get(6)?,
                    exit_code: r.get(7)?,
                    duration_ms: r.get(8)?,
                    memory_peak_mb: r.get(9)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn spend_since(&self, since: Millis) -> Result<Vec<super::Spend>> {
        self.call("adding up spend", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT worker, sum(cost_usd), sum(input_tokens), sum(output_tokens), count(*) FROM usage_log \
                 WHERE ts >= ?1 GROUP BY worker ORDER BY worker",
            )?;
            let rows = stmt.query_map([since], |r| {
                Ok(super::Spend {
                    worker: r.get(0)?,
                    cost_usd: r.get(1)?,
                    input_tokens: r.get(2)?,
                    output_tokens: r.get(3)?,
                    attempts: r.get(4)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn next_due(&self, worker: &str) -> Result<Option<Millis>> {
        let worker = worker.to_string();
        self.call("finding the next due task", move |conn| {
            Ok(conn.row(
                // A paused worker's work is due when the pause ends.
                // (No queued task: NULL, so an idle runner sleeps with no timer.)
                "SELECT CASE WHEN count(*) = 0 THEN NULL ELSE \
                   max(min(not_before), coalesce((SELECT until FROM worker_pauses WHERE worker = ?1), 0)) END \
                 FROM tasks WHERE worker = ?1 AND state = 'queued' AND pool = 0",
                [worker],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn claim_pool(
        &self,
        owner: &str,
        now: Millis,
        lease: Duration,
        max_running: u32,
        workers: &[String],
    ) -> Result<Option<Claim>> {
        let owner = owner.to_string();
        let workers = serde_json::to_string(workers).expect("names serialise");
        let expires = now + lease.as_millis() as Millis;
        self.write_lazy("claiming a pool task", move |tx| {
            // Any configured worker's, not paused, while fewer than `max_running` run.
            let pick = "SELECT id FROM tasks t WHERE pool = 1 AND state = 'queued' AND not_before <= ?4 \
                          AND worker IN (SELECT value FROM json_each(?6)) \
                          AND NOT EXISTS (SELECT 1 FROM worker_pauses p \
                                          WHERE p.worker = t.worker AND p.until > ?4) \
                        ORDER BY priority DESC, id ASC LIMIT 1";
            // Room is per daemon: this owner's running pool tasks.
            let only_if = "(SELECT count(*) FROM tasks WHERE pool = 1 AND state = 'running' AND owner = ?1) < ?5";
            let extra: [&dyn rusqlite::ToSql; 2] = [&max_running, &workers];
            Ok(claim_one(tx, pick, only_if, &extra, &owner, expires, now, " in the pool")?)
        })
        .await
    }

    async fn next_due_pool(&self, workers: &[String]) -> Result<Option<Millis>> {
        let workers = serde_json::to_string(workers).expect("names serialise");
        self.call("finding the pool's next due task", move |conn| {
            Ok(conn.row(
                "SELECT min(max(not_before, coalesce((SELECT until FROM worker_pauses p WHERE p.worker = t.worker), 0))) \
                 FROM tasks t WHERE pool = 1 AND state = 'queued' \
                   AND worker IN (SELECT value FROM json_each(?1))",
                [workers],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn pool_counts(&self) -> Result<super::PoolCounts> {
        self.call("counting the pool", move |conn| {
            Ok(conn.row(
                "SELECT coalesce(sum(n * (pool = 1 AND state = 'queued')), 0), \
                        coalesce(sum(n * (pool = 1 AND state = 'running')), 0), \
                        coalesce(sum(n * (class = 'long')), 0), coalesce(sum(n * (class = 'short')), 0) \
                 FROM task_counts",
                [],
                |r| {
                    Ok(super::PoolCounts {
                        queued: r.get::<_, i64>(0)? as u64,
                        running: r.get::<_, i64>(1)? as u64,
                        long: r.get::<_, i64>(2)? as u64,
                        short: r.get::<_, i64>(3)? as u64,
                    })
                },
            )?)
        })
        .await
    }

    async fn activity_since(&self, since: Millis, owner: &str) -> Result<Vec<super::Activity>> {
        let owner = owner.to_string();
        self.call("reading the workers' activity", move |conn| {
            // Restarts from the event log (by the kind index), memory peaks from the peaks the
            // attempts of this daemon run left (one row per worker).
            let mut restarts = conn.prepare_cached(
                "SELECT worker, sum(kind = 'agent_restarting'), max(ts) FROM events \
                 WHERE kind IN ('agent_restarting', 'worker_restarted') AND ts >= ?1 \
                   AND worker IS NOT NULL \
                 GROUP BY worker",
            )?;
            let activity: Vec<super::Activity> = restarts
                .query_map([since], |r| {
                    Ok(super::Activity {
                        worker: r.get(0)?,
                        restarts: r.get::<_, i64>(1)? as u64,
                        last_restart: r.get(2)?,
                        memory_peak_mb: None,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut peaks = conn.prepare_cached(
                "SELECT key, max(memory_peak_mb) FROM attempt_peaks \
                 WHERE substr(owner, 1, length(?1)) = ?1 GROUP BY key",
            )?;
            let peaks = peaks
                .query_map([owner], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(common::merge_activity(activity, peaks))
        })
        .await
    }

    async fn metrics(&self, kinds: &[&str]) -> Result<super::Metrics> {
        let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
        self.call("reading metrics", move |conn| {
            let mut by_class = conn.prepare_cached(
                "SELECT state, nullif(class, ''), sum(n) FROM task_counts WHERE n > 0 \
                 GROUP BY state, class ORDER BY state, class",
            )?;
            let tasks = by_class
                .query_map([], |r| {
                    Ok((state_from(r, 0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let marks = vec!["?"; kinds.len()].join(", ");
            let mut by_kind = conn.prepare_cached(&format!(
                "SELECT kind, worker, count(*) FROM events WHERE kind IN ({marks}) \
                 GROUP BY kind, worker ORDER BY kind, worker"
            ))?;
            let events = by_kind
                .query_map(rusqlite::params_from_iter(&kinds), |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut metrics = super::Metrics {
                tasks,
                counters: read_counters(conn)?,
                events,
            };
            // What removed tasks counted.
            let rows = |sql: &str| -> rusqlite::Result<Vec<(String, String, i64)>> {
                conn.prepare_cached(sql)?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            };
            let kept = common::PrunedRows {
                counts: rows("SELECT state, class, n FROM pruned_counts")?,
                events: rows("SELECT kind, worker, n FROM pruned_events")?,
            };
            common::add_pruned(&mut metrics, &kept, &kinds);
            Ok(metrics)
        })
        .await
    }

    async fn counters(&self) -> Result<counters::Counters> {
        self.call("reading counters", |conn| Ok(read_counters(conn)?))
            .await
    }

    async fn prune(&self, rule: &super::Prune, now: Millis) -> Result<Vec<super::Pruned>> {
        let rule = rule.clone();
        let select = move |tx: &Connection| -> Op<(Vec<super::Pruned>, Vec<common::Gone>)> {
            let states = common::prunable_states(&rule.states);
            let sql = format!(
                "SELECT id, worker, pool, state, class, coalesce(finished_at, updated_at) FROM ( \
                   SELECT *, row_number() OVER ( \
                       PARTITION BY CASE WHEN pool = 1 THEN 'pool' ELSE worker END \
                       ORDER BY id DESC) AS newest \
                     FROM tasks WHERE state IN ({states}) \
                      AND (?1 IS NULL OR CASE WHEN pool = 1 THEN 'pool' ELSE worker END = ?1)) \
                  WHERE worktree_held = 0 AND ((?2 IS NULL AND ?3 IS NULL) \
                     OR coalesce(finished_at, updated_at) < ?2 OR newest > ?3) \
                  ORDER BY id LIMIT ?4"
            );
            let mut stmt = tx.prepare(&sql)?;
            let rows = stmt
                .query_map(
                    params![
                        rule.worker,
                        rule.finished_before,
                        rule.keep_newest,
                        rule.limit
                    ],
                    |r| {
                        let state = state_from(r, 3)?;
                        Ok((
                            super::Pruned {
                                id: r.get(0)?,
                                worker: r.get(1)?,
                                pool: r.get(2)?,
                                state,
                                finished_at: r.get(5)?,
                            },
                            common::Gone {
                                state,
                                class: r.get(4)?,
                            },
                        ))
                    },
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows.into_iter().unzip())
        };
        if rule.dry_run {
            return self
                .call("listing the tasks to remove", move |conn| {
                    Ok(select(conn)?.0)
                })
                .await;
        }
        let (limit, finished_before) = (rule.limit, rule.finished_before);
        self.write("removing finished tasks", move |tx| {
            let (pruned, gone) = select(tx)?;
            let fold = common::fold(&gone);
            for ((state, class), n) in &fold.counts {
                tx.exec(
                    "INSERT INTO pruned_counts (state, class, n) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (state, class) DO UPDATE SET n = n + excluded.n",
                    params![state, class, n],
                )?;
            }
            let ids = format!(
                "[{}]",
                pruned
                    .iter()
                    .map(|p| p.id.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let of_tasks =
                "SELECT id FROM events WHERE task_id IN (SELECT value FROM json_each(?1))";
            fold_events(tx, of_tasks, params![ids])?;
            tx.exec(
                &format!("DELETE FROM events WHERE id IN ({of_tasks})"),
                [&ids],
            )?;
            tx.exec(
                "DELETE FROM attempts WHERE task_id IN (SELECT value FROM json_each(?1))",
                [&ids],
            )?;
            tx.exec(
                &format!(
                    "DELETE FROM tasks WHERE id IN (SELECT value FROM json_each(?1)) \
                     AND state IN ({}) AND worktree_held = 0",
                    common::prunable_states(&[])
                ),
                [&ids],
            )?;
            if let Some(cutoff) = finished_before {
                let taskless =
                    "SELECT id FROM events WHERE task_id IS NULL AND ts < ?1 ORDER BY id LIMIT ?2";
                fold_events(tx, taskless, params![cutoff, limit])?;
                tx.exec(
                    &format!("DELETE FROM events WHERE id IN ({taskless})"),
                    params![cutoff, limit],
                )?;
                tx.exec(
                    "DELETE FROM usage_log WHERE id IN \
                     (SELECT id FROM usage_log WHERE ts < ?1 ORDER BY id LIMIT ?2)",
                    params![common::ledger_cutoff(cutoff, now), limit],
                )?;
            }
            Ok(pruned)
        })
        .await
    }

    async fn set_worktree(
        &self,
        id: i64,
        worktree: &Worktree,
        event: Option<(&str, &str)>,
        now: Millis,
    ) -> Result<bool> {
        let wt = worktree.clone();
        let event = event.map(|(k, m)| (k.to_string(), m.to_string()));
        self.write("recording a task's worktree", move |tx| {
            let worker: Option<String> = tx
                .row(
                    "UPDATE tasks SET worktree = ?2, worktree_held = ?3, updated_at = ?4 \
                     WHERE id = ?1 RETURNING worker",
                    params![id, common::worktree_json(&wt), wt.holds_the_task(), now],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(worker) = worker else {
                return Ok(false);
            };
            if let Some((kind, message)) = &event {
                record(
                    tx,
                    common::worktree_event(id, &worker, (kind, message), &wt, now),
                )?;
            }
            Ok(true)
        })
        .await
    }

    async fn worktrees(&self) -> Result<Vec<WorktreeRow>> {
        self.call("listing worktrees", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, worker, state, pool, created_at, finished_at, worktree FROM tasks \
                 WHERE worktree IS NOT NULL ORDER BY id",
            )?;
            let rows = stmt
                .query_map([], |r| {
                    let id = r.get(0)?;
                    let text: Option<String> = r.get(6)?;
                    let Some(worktree) = common::read_worktree(id, text.as_deref()) else {
                        return Ok(None);
                    };
                    Ok(Some(WorktreeRow {
                        id,
                        worker: r.get(1)?,
                        state: state_from(r, 2)?,
                        pool: r.get(3)?,
                        created_at: r.get(4)?,
                        finished_at: r.get(5)?,
                        worktree,
                    }))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            // Records that do not read are left out (warned of).
            Ok(rows.into_iter().flatten().collect())
        })
        .await
    }

    async fn known_tasks(&self, ids: &[i64]) -> Result<Vec<i64>> {
        let ids = ids.to_vec();
        self.call("looking up tasks", move |conn| {
            let mut known = Vec::new();
            // A statement per 500: well within SQLite's limit on bound values.
            for chunk in ids.chunks(500) {
                let marks = vec!["?"; chunk.len()].join(",");
                let mut stmt =
                    conn.prepare(&format!("SELECT id FROM tasks WHERE id IN ({marks})"))?;
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(chunk), |r| r.get::<_, i64>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                known.extend(rows);
            }
            known.sort_unstable();
            Ok(known)
        })
        .await
    }

    async fn verify(&self) -> Result<()> {
        let path = self.path.clone();
        let problems: Vec<String> = self
            .call("checking the database", move |conn| {
                let mut stmt = conn.prepare("PRAGMA quick_check(3)")?;
                let rows = stmt
                    .query_map([], |r| r.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok(rows)
            })
            .await?;
        if problems.len() == 1 && problems[0] == "ok" {
            return Ok(());
        }
        Err(Error::DatabaseDamaged {
            path,
            detail: format!("quick_check: {}", problems.join("; ").replace('\n', " ")),
        })
    }

    async fn reclaim(&self) -> Result<Option<u64>> {
        self.call("giving back free space", move |conn| {
            let page: i64 = conn.row("PRAGMA page_size", [], |r| r.get(0))?;
            let free_before: i64 = conn.row("PRAGMA freelist_count", [], |r| r.get(0))?;
            let mode: i64 = conn.row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
            if mode != 2 {
                // A database made before retention: converted once, by a whole VACUUM.
                conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
                conn.execute_batch("VACUUM")?;
                return Ok(Some((free_before * page) as u64));
            }
            conn.execute_batch("PRAGMA incremental_vacuum")?;
            let free_after: i64 = conn.row("PRAGMA freelist_count", [], |r| r.get(0))?;
            Ok(Some(((free_before - free_after).max(0) * page) as u64))
        })
        .await
    }

    async fn next_lease_expiry(&self) -> Result<Option<Millis>> {
        self.call("finding the next lease expiry", move |conn| {
            Ok(conn.row(
                "SELECT min(lease_expires) FROM tasks WHERE state = 'running'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// One daemon per database (the state folder's lock), so the host id is always free: a row
    /// of another owner was a previous run's.
    async fn join_host(
        &self,
        host: &str,
        owner: &str,
        pid: i32,
        now: Millis,
        lease: Duration,
    ) -> Result<()> {
        let (host, owner) = (host.to_string(), owner.to_string());
        let expires = now + lease.as_millis() as Millis;
        self.write("announcing a daemon", move |tx| {
            tx.exec(
                "INSERT INTO hosts (host, owner, pid, started_at, expires) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (host) DO UPDATE SET owner = excluded.owner, pid = excluded.pid, \
                   started_at = excluded.started_at, expires = excluded.expires",
                params![host, owner, pid, now, expires],
            )?;
            Ok(())
        })
        .await
    }

    async fn leave_host(&self, host: &str, owner: &str, _now: Millis) -> Result<()> {
        let (host, owner) = (host.to_string(), owner.to_string());
        self.write("leaving", move |tx| {
            tx.exec(
                "UPDATE worker_leases SET expires = 0 WHERE owner = ?1",
                [&owner],
            )?;
            tx.exec(
                "DELETE FROM hosts WHERE host = ?1 AND owner = ?2",
                [&host, &owner],
            )?;
            Ok(())
        })
        .await
    }

    async fn take_worker_lease(
        &self,
        worker: &str,
        host: &str,
        owner: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<super::LeaseTake> {
        let (worker, host, owner) = (worker.to_string(), host.to_string(), owner.to_string());
        let expires = now + lease.as_millis() as Millis;
        self.write("taking a worker's lease", move |tx| {
            let held = tx
                .row(
                    "SELECT host, owner, expires FROM worker_leases WHERE worker = ?1",
                    [&worker],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let moved_from = match common::may_take_lease(held, &host, &owner, now) {
                Ok(from) => from,
                Err(busy) => return Ok(busy),
            };
            tx.exec(
                "INSERT INTO worker_leases (worker, host, owner, expires, taken_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (worker) DO UPDATE SET host = excluded.host, \
                   owner = excluded.owner, expires = excluded.expires, \
                   taken_at = CASE WHEN owner = excluded.owner THEN taken_at ELSE excluded.taken_at END",
                params![worker, host, owner, expires, now],
            )?;
            if let Some(from) = &moved_from {
                record(tx, common::moved(&worker, from, &host, now))?;
            }
            Ok(super::LeaseTake::Held { moved_from })
        })
        .await
    }

    async fn renew_leases(
        &self,
        host: &str,
        owner: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<Vec<String>> {
        let (host, owner) = (host.to_string(), owner.to_string());
        let expires = now + lease.as_millis() as Millis;
        self.write_lazy("renewing leases", move |tx| {
            tx.exec(
                "UPDATE hosts SET expires = ?3 WHERE host = ?1 AND owner = ?2",
                params![host, owner, expires],
            )?;
            let mut stmt = tx.prepare_cached(
                "UPDATE worker_leases SET expires = ?2 WHERE owner = ?1 AND expires > 0 \
                 RETURNING worker",
            )?;
            let mut held = stmt
                .query_map(params![owner, expires], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            held.sort();
            Ok(held)
        })
        .await
    }

    async fn release_worker_lease(&self, worker: &str, owner: &str, _now: Millis) -> Result<bool> {
        let (worker, owner) = (worker.to_string(), owner.to_string());
        self.write("releasing a worker's lease", move |tx| {
            let n = tx.exec(
                "UPDATE worker_leases SET expires = 0 WHERE worker = ?1 AND owner = ?2 AND expires > 0",
                [&worker, &owner],
            )?;
            Ok(n == 1)
        })
        .await
    }

    async fn worker_leases(&self, now: Millis) -> Result<Vec<super::WorkerLease>> {
        self.call("reading worker leases", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT worker, host, owner, expires - ?1 FROM worker_leases \
                 WHERE expires > ?1 ORDER BY worker",
            )?;
            let rows = stmt
                .query_map([now], |r| {
                    Ok(super::WorkerLease {
                        worker: r.get(0)?,
                        host: r.get(1)?,
                        owner: r.get(2)?,
                        expires_in_ms: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn hosts(&self, now: Millis) -> Result<Vec<super::HostRow>> {
        self.call("reading hosts", move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT host, owner, pid, started_at FROM hosts WHERE expires > ?1 ORDER BY host",
            )?;
            let rows = stmt
                .query_map([now], |r| {
                    Ok(super::HostRow {
                        host: r.get(0)?,
                        owner: r.get(1)?,
                        pid: r.get(2)?,
                        started_at: r.get(3)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    async fn recover_host(&self, host: &str, owner: &str, now: Millis) -> Result<Vec<i64>> {
        let owner = owner.to_string();
        let why = common::previous_run(host);
        self.write_lazy("recovering tasks of a previous run", move |tx| {
            // The host id is what comes before the first ':' of an owner id.
            recover_where(
                tx,
                "owner <> ?1 AND substr(owner, 1, instr(owner, ':')) = substr(?1, 1, instr(?1, ':'))",
                &owner,
                now,
                &why,
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::{self, CountRow, Fixture, Inspect, task};

    #[async_trait]
    impl Inspect for SqliteStore {
        async fn kept_and_counted(&self) -> (Vec<CountRow>, Vec<CountRow>) {
            self.call("comparing counts", |conn| {
                let rows = |sql: &str| -> rusqlite::Result<Vec<CountRow>> {
                    conn.prepare(sql)?
                        .query_map([], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                        })?
                        .collect()
                };
                Ok((
                    rows(
                        "SELECT worker, pool, state, class, n FROM task_counts WHERE n != 0 \
                          ORDER BY 1, 2, 3, 4",
                    )?,
                    rows(
                        "SELECT worker, pool, state, coalesce(class, ''), count(*) FROM tasks \
                          GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
                    )?,
                ))
            })
            .await
            .unwrap()
        }

        async fn write_worktree_text(&self, id: i64, text: &str) {
            let text = text.to_string();
            self.call("spoiling a record", move |conn| {
                conn.execute(
                    "UPDATE tasks SET worktree = ?2 WHERE id = ?1",
                    params![id, text],
                )?;
                Ok(())
            })
            .await
            .unwrap()
        }
    }

    /// A fresh database file in a folder of its own, with an event log beside it.
    #[test]
    fn a_statement_on_an_indexed_column_is_planned_once() {
        let c = Connection::open_in_memory().unwrap();
        plan_once(&c).unwrap();
        c.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, w TEXT, s TEXT); CREATE INDEX t_w ON t (w, s, id);",
        )
        .unwrap();
        let sql = "SELECT id FROM t WHERE w = ?1 AND s = 'q' ORDER BY id LIMIT 1";
        for w in ["a", "b", "a", "c"] {
            let _ = c.row(sql, [w], |r| r.get::<_, i64>(0)).optional().unwrap();
        }
        let st = c.prepare_cached(sql).unwrap();
        assert_eq!(st.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    async fn fixture() -> Option<Fixture> {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("events.jsonl");
        let log = Arc::new(EventLog::new(log_path.clone(), 1 << 20, 2));
        let store = SqliteStore::open(&dir.path().join("agentq.db"))
            .unwrap()
            .with_event_log(log);
        Some(Fixture {
            store: Arc::new(store),
            log_path,
            keep: Box::new(dir),
        })
    }

    suite::store_suite!(fixture);

    async fn counts_agree(s: &SqliteStore) {
        let (kept, counted) = s.kept_and_counted().await;
        assert_eq!(kept, counted);
    }

    #[tokio::test]
    async fn version_6_counts_the_tasks_and_peaks_a_version_5_database_already_has() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentq.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..5] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 5).unwrap();
            conn.execute_batch(
                "INSERT INTO tasks (worker, prompt, state, max_attempts, not_before, created_at, \
                   updated_at, source, pool, class) VALUES \
                   ('w', 'a', 'succeeded', 3, 0, 0, 0, 'cli', 0, NULL), \
                   ('w', 'b', 'succeeded', 3, 0, 0, 0, 'cli', 0, NULL), \
                   ('w', 'c', 'queued', 3, 0, 0, 0, 'cli', 1, 'long'); \
                 INSERT INTO attempts (task_id, attempt, worker, owner, started_at, ended_at, \
                   outcome, memory_peak_mb) VALUES \
                   (1, 1, 'w', 'h:7:aa', 0, 1, 'succeeded', 30.0), \
                   (2, 1, 'w', 'h:7:aa', 0, 1, 'succeeded', 50.0);",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        counts_agree(&s).await;
        let activity = s.activity_since(0, "h:7:").await.unwrap();
        assert_eq!(activity[0].memory_peak_mb, Some(50.0));
        assert_eq!(s.pool_counts().await.unwrap().queued, 1);
    }

    #[tokio::test]
    async fn version_10_counts_the_history_a_version_9_database_already_has() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentq.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..9] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 9).unwrap();
            conn.execute_batch(suite::HISTORY_BEFORE_COUNTERS).unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        suite::check_counters_seeded_from_history(&s).await;
    }

    #[tokio::test]
    async fn version_11_leaves_a_version_10_databases_tasks_without_worktrees_and_prunable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentq.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..10] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 10).unwrap();
            conn.execute_batch(
                "INSERT INTO tasks (worker, prompt, state, max_attempts, not_before, created_at, \
                   updated_at, finished_at, source) \
                   VALUES ('w', 'a', 'succeeded', 3, 0, 0, 5, 5, 'cli');",
            )
            .unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get(1).await.unwrap().unwrap().worktree, None);
        assert!(s.worktrees().await.unwrap().is_empty());
        let rule = crate::Prune {
            limit: 10,
            ..Default::default()
        };
        assert_eq!(s.prune(&rule, 10).await.unwrap().len(), 1);
    }

    /// SQLITE_FULL, as a full disk gives it (here a page limit does): the write is refused whole,
    /// as a full disk that names the database and what to do, and works again once there is room.
    #[tokio::test]
    async fn a_full_database_is_a_full_disk_that_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentq.db");
        let s = SqliteStore::open(&path).unwrap();
        s.submit(&task("w", "small", 0, 1)).await.unwrap();
        let limit = |pages: Option<i64>| {
            s.call("limiting the file", move |conn| {
                let now: i64 = conn.row("PRAGMA page_count", [], |r| r.get(0))?;
                conn.pragma_update(None, "max_page_count", pages.unwrap_or(now))?;
                Ok(())
            })
        };
        limit(None).await.unwrap();
        let e = s
            .submit(&task("w", &"x".repeat(1 << 20), 0, 2))
            .await
            .unwrap_err();
        assert!(e.is_storage_full(), "{e}");
        let text = e.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("the disk is full"), "{text}");
        assert!(text.contains("free space"), "{text}");
        assert_eq!(
            s.counts().await.unwrap()[0].queued,
            1,
            "nothing was written"
        );
        limit(Some(1 << 30)).await.unwrap();
        s.submit(&task("w", &"x".repeat(1 << 20), 0, 3))
            .await
            .unwrap();
        assert_eq!(s.counts().await.unwrap()[0].queued, 2);
    }

    #[tokio::test]
    async fn reopening_keeps_everything_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agentq.db");
        let id = {
            let s = SqliteStore::open(&path).unwrap();
            s.submit(&task("w", "kept", 0, 1)).await.unwrap().id()
        };
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.get(id).await.unwrap().unwrap().prompt, "kept");
        drop(s);
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            SqliteStore::open(&path),
            Err(Error::SchemaTooNew { found: 99, .. })
        ));
    }
}
