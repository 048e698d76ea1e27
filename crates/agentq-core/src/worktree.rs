//! A task's own git worktree: how it was asked for, where it is, and the change it holds.
//!
//! A task that runs with `isolation = "worktree"` carries a [`Worktree`] from its submission on:
//! planned at submit time (the repository and the base commit are resolved then, so a bad repo or
//! ref is a submit error), made before its first attempt, and after its last one holding the
//! change the agent made (its commits, and agentq's commit of what it left uncommitted), until the
//! change is merged or discarded. Pure data and rules; the git work is the daemon's.
//!
//! ```text
//!   planned ──make──▶ active ──task ended──▶ ready ──merge──▶ merged
//!      │                 │                    │ └──discard──▶ discarded
//!      │                 │                    └ (no change) ─▶ empty
//!      └──── could not be made ─────────────▶ failed
//! ```

use serde::{Deserialize, Serialize};

/// Where the agent of an isolated task works.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// In the worker's `cwd`, shared with every other task (agentq's behaviour before worktrees).
    None,
    /// In a git worktree of its own, on a branch of its own.
    Worktree,
}

impl Isolation {
    pub const NAMES: [&'static str; 2] = ["none", "worktree"];

    pub fn parse(s: &str) -> Result<Isolation, String> {
        match s {
            "none" => Ok(Isolation::None),
            "worktree" => Ok(Isolation::Worktree),
            other => Err(format!(
                "unknown isolation {other:?}: expected \"none\" or \"worktree\""
            )),
        }
    }
}

/// When agentq removes a task's worktree folder (the branch stays until merged or discarded).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Keep {
    /// Kept until the change is merged or discarded (or holds no change).
    UntilMerged,
    /// Kept only when the task did not succeed, to look into; removed after a success.
    OnFailure,
    /// Removed as soon as the task ends: the change lives on its branch.
    Never,
}

impl Keep {
    pub const NAMES: [&'static str; 3] = ["until-merged", "on-failure", "never"];

    pub fn parse(s: &str) -> Result<Keep, String> {
        match s {
            "until-merged" => Ok(Keep::UntilMerged),
            "on-failure" => Ok(Keep::OnFailure),
            "never" => Ok(Keep::Never),
            other => Err(format!(
                "unknown keep {other:?}: expected \"until-merged\", \"on-failure\" or \"never\""
            )),
        }
    }

    /// Whether the folder goes when the task has ended (`succeeded`: it succeeded) with its change
    /// recorded.
    pub fn removes_after(self, succeeded: bool) -> bool {
        match self {
            Keep::UntilMerged => false,
            Keep::OnFailure => succeeded,
            Keep::Never => true,
        }
    }
}

/// Whether agentq commits what the agent left uncommitted in the worktree when the task ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CommitMode {
    /// Commit it on the task's branch, with a message naming the task.
    Auto,
    /// Leave it uncommitted (it stays in the worktree; `diff` shows only commits).
    Never,
}

impl CommitMode {
    pub const NAMES: [&'static str; 2] = ["auto", "never"];

    pub fn parse(s: &str) -> Result<CommitMode, String> {
        match s {
            "auto" => Ok(CommitMode::Auto),
            "never" => Ok(CommitMode::Never),
            other => Err(format!(
                "unknown commit {other:?}: expected \"auto\" or \"never\""
            )),
        }
    }
}

/// Where a task's worktree is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Asked for; not made yet (the task has not started).
    Planned,
    /// Made; the task runs in it, or waits for a retry.
    Active,
    /// The task ended with a change on its branch, to merge or discard.
    Ready,
    /// The task ended without changing anything.
    Empty,
    Merged,
    Discarded,
    /// It could not be made (the reason is in `error`); the task did not run.
    Failed,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Planned => "planned",
            Stage::Active => "active",
            Stage::Ready => "ready",
            Stage::Empty => "empty",
            Stage::Merged => "merged",
            Stage::Discarded => "discarded",
            Stage::Failed => "failed",
        }
    }

    /// Whether the task must stay in the store for it: a worktree or branch exists whose change
    /// is not merged or discarded yet (retention and `clean` pass it by). A planned one holds
    /// nothing yet: a task cancelled before it started made none.
    pub fn holds_the_task(self) -> bool {
        matches!(self, Stage::Active | Stage::Ready)
    }

    /// Whether `merge` or `discard` apply.
    pub fn is_open(self) -> bool {
        matches!(self, Stage::Ready)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One commit of a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    pub sha: String,
    pub subject: String,
}

/// One file a change touches.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    pub path: String,
    /// git's letter: `A`dded, `M`odified, `D`eleted, `R`enamed, `C`opied, `T`ype changed.
    pub status: String,
    /// Lines added and removed; `None` for a binary file.
    pub insertions: Option<u64>,
    pub deletions: Option<u64>,
}

/// Where a change was merged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merged {
    /// The branch it was merged into.
    pub into: String,
    /// The commit the merge made on it.
    pub commit: String,
    pub squash: bool,
    pub at: i64,
}

