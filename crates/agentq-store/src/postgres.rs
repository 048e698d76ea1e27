//! The shared store: a PostgreSQL database that the daemons of several hosts can use at once.
//!
//! Same semantics as [`super::sqlite::SqliteStore`], tested by the same suite; what differs is how
//! concurrency is made safe without SQLite's single writer:
//!
//! - **Claims** are one `UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)
//!   RETURNING ...`: concurrent claimers skip each other's rows instead of queueing on them. The
//!   "one running task per worker" and "at most `max_running` in the pool" conditions are read in
//!   that same statement, after a transaction-scoped advisory lock on the worker (or the pool) so
//!   that two claims for the same worker cannot both see it idle; a partial unique index on
//!   running tasks per worker backs that up in the schema itself.
//! - **Fencing** is the claim token, as in SQLite; every write to a running task first locks its
//!   row (`FOR UPDATE`) with the token in the condition, so a finish racing a recovery sees the
//!   winner's row and writes nothing.
//! - **Lock order.** Every transaction takes its locks in one order: an advisory lock (a claim's
//!   worker or pool, or recovery), task rows in id order, then `task_counts` rows in key order,
//!   then `counters` rows in key order (by bytes: one statement per transaction adds to them all,
//!   [`counters::settle`]d, after everything else). The counts (`task_counts`, `attempt_peaks`)
//!   are kept by PL/pgSQL triggers that lock the two count rows of one task's change lesser key
//!   first; recovery, the only write that moves many tasks, locks all the count rows it will
//!   change, in key order, before it moves any. So no
//!   two transactions wait for each other in a cycle; one that still loses a deadlock or a
//!   serialisation race is run again from the start (at most [`TRIES`] times), with a warning.
//! - **Leases** are written and compared by the server's clock (`clock_timestamp()`), not the
//!   `now` a caller passes: hosts' clocks differ, and one running ahead would take back other
//!   hosts' live tasks. `now` still dates the changes (`started_at`, events), as in SQLite.
//! - **Wake-ups**: a change that makes work claimable (submit, retry, resume, restart, recovery)
//!   or voids a claim (cancel) sends `NOTIFY agentq, '<ring>'` in its transaction, delivered on
//!   commit; [`Store::rings`] listens on a connection of its own and passes them on to the daemon,
//!   so a task submitted on another host starts within milliseconds.
//! - **Migrations** are numbered files in `migrations/postgres/`, tracked one row each in
//!   `schema_version`, applied in one transaction under an advisory lock, so daemons starting
//!   together do not race; a database newer than the binary is refused.
//!
//! Listings are ordered by bytes (`COLLATE "C"`), as SQLite orders them, whatever the database's
//! own collation.
//!
//! Connections come from a small deadpool-postgres pool: it reconnects a connection that broke
//! (a restarted server) by itself and caches prepared statements per connection, which a
//! hand-rolled pool would have to write again. Connections are TCP, with TLS as libpq's `sslmode`
//! says (rustls: [`super::tls`], whose connector every connection here is made with: the pool's,
//! the listener's, the host id's and `doctor`'s), or a Unix socket. Connection strings are
//! [`DatabaseUrl`]s: no message here can show the password.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    GenericClient, Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime,
};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::tls::MakeRustlsConnect;
use super::url::DatabaseUrl;
use super::{
    Claim, EndHook, Event, EventFilter, Fence, Finish, Millis, NewEvent, NewTask, Store, Submitted,
    Task, TaskFilter, TaskSummary, WorkerCounts, WorktreeRow, common, counters,
};
use agentq_core::domain::TaskState;
use agentq_core::error::{Error, Result};
use agentq_core::logfile::EventLog;
use agentq_core::wake::Ring;
use agentq_core::worktree::Worktree;
use common::{AttemptEnding, TASK_COLUMNS};
use counters::Bump;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/0001_init.sql"),
    include_str!("../migrations/postgres/0002_hosts.sql"),
    include_str!("../migrations/postgres/0003_agents.sql"),
    include_str!("../migrations/postgres/0004_retention.sql"),
    include_str!("../migrations/postgres/0005_counters.sql"),
    include_str!("../migrations/postgres/0006_worktrees.sql"),
];

/// The schema version this binary writes (the highest row of `schema_version`).
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The channel every wake-up goes on; the payload is a [`Ring`], encoded.
pub const CHANNEL: &str = "agentq";

/// The advisory lock migrations hold ("agentq" in ASCII).
const MIGRATION_LOCK: i64 = 0x6167_656e_7471;

/// Connections per process: the daemon's runners, pool and lease keeper each hold one only for
/// the length of a statement or two, and a CLI command needs one.
const POOL_SIZE: usize = 8;

/// How often a transaction that lost a deadlock or serialisation race is tried in all.
const TRIES: u32 = 3;

/// The server's clock, in milliseconds since the epoch: what leases are written and compared
/// by. The hosts sharing a database each have their own clock, and a host whose clock ran ahead
/// would otherwise take back other hosts' live tasks (and one behind hand out leases already
/// run out); the server's is the one clock they all see.
const SERVER_NOW: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::bigint";

type PgError = tokio_postgres::Error;

/// Runs `$body` (of type `Op<T>`, with `$tx` the `&mut Tx`) in a transaction of `$store`, run
/// again from the start when it loses a deadlock or serialisation race. (A macro rather than a
/// function taking a closure: an async closure borrowing its argument cannot yet be proven `Send`
/// for every lifetime, which the trait's boxed futures need.)
///
/// `write!(store, about, lazy, |tx| ...)` commits without waiting for the server's WAL flush
/// (`synchronous_commit = off` for that transaction): for the daemon's own bookkeeping (claims,
/// lease renewals, results, releases, recovery), as SQLite's `write_lazy`. A server crash can take
/// back the last fraction of a second of them, which at-least-once already tolerates (a claim
/// lost is a task run again, a result lost a task run again); what a caller is told is done
/// (submit, cancel, retry, pauses, sessions) still waits for the flush.
macro_rules! write {
    ($store:expr, $about:expr, lazy, |$tx:ident| $body:block) => {
        write!(@run $store, $about, true, |$tx| $body)
    };
    ($store:expr, $about:expr, |$tx:ident| $body:block) => {
        write!(@run $store, $about, false, |$tx| $body)
    };
    (@run $store:expr, $about:expr, $lazy:expr, |$tx:ident| $body:block) => {{
        let (store, about): (&PgStore, &'static str) = ($store, $about);
        let mut client = store.client(about).await?;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut tx = store.begin(&mut client, about, $lazy).await?;
            let result = {
                let $tx = &mut tx;
                async { $body }.await
            };
            if let Some(out) = store.end(tx, result, tries, about).await {
                break out;
            }
        }
    }};
}

/// Runs `$body` (of type `Op<T>`, with `$c` a pooled connection) outside a transaction.
macro_rules! read {
    ($store:expr, $about:expr, |$c:ident| $body:block) => {{
        let (store, about): (&PgStore, &'static str) = ($store, $about);
        let client = store.client(about).await?;
        let result = {
            let $c = &client;
            async { $body }.await
        };
        result.map_err(|e| store.op_error(about, e))
    }};
}

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    url: DatabaseUrl,
    /// Where committed events are also appended, for people and `agentq events -f`.
    log: Option<Arc<EventLog>>,
    /// The connection holding this daemon's host id ([`Store::join_host`]): a session advisory
    /// lock, which the server drops with the connection, so a killed daemon's id is free again.
    host_lock: Arc<tokio::sync::Mutex<Option<HostLock>>>,
}

/// The connection holding a daemon's host id, and which server process serves it (its pid and
/// start, in microseconds), so that the session left on the server when the connection broke
/// only on this side (a network blip) is known for this daemon's own, not another's.
struct HostLock {
    client: tokio_postgres::Client,
    backend: (i32, i64),
}

/// The key of the session advisory lock on host id `$1`.
const HOST_LOCK_KEY: &str = "hashtextextended('agentq.host:' || $1, 0)";

/// What a store operation can fail with inside its transaction: SQL, or a rule of the queue.
enum OpError {
    Sql(PgError),
    Rule(Error),
}

impl From<PgError> for OpError {
    fn from(e: PgError) -> Self {
        OpError::Sql(e)
    }
}

type Op<T> = std::result::Result<T, OpError>;

/// A transaction in progress, with what it tells once committed: events for the event log, and
/// rings for the daemons listening.
struct Tx<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    events: Vec<Event>,
    rings: Vec<Ring>,
}

/// The error message of a PostgreSQL error, with the server's own words (tokio-postgres's
/// `Display` says only "db error"); a TLS failure in words, with what to do.
fn describe(e: &PgError) -> String {
    if let Some(why) = super::tls::explain(e) {
        return why;
    }
    match e.as_db_error() {
        Some(db) => db.to_string().replace('\n', "; "),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}

/// Whether running the transaction again may succeed.
fn retryable(e: &PgError) -> bool {
    matches!(
        e.code(),
        Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::T_R_SERIALIZATION_FAILURE)
    )
}

/// The connection settings of `url`, with agentq's defaults where it sets none.
///
/// A server that vanished without closing the connection (its host died, the network was cut)
/// is noticed within about a minute, not the system's two hours: TCP keepalives after 30 s of
/// silence, every 10 s, the connection given up after 3 unanswered; and data the server has not
/// acknowledged for 60 s (`tcp_user_timeout`) ends it too. [`SESSION_SETTINGS`] bound the other
/// side: what the server waits for of a vanished client.
fn pg_config(url: &DatabaseUrl) -> Result<tokio_postgres::Config> {
    let mut config = url.config().map_err(|e: PgError| Error::Postgres {
        about: "reading the connection string",
        url: url.redacted(),
        message: super::url::hide_password_in(&describe(&e), url.expose()),
    })?;
    // The server offers no TLS on a Unix socket, and libpq asks for none there.
    #[cfg(unix)]
    if !config.get_hosts().is_empty()
        && (config.get_hosts().iter()).all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)))
    {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    if config.get_application_name().is_none() {
        config.application_name("agentq");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    // (tokio-postgres does not say whether the idle time was given: its default is two hours.)
    if config.get_keepalives_idle() == tokio_postgres::Config::new().get_keepalives_idle() {
        config.keepalives_idle(Duration::from_secs(30));
    }
    if config.get_keepalives_interval().is_none() {
        config.keepalives_interval(Duration::from_secs(10));
    }
    if config.get_keepalives_retries().is_none() {
        config.keepalives_retries(3);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(Duration::from_secs(60));
    }
    Ok(config)
}

/// The TLS connector for `url`'s settings ([`super::tls`]): it reads the certificate files
/// named there, so a failure here names the file and what to do.
fn tls(url: &DatabaseUrl) -> Result<MakeRustlsConnect> {
    super::tls::connector(url.tls()).map_err(|message| Error::Postgres {
        about: "setting up TLS",
        url: url.redacted(),
        message,
    })
}

/// What each session sets on the server, unless the connection string's `options`, the role,
/// the database or the server's configuration already set it (a setting whose source is not
/// `default`), so that no client can hold what others wait for without end:
///
/// - `idle_in_transaction_session_timeout` 60 s: a session whose client stopped in the middle of
///   a transaction (a crashed or frozen daemon, a host that vanished) is ended, and its locks
///   (a worker's or the pool's claim lock, task and count rows) freed, after a minute rather
///   than never. agentq's transactions never wait on their client for more than the moment
///   between two statements (a result's output files are written inside one).
/// - `lock_timeout` 30 s: agentq's transactions hold their locks for milliseconds; a statement
///   that waits half a minute for one fails with a clear error (the runner tries again) rather
///   than hanging its runner. Migrations wait for each other without this limit.
/// - `tcp_keepalives_idle` 30 s, `tcp_keepalives_interval` 10 s, `tcp_keepalives_count` 3 and
///   `tcp_user_timeout` 60 s: the server notices a client whose host vanished within about a
///   minute, as the client notices the server (see [`pg_config`]). (Servers before
///   PostgreSQL 12 have no `tcp_user_timeout`; it is left out there.)
const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("idle_in_transaction_session_timeout", "60s"),
    ("lock_timeout", "30s"),
    ("tcp_keepalives_idle", "30s"),
    ("tcp_keepalives_interval", "10s"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "60s"),
];

/// Applies [`SESSION_SETTINGS`] to a new connection's session (one round trip). They last as
/// long as the connection: the pool recycles connections without resetting them.
async fn set_session(client: &tokio_postgres::Client) -> std::result::Result<(), PgError> {
    let names: Vec<&str> = SESSION_SETTINGS.iter().map(|(n, _)| *n).collect();
    let values: Vec<&str> = SESSION_SETTINGS.iter().map(|(_, v)| *v).collect();
    client
        .execute(
            "SELECT set_config(s.name, d.value, false) \
             FROM unnest($1::text[], $2::text[]) AS d(name, value) \
             JOIN pg_settings s ON s.name = d.name WHERE s.source = 'default'",
            &[&names, &values],
        )
        .await?;
    Ok(())
}

