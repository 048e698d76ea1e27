//! An agent's process tree: starting it apart from the daemon, stopping it gracefully then for
//! good, knowing when all of it has ended, its memory, and what outlives a daemon that died.
//!
//! **Unix.** Every agent leads its own process group (started with `posix_spawn`). Its end is
//! seen through a pidfd (Linux; a short poll elsewhere); as the leader is reaped, whatever it left
//! in its group is killed first, while the unreaped leader still holds the group's number. A
//! graceful stop is SIGTERM to the group; the forced one SIGKILL. What leaves the group (`setsid`)
//! and what outlives a daemon killed hard is the [`Guardian`]'s and the [`Book`]'s business (see
//! `book.rs`). Memory is the group's summed resident set from `/proc` (Linux only).
//!
//! **Windows.** Every agent runs in its own Job Object with kill-on-job-close, assigned while its
//! first thread is still suspended, so nothing it starts escapes (breakaway is not allowed). The
//! daemon holds the only handle: when the daemon ends, however it ends, the system closes it and
//! the whole tree dies, which is what the guardian and the book do on Unix (there they are
//! no-ops). A graceful stop is CTRL_BREAK to the agent's process group where the system can
//! deliver one (the agent shares the daemon's console), then `TerminateJobObject`. The end of an
//! attempt is the job having no process left, not the first child's exit alone. Memory is the
//! summed working sets of the job's processes.

#[cfg(unix)]
mod book;
#[cfg(target_os = "linux")]
pub mod cgroup;
#[cfg(not(target_os = "linux"))]
pub mod cgroup {
    //! cgroups are Linux's: elsewhere none is ever found, and none is ever made.
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Found {
        pub dir: PathBuf,
        pub why: String,
        pub controllers: Vec<String>,
    }

    #[derive(Debug, PartialEq, Eq)]
    pub enum Cgroups {}

    #[derive(Debug, PartialEq, Eq)]
    pub enum AttemptCgroup {}

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Stale {
        pub cgroup: PathBuf,
        pub killed: Vec<i32>,
    }

    pub fn find(_configured: Option<&Path>) -> Result<Found, String> {
        Err("cgroups are Linux's".into())
    }

    impl Found {
        pub fn take(self, _project: &str) -> std::io::Result<(Arc<Cgroups>, Vec<Stale>)> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
    }

    impl Cgroups {
        pub fn describe(&self) -> String {
            match *self {}
        }
    }

    impl AttemptCgroup {
        pub fn procs(&self) -> Vec<i32> {
            match *self {}
        }
        pub fn kill(&self) {
            match *self {}
        }
        pub fn memory(&self) -> Option<u64> {
            match *self {}
        }
    }
}
#[cfg(target_os = "linux")]
mod keeper;
#[cfg(unix)]
mod kernel;
#[cfg(target_os = "linux")]
pub use keeper::{KEEPER_ENV, main as keep};
#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use book::{
    Book, Guardian, ProcInfo, Recorded, group_members, guard, kill_marked, live_groups, started_at,
    stat,
};
#[cfg(unix)]
use unix as imp;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;
#[cfg(windows)]
pub use windows::{Book, Guardian, Recorded, guard, live_groups, started_at};

pub use imp::{Child, Tree};

/// Every agent's environment names the daemon that started it, so its descendants can be told
/// from strangers after the agent itself is gone (Unix's guardian and book go by it; on Windows
/// it is kept for tools that look).
pub const OWNER_ENV: &str = "AGENTQ_DAEMON";

/// One page of the book (Unix): a live process group.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Record {
    pub pgid: i32,
    pub start_ticks: u64,
    pub boot_id: Option<String>,
    pub owner: String,
    pub worker: String,
    pub task: Option<i64>,
}

/// What start-up found of an earlier daemon's process group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaped {
    pub record: Record,
    /// The pids killed (empty: the group was already gone).
    pub killed: Vec<i32>,
}

/// A live agent group as the book records it, seen from any process (for `agentq status`): the
/// leader still runs with the recorded start time. (Windows keeps no book: none is listed.)
#[derive(Clone, Debug)]
pub struct LiveGroup {
    pub record: Record,
    /// The agent's pid: the group's leader, or the agent below it where the leader is a keeper.
    pub agent: i32,
    /// The group's resident memory now, bytes.
    pub rss: u64,
    /// When its leader started, if the boot time can be read.
    pub started_at: Option<std::time::SystemTime>,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    /// Ended by a signal (Unix).
    Signal(i32),
    /// Gone, how is unknown (reaped by someone else).
    Unknown,
}

/// A started agent: its process, and its standard streams as tokio pipes.
pub struct Spawned {
    pub child: Child,
    pub stdin: Option<tokio::process::ChildStdin>,
    pub stdout: Option<tokio::process::ChildStdout>,
    pub stderr: Option<tokio::process::ChildStderr>,
}

