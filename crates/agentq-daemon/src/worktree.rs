//! Tasks in git worktrees of their own, and their changes handed back for review.
//!
//! With `isolation = "worktree"` (a worker's, the pool's or one task's), a task is planned at
//! submit time against its repository ([`planned`]: the repository found, the base resolved, a
//! named branch checked, so a wrong one is the submitter's error), gets its worktree before its
//! first attempt ([`prepare`]: `.agentq/worktrees/<task id>` on the branch
//! `<prefix>/<worker>/<task id>`, or the worker's one shared worktree, `worker-<name>` on
//! `<prefix>/<worker>`, for a conversation that must keep its folder), and when it ends its change
//! is recorded on it ([`conclude`]: what the agent left uncommitted committed by agentq, the
//! commits from the base, the files and line counts). The change is then the operator's: [`diff`],
//! [`merge`] (nothing is changed when it does not apply cleanly), [`discard`]; [`list`] and
//! [`prune`] keep the folder tidy. Every git call is `crate::git`'s, which serialises the writes to
//! one repository and waits out another process's lock.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::config::{Config, WorkerConfig, WorktreeSettings};
use crate::git::{self, GitError, MergeOutcome};
use agentq_core::domain::{AttemptEnd, Cause, POOL, TaskState};
use agentq_core::error::{Error, Result};
use agentq_core::worktree::{self as wt, CommitMode, Isolation, Merged, Stage, Worktree};
use agentq_store::{Store, Task, now_ms};

/// A worktree a task is to run in: its worker's settings with what the submitter overrode.
#[derive(Clone, Debug, PartialEq)]
pub struct Wanted {
    pub settings: WorktreeSettings,
    /// The worker's `cwd`: where the repository is looked for unless `repo` is set.
    pub cwd: PathBuf,
    /// A branch name the submitter chose (else one is made from the task's id).
    pub branch: Option<String>,
    /// The worker's one worktree, kept across its tasks.
    pub shared: bool,
}

/// Whether (and how) a task submitted as `ask` to `worker` gets a worktree: the worker's
/// `isolation`, unless the submitter said otherwise. Pure; a `--repo`, `--base` or `--branch`
/// without isolation is refused, as it would do nothing.
pub fn wanted(
    worker: &WorkerConfig,
    pool: bool,
    ask: &crate::route::Ask,
) -> Result<Option<Wanted>> {
    let settings = match (ask.isolation, &worker.worktree) {
        (Some(Isolation::None), _) | (None, None) => {
            if ask.repo.is_some() || ask.base.is_some() || ask.branch.is_some() {
                return Err(Error::Usage(
                    "--repo, --base and --branch apply only to a task in a worktree: add --isolation worktree (or set isolation = \"worktree\" on the worker)".into(),
                ));
            }
            return Ok(None);
        }
        (_, Some(settings)) => settings.clone(),
        (Some(Isolation::Worktree), None) => {
            WorktreeSettings::default_for(pool || worker.name == POOL)
        }
    };
    let mut settings = settings;
    if let Some(repo) = ask.repo {
        settings.repo = Some(repo.to_path_buf());
    }
    if let Some(base) = ask.base {
        settings.base = base.to_string();
    }
    let shared = !(pool || worker.name == POOL || settings.per_task);
    if shared && ask.branch.is_some() {
        return Err(Error::Usage(format!(
            "worker {:?} keeps one worktree for its conversation (on branch {}): a task of it cannot have a branch of its own; set worktree = \"per-task\" on the worker, or submit to the pool",
            worker.name,
            wt::branch_name(&settings.branch_prefix, &worker.name, None)
        )));
    }
    Ok(Some(Wanted {
        settings,
        cwd: worker.cwd.clone(),
        branch: ask.branch.map(str::to_string),
        shared,
    }))
}

fn git_error(e: GitError) -> Error {
    match e {
        GitError::NotARepo { .. }
        | GitError::NoSuchRef { .. }
        | GitError::BranchExists { .. }
        | GitError::BadBranchName { .. }
        | GitError::Dirty { .. } => Error::Usage(e.to_string()),
        other => other.into(),
    }
}

