//! What a client reads of agents at work: a task's transcript (`agentq logs ID`, `show`, the API's
//! `/api/tasks/{id}/transcript`), the latest lines of several workers' tasks interleaved
//! (`agentq logs [WORKER]...`), and both followed as they grow.
//!
//! Transcripts are files the runners write (`agentq_core::transcript`); readers never talk to the
//! agent or the runner, so a slow reader costs the agent nothing. A task's transcript is followed
//! by `seq` ([`TaskFollow`]); a folder of them by watching which files change ([`FolderFollow`]),
//! so that tasks that start, and end, between two looks are still seen whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use agentq_core::error::{Error, Result};
use agentq_core::transcript::{self, Cursor, Entry};
use agentq_store::{Store, Task};
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::Config;

/// How often a follower looks for more.
pub const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// A task's transcript after some `seq`.
#[derive(Debug)]
pub struct TaskTranscript {
    pub task: Task,
    pub path: PathBuf,
    /// Whether the task has a transcript at all yet (a queued task has none).
    pub exists: bool,
    pub entries: Vec<Entry>,
    /// Entries wanted but rotated away, first and last `seq`.
    pub missed: Option<(u64, u64)>,
}

impl TaskTranscript {
    /// As `logs --json ID` and `GET /api/tasks/{id}/transcript` give it.
    pub fn json(&self) -> Value {
        json!({
            "task": self.task.id,
            "worker": self.task.worker,
            "state": self.task.state,
            "attempts": self.task.attempts,
            "exists": self.exists,
            "entries": self.entries,
            "next": self.entries.last().map(|e| e.seq),
            "missed": self.missed.map(|(from, to)| json!({ "from": from, "to": to })),
            "note": (!self.exists).then(|| no_transcript_yet(&self.task)),
        })
    }
}

/// Why a task has no transcript, in words.
pub fn no_transcript_yet(task: &Task) -> String {
    if task.state.is_terminal() {
        format!(
            "task {} has no transcript: it is {} and its agent wrote nothing (or its transcript was removed with old logs)",
            task.id, task.state
        )
    } else {
        format!(
            "task {} has no transcript yet: it is {}",
            task.id, task.state
        )
    }
}

/// Where `task`'s transcript is: under the folder of the worker whose settings ran it.
pub fn path_of(config: &Config, task: &Task) -> PathBuf {
    config.transcript_path(&task.worker, task.id)
}

/// The task's transcript after `after` (0: all of it). An unknown task is an error.
pub async fn task_transcript(
    config: &Config,
    store: &dyn Store,
    id: i64,
    after: u64,
) -> Result<TaskTranscript> {
    let task = store.get(id).await?.ok_or(Error::NoSuchTask { id })?;
    let path = path_of(config, &task);
    let (exists, found) = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let exists = transcript::exists(&path);
            (exists, transcript::read_after(&path, after))
        })
        .await?
    };
    let found = found.map_err(|e| io(e, &path))?;
    Ok(TaskTranscript {
        task,
        path,
        exists,
        entries: found.entries,
        missed: found.missed,
    })
}

fn io(e: std::io::Error, path: &Path) -> Error {
    Error::Io {
        about: "reading the transcript",
        path: path.to_path_buf(),
        source: e,
    }
}

/// A task's transcript as it grows, read by `seq`.
pub struct TaskFollow {
    cursor: Cursor,
}

impl TaskFollow {
    /// Follows `task`'s transcript after `after`.
    pub fn new(config: &Config, task: &Task, after: u64) -> TaskFollow {
        TaskFollow {
            cursor: Cursor::new(path_of(config, task), after),
        }
    }

    /// What came since the last look, and what was missed (rotated away) before it.
    pub async fn next(&mut self) -> Result<transcript::Found> {
        let mut cursor = std::mem::replace(&mut self.cursor, Cursor::new(PathBuf::new(), 0));
        let (cursor, found) = tokio::task::spawn_blocking(move || {
            let found = cursor.read();
            (cursor, found)
        })
        .await?;
        let found = found.map_err(|e| io(e, cursor.path()));
        self.cursor = cursor;
        found
    }

    /// The last `seq` given out.
    pub fn position(&self) -> u64 {
        self.cursor.position()
    }
}

/// One line of `agentq logs`: an entry, with the folder (worker) and task it is from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Line {
    pub worker: String,
    pub task: i64,
    #[serde(flatten)]
    pub entry: Entry,
}

/// The transcript folders there are (every worker and `pool` that has one), or those of `only`.
pub fn folders(config: &Config, only: &[String]) -> Vec<String> {
    if !only.is_empty() {
        return only.to_vec();
    }
    let root = config.state_dir().join(transcript::DIR);
    let mut found: Vec<String> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    found.sort();
    found
}

/// The transcripts in `folder`: task id and path, newest task first.
fn transcripts_in(config: &Config, folder: &str) -> Vec<(i64, PathBuf)> {
    let dir = config.transcript_dir(folder);
    let mut found: Vec<(i64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let id = name
                .strip_prefix("task_")?
                .strip_suffix(".jsonl")?
                .parse()
                .ok()?;
            Some((id, e.path()))
        })
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(f.0));
    found
}

