//! `agentq doctor`: checks what `agentq run` needs, and says how to fix what is wrong.
//!
//! Each check is a function from what it looks at (a path, a worker, an environment) to a
//! [`Check`]: a status, what was found, and for a failure (or a warning) the fix in words. Doctor
//! only reads: it creates no state folder and no database, takes no lock, and opens the database
//! read-only (a PostgreSQL store: it connects and reads two versions, showing the URL without its
//! password), so it is safe beside a running daemon. A config that does not load stops only the
//! checks that need it (the workers' agents); the state folder beside it, the database and the
//! environment are still checked. Warnings and skipped checks never fail the run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use agentq_core::error::{Error, Result};
use agentq_daemon::config::{
    Agent, Config, DB_FILE, DEFAULT_MIN_FREE_SPACE, POOL, STATE_DIR, WorkerConfig,
};
use agentq_daemon::space;
use agentq_platform::fs as pfs;

/// How long `<claude> --version` may take before the agent counts as unable to start.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a PostgreSQL server may take to answer before it counts as unreachable.
pub const DB_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
    /// Not applicable here (another OS, a feature that is off, no config to check against).
    Skip,
}

impl Status {
    /// The mark at the start of a line of text, all four characters wide.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => " -  ",
        }
    }
}

/// One line of the report; `--json` prints a list of these as they are.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Check {
    pub check: String,
    pub status: Status,
    pub detail: String,
    /// What to do about a failure or warning, in words.
    pub fix: Option<String>,
}

impl Check {
    fn new(check: &str, status: Status, detail: String, fix: Option<String>) -> Check {
        Check {
            check: check.to_string(),
            status,
            detail,
            fix,
        }
    }

    fn ok(check: &str, detail: impl Into<String>) -> Check {
        Check::new(check, Status::Ok, detail.into(), None)
    }

    fn warn(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(check, Status::Warn, detail.into(), Some(fix.into()))
    }

    fn fail(check: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check::new(check, Status::Fail, detail.into(), Some(fix.into()))
    }

    fn skip(check: &str, detail: impl Into<String>) -> Check {
        Check::new(check, Status::Skip, detail.into(), None)
    }
}

/// What doctor looks at besides files: where it was started and its own environment (which is
/// what a daemon started from the same shell would have).
#[derive(Clone, Debug)]
pub struct Context {
    pub cwd: PathBuf,
    pub env: BTreeMap<String, String>,
    pub version_timeout: Duration,
}

impl Context {
    pub fn from_process() -> Result<Context> {
        Ok(Context {
            cwd: std::env::current_dir()
                .map_err(|e| Error::io("reading current folder", ".", e))?,
            env: std::env::vars().collect(),
            version_timeout: VERSION_TIMEOUT,
        })
    }
}

/// Runs every check, in the order they are printed.
pub async fn run(explicit: Option<&Path>, cx: &Context) -> Vec<Check> {
    let mut checks = Vec::new();
    let (check, config, root) = check_config(explicit, &cx.cwd);
    checks.push(check);
    let mut daemon_pid = None;
    // The database answered: what is in it can be read.
    let mut reachable = false;
    match &root {
        Some(root) => {
            let state_dir = root.join(STATE_DIR);
            checks.push(check_state_dir(&state_dir));
            let min_free = config
                .as_ref()
                .map_or(DEFAULT_MIN_FREE_SPACE, |c| c.daemon.min_free_space);
            checks.push(check_disk(root, min_free));
            match store_url(config.as_ref(), explicit, cx) {
                Some(url) => {
                    let found = check_postgres(&url, DB_TIMEOUT).await;
                    reachable = found.first().is_some_and(|c| c.status == Status::Ok);
                    checks.extend(found);
                }
                None => checks.extend(check_database(&state_dir.join(DB_FILE))),
            }
            let (check, pid) = check_daemon(&state_dir);
            daemon_pid = pid;
            checks.push(check);
            checks.push(match &config {
                Some(config) => check_service_now(config, cx).await,
                None => Check::skip("service", "needs an agentq.toml that loads"),
            });
            checks.push(match &config {
                Some(config) => {
                    let settings = config.daemon.clone();
                    let running = daemon_pid.and_then(|pid| {
                        let path = state_dir.join(agentq_daemon::daemon::CONTAINMENT_FILE);
                        let text = std::fs::read_to_string(path).ok()?;
                        Some((pid, text.trim().to_string()))
                    });
                    tokio::task::spawn_blocking(move || {
                        check_containment(settings.containment, settings.cgroup.as_deref(), running)
                    })
                    .await
                    .unwrap_or_else(|e| Check::skip("containment", format!("cannot tell: {e}")))
                }
                None => Check::skip("containment", "needs an agentq.toml that loads"),
            });
            if let (Some(config), Some(url)) = (&config, store_url(config.as_ref(), explicit, cx)) {
                checks.push(match reachable {
                    true => check_hosts(&url, config, daemon_pid).await,
                    false => Check::skip("hosts", "needs the database"),
                });
            }
        }
        None => {
            for name in [
                "state folder",
                "disk",
                "database",
                "daemon",
                "service",
                "containment",
            ] {
                checks.push(Check::skip(
                    name,
                    "no agentq.toml found, so no project folder",
                ));
            }
        }
    }
    let workers: Vec<&WorkerConfig> = config.as_ref().map_or_else(Vec::new, |c| {
        c.workers
            .iter()
            .chain(c.pool.defined.then_some(&c.pool.worker))
            .collect()
    });
    if config.is_none() {
        checks.push(Check::skip("workers", "need an agentq.toml that loads"));
    }
    for w in &workers {
        checks.extend(check_worker(w, cx).await);
    }
    if let (Some(config), Some(root)) = (&config, &root) {
        let db = store_url(Some(config), explicit, cx)
            .is_none()
            .then(|| root.join(STATE_DIR).join(DB_FILE));
        checks.extend(check_worktrees(config, &root.join(STATE_DIR), db.as_deref()).await);
    }
    checks.push(check_markers(&cx.env, &workers));
    checks.extend(check_gemini_sessions(&cx.env, &workers));
    checks.push(check_git_bash(&cx.env));
    let mut listen = check_listen(config.as_ref().and_then(|c| c.http.listen));
    if let (Some(pid), Status::Fail) = (daemon_pid, listen.status) {
        // The daemon that is running may well be the one listening there.
        listen.status = Status::Warn;
        listen.detail = format!(
            "{} (the running daemon, pid {pid}, may hold it)",
            listen.detail
        );
    }
    checks.push(listen);
    checks
}