/// At submit time: the record of the worktree a task will run in, with its repository and base
/// resolved now (the base is the repository's commit at submit time, whatever happens to the
/// branch later). Refuses a folder that is not in a git repository, a base that does not exist,
/// uncommitted changes where `require_clean_base` is set, and a chosen branch that exists.
pub async fn planned(wanted: &Wanted) -> Result<Worktree> {
    let s = &wanted.settings;
    let look = s.repo.as_deref().unwrap_or(&wanted.cwd);
    let repo = git::top_level(look).await.map_err(git_error)?;
    let base = git::resolve(&repo, &s.base).await.map_err(git_error)?;
    if s.require_clean_base {
        let dirty = git::dirty(&repo).await.map_err(git_error)?;
        if !dirty.is_empty() {
            return Err(Error::Usage(format!(
                "{} has uncommitted changes ({}{}) and require_clean_base = true: commit or stash them first",
                repo.display(),
                dirty.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                if dirty.len() > 5 {
                    format!(" and {} more", dirty.len() - 5)
                } else {
                    String::new()
                }
            )));
        }
    }
    if let Some(branch) = &wanted.branch {
        git::check_branch(&repo, branch).await.map_err(git_error)?;
    }
    Ok(Worktree {
        repo: repo.to_string_lossy().into_owned(),
        base_ref: s.base.clone(),
        base,
        branch: wanted.branch.clone().unwrap_or_default(),
        path: String::new(),
        shared: wanted.shared,
        commit: s.commit,
        keep: s.keep,
        stage: Stage::Planned,
        removed: false,
        head: None,
        commits: Vec::new(),
        auto_commit: None,
        uncommitted: Vec::new(),
        files: Vec::new(),
        insertions: 0,
        deletions: 0,
        diffstat: String::new(),
        merged: None,
        error: None,
    })
}

/// The folder every worktree is made in.
pub fn root(config: &Config) -> PathBuf {
    config.state_dir().join(wt::DIR)
}

/// Before an attempt: the task's worktree made (or found again, for a retry or after a crash),
/// recorded as `active`, and the folder the agent runs in returned: the worktree, or the same
/// sub-folder of it as the worker's `cwd` is of the repository. A task without one runs in the
/// worker's `cwd` (`Ok(None)`). `Err`: the attempt's end instead (the worktree could not be made;
/// the record says why).
pub async fn prepare(
    config: &Config,
    store: &dyn Store,
    worker: &WorkerConfig,
    task: &Task,
) -> std::result::Result<Option<(PathBuf, Worktree)>, AttemptEnd> {
    let Some(planned) = &task.worktree else {
        return Ok(None);
    };
    let mut rec = planned.clone();
    let prefix = worker
        .worktree
        .as_ref()
        .map_or("agentq", |s| s.branch_prefix.as_str());
    let repo = PathBuf::from(&rec.repo);
    let folder = if rec.shared {
        wt::folder_name(&task.worker, None)
    } else {
        wt::folder_name(&task.worker, Some(task.id))
    };
    let path = root(config).join(folder);
    if rec.branch.is_empty() {
        rec.branch = wt::branch_name(prefix, &task.worker, (!rec.shared).then_some(task.id));
    }
    rec.path = path.to_string_lossy().into_owned();
    let made = make(&repo, &path, &rec).await;
    let fail = |rec: &mut Worktree, why: String| {
        rec.stage = Stage::Failed;
        rec.error = Some(why.clone());
        why
    };
    let made = match made {
        Ok(made) => made,
        Err(e) => {
            let retryable = matches!(e, GitError::Failed { .. } | GitError::Io { .. });
            let why = fail(&mut rec, format!("could not make its worktree: {e}"));
            // A held lock or a busy disk may pass; a bad repository or branch will not.
            if retryable {
                rec.stage = planned.stage;
            }
            record(store, task.id, &rec, "worktree_failed", &why).await;
            return Err(AttemptEnd::Failed {
                cause: Cause::Config,
                reason: why,
                retryable,
            });
        }
    };
    if rec.shared || rec.stage != Stage::Active {
        // A shared worktree's task is measured from where the worktree stands now.
        match git::head(&path).await {
            // (A retry keeps the base its first attempt started from.)
            Ok(head) if rec.shared && rec.stage != Stage::Active => rec.base = head,
            Ok(_) => {}
            Err(e) => {
                let why = fail(&mut rec, format!("could not read its worktree's HEAD: {e}"));
                record(store, task.id, &rec, "worktree_failed", &why).await;
                return Err(AttemptEnd::failed(Cause::Config, why));
            }
        }
        rec.stage = Stage::Active;
        rec.removed = false;
        let message = format!(
            "{} worktree {} on branch {} from {}",
            if made { "made" } else { "in" },
            path.display(),
            rec.branch,
            short(&rec.base)
        );
        record(store, task.id, &rec, "worktree_made", &message).await;
    }
    Ok(Some((inside(&repo, &worker.cwd, &path), rec)))
}

