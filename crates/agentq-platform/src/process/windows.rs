//! The Windows half: one Job Object per agent, with kill-on-job-close.

use std::collections::{HashMap, HashSet};
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};
use std::os::windows::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{CloseHandle, FILETIME, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Console::{
    CTRL_BREAK_EVENT, GenerateConsoleCtrlEvent, GetConsoleWindow,
};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, TH32CS_SNAPTHREAD, THREADENTRY32, Thread32First, Thread32Next,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_ACTIVE_PROCESS,
    JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, JOBOBJECT_BASIC_PROCESS_ID_LIST,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectBasicProcessIdList,
    JobObjectExtendedLimitInformation, QueryInformationJobObject, SetInformationJobObject,
    TerminateJobObject,
};
use windows_sys::Win32::System::ProcessStatus::{K32GetProcessMemoryInfo, PROCESS_MEMORY_COUNTERS};
use windows_sys::Win32::System::Threading::{
    CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, CREATE_SUSPENDED, GetExitCodeProcess,
    GetProcessTimes, OpenProcess, OpenThread, PROCESS_QUERY_LIMITED_INFORMATION, PROCESS_TERMINATE,
    PROCESS_VM_READ, ResumeThread, THREAD_SUSPEND_RESUME, TerminateProcess,
};

use super::{Exit, LiveGroup, Reaped, Spawned};

/// A Job Object handle, closed (killing what is left in the job) when the last owner drops it.
#[derive(Debug)]
struct Job {
    handle: OwnedHandle,
    /// `max_processes` when the job was ended for having more processes than that (0: not).
    over_limit: AtomicU32,
}

