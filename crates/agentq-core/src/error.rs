//! The one error type of the library.
//!
//! Every variant names what was being done and on what (a path, a task id, a worker), so that the
//! message printed once by `main` is enough to act on. Exit codes are chosen in one place,
//! [`Error::exit_code`], so scripts can tell a usage mistake from a task that failed.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}:{line}:{column}: {message}")]
    Config {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },

    #[error("{path}: {message}")]
    ConfigFile { path: PathBuf, message: String },

    #[error(
        "no agentq.toml in {start} or any folder above it; run `agentq init` to create one, or pass --config PATH"
    )]
    ConfigNotFound { start: PathBuf },

    #[error("{about} {path}: {source}")]
    Io {
        about: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("database {path}: {about}: {source}")]
    Database {
        about: &'static str,
        path: PathBuf,
        source: rusqlite::Error,
    },

    /// The SQLite file is not a database, or its pages are damaged: the daemon refuses it rather
    /// than start on it (or make a new, empty one in its place).
    #[error(
        "the database {path} is damaged ({detail}); agentq will not run on it, nor make a new one in its place. \
         To recover: stop every agentq using this folder, move the file aside with its -wal and -shm files \
         (keep them: the queue is in them), then either let agentq create a new database, or save what can \
         be read first: `sqlite3 OLD.db .recover | sqlite3 {path}`"
    )]
    DatabaseDamaged { path: PathBuf, detail: String },

    /// SQLite could not write: the file system holding the database (or its quota) is full.
    /// Nothing was written; the daemon pauses claiming until there is room again.
    #[error(
        "database {path}: {about}: the disk is full ({detail}); free space on the file system that \
         holds it (remove files there, or `agentq clean` old tasks), then try again"
    )]
    StorageFull {
        about: &'static str,
        path: PathBuf,
        detail: String,
    },

    /// A PostgreSQL store failed; `url` is shown without its password.
    #[error("database {url}: {about}: {message}")]
    Postgres {
        about: &'static str,
        url: String,
        message: String,
    },

    #[error(
        "database {database} has schema version {found}, newer than this agentq understands ({known}); upgrade agentq"
    )]
    SchemaTooNew {
        /// The SQLite file, or the PostgreSQL URL without its password.
        database: String,
        found: i64,
        known: i64,
    },

    #[error("{0}")]
    Usage(String),

    #[error("no task {id}")]
    NoSuchTask { id: i64 },

    #[error("task {id} is {state}: {what}")]
    WrongState {
        id: i64,
        state: String,
        what: &'static str,
    },

    #[error("{}", match pid {
        Some(pid) => format!("agentq run is already running for {} (pid {pid}); stop it first, or use another folder", state_dir.display()),
        None => format!("agentq run is already running for {}; stop it first, or use another folder", state_dir.display()),
    })]
    AlreadyRunning {
        state_dir: PathBuf,
        pid: Option<i32>,
    },

    #[error("another agentq run uses host id {host:?} on {database} (pid {}): two daemons on one database need different host ids; set [daemon] host or pass --host", pid.map_or("unknown".to_string(), |p| p.to_string()))]
    HostInUse {
        host: String,
        database: String,
        pid: Option<i64>,
    },

    #[error("task {id} ended {state}{}", reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    TaskNotSucceeded {
        id: i64,
        state: String,
        reason: Option<String>,
    },

    #[error("timed out after {after:?} waiting for task(s) {ids}")]
    WaitTimeout {
        ids: String,
        after: std::time::Duration,
    },

    #[error("{failed} doctor check(s) failed; each names its fix")]
    DoctorFailed { failed: usize },

    #[error("{about}: {source}")]
    Watch {
        about: &'static str,
        source: notify::Error,
    },

    #[error(
        "cannot serve the HTTP API on {addr}: {source}; free that port, or choose another address with [http] listen or `agentq run --http ADDR`"
    )]
    HttpListen {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },

    /// A program a command runs is not installed (not found on PATH).
    #[error("{program} is not installed (not found on PATH); it is needed to {needed_for}: {fix}")]
    ProgramMissing {
        program: String,
        needed_for: String,
        fix: String,
    },

    /// A git command agentq ran for a task's worktree failed; the message names the repository
    /// and says what to do (the daemon's `git::GitError`, whose variants it decides on).
    #[error("{0}")]
    Git(String),

    /// A service manager's command (`systemctl`, `launchctl`, `schtasks`) could not do its part.
    #[error("`{command}` failed: {message}")]
    ServiceManager { command: String, message: String },

    /// `agentq merge` found that a task's change does not apply cleanly; nothing was changed.
    #[error("task {id}'s change does not merge cleanly into {into}: {} conflict{} ({}); the repository is as it was: merge it by hand (`git merge {branch}`), or discard it", files.len(), if files.len() == 1 { "" } else { "s" }, files.join(", "))]
    MergeConflict {
        id: i64,
        into: String,
        branch: String,
        files: Vec<String>,
    },

    #[error("background work failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl Error {
    pub fn io(about: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            about,
            path: path.into(),
            source,
        }
    }

    /// Whether this is a full disk (or quota): the database's SQLITE_FULL, or a file write's
    /// ENOSPC/EDQUOT. What failed can be done again once there is room.
    pub fn is_storage_full(&self) -> bool {
        match self {
            Error::StorageFull { .. } => true,
            Error::Io { source, .. } => agentq_platform::fs::is_storage_full(source),
            _ => false,
        }
    }

    /// The file or folder an error is about, where it names one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::StorageFull { path, .. }
            | Error::Io { path, .. }
            | Error::Database { path, .. }
            | Error::DatabaseDamaged { path, .. } => Some(path),
            _ => None,
        }
    }

    /// The process exit code for this error: 1 for a task that did not succeed (what `wait` reports)
    /// or a failed `doctor` check, 2 for a mistake in what was asked (usage, config, unknown task),
    /// 3 for an environment problem (I/O, database, another daemon), 124 for a wait that timed out.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::TaskNotSucceeded { .. }
            | Error::DoctorFailed { .. }
            | Error::MergeConflict { .. } => 1,
            // As timeout(1) does: a script can tell "gave up waiting" from "the task failed".
            Error::WaitTimeout { .. } => 124,
            Error::Config { .. }
            | Error::ConfigFile { .. }
            | Error::ConfigNotFound { .. }
            | Error::Usage(_)
            | Error::NoSuchTask { .. }
            | Error::WrongState { .. } => 2,
            _ => 3,
        }
    }
}