/// Makes the worktree unless it is there already (a retry, a shared one, a crash after `git
/// worktree add`). `Ok(true)`: made now. A branch that exists and was not agentq's for this task
/// (it has commits past the base, or another worktree holds it) is refused.
async fn make(repo: &Path, path: &Path, rec: &Worktree) -> std::result::Result<bool, GitError> {
    if path.join(".git").exists() {
        let listed = git::list_worktrees(repo).await?;
        if listed.iter().any(|w| git::same_path(&w.path, path)) {
            return Ok(false);
        }
    }
    if rec.stage == Stage::Planned
        && !rec.shared
        && let Err(GitError::BranchExists { .. }) = git::check_branch(repo, &rec.branch).await
    {
        // Ours only if it is where a worktree add that was cut short left it.
        let at = git::resolve(repo, &rec.branch).await?;
        let held = git::list_worktrees(repo)
            .await?
            .iter()
            .any(|w| w.branch.as_deref() == Some(rec.branch.as_str()));
        if at != rec.base || held {
            return Err(GitError::BranchExists {
                repo: repo.to_path_buf(),
                branch: rec.branch.clone(),
            });
        }
    }
    git::add_worktree(repo, path, &rec.branch, &rec.base).await?;
    Ok(true)
}

/// The folder the agent runs in: the worktree, or the same sub-folder of it as `cwd` is of the
/// repository (when it exists there).
fn inside(repo: &Path, cwd: &Path, worktree: &Path) -> PathBuf {
    match canon(cwd).strip_prefix(canon(repo)) {
        Ok(rel) if !rel.as_os_str().is_empty() && worktree.join(rel).is_dir() => worktree.join(rel),
        _ => worktree.to_path_buf(),
    }
}

/// A path made canonical as tools take it (Windows: without `\\?\`), or as it is when it
/// cannot be.
fn canon(p: &Path) -> PathBuf {
    agentq_platform::fs::canonical(p).unwrap_or_else(|_| p.to_path_buf())
}

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(10)]
}

/// Records the worktree on its task with an event; a store that cannot is logged (the record is
/// rewritten at the next step, and `agentq worktrees prune` settles what a crash left).
async fn record(store: &dyn Store, id: i64, rec: &Worktree, kind: &str, message: &str) {
    if let Err(e) = store
        .set_worktree(id, rec, Some((kind, message)), now_ms())
        .await
    {
        warn!(
            task = id,
            "could not record its worktree ({kind}: {message}): {e}"
        );
    }
}