impl PgStore {
    /// Connects to the database at `url` and brings its schema up to date.
    pub async fn connect(url: &DatabaseUrl) -> Result<PgStore> {
        let manager = Manager::from_config(
            pg_config(url)?,
            tls(url)?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .post_create(Hook::async_fn(|client, _| {
                Box::pin(async move { set_session(client).await.map_err(HookError::Backend) })
            }))
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(60)))
            .create_timeout(Some(Duration::from_secs(15)))
            .build()
            .map_err(|e| Error::Postgres {
                about: "setting up connections",
                url: url.redacted(),
                message: e.to_string(),
            })?;
        let store = PgStore {
            pool,
            url: url.clone(),
            log: None,
            host_lock: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// Also appends every event this store commits to `log`.
    pub fn with_event_log(mut self, log: Arc<EventLog>) -> PgStore {
        self.log = Some(log);
        self
    }

    fn fail(&self, about: &'static str, e: &PgError) -> Error {
        Error::Postgres {
            about,
            url: self.url.redacted(),
            message: super::url::hide_password_in(&describe(e), self.url.expose()),
        }
    }

    /// A connection of its own holding the session advisory lock on host id `host`, or
    /// [`Error::HostInUse`] naming the daemon that holds it. The lock lives as long as the
    /// connection: a killed daemon's goes with it, and one whose connection breaks must take it
    /// again ([`Store::hold_host`]). `stale` is the server process of this daemon's previous
    /// connection, if it had one: when the connection broke only on this side, that session
    /// still holds the id until the server notices, and is ended here instead of being taken
    /// for another daemon's.
    async fn take_host_lock(&self, host: &str, stale: Option<(i32, i64)>) -> Result<HostLock> {
        let fail = |e: PgError| self.fail("taking the host id", &e);
        let (client, connection) = pg_config(&self.url)?
            .connect(tls(&self.url)?)
            .await
            .map_err(fail)?;
        let url = self.url.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(
                    "the connection holding this daemon's host id on {url} broke ({}); taking the id again",
                    describe(&e)
                );
            }
        });
        // The server notices within about a minute that this daemon is gone, and frees the id.
        set_session(&client).await.map_err(fail)?;
        let try_lock = format!("SELECT pg_try_advisory_lock({HOST_LOCK_KEY})");
        let mut got: bool = client
            .query_one(&try_lock, &[&host])
            .await
            .map_err(fail)?
            .get(0);
        if !got && let Some((pid, started)) = stale {
            // Held by this daemon's own previous session: end it (it holds nothing else), and
            // take the id once the server has let it go.
            let ours: bool = client
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                           AND l.database = (SELECT oid FROM pg_database \
                                             WHERE datname = current_database()) \
                           AND ((l.classid::bigint << 32) | l.objid::bigint) = {HOST_LOCK_KEY} \
                           AND l.pid = $2 \
                           AND (extract(epoch FROM a.backend_start) * 1000000)::bigint = $3)"
                    ),
                    &[&host, &pid, &started],
                )
                .await
                .map_err(fail)?
                .get(0);
            if ours {
                warn!(
                    "this daemon's previous connection (server process {pid}) still holds its host id; ending it"
                );
                client
                    .query_one("SELECT pg_terminate_backend($1)", &[&pid])
                    .await
                    .map_err(fail)?;
                // A moment at most: the lease keeper renews leases after this. If the server is
                // slower to let it go, the next round takes it.
                for _ in 0..20 {
                    got = client
                        .query_one(&try_lock, &[&host])
                        .await
                        .map_err(fail)?
                        .get(0);
                    if got {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                if !got {
                    return Err(Error::Postgres {
                        about: "taking the host id",
                        url: self.url.redacted(),
                        message: format!(
                            "this daemon's previous connection (server process {pid}) still holds it"
                        ),
                    });
                }
            }
        }
        if !got {
            let pid = client
                .query_opt("SELECT pid FROM hosts WHERE host = $1", &[&host])
                .await
                .map_err(fail)?
                .map(|r| r.get::<_, i64>(0));
            return Err(Error::HostInUse {
                host: host.to_string(),
                database: self.url.redacted(),
                pid,
            });
        }
        let row = client
            .query_one(
                "SELECT pid, (extract(epoch FROM backend_start) * 1000000)::bigint \
                 FROM pg_stat_activity WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(fail)?;
        Ok(HostLock {
            client,
            backend: (row.get(0), row.get(1)),
        })
    }

    async fn client(&self, about: &'static str) -> Result<deadpool_postgres::Client> {
        self.pool.get().await.map_err(|e| {
            let message = match &e {
                deadpool_postgres::PoolError::Backend(e)
                | deadpool_postgres::PoolError::PostCreateHook(HookError::Backend(e)) => {
                    describe(e)
                }
                other => other.to_string(),
            };
            Error::Postgres {
                about,
                url: self.url.redacted(),
                message: super::url::hide_password_in(&message, self.url.expose()),
            }
        })
    }

    /// The error of an operation, as the caller sees it.
    fn op_error(&self, about: &'static str, e: OpError) -> Error {
        match e {
            OpError::Sql(e) => self.fail(about, &e),
            OpError::Rule(e) => e,
        }
    }

    async fn begin<'c>(
        &self,
        client: &'c mut deadpool_postgres::Client,
        about: &'static str,
        lazy: bool,
    ) -> Result<Tx<'c>> {
        let tx = client
            .transaction()
            .await
            .map_err(|e| self.fail(about, &e))?;
        if lazy {
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .await
                .map_err(|e| self.fail(about, &e))?;
        }
        Ok(Tx {
            tx,
            events: Vec::new(),
            rings: Vec::new(),
        })
    }

    /// Ends the transaction `op` ran in: committed with its rings notified if it succeeded, and
    /// its events then appended to the event log; rolled back if not. `None`: it lost a deadlock
    /// or serialisation race and is worth running again (try `tries` of [`TRIES`]).
    async fn end<T>(
        &self,
        mut tx: Tx<'_>,
        result: Op<T>,
        tries: u32,
        about: &'static str,
    ) -> Option<Result<T>> {
        let result = match result {
            Ok(out) => tx.notify().await.map(|()| out),
            Err(e) => Err(e),
        };
        let out = match result {
            Ok(out) => out,
            // Dropping the transaction rolls it back.
            Err(OpError::Sql(e)) if retryable(&e) && tries < TRIES => {
                self.run_again(about, &e, tries);
                return None;
            }
            Err(e) => return Some(Err(self.op_error(about, e))),
        };
        let events = std::mem::take(&mut tx.events);
        match tx.tx.commit().await {
            Ok(()) => {}
            Err(e) if retryable(&e) && tries < TRIES => {
                self.run_again(about, &e, tries);
                return None;
            }
            Err(e) => return Some(Err(self.fail(about, &e))),
        }
        if let Some(log) = &self.log {
            for e in &events {
                if let Err(err) = log.append(&e.to_log()) {
                    warn!("cannot append to the event log: {err}");
                    break;
                }
            }
        }
        Some(Ok(out))
    }

    /// Says that a transaction lost a deadlock or serialisation race and runs again. Every
    /// transaction takes its locks in one order, so a deadlock is a bug to hear of, not a
    /// routine retry: it also cost the server's `deadlock_timeout` (a second by default).
    fn run_again(&self, about: &'static str, e: &PgError, tries: u32) {
        warn!(
            "{about} on {}: {}; running it again (try {} of {TRIES})",
            self.url,
            describe(e),
            tries + 1
        );
    }

    async fn migrate(&self) -> Result<()> {
        let about = "migrating the schema";
        let mut client = self.client(about).await?;
        let fail = |e: PgError| self.fail(about, &e);
        // Every command opens the store: read the version without a lock, and take the lock only
        // when a migration is due (then read again under it, as another process may have done it).
        if let Some(current) = schema_version(&client).await.map_err(fail)?
            && current >= SCHEMA_VERSION
        {
            return self.check_version(current);
        }
        let tx = client.transaction().await.map_err(fail)?;
        // Another process's migration may take longer than a lock is otherwise waited for.
        tx.batch_execute("SET LOCAL lock_timeout = 0")
            .await
            .map_err(fail)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(fail)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (\
               version    BIGINT PRIMARY KEY, \
               applied_at BIGINT NOT NULL)",
        )
        .await
        .map_err(fail)?;
        let version: i64 = tx
            .query_one("SELECT coalesce(max(version), 0) FROM schema_version", &[])
            .await
            .map_err(fail)?
            .get(0);
        self.check_version(version)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).await.map_err(fail)?;
            tx.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES ($1, $2)",
                &[&(i as i64 + 1), &super::now_ms()],
            )
            .await
            .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)?;
        if version < SCHEMA_VERSION {
            info!(
                "database {}: schema version {version} brought up to {SCHEMA_VERSION}",
                self.url
            );
        }
        Ok(())
    }

    fn check_version(&self, found: i64) -> Result<()> {
        if found > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                database: self.url.redacted(),
                found,
                known: SCHEMA_VERSION,
            });
        }
        Ok(())
    }
}

/// The schema version of the database `client` is connected to; `None` before any migration.
async fn schema_version(
    client: &tokio_postgres::Client,
) -> std::result::Result<Option<i64>, PgError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_one("SELECT max(version) FROM schema_version", &[])
        .await?;
    Ok(row.get::<_, Option<i64>>(0))
}

/// What `agentq doctor` reads of a database, touching nothing.
#[derive(Debug)]
pub struct Inspection {
    /// The server's version.
    pub server: String,
    /// The schema version (`None`: no agentq schema yet).
    pub schema: Option<i64>,
    /// The connection's TLS version and cipher, as the server sees them (`pg_stat_ssl`);
    /// `None`: not encrypted.
    pub tls: Option<String>,
}

/// Connects as the store would and reads an [`Inspection`].
pub async fn inspect(url: &DatabaseUrl, limit: Duration) -> Result<Inspection> {
    let fail = |about: &'static str| {
        move |e: PgError| Error::Postgres {
            about,
            url: url.redacted(),
            message: super::url::hide_password_in(&describe(&e), url.expose()),
        }
    };
    let mut config = pg_config(url)?;
    config.connect_timeout(limit);
    let look = async {
        let (client, connection) = config
            .connect(tls(url)?)
            .await
            .map_err(fail("connecting"))?;
        let driver = tokio::spawn(connection);
        let server: String = client
            .query_one("SHOW server_version", &[])
            .await
            .map_err(fail("reading the server version"))?
            .get(0);
        let schema = schema_version(&client)
            .await
            .map_err(fail("reading the schema version"))?;
        let tls = client
            .query_opt(
                "SELECT version || ', ' || cipher FROM pg_stat_ssl \
                 WHERE pid = pg_backend_pid() AND ssl",
                &[],
            )
            .await
            .map_err(fail("reading whether the connection is encrypted"))?
            .map(|row| row.get::<_, String>(0));
        drop(client);
        let _ = driver.await;
        Ok(Inspection {
            server,
            schema,
            tls,
        })
    };
    match tokio::time::timeout(limit + Duration::from_secs(1), look).await {
        Ok(result) => result,
        Err(_) => Err(Error::Postgres {
            about: "connecting",
            url: url.redacted(),
            message: format!("no answer within {}", humantime::format_duration(limit)),
        }),
    }
}

