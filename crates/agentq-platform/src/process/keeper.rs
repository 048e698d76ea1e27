//! The keeper (Linux): a small process between the daemon and each agent, so that nothing the
//! agent starts outlives its attempt, whatever it does to get away.
//!
//! The daemon starts `agentq keep [options] -- PROGRAM ARGS...` where it used to start the agent.
//! The keeper makes itself a *child subreaper* (`PR_SET_CHILD_SUBREAPER`): every process below it
//! whose parent dies is given to the keeper instead of to init, so a `setsid` child, a double-forked
//! daemon or a process that cleared its environment all stay below it, findable by walking parent
//! links down from the keeper. It starts the agent (in the keeper's own process group, which the
//! daemon made for it), hands it the daemon's mark, lets go of the daemon's pipes, and then only
//! waits for signals:
//!
//! | signal | from | what the keeper does |
//! |---|---|---|
//! | SIGCHLD | the kernel | reaps; when the agent itself ended: the last sweep (below), then exits as the agent did |
//! | SIGTERM, SIGINT, SIGHUP | the daemon's graceful stop; the guardian, when the daemon died | SIGTERM to every process below it; SIGKILL to all after the grace |
//! | SIGUSR1 | the daemon's forced stop | SIGKILL to every process below it at once |
//! | SIGUSR2 | the daemon, a task of a long-lived agent ended | ends what the task left: every process below the keeper that is not the agent and either was orphaned (its parent chain no longer reaches the agent) or left the agent's process group; SIGTERM, then SIGKILL after the grace |
//!
//! The last sweep, once the agent has exited: SIGTERM to everything left below the keeper, then
//! SIGKILL after the grace (`--grace-ms`, the worker's `kill_timeout`), repeated until nothing is
//! left (a process forking while it dies is caught in the next round). Only then does the keeper
//! exit, with the agent's exit code, or by the agent's signal: the daemon sees the agent's end and
//! knows that the attempt's whole tree has ended with it. Only processes below the keeper are
//! ever signalled: a stranger never is.
//!
//! The keeper carries its own mark ([`KEEPER_ENV`], the daemon's name), not the agents' one
//! ([`OWNER_ENV`](super::OWNER_ENV)), which it hands to the agent: when the daemon dies, the
//! guardian kills what carries the agents' mark at once, and asks the keepers to stop, so that
//! they sweep what got away with its mark cleared. The keeper is a few hundred kilobytes of
//! resident memory and is left out of the tree's memory figure. If the keeper itself is killed
//! (SIGKILL, which it cannot catch), the daemon still kills its process group, and the guardian
//! what carries the mark, as without a keeper.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::kernel::{ProcInfo, tree_below};

/// A keeper's environment names the daemon it keeps agents for (the value of `OWNER_ENV`).
pub const KEEPER_ENV: &str = "AGENTQ_KEEPER";

impl super::Keep {
    /// The command that runs `cmd` under a keeper: same arguments, environment and folder; the
    /// caller sets its standard streams. `cmd`'s program is found on `PATH` here (the `PATH` it
    /// would run with), so that a missing program is the same error it would have been without a
    /// keeper. The daemon's mark (`OWNER_ENV`), if `cmd` sets it, goes to the agent; the keeper
    /// carries it as `KEEPER_ENV` instead (the guardian kills what carries the first at once, and
    /// a keeper must live to do its last sweep).
    pub(super) fn wrap(
        &self,
        cmd: &std::process::Command,
        cgroup: Option<&std::path::Path>,
    ) -> std::io::Result<std::process::Command> {
        let program = cmd.get_program();
        let mut path_env = std::env::var_os("PATH");
        let mut mark = None;
        for (key, value) in cmd.get_envs() {
            if key == "PATH" {
                path_env = value.map(OsStr::to_os_string);
            } else if key == super::OWNER_ENV {
                mark = value.map(OsStr::to_os_string);
            }
        }
        let found = resolve(program, path_env.as_deref(), cmd.get_current_dir())?;
        let mut kept = std::process::Command::new(&self.exe);
        kept.arg0("agentq").arg(super::KEEP_COMMAND);
        kept.arg("--grace-ms")
            .arg(self.grace.as_millis().to_string());
        kept.arg("--arg0").arg(program);
        if let Some(max) = self.max_processes {
            kept.arg("--max-processes").arg(max.to_string());
        }
        if let Some(dir) = cgroup {
            kept.arg("--cgroup").arg(dir);
        }
        kept.arg("--").arg(found).args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => kept.env(key, value),
                None => kept.env_remove(key),
            };
        }
        kept.env_remove(super::OWNER_ENV);
        match mark {
            Some(mark) => kept.env(KEEPER_ENV, mark),
            None => kept.env_remove(KEEPER_ENV),
        };
        if let Some(dir) = cmd.get_current_dir() {
            kept.current_dir(dir);
        }
        Ok(kept)
    }
}