/// When a task has ended (`succeeded` or not): what the agent left uncommitted is committed on
/// its branch (`commit = "auto"`), its change from the base is recorded on the task (`ready`, or
/// `empty` when there is none), and the folder removed as `keep` says (never one holding
/// uncommitted work, never a shared one). Returns the record as written.
pub async fn conclude(store: &dyn Store, task: &Task, rec: &Worktree, succeeded: bool) -> Worktree {
    let mut rec = rec.clone();
    if rec.stage != Stage::Active {
        return rec;
    }
    let repo = PathBuf::from(&rec.repo);
    let path = PathBuf::from(&rec.path);
    if let Err(e) = settle_change(&mut rec, task, &repo, &path).await {
        warn!(task = task.id, "could not record its change: {e}");
        rec.error = Some(format!("could not record its change: {e}"));
        record(store, task.id, &rec, "worktree_failed", &e.to_string()).await;
        return rec;
    }
    let mut removed_why = None;
    if !rec.shared && rec.uncommitted.is_empty() {
        if rec.stage == Stage::Empty {
            removed_why = Some("it changed nothing");
        } else if rec.keep.removes_after(succeeded) {
            removed_why = Some(match rec.keep {
                wt::Keep::Never => "keep = \"never\"",
                _ => "keep = \"on-failure\" and it succeeded",
            });
        }
    }
    if let Some(why) = removed_why {
        match git::remove_worktree(&repo, &path).await {
            Ok(()) => {
                rec.removed = true;
                if rec.stage == Stage::Empty
                    && let Err(e) = git::delete_branch(&repo, &rec.branch).await
                {
                    warn!(
                        task = task.id,
                        "could not delete its empty branch {}: {e}", rec.branch
                    );
                }
                info!(task = task.id, "removed its worktree: {why}");
            }
            Err(e) => warn!(task = task.id, "could not remove its worktree: {e}"),
        }
    }
    let (kind, message) = match rec.stage {
        Stage::Empty => ("worktree_empty", "no change".to_string()),
        _ => (
            "worktree_ready",
            format!(
                "{} on {} ({} commit{}){}",
                rec.diffstat(),
                rec.branch,
                rec.commits.len(),
                if rec.commits.len() == 1 { "" } else { "s" },
                if rec.uncommitted.is_empty() {
                    String::new()
                } else {
                    format!("; {} file(s) left uncommitted", rec.uncommitted.len())
                }
            ),
        ),
    };
    record(store, task.id, &rec, kind, &message).await;
    rec
}

/// Commits what was left (or lists it), and reads the change from the base into the record.
async fn settle_change(
    rec: &mut Worktree,
    task: &Task,
    repo: &Path,
    path: &Path,
) -> std::result::Result<(), GitError> {
    if path.is_dir() {
        match rec.commit {
            CommitMode::Auto => {
                let message = commit_message(task);
                rec.auto_commit = git::commit_all(path, &message).await?;
            }
            CommitMode::Never => rec.uncommitted = git::dirty(path).await?,
        }
    }
    let head = git::resolve(repo, &rec.branch).await?;
    let change = git::change(repo, &rec.base, &head).await?;
    rec.head = Some(head);
    rec.commits = change.commits;
    rec.files = change.files;
    rec.insertions = change.insertions;
    rec.deletions = change.deletions;
    rec.diffstat = rec.diffstat();
    rec.stage = if rec.commits.is_empty() && rec.uncommitted.is_empty() {
        Stage::Empty
    } else {
        Stage::Ready
    };
    Ok(())
}

/// agentq's commit of what the agent left: names the task, its worker and its prompt's first
/// line.
fn commit_message(task: &Task) -> String {
    let first = task.prompt.lines().next().unwrap_or("").trim();
    let first: String = first.chars().take(72).collect();
    format!(
        "agentq: task {} on {}\n\n{first}\n\nCommitted by agentq: what the agent left uncommitted when the task ended.",
        task.id, task.worker
    )
}

/// The task and its worktree record, or why there is none.
async fn task_with_worktree(store: &dyn Store, id: i64) -> Result<(Task, Worktree)> {
    let task = store.get(id).await?.ok_or(Error::NoSuchTask { id })?;
    let Some(rec) = task.worktree.clone() else {
        return Err(Error::Usage(format!(
            "task {id} ran in its worker's folder, not in a worktree of its own: it has no change to show (submit with --isolation worktree, or set isolation = \"worktree\" on the worker)"
        )));
    };
    Ok((task, rec))
}

/// The task's change as a patch (`stat`: `git diff --stat`), from its base to its branch's
/// commit when it ended (while it runs: to what is committed so far).
pub async fn diff(store: &dyn Store, id: i64, stat: bool) -> Result<String> {
    let (task, rec) = task_with_worktree(store, id).await?;
    let repo = PathBuf::from(&rec.repo);
    let head = match (&rec.head, rec.stage) {
        (Some(head), _) => head.clone(),
        (None, Stage::Active) => git::resolve(&repo, &rec.branch).await.map_err(git_error)?,
        (None, stage) => {
            return Err(Error::WrongState {
                id,
                state: format!("{} (worktree {stage})", task.state),
                what: "its worktree holds no change yet",
            });
        }
    };
    git::diff(&repo, &rec.base, &head, stat)
        .await
        .map_err(git_error)
}