/// `git` and `worktrees`, where a worker (or the pool) runs its tasks in worktrees or worktrees
/// are left: git there and new enough, each such worker's repository a repository, and what
/// `agentq worktrees prune` would act on (read from a SQLite store without writing it; on
/// PostgreSQL `agentq worktrees` says it).
pub async fn check_worktrees(config: &Config, state_dir: &Path, db: Option<&Path>) -> Vec<Check> {
    use agentq_daemon::git;
    let isolated: Vec<&WorkerConfig> = config
        .workers
        .iter()
        .chain(std::iter::once(&config.pool.worker))
        .filter(|w| w.worktree.is_some())
        .collect();
    let root = state_dir.join(agentq_core::worktree::DIR);
    let folders: Vec<String> = std::fs::read_dir(&root)
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if isolated.is_empty() && folders.is_empty() {
        return vec![Check::skip(
            "worktrees",
            "no worker runs its tasks in worktrees (isolation = \"worktree\")",
        )];
    }
    let mut checks = Vec::new();
    let fix = "install git 2.38 or newer (Debian: apt-get install git; Windows: Git for Windows)";
    match git::version().await {
        Ok(v) if v >= git::MIN_VERSION => {
            checks.push(Check::ok("git", format!("{}.{}.{}", v.0, v.1, v.2)))
        }
        Ok(v) => checks.push(Check::fail(
            "git",
            format!(
                "{}.{}.{} is older than {}.{}.{}, which merging a task's change needs (git merge-tree --write-tree)",
                v.0, v.1, v.2, git::MIN_VERSION.0, git::MIN_VERSION.1, git::MIN_VERSION.2
            ),
            fix,
        )),
        Err(e) => checks.push(Check::fail("git", e.to_string(), fix)),
    }
    for w in &isolated {
        let settings = w.worktree.as_ref().expect("filtered");
        let look = settings.repo.as_deref().unwrap_or(&w.cwd);
        let name = format!("worktrees {}", w.name);
        checks.push(match git::top_level(look).await {
            Ok(repo) => Check::ok(&name, format!("repository {}", repo.display())),
            Err(e) => Check::fail(
                &name,
                e.to_string(),
                format!(
                    "make {} a git repository (git init), or set repo = \"...\" on {}",
                    look.display(),
                    if w.name == agentq_daemon::config::POOL {
                        "[pool]".to_string()
                    } else {
                        format!("worker {:?}", w.name)
                    }
                ),
            ),
        });
    }
    let Some(db) = db.filter(|d| d.exists()) else {
        checks.push(Check::skip(
            "worktrees",
            format!(
                "{} folder(s) in {}; `agentq worktrees` lists them with their tasks",
                folders.len(),
                root.display()
            ),
        ));
        return checks;
    };
    let records = match read_worktrees(db) {
        Ok(r) => r,
        Err(e) => {
            checks.push(Check::skip(
                "worktrees",
                format!("cannot read the tasks' worktrees: {e}"),
            ));
            return checks;
        }
    };
    let mut to_prune = Vec::new();
    for name in &folders {
        let named = records.iter().any(|(_, _, wt)| {
            Path::new(&wt.path)
                .file_name()
                .is_some_and(|f| f.to_string_lossy() == *name)
        }) || name
            .strip_prefix("worker-")
            .is_some_and(|w| config.workers.iter().any(|c| c.name == w));
        if !named {
            to_prune.push(format!("{name} (no task names it)"));
        }
    }
    for (id, state, wt) in &records {
        if state.is_terminal() && wt.stage == agentq_core::worktree::Stage::Active {
            to_prune.push(format!("task {id} (ended without its change recorded)"));
        }
    }
    let open = records
        .iter()
        .filter(|(_, _, wt)| wt.stage == agentq_core::worktree::Stage::Ready)
        .count();
    checks.push(if to_prune.is_empty() {
        Check::ok(
            "worktrees",
            format!(
                "{} folder(s), {open} change(s) waiting for review (agentq worktrees)",
                folders.len()
            ),
        )
    } else {
        Check::warn(
            "worktrees",
            format!("{} to prune: {}", to_prune.len(), to_prune.join(", ")),
            "agentq worktrees prune (--dry-run first to see what it does)",
        )
    });
    checks
}

/// The tasks' worktree records in a SQLite store, read-only; none before the schema had them.
fn read_worktrees(
    db: &Path,
) -> rusqlite::Result<
    Vec<(
        i64,
        agentq_core::domain::TaskState,
        agentq_core::worktree::Worktree,
    )>,
> {
    let conn = rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let _ = conn.busy_timeout(Duration::from_secs(2));
    let has_column: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('tasks') WHERE name = 'worktree'")?
        .exists([])?;
    if !has_column {
        return Ok(Vec::new());
    }
    let mut st =
        conn.prepare("SELECT id, state, worktree FROM tasks WHERE worktree IS NOT NULL")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, state, json) = row?;
        if let (Ok(state), Ok(wt)) = (state.parse(), serde_json::from_str(&json)) {
            out.push((id, state, wt));
        }
    }
    Ok(out)
}

/// The report as text: one line per check with its mark, and the fix indented below it.
pub fn render_text(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|c| c.check.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{}  {:<width$}  {}\n",
            c.status.mark(),
            c.check,
            c.detail
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("      {:<width$}  fix: {fix}\n", ""));
        }
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    let (failed, warned) = (count(Status::Fail), count(Status::Warn));
    out.push_str(&match (failed, warned) {
        (0, 0) => "\nall checks passed\n".to_string(),
        (0, w) => format!("\nno check failed; {w} warning(s)\n"),
        (f, w) => format!("\n{f} check(s) failed, {w} warning(s)\n"),
    });
    out
}

/// Finds and loads the config. Also returns the project folder (the config's), known even when
/// the file does not load, so the checks that need only the folder still run.
fn check_config(explicit: Option<&Path>, cwd: &Path) -> (Check, Option<Config>, Option<PathBuf>) {
    const NAME: &str = "config";
    let path = match explicit {
        Some(p) => cwd.join(p),
        None => match Config::find(cwd) {
            Some(p) => p,
            None => {
                let check = Check::fail(
                    NAME,
                    format!("no agentq.toml in {} or any folder above it", cwd.display()),
                    "run `agentq init` in the project folder, or pass --config PATH",
                );
                return (check, None, None);
            }
        },
    };
    let root = path.parent().map(Path::to_path_buf);
    if explicit.is_some() && !path.is_file() {
        let check = Check::fail(
            NAME,
            format!("{} does not exist", path.display()),
            "give --config (or AGENTQ_CONFIG) the path of an agentq.toml, or create one there with `agentq init`",
        );
        return (check, None, None);
    }
    match Config::load(&path) {
        Ok(config) => {
            let workers = config.workers.len();
            let pool = if config.pool.defined {
                " and a pool"
            } else {
                ""
            };
            let check = Check::ok(
                NAME,
                format!("{}: {workers} worker(s){pool}", config.path.display()),
            );
            (check, Some(config), root)
        }
        Err(e) => {
            let fix = match e {
                Error::Config { .. } => {
                    "correct agentq.toml where the message points (README.md lists every setting)"
                }
                _ => "make the file readable by this user",
            };
            (Check::fail(NAME, e.to_string(), fix), None, root)
        }
    }
}

/// The file systems of the project's state folder and results folder (each, or the folder above
/// it that exists): FAIL with less free than a daemon needs to claim tasks (`min_free_space`, at
/// least [`space::FLOOR`]), naming the folder, its free space and what to do; OK with each one's
/// free space.
pub fn check_disk(root: &Path, min_free_space: u64) -> Check {
    const NAME: &str = "disk";
    let needed = space::needed(min_free_space);
    let mut found = Vec::new();
    for path in space::folders(root) {
        match pfs::free_space(&path) {
            Ok(free) if free < needed => {
                let low = space::Low {
                    path,
                    free_bytes: free,
                    needed_bytes: needed,
                };
                return Check::fail(
                    NAME,
                    format!(
                        "{}: a daemon claims no task until there is room",
                        low.describe()
                    ),
                    format!("{}; a running daemon resumes by itself", space::FIX),
                );
            }
            Ok(free) => found.push(format!("{} {} free", path.display(), space::human(free))),
            Err(e) => {
                return Check::warn(
                    NAME,
                    format!("cannot read the free space of {}: {e}", path.display()),
                    "make the folder (or the one above it) readable by this user; a daemon still \
                     pauses claiming when a write finds the disk full",
                );
            }
        }
    }
    Check::ok(
        NAME,
        format!(
            "{} ({} needed: min_free_space)",
            found.join(", "),
            space::human(needed)
        ),
    )
}

/// The state folder: present, writable by this user and private (it holds prompts, results and
/// logs). A missing folder is only a warning: the first command that needs it creates it.
pub fn check_state_dir(dir: &Path) -> Check {
    const NAME: &str = "state folder";
    let shown = dir.display();
    let meta = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Check::warn(
                NAME,
                format!("{shown} is not created yet"),
                format!(
                    "`agentq init` or the first `agentq run` creates it ({})",
                    pfs::private_access()
                ),
            );
        }
        Err(e) => {
            return Check::fail(
                NAME,
                format!("cannot look at {shown}: {e}"),
                "make the folders above it readable by this user",
            );
        }
    };
    if !meta.is_dir() {
        return Check::fail(
            NAME,
            format!("{shown} is not a folder"),
            format!("move {shown} away; agentq creates the folder it needs"),
        );
    }
    let exposure = pfs::exposure(dir);
    let access = match &exposure {
        Ok(pfs::Exposure::Open(what)) => what.clone(),
        _ => pfs::private_access().into(),
    };
    if let Err(e) = pfs::writable_dir(dir) {
        return Check::fail(
            NAME,
            format!("{shown} is not writable by this user ({access}): {e}"),
            format!(
                "run agentq as the user who owns it, or take it over: {}",
                pfs::how_to_take_over(&shown.to_string())
            ),
        );
    }
    match exposure {
        Ok(pfs::Exposure::Open(what)) => Check::fail(
            NAME,
            format!("{shown} has {what}: other users can read the prompts, results and logs in it"),
            format!(
                "make it private: {}",
                pfs::how_to_make_private(&shown.to_string())
            ),
        ),
        Ok(pfs::Exposure::Private) => Check::ok(NAME, format!("{shown} ({access}, writable)")),
        Err(e) => Check::warn(
            NAME,
            format!("cannot read who may open {shown}: {e}"),
            "check the folder's permissions by hand",
        ),
    }
}