impl Tx<'_> {
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Op<Vec<Row>> {
        query(&self.tx, sql, params).await
    }

    async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Op<Option<Row>> {
        Ok(self.query(sql, params).await?.into_iter().next())
    }

    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Op<u64> {
        let statement = self.tx.prepare_cached(sql).await?;
        Ok(self.tx.execute(&statement, params).await?)
    }

    /// Tells the listening daemons of `ring` once this transaction commits.
    fn ring(&mut self, ring: Ring) {
        if !self.rings.contains(&ring) {
            self.rings.push(ring);
        }
    }

    async fn notify(&mut self) -> Op<()> {
        for ring in std::mem::take(&mut self.rings) {
            self.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &ring.encode()])
                .await?;
        }
        Ok(())
    }

    /// Adds `bumps` ([`counters::settle`]d: each row once, in key order, the order every
    /// transaction locks counter rows in) to the counters, in one statement.
    async fn bump(&self, bumps: &[Bump]) -> Op<()> {
        if bumps.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = bumps.iter().map(|b| b.name.as_str()).collect();
        let labels: Vec<&str> = bumps.iter().map(|b| b.labels.as_str()).collect();
        let values: Vec<f64> = bumps.iter().map(|b| b.by).collect();
        self.execute(
            "INSERT INTO counters AS c (name, labels, value) \
             SELECT * FROM unnest($1::text[], $2::text[], $3::float8[]) \
             ON CONFLICT (name, labels) DO UPDATE SET value = c.value + excluded.value",
            &[&names, &labels, &values],
        )
        .await?;
        Ok(())
    }

    /// Records an event, to be appended to the event log once committed. (It may quote an agent,
    /// so NUL is replaced in what is written.)
    async fn record(&mut self, e: NewEvent) -> Op<()> {
        let row = self
            .query(
                "INSERT INTO events (ts, task_id, worker, kind, message, data) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    &e.now,
                    &e.task_id,
                    &e.worker,
                    &e.kind,
                    &no_nul(&e.message).as_ref(),
                    &e.data.clone().map(no_nul_json),
                ],
            )
            .await?;
        let id: i64 = row[0].try_get(0)?;
        self.events.push(e.recorded(id));
        Ok(())
    }

    /// Records how a running task's attempt ended, and says whether it did: with a `claim`
    /// token, only while the task is still running under it (so this is also the fence check).
    /// The task's row stays locked until the transaction ends, so the update that follows sees
    /// the same row. Call it before the update that ends the claim.
    async fn attempt_row(
        &self,
        task_id: i64,
        claim: Option<&str>,
        e: &AttemptEnding<'_>,
        now: Millis,
    ) -> Op<bool> {
        let held = self
            .query_opt(
                "SELECT id FROM tasks WHERE id = $1 AND state = 'running' \
                 AND ($2::text IS NULL OR claim_token = $2) FOR UPDATE",
                &[&task_id, &claim],
            )
            .await?;
        if held.is_none() {
            return Ok(false);
        }
        self.execute(
            "INSERT INTO attempts (task_id, attempt, worker, owner, started_at, ended_at, outcome, \
             cause, reason, exit_code, duration_ms, memory_peak_mb) \
             SELECT id, attempts, worker, owner, started_at, $2, $3, $4, $5, $6, $7, $8 FROM tasks \
             WHERE id = $1",
            &[
                &task_id,
                &now,
                &e.outcome,
                &e.cause,
                &e.reason.map(no_nul),
                &e.exit_code,
                &e.duration_ms,
                &e.memory_peak_mb,
            ],
        )
        .await?;
        Ok(true)
    }

    /// Claims the task the subquery `pick` chooses, if `only_if` holds, in one statement. Both
    /// see `$1` owner, `$2` token, `$3` the lease's length (ms), `$4` now, and `extra` from `$5`
    /// on. The lease runs from now by the server's clock ([`SERVER_NOW`]). Counts the attempt
    /// and records `task_started`.
    #[allow(clippy::too_many_arguments)]
    async fn claim_one(
        &mut self,
        pick: &str,
        only_if: &str,
        extra: &[&(dyn ToSql + Sync)],
        owner: &str,
        lease: Duration,
        now: Millis,
        place: &str,
    ) -> Op<Option<Claim>> {
        let token = common::new_token();
        let lease = lease.as_millis() as Millis;
        let mut values: Vec<&(dyn ToSql + Sync)> = vec![&owner, &token, &lease, &now];
        values.extend_from_slice(extra);
        let row = self
            .query_opt(
                &format!(
                    "UPDATE tasks SET state = 'running', attempts = attempts + 1, owner = $1, \
                     claim_token = $2, lease_expires = {SERVER_NOW} + $3, started_at = $4, \
                     updated_at = $4 \
                     WHERE id = ({pick} FOR UPDATE SKIP LOCKED) AND {only_if} \
                     RETURNING {TASK_COLUMNS}"
                ),
                &values,
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let task = task_from_row(&row)?;
        self.record(common::started(&task, place, owner, now))
            .await?;
        Ok(Some(Claim { task, token }))
    }

    /// A task's state, worker and where it runs, its row locked for the rest of the transaction.
    async fn state_of(&self, id: i64) -> Op<(TaskState, String, bool)> {
        let row = self
            .query_opt(
                "SELECT state, worker, pool FROM tasks WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await?;
        let row = row.ok_or(OpError::Rule(Error::NoSuchTask { id }))?;
        Ok((state_from(&row, 0)?, row.try_get(1)?, row.try_get(2)?))
    }

    /// Locks the `task_counts` rows of `keys` (worker, pool, state, class), creating those
    /// missing (with 0), in the order of their keys. The count trigger takes the two rows of one
    /// task's change in that order; a transaction that changes several tasks must take every
    /// row it will change first, in that order too, or it can hold one row while it waits for
    /// another that a claim holds while waiting for the first. (A recovery that moved a pool task
    /// `running` to `dead` held (running) when it wanted (queued) for the next task, moved back
    /// to the queue; a pool claim holds (queued) and wants (running).)
    async fn lock_counts(&self, keys: &[(String, bool, &str, String)]) -> Op<()> {
        let workers: Vec<&str> = keys.iter().map(|k| k.0.as_str()).collect();
        let pools: Vec<bool> = keys.iter().map(|k| k.1).collect();
        let states: Vec<&str> = keys.iter().map(|k| k.2).collect();
        let classes: Vec<&str> = keys.iter().map(|k| k.3.as_str()).collect();
        // Sorted by the server, with the collation the trigger compares keys with.
        let sorted = self
            .query(
                "SELECT DISTINCT w, p, s, c \
                 FROM unnest($1::text[], $2::boolean[], $3::text[], $4::text[]) AS k(w, p, s, c) \
                 ORDER BY w, p, s, c",
                &[&workers, &pools, &states, &classes],
            )
            .await?;
        for r in &sorted {
            let (w, p, s, c): (&str, bool, &str, &str) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            self.execute(
                "SELECT task_counts_add($1, $2, $3, $4, 0)",
                &[&w, &p, &s, &c],
            )
            .await?;
        }
        Ok(())
    }

    /// Returns running tasks matching `condition` (on `params`) to the queue, with their
    /// interrupted attempt given back, or `dead` (see [`common::Recovery`]).
    ///
    /// Locks are taken in one order, as in every other transaction: the tasks' rows in id order,
    /// then every count row the moves will change, in key order ([`Tx::lock_counts`]); only then
    /// are the tasks moved.
    async fn recover_where(
        &mut self,
        condition: &str,
        params: &[&(dyn ToSql + Sync)],
        now: Millis,
        why: &str,
    ) -> Op<Vec<i64>> {
        // One recovery at a time across the whole database, so that a second one finds the
        // tasks the first moved already moved (it would wait for their rows anyway).
        self.execute("SELECT pg_advisory_xact_lock($1)", &[&(MIGRATION_LOCK + 1)])
            .await?;
        let rows = self
            .query(
                &format!(
                    "SELECT id, worker, owner, interruptions + 1, max_attempts, pool, \
                     coalesce(class, '') FROM tasks \
                     WHERE state = 'running' AND {condition} ORDER BY id FOR UPDATE"
                ),
                params,
            )
            .await?;
        let mut recoveries = Vec::with_capacity(rows.len());
        let mut counts = Vec::with_capacity(rows.len() * 2);
        for r in &rows {
            let owner: Option<&str> = r.try_get(2)?;
            let recovery = common::Recovery::new(
                r.try_get(0)?,
                r.try_get(1)?,
                owner,
                r.try_get(3)?,
                r.try_get(4)?,
                why,
                now,
            );
            let (pool, class): (bool, String) = (r.try_get(5)?, r.try_get(6)?);
            let worker = &recovery.worker;
            counts.push((worker.clone(), pool, "running", class.clone()));
            counts.push((worker.clone(), pool, recovery.state().as_str(), class));
            recoveries.push(recovery);
        }
        if counts.len() > 2 {
            self.lock_counts(&counts).await?;
        }
        let mut ids = Vec::with_capacity(recoveries.len());
        let mut ended = Vec::new();
        for r in recoveries {
            self.attempt_row(r.id, None, &AttemptEnding::interrupted(why), now)
                .await?;
            if let Some(error) = &r.dead {
                self.execute(
                    "UPDATE tasks SET state = 'dead', interruptions = $2, error = $3, owner = NULL, \
                     claim_token = NULL, lease_expires = NULL, finished_at = $4, updated_at = $4 \
                     WHERE id = $1",
                    &[&r.id, &r.interruptions, error, &now],
                )
                .await?;
                ended.extend(counters::ended(
                    &r.worker,
                    TaskState::Dead,
                    counters::INTERRUPTED,
                ));
            } else {
                self.execute(
                    "UPDATE tasks SET state = 'queued', attempts = greatest(attempts - 1, 0), \
                     interruptions = $3, owner = NULL, claim_token = NULL, lease_expires = NULL, \
                     not_before = $2, updated_at = $2 WHERE id = $1",
                    &[&r.id, &now, &r.interruptions],
                )
                .await?;
            }
            self.record(r.event).await?;
            ids.push(r.id);
        }
        // The counter rows last, all at once in key order, after every task and count row.
        self.bump(&counters::settle(ended)).await?;
        if !ids.is_empty() {
            // Another daemon may be the one that runs them.
            self.ring(Ring::Everyone);
        }
        Ok(ids)
    }
}

/// Runs `sql` as a statement prepared once per connection.
async fn query(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Op<Vec<Row>> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query(&statement, params).await?)
}

async fn query_one(
    client: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Op<Row> {
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query_one(&statement, params).await?)
}

/// The counters, read whole (a few rows a worker).
async fn read_counters(client: &impl GenericClient) -> Op<counters::Counters> {
    let rows = query(client, "SELECT name, labels, value FROM counters", &[])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
        .collect::<Op<Vec<_>>>()?;
    Ok(counters::Counters::read(rows))
}

/// PostgreSQL's text (and jsonb) cannot hold NUL, which an agent's output may: it becomes U+FFFD,
/// as invalid UTF-8 already does. (SQLite keeps it; a result must be recordable on both.)
fn no_nul(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains('\0') {
        std::borrow::Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

fn no_nul_json(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => Value::String(no_nul(&s).into_owned()),
        Value::Array(items) => Value::Array(items.into_iter().map(no_nul_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (no_nul(&k).into_owned(), no_nul_json(v)))
                .collect(),
        ),
        other => other,
    }
}

fn state_from(r: &Row, idx: usize) -> Op<TaskState> {
    let text: String = r.try_get(idx)?;
    text.parse().map_err(|e: String| {
        OpError::Rule(Error::Usage(format!(
            "the database holds a task state this agentq does not know: {e}"
        )))
    })
}

fn task_from_row(r: &Row) -> Op<Task> {
    let u32_at = |i: usize| -> Op<u32> { Ok(r.try_get::<_, i64>(i)? as u32) };
    let id = r.try_get(0)?;
    Ok(Task {
        id,
        worker: r.try_get(1)?,
        prompt: r.try_get(2)?,
        priority: r.try_get(3)?,
        state: state_from(r, 4)?,
        attempts: u32_at(5)?,
        max_attempts: u32_at(6)?,
        timeout_ms: r.try_get::<_, Option<i64>>(7)?.map(|t| t as u64),
        not_before: r.try_get(8)?,
        created_at: r.try_get(9)?,
        updated_at: r.try_get(10)?,
        started_at: r.try_get(11)?,
        finished_at: r.try_get(12)?,
        owner: r.try_get(13)?,
        lease_expires: r.try_get(14)?,
        exit_code: r.try_get(15)?,
        output: r.try_get(16)?,
        error: r.try_get(17)?,
        stderr_tail: r.try_get(18)?,
        duration_ms: r.try_get(19)?,
        source: r.try_get(20)?,
        interruptions: u32_at(21)?,
        usage: super::Usage {
            session_id: r.try_get(22)?,
            cost_usd: r.try_get(23)?,
            input_tokens: r.try_get(24)?,
            output_tokens: r.try_get(25)?,
            num_turns: r.try_get(26)?,
        },
        cause: r.try_get(27)?,
        memory_peak_mb: r.try_get(28)?,
        routing: super::Routing {
            pool: r.try_get(29)?,
            class: r.try_get(30)?,
            complexity: r.try_get(31)?,
            route_reason: r.try_get(32)?,
            max_memory: r.try_get::<_, Option<i64>>(33)?.map(|m| m as u64),
        },
        worktree: common::read_worktree(id, r.try_get(34)?),
    })
}

/// A `worker_pauses` row selected as `worker, until, reason, kind`.
fn pause_from_row(r: &Row) -> Op<super::Pause> {
    Ok(super::Pause {
        worker: r.try_get(0)?,
        until: r.try_get(1)?,
        reason: r.try_get(2)?,
        kind: r.try_get(3)?,
    })
}

/// The event log, filtered: the latest `limit` events, oldest first.
async fn query_events(client: &impl GenericClient, f: &EventFilter) -> Op<Vec<Event>> {
    let limit = f.limit.map(i64::from);
    let rows = query(
        client,
        "SELECT id, ts, task_id, worker, kind, message, data FROM (\
           SELECT * FROM events WHERE ($1::bigint IS NULL OR task_id = $1) \
           AND ($2::text IS NULL OR worker = $2) AND ($3::text IS NULL OR kind = $3) \
           ORDER BY id DESC LIMIT $4) e ORDER BY id",
        &[&f.task_id, &f.worker, &f.kind, &limit],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(Event {
                id: r.try_get(0)?,
                ts: r.try_get(1)?,
                task_id: r.try_get(2)?,
                worker: r.try_get(3)?,
                kind: r.try_get(4)?,
                message: r.try_get(5)?,
                data: r.try_get(6)?,
            })
        })
        .collect()
}

/// Listens for rings on a connection of its own until `stop`, reconnecting with a growing pause
/// when the connection fails, and ringing everyone after each (re)connection.
async fn listen(
    url: DatabaseUrl,
    out: tokio::sync::mpsc::UnboundedSender<Ring>,
    stop: CancellationToken,
) {
    let mut pause = Duration::from_millis(100);
    let mut failed = false;
    loop {
        let outcome = tokio::select! {
            outcome = listen_once(&url, &out, &mut pause, &mut failed) => outcome,
            _ = stop.cancelled() => return,
        };
        if out.is_closed() {
            return;
        }
        let message = match outcome {
            Ok(()) => "the server closed the connection".to_string(),
            Err(e) => e.to_string(),
        };
        warn!(
            "listening for wake-ups on {url}: {message}; reconnecting in {}",
            humantime::format_duration(pause)
        );
        failed = true;
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return,
        }
        pause = (pause * 2).min(Duration::from_secs(5));
    }
}

/// One connection's life: `LISTEN`, ring everyone (whatever was sent before is now seen by the
/// claims that follow), then pass on each notification until the connection ends.
async fn listen_once(
    url: &DatabaseUrl,
    out: &tokio::sync::mpsc::UnboundedSender<Ring>,
    pause: &mut Duration,
    failed: &mut bool,
) -> Result<()> {
    use futures_util::StreamExt;
    let fail = |about: &'static str| {
        move |e: PgError| Error::Postgres {
            about,
            url: url.redacted(),
            message: super::url::hide_password_in(&describe(&e), url.expose()),
        }
    };
    let config = pg_config(url)?;
    let (client, mut connection) = config
        .connect(tls(url)?)
        .await
        .map_err(fail("connecting"))?;
    let (tx, mut notes) = tokio::sync::mpsc::unbounded_channel();
    // The connection is driven here: it carries the client's requests and the notifications.
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    set_session(&client).await.map_err(fail("connecting"))?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(fail("listening"))?;
    if *failed {
        info!("listening for wake-ups on {url} again");
    }
    *pause = Duration::from_millis(100);
    *failed = false;
    let _ = out.send(Ring::Everyone);
    while let Some(payload) = notes.recv().await {
        if out.send(Ring::decode(&payload)).is_err() {
            return Ok(());
        }
    }
    drop(client);
    match driver.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(fail("listening")(e)),
        Err(e) => Err(Error::Join(e)),
    }
}

/// The tasks `rule` removes, as [`Store::prune`] says (at most `$4` of them, oldest first).
fn prune_query(rule: &super::Prune) -> String {
    format!(
        "SELECT id, worker, pool, state, class, coalesce(finished_at, updated_at) FROM ( \
           SELECT id, worker, pool, state, class, finished_at, updated_at, worktree_held, \
                  row_number() OVER ( \
                      PARTITION BY CASE WHEN pool THEN 'pool' ELSE worker END \
                      ORDER BY id DESC) AS newest \
             FROM tasks WHERE state IN ({}) \
              AND ($1::text IS NULL OR CASE WHEN pool THEN 'pool' ELSE worker END = $1::text)) t \
          WHERE NOT worktree_held AND (($2::bigint IS NULL AND $3::bigint IS NULL) \
             OR coalesce(finished_at, updated_at) < $2::bigint OR newest > $3::bigint) \
          ORDER BY id LIMIT $4",
        common::prunable_states(&rule.states)
    )
}

fn pruned_row(r: &Row) -> Op<(super::Pruned, common::Gone)> {
    let state = state_from(r, 3)?;
    Ok((
        super::Pruned {
            id: r.try_get(0)?,
            worker: r.try_get(1)?,
            pool: r.try_get(2)?,
            state,
            finished_at: r.try_get(5)?,
        },
        common::Gone {
            state,
            class: r.try_get(4)?,
        },
    ))
}

