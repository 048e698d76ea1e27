//! The state folder `.agentq/`: creating it private, and the lock that lets one daemon own it.
//!
//! The lock is an [`OwnerLock`] on `.agentq/daemon.lock`, held for the daemon's whole life and
//! released by the system when the process dies however it dies, so a `kill -9` leaves no stale
//! lock to clean up. Its holder can be asked for (a POSIX record lock's `F_GETLK` on Unix; the pid
//! the file names on Windows): `agentq status` and a refused second `agentq run` use that to say
//! which process holds the folder.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use agentq_platform::fs::{self as pfs, OwnerLock};

use crate::error::{Error, Result};

const LOCK_FILE: &str = "daemon.lock";

/// Creates the state folder, private to its owner (see `agentq_platform::fs`), if it is
/// missing; an existing folder is left as it is.
///
/// It holds a `.gitignore` of `*`: in a project that is a git repository, nothing of agentq's
/// state (the tasks' worktrees included) shows as a change of the repository.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    pfs::create_private_dir(dir).map_err(|e| Error::io("creating state folder", dir, e))?;
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        // Best effort: a folder it cannot be written in fails at the next write anyway.
        let _ = std::fs::write(
            &ignore,
            "# agentq's state folder: never part of the repository\n*\n",
        );
    }
    Ok(())
}

/// Held by the running daemon; dropping it releases the folder.
#[derive(Debug)]
pub struct StateLock {
    _lock: OwnerLock,
    path: PathBuf,
}

impl StateLock {
    /// Takes the folder's lock, or says which process has it. The file then reads `pid host`:
    /// `host` is the daemon's host id, which a client needs to know what this run claimed.
    pub fn acquire(state_dir: &Path, host: &str) -> Result<StateLock> {
        let path = state_dir.join(LOCK_FILE);
        // Where asking who holds the lock takes it for an instant (Windows), a daemon starting
        // in that instant tries again rather than be refused by a mere question.
        let mut tries = 0;
        let mut lock = loop {
            match OwnerLock::try_take(open(&path)?).map_err(|e| Error::io("locking", &path, e))? {
                Ok(lock) => break lock,
                Err(pid) if tries >= 5 || pid.is_some_and(|p| p != 0) => {
                    return Err(Error::AlreadyRunning {
                        state_dir: state_dir.to_path_buf(),
                        pid: pid.map(|p| p as i32),
                    });
                }
                Err(_) => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
        };
        // For people reading the folder; the lock itself is the authority.
        let file = lock.file();
        file.set_len(0)
            .map_err(|e| Error::io("writing", &path, e))?;
        writeln!(file, "{} {host}", std::process::id())
            .map_err(|e| Error::io("writing", &path, e))?;
        Ok(StateLock { _lock: lock, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The pid of the daemon holding `state_dir`, if one does.
pub fn holder(state_dir: &Path) -> Result<Option<i32>> {
    let path = state_dir.join(LOCK_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let file = open(&path)?;
    pfs::lock_holder(&file)
        .map(|pid| pid.map(|p| p as i32))
        .map_err(|e| Error::io("querying lock", &path, e))
}

/// The host id the daemon holding `state_dir` runs under (what its lock file says), if one runs.
/// Not for the daemon itself: a process that closes any descriptor of a file drops its record
/// locks on it, so reading the lock file would free the folder.
pub fn holder_host(state_dir: &Path) -> Option<String> {
    holder(state_dir).ok().flatten()?;
    let text = std::fs::read_to_string(state_dir.join(LOCK_FILE)).ok()?;
    text.split_whitespace().nth(1).map(str::to_string)
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io("opening", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_dir_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/.agentq");
        ensure_dir(&dir).unwrap();
        let found = pfs::exposure(&dir).unwrap();
        // Wine keeps no DACL: checked on real Windows only.
        if !agentq_platform::under_wine() {
            assert_eq!(found, pfs::Exposure::Private);
        }
    }

    #[test]
    fn no_holder_without_a_daemon() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(holder(tmp.path()).unwrap(), None);
        let lock = StateLock::acquire(tmp.path(), "h").unwrap();
        // Record locks are per process: this process sees its own lock as free. Another process
        // sees it taken (tested through the binary in tests/cli.rs).
        drop(lock);
        assert_eq!(holder(tmp.path()).unwrap(), None);
    }
}
