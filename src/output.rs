//! Result files in `.output/<worker>/`, as the seeds' scripts expect them.
//!
//! Each finished task writes `task_<id>.txt` (the result text), `task_<id>.json` (the whole record
//! with its history) and refreshes `latest.txt`. Every file is written to a temporary name in the
//! same folder and renamed into place, so a reader sees the old file or the new one, never half of
//! one.
//!
//! They are not flushed to disk one by one: they are a copy, for scripts, of what the store holds
//! (`agentq show <id>` prints it, `--json` whole), and three fsyncs per task would cost more than
//! the rest of a trivial task together. A power cut can leave the newest of them empty or missing;
//! a crash of the daemon cannot (the page cache survives it).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::store::{Event, Task};

/// Writes `bytes` to `path` so that `path` is never seen half-written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The record written as `task_<id>.json`.
#[derive(Serialize)]
pub struct TaskRecord<'a> {
    #[serde(flatten)]
    pub task: &'a Task,
    pub events: &'a [Event],
}

/// Writes a finished task's files into `dir` (`.output/<worker>/`). Returns the text file's path.
pub fn write_task(dir: &Path, task: &Task, events: &[Event]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let text = task.output.as_deref().unwrap_or("");
    let txt = dir.join(format!("task_{}.txt", task.id));
    write_atomic(&txt, text.as_bytes())?;
    let record =
        serde_json::to_vec_pretty(&TaskRecord { task, events }).map_err(std::io::Error::other)?;
    write_atomic(&dir.join(format!("task_{}.json", task.id)), &record)?;
    write_atomic(&dir.join("latest.txt"), text.as_bytes())?;
    Ok(txt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_and_leave_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("latest.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