impl Job {
    /// A job with kill-on-close; with `max_processes`, the system's active-process limit one
    /// above it (real Windows enforces it; Wine does not: the count in [`watch_limit`] does).
    fn new(max_processes: Option<u32>) -> std::io::Result<Job> {
        // SAFETY: no security attributes (the handle is not inherited) and no name.
        let handle = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if handle.is_null() {
            return Err(std::io::Error::last_os_error());
        }
        let job = Job {
            // SAFETY: a fresh handle this process now owns.
            handle: unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) },
            over_limit: AtomicU32::new(0),
        };
        // SAFETY: all-zero is a valid limit struct; only the flags below are set.
        let mut limits: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        limits.BasicLimitInformation.LimitFlags = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
        if let Some(max) = max_processes {
            limits.BasicLimitInformation.LimitFlags |= JOB_OBJECT_LIMIT_ACTIVE_PROCESS;
            limits.BasicLimitInformation.ActiveProcessLimit = max.saturating_add(1);
        }
        // SAFETY: the struct matches the information class and its size is given.
        let ok = unsafe {
            SetInformationJobObject(
                job.raw(),
                JobObjectExtendedLimitInformation,
                (&limits as *const JOBOBJECT_EXTENDED_LIMIT_INFORMATION).cast(),
                std::mem::size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        if ok == 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(job)
    }

    fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle() as HANDLE
    }

    fn terminate(&self) {
        // SAFETY: a job handle this value owns. Exit code 1 for every process killed.
        unsafe { TerminateJobObject(self.raw(), 1) };
    }

    /// How many processes the job has now (the list's header counts them all, even past the
    /// room the list is given).
    fn count(&self) -> usize {
        self.process_list(1).0
    }

    /// The pids of the processes in the job (up to 1024).
    fn pids(&self) -> Vec<u32> {
        self.process_list(1024).1
    }

    /// The job's process list with room for `room` ids: how many processes it has, and their
    /// ids, none if they did not fit (the call then fails with ERROR_MORE_DATA, the header
    /// filled in all the same).
    fn process_list(&self, room: usize) -> (usize, Vec<u32>) {
        // A header of two u32 counts (one usize), then the ids, pointer-sized.
        let mut buf = vec![0usize; 1 + room];
        // SAFETY: the buffer holds the header and `room` ids, and its size is given.
        let ok = unsafe {
            QueryInformationJobObject(
                self.raw(),
                JobObjectBasicProcessIdList,
                buf.as_mut_ptr().cast(),
                (buf.len() * std::mem::size_of::<usize>()) as u32,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: the header is at the start of `buf`, zeroed if the call wrote nothing.
        let list = unsafe { &*(buf.as_ptr() as *const JOBOBJECT_BASIC_PROCESS_ID_LIST) };
        let total = list.NumberOfAssignedProcesses as usize;
        if ok == 0 {
            return (total, Vec::new());
        }
        let n = (list.NumberOfProcessIdsInList as usize).min(room);
        (total, buf[1..1 + n].iter().map(|id| *id as u32).collect())
    }
}

/// An agent's Job Object. Clones share it; the job ends with the [`Child`].
#[derive(Clone, Debug)]
pub struct Tree {
    job: Arc<Job>,
    leader: u32,
}

impl Tree {
    /// CTRL_BREAK to the agent's process group, which works only when it shares this process's
    /// console (the daemon runs in one). Returns whether it was delivered: without a console (a
    /// service), or under Wine (not implemented), there is no graceful stop to wait for.
    pub fn ask_to_stop(&self) -> bool {
        // SAFETY: no arguments beyond the event and the group id.
        unsafe {
            !GetConsoleWindow().is_null()
                && GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, self.leader) != 0
        }
    }

    /// Ends every process in the job.
    pub fn kill(&self) {
        self.job.terminate();
    }

    /// Summed working sets of the job's processes; `None` when none is left.
    pub fn rss(&self) -> Option<u64> {
        let sizes: Vec<u64> = self.job.pids().into_iter().filter_map(rss).collect();
        (!sizes.is_empty()).then(|| sizes.iter().sum())
    }

    pub fn leader_rss(&self) -> Option<u64> {
        rss(self.leader)
    }

    pub fn members(&self) -> Vec<u32> {
        self.job.pids()
    }

    /// A task of a long-lived agent ended: what it left that no longer descends from the agent
    /// through living processes of the job (its parent ended: a detached server, a background
    /// job of a shell that exited) is ended now. There is no gentler stop to give it first
    /// (CTRL_BREAK reaches only a whole console group).
    pub fn sweep(&self) {
        let members = self.job.pids();
        let parents = parents_of(&members);
        for pid in orphans(self.leader, &members, &parents) {
            if let Some(process) = open(pid, PROCESS_TERMINATE) {
                // SAFETY: a process handle with terminate rights, closed when dropped.
                unsafe { TerminateProcess(process.as_raw_handle() as HANDLE, 1) };
            }
        }
    }

    /// The line a keeper writes on Linux when it ended an attempt for its process count
    /// ([`super::PROCESS_LIMIT_MARK`]), if this job was ended so.
    pub fn process_limit_note(&self) -> Option<String> {
        let max = self.job.over_limit.load(Ordering::SeqCst);
        (max > 0).then(|| {
            format!(
                "{} more than {max} processes at once (max_processes); all of them were killed",
                super::PROCESS_LIMIT_MARK
            )
        })
    }
}

/// The processes of `members` to end after a task of the long-lived `leader`: every one but the
/// leader whose chain of parents, through members, does not reach the leader. (Windows keeps a
/// dead parent's id in its children's entries; the id may since name another process, which at
/// worst keeps an orphan alive, never ends a descendant.)
fn orphans(leader: u32, members: &[u32], parents: &HashMap<u32, u32>) -> Vec<u32> {
    let inside: HashSet<u32> = members.iter().copied().collect();
    members
        .iter()
        .copied()
        .filter(|&pid| pid != leader)
        .filter(|&pid| {
            let mut at = pid;
            for _ in 0..=members.len() {
                match parents.get(&at) {
                    Some(&parent) if parent == leader => return false,
                    Some(&parent) if inside.contains(&parent) && parent != at => at = parent,
                    _ => return true,
                }
            }
            true
        })
        .collect()
}

/// Each of `pids`' parent, from a Toolhelp snapshot.
fn parents_of(pids: &[u32]) -> HashMap<u32, u32> {
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        PROCESSENTRY32W, Process32FirstW, Process32NextW, TH32CS_SNAPPROCESS,
    };
    let wanted: HashSet<u32> = pids.iter().copied().collect();
    let mut parents = HashMap::new();
    // SAFETY: a snapshot of the system's processes, closed below.
    let snapshot = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if snapshot == INVALID_HANDLE_VALUE {
        return parents;
    }
    // SAFETY: dwSize set as the API asks; the entry is plain data.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    // SAFETY: a valid snapshot and entry.
    let mut more = unsafe { Process32FirstW(snapshot, &mut entry) } != 0;
    while more {
        if wanted.contains(&entry.th32ProcessID) {
            parents.insert(entry.th32ProcessID, entry.th32ParentProcessID);
        }
        // SAFETY: as above.
        more = unsafe { Process32NextW(snapshot, &mut entry) } != 0;
    }
    // SAFETY: the snapshot is ours.
    unsafe { CloseHandle(snapshot) };
    parents
}