/// `program` as the kernel will exec it: a path as it is (relative to `cwd`), a bare name looked up
/// on `path` as [`crate::fs::find_on_path`] does (its relative folders taken from `cwd`, where the
/// agent runs). NotFound / PermissionDenied as a spawn would fail.
fn resolve(
    program: &OsStr,
    path: Option<&OsStr>,
    cwd: Option<&std::path::Path>,
) -> std::io::Result<PathBuf> {
    use crate::fs::{find_on_path, is_executable, is_path};
    let in_cwd = |p: PathBuf| match cwd {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p,
    };
    // A name that is not UTF-8 cannot be a configured one: the exec is left to say what it finds.
    let Some(name) = program.to_str() else {
        return Ok(PathBuf::from(program));
    };
    if is_path(name) {
        let full = in_cwd(PathBuf::from(name));
        let meta = std::fs::metadata(&full)?;
        return match is_executable(&full, &meta) {
            true => Ok(full),
            false => Err(std::io::ErrorKind::PermissionDenied.into()),
        };
    }
    let path = path.unwrap_or_else(|| OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    let dirs: Vec<PathBuf> = std::env::split_paths(path).map(in_cwd).collect();
    let joined = std::env::join_paths(&dirs).map_err(std::io::Error::other)?;
    if let Some(found) = find_on_path(name, &joined) {
        return Ok(found);
    }
    Err(match dirs.iter().any(|d| d.join(name).is_file()) {
        true => std::io::ErrorKind::PermissionDenied.into(),
        false => std::io::ErrorKind::NotFound.into(),
    })
}

/// What the keeper was told on its command line.
#[derive(Debug, PartialEq, Eq)]
struct Args {
    grace: Duration,
    arg0: Option<OsString>,
    max_processes: Option<usize>,
    /// The attempt's cgroup (`cgroup.rs`), which the agent is started in.
    cgroup: Option<PathBuf>,
    program: OsString,
    args: Vec<OsString>,
}

fn parse(args: &[OsString]) -> Result<Args, String> {
    let mut grace = Duration::from_secs(5);
    let (mut arg0, mut max_processes, mut cgroup) = (None, None, None);
    let mut it = args.iter();
    loop {
        let Some(flag) = it.next() else {
            return Err("no program after `--`".into());
        };
        let flag = flag.to_str().unwrap_or("");
        if flag == "--" {
            break;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .clone();
        let number = |v: &OsString| {
            v.to_str()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| format!("{flag}: {v:?} is not a number"))
        };
        match flag {
            "--grace-ms" => grace = Duration::from_millis(number(&value)?),
            "--arg0" => arg0 = Some(value),
            "--max-processes" => max_processes = Some(number(&value)? as usize),
            "--cgroup" => cgroup = Some(PathBuf::from(value)),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let program = it.next().ok_or("no program after `--`")?.clone();
    Ok(Args {
        grace,
        arg0,
        max_processes,
        cgroup,
        program,
        args: it.cloned().collect(),
    })
}

/// The keeper's whole life (`agentq keep ...`, the arguments after `keep`). Never returns.
pub fn main(args: &[OsString]) -> ! {
    let args = match parse(args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("agentq keep: {e}");
            std::process::exit(2);
        }
    };
    // SAFETY: prctl with this option takes plain integers.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let watched = [
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ];
    // SAFETY: an all-zero sigset is valid storage for sigemptyset; the keeper is one thread.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in watched {
            libc::sigaddset(&mut set, signal);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut cmd = std::process::Command::new(&args.program);
    cmd.args(&args.args);
    if let Some(arg0) = &args.arg0 {
        cmd.arg0(arg0);
    }
    if let Some(mark) = std::env::var_os(KEEPER_ENV) {
        cmd.env_remove(KEEPER_ENV).env(super::OWNER_ENV, mark);
    }
    // The agent must not inherit the keeper's blocked signals (std leaves the mask as it is): it
    // is emptied between fork and exec, which costs little in a process this small.
    // SAFETY: sigprocmask is async-signal-safe, and the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    // The agent starts inside the attempt's cgroup; the keeper stays outside, out of its kill.
    if let Some(dir) = &args.cgroup
        && let Err(e) = super::cgroup::enter_on_exec(&mut cmd, dir)
    {
        eprintln!(
            "agentq keep: cannot enter the attempt's cgroup {}: {e}",
            dir.display()
        );
        std::process::exit(127);
    }
    // The keeper's own word to the daemon (a process limit) goes to the agent's stderr, through
    // a copy of it the agent does not inherit.
    // SAFETY: fcntl duplicates a descriptor this process owns; the copy is owned by the File.
    let report = unsafe {
        let fd = libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3);
        (fd >= 0).then(|| <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd))
    };
    let agent = match cmd.spawn() {
        Ok(child) => child.id() as i32,
        Err(e) => {
            eprintln!(
                "agentq keep: could not start {:?}: {e}",
                args.arg0.as_ref().unwrap_or(&args.program)
            );
            std::process::exit(if e.kind() == std::io::ErrorKind::PermissionDenied {
                126
            } else {
                127
            });
        }
    };
    release_streams();
    let mut keeper = Keeper {
        me: std::process::id() as i32,
        agent,
        grace: args.grace,
        status: None,
        kill_at: None,
        doomed: HashMap::new(),
        max_processes: args.max_processes,
        cgroup: args.cgroup.clone(),
        report,
        killed: false,
    };
    loop {
        // Done when nothing is left below, or once everything was killed: a process that cannot
        // die yet (in uninterruptible sleep) holds its SIGKILL, and must not hold the attempt.
        if let Some(status) = keeper.status
            && (keeper.killed || keeper.below().is_empty())
        {
            // What died last may still wait to be reaped: it goes with the keeper, not to init.
            keeper.reap();
            exit_as(status);
        }
        // While the last sweep waits for what it asked to stop, it looks every few milliseconds
        // whether all of it is gone (their ends reach their own parents, not the keeper).
        let mut timeout = keeper
            .kill_at
            .map(|at| at.saturating_duration_since(Instant::now()));
        if keeper.status.is_some() {
            timeout = timeout.map(|t| t.min(Duration::from_millis(5)));
        }
        // With a process limit, the tree is counted every few tens of milliseconds.
        if keeper.max_processes.is_some() && keeper.status.is_none() {
            timeout = Some(timeout.map_or(LIMIT_POLL, |t| t.min(LIMIT_POLL)));
        }
        match wait_signal(&set, timeout) {
            Some(libc::SIGCHLD) => keeper.reap(),
            Some(libc::SIGTERM | libc::SIGINT | libc::SIGHUP) => keeper.stop_all(),
            Some(libc::SIGUSR1) => keeper.kill_all(),
            Some(libc::SIGUSR2) => keeper.sweep_task(),
            _ => {}
        }
        if keeper.kill_at.is_some_and(|at| Instant::now() >= at) {
            keeper.deadline();
        }
        keeper.enforce_limit();
    }
}