/// The latest `n` lines of the folders' tasks (0: all, of the newest hundred tasks), oldest
/// first, interleaved by time; only lines stamped before `before` (ms).
pub fn recent_lines(config: &Config, folders: &[String], n: usize, before: i64) -> Vec<Line> {
    let mut lines = Vec::new();
    for folder in folders {
        // Every task has a line at least, so the newest `n` tasks hold the newest `n` lines.
        let newest = if n == 0 { 100 } else { n };
        for (task, path) in transcripts_in(config, folder).into_iter().take(newest) {
            let Ok(entries) = transcript::read_last(&path, n) else {
                continue;
            };
            lines.extend(
                entries
                    .into_iter()
                    .filter(|e| e.ts < before)
                    .map(|entry| Line {
                        worker: folder.clone(),
                        task,
                        entry,
                    }),
            );
        }
    }
    sort_lines(&mut lines);
    if n > 0 && lines.len() > n {
        lines.drain(..lines.len() - n);
    }
    lines
}

fn sort_lines(lines: &mut [Line]) {
    lines.sort_by_key(|l| (l.entry.ts, l.task, l.entry.seq));
}

/// Several folders' transcripts as they grow: every look lists the folders, reads the files that
/// changed since the last look (new ones from their start), and gives their new lines.
pub struct FolderFollow {
    folders: Vec<String>,
    /// Whether to take in folders that appear later (following every worker).
    all: bool,
    /// Per transcript: its task, what it looked like, and where reading it got to.
    seen: HashMap<PathBuf, Seen>,
    /// Lines of files that existed at the start count only from this time (ms) on: the rest
    /// were printed before following began.
    since: i64,
}

struct Seen {
    task: i64,
    folder: String,
    looks: (u64, Option<SystemTime>),
    /// `None`: the file was there at the start and has not changed since.
    cursor: Option<Cursor>,
    /// When it last changed, to let go of the open file of a transcript that stopped growing.
    changed: std::time::Instant,
}

impl FolderFollow {
    /// Follows `folders` (every folder, including those made later, when `all`), giving only lines
    /// stamped from `since` (ms) on in the transcripts there now, and every line of new ones.
    pub fn new(config: &Config, folders: Vec<String>, all: bool, since: i64) -> FolderFollow {
        let mut follow = FolderFollow {
            folders,
            all,
            seen: HashMap::new(),
            since,
        };
        let mut listed = Default::default();
        for folder in follow.folders.clone() {
            follow.note_folder(config, &folder, false, &mut listed);
        }
        follow
    }

    /// Records the folder's transcripts as they are; `fresh`: they are new since following began.
    fn note_folder(
        &mut self,
        config: &Config,
        folder: &str,
        fresh: bool,
        listed: &mut std::collections::HashSet<PathBuf>,
    ) -> Vec<PathBuf> {
        let mut changed = Vec::new();
        for (task, path) in transcripts_in(config, folder) {
            listed.insert(path.clone());
            let looks = looks_of(&path);
            match self.seen.get_mut(&path) {
                Some(seen) if seen.looks == looks => {}
                Some(seen) => {
                    seen.looks = looks;
                    seen.changed = std::time::Instant::now();
                    changed.push(path);
                }
                None => {
                    self.seen.insert(
                        path.clone(),
                        Seen {
                            task,
                            folder: folder.to_string(),
                            looks,
                            cursor: fresh.then(|| Cursor::new(path.clone(), 0)),
                            changed: std::time::Instant::now(),
                        },
                    );
                    if fresh {
                        changed.push(path);
                    }
                }
            }
        }
        changed
    }

    /// The lines appended since the last look, oldest first.
    pub fn next(&mut self, config: &Config) -> Vec<Line> {
        if self.all {
            for folder in folders(config, &[]) {
                if !self.folders.contains(&folder) {
                    self.folders.push(folder);
                }
            }
        }
        let (mut changed, mut listed) = (Vec::new(), Default::default());
        for folder in self.folders.clone() {
            changed.extend(self.note_folder(config, &folder, true, &mut listed));
        }
        self.seen.retain(|path, _| listed.contains(path));
        let mut lines = Vec::new();
        for path in changed {
            let since = self.since;
            let Some(seen) = self.seen.get_mut(&path) else {
                continue;
            };
            // A file there at the start: read whole once, keeping what came after `since`.
            let (cursor, only_since) = match seen.cursor.take() {
                Some(c) => (c, None),
                None => (Cursor::new(path.clone(), 0), Some(since)),
            };
            let mut cursor = cursor;
            if let Ok(found) = cursor.read() {
                lines.extend(
                    found
                        .entries
                        .into_iter()
                        .filter(|e| only_since.is_none_or(|s| e.ts >= s))
                        .map(|entry| Line {
                            worker: seen.folder.clone(),
                            task: seen.task,
                            entry,
                        }),
                );
            }
            seen.cursor = Some(cursor);
        }
        // Let go of the open files of transcripts that stopped growing a while ago.
        for seen in self.seen.values_mut() {
            if seen.changed.elapsed() > Duration::from_secs(30)
                && let Some(c) = seen.cursor.as_mut()
            {
                c.close();
            }
        }
        sort_lines(&mut lines);
        lines
    }
}

fn looks_of(path: &Path) -> (u64, Option<SystemTime>) {
    match std::fs::metadata(path) {
        Ok(m) => (m.len(), m.modified().ok()),
        Err(_) => (0, None),
    }
}