#[async_trait]
impl Store for PgStore {
    fn shared(&self) -> bool {
        true
    }

    fn rings(&self, stop: CancellationToken) -> Option<tokio::sync::mpsc::UnboundedReceiver<Ring>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(listen(self.url.clone(), tx, stop));
        Some(rx)
    }

    async fn submit(&self, t: &NewTask) -> Result<Submitted> {
        write!(self, "submitting a task", |tx| {
            let row = tx
                .query_opt(
                    "INSERT INTO tasks (worker, prompt, priority, state, attempts, max_attempts, \
                     timeout_ms, not_before, created_at, updated_at, source, dedup_key, pool, class, \
                     complexity, route_reason, max_memory, worktree, worktree_held) \
                     VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6, $7, $7, $8, $9, $10, $11, $12, $13, $14, \
                     $15, $16) \
                     ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
                    &[
                        &t.worker,
                        &no_nul(&t.prompt).as_ref(),
                        &t.priority,
                        &(t.max_attempts as i64),
                        &t.timeout_ms.map(|v| v as i64),
                        &t.not_before,
                        &t.now,
                        &t.source,
                        &t.dedup_key,
                        &t.routing.pool,
                        &t.routing.class,
                        &t.routing.complexity,
                        &t.routing.route_reason,
                        &t.routing.max_memory.map(|m| m as i64),
                        &t.worktree.as_ref().map(common::worktree_json),
                        &t.worktree.as_ref().is_some_and(Worktree::holds_the_task),
                    ],
                )
                .await?;
            let Some(row) = row else {
                // The key is taken (perhaps by a submit that committed a moment ago).
                let row = tx
                    .query_opt("SELECT id FROM tasks WHERE dedup_key = $1", &[&t.dedup_key])
                    .await?
                    .ok_or_else(|| {
                        OpError::Rule(Error::Usage("a duplicate task vanished".into()))
                    })?;
                return Ok(Submitted::Duplicate(row.try_get(0)?));
            };
            let id: i64 = row.try_get(0)?;
            tx.record(common::queued(t, id)).await?;
            tx.ring(Ring::Worker(t.routing.runs_on(&t.worker).to_string()));
            Ok(Submitted::New(id))
        })
    }

    async fn claim(
        &self,
        worker: &str,
        owner: &str,
        now: Millis,
        lease: Duration,
    ) -> Result<Option<Claim>> {
        let worker = worker.to_string();
        write!(self, "claiming a task", lazy, |tx| {
            // Claims for one worker take turns, so the second sees the first's running task.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('agentq.claim:' || $1, 0))",
                &[&worker],
            )
            .await?;
            // One task at a time per worker, none while it is paused.
            let pick = "SELECT id FROM tasks WHERE worker = $5 AND state = 'queued' AND NOT pool \
                        AND not_before <= $4 ORDER BY priority DESC, id ASC LIMIT 1";
            let only_if = "NOT EXISTS (SELECT 1 FROM tasks WHERE worker = $5 AND state = 'running' AND NOT pool) \
                           AND NOT EXISTS (SELECT 1 FROM worker_pauses WHERE worker = $5 AND until > $4)";
            // And never against another daemon's lease, live or not: a runner whose lease lapsed
            // takes it again first (`hosts::Leases::hold`), which records the move.
            let only_if = format!(
                "{only_if} AND NOT EXISTS (SELECT 1 FROM worker_leases WHERE worker = $5 \
                 AND owner <> $1)"
            );
            tx.claim_one(pick, &only_if, &[&worker], owner, lease, now, "")
                .await
        })
    }

    /// Renews the lease from now by the server's clock; `now` is not used.
    async fn heartbeat(&self, fence: &Fence, _now: Millis, lease: Duration) -> Result<bool> {
        let lease = lease.as_millis() as Millis;
        write!(self, "renewing a lease", lazy, |tx| {
            let n = tx
                .execute(
                    &format!(
                        "UPDATE tasks SET lease_expires = {SERVER_NOW} + $3 \
                         WHERE id = $1 AND claim_token = $2 AND state = 'running'"
                    ),
                    &[&fence.id, &fence.token, &lease],
                )
                .await?;
            Ok(n == 1)
        })
    }

    async fn finish(&self, fence: &Fence, f: &Finish, on_end: Option<EndHook>) -> Result<bool> {
        let mut hook = on_end;
        write!(self, "recording a result", lazy, |tx| {
            let terminal = f.state.is_terminal();
            let ending = AttemptEnding::finished(f);
            if !tx
                .attempt_row(fence.id, Some(&fence.token), &ending, f.now)
                .await?
            {
                return Ok(false);
            }
            let row = tx
                .query_opt(
                    "UPDATE tasks SET state = $3, not_before = coalesce($4, not_before), exit_code = $5, \
                     output = $6, error = $7, stderr_tail = $8, duration_ms = $9, \
                     finished_at = CASE WHEN $10::boolean THEN $11::bigint ELSE NULL END, owner = NULL, claim_token = NULL, \
                     lease_expires = NULL, updated_at = $11, session_id = coalesce($12, session_id), \
                     cost_usd = $13, input_tokens = $14, output_tokens = $15, num_turns = $16, \
                     cause = $17, memory_peak_mb = $18 \
                     WHERE id = $1 AND claim_token = $2 AND state = 'running' \
                     RETURNING attempts, worker, pool, \
                     (SELECT min(started_at) FROM attempts WHERE task_id = $1) - created_at",
                    &[
                        &fence.id,
                        &fence.token,
                        &f.state.as_str(),
                        &f.not_before,
                        &f.exit_code,
                        &f.output.as_deref().map(no_nul),
                        &f.error.as_deref().map(no_nul),
                        &f.stderr_tail.as_deref().map(no_nul),
                        &f.duration_ms,
                        &terminal,
                        &f.now,
                        &f.usage.session_id,
                        &f.usage.cost_usd,
                        &f.usage.input_tokens,
                        &f.usage.output_tokens,
                        &f.usage.num_turns,
                        &f.cause,
                        &f.memory_peak_mb,
                    ],
                )
                .await?;
            let Some(row) = row else { return Ok(false) };
            let (attempts, worker): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
            // Another host may be waiting for this: a retry to take (its runner sleeps with no
            // timer when it had nothing queued), or a pool slot, which every host counts.
            let pool: bool = row.try_get(2)?;
            if pool || f.state == TaskState::Queued {
                let runs_on = if pool {
                    agentq_core::domain::POOL
                } else {
                    &worker
                };
                tx.ring(Ring::Worker(runs_on.to_string()));
            }
            tx.record(common::finished(f, fence.id, &worker, attempts))
                .await?;
            if let Some((cost_usd, input_tokens, output_tokens)) = common::usage_row(f) {
                tx.execute(
                    "INSERT INTO usage_log (ts, worker, task_id, cost_usd, input_tokens, output_tokens) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[&f.now, &worker, &fence.id, &cost_usd, &input_tokens, &output_tokens],
                )
                .await?;
            }
            // The wait for the first attempt: the attempts' rows keep its start.
            let waited: Option<i64> = row.try_get(3)?;
            tx.bump(&counters::finished(f, &worker, waited)).await?;
            if terminal && let Some(hook) = hook.take() {
                let row = tx
                    .query_opt(
                        &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"),
                        &[&fence.id],
                    )
                    .await?
                    .ok_or(OpError::Rule(Error::NoSuchTask { id: fence.id }))?;
                let task = task_from_row(&row)?;
                let events = query_events(
                    &tx.tx,
                    &EventFilter {
                        task_id: Some(fence.id),
                        ..Default::default()
                    },
                )
                .await?;
                // A hook that fails undoes the result: the transaction is rolled back.
                hook(&task, &events).map_err(OpError::Rule)?;
            }
            Ok(true)
        })
    }

    async fn release(&self, fence: &Fence, reason: &str, now: Millis) -> Result<bool> {
        write!(self, "releasing a task", lazy, |tx| {
            let ending = AttemptEnding::released(reason);
            if !tx
                .attempt_row(fence.id, Some(&fence.token), &ending, now)
                .await?
            {
                return Ok(false);
            }
            let row = tx
                .query_opt(
                    "UPDATE tasks SET state = 'queued', attempts = greatest(attempts - 1, 0), \
                     owner = NULL, claim_token = NULL, lease_expires = NULL, updated_at = $3 \
                     WHERE id = $1 AND claim_token = $2 AND state = 'running' RETURNING worker, pool",
                    &[&fence.id, &fence.token, &now],
                )
                .await?;
            let Some(row) = row else { return Ok(false) };
            let worker: String = row.try_get(0)?;
            // Queued again: a runner on another host may take it now (this one is stopping).
            let pool: bool = row.try_get(1)?;
            let runs_on = if pool {
                agentq_core::domain::POOL
            } else {
                &worker
            };
            tx.ring(Ring::Worker(runs_on.to_string()));
            tx.record(common::released(fence.id, &worker, reason, now))
                .await?;
            Ok(true)
        })
    }

    /// Leases are compared with the server's clock ([`SERVER_NOW`]); `now` dates the changes.
    async fn recover_expired(&self, now: Millis) -> Result<Vec<i64>> {
        write!(self, "recovering expired leases", lazy, |tx| {
            tx.recover_where(
                &format!("lease_expires < {SERVER_NOW}"),
                &[],
                now,
                "lease expired",
            )
            .await
        })
    }

    async fn recover_all_but(&self, owner: &str, now: Millis) -> Result<Vec<i64>> {
        write!(self, "recovering tasks of a previous daemon", lazy, |tx| {
            tx.recover_where(
                "coalesce(owner, '') <> $1",
                &[&owner],
                now,
                "its daemon is gone",
            )
            .await
        })
    }

    async fn cancel(&self, id: i64, now: Millis) -> Result<TaskState> {
        write!(self, "cancelling a task", |tx| {
            let (state, worker, pool) = tx.state_of(id).await?;
            common::may_cancel(id, state).map_err(OpError::Rule)?;
            // A running attempt ends here, not when its agent is stopped (that finish is fenced
            // out): its row says so, with how long it ran.
            if state == TaskState::Running {
                let ending = AttemptEnding::cancelled();
                if tx.attempt_row(id, None, &ending, now).await? {
                    tx.execute(
                        "UPDATE attempts SET duration_ms = ended_at - started_at \
                         WHERE id = (SELECT max(id) FROM attempts WHERE task_id = $1) \
                           AND started_at IS NOT NULL",
                        &[&id],
                    )
                    .await?;
                }
            }
            tx.execute(
                "UPDATE tasks SET state = 'cancelled', owner = NULL, claim_token = NULL, \
                 lease_expires = NULL, finished_at = $2, updated_at = $2, \
                 error = 'cancelled' WHERE id = $1",
                &[&id, &now],
            )
            .await?;
            tx.record(common::cancelled(id, &worker, state, now))
                .await?;
            tx.bump(&counters::ended(
                &worker,
                TaskState::Cancelled,
                counters::CANCELLED,
            ))
            .await?;
            if state == TaskState::Running {
                let runs_on = if pool {
                    agentq_core::domain::POOL
                } else {
                    &worker
                };
                tx.ring(Ring::Check(runs_on.to_string()));
            }
            Ok(state)
        })
    }

    async fn retry(&self, id: i64, now: Millis) -> Result<()> {
        write!(self, "retrying a task", |tx| {
            let (state, worker, pool) = tx.state_of(id).await?;
            common::may_retry(id, state).map_err(OpError::Rule)?;
            tx.execute(
                "UPDATE tasks SET state = 'queued', attempts = 0, interruptions = 0, not_before = $2, \
                 finished_at = NULL, exit_code = NULL, output = NULL, error = NULL, stderr_tail = NULL, \
                 duration_ms = NULL, cause = NULL, memory_peak_mb = NULL, updated_at = $2 WHERE id = $1",
                &[&id, &now],
            )
            .await?;
            tx.record(common::retried(id, &worker, state, now)).await?;
            let runs_on = if pool {
                agentq_core::domain::POOL
            } else {
                &worker
            };
            tx.ring(Ring::Worker(runs_on.to_string()));
            Ok(())
        })
    }

    async fn get(&self, id: i64) -> Result<Option<Task>> {
        read!(self, "reading a task", |c| {
            let rows = query(
                c,
                &format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"),
                &[&id],
            )
            .await?;
            rows.first().map(task_from_row).transpose()
        })
    }

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<TaskSummary>> {
        let state = filter.state.map(|s| s.as_str());
        let limit = filter.limit.map(i64::from);
        read!(self, "listing tasks", |c| {
            let rows = query(
                c,
                "SELECT id, worker, state, priority, attempts, max_attempts, created_at, finished_at, \
                 duration_ms, error, left(prompt, 400), pool, class FROM tasks \
                 WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR worker = $2) \
                 ORDER BY id DESC LIMIT $3",
                &[&state, &filter.worker, &limit],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    let prompt: String = r.try_get(10)?;
                    Ok(TaskSummary {
                        id: r.try_get(0)?,
                        worker: r.try_get(1)?,
                        state: state_from(r, 2)?,
                        priority: r.try_get(3)?,
                        attempts: r.try_get::<_, i64>(4)? as u32,
                        max_attempts: r.try_get::<_, i64>(5)? as u32,
                        created_at: r.try_get(6)?,
                        finished_at: r.try_get(7)?,
                        duration_ms: r.try_get(8)?,
                        error: r.try_get(9)?,
                        prompt_preview: common::preview(&prompt),
                        pool: r.try_get(11)?,
                        class: r.try_get(12)?,
                    })
                })
                .collect::<Op<Vec<_>>>()
        })
    }

    async fn events_of(&self, task_id: i64) -> Result<Vec<Event>> {
        self.events(&EventFilter {
            task_id: Some(task_id),
            ..Default::default()
        })
        .await
    }

    async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        read!(self, "reading events", |c| {
            query_events(c, filter).await
        })
    }

    async fn record_event(&self, e: &NewEvent) -> Result<()> {
        write!(self, "recording an event", |tx| {
            tx.record(e.clone()).await
        })
    }

    async fn counts(&self) -> Result<Vec<WorkerCounts>> {
        read!(self, "counting tasks", |c| {
            let rows = query(
                c,
                "SELECT worker, state, sum(n)::bigint FROM task_counts WHERE n > 0 \
                 GROUP BY worker, state ORDER BY worker COLLATE \"C\"",
                &[],
            )
            .await?;
            let rows = rows
                .iter()
                .map(|r| {
                    Ok((
                        r.try_get::<_, String>(0)?,
                        state_from(r, 1)?,
                        r.try_get::<_, i64>(2)? as u64,
                    ))
                })
                .collect::<Op<Vec<_>>>()?;
            Ok(common::fold_counts(rows))
        })
    }

    async fn worker_session(
        &self,
        worker: &str,
    ) -> Result<Option<agentq_core::domain::SessionState>> {
        read!(self, "reading a worker's session", |c| {
            let rows = query(
                c,
                "SELECT session_id, cwd, tasks, input_tokens, cost_usd, agent, output_tokens \
                 FROM worker_sessions WHERE worker = $1",
                &[&worker],
            )
            .await?;
            rows.first()
                .map(|r| {
                    Ok(agentq_core::domain::SessionState {
                        id: r.try_get(0)?,
                        cwd: r.try_get(1)?,
                        tasks: r.try_get::<_, i64>(2)? as u32,
                        input_tokens: r.try_get::<_, i64>(3)? as u64,
                        cost_usd: r.try_get(4)?,
                        agent: r.try_get(5)?,
                        output_tokens: r.try_get::<_, i64>(6)? as u64,
                    })
                })
                .transpose()
        })
    }

    async fn save_worker_session(
        &self,
        worker: &str,
        session: &agentq_core::domain::SessionState,
        now: Millis,
    ) -> Result<()> {
        let s = session;
        write!(self, "saving a worker's session", |tx| {
            tx.execute(
                "INSERT INTO worker_sessions AS w (worker, session_id, cwd, tasks, input_tokens, \
                 cost_usd, started_at, updated_at, agent, output_tokens) \
                 VALUES ($1, $2, $3, $4, $5, $7, $6, $6, $8, $9) \
                 ON CONFLICT (worker) DO UPDATE SET \
                   started_at = CASE WHEN w.session_id = excluded.session_id THEN w.started_at \
                                ELSE excluded.started_at END, \
                   session_id = excluded.session_id, cwd = excluded.cwd, tasks = excluded.tasks, \
                   input_tokens = excluded.input_tokens, cost_usd = excluded.cost_usd, \
                   updated_at = excluded.updated_at, agent = excluded.agent, \
                   output_tokens = excluded.output_tokens",
                &[
                    &worker,
                    &s.id,
                    &s.cwd,
                    &(s.tasks as i64),
                    &(s.input_tokens as i64),
                    &now,
                    &s.cost_usd,
                    &s.agent,
                    &(s.output_tokens as i64),
                ],
            )
            .await?;
            Ok(())
        })
    }

    async fn update_worker_session(
        &self,
        worker: &str,
        joined: &str,
        session: &agentq_core::domain::SessionState,
        now: Millis,
    ) -> Result<bool> {
        let s = session;
        write!(self, "updating a worker's session", |tx| {
            let n = tx
                .execute(
                    "UPDATE worker_sessions SET session_id = $3, cwd = $4, tasks = $5, \
                     input_tokens = $6, cost_usd = $7, updated_at = $8, agent = $9, \
                     output_tokens = $10 WHERE worker = $1 AND session_id = $2",
                    &[
                        &worker,
                        &joined,
                        &s.id,
                        &s.cwd,
                        &(s.tasks as i64),
                        &(s.input_tokens as i64),
                        &s.cost_usd,
                        &now,
                        &s.agent,
                        &(s.output_tokens as i64),
                    ],
                )
                .await?;
            Ok(n == 1)
        })
    }

    async fn reset_worker_session(&self, worker: &str, why: &str, now: Millis) -> Result<bool> {
        write!(self, "resetting a worker's session", |tx| {
            let old: Option<String> = match tx
                .query_opt(
                    "DELETE FROM worker_sessions WHERE worker = $1 RETURNING session_id",
                    &[&worker],
                )
                .await?
            {
                Some(r) => Some(r.try_get(0)?),
                None => None,
            };
            tx.record(common::session_reset(worker, why, old.as_deref(), now))
                .await?;
            Ok(old.is_some())
        })
    }

    async fn pause_worker(
        &self,
        worker: &str,
        until: Millis,
        reason: &str,
        now: Millis,
    ) -> Result<()> {
        write!(self, "pausing a worker", |tx| {
            tx.execute(
                "INSERT INTO worker_pauses AS p (worker, until, reason, since) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (worker) DO UPDATE SET \
                   reason = CASE WHEN excluded.until >= p.until THEN excluded.reason ELSE p.reason END, \
                   since = CASE WHEN excluded.until >= p.until THEN excluded.since ELSE p.since END, \
                   until = greatest(p.until, excluded.until)",
                &[&worker, &until, &reason, &now],
            )
            .await?;
            tx.record(common::paused(worker, reason, until, now)).await
        })
    }

    async fn resume_worker(&self, worker: &str, why: &str, now: Millis) -> Result<bool> {
        write!(self, "resuming a worker", |tx| {
            // Clears the worker's pause row, in force or expired; only one in force was a pause.
            let until: Option<Millis> = match tx
                .query_opt(
                    "DELETE FROM worker_pauses WHERE worker = $1 AND kind = 'paused' RETURNING until",
                    &[&worker],
                )
                .await?
            {
                Some(r) => Some(r.try_get(0)?),
                None => None,
            };
            let was_paused = until.is_some_and(|u| u > now);
            if was_paused {
                tx.record(common::resumed(worker, why, now)).await?;
                // Everyone: the worker's tasks in the pool waited for it too.
                tx.ring(Ring::Everyone);
            }
            Ok(was_paused)
        })
    }

    async fn error_worker(&self, worker: &str, reason: &str, now: Millis) -> Result<()> {
        write!(self, "marking a worker errored", |tx| {
            tx.execute(
                "INSERT INTO worker_pauses (worker, until, reason, since, kind) \
                 VALUES ($1, $2, $3, $4, 'errored') ON CONFLICT (worker) DO UPDATE SET \
                 until = excluded.until, reason = excluded.reason, since = excluded.since, \
                 kind = 'errored'",
                &[&worker, &Millis::MAX, &reason, &now],
            )
            .await?;
            tx.record(common::errored(worker, reason, now)).await
        })
    }

    async fn restart_worker(&self, worker: &str, now: Millis) -> Result<Option<super::Pause>> {
        write!(self, "restarting a worker", |tx| {
            let cleared = match tx
                .query_opt(
                    "DELETE FROM worker_pauses WHERE worker = $1 AND until > $2 \
                     RETURNING worker, until, reason, kind",
                    &[&worker, &now],
                )
                .await?
            {
                Some(r) => Some(pause_from_row(&r)?),
                None => None,
            };
            tx.record(common::restarted(worker, cleared.as_ref(), now))
                .await?;
            tx.ring(Ring::Restart(worker.to_string()));
            Ok(cleared)
        })
    }

    async fn attempts_of(&self, task_id: i64) -> Result<Vec<super::AttemptRecord>> {
        read!(self, "reading attempts", |c| {
            let rows = query(
                c,
                "SELECT attempt, owner, started_at, ended_at, outcome, cause, reason, exit_code, \
                 duration_ms, memory_peak_mb FROM attempts WHERE task_id = $1 ORDER BY id",
                &[&task_id],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(super::AttemptRecord {
                        attempt: r.try_get::<_, i64>(0)? as u32,
                        owner: r.try_get(1)?,
                        started_at: r.try_get(2)?,
                        ended_at: r.try_get(3)?,
                        outcome: r.try_get(4)?,
                        cause: r.try_get(5)?,
                        reason: r.try_get(6)?,
                        exit_code: r.try_get(7)?,
                        duration_ms: r.try_get(8)?,
                        memory_peak_mb: r.try_get(9)?,
                    })
                })
                .collect::<Op<Vec<_>>>()
        })
    }

    async fn pauses(&self, now: Millis) -> Result<Vec<super::Pause>> {
        read!(self, "reading pauses", |c| {
            let rows = query(
                c,
                "SELECT worker, until, reason, kind FROM worker_pauses WHERE until > $1 ORDER BY worker COLLATE \"C\"",
                &[&now],
            )
            .await?;
            rows.iter().map(pause_from_row).collect::<Op<Vec<_>>>()
        })
    }

    async fn spend_since(&self, since: Millis) -> Result<Vec<super::Spend>> {
        read!(self, "adding up spend", |c| {
            let rows = query(
                c,
                "SELECT worker, sum(cost_usd), sum(input_tokens)::bigint, \
                 sum(output_tokens)::bigint, count(*) FROM usage_log \
                 WHERE ts >= $1 GROUP BY worker ORDER BY worker COLLATE \"C\"",
                &[&since],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(super::Spend {
                        worker: r.try_get(0)?,
                        cost_usd: r.try_get(1)?,
                        input_tokens: r.try_get(2)?,
                        output_tokens: r.try_get(3)?,
                        attempts: r.try_get(4)?,
                    })
                })
                .collect::<Op<Vec<_>>>()
        })
    }

    async fn next_due(&self, worker: &str) -> Result<Option<Millis>> {
        read!(self, "finding the next due task", |c| {
            // A paused worker's work is due when the pause ends; no queued task: NULL, so an
            // idle runner sleeps with no timer.
            let row = query_one(
                c,
                "SELECT CASE WHEN count(*) = 0 THEN NULL ELSE \
                   greatest(min(not_before), \
                            coalesce((SELECT until FROM worker_pauses WHERE worker = $1), 0)) END \
                 FROM tasks WHERE worker = $1 AND state = 'queued' AND NOT pool",
                &[&worker],
            )
            .await?;
            Ok(row.try_get(0)?)
        })
    }

    async fn claim_pool(
        &self,
        owner: &str,
        now: Millis,
        lease: Duration,
        max_running: u32,
        workers: &[String],
    ) -> Result<Option<Claim>> {
        let max_running = i64::from(max_running);
        write!(self, "claiming a pool task", lazy, |tx| {
            // Pool claims take turns, so the count of running pool tasks is exact.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('agentq.claim_pool', 0))",
                &[],
            )
            .await?;
            // Any configured worker's, not paused, while fewer than `max_running` run.
            let pick = "SELECT id FROM tasks t WHERE pool AND state = 'queued' AND not_before <= $4 \
                          AND worker = ANY($6) \
                          AND NOT EXISTS (SELECT 1 FROM worker_pauses p \
                                          WHERE p.worker = t.worker AND p.until > $4) \
                        ORDER BY priority DESC, id ASC LIMIT 1";
            // Room is per daemon: this owner's running pool tasks.
            let only_if =
                "(SELECT count(*) FROM tasks WHERE pool AND state = 'running' AND owner = $1) < $5";
            tx.claim_one(
                pick,
                only_if,
                &[&max_running, &workers],
                owner,
                lease,
                now,
                " in the pool",
            )
            .await
        })
    }

    async fn next_due_pool(&self, workers: &[String]) -> Result<Option<Millis>> {
        read!(self, "finding the pool's next due task", |c| {
            let row = query_one(
                c,
                "SELECT min(greatest(not_before, coalesce((SELECT until FROM worker_pauses p \
                                                        WHERE p.worker = t.worker), 0))) \
                 FROM tasks t WHERE pool AND state = 'queued' AND worker = ANY($1)",
                &[&workers],
            )
            .await?;
            Ok(row.try_get(0)?)
        })
    }

    async fn pool_counts(&self) -> Result<super::PoolCounts> {
        read!(self, "counting the pool", |c| {
            let r = query_one(
                c,
                "SELECT coalesce(sum(n) FILTER (WHERE pool AND state = 'queued'), 0)::bigint, \
                        coalesce(sum(n) FILTER (WHERE pool AND state = 'running'), 0)::bigint, \
                        coalesce(sum(n) FILTER (WHERE class = 'long'), 0)::bigint, \
                        coalesce(sum(n) FILTER (WHERE class = 'short'), 0)::bigint \
                 FROM task_counts",
                &[],
            )
            .await?;
            Ok(super::PoolCounts {
                queued: r.try_get::<_, i64>(0)? as u64,
                running: r.try_get::<_, i64>(1)? as u64,
                long: r.try_get::<_, i64>(2)? as u64,
                short: r.try_get::<_, i64>(3)? as u64,
            })
        })
    }

    async fn activity_since(&self, since: Millis, owner: &str) -> Result<Vec<super::Activity>> {
        read!(self, "reading the workers' activity", |c| {
            let restarts = query(
                c,
                "SELECT worker, count(*) FILTER (WHERE kind = 'agent_restarting'), max(ts) \
                 FROM events WHERE kind IN ('agent_restarting', 'worker_restarted') \
                   AND ts >= $1 AND worker IS NOT NULL \
                 GROUP BY worker",
                &[&since],
            )
            .await?;
            let activity = restarts
                .iter()
                .map(|r| {
                    Ok(super::Activity {
                        worker: r.try_get(0)?,
                        restarts: r.try_get::<_, i64>(1)? as u64,
                        last_restart: r.try_get(2)?,
                        memory_peak_mb: None,
                    })
                })
                .collect::<Op<Vec<_>>>()?;
            let peaks = query(
                c,
                "SELECT key, max(memory_peak_mb) FROM attempt_peaks \
                 WHERE left(owner, length($1)) = $1 GROUP BY key",
                &[&owner],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<_, String>(0)?, r.try_get::<_, f64>(1)?)))
            .collect::<Op<Vec<_>>>()?;
            Ok(common::merge_activity(activity, peaks))
        })
    }

    async fn known_tasks(&self, ids: &[i64]) -> Result<Vec<i64>> {
        let ids = ids.to_vec();
        read!(self, "looking up tasks", |c| {
            let mut known: Vec<i64> = query(c, "SELECT id FROM tasks WHERE id = ANY($1)", &[&ids])
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
            known.sort_unstable();
            Ok(known)
        })
    }

    async fn set_worktree(
        &self,
        id: i64,
        worktree: &Worktree,
        event: Option<(&str, &str)>,
        now: Millis,
    ) -> Result<bool> {
        let json = common::worktree_json(worktree);
        let held = worktree.holds_the_task();
        write!(self, "recording a task's worktree", |tx| {
            let row = tx
                .query_opt(
                    "UPDATE tasks SET worktree = $2, worktree_held = $3, updated_at = $4 \
                     WHERE id = $1 RETURNING worker",
                    &[&id, &json, &held, &now],
                )
                .await?;
            let Some(row) = row else { return Ok(false) };
            if let Some(event) = event {
                let worker: String = row.try_get(0)?;
                tx.record(common::worktree_event(id, &worker, event, worktree, now))
                    .await?;
            }
            Ok(true)
        })
    }

    async fn worktrees(&self) -> Result<Vec<WorktreeRow>> {
        read!(self, "listing worktrees", |c| {
            let rows = query(
                c,
                "SELECT id, worker, state, pool, created_at, finished_at, worktree FROM tasks \
                 WHERE worktree IS NOT NULL ORDER BY id",
                &[],
            )
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let id = r.try_get(0)?;
                // Records that do not read are left out (warned of).
                let Some(worktree) = common::read_worktree(id, r.try_get(6)?) else {
                    continue;
                };
                out.push(WorktreeRow {
                    id,
                    worker: r.try_get(1)?,
                    state: state_from(r, 2)?,
                    pool: r.try_get(3)?,
                    created_at: r.try_get(4)?,
                    finished_at: r.try_get(5)?,
                    worktree,
                });
            }
            Ok(out)
        })
    }

    async fn prune(&self, rule: &super::Prune, now: Millis) -> Result<Vec<super::Pruned>> {
        let sql = prune_query(rule);
        let worker = rule.worker.clone();
        let keep = rule.keep_newest.map(i64::from);
        let limit = i64::from(rule.limit);
        if rule.dry_run {
            return read!(self, "listing the tasks to remove", |c| {
                query(c, &sql, &[&worker, &rule.finished_before, &keep, &limit])
                    .await?
                    .iter()
                    .map(|r| Ok(pruned_row(r)?.0))
                    .collect::<Op<Vec<_>>>()
            });
        }
        let terminal = common::prunable_states(&[]);
        write!(self, "removing finished tasks", |tx| {
            let rows = tx
                .query(&sql, &[&worker, &rule.finished_before, &keep, &limit])
                .await?
                .iter()
                .map(pruned_row)
                .collect::<Op<Vec<_>>>()?;
            let ids: Vec<i64> = rows.iter().map(|(p, _)| p.id).collect();
            // Only what is still finished and not held by its worktree goes (a retry, or a new
            // worktree record, may have come between), and only its rows are folded and removed.
            let gone: Vec<i64> = tx
                .query(
                    &format!(
                        "DELETE FROM tasks WHERE id = ANY($1) AND state IN ({terminal}) \
                         AND NOT worktree_held RETURNING id"
                    ),
                    &[&ids],
                )
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
            let (pruned, figures): (Vec<_>, Vec<_>) = rows
                .into_iter()
                .filter(|(p, _)| gone.contains(&p.id))
                .unzip();
            let fold = common::fold(&figures);
            for ((state, class), n) in &fold.counts {
                tx.execute(
                    "INSERT INTO pruned_counts (state, class, n) VALUES ($1, $2, $3) \
                     ON CONFLICT (state, class) DO UPDATE SET n = pruned_counts.n + excluded.n",
                    &[state, class, n],
                )
                .await?;
            }
            let fold_events = "INSERT INTO pruned_events (kind, worker, n) \
                 SELECT kind, coalesce(worker, ''), count(*) FROM events WHERE id = ANY($1) \
                 GROUP BY 1, 2 ON CONFLICT (kind, worker) DO UPDATE SET n = pruned_events.n + excluded.n";
            let of_tasks: Vec<i64> = tx
                .query("SELECT id FROM events WHERE task_id = ANY($1)", &[&gone])
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<_, _>>()?;
            tx.execute(fold_events, &[&of_tasks]).await?;
            tx.execute("DELETE FROM events WHERE id = ANY($1)", &[&of_tasks])
                .await?;
            tx.execute("DELETE FROM attempts WHERE task_id = ANY($1)", &[&gone])
                .await?;
            if let Some(cutoff) = rule.finished_before {
                let taskless: Vec<i64> = tx
                    .query(
                        "SELECT id FROM events WHERE task_id IS NULL AND ts < $1 ORDER BY id LIMIT $2",
                        &[&cutoff, &limit],
                    )
                    .await?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<std::result::Result<_, _>>()?;
                tx.execute(fold_events, &[&taskless]).await?;
                tx.execute("DELETE FROM events WHERE id = ANY($1)", &[&taskless])
                    .await?;
                tx.execute(
                    "DELETE FROM usage_log WHERE id IN \
                     (SELECT id FROM usage_log WHERE ts < $1 ORDER BY id LIMIT $2)",
                    &[&common::ledger_cutoff(cutoff, now), &limit],
                )
                .await?;
            }
            Ok(pruned)
        })
    }

    async fn metrics(&self, kinds: &[&str]) -> Result<super::Metrics> {
        let kinds: Vec<String> = kinds.iter().map(|k| k.to_string()).collect();
        read!(self, "reading metrics", |c| {
            let tasks = query(
                c,
                "SELECT state, nullif(class, ''), sum(n)::bigint FROM task_counts WHERE n > 0 \
                 GROUP BY state, class ORDER BY state COLLATE \"C\", class COLLATE \"C\"",
                &[],
            )
            .await?
            .iter()
            .map(|r| {
                Ok((
                    state_from(r, 0)?,
                    r.try_get(1)?,
                    r.try_get::<_, i64>(2)? as u64,
                ))
            })
            .collect::<Op<Vec<_>>>()?;
            let events = query(
                c,
                "SELECT kind, worker, count(*) FROM events WHERE kind = ANY($1) \
                 GROUP BY kind, worker ORDER BY kind COLLATE \"C\", worker COLLATE \"C\"",
                &[&kinds],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get::<_, i64>(2)? as u64)))
            .collect::<Op<Vec<_>>>()?;
            let mut metrics = super::Metrics {
                tasks,
                counters: read_counters(c).await?,
                events,
            };
            // What removed tasks counted.
            let mut kept = Vec::new();
            for sql in [
                "SELECT state, class, n FROM pruned_counts",
                "SELECT kind, worker, n FROM pruned_events",
            ] {
                kept.push(
                    query(c, sql, &[])
                        .await?
                        .iter()
                        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                        .collect::<Op<Vec<_>>>()?,
                );
            }
            let events = kept.pop().unwrap_or_default();
            let counts = kept.pop().unwrap_or_default();
            common::add_pruned(&mut metrics, &common::PrunedRows { counts, events }, &kinds);
            Ok(metrics)
        })
    }

    async fn counters(&self) -> Result<counters::Counters> {
        read!(self, "reading counters", |c| { read_counters(c).await })
    }

    /// In this host's clock: the time left by the server's clock, from this host's now.
    async fn next_lease_expiry(&self) -> Result<Option<Millis>> {
        read!(self, "finding the next lease expiry", |c| {
            let row = query_one(
                c,
                &format!(
                    "SELECT min(lease_expires) - {SERVER_NOW} FROM tasks WHERE state = 'running'"
                ),
                &[],
            )
            .await?;
            let left: Option<Millis> = row.try_get(0)?;
            Ok(left.map(|left| super::now_ms() + left))
        })
    }

    async fn join_host(
        &self,
        host: &str,
        owner: &str,
        pid: i32,
        _now: Millis,
        lease: Duration,
    ) -> Result<()> {
        let about = "taking the host id";
        let mut slot = self.host_lock.lock().await;
        if slot.as_ref().is_none_or(|h| h.client.is_closed()) {
            let stale = slot.take().map(|h| h.backend);
            *slot = Some(self.take_host_lock(host, stale).await?);
        }
        drop(slot);
        let (pid, lease_ms) = (i64::from(pid), lease.as_millis() as i64);
        let (host, owner) = (host.to_string(), owner.to_string());
        write!(self, about, |tx| {
            tx.execute(
                &format!(
                    "INSERT INTO hosts (host, owner, pid, started_at, expires) \
                     VALUES ($1, $2, $3, {SERVER_NOW}, {SERVER_NOW} + $4) \
                     ON CONFLICT (host) DO UPDATE SET owner = excluded.owner, pid = excluded.pid, \
                       started_at = excluded.started_at, expires = excluded.expires"
                ),
                &[&host, &owner, &pid, &lease_ms],
            )
            .await?;
            Ok(())
        })
    }

    async fn hold_host(&self, host: &str) -> Result<bool> {
        let mut slot = self.host_lock.lock().await;
        let stale = match slot.as_ref() {
            Some(h) if h.client.is_closed() => h.backend,
            // Held, or never taken (or given up by `leave_host`): nothing to take again.
            _ => return Ok(false),
        };
        // Kept (closed) until taken again, so a failed try still knows the stale session.
        let lock = self.take_host_lock(host, Some(stale)).await?;
        *slot = Some(lock);
        Ok(true)
    }

    async fn leave_host(&self, host: &str, owner: &str, _now: Millis) -> Result<()> {
        let (host, owner) = (host.to_string(), owner.to_string());
        write!(self, "leaving", |tx| {
            let rows = tx
                .query(
                    "UPDATE worker_leases SET expires = 0 WHERE owner = $1 AND expires > 0 \
                     RETURNING worker",
                    &[&owner],
                )
                .await?;
            for r in &rows {
                tx.ring(Ring::Worker(r.try_get(0)?));
            }
            tx.execute(
                "DELETE FROM hosts WHERE host = $1 AND owner = $2",
                &[&host, &owner],
            )
            .await?;
            Ok(())
        })?;
        // The host id is free for the next run (or another host's daemon) at once.
        self.host_lock.lock().await.take();
        Ok(())
    }

    async fn take_worker_lease(
        &self,
        worker: &str,
        host: &str,
        owner: &str,
        _now: Millis,
        lease: Duration,
    ) -> Result<super::LeaseTake> {
        let lease_ms = lease.as_millis() as i64;
        let (worker, host, owner) = (worker.to_string(), host.to_string(), owner.to_string());
        write!(self, "taking a worker's lease", |tx| {
            // Takers of one worker's lease take turns, so a missing row is inserted once.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended('agentq.lease:' || $1, 0))",
                &[&worker],
            )
            .await?;
            let now: i64 = tx.query(&format!("SELECT {SERVER_NOW}"), &[]).await?[0].try_get(0)?;
            let held = tx
                .query_opt(
                    "SELECT host, owner, expires FROM worker_leases WHERE worker = $1",
                    &[&worker],
                )
                .await?;
            let held = match held {
                Some(r) => Some((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)),
                None => None,
            };
            let moved_from = match common::may_take_lease(held, &host, &owner, now) {
                Ok(from) => from,
                Err(busy) => return Ok(busy),
            };
            tx.execute(
                "INSERT INTO worker_leases (worker, host, owner, expires, taken_at) \
                 VALUES ($1, $2, $3, $4::bigint + $5::bigint, $4) ON CONFLICT (worker) DO UPDATE SET \
                   host = excluded.host, owner = excluded.owner, expires = excluded.expires, \
                   taken_at = CASE WHEN worker_leases.owner = excluded.owner \
                                   THEN worker_leases.taken_at ELSE excluded.taken_at END",
                &[&worker, &host, &owner, &now, &lease_ms],
            )
            .await?;
            if let Some(from) = &moved_from {
                // Dated by this host's clock, as every event is (`now` here is the server's).
                tx.record(common::moved(&worker, from, &host, super::now_ms()))
                    .await?;
            }
            Ok(super::LeaseTake::Held { moved_from })
        })
    }

    async fn renew_leases(
        &self,
        host: &str,
        owner: &str,
        _now: Millis,
        lease: Duration,
    ) -> Result<Vec<String>> {
        let lease_ms = lease.as_millis() as i64;
        let (host, owner) = (host.to_string(), owner.to_string());
        write!(self, "renewing leases", lazy, |tx| {
            tx.execute(
                &format!(
                    "UPDATE hosts SET expires = {SERVER_NOW} + $3 WHERE host = $1 AND owner = $2"
                ),
                &[&host, &owner, &lease_ms],
            )
            .await?;
            let rows = tx
                .query(
                    &format!(
                        "UPDATE worker_leases SET expires = {SERVER_NOW} + $2 \
                         WHERE owner = $1 AND expires > 0 RETURNING worker"
                    ),
                    &[&owner, &lease_ms],
                )
                .await?;
            let mut held = rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<std::result::Result<Vec<String>, _>>()?;
            held.sort();
            Ok(held)
        })
    }

    async fn release_worker_lease(&self, worker: &str, owner: &str, _now: Millis) -> Result<bool> {
        let (worker, owner) = (worker.to_string(), owner.to_string());
        write!(self, "releasing a worker's lease", |tx| {
            let n = tx
                .execute(
                    "UPDATE worker_leases SET expires = 0 \
                     WHERE worker = $1 AND owner = $2 AND expires > 0",
                    &[&worker, &owner],
                )
                .await?;
            if n == 1 {
                // Another host's runner of this worker sleeps until the lease would expire.
                tx.ring(Ring::Worker(worker.clone()));
            }
            Ok(n == 1)
        })
    }

    async fn worker_leases(&self, _now: Millis) -> Result<Vec<super::WorkerLease>> {
        read!(self, "reading worker leases", |c| {
            let rows = query(
                c,
                &format!(
                    "SELECT worker, host, owner, expires - {SERVER_NOW} FROM worker_leases \
                     WHERE expires > {SERVER_NOW} ORDER BY worker COLLATE \"C\""
                ),
                &[],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(super::WorkerLease {
                        worker: r.try_get(0)?,
                        host: r.try_get(1)?,
                        owner: r.try_get(2)?,
                        expires_in_ms: r.try_get(3)?,
                    })
                })
                .collect::<Op<Vec<_>>>()
        })
    }

    async fn hosts(&self, _now: Millis) -> Result<Vec<super::HostRow>> {
        read!(self, "reading hosts", |c| {
            let rows = query(
                c,
                &format!(
                    "SELECT host, owner, pid, started_at FROM hosts \
                     WHERE expires > {SERVER_NOW} ORDER BY host COLLATE \"C\""
                ),
                &[],
            )
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(super::HostRow {
                        host: r.try_get(0)?,
                        owner: r.try_get(1)?,
                        pid: r.try_get(2)?,
                        started_at: r.try_get(3)?,
                    })
                })
                .collect::<Op<Vec<_>>>()
        })
    }

    async fn recover_host(&self, host: &str, owner: &str, now: Millis) -> Result<Vec<i64>> {
        let why = common::previous_run(host);
        let owner = owner.to_string();
        write!(self, "recovering tasks of a previous run", lazy, |tx| {
            // The host id is what comes before the first ':' of an owner id.
            tx.recover_where(
                "owner <> $1 AND split_part(owner, ':', 1) = split_part($1, ':', 1)",
                &[&owner],
                now,
                &why,
            )
            .await
        })
    }
}