struct Keeper {
    me: i32,
    agent: i32,
    grace: Duration,
    /// How the agent ended, once it has.
    status: Option<std::process::ExitStatus>,
    /// When what was asked to stop is killed.
    kill_at: Option<Instant>,
    /// Asked to stop by a task's sweep: killed at `kill_at` if still there (pid -> start time).
    doomed: HashMap<i32, u64>,
    /// `--max-processes`: the most processes below the keeper at once.
    max_processes: Option<usize>,
    /// Where the keeper says why it ended an attempt (the agent's stderr), closed once said.
    report: Option<std::fs::File>,
    /// Everything below was sent SIGKILL (it may take a moment to die).
    killed: bool,
    /// The attempt's cgroup: what is in it is the attempt's too, wherever it went.
    cgroup: Option<PathBuf>,
}

/// How often the tree is counted against `--max-processes`.
const LIMIT_POLL: Duration = Duration::from_millis(25);

impl Keeper {
    /// The live processes below the keeper (itself left out), and those in the attempt's cgroup.
    fn below(&self) -> Vec<ProcInfo> {
        super::cgroup::below_and_inside(self.me, self.cgroup.as_deref())
    }

    /// Reaps every ended child (the agent, and orphans given to the keeper). The agent's end
    /// starts the last sweep.
    fn reap(&mut self) {
        loop {
            let mut raw = 0;
            // SAFETY: waitpid writes only to `raw`.
            let pid = unsafe { libc::waitpid(-1, &mut raw, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            if pid == self.agent && self.status.is_none() {
                self.status = Some(std::process::ExitStatus::from_raw(raw));
                self.stop_all();
            }
        }
    }

    /// SIGTERM to everything below; SIGKILL after the grace.
    fn stop_all(&mut self) {
        let below = self.below();
        signal_all(&below, libc::SIGTERM);
        if !below.is_empty() && self.kill_at.is_none() {
            self.kill_at = Some(Instant::now() + self.grace);
        }
        self.doomed.clear();
    }

    /// Past `--max-processes`: says so on the agent's stderr, and kills everything below. The
    /// count walks the tree through the kernel's children lists, which costs a read per thread
    /// of each process in it, not a scan of every process on the machine.
    fn enforce_limit(&mut self) {
        let Some(max) = self.max_processes else {
            return;
        };
        if self.status.is_some() {
            return;
        }
        // The cgroup's list, where there is one, is one read (and holds what left the tree).
        let count = match &self.cgroup {
            Some(dir) => super::cgroup::procs(dir).len(),
            None => count_below(self.me, max + 1),
        };
        if count <= max {
            return;
        }
        if let Some(mut report) = self.report.take() {
            use std::io::Write;
            let _ = writeln!(
                report,
                "{} more than {max} processes at once (max_processes); all of them were killed",
                super::PROCESS_LIMIT_MARK
            );
        }
        self.kill_all();
    }

    /// SIGKILL to everything below, until nothing is left: the cgroup's at once, where there is
    /// one.
    fn kill_all(&mut self) {
        if let Some(dir) = &self.cgroup {
            super::cgroup::kill(dir);
        }
        for _ in 0..1000 {
            let below = self.below();
            if below.is_empty() {
                break;
            }
            signal_all(&below, libc::SIGKILL);
            self.reap();
            std::thread::sleep(Duration::from_millis(1));
        }
        self.kill_at = None;
        self.doomed.clear();
        self.killed = true;
        self.reap();
    }

    /// A task of a long-lived agent ended: what it left is asked to stop.
    fn sweep_task(&mut self) {
        let below = self.below();
        let agents: HashSet<i32> = tree_below(self.agent).iter().map(|p| p.pid).collect();
        let left: Vec<ProcInfo> = below
            .into_iter()
            .filter(|p| p.pid != self.agent && (!agents.contains(&p.pid) || p.pgrp != self.me))
            .collect();
        signal_all(&left, libc::SIGTERM);
        if !left.is_empty() {
            self.doomed
                .extend(left.iter().map(|p| (p.pid, p.start_ticks)));
            self.kill_at.get_or_insert(Instant::now() + self.grace);
        }
    }

    /// The grace is over: the last sweep kills everything, a task's sweep what it asked to stop.
    fn deadline(&mut self) {
        if self.status.is_some() || self.doomed.is_empty() {
            self.kill_all();
            return;
        }
        let still: Vec<ProcInfo> = self
            .below()
            .into_iter()
            .filter(|p| self.doomed.get(&p.pid) == Some(&p.start_ticks))
            .collect();
        signal_all(&still, libc::SIGKILL);
        self.doomed.clear();
        self.kill_at = None;
    }
}

fn signal_all(processes: &[ProcInfo], signal: i32) {
    for p in processes {
        // SAFETY: kill takes plain integers. Each pid was below the keeper a moment ago; a pid
        // the kernel reused in between would have to be below the keeper again (it is the
        // reaper of everything below it, so a reused number is its own child's).
        unsafe { libc::kill(p.pid, signal) };
    }
}

/// How many processes are below `root`, counting up to `enough` (a fork bomb is not counted to
/// its end).
fn count_below(root: i32, enough: usize) -> usize {
    let mut count = 0;
    super::kernel::walk_below(root, |_| {
        count += 1;
        count < enough
    });
    count
}

/// Points stdin, stdout and stderr at /dev/null: the daemon's pipes are the agent's alone, so
/// they close when the agent and what it started are gone, not when the keeper is.
fn release_streams() {
    let null = c"/dev/null";
    // SAFETY: open/dup2/close on descriptors this process owns.
    unsafe {
        let fd = libc::open(null.as_ptr(), libc::O_RDWR);
        if fd >= 0 {
            for target in 0..3 {
                libc::dup2(fd, target);
            }
            if fd > 2 {
                libc::close(fd);
            }
        }
    }
}

/// Waits for one of the blocked signals in `set`, at most `timeout` (forever without one).
fn wait_signal(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<i32> {
    // SAFETY: an all-zero siginfo is valid storage; sigtimedwait/sigwaitinfo write only to it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let signal = match timeout {
        Some(t) => {
            let ts = libc::timespec {
                tv_sec: t.as_secs() as libc::time_t,
                tv_nsec: t.subsec_nanos() as libc::c_long,
            };
            unsafe { libc::sigtimedwait(set, &mut info, &ts) }
        }
        None => unsafe { libc::sigwaitinfo(set, &mut info) },
    };
    (signal > 0).then_some(signal)
}

/// Ends the keeper as the agent ended: its exit code, or its signal.
fn exit_as(status: std::process::ExitStatus) -> ! {
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    if let Some(signal) = status.signal() {
        // SAFETY: restoring a default action, unblocking and raising: plain integers.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(signal);
        }
        std::process::exit(128 + signal);
    }
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_are_read_up_to_the_program() {
        let args = parse(&os(&[
            "--grace-ms",
            "250",
            "--arg0",
            "claude",
            "--",
            "/bin/sh",
            "-c",
            "--grace-ms",
        ]))
        .unwrap();
        assert_eq!(args.grace, Duration::from_millis(250));
        assert_eq!(args.arg0, Some("claude".into()));
        assert_eq!(args.program, OsString::from("/bin/sh"));
        assert_eq!(args.args, os(&["-c", "--grace-ms"]));
        assert!(
            parse(&os(&["--grace-ms"]))
                .unwrap_err()
                .contains("needs a value")
        );
        assert!(
            parse(&os(&["--grace-ms", "x", "--", "a"]))
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            parse(&os(&["--nope", "1", "--", "a"]))
                .unwrap_err()
                .contains("unknown")
        );
        assert!(parse(&os(&["--"])).unwrap_err().contains("no program"));
    }

    #[test]
    fn programs_are_found_as_a_spawn_would_find_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = std::env::join_paths([dir.path()]).unwrap();
        assert_eq!(
            resolve(OsStr::new("sh"), Some(OsStr::new("/bin")), None).unwrap(),
            PathBuf::from("/bin/sh")
        );
        let err = resolve(OsStr::new("no-such-agent"), Some(&path), None).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        let err = resolve(OsStr::new("plain"), Some(&path), None).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        let err = resolve(plain.as_os_str(), None, None).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        let err = resolve(OsStr::new("./nothing"), None, Some(dir.path())).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
