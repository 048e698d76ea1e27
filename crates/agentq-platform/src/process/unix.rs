//! The Unix half: process groups, pidfds, `wait4`, `/proc`.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

use super::cgroup::AttemptCgroup;
use super::{Exit, Spawned};

/// Starts `cmd` leading a process group of its own. `kept`: `cmd` is a keeper (`keeper.rs`), and
/// the tree is stopped, killed and measured through it; `cgroup`: the attempt's cgroup, which the
/// keeper starts the agent in (removed when the child and its trees are gone).
pub fn spawn(
    mut cmd: std::process::Command,
    kept: bool,
    cgroup: Option<Arc<AttemptCgroup>>,
) -> std::io::Result<Spawned> {
    cmd.process_group(0);
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    let pipes = (|| -> std::io::Result<_> {
        Ok((
            child
                .stdin
                .take()
                .map(tokio::process::ChildStdin::from_std)
                .transpose()?,
            child
                .stdout
                .take()
                .map(tokio::process::ChildStdout::from_std)
                .transpose()?,
            child
                .stderr
                .take()
                .map(tokio::process::ChildStderr::from_std)
                .transpose()?,
        ))
    })();
    let mut child = Child {
        pid,
        kept,
        cgroup,
        pidfd: None,
        status: None,
        max_rss: None,
        parent_rss: super::kernel::stat(std::process::id() as i32).map_or(0, |p| p.rss),
    };
    // From here on, dropping `child` kills and reaps the group.
    let (stdin, stdout, stderr) = pipes?;
    child.pidfd = pidfd_open(pid).and_then(|fd| {
        // SAFETY: an OwnedFd is open and stays the same descriptor until it is dropped, which is
        // when the AsyncFd holding it is.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
    });
    Ok(Spawned {
        child,
        stdin,
        stdout,
        stderr,
    })
}

/// An agent's process group, named by its leader's pid; or, `kept`, everything below the keeper
/// that leads the group (see `keeper.rs`), and everything in the attempt's cgroup, if it has one.
/// (Clone, not Copy: Windows' holds a job.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    pgid: i32,
    kept: bool,
    cgroup: Option<Arc<AttemptCgroup>>,
}

impl Tree {
    /// SIGTERM to the group, or to its keeper, which passes it to everything below it. Returns
    /// whether it was delivered (nobody left: `false`).
    pub fn ask_to_stop(&self) -> bool {
        if self.kept {
            return kill(Pid::from_raw(self.pgid), Signal::SIGTERM).is_ok();
        }
        killpg(Pid::from_raw(self.pgid), Signal::SIGTERM).is_ok()
    }

    /// SIGKILL to the group; a keeper is told to kill everything below it (SIGUSR1), and the
    /// group is killed only if the keeper is gone. ESRCH (nobody left) is the common, happy case.
    pub fn kill(&self) {
        // The cgroup's kill is at once, and nothing in it can dodge it; the keeper then kills
        // what might be outside it, and exits.
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
        if self.kept && kill(Pid::from_raw(self.pgid), Signal::SIGUSR1).is_ok() {
            return;
        }
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
    }

    /// A task of a long-lived agent ended: its keeper ends what the task left (SIGUSR2; see
    /// `keeper.rs`). Without a keeper, nothing: the group lives on with the agent.
    pub fn sweep(&self) {
        if self.kept {
            let _ = kill(Pid::from_raw(self.pgid), Signal::SIGUSR2);
        }
    }

    /// The live processes of the tree: the group's members, or everything below the keeper.
    fn processes(&self) -> Vec<super::kernel::ProcInfo> {
        if !self.kept {
            return super::book::group_members(self.pgid);
        }
        #[cfg(target_os = "linux")]
        return super::cgroup::below_and_inside(self.pgid, self.cgroup.as_ref().map(|c| c.dir()));
        #[cfg(not(target_os = "linux"))]
        super::kernel::tree_below(self.pgid)
    }

    /// Resident bytes of every live process in the tree; `None` where this cannot be read or
    /// nobody is left. With a cgroup that has the memory controller, the kernel's own figure for
    /// it (`memory.current`: page cache and kernel memory too).
    pub fn rss(&self) -> Option<u64> {
        if let Some(bytes) = self.cgroup.as_ref().and_then(|c| c.memory())
            && bytes > 0
        {
            return Some(bytes);
        }
        let members = self.processes();
        (!members.is_empty()).then(|| members.iter().map(|p| p.rss).sum())
    }

    /// The agent's resident bytes, if it still runs (a zombie holds nothing): the leader's, or
    /// the keeper's child's.
    pub fn leader_rss(&self) -> Option<u64> {
        let agent = if self.kept {
            // The keeper's first child: the agent (what it adopts comes later).
            let mut first = None;
            super::kernel::walk_below(self.pgid, |pid| {
                first = Some(pid);
                false
            });
            first?
        } else {
            self.pgid
        };
        super::kernel::stat(agent)
            .filter(|p| p.state != 'Z' && p.rss > 0)
            .map(|p| p.rss)
    }

    /// The pids of the tree's live processes.
    pub fn members(&self) -> Vec<u32> {
        self.processes().iter().map(|p| p.pid as u32).collect()
    }

    /// On Windows, the line a keeper writes when it ended an attempt for its process count, if
    /// the job was ended so. Here the keeper writes it on the agent's stderr itself: `None`.
    pub fn process_limit_note(&self) -> Option<String> {
        None
    }
}

