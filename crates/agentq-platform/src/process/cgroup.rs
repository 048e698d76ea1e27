//! cgroup v2 (Linux): a cgroup per attempt, where the daemon may make one.
//!
//! A process cannot leave its cgroup without write access to the cgroup tree, which an agent is
//! not given: whatever it starts, in whatever session or process group, with whatever
//! environment, is listed in the attempt's `cgroup.procs`, and one write to its `cgroup.kill`
//! kills all of it at once, faster than anything in it can fork. The kernel also keeps the
//! group's own memory figure (`memory.current`, page cache and kernel memory included) and a hard
//! cap on its processes (`pids.max`), where those controllers can be enabled.
//!
//! **Where.** A cgroup is the daemon's to divide only when it was given one: a systemd service
//! with `Delegate=yes` (which `agentq service install` writes; systemd marks such a cgroup with
//! the `trusted.delegate` or `user.delegate` attribute), or a folder named by `[daemon] cgroup`.
//! Anything else belongs to the service manager, and is left alone: the daemon then uses the
//! keeper alone (`keeper.rs`). [`find`] says which, and why, without changing anything (for
//! `doctor`); [`Found::take`] makes it the daemon's: when the daemon lives in the delegated cgroup
//! itself, it moves into a leaf `agentq-daemon` below it (a cgroup with controllers for its
//! children may not hold processes of its own), enables the `memory` and `pids` controllers it is
//! offered for the attempts' cgroups, and removes what an earlier daemon of the same project left
//! (killing what still runs in it).
//!
//! **Per attempt.** `<root>/agentq-<project>-<daemon pid>-<n>`, made before the attempt starts.
//! The keeper stays outside it, so the kill never reaches the keeper, and moves the agent into it
//! between fork and exec: the agent's first instruction already runs inside. The keeper remains
//! the hand (signals, the grace, the sweeps of a long-lived agent); the cgroup is the fence it
//! and the daemon check and kill through. The folder is removed when the attempt has ended.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What [`find`] found: a cgroup the daemon may divide, not yet touched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The cgroup's folder (under the cgroup2 mount).
    pub dir: PathBuf,
    /// Why it is the daemon's: `[daemon] cgroup`, or delegated to its service.
    pub why: String,
    /// The daemon itself lives in it (the delegated case).
    own: bool,
    /// The controllers it offers that agentq uses (`memory`, `pids`).
    pub controllers: Vec<String>,
}

/// The cgroup the daemon divides into one per attempt (see the module's doc).
#[derive(Debug)]
pub struct Cgroups {
    root: PathBuf,
    /// `agentq-<project>-`: this project's attempts, of any daemon.
    project: String,
    /// `agentq-<project>-<pid>-`: this daemon's.
    prefix: String,
    /// Controllers enabled for the attempts' cgroups.
    pub memory: bool,
    pub pids: bool,
    pub why: String,
    seq: AtomicU64,
}

impl PartialEq for Cgroups {
    fn eq(&self, other: &Cgroups) -> bool {
        self.prefix == other.prefix && self.root == other.root
    }
}

impl Eq for Cgroups {}

/// The leaf a daemon that lives in its delegated cgroup moves into.
const DAEMON_LEAF: &str = "agentq-daemon";

/// The controllers agentq enables for attempts, where offered.
const WANTED: [&str; 2] = ["memory", "pids"];

/// Where the cgroup v2 file system is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on
/// a hybrid system), from this process's mount table.
pub fn mount_point() -> Option<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    table.lines().find_map(|line| {
        // `id parent major:minor root mount-point options... - fstype source super-options`
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(unescape))
            .flatten()
    })
}

/// A mountinfo path, with its `\040`-style escapes undone.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(n) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(n);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// This process's cgroup v2 folder.
fn own_cgroup(mount: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(rel.trim_start_matches('/')))
}

/// Whether systemd delegated `dir` (it sets `trusted.delegate`, or `user.delegate` in a user's
/// service manager, to `1` on a cgroup with `Delegate=yes`).
fn delegated(dir: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    ["trusted.delegate", "user.delegate"].iter().any(|name| {
        let name = std::ffi::CString::new(*name).expect("no NUL");
        let mut value = [0u8; 8];
        // SAFETY: both strings are NUL-terminated; the kernel writes at most `value.len()` bytes.
        let n = unsafe {
            libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n > 0 && value[..n as usize].starts_with(b"1")
    })
}

fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(path.as_os_str().as_bytes())
        // SAFETY: access takes a NUL-terminated path and a mode.
        .is_ok_and(|p| unsafe { libc::access(p.as_ptr(), libc::W_OK) } == 0)
}