/// The database: whole (`PRAGMA integrity_check`), and of a schema this binary can use. Opened
/// read-only; a missing database is fine (the first command that needs it creates it).
pub fn check_database(db: &Path) -> Vec<Check> {
    const NAME: &str = "database";
    const SCHEMA: &str = "schema";
    let shown = db.display();
    if !db.exists() {
        return vec![Check::ok(NAME, format!("{shown}: not created yet"))];
    }
    let unreadable = |what: String| {
        vec![Check::fail(
            NAME,
            what,
            "stop the daemon, move the file aside (keep it: the queue is in it) and let agentq create a new one; `sqlite3 OLD .recover | sqlite3 NEW` may save its tasks",
        )]
    };
    let conn = match rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => return unreadable(format!("cannot open {shown}: {e}")),
    };
    let _ = conn.busy_timeout(Duration::from_secs(2));
    let problems: rusqlite::Result<Vec<String>> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect());
    let problems = match problems {
        Ok(p) => p,
        Err(e) => return unreadable(format!("cannot check {shown}: {e}")),
    };
    let mut checks = Vec::new();
    if problems.len() == 1 && problems[0] == "ok" {
        checks.push(Check::ok(NAME, format!("{shown}: integrity ok")));
    } else {
        let first = problems.first().cloned().unwrap_or_default();
        checks.extend(unreadable(format!(
            "{shown} is damaged: integrity_check found {} problem(s), first: {first}",
            problems.len()
        )));
    }
    let known = agentq_store::sqlite::SCHEMA_VERSION;
    match conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0)) {
        Ok(v) if v == known => {
            checks.push(Check::ok(SCHEMA, format!("version {v}, as this agentq")))
        }
        Ok(v) if v < known => checks.push(Check::ok(
            SCHEMA,
            format!("version {v}; this agentq upgrades it to {known} when it next opens it"),
        )),
        Ok(v) => checks.push(Check::fail(
            SCHEMA,
            format!("version {v}, newer than this agentq understands ({known})"),
            "run the newer agentq that wrote it (upgrade this one)",
        )),
        Err(e) => checks.push(Check::fail(
            SCHEMA,
            format!("cannot read the schema version of {shown}: {e}"),
            "see the database check above",
        )),
    }
    checks
}

/// The PostgreSQL database the project uses, if it uses one: from the config, or, when the config
/// does not load, from `AGENTQ_DATABASE_URL` or the file's `[store] url` read on its own.
fn store_url(
    config: Option<&Config>,
    explicit: Option<&Path>,
    cx: &Context,
) -> Option<agentq_store::url::DatabaseUrl> {
    use agentq_daemon::config::{DATABASE_URL_ENV, StoreSettings};
    use agentq_store::url::DatabaseUrl;
    if let Some(config) = config {
        return match &config.store {
            StoreSettings::Postgres(url) => Some(url.clone()),
            StoreSettings::Sqlite => None,
        };
    }
    if let Some(text) = cx
        .env
        .get(DATABASE_URL_ENV)
        .filter(|t| !t.trim().is_empty())
    {
        return DatabaseUrl::parse(text, DATABASE_URL_ENV).ok();
    }
    let path = match explicit {
        Some(p) => cx.cwd.join(p),
        None => Config::find(&cx.cwd)?,
    };
    let table: toml::Table = std::fs::read_to_string(path).ok()?.parse().ok()?;
    let url = table.get("store")?.get("url")?.as_str()?;
    DatabaseUrl::parse(url, "[store] url").ok()
}

/// A PostgreSQL store: reachable with these credentials, of a schema this binary can use, and
/// whether the connection is encrypted. Read-only: it creates nothing. The URL is shown without
/// its password.
pub async fn check_postgres(url: &agentq_store::url::DatabaseUrl, limit: Duration) -> Vec<Check> {
    const NAME: &str = "database";
    const SCHEMA: &str = "schema";
    const TLS: &str = "encryption";
    let shown = url.redacted();
    let found = match agentq_store::postgres::inspect(url, limit).await {
        Ok(found) => found,
        Err(e) => {
            let tls = match &e {
                Error::Postgres { about, message, .. } => {
                    *about == "setting up TLS"
                        || message.contains("TLS")
                        || message.contains("certificate")
                }
                _ => false,
            };
            let fix = match tls {
                true => format!(
                    "correct the TLS settings of {} (sslmode, sslrootcert, sslcert, sslkey) as the message says",
                    url.origin
                ),
                false => format!(
                    "start the PostgreSQL server, or correct {} (host, port, user, password, database name); `psql` with the same settings shows what it says",
                    url.origin
                ),
            };
            return vec![
                Check::fail(NAME, e.to_string(), fix),
                Check::skip(SCHEMA, "needs the database"),
                Check::skip(TLS, "needs the database"),
            ];
        }
    };
    let (server, version) = (found.server, found.schema);
    let known = agentq_store::postgres::SCHEMA_VERSION;
    let schema = match version {
        None => Check::ok(
            SCHEMA,
            "no agentq schema yet; the first command that opens the store creates it",
        ),
        Some(v) if v == known => Check::ok(SCHEMA, format!("version {v}, as this agentq")),
        Some(v) if v < known => Check::ok(
            SCHEMA,
            format!("version {v}; this agentq upgrades it to {known} when it next opens it"),
        ),
        Some(v) => Check::fail(
            SCHEMA,
            format!("version {v}, newer than this agentq understands ({known})"),
            "run the newer agentq that wrote it (upgrade this one)",
        ),
    };
    vec![
        Check::ok(NAME, format!("{shown}: PostgreSQL {server}, connected")),
        schema,
        check_encryption(url, found.tls.as_deref()),
    ]
}

/// Whether the store's connection is encrypted (`tls`: its TLS version and cipher, as the
/// server sees them) and the server's certificate checked: a warning when the password and the
/// queue cross a network in clear, or to a server whose certificate nothing checks; either is
/// fine on this machine (loopback, a Unix socket).
fn check_encryption(url: &agentq_store::url::DatabaseUrl, tls: Option<&str>) -> Check {
    use agentq_store::tls::{SslMode, checks_certificate, verification};
    const NAME: &str = "encryption";
    use tokio_postgres::config::Host;
    let settings = url.tls();
    let config: Option<tokio_postgres::Config> = url.for_driver().parse().ok();
    let hosts = config.as_ref().map(|c| c.get_hosts()).unwrap_or_default();
    let socket = !hosts.is_empty() && hosts.iter().all(|h| !matches!(h, Host::Tcp(_)));
    // On this machine: every address given is loopback, or (none given) every host is.
    let loopback = |name: &str| {
        name == "localhost" || (name.parse::<std::net::IpAddr>()).is_ok_and(|a| a.is_loopback())
    };
    let local = socket
        || config.as_ref().is_some_and(|c| match c.get_hostaddrs() {
            [] => {
                !hosts.is_empty()
                    && hosts.iter().all(|h| match h {
                        Host::Tcp(name) => loopback(name),
                        #[cfg(unix)]
                        Host::Unix(_) => true,
                    })
            }
            addrs => addrs.iter().all(|a| a.is_loopback()),
        });
    let checked = checks_certificate(settings);
    match tls {
        Some(tls) if checked || local => {
            Check::ok(NAME, format!("TLS ({tls}); {}", verification(settings)))
        }
        Some(tls) => Check::warn(
            NAME,
            format!("TLS ({tls}), but {}", verification(settings)),
            format!(
                "set sslmode=verify-full and sslrootcert (the PEM file of the CA that signed the server's certificate; a managed database's provider publishes it) in {}",
                url.origin
            ),
        ),
        None if socket => Check::ok(NAME, "none: a Unix socket, which stays on this machine"),
        None if settings.mode == SslMode::Disable => Check::ok(NAME, "none (sslmode=disable)"),
        None if local => Check::ok(
            NAME,
            format!(
                "none: the server offers no TLS (sslmode={}); the connection stays on this machine",
                settings.mode.name()
            ),
        ),
        None => Check::warn(
            NAME,
            format!(
                "none: the server offers no TLS, and sslmode={} goes on without it: the password and the queue cross the network in clear",
                settings.mode.name()
            ),
            format!(
                "turn TLS on in the server (ssl = on), then set sslmode=verify-full and sslrootcert in {}; or set sslmode=disable to say a plain connection is meant (a trusted network, an SSH tunnel)",
                url.origin
            ),
        ),
    }
}