/// Databases for tests, the crate's own and those in `tests/`: each test gets a fresh database on
/// the server `AGENTQ_TEST_DATABASE_URL` names, dropped afterwards.
#[doc(hidden)]
pub mod test_db {
    use super::*;

    /// The server the tests use: an admin URL (a user that may create databases).
    pub const SERVER_ENV: &str = "AGENTQ_TEST_DATABASE_URL";
    /// `skip` lets the PostgreSQL tests pass without a server (for developers without one);
    /// CI always has one (scripts/test starts it).
    pub const SKIP_ENV: &str = "AGENTQ_TEST_PG";

    /// A database of its own on the test server, dropped (with whatever is still connected)
    /// when this is.
    pub struct TestDb {
        admin: String,
        name: String,
        pub url: DatabaseUrl,
    }

    impl TestDb {
        /// A fresh, empty database; `None` when there is no server and skipping was asked for.
        pub async fn create() -> Option<TestDb> {
            let admin = match std::env::var(SERVER_ENV) {
                Ok(url) if !url.trim().is_empty() => url,
                _ if std::env::var(SKIP_ENV).as_deref() == Ok("skip") => {
                    eprintln!("skipped: {SERVER_ENV} is not set and {SKIP_ENV}=skip");
                    return None;
                }
                _ => panic!(
                    "the PostgreSQL store tests need a server: set {SERVER_ENV} to an admin URL \
                     (e.g. postgres://postgres@127.0.0.1:5432/postgres; scripts/test starts a \
                     temporary one), or set {SKIP_ENV}=skip to skip them"
                ),
            };
            let name = format!("agentq_test_{}", &common::new_token()[..12]);
            let server = DatabaseUrl::parse(&admin, SERVER_ENV).unwrap_or_else(|e| panic!("{e}"));
            let (client, driver) = connect(&server).await.unwrap_or_else(|e| panic!("{e}"));
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {}", describe(&e)));
            drop(client);
            let _ = driver.await;
            let url = DatabaseUrl::parse(&with_dbname(&admin, &name), "test").unwrap();
            Some(TestDb { admin, name, url })
        }
    }