/// The cgroup the daemon may divide, if any, and if none, why (see the module's doc). Changes
/// nothing. `configured`: `[daemon] cgroup`, made if missing (its parent must be a cgroup).
pub fn find(configured: Option<&Path>) -> Result<Found, String> {
    let Some(mount) = mount_point() else {
        return Err("no cgroup v2 file system is mounted here".into());
    };
    let (dir, why, own) = match configured {
        Some(dir) => {
            if !dir.starts_with(&mount) {
                return Err(format!(
                    "[daemon] cgroup = {:?} is not under the cgroup v2 mount {}",
                    dir.display().to_string(),
                    mount.display()
                ));
            }
            let own = own_cgroup(&mount).is_some_and(|o| o == dir);
            (dir.to_path_buf(), "[daemon] cgroup".to_string(), own)
        }
        None => {
            let Some(own) = own_cgroup(&mount) else {
                return Err("this process is in no cgroup v2 cgroup".into());
            };
            if !delegated(&own) {
                return Err(format!(
                    "the daemon's cgroup {} was not delegated to it (run it as a systemd service \
                     with Delegate=yes, which `agentq service install` writes, or name one in \
                     [daemon] cgroup)",
                    own.display()
                ));
            }
            (
                own,
                "delegated to the daemon's service (Delegate=yes)".into(),
                true,
            )
        }
    };
    let procs = dir.join("cgroup.procs");
    if dir.exists() && !procs.exists() {
        return Err(format!("{} is not a cgroup v2 folder", dir.display()));
    }
    let probe = if dir.exists() {
        &procs
    } else {
        dir.parent().unwrap_or(&dir)
    };
    if !writable(probe) {
        return Err(format!(
            "{} is not writable by this user ({})",
            probe.display(),
            std::io::Error::from(std::io::ErrorKind::PermissionDenied)
        ));
    }
    let offered = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let controllers = offered
        .split_whitespace()
        .filter(|c| WANTED.contains(c))
        .map(str::to_string)
        .collect();
    Ok(Found {
        dir,
        why,
        own,
        controllers,
    })
}

/// One process left by an earlier daemon in a cgroup of an attempt of this project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub cgroup: PathBuf,
    pub killed: Vec<i32>,
}

impl Found {
    /// Makes the cgroup the daemon's (see the module's doc): `project` names this project (any
    /// short text of `[A-Za-z0-9_]`), so that the attempts' cgroups of another project's daemon
    /// in the same cgroup are never touched. Returns the cgroups, and what an earlier daemon of
    /// this project left (killed and removed).
    pub fn take(self, project: &str) -> std::io::Result<(Arc<Cgroups>, Vec<Stale>)> {
        let dir = &self.dir;
        if !dir.exists() {
            std::fs::create_dir(dir)?;
        }
        if self.own && !self.controllers.is_empty() {
            // No process may stay in a cgroup that passes controllers down: the daemon's go to a
            // leaf of their own (every process of the service, which are all the daemon's).
            let leaf = dir.join(DAEMON_LEAF);
            if !leaf.exists() {
                std::fs::create_dir(&leaf)?;
            }
            for pid in procs(dir) {
                // A process that ended meanwhile is no error.
                let _ = write_file(&leaf.join("cgroup.procs"), &pid.to_string());
            }
        }
        let mut memory = false;
        let mut pids = false;
        for c in &self.controllers {
            let enabled = write_file(&dir.join("cgroup.subtree_control"), &format!("+{c}")).is_ok();
            match c.as_str() {
                "memory" => memory = enabled,
                "pids" => pids = enabled,
                _ => {}
            }
        }
        let project_prefix = format!("agentq-{project}-");
        let cgroups = Arc::new(Cgroups {
            root: dir.clone(),
            prefix: format!("{project_prefix}{}-", std::process::id()),
            project: project_prefix,
            memory,
            pids,
            why: self.why,
            seq: AtomicU64::new(0),
        });
        // The kernel must be able to kill a cgroup whole (`cgroup.kill`, Linux 5.14).
        let probe = cgroups.attempt(None)?;
        if !probe.dir.join("cgroup.kill").exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "this kernel cannot kill a cgroup whole (cgroup.kill needs Linux 5.14)",
            ));
        }
        drop(probe);
        let stale = cgroups.remove_stale();
        Ok((cgroups, stale))
    }
}