/// Whether a daemon holds the folder; informational either way.
fn check_daemon(state_dir: &Path) -> (Check, Option<i32>) {
    const NAME: &str = "daemon";
    if !state_dir.is_dir() {
        return (Check::ok(NAME, "not running"), None);
    }
    match agentq_core::state::holder(state_dir) {
        Ok(Some(pid)) => (Check::ok(NAME, format!("running (pid {pid})")), Some(pid)),
        Ok(None) => (
            Check::ok(
                NAME,
                "not running (start it with `agentq run`, or as a service: `agentq service install`)",
            ),
            None,
        ),
        Err(e) => (
            Check::warn(
                NAME,
                format!("cannot tell: {e}"),
                "make the state folder's daemon.lock readable and writable by this user",
            ),
            None,
        ),
    }
}

/// How long the service manager may take to answer doctor.
pub const SERVICE_TIMEOUT: Duration = Duration::from_secs(5);

/// [`check_service`] with the real service manager, off the async threads.
/// What keeps an attempt's processes from outliving it, and why: as the running daemon settled
/// it (`running`: its pid and what it wrote in `.agentq/containment`), or else as a daemon started
/// now would (a cgroup where one may be divided, found without changing anything). Where a keeper
/// is used (with or without a cgroup), that it works here: a keeper runs a shell that leaves a
/// `setsid` sleeper behind and exits; the sleeper must be gone when the keeper is.
pub fn check_containment(
    containment: agentq_daemon::config::Containment,
    cgroup: Option<&Path>,
    running: Option<(i32, String)>,
) -> Check {
    use agentq_daemon::config::{Contained, Containment};
    const NAME: &str = "containment";
    let what = match running {
        Some((pid, text)) => format!("the running daemon (pid {pid}) uses {text}"),
        None => {
            let mut contained = Contained::without_cgroups(containment);
            if cfg!(target_os = "linux")
                && matches!(containment, Containment::Auto | Containment::Cgroup)
            {
                match agentq_platform::process::cgroup::find(cgroup) {
                    Ok(found) => {
                        return Check::ok(
                            NAME,
                            format!(
                                "a daemon started now would put each attempt in a cgroup v2 under {} ({}; controllers offered: {}), each under a keeper",
                                found.dir.display(),
                                found.why,
                                if found.controllers.is_empty() {
                                    "none of memory, pids".to_string()
                                } else {
                                    found.controllers.join(", ")
                                }
                            ),
                        );
                    }
                    Err(why) if containment == Containment::Cgroup => {
                        return Check::fail(
                            NAME,
                            format!(
                                "[daemon] containment = \"cgroup\", but there is no cgroup to use: {why}"
                            ),
                            "run agentq as a systemd service (`agentq service install` sets Delegate=yes), name a cgroup v2 folder this user may write in [daemon] cgroup, or set containment = \"auto\"",
                        );
                    }
                    Err(why) => contained.no_cgroup = Some(why),
                }
            }
            format!("a daemon started now would use {}", contained.describe())
        }
    };
    if cfg!(windows) {
        return Check::ok(NAME, what);
    }
    if containment == Containment::Group {
        return Check::warn(
            NAME,
            what,
            "remove `containment` from [daemon] (or set it to \"auto\") to end what an agent starts with its attempt",
        );
    }
    if !agentq_platform::process::Keep::AVAILABLE {
        return Check::warn(
            NAME,
            what,
            "on Linux, agentq ends everything an attempt started, wherever it went",
        );
    }
    match probe_keeper() {
        Ok(()) => Check::ok(
            NAME,
            format!("{what}; checked: a setsid child ended with its attempt"),
        ),
        Err(e) => Check::fail(
            NAME,
            format!("{what}, but it does not work here: {e}"),
            "set [daemon] containment = \"group\" to run agents without a keeper, and report this",
        ),
    }
}

#[cfg(unix)]
fn probe_keeper() -> std::result::Result<(), String> {
    let keep = agentq_platform::process::Keep {
        exe: std::env::current_exe().map_err(|e| format!("cannot find agentq itself: {e}"))?,
        grace: Duration::from_millis(200),
        max_processes: None,
        cgroups: None,
    };
    let mut sh = std::process::Command::new("sh");
    sh.args(["-c", "setsid sleep 30 </dev/null >/dev/null 2>&1 & echo $!"]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        use tokio::io::AsyncReadExt;
        let mut spawned = agentq_platform::process::spawn_kept(sh, Some(&keep))
            .map_err(|e| format!("cannot start a keeper: {e}"))?;
        drop(spawned.stdin.take());
        let mut out = String::new();
        if let Some(mut stdout) = spawned.stdout.take() {
            let _ =
                tokio::time::timeout(Duration::from_secs(5), stdout.read_to_string(&mut out)).await;
        }
        let exit = tokio::time::timeout(Duration::from_secs(5), spawned.child.wait())
            .await
            .map_err(|_| "the keeper did not end within 5 s".to_string())?;
        let sleeper: u32 = out
            .trim()
            .parse()
            .map_err(|_| format!("the probe printed {out:?}, not a pid ({exit:?})"))?;
        if agentq_platform::process::stat(sleeper as i32).is_some_and(|p| p.state != 'Z') {
            // SAFETY: kill takes plain integers; this is the probe's own sleeper.
            unsafe { libc::kill(sleeper as i32, libc::SIGKILL) };
            return Err(format!("its setsid child {sleeper} outlived it"));
        }
        Ok(())
    })
}

#[cfg(not(unix))]
fn probe_keeper() -> std::result::Result<(), String> {
    Ok(())
}

async fn check_service_now(config: &Config, cx: &Context) -> Check {
    let (config, env) = (config.clone(), cx.env.clone());
    tokio::task::spawn_blocking(move || {
        check_service(&config, &env, &mut |argv| {
            crate::service::run_tool(argv, SERVICE_TIMEOUT)
        })
    })
    .await
    .unwrap_or_else(|e| Check::skip("service", format!("cannot tell: {e}")))
}

/// Whether a service runs agentq for this folder (`agentq service install`): the user's or the
/// system's unit (launchd job; on Windows, the task), and what its manager, asked through `run`,
/// says of it. None is no failure (`agentq run` by hand does as well), so it is a skipped check;
/// one that is installed but not enabled or not running is a warning with its fix.
pub fn check_service(
    config: &Config,
    env: &BTreeMap<String, String>,
    run: &mut crate::service::Run,
) -> Check {
    use crate::service::{self, Answer, Found, Kind, Service};
    const NAME: &str = "service";
    let env = |key: &str| env.get(key).cloned();
    let exe = std::env::current_exe().unwrap_or_else(|_| "agentq".into());
    let path_env = env("PATH").unwrap_or_default();
    let mut plans: Vec<(Service, service::Plan)> = Vec::new();
    for user in [true, false] {
        let svc = Service::for_config(config, exe.clone(), path_env.clone(), user);
        match service::plan(&svc, &env) {
            Ok(plan) if !plans.iter().any(|(_, p)| p.path == plan.path) => plans.push((svc, plan)),
            Ok(_) => {}
            // No HOME: no user service to look for. No kind of service on this system at all:
            Err(e) if plans.is_empty() && !user => return Check::skip(NAME, e.to_string()),
            Err(_) => {}
        }
    }
    for (svc, plan) in &plans {
        let place = match plan.kind {
            Kind::Task => format!("task {} ({})", plan.name, plan.path.display()),
            Kind::Systemd | Kind::Launchd => format!("{} {}", plan.what(), plan.path.display()),
        };
        match service::found(plan, &svc.root) {
            Ok(Found::Nothing) => {}
            Ok(Found::Ours) => {
                return match service::ask(plan, run) {
                    Answer::Fine(said) => Check::ok(NAME, format!("{place}: {said}")),
                    Answer::Unknown(why) => {
                        Check::ok(NAME, format!("{place} (its state is unknown: {why})"))
                    }
                    Answer::Amiss { said, fix } => {
                        Check::warn(NAME, format!("{place}: {said}"), fix)
                    }
                };
            }
            Ok(Found::Other(folder)) => {
                return Check::warn(
                    NAME,
                    format!(
                        "{place} runs agentq {}, not in this folder",
                        folder.map_or("in no folder it names".into(), |f| format!("in {f}"))
                    ),
                    "it is another folder's: remove it there (`agentq service uninstall`), or replace it with `agentq service install --force`",
                );
            }
            Err(e) => {
                return Check::warn(
                    NAME,
                    e.to_string(),
                    format!("make {} readable by this user", plan.path.display()),
                );
            }
        }
    }
    Check::skip(
        NAME,
        "none installed for this folder (`agentq service install` starts it at boot or logon)",
    )
}