/// How often a job with `max_processes` is counted.
const LIMIT_POLL: Duration = Duration::from_millis(25);

/// Counts the job's processes every [`LIMIT_POLL`] while it lives; past `max`, ends it and notes
/// why (the system's active-process limit stops a fork bomb on real Windows; Wine has none).
fn watch_limit(job: &Arc<Job>, max: u32) {
    let job = Arc::downgrade(job);
    let watch = move || {
        loop {
            std::thread::sleep(LIMIT_POLL);
            let Some(job) = job.upgrade() else { return };
            if job.count() > max as usize {
                job.over_limit.store(max, Ordering::SeqCst);
                job.terminate();
                return;
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("process-limit".into())
        .spawn(watch)
    {
        tracing::warn!(
            "cannot watch an agent's process count ({e}): max_processes is not enforced for it"
        );
    }
}

pub fn spawn(
    cmd: std::process::Command,
    _kept: bool,
    _cgroup: Option<std::sync::Arc<super::cgroup::AttemptCgroup>>,
) -> std::io::Result<Spawned> {
    spawn_limited(cmd, None)
}

/// [`spawn`], with the job ended when it has more than `max_processes` processes at once.
pub fn spawn_limited(
    mut cmd: std::process::Command,
    max_processes: Option<u32>,
) -> std::io::Result<Spawned> {
    // Suspended until it is in its job, so not even its first instruction runs outside. A new
    // process group takes a CTRL_BREAK of its own; without a console to share, no window opens.
    let console = unsafe { !GetConsoleWindow().is_null() };
    let window = if console { 0 } else { CREATE_NO_WINDOW };
    cmd.creation_flags(CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP | window);
    let job = Job::new(max_processes)?;
    let mut child = cmd.spawn()?;
    let pid = child.id();
    // SAFETY: both handles are open: the job's ours, the process's held by `child`.
    let assigned = unsafe { AssignProcessToJobObject(job.raw(), child.as_raw_handle() as HANDLE) };
    if assigned == 0 || !resume(pid) {
        let err = std::io::Error::last_os_error();
        let _ = child.kill();
        let _ = child.wait();
        return Err(err);
    }
    let tree = Tree {
        job: Arc::new(job),
        leader: pid,
    };
    if let Some(max) = max_processes {
        watch_limit(&tree.job, max);
    }
    let stdin = child.stdin.take().map(tokio::process::ChildStdin::from_std);
    let stdout = child
        .stdout
        .take()
        .map(tokio::process::ChildStdout::from_std);
    let stderr = child
        .stderr
        .take()
        .map(tokio::process::ChildStderr::from_std);
    // The leader's exit, awaited on a blocking thread (the process handle moves there).
    let waiter = tokio::task::spawn_blocking(move || child.wait());
    let child = Child {
        pid,
        tree,
        waiter: Some(waiter),
        status: None,
    };
    // From here on, dropping `child` ends the job.
    Ok(Spawned {
        stdin: stdin.transpose()?,
        stdout: stdout.transpose()?,
        stderr: stderr.transpose()?,
        child,
    })
}

/// Resumes every thread of a process started suspended (there is one, its first).
fn resume(pid: u32) -> bool {
    // SAFETY: a snapshot of the system's threads, closed below.
    let snapshot = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0) };
    if snapshot == INVALID_HANDLE_VALUE {
        return false;
    }
    let mut resumed = false;
    // SAFETY: dwSize set as the API asks; the entry is plain data.
    let mut entry: THREADENTRY32 = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<THREADENTRY32>() as u32;
    // SAFETY: a valid snapshot and entry.
    let mut more = unsafe { Thread32First(snapshot, &mut entry) } != 0;
    while more {
        if entry.th32OwnerProcessID == pid {
            // SAFETY: a thread id from the snapshot; the handle is closed at once.
            unsafe {
                let thread = OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID);
                if !thread.is_null() {
                    resumed |= ResumeThread(thread) != u32::MAX;
                    CloseHandle(thread);
                }
            }
        }
        // SAFETY: as above.
        more = unsafe { Thread32Next(snapshot, &mut entry) } != 0;
    }
    // SAFETY: the snapshot is ours.
    unsafe { CloseHandle(snapshot) };
    resumed
}

