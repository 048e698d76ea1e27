//! The state folder `.agentq/`: creating it private, and the lock that lets one daemon own it.
//!
//! The lock is a POSIX record lock on `.agentq/daemon.lock`, held for the daemon's whole life and
//! released by the kernel when the process dies however it dies, so a `kill -9` leaves no stale lock
//! to clean up. Unlike `flock`, a record lock can be *queried* (`F_GETLK`) without taking it, which
//! gives the holder's pid: `agentq status` and a refused second `agentq run` use that to say which
//! process holds the folder, and a query can never steal the lock from a daemon that is starting.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

const LOCK_FILE: &str = "daemon.lock";

/// Creates the state folder (mode 0700) if it is missing; an existing folder is left as it is.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io("creating state folder", dir, e))?;
    // The umask may have narrowed the mode further, never widened it; set it exactly.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io("setting permissions of", dir, e))
}

/// Held by the running daemon; dropping it releases the folder.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the folder's lock, or says which process has it. The file then reads `pid host`:
    /// `host` is the daemon's host id, which a client needs to know what this run claimed.
    pub fn acquire(state_dir: &Path, host: &str) -> Result<StateLock> {
        let path = state_dir.join(LOCK_FILE);
        let mut file = open(&path)?;
        let mut lock = whole_file_lock(libc::F_WRLCK);
        // SAFETY: fcntl with F_SETLK reads a valid, initialised `flock` struct.
        let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &mut lock) };
        if rc == -1 {
            let err = std::io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EAGAIN) => Err(Error::AlreadyRunning {
                    state_dir: state_dir.to_path_buf(),
                    pid: holder(state_dir)?,
                }),
                _ => Err(Error::io("locking", &path, err)),
            };
        }
        // For people reading the folder; the lock itself is the authority.
        file.set_len(0)
            .map_err(|e| Error::io("writing", &path, e))?;
        writeln!(file, "{} {host}", std::process::id())
            .map_err(|e| Error::io("writing", &path, e))?;
        Ok(StateLock { _file: file, path })
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
    let mut lock = whole_file_lock(libc::F_WRLCK);
    // SAFETY: fcntl with F_GETLK fills in the valid `flock` struct it is given.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    if rc == -1 {
        return Err(Error::io(
            "querying lock",
            &path,
            std::io::Error::last_os_error(),
        ));
    }
    Ok((lock.l_type != libc::F_UNLCK as libc::c_short).then_some(lock.l_pid))
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

fn whole_file_lock(kind: i32) -> libc::flock {
    // SAFETY: flock is plain data; all-zero is a valid value that the fields below complete.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = 0;
    lock.l_len = 0;
    lock
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_dir_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/.agentq");
        ensure_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
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
