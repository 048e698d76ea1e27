//! agentq's one door to git: every git command the daemon runs for a task's worktree (issue 19)
//! goes through here.
//!
//! It runs the real `git` program found on `PATH`, never through a shell, with an environment that
//! makes its output predictable and its behaviour unattended:
//! - `LC_ALL=C`, so the messages agentq reads (a lock held, files in the way) are git's English ones;
//! - `GIT_TERMINAL_PROMPT=0`, so nothing waits for a password nobody will type;
//! - `GIT_OPTIONAL_LOCKS=0`, so agentq's `git status` never takes the index lock from under an
//!   agent at work in the same worktree;
//! - none of the variables that point git at another repository (`GIT_DIR`, `GIT_WORK_TREE`,
//!   `GIT_INDEX_FILE`, ...), which a daemon started from a git hook would otherwise inherit;
//! - `-c core.quotepath=off` and `-z` wherever paths are read, so no name comes back quoted or is
//!   cut at a newline. Git writes `/` in the paths it prints, on Windows too: [`native_path`] turns
//!   them into the platform's form, and paths are compared with [`same_path`].
//!
//! Two rules make concurrent work safe:
//! - commands that write to a repository (worktree add, remove, prune and repair; branch create and
//!   delete; commit; update-ref; merge) run one at a time per repository in this process, behind a
//!   mutex per repository's common git folder (which all its worktrees share);
//! - a command that fails because another process holds one of git's lock files (`index.lock`, a
//!   ref's `.lock`) is run again after a pause, 25 ms doubling to 500 ms, 20 tries in all (about 8 s),
//!   then fails with git's message.
//!
//! Every failure is a [`GitError`]: its variants are what callers decide on (a missing ref, a branch
//! that exists, changes in the way), and its message names the repository and says what to do.
//! A git command that hangs (a hook, a credential helper) is killed when its future is dropped, so
//! a caller may bound any of these functions with `tokio::time::timeout`.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::path::{MAIN_SEPARATOR_STR, Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use agentq_core::worktree::{CommitInfo, FileChange};
use tokio::process::Command;
use tokio::sync::{Mutex as AsyncMutex, OnceCell, OwnedMutexGuard};

/// The oldest git agentq works with: [`merge`] needs `git merge-tree --write-tree` (2.38).
pub const MIN_VERSION: (u32, u32, u32) = (2, 38, 0);

pub type Result<T, E = GitError> = std::result::Result<T, E>;

/// What went wrong with git, as callers decide on it; each message names the repository (or the
/// folder) and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git is not installed (or not on PATH): install git, e.g. apt-get install git")]
    NotInstalled,

    #[error(
        "git {} is too old: agentq needs git {} or newer (it merges with `git merge-tree --write-tree`); upgrade git",
        show_version(*found),
        show_version(*need)
    )]
    TooOld {
        found: (u32, u32, u32),
        need: (u32, u32, u32),
    },

    /// `path` is not in a repository with a working tree; `bare`: it is a bare repository.
    #[error("{}", if *bare {
        format!("{} is a bare git repository, which agentq does not support (a task's worktree is made from a repository with files checked out): point agentq at a clone of it (`git clone {}`)", path.display(), path.display())
    } else {
        format!("{} is not in a git repository: name a folder of a repository (where `git status` works), or make one with `git init`", path.display())
    })]
    NotARepo { path: PathBuf, bare: bool },

    #[error(
        "there is no commit {rev:?} in the git repository {}: name a branch, tag or commit that exists there (`git -C {} branch --list` lists the branches)",
        repo.display(),
        repo.display()
    )]
    NoSuchRef { repo: PathBuf, rev: String },

    #[error(
        "the branch {branch:?} already exists in the git repository {}: choose another name, or delete it first (`git -C {} branch -D {branch}`) if nothing on it is needed",
        repo.display(),
        repo.display()
    )]
    BranchExists { repo: PathBuf, branch: String },

    #[error(
        "{branch:?} is not a valid git branch name ({why}); `git help check-ref-format` gives the rules"
    )]
    BadBranchName { branch: String, why: String },

    /// Changes not committed in `repo` (a repository or one of its worktrees) that what was asked
    /// would have overwritten; nothing was done.
    #[error(
        "{} has changes that are not committed ({}), which this would overwrite, so nothing was changed: commit or stash them there (move untracked files away), then try again",
        repo.display(),
        some_files(files)
    )]
    Dirty { repo: PathBuf, files: Vec<String> },

    /// A merge without a branch to merge into, in a repository whose HEAD is detached.
    #[error(
        "HEAD of the git repository {} is detached, so there is no branch to merge into: name the branch (--into BRANCH)",
        repo.display()
    )]
    Detached { repo: PathBuf },

    /// A new worktree's folder is taken by something agentq will not remove.
    #[error(
        "cannot make the worktree {} of the git repository {}: {why}; move that folder away (or remove it), then try again",
        path.display(),
        repo.display()
    )]
    InTheWay {
        repo: PathBuf,
        path: PathBuf,
        why: String,
    },

    /// A folder to remove as a worktree that git does not know as one of this repository's.
    #[error(
        "{} is not a worktree of the git repository {}, so agentq leaves it alone: remove it yourself if it is not needed",
        path.display(),
        repo.display()
    )]
    NotAWorktree { repo: PathBuf, path: PathBuf },

    /// A git command failed: `what` is the command and the folder it ran in, `stderr` git's own
    /// lines, which say why.
    #[error("{what} failed: {}", if stderr.is_empty() { "git gave no reason" } else { stderr })]
    Failed { what: String, stderr: String },

    #[error("{about} {}: {source}", path.display())]
    Io {
        about: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// For the daemon and the command line: a usage mistake (a bad repository, ref or branch name)
/// exits 2 as the others of its kind do, a missing git is a missing program, and the rest are
/// [`agentq_core::error::Error::Git`] with the same message.
impl From<GitError> for agentq_core::error::Error {
    fn from(e: GitError) -> Self {
        use agentq_core::error::Error;
        match e {
            GitError::NotInstalled => Error::ProgramMissing {
                program: "git".into(),
                needed_for: "run tasks in worktrees of their own".into(),
                fix: "install git, e.g. apt-get install git".into(),
            },
            GitError::NotARepo { .. }
            | GitError::NoSuchRef { .. }
            | GitError::BranchExists { .. }
            | GitError::BadBranchName { .. }
            | GitError::Detached { .. } => Error::Usage(e.to_string()),
            other => Error::Git(other.to_string()),
        }
    }
}

fn show_version((a, b, c): (u32, u32, u32)) -> String {
    format!("{a}.{b}.{c}")
}

/// The first few of `files`, for a message.
fn some_files(files: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut s = files
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if files.len() > SHOWN {
        s.push_str(&format!(" and {} more", files.len() - SHOWN));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Running git

/// Variables that point git at a repository other than the one `-C` names: git sets them for its
/// hooks, and a daemon started from one would carry them into every command.
const FOREIGN_REPO_VARS: [&str; 10] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_PREFIX",
    "GIT_SHALLOW_FILE",
];

/// How many times a command that found a lock file held is run in all, and the pauses between.
const LOCK_TRIES: u32 = 20;
const FIRST_PAUSE: Duration = Duration::from_millis(25);
const LONGEST_PAUSE: Duration = Duration::from_millis(500);

/// One git command: the folder it runs in (`-C`), `-c` settings for it alone, and its arguments.
struct Git {
    dir: Option<PathBuf>,
    config: Vec<String>,
    args: Vec<OsString>,
}

/// How a git command ended.
struct Output {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Output {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Standard output as text, without its last line break.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout)
            .trim_end_matches(['\n', '\r'])
            .to_string()
    }
}

impl Git {
    /// A command run in `dir` (`git -C dir ...`).
    fn new(dir: &Path) -> Git {
        Git {
            dir: Some(dir.to_path_buf()),
            config: Vec::new(),
            args: Vec::new(),
        }
    }

    /// A command that needs no repository (`git version`).
    fn anywhere() -> Git {
        Git {
            dir: None,
            config: Vec::new(),
            args: Vec::new(),
        }
    }

    fn arg(mut self, arg: impl AsRef<OsStr>) -> Git {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    fn args<S: AsRef<OsStr>>(mut self, args: impl IntoIterator<Item = S>) -> Git {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// `-c key=value` for this command alone.
    fn config(mut self, settings: &[String]) -> Git {
        self.config.extend(settings.iter().cloned());
        self
    }

    /// The command as a person would type it, and where: "`git worktree add ...` in /repo".
    fn describe(&self) -> String {
        let mut s = String::from("`git");
        for a in &self.args {
            let a = a.to_string_lossy();
            s.push(' ');
            if a.is_empty() || a.contains(char::is_whitespace) {
                s.push_str(&format!("{a:?}"));
            } else {
                s.push_str(&a);
            }
        }
        s.push('`');
        if let Some(dir) = &self.dir {
            s.push_str(&format!(" in {}", dir.display()));
        }
        s
    }

    /// Runs it once.
    async fn once(&self) -> Result<Output> {
        let mut cmd = Command::new("git");
        if let Some(dir) = &self.dir {
            // `-C` rather than the child's working folder: a folder that does not exist is then
            // git's error ("cannot change to"), not a spawn failure that looks like git missing.
            cmd.arg("-C").arg(dir);
        }
        cmd.args(["-c", "core.quotepath=off"]);
        for setting in &self.config {
            cmd.arg("-c").arg(setting);
        }
        cmd.args(&self.args)
            .env("LC_ALL", "C")
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_OPTIONAL_LOCKS", "0")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for var in FOREIGN_REPO_VARS {
            cmd.env_remove(var);
        }
        #[cfg(test)]
        tests::isolate(&mut cmd);
        let out = cmd.output().await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                GitError::NotInstalled
            } else {
                GitError::Io {
                    about: "running git in",
                    path: self.dir.clone().unwrap_or_default(),
                    source: e,
                }
            }
        })?;
        Ok(Output {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }

    /// Runs it, again while another process holds a lock file it needs, and returns how it ended
    /// (failed or not).
    async fn output(&self) -> Result<Output> {
        let mut pause = FIRST_PAUSE;
        let mut tries = 1;
        loop {
            let out = self.once().await?;
            if out.ok() || tries == LOCK_TRIES || !lock_held(&out.stderr) {
                return Ok(out);
            }
            tracing::debug!(command = %self.describe(), stderr = %out.stderr, ?pause, "a git lock file is held; trying again");
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LONGEST_PAUSE);
            tries += 1;
        }
    }

    /// Runs it; its standard output, or its failure as an error.
    async fn run(&self) -> Result<Output> {
        let out = self.output().await?;
        if out.ok() {
            Ok(out)
        } else {
            Err(self.failed(&out))
        }
    }

    /// The error for a failed run: [`GitError::NotARepo`] when its folder is none, else
    /// [`GitError::Failed`] with git's message.
    fn failed(&self, out: &Output) -> GitError {
        if let Some(dir) = &self.dir
            && not_a_repo(&out.stderr)
        {
            return GitError::NotARepo {
                path: dir.clone(),
                bare: false,
            };
        }
        GitError::Failed {
            what: self.describe(),
            stderr: out.stderr.clone(),
        }
    }
}