    impl Drop for TestDb {
        fn drop(&mut self) {
            let (admin, name) = (self.admin.clone(), self.name.clone());
            // Drop runs inside the test's runtime: the database is dropped from a thread with a
            // runtime of its own.
            let dropped = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let server = DatabaseUrl::parse(&admin, SERVER_ENV)?;
                    let (client, driver) = connect(&server).await?;
                    client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                        .map_err(|e| describe(&e))?;
                    drop(client);
                    let _ = driver.await;
                    Ok::<(), String>(())
                })
            })
            .join();
            if let Ok(Err(e)) = dropped {
                eprintln!("could not drop the test database {}: {e}", self.name);
            }
        }
    }

    /// A connection to `url` as the store makes them (TLS and all), and the task driving it,
    /// which ends when the client is dropped.
    pub async fn connect(
        url: &DatabaseUrl,
    ) -> std::result::Result<
        (
            tokio_postgres::Client,
            tokio::task::JoinHandle<std::result::Result<(), PgError>>,
        ),
        String,
    > {
        let config = pg_config(url).map_err(|e| e.to_string())?;
        let (client, connection) = config
            .connect(tls(url).map_err(|e| e.to_string())?)
            .await
            .map_err(|e| format!("connecting to {url}: {}", describe(&e)))?;
        Ok((client, tokio::spawn(connection)))
    }

    /// `url` (a URL or key=value string) naming database `name` instead.
    pub fn with_dbname(url: &str, name: &str) -> String {
        if let Some(scheme_end) = url.find("://") {
            let rest_at = scheme_end + 3;
            let (query_at, query) = match url.find('?') {
                Some(q) => (q, &url[q..]),
                None => (url.len(), ""),
            };
            let authority_end = url[rest_at..query_at]
                .find('/')
                .map_or(query_at, |i| rest_at + i);
            format!("{}/{name}{query}", &url[..authority_end])
        } else {
            format!("{url} dbname={name}")
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::test_db::TestDb;
    use super::*;
    use crate::suite::{self, CountRow, Fixture, Inspect, LEASE, task};

    #[async_trait]
    impl Inspect for PgStore {
        async fn kept_and_counted(&self) -> (Vec<CountRow>, Vec<CountRow>) {
            let client = self.client("comparing counts").await.unwrap();
            let rows = async |sql: &str| -> Vec<CountRow> {
                client
                    .query(sql, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                    .collect()
            };
            (
                rows(
                    "SELECT worker, pool, state, class, n FROM task_counts WHERE n != 0 \
                     ORDER BY worker COLLATE \"C\", pool, state COLLATE \"C\", class COLLATE \"C\"",
                )
                .await,
                rows(
                    "SELECT worker, pool, state, coalesce(class, ''), count(*) FROM tasks \
                     GROUP BY 1, 2, 3, 4 ORDER BY worker COLLATE \"C\", pool, state COLLATE \"C\", \
                     coalesce(class, '') COLLATE \"C\"",
                )
                .await,
            )
        }

        async fn write_worktree_text(&self, id: i64, text: &str) {
            let client = self.client("spoiling a record").await.unwrap();
            client
                .execute(
                    "UPDATE tasks SET worktree = $2 WHERE id = $1",
                    &[&id, &text],
                )
                .await
                .unwrap();
        }
    }

    async fn fixture() -> Option<Fixture> {
        let db = TestDb::create().await?;
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("events.jsonl");
        let log = Arc::new(EventLog::new(log_path.clone(), 1 << 20, 2));
        let store = PgStore::connect(&db.url).await.unwrap().with_event_log(log);
        Some(Fixture {
            store: Arc::new(store),
            log_path,
            keep: Box::new((dir, db)),
        })
    }

    suite::store_suite!(fixture);

    #[test]
    fn a_database_name_replaces_the_one_in_either_form() {
        assert_eq!(
            super::test_db::with_dbname("postgres://u:p@h:5432/postgres?sslmode=disable", "x"),
            "postgres://u:p@h:5432/x?sslmode=disable"
        );
        use super::test_db::with_dbname;
        assert_eq!(with_dbname("postgres://h", "x"), "postgres://h/x");
        assert_eq!(with_dbname("host=h user=u", "x"), "host=h user=u dbname=x");
    }

    #[tokio::test]
    async fn reopening_keeps_everything_and_a_newer_schema_is_refused() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        // Two daemons starting together on a new database: one migrates, the other waits.
        let (a, b) = tokio::join!(PgStore::connect(&db.url), PgStore::connect(&db.url));
        let (a, _b) = (a.unwrap(), b.unwrap());
        let id = a.submit(&task("w", "kept", 0, 1)).await.unwrap().id();
        drop(a);
        let s = PgStore::connect(&db.url).await.unwrap();
        assert_eq!(s.get(id).await.unwrap().unwrap().prompt, "kept");
        let client = s.client("test").await.unwrap();
        let versions: Vec<i64> = client
            .query("SELECT version FROM schema_version ORDER BY version", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
        client
            .execute("INSERT INTO schema_version VALUES (99, 0)", &[])
            .await
            .unwrap();
        drop(client);
        let e = PgStore::connect(&db.url).await.err().unwrap();
        assert!(matches!(e, Error::SchemaTooNew { found: 99, .. }), "{e}");
        let found = inspect(&db.url, Duration::from_secs(5)).await.unwrap();
        assert_eq!(found.schema, Some(99));
    }

    #[tokio::test]
    async fn version_5_counts_the_history_a_version_4_database_already_has() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let (client, driver) = super::test_db::connect(&db.url).await.unwrap();
        client
            .batch_execute(
                "CREATE TABLE schema_version (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .await
            .unwrap();
        for (i, sql) in MIGRATIONS[..4].iter().enumerate() {
            client.batch_execute(sql).await.unwrap();
            client
                .execute(
                    "INSERT INTO schema_version VALUES ($1, 0)",
                    &[&(i as i64 + 1)],
                )
                .await
                .unwrap();
        }
        client
            .batch_execute(suite::HISTORY_BEFORE_COUNTERS)
            .await
            .unwrap();
        drop(client);
        let _ = driver.await;
        let s = PgStore::connect(&db.url).await.unwrap();
        suite::check_counters_seeded_from_history(&s).await;
    }

    /// Receives rings until one matches, or fails after a few seconds.
    async fn expect_ring(rings: &mut tokio::sync::mpsc::UnboundedReceiver<Ring>, want: Ring) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ring = tokio::time::timeout_at(deadline, rings.recv())
                .await
                .unwrap_or_else(|_| panic!("no {want:?} within 10s"))
                .expect("the listener stopped");
            if ring == want {
                return;
            }
        }
    }

    #[tokio::test]
    async fn changes_ring_listeners_and_a_lost_connection_is_made_again() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let s = PgStore::connect(&db.url).await.unwrap();
        let stop = CancellationToken::new();
        let mut rings = s.rings(stop.clone()).unwrap();
        // Listening: it says so by ringing everyone once.
        expect_ring(&mut rings, Ring::Everyone).await;

        let mut pooled = task("v", "p", 0, 1);
        pooled.routing.pool = true;
        s.submit(&pooled).await.unwrap();
        expect_ring(&mut rings, Ring::Worker("pool".into())).await;
        let id = s.submit(&task("w", "a", 0, 1)).await.unwrap().id();
        expect_ring(&mut rings, Ring::Worker("w".into())).await;
        s.claim("w", "me", 2, LEASE).await.unwrap().unwrap();
        s.cancel(id, 3).await.unwrap();
        expect_ring(&mut rings, Ring::Check("w".into())).await;
        s.retry(id, 4).await.unwrap();
        expect_ring(&mut rings, Ring::Worker("w".into())).await;
        s.restart_worker("w", 5).await.unwrap();
        expect_ring(&mut rings, Ring::Restart("w".into())).await;
        // A task given back (its daemon stopping) or retrying is claimable again, perhaps on
        // another host, whose runner sleeps with no timer when it had nothing queued.
        let c = s.claim("w", "me", 6, LEASE).await.unwrap().unwrap();
        assert!(s.release(&c.fence(), "shutting down", 7).await.unwrap());
        expect_ring(&mut rings, Ring::Worker("w".into())).await;
        let c = s.claim("w", "me", 8, LEASE).await.unwrap().unwrap();
        let mut again = suite::done(TaskState::Queued, 9);
        again.cause = Some("crashed".into());
        assert!(s.finish(&c.fence(), &again, None).await.unwrap());
        expect_ring(&mut rings, Ring::Worker("w".into())).await;

        // The server ends the listening connection: it is made again, and everyone is rung, as
        // rings may have been lost meanwhile.
        let client = s.client("test").await.unwrap();
        let ended: i64 = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid() \
                 AND query LIKE 'LISTEN%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(ended, 1);
        expect_ring(&mut rings, Ring::Everyone).await;
        s.submit(&task("w", "b", 0, 6)).await.unwrap();
        expect_ring(&mut rings, Ring::Worker("w".into())).await;

        // A rolled-back change rings no one.
        assert!(s.cancel(9999, 7).await.is_err());
        stop.cancel();
        if let Some(ring) = rings.recv().await {
            panic!("rang {ring:?} after the last change");
        }
    }

    /// The daemon's bookkeeping commits without waiting for the WAL flush; what a caller is
    /// told is done waits for it.
    #[tokio::test]
    async fn only_the_daemons_bookkeeping_commits_without_waiting_for_the_flush() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let s = PgStore::connect(&db.url).await.unwrap();
        async fn show(tx: &Tx<'_>) -> Op<String> {
            Ok(tx
                .tx
                .query_one("SHOW synchronous_commit", &[])
                .await?
                .get(0))
        }
        async fn setting(s: &PgStore, lazy: bool) -> Result<String> {
            if lazy {
                write!(s, "test", lazy, |tx| { show(tx).await })
            } else {
                write!(s, "test", |tx| { show(tx).await })
            }
        }
        assert_eq!(setting(&s, true).await.unwrap(), "off");
        assert_eq!(setting(&s, false).await.unwrap(), "on");
        // Only for that transaction: the pooled connection is as it was.
        assert_eq!(setting(&s, false).await.unwrap(), "on");
    }

    /// Hosts' clocks differ; leases are written and compared by the server's. A host whose
    /// clock runs a minute ahead takes back no live task of another, and a host a minute behind
    /// hands out no lease that has run out already (a 30 s lease by its clock).
    #[tokio::test]
    async fn leases_go_by_the_servers_clock_whatever_the_hosts_clocks_say() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let s = PgStore::connect(&db.url).await.unwrap();
        const MINUTE: Millis = 60_000;
        let mut pooled = task("w", "p", 0, 1);
        pooled.routing.pool = true;
        let pooled = s.submit(&pooled).await.unwrap().id();
        s.submit(&task("w", "a", 0, 1)).await.unwrap();
        let behind = super::super::now_ms() - MINUTE;
        let live = s
            .claim("w", "behind", behind, LEASE)
            .await
            .unwrap()
            .unwrap();
        let w = vec!["w".to_string()];
        let live_pool = s
            .claim_pool("behind", behind, LEASE, 4, &w)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(live_pool.task.id, pooled);
        for skew in [0, MINUTE, -MINUTE] {
            let now = super::super::now_ms() + skew;
            assert_eq!(s.recover_expired(now).await.unwrap(), Vec::<i64>::new());
        }
        // Renewed by a host ahead: still a lease from now, not a minute more.
        let ahead = super::super::now_ms() + MINUTE;
        assert!(s.heartbeat(&live.fence(), ahead, LEASE).await.unwrap());
        let next = s.next_lease_expiry().await.unwrap().unwrap();
        let left = next - super::super::now_ms();
        let lease = LEASE.as_millis() as Millis;
        assert!(
            (lease - 5_000..=lease + 5).contains(&left),
            "the earliest lease ends in {left} ms"
        );
        // They run out by the server's clock alone: a lapsing heartbeat, and recovery by a
        // host a minute behind takes it back.
        assert!(
            s.heartbeat(&live.fence(), ahead, suite::LAPSING)
                .await
                .unwrap()
        );
        assert_eq!(
            suite::recover_lapsed(&s, super::super::now_ms() - MINUTE, 1).await,
            vec![live.task.id]
        );
    }

    /// `url` with `options` (server settings, `-c name=value ...`) added.
    fn with_options(url: &DatabaseUrl, options: &str) -> DatabaseUrl {
        let text = url.expose();
        let text = if text.contains("://") {
            let sep = if text.contains('?') { '&' } else { '?' };
            let encoded = options
                .replace('%', "%25")
                .replace(' ', "%20")
                .replace('=', "%3D");
            format!("{text}{sep}options={encoded}")
        } else {
            format!("{text} options='{options}'")
        };
        DatabaseUrl::parse(&text, "test").unwrap()
    }

    /// The server settings of a pooled session of `s`, in their base units, and where each
    /// came from.
    async fn session_settings(s: &PgStore) -> Vec<(String, String, String)> {
        let client = s.client("test").await.unwrap();
        let names: Vec<&str> = SESSION_SETTINGS.iter().map(|(n, _)| *n).collect();
        client
            .query(
                "SELECT name, setting, source FROM pg_settings WHERE name = ANY($1) ORDER BY name",
                &[&names],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    #[tokio::test]
    async fn sessions_bound_idle_transactions_lock_waits_and_dead_peers_unless_told_otherwise() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let ours = |name: &str, setting: &str| {
            (name.to_string(), setting.to_string(), "session".to_string())
        };
        let s = PgStore::connect(&db.url).await.unwrap();
        assert_eq!(
            session_settings(&s).await,
            [
                ours("idle_in_transaction_session_timeout", "60000"),
                ours("lock_timeout", "30000"),
                ours("tcp_keepalives_count", "3"),
                ours("tcp_keepalives_idle", "30"),
                ours("tcp_keepalives_interval", "10"),
                ours("tcp_user_timeout", "60000"),
            ]
        );
        // The connection string's options win, and so do the database's (or the role's)
        // settings; the rest are agentq's.
        s.client("test")
            .await
            .unwrap()
            .batch_execute(
                "DO $$ BEGIN EXECUTE format(\
                   'ALTER DATABASE %I SET idle_in_transaction_session_timeout = ''7s''', \
                   current_database()); END $$",
            )
            .await
            .unwrap();
        drop(s);
        let url = with_options(&db.url, "-c lock_timeout=5s -c tcp_keepalives_count=9");
        let s = PgStore::connect(&url).await.unwrap();
        let settings = session_settings(&s).await;
        let setting = |name: &str| {
            settings
                .iter()
                .find(|(n, ..)| n == name)
                .map(|(_, v, source)| (v.as_str(), source.as_str()))
                .unwrap()
        };
        assert_eq!(setting("lock_timeout"), ("5000", "client"));
        assert_eq!(setting("tcp_keepalives_count"), ("9", "client"));
        assert_eq!(
            setting("idle_in_transaction_session_timeout"),
            ("7000", "database")
        );
        assert_eq!(setting("tcp_user_timeout"), ("60000", "session"));

        // The client's side of the connection, likewise.
        let config = pg_config(&db.url).unwrap();
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(
            config.get_keepalives_interval(),
            Some(Duration::from_secs(10))
        );
        assert_eq!(config.get_keepalives_retries(), Some(3));
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_secs(60))
        );
        let text = format!("{} keepalives_idle=5 tcp_user_timeout=7", "host=h");
        let config = pg_config(&DatabaseUrl::parse(&text, "test").unwrap()).unwrap();
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(5));
        assert_eq!(config.get_tcp_user_timeout(), Some(&Duration::from_secs(7)));
    }

    /// A client that stopped in the middle of a transaction holding the pool's claim lock (a
    /// frozen daemon, a host that vanished) holds it only until the server ends its idle
    /// session: then other daemons' pool claims go on. (The limit is shortened here to a second
    /// through the URL; agentq's own is a minute.)
    #[tokio::test]
    async fn a_client_stopped_inside_a_transaction_does_not_hold_the_pool_claim_lock() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let url = with_options(&db.url, "-c idle_in_transaction_session_timeout=1s");
        let stuck = PgStore::connect(&url).await.unwrap();
        let other = PgStore::connect(&db.url).await.unwrap();
        let mut t = task("w", "p", 0, 1);
        t.routing.pool = true;
        other.submit(&t).await.unwrap();
        let held = stuck.client("test").await.unwrap();
        held.batch_execute(
            "BEGIN; SELECT pg_advisory_xact_lock(hashtextextended('agentq.claim_pool', 0))",
        )
        .await
        .unwrap();
        let asked = std::time::Instant::now();
        let w = vec!["w".to_string()];
        let claim = other.claim_pool("me", 2, LEASE, 4, &w).await.unwrap();
        let waited = asked.elapsed();
        assert!(claim.is_some());
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
            "the claim waited {waited:?}"
        );
        // The stuck session was ended by the server.
        assert!(held.batch_execute("COMMIT").await.is_err());
    }

    /// How many deadlocks the server has detected in the test database, once every other
    /// connection to it has ended (a backend reports its figures as it exits).
    async fn deadlocks_detected(db: &TestDb) -> i64 {
        let (client, _driver) = super::test_db::connect(&db.url).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let others: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if others == 0 || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A backend leaves pg_stat_activity just before it writes its figures.
        tokio::time::sleep(Duration::from_millis(500)).await;
        client
            .batch_execute("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        client
            .query_one(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// A recovery moves many tasks in one transaction (here one pool task to `dead` and another
    /// back to `queued`, so three count rows), while pool claims each move one task from
    /// `queued` to `running`. Each transaction locks the count rows it changes in key order, so
    /// none waits for another in a cycle, however they interleave: the server detects no
    /// deadlock (one would also cost its `deadlock_timeout`, a second, and a retry).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn recovery_and_pool_claims_together_never_deadlock() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let s = Arc::new(PgStore::connect(&db.url).await.unwrap());
        let w = vec!["w".to_string()];
        const ROUNDS: i64 = 100;
        let started = std::time::Instant::now();
        let mut errors = Vec::new();
        for round in 0..ROUNDS {
            let base = round * 10_000;
            // Two running pool tasks whose leases lapse at once, the first at its last
            // interruption (so it ends `dead`).
            let mut ids = Vec::new();
            for i in 0..2 {
                let mut t = task("w", &format!("r{round}-{i}"), 100, base);
                t.routing.pool = true;
                t.max_attempts = 1;
                ids.push(s.submit(&t).await.unwrap().id());
            }
            for _ in 0..2 {
                s.claim_pool("gone", base, Duration::from_millis(1), 1000, &w)
                    .await
                    .unwrap()
                    .unwrap();
            }
            let c = s.client("test").await.unwrap();
            c.execute(
                "UPDATE tasks SET interruptions = 5 WHERE id = $1",
                &[&ids[0]],
            )
            .await
            .unwrap();
            drop(c);
            for i in 0..6 {
                let mut t = task("w", &format!("q{round}-{i}"), 0, base);
                t.routing.pool = true;
                s.submit(&t).await.unwrap();
            }
            let mut set = tokio::task::JoinSet::new();
            {
                let s = s.clone();
                set.spawn(async move {
                    // The leases lapsed a millisecond after the claims.
                    let recovered = s.recover_expired(base + 5).await?;
                    assert_eq!(recovered.len(), 2, "{recovered:?}");
                    Ok(())
                });
            }
            for _ in 0..6 {
                let (s, w) = (s.clone(), w.clone());
                set.spawn(async move {
                    s.claim_pool("live", base + 5, LEASE, 1000, &w)
                        .await
                        .map(|_| ())
                });
            }
            while let Some(r) = set.join_next().await {
                if let Err(e) = r.unwrap() {
                    errors.push(e.to_string());
                }
            }
            let c = s.client("test").await.unwrap();
            c.execute(
                "UPDATE tasks SET state = 'cancelled' WHERE state IN ('running', 'queued')",
                &[],
            )
            .await
            .unwrap();
        }
        let took = started.elapsed();
        drop(s);
        let deadlocks = deadlocks_detected(&db).await;
        eprintln!("{ROUNDS} rounds in {took:?}: {deadlocks} deadlock(s), errors {errors:?}");
        assert_eq!(errors, Vec::<String>::new());
        assert_eq!(deadlocks, 0, "the server detected deadlocks");
    }

    /// A TCP proxy to the test server that can cut its connections the way a network does: the
    /// client's side ends, while the server's side lives on (its session, and any lock it holds,
    /// until the server notices).
    struct Blip {
        port: u16,
        cut: Arc<std::sync::Mutex<CancellationToken>>,
        /// The server-side sockets of the cut connections, held open.
        _held: Arc<std::sync::Mutex<Vec<tokio::net::TcpStream>>>,
    }

    impl Blip {
        async fn to(url: &DatabaseUrl) -> Blip {
            let config: tokio_postgres::Config = url.expose().parse().unwrap();
            let upstream = match (&config.get_hosts()[0], config.get_ports()[0]) {
                (tokio_postgres::config::Host::Tcp(h), port) => format!("{h}:{port}"),
                #[allow(unreachable_patterns)] // only Unix has socket hosts
                _ => panic!("the test server must be on TCP"),
            };
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let cut = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
            let held = Arc::new(std::sync::Mutex::new(Vec::new()));
            let (c, h) = (cut.clone(), held.clone());
            tokio::spawn(async move {
                loop {
                    let (mut client, _) = listener.accept().await.unwrap();
                    let mut server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                    let cut = c.lock().unwrap().clone();
                    let held = h.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.cancelled() => held.lock().unwrap().push(server),
                        }
                    });
                }
            });
            Blip {
                port,
                cut,
                _held: held,
            }
        }

        fn url(&self, url: &DatabaseUrl) -> DatabaseUrl {
            let config: tokio_postgres::Config = url.expose().parse().unwrap();
            let from = format!(":{}/", config.get_ports()[0]);
            let text = url.expose().replacen(&from, &format!(":{}/", self.port), 1);
            DatabaseUrl::parse(&text, "test").unwrap()
        }

        /// Ends every connection made so far on the client's side only.
        fn cut(&self) {
            let mut cut = self.cut.lock().unwrap();
            cut.cancel();
            *cut = CancellationToken::new();
        }
    }

    /// Waits (bounded) until the connection holding `s`'s host id is seen closed.
    async fn sees_the_cut(s: &PgStore) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !s
            .host_lock
            .lock()
            .await
            .as_ref()
            .unwrap()
            .client
            .is_closed()
        {
            assert!(tokio::time::Instant::now() < deadline, "never saw the cut");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A network blip ends the connection holding the host id on the daemon's side, while the
    /// server's side lives on, holding the id, until the server notices. That stale session is
    /// the daemon's own: taking the id again must not take it for another daemon's (which would
    /// stop every agent and exit the daemon, and refuse its restart while the session lingers).
    /// A daemon that really took the id meanwhile is still told apart.
    #[tokio::test]
    async fn a_blip_on_the_host_id_connection_is_not_another_daemon_taking_the_id() {
        let Some(db) = TestDb::create().await else {
            return;
        };
        let blip = Blip::to(&db.url).await;
        let s = PgStore::connect(&blip.url(&db.url)).await.unwrap();
        s.join_host("a", "a:1:x", 1, 1, LEASE).await.unwrap();
        // The host-id connection has the session settings: the server notices a dead client.
        let keepalive: String = {
            let slot = s.host_lock.lock().await;
            let c = slot.as_ref().unwrap();
            c.client
                .query_one("SHOW tcp_keepalives_idle", &[])
                .await
                .unwrap()
                .get(0)
        };
        assert_eq!(keepalive, "30");
        blip.cut();
        sees_the_cut(&s).await;
        match s.hold_host("a").await {
            Ok(true) => {}
            other => {
                panic!("the daemon's own stale session was taken for another daemon: {other:?}")
            }
        }
        // Held again: a second daemon under the id is refused.
        let other = PgStore::connect(&db.url).await.unwrap();
        assert!(matches!(
            other.join_host("a", "a:2:y", 2, 1, LEASE).await,
            Err(Error::HostInUse { .. })
        ));
        // Another daemon takes the id while this one's connection is down (the server ended
        // the old session): that is told as such.
        blip.cut();
        sees_the_cut(&s).await;
        let admin = other.client("test").await.unwrap();
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
                 AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint) = \
                 hashtextextended('agentq.host:a', 0)",
                &[],
            )
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match other.join_host("a", "a:2:y", 2, 1, LEASE).await {
                Ok(()) => break,
                Err(Error::HostInUse { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(matches!(
            s.hold_host("a").await,
            Err(Error::HostInUse { .. })
        ));
    }

    #[tokio::test]
    async fn connection_errors_do_not_show_the_password() {
        // Nothing listens on port 1.
        let url = DatabaseUrl::parse("postgres://agentq:s3cret@127.0.0.1:1/queue", "test").unwrap();
        let e = PgStore::connect(&url).await.err().unwrap().to_string();
        assert!(e.contains("postgres://agentq:***@127.0.0.1:1/queue"), "{e}");
        assert!(!e.contains("s3cret"), "{e}");
        let e = inspect(&url, Duration::from_secs(2))
            .await
            .unwrap_err()
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }
}