/// A task's worktree, as recorded on the task (the `worktree` of `agentq show --json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Worktree {
    /// The repository's top folder (absolute).
    pub repo: String,
    /// The base as it was asked for (`HEAD`, `main`, a commit).
    pub base_ref: String,
    /// The commit the change is measured from: the base resolved at submit time; for a worker's
    /// shared worktree, its branch's commit when the task started.
    pub base: String,
    pub branch: String,
    /// The worktree's folder (absolute).
    pub path: String,
    /// The worker's own worktree, kept across its tasks for its conversation.
    pub shared: bool,
    pub commit: CommitMode,
    pub keep: Keep,
    pub stage: Stage,
    /// The folder was removed (by `keep`, `discard`, `merge` or `worktrees prune`).
    #[serde(default)]
    pub removed: bool,
    /// The branch's commit when the task ended.
    #[serde(default)]
    pub head: Option<String>,
    /// `base..head`, oldest first.
    #[serde(default)]
    pub commits: Vec<CommitInfo>,
    /// The commit agentq made of what the agent left uncommitted.
    #[serde(default)]
    pub auto_commit: Option<String>,
    /// Left uncommitted in the worktree (`commit = "never"`): files, as `git status` names them.
    #[serde(default)]
    pub uncommitted: Vec<String>,
    #[serde(default)]
    pub files: Vec<FileChange>,
    #[serde(default)]
    pub insertions: u64,
    #[serde(default)]
    pub deletions: u64,
    /// The change in `git diff --stat`'s words ("2 files changed, 5 insertions(+)"), set with
    /// the files (empty until then).
    #[serde(default)]
    pub diffstat: String,
    #[serde(default)]
    pub merged: Option<Merged>,
    /// Why it could not be made, or what went wrong recording its change.
    #[serde(default)]
    pub error: Option<String>,
}

impl Worktree {
    /// `git diff --stat`'s last line: "3 files changed, 10 insertions(+), 2 deletions(-)".
    pub fn diffstat(&self) -> String {
        let n = self.files.len();
        let mut s = format!("{n} file{} changed", if n == 1 { "" } else { "s" });
        if self.insertions > 0 || n == 0 {
            let i = self.insertions;
            s.push_str(&format!(
                ", {i} insertion{}(+)",
                if i == 1 { "" } else { "s" }
            ));
        }
        if self.deletions > 0 {
            let d = self.deletions;
            s.push_str(&format!(
                ", {d} deletion{}(-)",
                if d == 1 { "" } else { "s" }
            ));
        }
        s
    }

    /// Whether the task must stay in the store (see [`Stage::holds_the_task`]).
    pub fn holds_the_task(&self) -> bool {
        self.stage.holds_the_task()
    }
}

/// The branch of a task: `<prefix>/<worker>/<task id>`; of a worker's shared worktree:
/// `<prefix>/<worker>`.
pub fn branch_name(prefix: &str, worker: &str, task: Option<i64>) -> String {
    let prefix = prefix.trim_end_matches('/');
    match task {
        Some(id) => format!("{prefix}/{worker}/{id}"),
        None => format!("{prefix}/{worker}"),
    }
}

/// The folder, under the state folder's `worktrees/`, of a task's worktree (`<task id>`) or of a
/// worker's shared one (`worker-<name>`).
pub fn folder_name(worker: &str, task: Option<i64>) -> String {
    match task {
        Some(id) => id.to_string(),
        None => format!("worker-{worker}"),
    }
}

/// The folder under the state folder that holds every worktree.
pub const DIR: &str = "worktrees";

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Worktree {
        Worktree {
            repo: "/r".into(),
            base_ref: "HEAD".into(),
            base: "abc".into(),
            branch: branch_name("agentq/", "w", Some(7)),
            path: "/s/.agentq/worktrees/7".into(),
            shared: false,
            commit: CommitMode::Auto,
            keep: Keep::UntilMerged,
            stage: Stage::Planned,
            removed: false,
            head: None,
            commits: vec![],
            auto_commit: None,
            uncommitted: vec![],
            files: vec![],
            insertions: 0,
            deletions: 0,
            diffstat: String::new(),
            merged: None,
            error: None,
        }
    }

    #[test]
    fn names_and_json_round_trip() {
        let wt = sample();
        assert_eq!(wt.branch, "agentq/w/7");
        assert_eq!(branch_name("x", "w", None), "x/w");
        assert_eq!(folder_name("w", None), "worker-w");
        let json = serde_json::to_string(&wt).unwrap();
        assert!(json.contains("\"keep\":\"until-merged\""), "{json}");
        assert!(json.contains("\"stage\":\"planned\""), "{json}");
        let back: Worktree = serde_json::from_str(&json).unwrap();
        assert_eq!(back, wt);
        // Older records without the later fields still read.
        let minimal = r#"{"repo":"/r","base_ref":"HEAD","base":"a","branch":"b","path":"/p",
            "shared":false,"commit":"never","keep":"never","stage":"ready"}"#;
        let read: Worktree = serde_json::from_str(minimal).unwrap();
        assert_eq!(read.stage, Stage::Ready);
        assert!(read.files.is_empty());
    }

    #[test]
    fn the_task_is_held_until_its_change_is_settled() {
        let held: Vec<_> = [
            Stage::Planned,
            Stage::Active,
            Stage::Ready,
            Stage::Empty,
            Stage::Merged,
            Stage::Discarded,
            Stage::Failed,
        ]
        .into_iter()
        .filter(|s| s.holds_the_task())
        .collect();
        assert_eq!(held, [Stage::Active, Stage::Ready]);
    }

    #[test]
    fn keep_decides_the_folder() {
        assert!(!Keep::UntilMerged.removes_after(true));
        assert!(Keep::OnFailure.removes_after(true));
        assert!(!Keep::OnFailure.removes_after(false));
        assert!(Keep::Never.removes_after(false));
        assert!(
            Keep::parse("sometimes")
                .unwrap_err()
                .contains("until-merged")
        );
    }

    #[test]
    fn diffstat_reads_like_git() {
        let mut wt = sample();
        assert_eq!(wt.diffstat(), "0 files changed, 0 insertions(+)");
        wt.files.push(FileChange {
            path: "a".into(),
            status: "M".into(),
            insertions: Some(1),
            deletions: Some(2),
        });
        wt.insertions = 1;
        wt.deletions = 2;
        assert_eq!(
            wt.diffstat(),
            "1 file changed, 1 insertion(+), 2 deletions(-)"
        );
    }
}