/// Merges a ready change into `into` (default: the branch the repository has checked out), as a
/// merge commit or `squash`ed into one. A change that does not apply cleanly changes nothing and
/// is an error listing the conflicting files. After the merge the task's own worktree and branch
/// go (a worker's shared worktree stays).
pub async fn merge(store: &dyn Store, id: i64, into: Option<&str>, squash: bool) -> Result<Value> {
    let (task, mut rec) = task_with_worktree(store, id).await?;
    open_change(&task, &rec)?;
    let repo = PathBuf::from(&rec.repo);
    let head = rec.head.clone().unwrap_or_default();
    let first: String = task
        .prompt
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(60)
        .collect();
    let message = if squash {
        let mut m = format!(
            "agentq task {id}: {first}\n\nSquashed from {}:\n",
            rec.branch
        );
        for c in &rec.commits {
            m.push_str(&format!("  {} {}\n", short(&c.sha), c.subject));
        }
        m
    } else {
        format!("Merge agentq task {id} ({}): {first}", rec.branch)
    };
    let outcome = git::merge(&repo, &head, into, squash, &message)
        .await
        .map_err(git_error)?;
    let (into, commit) = match outcome {
        MergeOutcome::Conflict { files } => {
            return Err(Error::MergeConflict {
                id,
                into: into.unwrap_or("the checked-out branch").to_string(),
                branch: rec.branch.clone(),
                files,
            });
        }
        MergeOutcome::AlreadyMerged { into } => (into, head.clone()),
        MergeOutcome::Merged { into, commit } => (into, commit),
    };
    rec.stage = Stage::Merged;
    rec.merged = Some(Merged {
        into: into.clone(),
        commit: commit.clone(),
        squash,
        at: now_ms(),
    });
    let removed = tidy_after(&repo, &mut rec, true).await;
    let message = format!(
        "merged {} into {into}{} as {}{removed}",
        rec.branch,
        if squash { " (squashed)" } else { "" },
        short(&commit)
    );
    store
        .set_worktree(id, &rec, Some(("worktree_merged", &message)), now_ms())
        .await?;
    Ok(
        json!({"id": id, "merged": true, "into": into, "commit": commit, "squash": squash,
        "branch": rec.branch, "message": message, "worktree": rec}),
    )
}

/// Whether a task's change may be merged now; why not, in words.
fn open_change(task: &Task, rec: &Worktree) -> Result<()> {
    if !task.state.is_terminal() {
        return Err(Error::WrongState {
            id: task.id,
            state: task.state.to_string(),
            what: "its change is not settled until it ends: wait for it (`agentq wait`), or cancel it",
        });
    }
    if rec.stage == Stage::Ready && !rec.uncommitted.is_empty() {
        return Err(Error::WrongState {
            id: task.id,
            state: format!(
                "{} (worktree ready, {} file(s) uncommitted)",
                task.state,
                rec.uncommitted.len()
            ),
            what: "part of its change is not committed (commit = \"never\"): commit it in its worktree, then merge; a merge now would leave it behind",
        });
    }
    let what = match rec.stage {
        Stage::Ready => return Ok(()),
        Stage::Merged => "its change is already merged",
        Stage::Discarded => "its change was discarded",
        Stage::Empty => "it changed nothing: there is nothing to merge",
        Stage::Failed => "its worktree could not be made: there is nothing to merge",
        Stage::Planned => "it never ran in its worktree: there is nothing to merge",
        Stage::Active => {
            "its change was not recorded when it ended (the daemon stopped): `agentq worktrees prune` records it"
        }
    };
    Err(Error::WrongState {
        id: task.id,
        state: format!("{} (worktree {})", task.state, rec.stage),
        what,
    })
}