/// Several daemons, one queue: which daemons are on the store, and what would keep a worker of
/// this project from running. Warns when this project's host id is taken by a daemon that is not
/// this folder's (its `agentq run` would be refused: two folders of one machine default to the
/// same id), and for each worker pinned to a host id no daemon on the store runs under (its tasks
/// wait). Read-only: it looks only at a schema this agentq wrote.
pub async fn check_hosts(
    url: &agentq_store::url::DatabaseUrl,
    config: &Config,
    daemon_pid: Option<i32>,
) -> Check {
    use agentq_store::Store;
    const NAME: &str = "hosts";
    let known = agentq_store::postgres::SCHEMA_VERSION;
    match agentq_store::postgres::inspect(url, DB_TIMEOUT).await {
        Ok(found) if found.schema == Some(known) => {}
        Ok(_) => return Check::skip(NAME, "needs the store at this agentq's schema version"),
        Err(_) => return Check::skip(NAME, "needs the database"),
    }
    let store = match agentq_store::postgres::PgStore::connect(url).await {
        Ok(store) => store,
        Err(e) => return Check::skip(NAME, format!("cannot read them: {e}")),
    };
    let now = agentq_store::now_ms();
    let hosts = match store.hosts(now).await {
        Ok(hosts) => hosts,
        Err(e) => return Check::skip(NAME, format!("cannot read them: {e}")),
    };
    let me = &config.daemon.host;
    let listed = match hosts.is_empty() {
        true => "no daemon on this store".to_string(),
        false => hosts
            .iter()
            .map(|h| {
                let up =
                    std::time::Duration::from_secs(((now - h.started_at).max(0) / 1000) as u64);
                format!(
                    "{} (pid {}, up {})",
                    h.host,
                    h.pid,
                    humantime::format_duration(up)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    };
    let detail = format!("{listed}; this project's host id is {me}");
    if let Some(other) = hosts.iter().find(|h| &h.host == me)
        && daemon_pid.is_none_or(|pid| i64::from(pid) != other.pid)
    {
        return Check::warn(
            NAME,
            detail,
            format!(
                "host id {me} is taken by another daemon (pid {}), not this folder's: `agentq run` here would be refused; give this folder's daemon an id of its own with [daemon] host or `agentq run --host`",
                other.pid
            ),
        );
    }
    let stranded: Vec<String> = config
        .workers
        .iter()
        .filter_map(|w| {
            let pin = w.host.as_ref()?;
            let runs = hosts.iter().any(|h| &h.host == pin) || (pin == me && daemon_pid.is_some());
            (!runs).then(|| format!("{} (pinned to {pin})", w.name))
        })
        .collect();
    if !stranded.is_empty() {
        return Check::warn(
            NAME,
            format!("{detail}; no daemon runs {}", stranded.join(", ")),
            "start `agentq run` on the host each is pinned to (or with --host that id), or change its `host`; until then its tasks wait",
        );
    }
    Check::ok(NAME, detail)
}

/// A worker's (or the pool's) working folder and agent, found and started as the daemon would.
async fn check_worker(w: &WorkerConfig, cx: &Context) -> Vec<Check> {
    let label = if w.name == POOL {
        "pool".to_string()
    } else {
        format!("worker {}", w.name)
    };
    let mut checks = Vec::new();
    // `cwd = "."` is stored as `<root>/.`; show it as the folder it is.
    let cwd: PathBuf = w.cwd.components().collect();
    let cwd = cwd.display();
    checks.push(if w.cwd.is_dir() {
        Check::ok(&format!("{label}: cwd"), format!("{cwd}"))
    } else {
        Check::fail(
            &format!("{label}: cwd"),
            format!("the working folder {cwd} does not exist"),
            format!("create it (`mkdir -p {cwd}`), or correct cwd in agentq.toml"),
        )
    });
    let name = format!("{label}: agent");
    // As Command::spawn looks a bare name up: on the child's PATH when its env sets one.
    let path_var = w.env.get("PATH").or(cx.env.get("PATH")).map(String::as_str);
    let driver = w.agent.driver();
    let check = match &w.agent {
        Agent::Command(command) => {
            let program = command.argv.first().map(String::as_str).unwrap_or("");
            match find_program(program, &w.cwd, path_var) {
                Ok(found) => {
                    Check::ok(&name, format!("command {program:?} is {}", found.display()))
                }
                Err((detail, fix)) => Check::fail(&name, detail, fix),
            }
        }
        _ => {
            let over = driver
                .bin_variable()
                .and_then(|v| cx.env.get(v))
                .map(String::as_str);
            let bin = driver.program_with(over);
            let bin = bin.to_string_lossy();
            match find_program(&bin, &w.cwd, path_var) {
                // Its tasks wait (the worker pauses) until it is installed.
                Err((detail, _)) => Check::fail(
                    &name,
                    format!("{detail}; the worker's tasks wait until it is installed"),
                    driver.install_advice(),
                ),
                Ok(found) => match agent_version(driver, &found, w, cx).await {
                    Ok(version) => {
                        let tested = match driver.tested_version() {
                            Some(t) if !version.contains(t) => {
                                format!("; agentq is tested with {t}")
                            }
                            _ => String::new(),
                        };
                        Check::ok(
                            &name,
                            format!("{} {version} ({}){tested}", driver.name(), found.display()),
                        )
                    }
                    Err((detail, fix)) => Check::fail(&name, detail, fix),
                },
            }
        }
    };
    checks.push(check);
    checks
}

/// Where `program` is: a name with a `/` is a path (relative to the worker's `cwd`, where it is
/// started), a bare name is looked up on `path_var`. The error is what is wrong and its fix.
pub fn find_program(
    program: &str,
    cwd: &Path,
    path_var: Option<&str>,
) -> std::result::Result<PathBuf, (String, String)> {
    let config_fix = "install it, or correct the command in agentq.toml (a bare name is looked up on PATH, a path is relative to the worker's cwd)";
    if program.is_empty() {
        return Err(("the command is empty".into(), config_fix.into()));
    }
    if pfs::is_path(program) {
        let path = cwd.join(program);
        return match std::fs::metadata(&path) {
            Err(e) => Err((
                format!("{} cannot be run: {e}", path.display()),
                config_fix.into(),
            )),
            Ok(m) if !m.is_file() => Err((
                format!("{} is not a file", path.display()),
                config_fix.into(),
            )),
            Ok(m) if !pfs::is_executable(&path, &m) => Err((
                format!("{} is not executable", path.display()),
                if cfg!(windows) {
                    "name an .exe, .cmd or .bat (an extension PATHEXT lists)".to_string()
                } else {
                    format!("`chmod +x {}`", path.display())
                },
            )),
            Ok(_) => Ok(path),
        };
    }
    let found = path_var.and_then(|p| pfs::find_on_path(program, p.as_ref()));
    found.ok_or_else(|| {
        (
            match path_var {
                Some(p) => format!("{program:?} is not on PATH ({p})"),
                None => format!("{program:?} cannot be looked up: PATH is not set"),
            },
            config_fix.into(),
        )
    })
}

/// Runs `<bin> --version` as the daemon would start the agent (the worker's env and cwd, the
/// driver's own variables, without a parent session's): proof that it starts, and the version it
/// prints.
pub async fn agent_version(
    driver: &dyn agentq_agents::Driver,
    bin: &Path,
    w: &WorkerConfig,
    cx: &Context,
) -> std::result::Result<String, (String, String)> {
    let shown = bin.display();
    let env = driver.environment(&cx.env);
    let mut cmd = tokio::process::Command::new(bin);
    for key in env.remove.iter().filter(|k| !w.env.contains_key(*k)) {
        cmd.env_remove(key);
    }
    cmd.arg("--version")
        .envs(&env.set)
        .envs(&w.env)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    if w.cwd.is_dir() {
        cmd.current_dir(&w.cwd);
    }
    let by_hand = format!(
        "run `{shown} --version` by hand and fix what it says (reinstall {} if it is broken)",
        driver.title()
    );
    match tokio::time::timeout(cx.version_timeout, cmd.output()).await {
        Err(_) => Err((
            format!(
                "`{shown} --version` did not finish within {}",
                humantime::format_duration(cx.version_timeout)
            ),
            by_hand,
        )),
        Ok(Err(e)) => Err((format!("could not start {shown}: {e}"), by_hand)),
        Ok(Ok(out)) if !out.status.success() => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            Err((
                format!("`{shown} --version` ended with {}: {tail}", out.status),
                by_hand,
            ))
        }
        Ok(Ok(out)) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            Ok(stdout
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or("(it printed no version)")
                .to_string())
        }
    }
}

/// A parent Claude Code session's variables in doctor's environment: agents do not get them
/// (unless a worker's env sets them), which is right, but worth knowing when a worker behaves
/// differently under the daemon than by hand.
pub fn check_markers(env: &BTreeMap<String, String>, workers: &[&WorkerConfig]) -> Check {
    const NAME: &str = "parent session";
    let found = agentq_agents::claude::inherited_markers(env, &BTreeMap::new());
    if found.is_empty() {
        return Check::ok(NAME, "no Claude Code session variables in this environment");
    }
    let mut detail = format!(
        "{} set here (started from a Claude Code session?); they are removed before agents start",
        found.join(", ")
    );
    for w in workers {
        let kept: Vec<&str> = found
            .iter()
            .filter(|k| w.env.contains_key(*k))
            .map(String::as_str)
            .collect();
        if !kept.is_empty() {
            detail.push_str(&format!(
                "; {} sets {} in its env and keeps it",
                w.name,
                kept.join(", ")
            ));
        }
    }
    Check::warn(
        NAME,
        detail,
        "nothing, if that is what you want; run agentq outside Claude Code to silence this, or set a variable in [worker.env] for an agent that needs it",
    )
}

/// Gemini CLI 0.61's start-up clean-up can delete a resumed session when another session runs in
/// the same folder (checked against the pinned version): another worker, the worker's own tasks
/// in the pool, a person running gemini there. A Gemini worker should turn that clean-up off in
/// Gemini's settings.json. `None` without Gemini workers.
pub fn check_gemini_sessions(
    env: &BTreeMap<String, String>,
    workers: &[&WorkerConfig],
) -> Option<Check> {
    const NAME: &str = "gemini sessions";
    let gemini: Vec<&WorkerConfig> = workers
        .iter()
        .copied()
        .filter(|w| matches!(w.agent, Agent::Gemini(_)))
        .collect();
    if gemini.is_empty() {
        return None;
    }
    let mut at_risk = Vec::new();
    for w in &gemini {
        let var = |k: &str| w.env.get(k).or(env.get(k)).cloned();
        let home = var("GEMINI_CLI_HOME")
            .or_else(|| var("HOME"))
            .unwrap_or_default();
        let settings = Path::new(&home).join(".gemini/settings.json");
        let kept = std::fs::read_to_string(&settings)
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v.pointer("/general/sessionRetention/enabled")?.as_bool())
            == Some(false);
        if !kept {
            at_risk.push(format!("{} ({})", w.name, settings.display()));
        }
    }
    Some(if at_risk.is_empty() {
        Check::ok(
            NAME,
            "every Gemini worker's settings keep its sessions (sessionRetention off)",
        )
    } else {
        Check::warn(
            NAME,
            format!(
                "{}: Gemini's start-up clean-up may delete a resumed conversation when another Gemini session runs in the same folder (another worker, a pool task, a person)",
                at_risk.join(", ")
            ),
            "set \"general\": {\"sessionRetention\": {\"enabled\": false}} in that settings.json (agentq then starts a new conversation, losing the context)",
        )
    })
}