impl Cgroups {
    /// What is in force, for the log and `doctor`.
    pub fn describe(&self) -> String {
        let mut extra = Vec::new();
        if self.memory {
            extra.push("memory from its memory.current");
        }
        if self.pids {
            extra.push("max_processes also as its pids.max");
        }
        format!(
            "a cgroup v2 per attempt under {} ({}){}",
            self.root.display(),
            self.why,
            if extra.is_empty() {
                String::new()
            } else {
                format!("; {}", extra.join(", "))
            }
        )
    }

    /// The folder the attempts' cgroups are made in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new cgroup for one attempt, with `pids.max` set where the controller is enabled.
    pub fn attempt(&self, max_processes: Option<u32>) -> std::io::Result<AttemptCgroup> {
        loop {
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            let dir = self.root.join(format!("{}{n}", self.prefix));
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                // Left by a daemon that had this pid before: take the next number.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
            let group = AttemptCgroup {
                memory: self.memory,
                dir,
            };
            if self.pids
                && let Some(max) = max_processes
            {
                // The keeper counts the processes and ends the attempt past `max`; the kernel's
                // cap, one above, is there so that a fork bomb cannot outrun the count.
                write_file(&group.dir.join("pids.max"), &(max + 1).to_string())?;
            }
            return Ok(group);
        }
    }

    /// Kills and removes the attempts' cgroups of this project that no live daemon of it made
    /// (the lock on the state folder lets one daemon per project run at a time: all are stale).
    fn remove_stale(&self) -> Vec<Stale> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut stale = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&self.project) || name.starts_with(&self.prefix) {
                continue;
            }
            let group = AttemptCgroup {
                dir: entry.path(),
                memory: false,
            };
            let killed = group.procs();
            group.kill();
            stale.push(Stale {
                cgroup: group.dir.clone(),
                killed,
            });
            // Dropped: removed once empty.
        }
        stale
    }
}

/// The live processes below `root` (walked down the kernel's children lists) and, with a
/// cgroup, those in it that are not below `root` (which holds what a killed keeper let go).
pub fn below_and_inside(root: i32, cgroup: Option<&Path>) -> Vec<super::kernel::ProcInfo> {
    let mut below = super::kernel::tree_below(root);
    if let Some(dir) = cgroup {
        let known: std::collections::HashSet<i32> = below.iter().map(|p| p.pid).collect();
        below.extend(
            procs(dir)
                .into_iter()
                .filter(|pid| !known.contains(pid))
                .filter_map(super::kernel::stat)
                .filter(|p| p.state != 'Z'),
        );
    }
    below
}

/// The pids listed in a cgroup's `cgroup.procs`.
pub fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Makes `cmd`'s process enter the cgroup `dir` between fork and exec (its first instruction
/// runs inside). The control file is opened here, so that the child only writes to it.
pub fn enter_on_exec(cmd: &mut std::process::Command, dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // std opens it close-on-exec: the agent does not inherit it.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))?;
    // SAFETY: write(2) is async-signal-safe, and so is reading errno; nothing is allocated.
    unsafe {
        cmd.pre_exec(
            move || match libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) {
                1 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            },
        );
    }
    Ok(())
}

/// SIGKILL to every process in the cgroup `dir`, at once (`cgroup.kill`).
pub fn kill(dir: &Path) {
    let _ = write_file(&dir.join("cgroup.kill"), "1");
}

/// A control file is written in one `write`, as the kernel wants it.
fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(text.as_bytes())
}

/// One attempt's cgroup; removed when dropped (its processes killed first, if any are left).
#[derive(Debug, PartialEq, Eq)]
pub struct AttemptCgroup {
    dir: PathBuf,
    /// It has the memory controller (`memory.current`).
    memory: bool,
}

impl AttemptCgroup {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The live processes in it.
    pub fn procs(&self) -> Vec<i32> {
        procs(&self.dir)
    }