/// After a merge or discard: a task's own worktree folder and branch go; a worker's shared one
/// stays. Returns words to add to the event.
async fn tidy_after(repo: &Path, rec: &mut Worktree, ours: bool) -> String {
    if rec.shared || !ours {
        return String::new();
    }
    let mut said = String::new();
    if !rec.removed {
        match git::remove_worktree(repo, Path::new(&rec.path)).await {
            Ok(()) => rec.removed = true,
            Err(e) => said.push_str(&format!("; its worktree stays: {e}")),
        }
    }
    if let Err(e) = git::delete_branch(repo, &rec.branch).await {
        said.push_str(&format!("; its branch stays: {e}"));
    }
    said
}

/// Removes a task's worktree and branch, its change with them. A worker's shared worktree stays
/// (its conversation works in it): the task's change is marked discarded, and its commits stay on
/// the worker's branch.
pub async fn discard(store: &dyn Store, id: i64) -> Result<Value> {
    let (task, mut rec) = task_with_worktree(store, id).await?;
    if !task.state.is_terminal() {
        return Err(Error::WrongState {
            id,
            state: task.state.to_string(),
            what: "it has not ended: cancel it first (`agentq cancel`), then discard its change",
        });
    }
    match rec.stage {
        Stage::Merged => {
            return Err(Error::WrongState {
                id,
                state: format!("{} (worktree merged)", task.state),
                what: "its change is already merged; revert the merge commit with git to undo it",
            });
        }
        Stage::Discarded => {
            return Ok(json!({"id": id, "discarded": true, "already": true, "worktree": rec}));
        }
        Stage::Active => {
            return Err(Error::WrongState {
                id,
                state: format!("{} (worktree active)", task.state),
                what: "its change is not recorded yet (it ended while no daemon ran, or its runner is still stopping it): `agentq worktrees prune` records it; then discard it",
            });
        }
        _ => {}
    }
    let repo = PathBuf::from(&rec.repo);
    // Only a branch agentq made is deleted: a planned or failed task's may be somebody's.
    let made = matches!(rec.stage, Stage::Ready | Stage::Empty);
    rec.stage = Stage::Discarded;
    let said = tidy_after(&repo, &mut rec, made).await;
    let message = if rec.shared {
        format!(
            "discarded; the worker's worktree stays, with its commits on {} (merging a later task of this worker brings them along)",
            rec.branch
        )
    } else {
        format!(
            "discarded: removed its worktree and branch {}{said}",
            rec.branch
        )
    };
    store
        .set_worktree(id, &rec, Some(("worktree_discarded", &message)), now_ms())
        .await?;
    Ok(json!({"id": id, "discarded": true, "message": message, "worktree": rec}))
}

/// One line of `agentq worktrees`.
#[derive(Clone, Debug, Serialize)]
pub struct Listed {
    /// `None`: a folder no task of the store names (its task is gone).
    pub task: Option<i64>,
    pub worker: Option<String>,
    pub state: Option<TaskState>,
    pub stage: Option<Stage>,
    pub branch: Option<String>,
    pub path: String,
    pub exists: bool,
    /// Bytes in the folder (its files, not the shared repository's objects).
    pub size: u64,
    pub diffstat: Option<String>,
    /// Why `agentq worktrees prune` would act on it.
    pub prune: Option<String>,
}