/// A running agent in its job. Dropping it ends the job.
pub struct Child {
    pid: u32,
    tree: Tree,
    waiter: Option<tokio::task::JoinHandle<std::io::Result<std::process::ExitStatus>>>,
    status: Option<Exit>,
}

/// How long, after the leader ended and the job was terminated, its last processes may take to
/// be gone before the attempt is called over anyway.
const JOB_DRAIN: Duration = Duration::from_secs(5);

impl Child {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The agent's pid (there is no keeper on Windows: the process itself).
    pub fn agent_pid(&self) -> u32 {
        self.pid
    }

    pub fn tree(&self) -> Tree {
        self.tree.clone()
    }

    /// No kernel peak on Windows (job accounting gives it on real Windows, zeros under Wine):
    /// the sampled figures are the figure.
    pub fn own_peak(&self) -> Option<u64> {
        None
    }

    /// Whether the leader has exited.
    pub fn has_exited(&mut self) -> bool {
        self.status.is_some() || self.waiter.as_ref().is_some_and(|w| w.is_finished())
    }

    pub fn ended(&self) -> Option<Exit> {
        self.status
    }

    /// Waits for the leader to end, then ends what it left in the job and waits until the job
    /// is empty. Cancel-safe.
    pub async fn wait(&mut self) -> Exit {
        if let Some(status) = self.status {
            return status;
        }
        let exit = match self.waiter.as_mut() {
            Some(waiter) => match waiter.await {
                Ok(Ok(status)) => status.code().map_or(Exit::Unknown, |c| Exit::Code(c)),
                _ => Exit::Unknown,
            },
            None => Exit::Unknown,
        };
        self.waiter = None;
        self.tree.kill();
        let started = Instant::now();
        while !self.tree.job.pids().is_empty() && started.elapsed() < JOB_DRAIN {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.status = Some(exit);
        exit
    }

    pub async fn kill(&mut self) -> Exit {
        self.tree.kill();
        self.wait().await
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if self.status.is_none() {
            self.tree.kill();
        }
    }
}

fn open(pid: u32, access: u32) -> Option<OwnedHandle> {
    // SAFETY: opening by id; a null handle is refused below.
    let handle = unsafe { OpenProcess(access, 0, pid) };
    // SAFETY: a fresh handle this function owns.
    (!handle.is_null()).then(|| unsafe { OwnedHandle::from_raw_handle(handle as RawHandle) })
}

pub fn rss(pid: u32) -> Option<u64> {
    let process = open(pid, PROCESS_QUERY_LIMITED_INFORMATION | PROCESS_VM_READ)?;
    // SAFETY: plain data with its size set, filled in by the call.
    let mut counters: PROCESS_MEMORY_COUNTERS = unsafe { std::mem::zeroed() };
    counters.cb = std::mem::size_of::<PROCESS_MEMORY_COUNTERS>() as u32;
    // SAFETY: a process handle with query rights and the struct above.
    let ok = unsafe {
        K32GetProcessMemoryInfo(
            process.as_raw_handle() as HANDLE,
            &mut counters,
            counters.cb,
        )
    };
    (ok != 0 && counters.WorkingSetSize > 0).then_some(counters.WorkingSetSize as u64)
}

pub fn alive(pid: u32) -> bool {
    let Some(process) = open(pid, PROCESS_QUERY_LIMITED_INFORMATION) else {
        return false;
    };
    let mut code = 0u32;
    // SAFETY: a process handle with query rights.
    let ok = unsafe { GetExitCodeProcess(process.as_raw_handle() as HANDLE, &mut code) };
    ok != 0 && code == 259 // STILL_ACTIVE
}

/// When process `pid` started (Wine gives the caller's own times: verified on real Windows only).
pub fn started_at(pid: i32) -> Option<std::time::SystemTime> {
    let process = open(pid as u32, PROCESS_QUERY_LIMITED_INFORMATION)?;
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    // SAFETY: a process handle with query rights and four out-structs.
    let ok = unsafe {
        GetProcessTimes(
            process.as_raw_handle() as HANDLE,
            &mut created,
            &mut exited,
            &mut kernel,
            &mut user,
        )
    };
    if ok == 0 {
        return None;
    }
    let ticks = ((created.dwHighDateTime as u64) << 32) | created.dwLowDateTime as u64;
    // FILETIME counts 100 ns from 1601; the Unix epoch is 11,644,473,600 s later.
    let unix = (ticks / 10).checked_sub(11_644_473_600_000_000)?;
    Some(std::time::UNIX_EPOCH + Duration::from_micros(unix))
}

pub fn children(pid: u32) -> Vec<u32> {
    use windows_sys::Win32::System::Diagnostics::ToolHelp::{
        PROCESSENTRY32W, Process32FirstW, Process32NextW, TH32CS_SNAPPROCESS,
    };
    // SAFETY: a snapshot of the system's processes, closed below.
    let snapshot = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0) };
    if snapshot == INVALID_HANDLE_VALUE {
        return Vec::new();
    }
    let mut found = Vec::new();
    // SAFETY: dwSize set as the API asks; the entry is plain data.
    let mut entry: PROCESSENTRY32W = unsafe { std::mem::zeroed() };
    entry.dwSize = std::mem::size_of::<PROCESSENTRY32W>() as u32;
    // SAFETY: a valid snapshot and entry.
    let mut more = unsafe { Process32FirstW(snapshot, &mut entry) } != 0;
    while more {
        if entry.th32ParentProcessID == pid && entry.th32ProcessID != pid {
            found.push(entry.th32ProcessID);
        }
        // SAFETY: as above.
        more = unsafe { Process32NextW(snapshot, &mut entry) } != 0;
    }
    // SAFETY: the snapshot is ours.
    unsafe { CloseHandle(snapshot) };
    found
}