/// Whether git failed because its folder is not a repository (or not there at all).
fn not_a_repo(stderr: &str) -> bool {
    stderr.contains("not a git repository")
        || stderr.contains("cannot change to")
        || stderr.contains("must be run in a work tree")
}

/// Whether git failed because another process holds a lock file: "Unable to create
/// '.../index.lock': File exists", "cannot lock ref 'refs/heads/x': Unable to create
/// '.../x.lock': File exists", "could not lock config file ...: File exists". Not when a ref
/// cannot be locked for a reason that stays (it is not at the value expected, or a ref named like
/// its folder exists): running that again would fail the same way.
fn lock_held(stderr: &str) -> bool {
    stderr.lines().any(|line| {
        line.contains("index.lock")
            || (line.contains("File exists")
                && (line.contains(".lock") || line.contains("could not lock")))
    })
}

/// The repositories' mutexes, by common git folder (canonical): one writer at a time each.
static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<AsyncMutex<()>>>>> =
    LazyLock::new(Default::default);

/// Waits for, and holds, the right to write to the repository `dir` belongs to (any of its
/// worktrees: they share one common git folder, and with it refs and objects).
async fn lock_repo(dir: &Path) -> Result<OwnedMutexGuard<()>> {
    let common = Git::new(dir)
        .args(["rev-parse", "--path-format=absolute", "--git-common-dir"])
        .run()
        .await?
        .text();
    let common = native_path(&common);
    let key = agentq_platform::fs::canonical(&common).unwrap_or(common);
    let mutex = LOCKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .entry(key)
        .or_default()
        .clone();
    Ok(mutex.lock_owned().await)
}

/// A path as git prints it (`/` between parts, on Windows too) in the platform's own form.
pub fn native_path(printed: &str) -> PathBuf {
    PathBuf::from(printed.replace('/', MAIN_SEPARATOR_STR))
}