/// Every task's worktree that still has a folder or an open change, and every folder under
/// `.agentq/worktrees/` that no task names.
pub async fn list(config: &Config, store: &dyn Store) -> Result<Vec<Listed>> {
    let rows = store.worktrees().await?;
    let mut out = Vec::new();
    let mut named = std::collections::BTreeSet::new();
    for row in &rows {
        // A task's folder is its own from its submission: `prepare` makes it before it records
        // the path, and a prune in between must not take it for a stranger's.
        if !row.worktree.shared {
            named.insert(Some(std::ffi::OsString::from(row.id.to_string())));
        }
    }
    for row in rows {
        let rec = &row.worktree;
        if rec.path.is_empty() {
            continue;
        }
        let path = PathBuf::from(&rec.path);
        named.insert(path.file_name().map(|n| n.to_os_string()));
        let exists = path.is_dir();
        if !exists && !rec.stage.holds_the_task() {
            continue;
        }
        let prune = match (row.state.is_terminal(), rec.stage) {
            (true, Stage::Active) => Some("its task ended without its change recorded".to_string()),
            (_, Stage::Merged | Stage::Discarded | Stage::Empty | Stage::Failed)
                if exists && !rec.shared =>
            {
                Some(format!("its change is {}", rec.stage))
            }
            _ => None,
        };
        out.push(Listed {
            task: Some(row.id),
            worker: Some(row.worker.clone()),
            state: Some(row.state),
            stage: Some(rec.stage),
            branch: Some(rec.branch.clone()),
            size: if exists { folder_size(&path) } else { 0 },
            path: rec.path.clone(),
            exists,
            diffstat: matches!(rec.stage, Stage::Ready | Stage::Merged).then(|| rec.diffstat()),
            prune,
        });
    }
    let root = root(config);
    if let Ok(entries) = std::fs::read_dir(&root) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if named.contains(&Some(name.clone())) || !entry.path().is_dir() {
                continue;
            }
            let worker = name
                .to_string_lossy()
                .strip_prefix("worker-")
                .map(str::to_string);
            let in_use = worker
                .as_deref()
                .is_some_and(|w| config.workers.iter().any(|c| c.name == w));
            if in_use {
                continue;
            }
            out.push(Listed {
                task: None,
                worker,
                state: None,
                stage: None,
                branch: None,
                path: entry.path().to_string_lossy().into_owned(),
                exists: true,
                size: folder_size(&entry.path()),
                diffstat: None,
                prune: Some("no task names it".into()),
            });
        }
    }
    Ok(out)
}

/// Bytes of the files under `dir` (links not followed).
pub fn folder_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = e.path().symlink_metadata() else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                total += m.len();
            }
        }
    }
    total
}

/// `agentq worktrees prune`: records the change of a task that ended while its daemon was down,
/// removes the folders of settled changes and the folders no task names (through git: `git
/// worktree remove`, then `git worktree prune` in each repository), never a change still open.
pub async fn prune(config: &Config, store: &dyn Store, dry_run: bool) -> Result<Value> {
    let listed = list(config, store).await?;
    let mut acted = Vec::new();
    let mut repos = std::collections::BTreeSet::new();
    for row in store.worktrees().await? {
        if !row.worktree.repo.is_empty() {
            repos.insert(PathBuf::from(&row.worktree.repo));
        }
    }
    for l in listed.iter().filter(|l| l.prune.is_some()) {
        let why = l.prune.clone().unwrap_or_default();
        acted.push(json!({"task": l.task, "path": l.path, "why": why}));
        if dry_run {
            continue;
        }
        match l.task {
            Some(id) => {
                let Some(task) = store.get(id).await? else {
                    continue;
                };
                let Some(rec) = task.worktree.clone() else {
                    continue;
                };
                if rec.stage == Stage::Active {
                    conclude(store, &task, &rec, task.state == TaskState::Succeeded).await;
                    continue;
                }
                let mut rec = rec;
                let repo = PathBuf::from(&rec.repo);
                match git::remove_worktree(&repo, Path::new(&rec.path)).await {
                    Ok(()) => {
                        rec.removed = true;
                        store
                            .set_worktree(
                                id,
                                &rec,
                                Some(("worktree_removed", &format!("pruned: {why}"))),
                                now_ms(),
                            )
                            .await?;
                    }
                    Err(e) => warn!(task = id, "could not remove its worktree: {e}"),
                }
            }
            None => {
                let path = PathBuf::from(&l.path);
                // The repository it belongs to, from its own `.git` link; a broken link is a
                // folder git no longer knows, removed as files.
                match git::common_repo(&path).await {
                    Ok(repo) => {
                        repos.insert(repo.clone());
                        if let Err(e) = git::remove_worktree(&repo, &path).await {
                            warn!("could not remove {}: {e}", path.display());
                        }
                    }
                    Err(_) => {
                        if let Err(e) = std::fs::remove_dir_all(&path) {
                            warn!("could not remove {}: {e}", path.display());
                        }
                    }
                }
            }
        }
    }
    if !dry_run {
        for repo in &repos {
            if repo.is_dir()
                && let Err(e) = git::prune(repo).await
            {
                warn!("git worktree prune in {}: {e}", repo.display());
            }
        }
    }
    Ok(json!({"dry_run": dry_run, "pruned": acted}))
}
