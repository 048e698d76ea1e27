//! Result files in `.output/<worker>/`, as the seeds' scripts expect them.
//!
//! Each finished task writes `task_<id>.txt` (the result text), `task_<id>.json` (the whole record
//! with its history) and refreshes `latest.txt`. A reader sees the old file or the new one, never
//! half of one: each is written under a temporary name and renamed into place, except
//! `latest.txt`, which becomes another name of the task's text file (a hard link, renamed over the
//! old one): that costs the file system no new file.
//!
//! They are not flushed to disk one by one: they are a copy, for scripts, of what the store holds
//! (`agentq show <id>` prints it, `--json` whole), and three fsyncs per task would cost more than
//! the rest of a trivial task together. A power cut can leave the newest of them empty or missing;
//! a crash of the daemon cannot (the page cache survives it). The daemon creates the folders when
//! it starts; they are made again here only if someone removed them since.

use std::path::{Path, PathBuf};

use serde::Serialize;

use agentq_core::files::{relink, replace};
use agentq_store::{Event, Task};

/// The record written as `task_<id>.json`.
#[derive(Serialize)]
pub struct TaskRecord<'a> {
    #[serde(flatten)]
    pub task: &'a Task,
    pub events: &'a [Event],
}

/// Writes a finished task's files into `dir` (`.output/<worker>/`). Returns the text file's path.
/// On an error (a full disk), the task's files written so far are removed again: a script that
/// finds `task_<id>.txt` may take the task for done, and it is not (the runner gives it back).
pub fn write_task(dir: &Path, task: &Task, events: &[Event]) -> std::io::Result<PathBuf> {
    let written = write_files(dir, task, events);
    if written.is_err() {
        for ext in ["txt", "json"] {
            let _ = std::fs::remove_file(dir.join(format!("task_{}.{ext}", task.id)));
        }
    }
    written
}

fn write_files(dir: &Path, task: &Task, events: &[Event]) -> std::io::Result<PathBuf> {
    let text = task.output.as_deref().unwrap_or("");
    let txt = dir.join(format!("task_{}.txt", task.id));
    if let Err(e) = replace(&txt, text.as_bytes(), false) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(e);
        }
        std::fs::create_dir_all(dir)?;
        replace(&txt, text.as_bytes(), false)?;
    }
    let record =
        serde_json::to_vec_pretty(&TaskRecord { task, events }).map_err(std::io::Error::other)?;
    replace(&dir.join(format!("task_{}.json", task.id)), &record, false)?;
    let latest = dir.join("latest.txt");
    if relink(&txt, &latest).is_err() {
        replace(&latest, text.as_bytes(), false)?;
    }
    Ok(txt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: i64, output: &str) -> Task {
        Task {
            id,
            worker: "w".into(),
            prompt: "p".into(),
            priority: 0,
            state: agentq_core::domain::TaskState::Succeeded,
            attempts: 1,
            max_attempts: 3,
            timeout_ms: None,
            not_before: 0,
            created_at: 0,
            updated_at: 0,
            started_at: None,
            finished_at: None,
            owner: None,
            lease_expires: None,
            exit_code: Some(0),
            output: Some(output.into()),
            error: None,
            stderr_tail: None,
            duration_ms: None,
            source: "cli".into(),
            interruptions: 0,
            cause: None,
            memory_peak_mb: None,
            usage: Default::default(),
            routing: Default::default(),
            worktree: None,
        }
    }

    #[test]
    fn a_task_whose_files_cannot_all_be_written_leaves_none_of_them() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("w");
        write_task(&dir, &task(1, "one"), &[]).unwrap();
        // The record cannot take its place (a folder holds its name), as on a full disk.
        std::fs::create_dir(dir.join("task_2.json")).unwrap();
        assert!(write_task(&dir, &task(2, "two"), &[]).is_err());
        assert!(
            !dir.join("task_2.txt").exists(),
            "no text without its record"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("latest.txt")).unwrap(),
            "one",
            "latest is still the last task written whole"
        );
    }

    #[test]
    fn task_files_are_written_again_when_a_task_runs_again_and_latest_follows() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("w");
        // The folder is made if it is missing.
        write_task(&dir, &task(1, "one"), &[]).unwrap();
        write_task(&dir, &task(2, "two"), &[]).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("latest.txt")).unwrap(),
            "two"
        );
        // Task 1 ran again (retried): its files are replaced, and latest is its text.
        write_task(&dir, &task(1, "one again"), &[]).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
        assert_eq!(read("task_1.txt"), "one again");
        assert_eq!(read("latest.txt"), "one again");
        assert_eq!(read("task_2.txt"), "two");
        let json: serde_json::Value = serde_json::from_str(&read("task_1.json")).unwrap();
        assert_eq!(json["output"], "one again");
        // Nothing else is left in the folder.
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "latest.txt",
                "task_1.json",
                "task_1.txt",
                "task_2.json",
                "task_2.txt"
            ]
        );
        // Files are readable by others, as `File::create` made them.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join("task_2.json"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o044, 0o044, "{mode:o}");
        }
    }
}