/// Whether two paths name the same folder: compared resolved (links followed, `/` and `\` alike,
/// and without regard to case on Windows), and where one no longer exists, its parent resolved.
pub fn same_path(a: &Path, b: &Path) -> bool {
    fn resolved(p: &Path) -> String {
        let full = agentq_platform::fs::canonical(p)
            .ok()
            .or_else(|| {
                let parent = agentq_platform::fs::canonical(p.parent()?).ok()?;
                Some(parent.join(p.file_name()?))
            })
            .unwrap_or_else(|| p.to_path_buf());
        let s = full.to_string_lossy().replace('/', MAIN_SEPARATOR_STR);
        let s = s.trim_end_matches(MAIN_SEPARATOR_STR);
        if cfg!(windows) {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    }
    a == b || resolved(a) == resolved(b)
}

// ---------------------------------------------------------------------------------------------
// The version

/// The git on `PATH`: its version (`git version 2.47.3`, `2.39.2.windows.1` read as 2.39.2).
pub async fn version() -> Result<(u32, u32, u32)> {
    let cmd = Git::anywhere().arg("version");
    let out = cmd.run().await?.text();
    parse_version(&out).ok_or_else(|| GitError::Failed {
        what: format!(
            "reading the version git printed ({out:?}) from {}",
            cmd.describe()
        ),
        stderr: String::new(),
    })
}

/// The git on `PATH`'s version, if it is at least [`MIN_VERSION`]; [`GitError::TooOld`]
/// otherwise. Asked once per process.
pub async fn check_version() -> Result<(u32, u32, u32)> {
    static VERSION: OnceCell<(u32, u32, u32)> = OnceCell::const_new();
    let found = *VERSION.get_or_try_init(version).await?;
    if found < MIN_VERSION {
        return Err(GitError::TooOld {
            found,
            need: MIN_VERSION,
        });
    }
    Ok(found)
}

fn parse_version(printed: &str) -> Option<(u32, u32, u32)> {
    let word = printed
        .strip_prefix("git version ")?
        .split_whitespace()
        .next()?;
    let mut parts = word.split('.').map(|p| {
        let digits: String = p.chars().take_while(char::is_ascii_digit).collect();
        digits.parse::<u32>().ok()
    });
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some((major, minor, patch))
}

// ---------------------------------------------------------------------------------------------
// Reading a repository

/// The top folder of the repository (or worktree) `dir` is in, canonical.
/// [`GitError::NotARepo`] when it is in none, or in a bare repository.
pub async fn top_level(dir: &Path) -> Result<PathBuf> {
    let cmd = Git::new(dir).args(["rev-parse", "--show-toplevel"]);
    let out = cmd.output().await?;
    if out.ok() {
        let top = native_path(&out.text());
        return agentq_platform::fs::canonical(&top).map_err(|source| GitError::Io {
            about: "resolving the repository's folder",
            path: top,
            source,
        });
    }
    let bare = Git::new(dir)
        .args(["rev-parse", "--is-bare-repository"])
        .output()
        .await?;
    if bare.ok() && bare.text() == "true" {
        return Err(GitError::NotARepo {
            path: dir.to_path_buf(),
            bare: true,
        });
    }
    Err(cmd.failed(&out))
}

/// The full sha of the commit `rev` names in `repo` (a branch, tag, sha, `HEAD~2`, ...).
/// [`GitError::NoSuchRef`] when it names none.
pub async fn resolve(repo: &Path, rev: &str) -> Result<String> {
    let cmd = Git::new(repo)
        .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
        .arg(format!("{rev}^{{commit}}"));
    let out = cmd.output().await?;
    match out.code {
        Some(0) => Ok(out.text()),
        Some(1) => Err(GitError::NoSuchRef {
            repo: repo.to_path_buf(),
            rev: rev.to_string(),
        }),
        _ => Err(cmd.failed(&out)),
    }
}

/// The files `git status` lists in the worktree `repo`: changed, staged, untracked (each file
/// of an untracked folder), a rename by its new name. Empty when it is clean.
pub async fn dirty(repo: &Path) -> Result<Vec<String>> {
    let out = Git::new(repo)
        .args(["status", "--porcelain=v1", "-z", "--untracked-files=all"])
        .run()
        .await?;
    Ok(parse_status(&out.stdout))
}

/// `git status --porcelain=v1 -z`: `XY path`, and after a rename's or copy's entry, its old path.
fn parse_status(out: &[u8]) -> Vec<String> {
    let mut files = Vec::new();
    let mut fields = out.split(|b| *b == 0).filter(|f| !f.is_empty());
    while let Some(field) = fields.next() {
        if field.len() < 4 {
            continue;
        }
        let (x, y) = (field[0], field[1]);
        files.push(String::from_utf8_lossy(&field[3..]).into_owned());
        if matches!(x, b'R' | b'C') || matches!(y, b'R' | b'C') {
            fields.next();
        }
    }
    files
}

/// Whether `branch` can be made in `repo`: a valid branch name that no branch has yet
/// ([`GitError::BadBranchName`], [`GitError::BranchExists`] otherwise).
pub async fn check_branch(repo: &Path, branch: &str) -> Result<()> {
    let bad = |why: String| GitError::BadBranchName {
        branch: branch.to_string(),
        why,
    };
    if branch.starts_with('-') {
        return Err(bad("it begins with a dash".into()));
    }
    let out = Git::new(repo)
        .args(["check-ref-format", "--branch"])
        .arg(branch)
        .output()
        .await?;
    if !out.ok() {
        return Err(bad(why_bad_branch(branch)));
    }
    if out.text() != branch {
        return Err(bad(format!("git reads it as {:?}", out.text())));
    }
    if branch_exists(repo, branch).await? {
        return Err(GitError::BranchExists {
            repo: repo.to_path_buf(),
            branch: branch.to_string(),
        });
    }
    Ok(())
}

/// Which of git's rules a branch name that git refused breaks, to say so; git alone decides.
fn why_bad_branch(name: &str) -> String {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name == "HEAD" || name == "@" {
        "it is a name git keeps for itself"
    } else if name.contains("..") {
        "it contains \"..\""
    } else if name.contains("@{") {
        "it contains \"@{\""
    } else if name
        .chars()
        .any(|c| c.is_control() || " ~^:?*[\\".contains(c))
    {
        "it contains a space, a control character or one of ~ ^ : ? * [ \\"
    } else if name.starts_with('/') || name.ends_with('/') || name.contains("//") {
        "it begins or ends with \"/\", or has an empty part"
    } else if name.ends_with('.') || name.ends_with(".lock") {
        "it ends with \".\" or \".lock\""
    } else if name.split('/').any(|part| part.starts_with('.')) {
        "a part of it begins with \".\""
    } else {
        "git refuses it"
    };
    reason.to_string()
}

/// Whether the branch `refs/heads/<branch>` exists.
async fn branch_exists(repo: &Path, branch: &str) -> Result<bool> {
    let cmd = Git::new(repo)
        .args(["show-ref", "--verify", "--quiet"])
        .arg(format!("refs/heads/{branch}"));
    let out = cmd.output().await?;
    match out.code {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(cmd.failed(&out)),
    }
}

/// The branch checked out in `repo` (a repository or worktree); `None` when HEAD is detached.
pub async fn current_branch(repo: &Path) -> Result<Option<String>> {
    let cmd = Git::new(repo).args(["symbolic-ref", "--quiet", "HEAD"]);
    let out = cmd.output().await?;
    match out.code {
        Some(0) => {
            let full = out.text();
            Ok(Some(
                full.strip_prefix("refs/heads/")
                    .map(str::to_string)
                    .unwrap_or(full),
            ))
        }
        Some(1) => Ok(None),
        _ => Err(cmd.failed(&out)),
    }
}

/// The main repository a worktree belongs to (its common git folder's parent): where `git
/// worktree remove` of it must run. An error when `worktree` is not a worktree git can read.
pub async fn common_repo(worktree: &Path) -> Result<PathBuf> {
    let cmd = Git::new(worktree).args(["rev-parse", "--path-format=absolute", "--git-common-dir"]);
    let out = cmd.output().await?;
    if !out.ok() {
        return Err(cmd.failed(&out));
    }
    let common = native_path(&out.text());
    match common.parent() {
        Some(repo) if common.file_name().is_some_and(|n| n == ".git") => Ok(repo.to_path_buf()),
        _ => Err(GitError::NotARepo {
            path: worktree.to_path_buf(),
            bare: true,
        }),
    }
}

/// The commit checked out in `worktree`.
pub async fn head(worktree: &Path) -> Result<String> {
    resolve(worktree, "HEAD").await
}

/// One worktree of a repository, as `git worktree list` tells it (the main one first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its folder, in the platform's form.
    pub path: PathBuf,
    /// The commit checked out; `None` in a bare repository's entry.
    pub head: Option<String>,
    /// The branch checked out (`main`, without `refs/heads/`); `None` when detached.
    pub branch: Option<String>,
    /// Its folder is gone: `git worktree prune` would drop the entry.
    pub prunable: bool,
    /// Locked against pruning and removal (`git worktree lock`).
    pub locked: bool,
    /// Why, when the lock says: git writes "initializing" while `git worktree add` makes it.
    pub lock_reason: Option<String>,
}

/// The worktrees of `repo`, the main one first.
pub async fn list_worktrees(repo: &Path) -> Result<Vec<Listed>> {
    let out = Git::new(repo)
        .args(["worktree", "list", "--porcelain", "-z"])
        .run()
        .await?;
    Ok(parse_worktrees(&out.stdout))
}

/// `git worktree list --porcelain -z`: `key value` fields, each ending with NUL, and an empty one
/// after each worktree.
fn parse_worktrees(out: &[u8]) -> Vec<Listed> {
    let mut list = Vec::new();
    let mut current: Option<Listed> = None;
    for field in out.split(|b| *b == 0) {
        let field = String::from_utf8_lossy(field);
        let (key, value) = field.split_once(' ').unwrap_or((&field, ""));
        if key == "worktree" {
            list.extend(current.take());
            current = Some(Listed {
                path: native_path(value),
                head: None,
                branch: None,
                prunable: false,
                locked: false,
                lock_reason: None,
            });
            continue;
        }
        let Some(listed) = current.as_mut() else {
            continue;
        };
        match key {
            "" => list.extend(current.take()),
            "HEAD" => listed.head = Some(value.to_string()),
            "branch" => {
                listed.branch = Some(value.strip_prefix("refs/heads/").unwrap_or(value).into())
            }
            "locked" => {
                listed.locked = true;
                listed.lock_reason = (!value.is_empty()).then(|| value.to_string());
            }
            "prunable" => listed.prunable = true,
            _ => {}
        }
    }
    list.extend(current);
    list
}

// ---------------------------------------------------------------------------------------------
// Worktrees and branches

/// Makes the worktree `path` of `repo` on a new branch `branch` starting at `base`
/// (`git worktree add -b branch path base`), making its parent folders.
///
/// Done again after a crash, it finishes the work rather than fail: a worktree already at `path`
/// on `branch` is left as it is; `branch` made but no worktree yet is checked out at `path`; a
/// worktree that `git worktree add` was still making (locked "initializing") is made again; a
/// folder at `path` that git does not know is removed when it is empty or a dead worktree (its
/// `.git` file points to a git folder that is gone), and otherwise is [`GitError::InTheWay`].
pub async fn add_worktree(repo: &Path, path: &Path, branch: &str, base: &str) -> Result<()> {
    let _lock = lock_repo(repo).await?;
    let in_the_way = |why: String| GitError::InTheWay {
        repo: repo.to_path_buf(),
        path: path.to_path_buf(),
        why,
    };
    let listed = list_worktrees(repo).await?;
    if let Some(here) = listed.iter().find(|w| same_path(&w.path, path)) {
        let initializing = here.locked && here.lock_reason.as_deref() == Some("initializing");
        let gone = tokio::fs::symlink_metadata(path).await.is_err();
        if initializing || gone {
            // `git worktree add` stopped half way (its checkout may be incomplete), or the folder
            // is gone (a lock keeps such an entry from pruning, and git does not call a locked one
            // prunable): git drops the entry, lock and all.
            force_remove(repo, &here.path).await?;
        } else if here.prunable {
            // The folder is there but its `.git` file is gone: a leftover, below.
        } else if here.branch.as_deref() == Some(branch) {
            return Ok(());
        } else {
            let on = match &here.branch {
                Some(b) => format!("on the branch {b}"),
                None => "with a detached HEAD".into(),
            };
            return Err(in_the_way(format!(
                "it is already a worktree of this repository, {on}, not on {branch}"
            )));
        }
    }
    if tokio::fs::symlink_metadata(path).await.is_ok() {
        prune_unlocked(repo).await?;
        if !dead_leftover(path).await {
            return Err(in_the_way(
                "a folder is there that is not empty and that git does not know as a worktree"
                    .into(),
            ));
        }
        remove_folder(path).await?;
    }
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|source| GitError::Io {
                about: "creating the folder for a worktree",
                path: parent.to_path_buf(),
                source,
            })?;
    }
    let cmd = if branch_exists(repo, branch).await? {
        Git::new(repo)
            .args(["worktree", "add", "--quiet", "--"])
            .arg(path)
            .arg(branch)
    } else {
        Git::new(repo)
            .args(["worktree", "add", "--quiet", "-b", branch, "--"])
            .arg(path)
            .arg(base)
    };
    cmd.run().await?;
    Ok(())
}