/// Claude Code on Windows needs Git Bash; elsewhere there is nothing to check.
pub fn check_git_bash(env: &BTreeMap<String, String>) -> Check {
    const NAME: &str = "git bash";
    #[cfg(windows)]
    {
        if let Some(p) = env.get("CLAUDE_CODE_GIT_BASH_PATH") {
            return Check::ok(NAME, format!("{p} (CLAUDE_CODE_GIT_BASH_PATH)"));
        }
        match agentq_agents::claude::find_git_bash(env, &|p| Path::new(p).is_file()) {
            Some(p) => Check::ok(NAME, p),
            None => Check::fail(
                NAME,
                "Git Bash (bash.exe of Git for Windows) not found",
                "install Git for Windows (https://git-scm.com/download/win), or set CLAUDE_CODE_GIT_BASH_PATH to its bash.exe",
            ),
        }
    }
    #[cfg(not(windows))]
    {
        let _ = env;
        Check::skip(NAME, "only Claude Code on Windows needs it")
    }
}

/// Whether the HTTP API could listen on `addr` (bound and let go at once); `None` is "API off".
pub fn check_listen(addr: Option<SocketAddr>) -> Check {
    const NAME: &str = "http port";
    let Some(addr) = addr else {
        return Check::skip(NAME, "HTTP API off");
    };
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Check::ok(NAME, format!("{addr} is free")),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Check::fail(
            NAME,
            format!("{addr} is in use: {e}"),
            format!(
                "stop what listens there (`ss -ltnp 'sport = :{}'` names it), or choose another [http] listen",
                addr.port()
            ),
        ),
        Err(e) => Check::fail(
            NAME,
            format!("cannot listen on {addr}: {e}"),
            "choose an address of this machine for [http] listen, and a port above 1023 unless agentq runs as root",
        ),
    }
}