/// A command for `program` as an agent's `command` names it. On Windows a bare name without an
/// extension is looked up on `PATH` with `PATHEXT`, as a shell would (std alone finds only
/// `.exe`), so npm's `claude.cmd` shims start; std's `Command` then runs a `.cmd`/`.bat` through
/// `cmd.exe` with its arguments escaped for it, and refuses one it cannot pass safely. Elsewhere
/// it is `Command::new(program)`.
pub fn command(program: &str) -> std::process::Command {
    if cfg!(windows)
        && !crate::fs::is_path(program)
        && std::path::Path::new(program).extension().is_none()
        && let Some(path) = std::env::var_os("PATH")
        && let Some(found) = crate::fs::find_on_path(program, &path)
    {
        return std::process::Command::new(found);
    }
    std::process::Command::new(program)
}

/// Starts `cmd` as the leader of a tree of its own (see the module's doc). Must be called inside
/// a tokio runtime. If anything fails after the process started, it is killed and reaped.
pub fn spawn(cmd: std::process::Command) -> std::io::Result<Spawned> {
    imp::spawn(cmd, false, None)
}

/// The subcommand (`agentq keep`) the daemon starts a keeper with (Linux).
pub const KEEP_COMMAND: &str = "keep";

/// How the daemon contains each agent beyond its process tree: on Linux, a keeper process per
/// attempt (`keeper.rs`), which nothing the agent starts can get away from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keep {
    /// The program that answers `agentq keep` (the daemon's own binary).
    pub exe: std::path::PathBuf,
    /// How long a process asked to stop has before it is killed (`kill_timeout`).
    pub grace: std::time::Duration,
    /// The most processes the attempt may have at once (`max_processes`): past it, the keeper
    /// kills them all and says so on the agent's stderr ([`PROCESS_LIMIT_MARK`]).
    pub max_processes: Option<u32>,
    /// Where each attempt gets a cgroup of its own (`cgroup.rs`), if the daemon has one to divide.
    pub cgroups: Option<std::sync::Arc<cgroup::Cgroups>>,
}

/// How a keeper's line on the agent's stderr begins when it ended an attempt for having more
/// than `max_processes` processes.
pub const PROCESS_LIMIT_MARK: &str = "agentq keep: process limit:";

impl Keep {
    /// A keeper run by this very binary, which must answer `agentq keep` (agentq's `main` does).
    pub fn this_binary(
        grace: std::time::Duration,
        max_processes: Option<u32>,
    ) -> std::io::Result<Keep> {
        Ok(Keep {
            exe: if cfg!(target_os = "linux") {
                std::path::PathBuf::from("/proc/self/exe")
            } else {
                std::env::current_exe()?
            },
            grace,
            max_processes,
            cgroups: None,
        })
    }

    /// The same, with each attempt in a cgroup of its own under `cgroups`.
    pub fn in_cgroups(mut self, cgroups: Option<std::sync::Arc<cgroup::Cgroups>>) -> Keep {
        self.cgroups = cgroups;
        self
    }

    /// Whether this platform has keepers (Linux); elsewhere `spawn_kept` is `spawn`, except that
    /// on Windows the job enforces `max_processes` itself.
    pub const AVAILABLE: bool = cfg!(target_os = "linux");
}