/// Whether `path` (not a worktree git knows) is safe to remove: an empty folder, or one whose
/// `.git` file points to a git folder that no longer exists.
async fn dead_leftover(path: &Path) -> bool {
    if let Ok(mut entries) = tokio::fs::read_dir(path).await
        && let Ok(None) = entries.next_entry().await
    {
        return true;
    }
    let Ok(dotgit) = tokio::fs::read_to_string(path.join(".git")).await else {
        return false;
    };
    let Some(target) = dotgit.trim().strip_prefix("gitdir:") else {
        return false;
    };
    let target = native_path(target.trim());
    let target = if target.is_absolute() {
        target
    } else {
        path.join(target)
    };
    tokio::fs::symlink_metadata(&target).await.is_err()
}

async fn remove_folder(path: &Path) -> Result<()> {
    tokio::fs::remove_dir_all(path)
        .await
        .map_err(|source| GitError::Io {
            about: "removing the dead worktree folder",
            path: path.to_path_buf(),
            source,
        })
}

/// `git worktree remove --force --force`: its changes and a lock do not keep it.
async fn force_remove(repo: &Path, path: &Path) -> Result<()> {
    Git::new(repo)
        .args(["worktree", "remove", "--force", "--force", "--"])
        .arg(path)
        .run()
        .await?;
    Ok(())
}

/// Removes the worktree `path` of `repo`, changes and all, locked or not (`git worktree remove
/// --force --force`), then prunes. A folder already gone is fine (git drops its entry), and so
/// is one whose removal was cut short (git's entry points to it, its `.git` file is gone) or a
/// dead one (see [`add_worktree`]), which are removed; any other folder git does not know is
/// [`GitError::NotAWorktree`]. The branch stays.
pub async fn remove_worktree(repo: &Path, path: &Path) -> Result<()> {
    let _lock = lock_repo(repo).await?;
    let listed = list_worktrees(repo).await?;
    let here = listed.iter().find(|w| same_path(&w.path, path));
    let exists = tokio::fs::symlink_metadata(path).await.is_ok();
    match here {
        // git refuses a folder without its `.git` file; it removes an entry whose folder is gone.
        Some(w) if w.prunable && exists => remove_folder(path).await?,
        Some(w) => force_remove(repo, &w.path).await?,
        None if !exists => {}
        None if dead_leftover(path).await => remove_folder(path).await?,
        None => {
            return Err(GitError::NotAWorktree {
                repo: repo.to_path_buf(),
                path: path.to_path_buf(),
            });
        }
    }
    prune_unlocked(repo).await
}

/// Deletes the branch `branch` of `repo` (`git branch -D`), merged or not; one that does not
/// exist is fine.
pub async fn delete_branch(repo: &Path, branch: &str) -> Result<()> {
    let _lock = lock_repo(repo).await?;
    if !branch_exists(repo, branch).await? {
        return Ok(());
    }
    Git::new(repo)
        .args(["branch", "-D", "--", branch])
        .run()
        .await?;
    Ok(())
}

/// Drops the entries of `repo`'s worktrees whose folders are gone (`git worktree prune`).
pub async fn prune(repo: &Path) -> Result<()> {
    let _lock = lock_repo(repo).await?;
    prune_unlocked(repo).await
}

async fn prune_unlocked(repo: &Path) -> Result<()> {
    Git::new(repo).args(["worktree", "prune"]).run().await?;
    Ok(())
}

/// Mends the links between `repo` and its worktrees after folders moved (`git worktree repair`).
pub async fn repair(repo: &Path) -> Result<()> {
    let _lock = lock_repo(repo).await?;
    Git::new(repo).args(["worktree", "repair"]).run().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Commits and changes

/// Commits everything the agent left in `worktree`, new and deleted files too (`git add -A`,
/// `git commit --no-verify`: the repository's hooks are the agent's business, not a reason to
/// lose its work). Where no `user.name` or `user.email` is configured, the commit is agentq's
/// (`agentq <agentq@localhost>`), for it alone. The new commit's sha; `None` when there was
/// nothing to commit.
pub async fn commit_all(worktree: &Path, message: &str) -> Result<Option<String>> {
    let _lock = lock_repo(worktree).await?;
    if dirty(worktree).await?.is_empty() {
        return Ok(None);
    }
    Git::new(worktree).args(["add", "-A"]).run().await?;
    let staged = Git::new(worktree).args(["diff", "--cached", "--quiet", "--no-ext-diff"]);
    let out = staged.output().await?;
    match out.code {
        Some(0) => return Ok(None),
        Some(1) => {}
        _ => return Err(staged.failed(&out)),
    }
    Git::new(worktree)
        .config(&fallback_identity(worktree).await?)
        .args([
            "commit",
            "--no-verify",
            "--quiet",
            "--allow-empty-message",
            "-m",
            message,
        ])
        .run()
        .await?;
    head(worktree).await.map(Some)
}

/// `-c` settings naming agentq as the author and committer where git has no `user.name` or
/// `user.email` for `dir`; none where both are set.
async fn fallback_identity(dir: &Path) -> Result<Vec<String>> {
    let mut settings = Vec::new();
    for (key, fallback) in [("user.name", "agentq"), ("user.email", "agentq@localhost")] {
        let out = Git::new(dir)
            .args(["config", "--get", key])
            .output()
            .await?;
        if !out.ok() || out.text().trim().is_empty() {
            settings.push(format!("{key}={fallback}"));
        }
    }
    Ok(settings)
}

/// What a range of commits changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// `base..head`, oldest first.
    pub commits: Vec<CommitInfo>,
    /// The files that differ between `base` and `head` (a rename by its new name).
    pub files: Vec<FileChange>,
    /// Lines added and removed in all, binary files not counted.
    pub insertions: u64,
    pub deletions: u64,
}

/// The change from `base` to `head` in `repo`: its commits and the files it touches, with their
/// line counts.
pub async fn change(repo: &Path, base: &str, head: &str) -> Result<Change> {
    let log = Git::new(repo)
        .args([
            "log",
            "--no-color",
            "--no-show-signature",
            "--reverse",
            "-z",
            "--format=%H %s",
            "--end-of-options",
        ])
        .arg(format!("{base}..{head}"))
        .arg("--")
        .run()
        .await?;
    let commits = parse_log(&log.stdout);
    let diff = async |format: &'static str| {
        Git::new(repo)
            .args([
                "diff",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                "--no-relative",
                "-M",
                "-z",
                format,
                "--end-of-options",
                base,
                head,
                "--",
            ])
            .run()
            .await
    };
    let numstat = diff("--numstat").await?;
    let name_status = diff("--name-status").await?;
    let files = parse_files(&numstat.stdout, &name_status.stdout);
    Ok(Change {
        commits,
        insertions: files.iter().filter_map(|f| f.insertions).sum(),
        deletions: files.iter().filter_map(|f| f.deletions).sum(),
        files,
    })
}

/// `git log -z --format='%H %s'`.
fn parse_log(out: &[u8]) -> Vec<CommitInfo> {
    out.split(|b| *b == 0)
        .filter(|r| !r.is_empty())
        .map(|record| {
            let record = String::from_utf8_lossy(record);
            let (sha, subject) = record.split_once(' ').unwrap_or((&record, ""));
            CommitInfo {
                sha: sha.trim_start_matches('\n').to_string(),
                subject: subject.to_string(),
            }
        })
        .collect()
}