// Unix tests: they make shell-script agents and set modes (the Windows suite checks doctor
// through the binary).
#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[tokio::test]
    async fn worktrees_need_git_a_repository_and_say_what_to_prune() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let text = "[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = [\"cat\"]\nisolation = \"worktree\"\nrepo = \"repo\"\n";
        let config = Config::parse(&root.join("agentq.toml"), text).unwrap();
        let state = root.join(STATE_DIR);
        std::fs::create_dir_all(root.join("repo")).unwrap();
        let checks = check_worktrees(&config, &state, None).await;
        let repo_check = checks.iter().find(|c| c.check == "worktrees w").unwrap();
        assert_eq!(repo_check.status, Status::Fail, "{checks:?}");
        assert!(
            repo_check.fix.as_deref().unwrap().contains("git init"),
            "{checks:?}"
        );
        assert_eq!(checks[0].check, "git");
        assert_eq!(checks[0].status, Status::Ok, "{checks:?}");

        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .args(args)
                .current_dir(root.join("repo"))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        };
        git(&["init", "-q"]);
        git(&[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@e",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "x",
        ]);
        // A folder no task names, in a store that knows no task.
        std::fs::create_dir_all(state.join("worktrees/77")).unwrap();
        let store = agentq_store::sqlite::SqliteStore::open(&state.join(DB_FILE)).unwrap();
        drop(store);
        let checks = check_worktrees(&config, &state, Some(&state.join(DB_FILE))).await;
        let repo_check = checks.iter().find(|c| c.check == "worktrees w").unwrap();
        assert_eq!(repo_check.status, Status::Ok, "{checks:?}");
        let prune = checks.iter().find(|c| c.check == "worktrees").unwrap();
        assert_eq!(prune.status, Status::Warn, "{checks:?}");
        assert!(prune.detail.contains("77 (no task names it)"), "{prune:?}");
        assert!(
            prune
                .fix
                .as_deref()
                .unwrap()
                .contains("agentq worktrees prune")
        );
    }
    use agentq_store::Store;
    use std::os::unix::fs::PermissionsExt;

    fn private_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    fn context(env: &[(&str, &str)]) -> Context {
        Context {
            cwd: PathBuf::from("/"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            version_timeout: Duration::from_millis(500),
        }
    }

    fn worker(cwd: &Path, agent: Agent, env: &[(&str, &str)]) -> WorkerConfig {
        let text = "[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = [\"true\"]\n";
        let config = Config::parse(&cwd.join("agentq.toml"), text).unwrap();
        let mut w = config.workers[0].clone();
        w.cwd = cwd.to_path_buf();
        w.agent = agent;
        w.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        w
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn gemini_workers_are_warned_unless_the_session_clean_up_is_off() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path().join("home");
        std::fs::create_dir_all(home.join(".gemini")).unwrap();
        let gemini = |name: &str| {
            let mut w = worker(
                d.path(),
                Agent::Gemini(Box::default()),
                &[("GEMINI_CLI_HOME", home.to_str().unwrap())],
            );
            w.name = name.into();
            w
        };
        let (a, b) = (gemini("a"), gemini("b"));
        assert!(check_gemini_sessions(&BTreeMap::new(), &[]).is_none());
        assert_eq!(
            check_gemini_sessions(&BTreeMap::new(), &[&a])
                .unwrap()
                .status,
            Status::Warn,
            "alone in its folder, a pool task or a person may still run gemini there"
        );
        let shared = check_gemini_sessions(&BTreeMap::new(), &[&a, &b]).unwrap();
        assert_eq!(shared.status, Status::Warn, "{shared:?}");
        assert!(shared.detail.contains("a ("), "{shared:?}");
        std::fs::write(
            home.join(".gemini/settings.json"),
            r#"{"general": {"sessionRetention": {"enabled": false}}}"#,
        )
        .unwrap();
        assert_eq!(
            check_gemini_sessions(&BTreeMap::new(), &[&a, &b])
                .unwrap()
                .status,
            Status::Ok
        );
    }

    #[test]
    fn a_private_state_folder_passes_and_an_open_one_names_the_chmod() {
        let d = private_dir();
        assert_eq!(check_state_dir(d.path()).status, Status::Ok);

        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = check_state_dir(d.path());
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("0755"), "{c:?}");
        assert_eq!(
            c.fix.as_deref(),
            Some(format!("make it private: `chmod 700 {}`", d.path().display()).as_str())
        );

        let missing = check_state_dir(&d.path().join("nope"));
        assert_eq!(missing.status, Status::Warn);
        assert!(missing.detail.contains("not created yet"), "{missing:?}");
    }

    #[tokio::test]
    async fn a_database_is_checked_whole_and_its_schema_compared() {
        let d = private_dir();
        let db = d.path().join("agentq.db");
        let missing = check_database(&db);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].status, Status::Ok);
        assert!(missing[0].detail.contains("not created yet"));

        let store = agentq_store::sqlite::SqliteStore::open(&db).unwrap();
        store.counts().await.unwrap();
        let checks = check_database(&db);
        assert_eq!(
            checks.iter().map(|c| c.status).collect::<Vec<_>>(),
            [Status::Ok, Status::Ok],
            "{checks:?}"
        );
        assert!(checks[1].detail.contains("as this agentq"), "{checks:?}");
        drop(store);

        // Written by a newer agentq.
        rusqlite::Connection::open(&db)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let checks = check_database(&db);
        assert_eq!(checks[1].status, Status::Fail, "{checks:?}");
        assert!(checks[1].detail.contains("99"), "{checks:?}");

        // Not a database at all.
        std::fs::write(&db, vec![b'x'; 8192]).unwrap();
        let checks = check_database(&db);
        assert_eq!(checks[0].status, Status::Fail, "{checks:?}");
        assert!(
            checks[0]
                .fix
                .as_deref()
                .unwrap()
                .contains("move the file aside")
        );
    }

    #[tokio::test]
    async fn a_postgres_store_is_reached_and_its_schema_compared_without_showing_the_password() {
        use agentq_store::postgres::{PgStore, test_db::TestDb};
        use agentq_store::url::DatabaseUrl;
        let Some(db) = TestDb::create().await else {
            return;
        };
        let checks = check_postgres(&db.url, DB_TIMEOUT).await;
        assert_eq!(checks[0].status, Status::Ok, "{checks:?}");
        assert!(checks[0].detail.contains("PostgreSQL"), "{checks:?}");
        assert!(
            checks[1].detail.contains("no agentq schema yet"),
            "{checks:?}"
        );
        PgStore::connect(&db.url).await.unwrap();
        let checks = check_postgres(&db.url, DB_TIMEOUT).await;
        assert!(checks[1].detail.contains("as this agentq"), "{checks:?}");

        let gone = DatabaseUrl::parse("postgres://agentq:s3cret@127.0.0.1:1/queue", "[store] url")
            .unwrap();
        let checks = check_postgres(&gone, DB_TIMEOUT).await;
        assert_eq!(
            checks.iter().map(|c| c.status).collect::<Vec<_>>(),
            [Status::Fail, Status::Skip, Status::Skip],
            "{checks:?}"
        );
        let text = render_text(&checks);
        assert!(
            text.contains("postgres://agentq:***@127.0.0.1:1/queue"),
            "{text}"
        );
        assert!(text.contains("[store] url"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    /// A connection to another machine that is plain, or whose server certificate nothing
    /// checks, is a warning; on this machine, or verified, it is not.
    #[test]
    fn encryption_is_judged_by_where_the_connection_goes() {
        use agentq_store::url::DatabaseUrl;
        let judge = |text: &str, tls: Option<&str>| {
            let url = DatabaseUrl::parse(text, "[store] url").unwrap();
            check_encryption(&url, tls)
        };
        let tls = Some("TLSv1.3, TLS_AES_256_GCM_SHA384");
        let c = judge("postgres://u@db.example/q?sslmode=require", tls);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(
            c.detail
                .contains("certificate is not verified (sslmode=require)"),
            "{c:?}"
        );
        assert!(
            c.fix
                .unwrap()
                .contains("sslmode=verify-full and sslrootcert")
        );
        let c = judge(
            "postgres://u@db.example/q?sslmode=verify-full&sslrootcert=/ca.pem",
            tls,
        );
        assert_eq!(c.status, Status::Ok, "{c:?}");
        assert!(
            c.detail
                .contains("certificate and host name verified against /ca.pem")
        );
        let c = judge("host=db.example user=u", None);
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.detail.contains("cross the network in clear"), "{c:?}");
        for local in [
            "postgres://u@127.0.0.1/q",
            "postgres://u@localhost/q",
            "host=db.example hostaddr=127.0.0.1 user=u",
            "host=/var/run/postgresql user=u sslmode=require",
        ] {
            let c = judge(local, None);
            assert_eq!(c.status, Status::Ok, "{local}: {c:?}");
            assert!(c.detail.starts_with("none"), "{local}: {c:?}");
        }
        let c = judge("host=db.example user=u sslmode=disable", None);
        assert_eq!(
            (c.status, c.detail.as_str()),
            (Status::Ok, "none (sslmode=disable)")
        );
    }

    #[test]
    fn programs_are_found_on_path_or_relative_to_the_cwd() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        script(&bin, "agent", "cat");
        let path = format!("/nonexistent:{}", bin.display());
        assert_eq!(
            find_program("agent", Path::new("/"), Some(&path)).unwrap(),
            bin.join("agent")
        );
        assert_eq!(
            find_program("./bin/agent", d.path(), None).unwrap(),
            d.path().join("./bin/agent")
        );
        let (detail, _) = find_program("agent", d.path(), Some("/nonexistent")).unwrap_err();
        assert!(detail.contains("not on PATH"), "{detail}");

        std::fs::write(d.path().join("plain"), "not a program").unwrap();
        let (detail, fix) = find_program("./plain", d.path(), None).unwrap_err();
        assert!(detail.contains("not executable"), "{detail}");
        assert!(fix.contains("chmod +x"), "{fix}");
    }

    #[tokio::test]
    async fn the_version_check_runs_the_agent_and_gives_up_on_a_hang() {
        let d = tempfile::tempdir().unwrap();
        let cx = context(&[("CLAUDECODE", "1")]);
        // Proves the worker's env is applied and the parent session's marker is removed.
        let fine = script(d.path(), "fine", "echo \"$WHICH ${CLAUDECODE:-unset}\"");
        let w = worker(
            d.path(),
            Agent::Command(agentq_agents::command::Settings { argv: vec![] }),
            &[("WHICH", "9.9")],
        );
        assert_eq!(
            agent_version(&agentq_agents::claude::Settings::DEFAULT, &fine, &w, &cx)
                .await
                .unwrap(),
            "9.9 unset"
        );

        let hang = script(d.path(), "hang", "exec sleep 30");
        let (detail, _) = agent_version(&agentq_agents::claude::Settings::DEFAULT, &hang, &w, &cx)
            .await
            .unwrap_err();
        assert!(detail.contains("did not finish within 500ms"), "{detail}");

        let broken = script(d.path(), "broken", "echo 'cannot find module' >&2; exit 3");
        let (detail, fix) =
            agent_version(&agentq_agents::claude::Settings::DEFAULT, &broken, &w, &cx)
                .await
                .unwrap_err();
        assert!(detail.contains("cannot find module"), "{detail}");
        assert!(fix.contains("by hand"), "{fix}");
    }

    #[tokio::test]
    async fn a_worker_with_a_missing_cwd_or_program_fails_with_its_fix() {
        let d = tempfile::tempdir().unwrap();
        let cx = context(&[("PATH", "/usr/bin:/bin")]);
        let gone = d.path().join("gone");
        let w = worker(
            &gone,
            Agent::Command(agentq_agents::command::Settings {
                argv: vec!["no-such-agent-xyz".into()],
            }),
            &[],
        );
        let checks = check_worker(&w, &cx).await;
        assert_eq!(checks[0].check, "worker w: cwd");
        assert_eq!(checks[0].status, Status::Fail);
        assert!(checks[0].fix.as_deref().unwrap().contains("mkdir -p"));
        assert_eq!(checks[1].status, Status::Fail);
        assert!(checks[1].detail.contains("not on PATH"), "{checks:?}");

        let w = worker(
            d.path(),
            Agent::Command(agentq_agents::command::Settings {
                argv: vec!["sh".into()],
            }),
            &[],
        );
        let checks = check_worker(&w, &cx).await;
        assert!(checks.iter().all(|c| c.status == Status::Ok), "{checks:?}");
    }

    #[test]
    fn a_disk_with_room_passes_and_one_short_of_min_free_space_fails_with_the_fix() {
        let d = tempfile::tempdir().unwrap();
        let ok = check_disk(d.path(), 0);
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        assert!(
            ok.detail.contains(".agentq") && ok.detail.contains(".output"),
            "{ok:?}"
        );
        // No disk has this much free.
        let short = check_disk(d.path(), u64::MAX);
        assert_eq!(short.status, Status::Fail, "{short:?}");
        assert!(
            short
                .detail
                .contains(&d.path().join(".agentq").display().to_string())
        );
        assert!(short.detail.contains("claims no task"), "{short:?}");
        assert!(short.fix.unwrap().contains("min_free_space"));
    }

    #[test]
    fn parent_session_variables_warn_and_say_who_keeps_them() {
        let d = tempfile::tempdir().unwrap();
        let clean = BTreeMap::from([("PATH".to_string(), "/bin".to_string())]);
        assert_eq!(check_markers(&clean, &[]).status, Status::Ok);

        let env = BTreeMap::from([
            ("CLAUDECODE".to_string(), "1".to_string()),
            ("CLAUDE_CODE_ENTRYPOINT".to_string(), "cli".to_string()),
        ]);
        let keeps = worker(
            d.path(),
            Agent::Command(agentq_agents::command::Settings { argv: vec![] }),
            &[("CLAUDECODE", "1")],
        );
        let c = check_markers(&env, &[&keeps]);
        assert_eq!(c.status, Status::Warn);
        assert_eq!(
            c.detail,
            "CLAUDECODE, CLAUDE_CODE_ENTRYPOINT set here (started from a Claude Code session?); \
             they are removed before agents start; w sets CLAUDECODE in its env and keeps it"
        );
    }

    #[test]
    fn git_bash_is_skipped_off_windows() {
        if cfg!(windows) {
            return;
        }
        assert_eq!(check_git_bash(&BTreeMap::new()).status, Status::Skip);
    }

    #[test]
    fn the_listen_check_binds_and_lets_go() {
        assert_eq!(check_listen(None).status, Status::Skip);
        assert_eq!(check_listen(None).detail, "HTTP API off");

        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let c = check_listen(Some(addr));
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("[http] listen"));
        drop(taken);
        assert_eq!(check_listen(Some(addr)).status, Status::Ok);
    }

    #[test]
    fn the_text_report_has_one_marked_line_per_check_and_the_fix_below() {
        let checks = [
            Check::ok("config", "/p/agentq.toml: 1 worker(s)"),
            Check::fail(
                "state folder",
                "/p/.agentq has mode 0755",
                "`chmod 700 /p/.agentq`",
            ),
            Check::warn("daemon", "cannot tell", "look"),
            Check::skip("git bash", "only on Windows"),
        ];
        assert_eq!(
            render_text(&checks),
            "ok    config        /p/agentq.toml: 1 worker(s)\n\
             FAIL  state folder  /p/.agentq has mode 0755\n\
             \x20                   fix: `chmod 700 /p/.agentq`\n\
             warn  daemon        cannot tell\n\
             \x20                   fix: look\n\
             \x20-    git bash      only on Windows\n\
             \n1 check(s) failed, 1 warning(s)\n"
        );
    }

    // systemd's answers: Linux's kind of service.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_service_of_this_folder_is_reported_with_what_its_manager_says() {
        use crate::service::{self, Ran, Service};
        let project = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let config_path = project.path().join("agentq.toml");
        let text = "[[worker]]\nname = \"w\"\nagent = \"command\"\ncommand = [\"true\"]\n";
        std::fs::write(&config_path, text).unwrap();
        let config = Config::load(&config_path).unwrap();
        let xdg = home.path().join("xdg");
        let env: BTreeMap<String, String> = [
            ("HOME", home.path().to_str().unwrap()),
            ("XDG_CONFIG_HOME", xdg.to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // systemd's answers: (is-enabled, is-active).
        let check = |answers: (&str, &str)| {
            check_service(&config, &env, &mut |argv: &[&str]| {
                let word = match argv[2] {
                    "is-enabled" => answers.0,
                    _ => answers.1,
                };
                Ok(Ran {
                    ok: word == "enabled" || word == "active",
                    stdout: format!("{word}\n"),
                    stderr: String::new(),
                })
            })
        };

        let none = check(("enabled", "active"));
        assert_eq!(none.status, Status::Skip, "{none:?}");
        assert!(none.detail.starts_with("none installed"), "{none:?}");

        let svc = Service::for_config(&config, "/bin/agentq".into(), String::new(), true);
        let lookup = |k: &str| env.get(k).cloned();
        let plan = service::plan(&svc, &lookup).unwrap();
        service::install(&plan, false).unwrap();
        let fine = check(("enabled", "active"));
        assert_eq!(fine.status, Status::Ok, "{fine:?}");
        assert_eq!(
            fine.detail,
            format!("user unit {}: enabled, active", plan.path.display())
        );
        let off = check(("disabled", "inactive"));
        assert_eq!(off.status, Status::Warn, "{off:?}");
        assert_eq!(off.fix.as_deref(), Some(plan.enable[0].as_str()));
        let unknown = check_service(&config, &env, &mut |_: &[&str]| {
            Err(std::io::ErrorKind::NotFound.into())
        });
        assert_eq!(unknown.status, Status::Ok, "{unknown:?}");
        assert!(
            unknown.detail.contains("its state is unknown"),
            "{unknown:?}"
        );

        // Another folder's unit under this name.
        let mut other = svc.clone();
        other.root = "/srv/elsewhere".into();
        std::fs::write(&plan.path, service::systemd_unit(&other, None)).unwrap();
        let theirs = check(("enabled", "active"));
        assert_eq!(theirs.status, Status::Warn, "{theirs:?}");
        assert!(theirs.detail.contains("in /srv/elsewhere"), "{theirs:?}");
    }
}