/// `spawn`, with the agent under a keeper where there is one (`keep`, on Linux), and in a cgroup
/// of its own where the keeper has cgroups to make it in. Its standard streams are piped,
/// whatever `cmd` said. The tree's stop, kill and memory then go through the keeper and the
/// cgroup, and [`Tree::sweep`] ends what a task of a long-lived agent left.
pub fn spawn_kept(mut cmd: std::process::Command, keep: Option<&Keep>) -> std::io::Result<Spawned> {
    use std::process::Stdio;
    #[cfg(target_os = "linux")]
    if let Some(keep) = keep {
        // Without its cgroup (a folder that cannot be made now), the attempt still has its
        // keeper, which holds everything below it.
        let cgroup = keep.cgroups.as_ref().and_then(|c| {
            c.attempt(keep.max_processes)
                .inspect_err(|e| {
                    tracing::warn!(root = %c.root().display(), "cannot make the attempt's cgroup ({e}): it runs under its keeper alone")
                })
                .ok()
                .map(std::sync::Arc::new)
        });
        let mut kept = keep.wrap(&cmd, cgroup.as_deref().map(cgroup::AttemptCgroup::dir))?;
        kept.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        return imp::spawn(kept, true, cgroup);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Windows: the job counts the processes itself (no keeper there).
    #[cfg(windows)]
    return imp::spawn_limited(cmd, keep.and_then(|k| k.max_processes));
    #[cfg(not(windows))]
    {
        let _ = keep;
        imp::spawn(cmd, false, None)
    }
}

/// Resident memory of process `pid`, bytes (`None` when it is gone or cannot be read).
pub fn rss(pid: u32) -> Option<u64> {
    imp::rss(pid)
}

/// The pids of the processes whose parent is `pid` (Linux: from `/proc`; Windows: a Toolhelp
/// snapshot, which keeps naming a parent that has since died).
pub fn children(pid: u32) -> Vec<u32> {
    imp::children(pid)
}

/// What an exit code means where it names a crash rather than a program's own status: on Windows
/// the NTSTATUS of an unhandled exception (`0xC0000005`, an access violation). `None` elsewhere
/// and for ordinary codes.
pub fn exit_name(code: i32) -> Option<&'static str> {
    if !cfg!(windows) {
        return None;
    }
    Some(match code as u32 {
        0xC000_0005 => "access violation",
        0xC000_001D => "illegal instruction",
        0xC000_0094 => "integer divide by zero",
        0xC000_00FD => "stack overflow",
        0xC000_0135 => "a DLL it needs was not found",
        0xC000_013A => "ended by Ctrl-C",
        0xC000_0142 => "DLL initialisation failed",
        0xC000_0374 => "heap corruption",
        0xC000_0409 => "fail-fast exception (stack buffer overrun)",
        0xC000_0417 => "invalid argument to a C runtime function",
        _ => return None,
    })
}

/// The name of signal `n` (`SIGKILL`), where processes end by signals (Unix).
pub fn signal_name(n: i32) -> Option<&'static str> {
    imp::signal_name(n)
}

/// Whether a process with this pid exists.
pub fn alive(pid: u32) -> bool {
    imp::alive(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A shell line that starts two sleepers beside itself and waits, and one whose grandchild
    /// writes its pid to `pidfile` and ignores a polite stop.
    #[cfg(unix)]
    fn two_sleepers() -> std::process::Command {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "sleep 30 & sleep 30 & wait"]);
        cmd
    }

    #[cfg(windows)]
    fn two_sleepers() -> std::process::Command {
        let mut cmd = std::process::Command::new("cmd");
        cmd.args([
            "/c",
            "start /b ping -n 30 127.0.0.1 >NUL & ping -n 30 127.0.0.1 >NUL",
        ]);
        cmd
    }

    fn quiet(mut cmd: std::process::Command) -> std::process::Command {
        use std::process::Stdio;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }

    #[tokio::test]
    async fn a_tree_is_summed_and_killed_whole() {
        let Spawned { mut child, .. } = spawn(quiet(two_sleepers())).unwrap();
        let tree = child.tree();
        // Wait (bounded) for the sleepers to be in the tree.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tree.members().len() < 3 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let members = tree.members();
        assert!(members.len() >= 3, "{members:?}");
        let rss = tree.rss();
        assert!(rss.unwrap() > 3 * 4096, "{rss:?}");
        assert!(tree.leader_rss().is_some());
        assert!(child.ended().is_none());
        let exit = child.kill().await;
        assert_ne!(exit, Exit::Code(0));
        // Killed processes are reaped by init (Unix); give that a bounded moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        while members.iter().any(|p| alive(*p)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<_> = members.iter().filter(|p| alive(**p)).collect();
        assert!(left.is_empty(), "still alive: {left:?}");
        assert_eq!(tree.rss(), None, "nobody left in the tree");
    }

    #[tokio::test]
    async fn when_the_leader_exits_what_it_left_is_ended_too() {
        #[cfg(unix)]
        let line = ["sh", "-c", "sleep 30 & echo $!"];
        #[cfg(windows)]
        let line = [
            "cmd",
            "/c",
            "start /b ping -n 30 127.0.0.1 >NUL & echo started",
        ];
        let mut cmd = std::process::Command::new(line[0]);
        cmd.args(&line[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        let Spawned {
            mut child, stdout, ..
        } = spawn(cmd).unwrap();
        let tree = child.tree();
        let mut out = String::new();
        use tokio::io::AsyncReadExt;
        let read = tokio::spawn(async move {
            let _ = stdout.unwrap().read_to_string(&mut out).await;
            out
        });
        let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .expect("the leader's end is seen");
        assert_eq!(exit, Exit::Code(0));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !tree.members().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(tree.members().is_empty(), "{:?}", tree.members());
        let out = tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .unwrap()
            .unwrap();
        #[cfg(unix)]
        {
            let sleeper: u32 = out.trim().parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while alive(sleeper) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert!(!alive(sleeper), "the sleeper {sleeper} outlived its leader");
        }
        #[cfg(windows)]
        assert!(out.contains("started"), "{out}");
    }
}