/// `git diff --numstat -z` (`ins\tdel\tpath`, or `ins\tdel\t` then old and new path for a rename;
/// `-` counts for a binary file) and `--name-status -z` (a status, then its path, or old and new
/// path for a rename or copy), joined by path, in `--name-status`'s order.
fn parse_files(numstat: &[u8], name_status: &[u8]) -> Vec<FileChange> {
    let text = |f: &[u8]| String::from_utf8_lossy(f).into_owned();
    let mut counts = HashMap::new();
    let mut fields = numstat.split(|b| *b == 0);
    while let Some(field) = fields.next() {
        let field = text(field);
        let mut parts = field.splitn(3, '\t');
        let (Some(ins), Some(del), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let path = if path.is_empty() {
            fields.next();
            fields.next().map(text).unwrap_or_default()
        } else {
            path.to_string()
        };
        counts.insert(path, (ins.parse().ok(), del.parse().ok()));
    }
    let mut files = Vec::new();
    let mut fields = name_status.split(|b| *b == 0).filter(|f| !f.is_empty());
    while let Some(status) = fields.next() {
        let status = text(status);
        let letter = status.chars().next().unwrap_or('M').to_string();
        let mut path = fields.next().map(text).unwrap_or_default();
        if matches!(letter.as_str(), "R" | "C") {
            path = fields.next().map(text).unwrap_or(path);
        }
        let (insertions, deletions) = counts.get(&path).copied().unwrap_or((None, None));
        files.push(FileChange {
            path,
            status: letter,
            insertions,
            deletions,
        });
    }
    files
}

/// The patch from `base` to `head` in `repo` (`git diff`, without colour), or with `stat`, git's
/// summary of it (`git diff --stat`: a line per file and the totals).
pub async fn diff(repo: &Path, base: &str, head: &str, stat: bool) -> Result<String> {
    let mut cmd = Git::new(repo).args(["diff", "--no-color", "--no-ext-diff", "-M"]);
    if stat {
        cmd = cmd.arg("--stat");
    }
    let out = cmd
        .args(["--end-of-options", base, head, "--"])
        .run()
        .await?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Merging

/// What [`merge`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergeOutcome {
    /// `into` now points at `commit`, the merge.
    Merged { into: String, commit: String },
    /// `into` already holds the change; nothing was done.
    AlreadyMerged { into: String },
    /// The change conflicts with `into` in these files; nothing was done.
    Conflict { files: Vec<String> },
}

/// Merges `head` (a commit or branch) into the branch `into` of `repo` (`None`: the branch
/// checked out in `repo`), as a merge commit with `message`, or with `squash`, as one commit of
/// the change whose only parent is `into`.
///
/// When it does not merge (a conflict, changes in the way, an error), the repository is exactly
/// as it was: no ref, index or file changed. The merge is computed in git's object store alone
/// (`git merge-tree --write-tree`, `git commit-tree`); then `into` moves: in the worktree that
/// has it checked out, by `git merge --ff-only` there (its files and index follow; changes there
/// that it would overwrite are [`GitError::Dirty`] and nothing moves); elsewhere by
/// `git update-ref` from the commit it was at (a branch moved meanwhile is an error, not lost
/// work).
pub async fn merge(
    repo: &Path,
    head: &str,
    into: Option<&str>,
    squash: bool,
    message: &str,
) -> Result<MergeOutcome> {
    check_version().await?;
    let _lock = lock_repo(repo).await?;
    let into = match into {
        Some(branch) => branch.to_string(),
        None => current_branch(repo)
            .await?
            .ok_or_else(|| GitError::Detached {
                repo: repo.to_path_buf(),
            })?,
    };
    let target = format!("refs/heads/{into}");
    if !branch_exists(repo, &into).await? {
        return Err(GitError::NoSuchRef {
            repo: repo.to_path_buf(),
            rev: into,
        });
    }
    let old = resolve(repo, &target).await?;
    let theirs = resolve(repo, head).await?;
    if is_ancestor(repo, &theirs, &old).await? {
        return Ok(MergeOutcome::AlreadyMerged { into });
    }

    let merge_tree = Git::new(repo).args([
        "merge-tree",
        "--write-tree",
        "--name-only",
        "--no-messages",
        "-z",
        &old,
        &theirs,
    ]);
    let out = merge_tree.output().await?;
    let (tree, conflicted) = parse_merge_tree(&out.stdout);
    match out.code {
        Some(0) => {}
        Some(1) => return Ok(MergeOutcome::Conflict { files: conflicted }),
        _ => return Err(merge_tree.failed(&out)),
    }
    if squash && tree == resolve_tree(repo, &old).await? {
        return Ok(MergeOutcome::AlreadyMerged { into });
    }

    let identity = fallback_identity(repo).await?;
    let mut commit_tree = Git::new(repo)
        .config(&identity)
        .args(["commit-tree", &tree, "-p", &old]);
    if !squash {
        commit_tree = commit_tree.args(["-p", &theirs]);
    }
    let commit = commit_tree.args(["-m", message]).run().await?.text();

    let listed = list_worktrees(repo).await?;
    let checked_out = listed
        .iter()
        .find(|w| !w.prunable && w.branch.as_deref() == Some(into.as_str()));
    let not_merged = |e: GitError, what: String| match e {
        GitError::Failed { stderr, .. } => GitError::Failed {
            what: format!("{what} (nothing was merged: {into} did not move)"),
            stderr,
        },
        other => other,
    };
    if let Some(w) = checked_out {
        let ff = Git::new(&w.path).config(&identity).args([
            "merge",
            "--ff-only",
            "--no-autostash",
            "--no-stat",
            "--quiet",
            &commit,
        ]);
        let out = ff.output().await?;
        if !out.ok() {
            if out.stderr.contains("would be overwritten") {
                return Err(GitError::Dirty {
                    repo: w.path.clone(),
                    files: overwritten_files(&out.stderr),
                });
            }
            return Err(not_merged(ff.failed(&out), ff.describe()));
        }
    } else {
        let update = Git::new(repo).args([
            "update-ref",
            "-m",
            &format!("agentq: merge {head}"),
            &target,
            &commit,
            &old,
        ]);
        if let Err(e) = update.run().await {
            return Err(not_merged(e, update.describe()));
        }
    }
    Ok(MergeOutcome::Merged { into, commit })
}

/// Whether `ancestor` is `descendant` or one of its ancestors.
async fn is_ancestor(repo: &Path, ancestor: &str, descendant: &str) -> Result<bool> {
    let cmd = Git::new(repo).args(["merge-base", "--is-ancestor", ancestor, descendant]);
    let out = cmd.output().await?;
    match out.code {
        Some(0) => Ok(true),
        Some(1) => Ok(false),
        _ => Err(cmd.failed(&out)),
    }
}

async fn resolve_tree(repo: &Path, commit: &str) -> Result<String> {
    Ok(Git::new(repo)
        .args(["rev-parse", "--verify", "--end-of-options"])
        .arg(format!("{commit}^{{tree}}"))
        .run()
        .await?
        .text())
}

/// `git merge-tree --write-tree --name-only --no-messages -z`: the tree, then each conflicted
/// path.
fn parse_merge_tree(out: &[u8]) -> (String, Vec<String>) {
    let mut fields = out
        .split(|b| *b == 0)
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let tree = fields.next().unwrap_or_default().trim().to_string();
    let mut files: Vec<String> = Vec::new();
    for f in fields.take_while(|f| !f.is_empty()) {
        if !files.contains(&f) {
            files.push(f);
        }
    }
    (tree, files)
}

/// The files `git merge` names (one per line, after a tab) when it refuses because changes would
/// be overwritten.
fn overwritten_files(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix('\t'))
        .map(|l| l.trim().to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Every git command of the tests runs without the machine's global and system config, so the
    /// tests do not depend on them (`/dev/null` is `nul` to Git for Windows too).
    pub(super) fn isolate(cmd: &mut Command) {
        cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1");
        for var in [
            "GIT_AUTHOR_NAME",
            "GIT_AUTHOR_EMAIL",
            "GIT_COMMITTER_NAME",
            "GIT_COMMITTER_EMAIL",
            "EMAIL",
        ] {
            cmd.env_remove(var);
        }
    }

    /// Runs git in `dir` (as the module does), expecting success; its output.
    async fn git(dir: &Path, args: &[&str]) -> String {
        Git::new(dir).args(args).run().await.unwrap().text()
    }

    fn write(path: impl AsRef<Path>, content: impl AsRef<[u8]>) {
        let path = path.as_ref();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    fn read(path: impl AsRef<Path>) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    /// A repository on `main` with one commit of `a.txt`, and an identity of its own.
    async fn repo() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let repo = agentq_platform::fs::canonical(tmp.path())
            .unwrap()
            .join("repo");
        std::fs::create_dir(&repo).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]).await;
        git(&repo, &["config", "user.name", "Test"]).await;
        git(&repo, &["config", "user.email", "test@example.com"]).await;
        write(repo.join("a.txt"), "one\ntwo\nthree\n");
        git(&repo, &["add", "-A"]).await;
        git(&repo, &["commit", "-q", "-m", "first"]).await;
        (tmp, repo)
    }

    /// A worktree of `repo` at `<tmp>/wt/<name>` on the branch `name`, from `main`.
    async fn worktree(repo: &Path, name: &str) -> PathBuf {
        let path = repo.parent().unwrap().join("wt").join(name);
        add_worktree(repo, &path, name, "main").await.unwrap();
        path
    }

    async fn commit_file(dir: &Path, file: &str, content: &str, message: &str) -> String {
        write(dir.join(file), content);
        commit_all(dir, message).await.unwrap().unwrap()
    }

    #[test]
    fn versions_as_git_prints_them() {
        assert_eq!(parse_version("git version 2.47.3"), Some((2, 47, 3)));
        assert_eq!(
            parse_version("git version 2.39.2.windows.1"),
            Some((2, 39, 2))
        );
        assert_eq!(
            parse_version("git version 2.39.3 (Apple Git-145)"),
            Some((2, 39, 3))
        );
        assert_eq!(parse_version("git version 2.48.0-rc1"), Some((2, 48, 0)));
        assert_eq!(parse_version("hub version 2"), None);
        let old = GitError::TooOld {
            found: (2, 30, 1),
            need: MIN_VERSION,
        };
        assert!(old.to_string().contains("2.30.1 is too old"), "{old}");
        assert!(old.to_string().contains("2.38.0"), "{old}");
    }

    #[tokio::test]
    async fn this_machines_git_is_new_enough() {
        let v = check_version().await.unwrap();
        assert!(v >= MIN_VERSION, "{v:?}");
    }

    #[test]
    fn a_held_lock_is_told_from_a_lasting_failure() {
        assert!(lock_held(
            "fatal: Unable to create '/r/.git/index.lock': File exists.\n\nAnother git process seems to be running"
        ));
        assert!(lock_held(
            "error: cannot lock ref 'refs/heads/x': Unable to create '/r/.git/refs/heads/x.lock': File exists."
        ));
        assert!(lock_held(
            "error: could not lock config file .git/config: File exists"
        ));
        assert!(!lock_held(
            "fatal: cannot lock ref 'refs/heads/main': is at 1234 but expected 5678"
        ));
        assert!(!lock_held(
            "error: cannot lock ref 'refs/heads/a/b': 'refs/heads/a' exists; cannot create 'refs/heads/a/b'"
        ));
        assert!(!lock_held("fatal: a branch named 'x' already exists"));
    }

    #[test]
    fn worktree_lists_are_read_with_their_marks() {
        let out = b"worktree /r\0HEAD 1111\0branch refs/heads/main\0\0\
            worktree /s/wt/7\0HEAD 2222\0detached\0locked initializing\0\0\
            worktree /gone\0HEAD 3333\0branch refs/heads/agentq/w/3\0prunable gitdir file points to non-existent location\0\0\
            worktree /bare\0bare\0\0";
        let list = parse_worktrees(out);
        assert_eq!(list.len(), 4);
        assert_eq!(list[0].path, native_path("/r"));
        assert_eq!(list[0].branch.as_deref(), Some("main"));
        assert_eq!(list[1].branch, None);
        assert!(list[1].locked);
        assert_eq!(list[1].lock_reason.as_deref(), Some("initializing"));
        assert!(list[2].prunable && !list[2].locked);
        assert_eq!(list[2].branch.as_deref(), Some("agentq/w/3"));
        assert_eq!(list[3].head, None);
    }

    #[test]
    fn paths_printed_with_slashes_compare_as_the_platform_writes_them() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("b");
        std::fs::create_dir_all(&dir).unwrap();
        let printed = dir.to_string_lossy().replace('\\', "/");
        assert!(same_path(&native_path(&printed), &dir));
        assert!(same_path(&native_path(&format!("{printed}/")), &dir));
        // A folder that is gone still matches through its parent.
        let gone = tmp.path().join("a").join("gone");
        assert!(same_path(
            &native_path(&gone.to_string_lossy().replace('\\', "/")),
            &gone
        ));
        assert!(!same_path(&dir, &gone));
    }

    #[tokio::test]
    async fn a_folder_outside_any_repository_or_bare_is_not_a_repo() {
        let tmp = tempfile::tempdir().unwrap();
        let err = top_level(tmp.path()).await.unwrap_err();
        assert!(
            matches!(&err, GitError::NotARepo { bare: false, path } if path == tmp.path()),
            "{err:?}"
        );
        assert!(err.to_string().contains("git init"), "{err}");
        let missing = tmp.path().join("missing");
        assert!(matches!(
            resolve(&missing, "HEAD").await,
            Err(GitError::NotARepo { .. })
        ));

        let bare = tmp.path().join("bare.git");
        std::fs::create_dir(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare"]).await;
        let err = top_level(&bare).await.unwrap_err();
        assert!(
            matches!(err, GitError::NotARepo { bare: true, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("bare"), "{err}");

        let (_tmp, repo) = repo().await;
        write(repo.join("sub").join("f"), "");
        assert_eq!(top_level(&repo.join("sub")).await.unwrap(), repo);
    }

    #[tokio::test]
    async fn refs_resolve_to_commits_or_are_no_such_ref() {
        let (_tmp, repo) = repo().await;
        let sha = resolve(&repo, "HEAD").await.unwrap();
        assert_eq!(sha.len(), 40, "{sha}");
        assert_eq!(resolve(&repo, "main").await.unwrap(), sha);
        assert_eq!(head(&repo).await.unwrap(), sha);
        for bad in ["nope", "--help", "HEAD~5"] {
            let err = resolve(&repo, bad).await.unwrap_err();
            assert!(
                matches!(&err, GitError::NoSuchRef { rev, .. } if rev == bad),
                "{bad}: {err:?}"
            );
            assert!(err.to_string().contains(&repo.display().to_string()));
        }
    }

    #[tokio::test]
    async fn branch_names_are_checked_and_must_be_new() {
        let (_tmp, repo) = repo().await;
        check_branch(&repo, "agentq/w/1").await.unwrap();
        let err = check_branch(&repo, "main").await.unwrap_err();
        assert!(matches!(err, GitError::BranchExists { .. }), "{err:?}");
        assert!(err.to_string().contains("branch -D main"), "{err}");
        for (bad, why) in [
            ("a..b", ".."),
            ("-x", "dash"),
            ("has space", "space"),
            ("x.lock", ".lock"),
            ("@{-1}", "@{"),
            ("HEAD", "keeps"),
        ] {
            let err = check_branch(&repo, bad).await.unwrap_err();
            assert!(
                matches!(&err, GitError::BadBranchName { why: w, .. } if w.contains(why)),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(
            current_branch(&repo).await.unwrap().as_deref(),
            Some("main")
        );
        git(&repo, &["checkout", "-q", "--detach"]).await;
        assert_eq!(current_branch(&repo).await.unwrap(), None);
    }

    #[tokio::test]
    async fn dirty_lists_every_file_not_committed() {
        let (_tmp, repo) = repo().await;
        assert!(dirty(&repo).await.unwrap().is_empty());
        write(repo.join("a.txt"), "changed\n");
        write(repo.join("new dir").join("ünï code.txt"), "x");
        write(repo.join("b.txt"), "b");
        git(&repo, &["add", "b.txt"]).await;
        git(&repo, &["commit", "-q", "-m", "b", "--", "b.txt"]).await;
        git(&repo, &["mv", "b.txt", "c.txt"]).await;
        let mut files = dirty(&repo).await.unwrap();
        files.sort();
        assert_eq!(files, ["a.txt", "c.txt", "new dir/ünï code.txt"]);
    }

    #[tokio::test]
    async fn a_worktree_is_added_listed_and_removed_and_each_is_idempotent() {
        let (tmp, repo) = repo().await;
        let path = tmp.path().join("state").join("worktrees").join("7");
        add_worktree(&repo, &path, "agentq/w/7", "main")
            .await
            .unwrap();
        assert_eq!(read(path.join("a.txt")), "one\ntwo\nthree\n");
        let listed = list_worktrees(&repo).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(same_path(&listed[0].path, &repo));
        assert!(same_path(&listed[1].path, &path));
        assert_eq!(listed[1].branch.as_deref(), Some("agentq/w/7"));
        assert_eq!(listed[1].head, Some(resolve(&repo, "main").await.unwrap()));
        assert_eq!(
            current_branch(&path).await.unwrap().as_deref(),
            Some("agentq/w/7")
        );

        // Done again (a retry after a crash): nothing to do.
        add_worktree(&repo, &path, "agentq/w/7", "main")
            .await
            .unwrap();
        // The same folder for another branch is in the way.
        let err = add_worktree(&repo, &path, "agentq/w/8", "main")
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::InTheWay { .. }), "{err:?}");
        assert!(err.to_string().contains("agentq/w/7"), "{err}");

        write(path.join("scratch.txt"), "uncommitted");
        remove_worktree(&repo, &path).await.unwrap();
        assert!(!path.exists());
        assert_eq!(list_worktrees(&repo).await.unwrap().len(), 1);
        remove_worktree(&repo, &path).await.unwrap();
        // The branch stays until deleted; deleting it twice is fine.
        check_branch(&repo, "agentq/w/7").await.unwrap_err();
        delete_branch(&repo, "agentq/w/7").await.unwrap();
        delete_branch(&repo, "agentq/w/7").await.unwrap();
        check_branch(&repo, "agentq/w/7").await.unwrap();

        // A locked worktree whose folder was deleted by hand: its entry goes too.
        let locked = worktree(&repo, "locked").await;
        Git::new(&repo)
            .args(["worktree", "lock"])
            .arg(&locked)
            .run()
            .await
            .unwrap();
        std::fs::remove_dir_all(&locked).unwrap();
        prune(&repo).await.unwrap();
        assert_eq!(
            list_worktrees(&repo).await.unwrap().len(),
            2,
            "the lock keeps it"
        );
        remove_worktree(&repo, &locked).await.unwrap();
        assert_eq!(list_worktrees(&repo).await.unwrap().len(), 1);

        // A removal cut short (the `.git` file went first): the rest goes.
        let cut = worktree(&repo, "cut").await;
        std::fs::remove_file(cut.join(".git")).unwrap();
        remove_worktree(&repo, &cut).await.unwrap();
        assert!(!cut.exists());
        assert_eq!(list_worktrees(&repo).await.unwrap().len(), 1);

        // A folder git does not know is not removed as a worktree.
        let stranger = tmp.path().join("stranger");
        write(stranger.join("keep.txt"), "mine");
        let err = remove_worktree(&repo, &stranger).await.unwrap_err();
        assert!(matches!(err, GitError::NotAWorktree { .. }), "{err:?}");
        assert_eq!(read(stranger.join("keep.txt")), "mine");
        prune(&repo).await.unwrap();
        repair(&repo).await.unwrap();
    }

    #[tokio::test]
    async fn a_retry_after_a_crash_finishes_adding_the_worktree() {
        let (tmp, repo) = repo().await;
        let worktrees = tmp.path().join("worktrees");

        // The branch was made, the worktree not: it is checked out, at its own commit.
        git(&repo, &["branch", "agentq/w/1", "main"]).await;
        let one = worktrees.join("1");
        commit_file(&repo, "x.txt", "x", "on main after the branch").await;
        add_worktree(&repo, &one, "agentq/w/1", "main")
            .await
            .unwrap();
        assert_eq!(
            head(&one).await.unwrap(),
            resolve(&repo, "main~1").await.unwrap()
        );

        // An empty folder left behind is taken over.
        let two = worktrees.join("2");
        std::fs::create_dir_all(&two).unwrap();
        add_worktree(&repo, &two, "agentq/w/2", "main")
            .await
            .unwrap();
        assert!(two.join("a.txt").exists());

        // A dead worktree (its entry in the repository gone): pruned, removed and made again.
        let three = worktrees.join("3");
        add_worktree(&repo, &three, "agentq/w/3", "main")
            .await
            .unwrap();
        std::fs::remove_dir_all(repo.join(".git").join("worktrees").join("3")).unwrap();
        add_worktree(&repo, &three, "agentq/w/3", "main")
            .await
            .unwrap();
        assert!(dirty(&three).await.unwrap().is_empty());
        assert!(
            list_worktrees(&repo)
                .await
                .unwrap()
                .iter()
                .any(|w| same_path(&w.path, &three) && !w.prunable)
        );

        // `git worktree add` stopped while making it (still locked "initializing"): made again.
        let four = worktrees.join("4");
        add_worktree(&repo, &four, "agentq/w/4", "main")
            .await
            .unwrap();
        Git::new(&repo)
            .args(["worktree", "lock", "--reason", "initializing"])
            .arg(&four)
            .run()
            .await
            .unwrap();
        add_worktree(&repo, &four, "agentq/w/4", "main")
            .await
            .unwrap();
        let listed = list_worktrees(&repo).await.unwrap();
        let w = listed.iter().find(|w| same_path(&w.path, &four)).unwrap();
        assert!(!w.locked, "{w:?}");

        // Its folder deleted while a lock kept the entry: made again.
        Git::new(&repo)
            .args(["worktree", "lock"])
            .arg(&four)
            .run()
            .await
            .unwrap();
        std::fs::remove_dir_all(&four).unwrap();
        add_worktree(&repo, &four, "agentq/w/4", "main")
            .await
            .unwrap();
        assert!(four.join("a.txt").exists());

        // A folder with someone's files in it is in the way, and left as it was.
        let five = worktrees.join("5");
        write(five.join("notes.txt"), "mine");
        let err = add_worktree(&repo, &five, "agentq/w/5", "main")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, GitError::InTheWay { path, .. } if path == &five),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&five.display().to_string()),
            "{err}"
        );
        assert_eq!(read(five.join("notes.txt")), "mine");
        check_branch(&repo, "agentq/w/5").await.unwrap();
    }

    #[tokio::test]
    async fn commit_all_commits_what_is_left_or_nothing() {
        let (_tmp, repo) = repo().await;
        let wt = worktree(&repo, "task").await;
        assert_eq!(commit_all(&wt, "nothing").await.unwrap(), None);
        write(wt.join("a.txt"), "changed\n");
        write(wt.join("sub").join("new.txt"), "new\n");
        let sha = commit_all(&wt, "agentq: task 1").await.unwrap().unwrap();
        assert_eq!(head(&wt).await.unwrap(), sha);
        assert!(dirty(&wt).await.unwrap().is_empty());
        assert_eq!(
            git(&wt, &["log", "-1", "--format=%s|%an <%ae>"]).await,
            "agentq: task 1|Test <test@example.com>"
        );
        assert_eq!(commit_all(&wt, "again").await.unwrap(), None);
        // The main worktree is untouched.
        assert_eq!(read(repo.join("a.txt")), "one\ntwo\nthree\n");
    }

    #[tokio::test]
    async fn commit_all_is_agentqs_where_no_identity_is_configured() {
        let (_tmp, repo) = repo().await;
        git(&repo, &["config", "--unset", "user.name"]).await;
        git(&repo, &["config", "--unset", "user.email"]).await;
        write(repo.join("a.txt"), "changed\n");
        commit_all(&repo, "by agentq").await.unwrap().unwrap();
        assert_eq!(
            git(&repo, &["log", "-1", "--format=%an <%ae>|%cn <%ce>"]).await,
            "agentq <agentq@localhost>|agentq <agentq@localhost>"
        );
        // For that commit alone: nothing was written to the repository's config.
        let out = Git::new(&repo)
            .args(["config", "--get", "user.name"])
            .output()
            .await
            .unwrap();
        assert_eq!(out.code, Some(1));
    }

    #[tokio::test]
    async fn change_lists_commits_and_files_with_their_counts() {
        let (_tmp, repo) = repo().await;
        write(repo.join("gone.txt"), "bye\nbye\n");
        write(repo.join("old name.txt"), "a\nb\nc\nd\ne\nf\n");
        git(&repo, &["add", "-A"]).await;
        git(&repo, &["commit", "-q", "-m", "more"]).await;
        let base = resolve(&repo, "main").await.unwrap();
        let wt = worktree(&repo, "task").await;

        write(wt.join("a.txt"), "one\n2\nthree\nfour\n");
        write(wt.join("added.txt"), "x\ny\n");
        let first = commit_all(&wt, "first change").await.unwrap().unwrap();
        std::fs::remove_file(wt.join("gone.txt")).unwrap();
        write(wt.join("bin.dat"), [0u8, 159, 146, 150, 0, 1]);
        std::fs::rename(wt.join("old name.txt"), wt.join("new name.txt")).unwrap();
        let second = commit_all(&wt, "second change").await.unwrap().unwrap();

        let change = change(&repo, &base, &second).await.unwrap();
        assert_eq!(
            change.commits,
            [
                CommitInfo {
                    sha: first,
                    subject: "first change".into()
                },
                CommitInfo {
                    sha: second.clone(),
                    subject: "second change".into()
                }
            ]
        );
        let mut files = change.files.clone();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let f = |path: &str, status: &str, ins: Option<u64>, del: Option<u64>| FileChange {
            path: path.into(),
            status: status.into(),
            insertions: ins,
            deletions: del,
        };
        assert_eq!(
            files,
            [
                f("a.txt", "M", Some(2), Some(1)),
                f("added.txt", "A", Some(2), Some(0)),
                f("bin.dat", "A", None, None),
                f("gone.txt", "D", Some(0), Some(2)),
                f("new name.txt", "R", Some(0), Some(0)),
            ]
        );
        assert_eq!((change.insertions, change.deletions), (4, 3));

        let patch = diff(&repo, &base, &second, false).await.unwrap();
        assert!(patch.contains("+four"), "{patch}");
        assert!(patch.contains("rename to new name.txt"), "{patch}");
        assert!(!patch.contains('\u{1b}'), "no colour: {patch}");
        let stat = diff(&repo, &base, &second, true).await.unwrap();
        assert!(
            stat.contains("5 files changed, 4 insertions(+), 3 deletions(-)"),
            "{stat}"
        );

        let none = super::change(&repo, &base, &base).await.unwrap();
        assert_eq!(none, Change::default());
    }

    /// Everything a failed merge must leave as it was.
    async fn snapshot(repo: &Path) -> (String, String, String, String, String) {
        (
            git(repo, &["status", "--porcelain=v1", "--untracked-files=all"]).await,
            git(repo, &["rev-parse", "HEAD"]).await,
            git(repo, &["for-each-ref", "--format=%(refname) %(objectname)"]).await,
            read(repo.join("a.txt")),
            git(repo, &["diff", "--cached"]).await,
        )
    }

    #[tokio::test]
    async fn a_clean_merge_into_the_checked_out_branch_updates_its_files() {
        let (_tmp, repo) = repo().await;
        let wt = worktree(&repo, "task").await;
        let task = commit_file(&wt, "a.txt", "one\ntwo\nthree\nfour\n", "task").await;
        // main moved on meanwhile, in another file.
        let main_before = commit_file(&repo, "m.txt", "m\n", "main moves").await;
        write(repo.join("untouched-local.txt"), "local");

        let out = merge(&repo, "task", None, false, "merge task")
            .await
            .unwrap();
        let MergeOutcome::Merged { into, commit } = out else {
            panic!("{out:?}")
        };
        assert_eq!(into, "main");
        assert_eq!(resolve(&repo, "main").await.unwrap(), commit);
        assert_eq!(
            git(&repo, &["log", "-1", "--format=%P|%s"]).await,
            format!("{main_before} {task}|merge task")
        );
        assert_eq!(read(repo.join("a.txt")), "one\ntwo\nthree\nfour\n");
        assert_eq!(read(repo.join("m.txt")), "m\n");
        assert_eq!(dirty(&repo).await.unwrap(), ["untouched-local.txt"]);

        // Again: already there.
        assert_eq!(
            merge(&repo, &task, None, false, "again").await.unwrap(),
            MergeOutcome::AlreadyMerged {
                into: "main".into()
            }
        );
    }

    #[tokio::test]
    async fn a_merge_into_a_branch_not_checked_out_moves_only_its_ref() {
        let (_tmp, repo) = repo().await;
        git(&repo, &["branch", "release"]).await;
        let wt = worktree(&repo, "task").await;
        let task = commit_file(&wt, "a.txt", "changed\n", "task").await;
        let main_before = snapshot(&repo).await;
        let release = resolve(&repo, "release").await.unwrap();

        let out = merge(&repo, &task, Some("release"), false, "into release")
            .await
            .unwrap();
        let MergeOutcome::Merged { commit, .. } = &out else {
            panic!("{out:?}")
        };
        assert_eq!(&resolve(&repo, "release").await.unwrap(), commit);
        assert_eq!(
            git(&repo, &["log", "-1", "--format=%P", commit]).await,
            format!("{release} {task}")
        );
        assert_eq!(git(&repo, &["show", "release:a.txt"]).await, "changed");
        let (status, head, _, file, index) = snapshot(&repo).await;
        assert_eq!(
            (status, head, file, index),
            (main_before.0, main_before.1, main_before.3, main_before.4)
        );

        let err = merge(&repo, &task, Some("nope"), false, "m")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, GitError::NoSuchRef { rev, .. } if rev == "nope"),
            "{err:?}"
        );
        git(&repo, &["checkout", "-q", "--detach"]).await;
        let err = merge(&repo, &task, None, false, "m").await.unwrap_err();
        assert!(matches!(err, GitError::Detached { .. }), "{err:?}");
        assert!(err.to_string().contains("--into"), "{err}");
    }

    #[tokio::test]
    async fn a_squash_merge_is_one_commit_on_the_branch() {
        let (_tmp, repo) = repo().await;
        let main = resolve(&repo, "main").await.unwrap();
        let wt = worktree(&repo, "task").await;
        commit_file(&wt, "a.txt", "1\n", "one").await;
        let task = commit_file(&wt, "b.txt", "2\n", "two").await;

        let out = merge(&repo, "task", Some("main"), true, "task, squashed")
            .await
            .unwrap();
        let MergeOutcome::Merged { commit, .. } = &out else {
            panic!("{out:?}")
        };
        assert_eq!(
            git(&repo, &["log", "-1", "--format=%P|%s", commit]).await,
            format!("{main}|task, squashed")
        );
        assert_eq!(read(repo.join("b.txt")), "2\n");
        assert!(dirty(&repo).await.unwrap().is_empty());
        assert_eq!(
            merge(&repo, &task, None, true, "again").await.unwrap(),
            MergeOutcome::AlreadyMerged {
                into: "main".into()
            }
        );
    }

    #[tokio::test]
    async fn a_conflict_leaves_the_repository_exactly_as_it_was() {
        let (_tmp, repo) = repo().await;
        let wt = worktree(&repo, "task").await;
        commit_file(&wt, "a.txt", "one\nTASK\nthree\n", "task").await;
        commit_file(&repo, "a.txt", "one\nMAIN\nthree\n", "main").await;
        // Work in progress in the repository that a merge must not disturb.
        write(repo.join("wip.txt"), "wip");
        write(repo.join("staged.txt"), "staged");
        git(&repo, &["add", "staged.txt"]).await;
        let before = snapshot(&repo).await;

        for squash in [false, true] {
            let out = merge(&repo, "task", None, squash, "m").await.unwrap();
            assert_eq!(
                out,
                MergeOutcome::Conflict {
                    files: vec!["a.txt".into()]
                }
            );
            assert_eq!(snapshot(&repo).await, before);
        }
        assert!(!repo.join(".git").join("MERGE_HEAD").exists());
    }

    #[tokio::test]
    async fn changes_in_the_way_stop_the_merge_before_anything_moves() {
        let (_tmp, repo) = repo().await;
        let wt = worktree(&repo, "task").await;
        commit_file(&wt, "a.txt", "from the task\n", "task").await;
        write(repo.join("a.txt"), "edited by hand, not committed\n");
        let before = snapshot(&repo).await;
        let err = merge(&repo, "task", None, false, "m").await.unwrap_err();
        assert!(
            matches!(&err, GitError::Dirty { files, .. } if files == &["a.txt"]),
            "{err:?}"
        );
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        assert_eq!(snapshot(&repo).await, before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn eight_worktrees_made_committed_and_merged_at_once_all_succeed() {
        let (tmp, repo) = repo().await;
        git(&repo, &["branch", "integration"]).await;
        let jobs: Vec<_> = (0..8)
            .map(|i| {
                let repo = repo.clone();
                let path = tmp.path().join("wt").join(i.to_string());
                tokio::spawn(async move {
                    let branch = format!("agentq/w/{i}");
                    add_worktree(&repo, &path, &branch, "main").await?;
                    write(path.join(format!("f{i}.txt")), format!("{i}\n"));
                    let sha = commit_all(&path, &format!("task {i}")).await?;
                    // Each merge reads the branch and moves it from what it read: one at a time.
                    merge(
                        &repo,
                        &branch,
                        Some("integration"),
                        false,
                        &format!("merge {i}"),
                    )
                    .await
                    .map(|outcome| (sha, outcome))
                })
            })
            .collect();
        // Spawned, they run at once; awaited in turn, each result is read.
        let mut shas = Vec::new();
        for job in jobs {
            let (sha, outcome) = job.await.unwrap().unwrap();
            assert!(
                matches!(outcome, MergeOutcome::Merged { .. }),
                "{outcome:?}"
            );
            shas.push(sha.unwrap());
        }
        let mut unique = shas.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 8);
        assert_eq!(list_worktrees(&repo).await.unwrap().len(), 9);
        for i in 0..8 {
            assert_eq!(
                git(&repo, &["show", &format!("integration:f{i}.txt")]).await,
                i.to_string()
            );
        }
    }

    #[tokio::test]
    async fn a_held_index_lock_is_waited_out() {
        let (_tmp, repo) = repo().await;
        let lock = repo.join(".git").join("index.lock");
        std::fs::write(&lock, "").unwrap();
        write(repo.join("a.txt"), "changed\n");
        let release = {
            let lock = lock.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                std::fs::remove_file(lock).unwrap();
            })
        };
        let started = Instant::now();
        let sha = commit_all(&repo, "after the lock").await.unwrap().unwrap();
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(head(&repo).await.unwrap(), sha);
        release.await.unwrap();
    }

    #[test]
    fn errors_map_to_the_workspace_error() {
        use agentq_core::error::Error;
        let e: Error = GitError::NotInstalled.into();
        assert!(matches!(e, Error::ProgramMissing { .. }));
        let e: Error = GitError::NoSuchRef {
            repo: "/r".into(),
            rev: "x".into(),
        }
        .into();
        assert_eq!(e.exit_code(), 2);
        let e: Error = GitError::Failed {
            what: "`git x` in /r".into(),
            stderr: "fatal: no".into(),
        }
        .into();
        assert_eq!(e.to_string(), "`git x` in /r failed: fatal: no");
        assert_eq!(e.exit_code(), 3);
    }
}