    /// Whether any process is in it (or below it).
    pub fn populated(&self) -> bool {
        std::fs::read_to_string(self.dir.join("cgroup.events"))
            .map(|e| e.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }

    /// SIGKILL to every process in it, at once.
    pub fn kill(&self) {
        kill(&self.dir);
    }

    /// The kernel's figure of the memory it holds (`memory.current`), bytes, where the memory
    /// controller is enabled.
    pub fn memory(&self) -> Option<u64> {
        if !self.memory {
            return None;
        }
        std::fs::read_to_string(self.dir.join("memory.current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for AttemptCgroup {
    /// Removes the folder: at once when it is empty (the attempt's end, the usual case);
    /// otherwise its processes are killed and a thread removes it once they are gone (one in
    /// uninterruptible sleep dies when it wakes).
    fn drop(&mut self) {
        if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
            return;
        }
        self.kill();
        let dir = std::mem::take(&mut self.dir);
        let remove = move || {
            for i in 0..600u32 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(if i < 20 { 5 } else { 100 }));
            }
            tracing::warn!(cgroup = %dir.display(), "an attempt's cgroup could not be removed: its processes did not die within a minute");
        };
        if std::thread::Builder::new()
            .name("cgroup-remove".into())
            .spawn(remove)
            .is_err()
        {
            tracing::warn!("cannot start a thread to remove an attempt's cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(
            unescape(r"/sys/fs/a\040b\134c"),
            PathBuf::from("/sys/fs/a b\\c")
        );
        assert_eq!(unescape("/plain"), PathBuf::from("/plain"));
    }

    /// A cgroup of its own for a test, under the cgroup2 mount, where this user may make one;
    /// `None` (the test is skipped, saying why) where not.
    pub(crate) fn test_root(name: &str) -> Option<PathBuf> {
        let Some(mount) = mount_point() else {
            eprintln!("skipped: no cgroup v2 mount here");
            return None;
        };
        let dir = mount.join(format!("agentq-test-{name}-{}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => Some(dir),
            Err(e) => {
                eprintln!(
                    "skipped: cannot make a cgroup under {}: {e}",
                    mount.display()
                );
                None
            }
        }
    }

    #[test]
    fn a_new_session_cannot_leave_its_attempts_cgroup_and_a_stale_one_is_removed() {
        let Some(root) = test_root("stale") else {
            return;
        };
        let found = find(Some(&root)).unwrap();
        assert_eq!(found.why, "[daemon] cgroup");
        // An earlier daemon of the project "p" (another pid) left a sleeper in an attempt's
        // cgroup; another project's attempt must be left alone.
        let left = root.join("agentq-p-1-0");
        let other = root.join("agentq-q-1-0");
        std::fs::create_dir(&left).unwrap();
        std::fs::create_dir(&other).unwrap();
        let spawn_in = |dir: &Path| {
            let mut cmd = std::process::Command::new("setsid");
            cmd.args(["sleep", "300"]);
            enter_on_exec(&mut cmd, dir).unwrap();
            cmd.spawn().unwrap()
        };
        let mut stray = spawn_in(&left);
        let mut foreign = spawn_in(&other);
        let (cgroups, stale) = found.take("p").unwrap();
        assert_eq!(stale.len(), 1, "{stale:?}");
        assert_eq!(stale[0].killed, vec![stray.id() as i32]);
        let status = stray.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(
            foreign.try_wait().unwrap().is_none(),
            "another project's is left alone"
        );
        // The removal follows the kill (a thread, as the processes die).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while left.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!left.exists());

        // An attempt's cgroup lists what its processes start, sessions and all, and is removed
        // when dropped, killing what is left.
        let group = cgroups.attempt(Some(10)).unwrap();
        let dir = group.dir().to_path_buf();
        let mut sh = {
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", "setsid sleep 300 & exec sleep 300"]);
            enter_on_exec(&mut cmd, &dir).unwrap();
            cmd.spawn().unwrap()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while group.procs().len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let inside = group.procs();
        assert_eq!(inside.len(), 2, "{inside:?}");
        assert!(group.populated());
        drop(group);
        assert!(sh.wait().unwrap().signal() == Some(libc::SIGKILL));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while dir.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!dir.exists(), "removed once empty");
        for pid in inside {
            assert!(
                super::super::kernel::stat(pid).is_none_or(|p| p.state == 'Z'),
                "{pid} was killed"
            );
        }
        foreign.kill().unwrap();
        foreign.wait().unwrap();
        drop(cgroups);
        let _ = std::fs::remove_dir(&other);
        std::fs::remove_dir(&root).unwrap();
    }
}