/// A running agent, waited for through a pidfd (Linux; a short poll elsewhere) and reaped with
/// `wait4`, which also gives its peak resident memory (its own, or that of a descendant it waited
/// for, whichever was larger): a task too short for a scheduled sample still has a true peak.
/// Dropping it unreaped kills its group and reaps it, so an abandoned attempt leaves nothing.
pub struct Child {
    pid: i32,
    /// It is a keeper (`keeper.rs`).
    kept: bool,
    /// The attempt's cgroup, kept (and so not removed) until the child is gone.
    cgroup: Option<Arc<AttemptCgroup>>,
    pidfd: Option<AsyncFd<std::os::fd::OwnedFd>>,
    status: Option<Exit>,
    /// From `wait4`, bytes, when it is the agent's own (see [`Child::own_peak`]).
    max_rss: Option<u64>,
    /// The daemon's resident set when the agent was forked.
    parent_rss: u64,
}

impl Child {
    /// The pid of the process started: the agent, or its keeper.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// The agent's pid: the process itself, or the agent its keeper started (waiting up to
    /// 100 ms for the keeper to have started it; the keeper's own pid if it has not).
    pub fn agent_pid(&self) -> u32 {
        if !self.kept {
            return self.pid as u32;
        }
        for _ in 0..100 {
            let children =
                std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.pid));
            let first = match children {
                Ok(text) => text.split_whitespace().next().and_then(|p| p.parse().ok()),
                Err(_) => super::kernel::keepers_agent(self.pid, &super::kernel::all_processes()),
            };
            if let Some(pid) = first {
                return pid as u32;
            }
            if self.status.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.pid as u32
    }

    pub fn tree(&self) -> Tree {
        Tree {
            pgid: self.pid,
            kept: self.kept,
            cgroup: self.cgroup.clone(),
        }
    }

    /// The kernel's peak for the agent, when it tells something. A forked child starts out with
    /// a copy of the daemon's memory, and exec records that copy's size as the child's peak so
    /// far: a figure near the daemon's own size may be just that, and is not taken.
    pub fn own_peak(&self) -> Option<u64> {
        let floor = self.parent_rss + self.parent_rss / 8 + (1 << 20);
        self.max_rss.filter(|m| *m > floor)
    }

    /// Whether the leader has exited (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        self.status.is_some() || self.try_reap()
    }

    /// Whether it has been reaped.
    pub fn ended(&self) -> Option<Exit> {
        self.status
    }

    /// Waits for the leader to end and reaps it; what it left in its group is killed as it is
    /// reaped. Cancel-safe.
    pub async fn wait(&mut self) -> Exit {
        loop {
            if let Some(status) = self.status {
                return status;
            }
            if self.try_reap() {
                continue;
            }
            match &self.pidfd {
                Some(fd) => match fd.readable().await {
                    // Readable means exited; the reap on the next turn takes it.
                    Ok(mut ready) => ready.clear_ready(),
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                },
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Kills the whole group and reaps the leader.
    pub async fn kill(&mut self) -> Exit {
        self.tree().kill();
        self.wait().await
    }

    /// Reaps the process if it has exited. Returns whether it did. Whatever it left in its group
    /// is killed first, while the unreaped leader still holds the group's number (after the reap
    /// the number could be given to a new process).
    fn try_reap(&mut self) -> bool {
        // SAFETY: an all-zero siginfo is a valid value to be overwritten.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only to `info`. WNOWAIT leaves the process to be reaped below.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                self.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        // SAFETY: si_pid is valid to read after a successful waitid.
        if rc == 0 && unsafe { info.si_pid() } == self.pid {
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        }
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value to be overwritten.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes only to the two out-pointers, which are valid.
        let rc = unsafe { libc::wait4(self.pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == self.pid {
            let status = ExitStatus::from_raw(status);
            self.status = Some(match (status.code(), status.signal()) {
                (Some(code), _) => Exit::Code(code),
                (None, Some(signal)) => Exit::Signal(signal),
                (None, None) => Exit::Unknown,
            });
            // ru_maxrss is in KiB on Linux (bytes on macOS).
            let unit = if cfg!(target_os = "macos") { 1 } else { 1024 };
            self.max_rss = u64::try_from(usage.ru_maxrss).ok().map(|k| k * unit);
            true
        } else if rc == -1 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // Not ours to wait for (ECHILD: reaped by someone else, e.g. with SIGCHLD ignored,
            // which the daemon undoes at start): gone, how is unknown.
            self.status = Some(Exit::Unknown);
            true
        } else {
            false
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            if let Some(cgroup) = &self.cgroup {
                cgroup.kill();
            }
            // A keeper is given a moment to kill what is below it (milliseconds); the group's
            // kill is for a keeper that did not answer.
            if self.kept && kill(Pid::from_raw(self.pid), Signal::SIGUSR1).is_ok() {
                for _ in 0..200 {
                    if self.try_reap() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            let mut status = 0;
            // SAFETY: waitpid writes only to `status`. The process was just killed, so this
            // returns at once.
            unsafe { libc::waitpid(self.pid, &mut status, 0) };
        }
    }
}

/// A pidfd for `pid`: readable once it exits (Linux 5.3 and later).
#[cfg(target_os = "linux")]
fn pidfd_open(pid: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    // SAFETY: a non-negative return is a descriptor this process now owns.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

#[cfg(not(target_os = "linux"))]
fn pidfd_open(_pid: i32) -> Option<std::os::fd::OwnedFd> {
    None
}

pub fn rss(pid: u32) -> Option<u64> {
    super::kernel::stat(pid as i32).map(|p| p.rss)
}

pub fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

pub fn signal_name(n: i32) -> Option<&'static str> {
    Signal::try_from(n).ok().map(Signal::as_str)
}

pub fn children(pid: u32) -> Vec<u32> {
    super::kernel::all_processes()
        .into_iter()
        .filter(|p| p.ppid == pid as i32 && p.state != 'Z')
        .map(|p| p.pid as u32)
        .collect()
}