pub fn signal_name(_n: i32) -> Option<&'static str> {
    None
}

/// On Unix, the book of live process groups a crashed daemon left. On Windows the job's
/// kill-on-close does that job: when the daemon dies the system closes its job handles and every
/// agent tree ends, so there is nothing to record or reap.
#[derive(Debug)]
pub struct Book {
    owner: String,
}

#[derive(Debug)]
pub struct Recorded;

impl Book {
    pub fn new(_state_dir: &Path, owner: &str) -> Book {
        Book {
            owner: owner.to_string(),
        }
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn record(&self, _pid: u32, _worker: &str, _task: Option<i64>) -> Option<Recorded> {
        Some(Recorded)
    }

    pub fn reap(&self) -> Vec<Reaped> {
        Vec::new()
    }
}

pub fn live_groups(_state_dir: &Path) -> Vec<LiveGroup> {
    Vec::new()
}

/// The Unix guardian's place: on Windows the jobs' kill-on-close needs no helper process.
pub struct Guardian;

impl Guardian {
    pub fn start(_owner: &str) -> std::io::Result<Guardian> {
        Ok(Guardian)
    }

    pub fn pid(&self) -> Option<u32> {
        None
    }

    /// Never: there is no process to end.
    pub async fn ended(&mut self) -> std::io::Result<std::process::ExitStatus> {
        std::future::pending().await
    }

    pub async fn stop(self, _within: Duration) {}
}

/// `agentq guard` has nothing to do on Windows.
pub fn guard(_owner: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tasks_sweep_ends_what_no_longer_descends_from_the_agent() {
        // 10 is the agent; 11 its MCP server, 12 a shell of it with a child 13; 20 was started
        // by a shell that exited (its parent 19 is gone); 30's parent id now names 40, which is
        // in the job but descends from no one (an orphan itself).
        let members = [10, 11, 12, 13, 20, 30, 40];
        let parents: HashMap<u32, u32> = [
            (10, 1),
            (11, 10),
            (12, 10),
            (13, 12),
            (20, 19),
            (30, 40),
            (40, 39),
        ]
        .into_iter()
        .collect();
        assert_eq!(orphans(10, &members, &parents), vec![20, 30, 40]);
        // A loop of stale ids (a parent id reused by its own descendant) ends too.
        let looped: HashMap<u32, u32> = [(10, 1), (50, 51), (51, 50)].into_iter().collect();
        assert_eq!(orphans(10, &[10, 50, 51], &looped), vec![50, 51]);
    }
}
