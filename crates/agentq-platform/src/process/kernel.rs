//! What the kernel tells about processes: `/proc` on Linux; on macOS and the BSDs the `sysinfo`
//! crate (their process tables through sysctl and libproc) and `getpgid`.

/// What the kernel says of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// When it started, in clock ticks since boot: with the pid, it names a process for good.
    pub start_ticks: u64,
    /// Resident set, bytes.
    pub rss: u64,
}

/// The live processes below `root` in `table` (by parent links; `root` left out).
pub fn descendants(root: i32, table: &[ProcInfo]) -> Vec<ProcInfo> {
    let mut children: std::collections::HashMap<i32, Vec<&ProcInfo>> =
        std::collections::HashMap::new();
    for p in table {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut found = Vec::new();
    let mut next = vec![root];
    while let Some(pid) = next.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            if child.pid != root {
                next.push(child.pid);
                if child.state != 'Z' {
                    found.push((*child).clone());
                }
            }
        }
    }
    found
}

/// The agent a keeper (`keeper.rs`) started: its child in its process group (the oldest, should
/// there be more than one).
pub fn keepers_agent(keeper: i32, table: &[ProcInfo]) -> Option<i32> {
    table
        .iter()
        .filter(|p| p.ppid == keeper && p.pgrp == keeper && p.state != 'Z')
        .min_by_key(|p| (p.start_ticks, p.pid))
        .map(|p| p.pid)
}

/// Whether process `pid` is a keeper: `agentq keep ...` (Linux only).
pub fn is_keeper(pid: i32) -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let mut args = cmdline.split(|b| *b == 0);
    args.next() == Some(b"agentq".as_slice()) && args.next() == Some(super::KEEP_COMMAND.as_bytes())
}

#[cfg(target_os = "linux")]
pub use procfs::*;
#[cfg(not(target_os = "linux"))]
pub use tables::*;

#[cfg(target_os = "linux")]
mod procfs {
    use super::ProcInfo;

    /// Reads one process's stat line; `None` when it is gone (or this is not Linux). One read
    /// into a buffer on the stack: a stat line is a few hundred bytes, and this runs for every
    /// process of every scan.
    pub fn stat(pid: i32) -> Option<ProcInfo> {
        use std::io::Read;
        let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
        let mut buf = [0u8; 1024];
        let mut len = 0;
        while len < buf.len() {
            match file.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
        parse_stat(pid, std::str::from_utf8(&buf[..len]).ok()?)
    }

    /// Visits the pids below `root` (itself left out), parents before their children, through
    /// the kernel's list of each thread's children (`/proc/<pid>/task/<tid>/children`): reads in
    /// proportion to the tree, not to every process on the machine. Zombies are visited too.
    /// Stops when `visit` returns false.
    pub fn walk_below(root: i32, mut visit: impl FnMut(i32) -> bool) {
        let mut next = vec![root];
        while let Some(pid) = next.pop() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
                    continue;
                };
                for child in text
                    .split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok())
                {
                    if !visit(child) {
                        return;
                    }
                    next.push(child);
                }
            }
        }
    }

    /// The live processes below `root` (itself left out): see [`walk_below`].
    pub fn tree_below(root: i32) -> Vec<ProcInfo> {
        let mut found = Vec::new();
        walk_below(root, |pid| {
            found.extend(stat(pid).filter(|p| p.state != 'Z'));
            true
        });
        found
    }

    pub fn parse_stat(pid: i32, text: &str) -> Option<ProcInfo> {
        // The command (field 2) may hold spaces and parentheses: split after its last ')'.
        let (_, rest) = text.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields from 3 on: state(3) ppid(4) pgrp(5) ... starttime(22) vsize(23) rss(24, pages).
        let field = |n: usize| fields.get(n - 3).copied();
        Some(ProcInfo {
            pid,
            state: field(3)?.chars().next()?,
            ppid: field(4)?.parse().ok()?,
            pgrp: field(5)?.parse().ok()?,
            start_ticks: field(22)?.parse().ok()?,
            rss: field(24)?.parse::<u64>().ok()? * page_size(),
        })
    }

    pub fn page_size() -> u64 {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(page).ok().filter(|p| *p > 0).unwrap_or(4096)
    }

    /// Whether process `pid`'s environment holds `KEY=value`; `None` when it cannot be read.
    pub fn environ_has(pid: i32, key: &str, value: &str) -> Option<bool> {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let wanted = format!("{key}={value}");
        Some(environ.split(|b| *b == 0).any(|e| e == wanted.as_bytes()))
    }

    /// This boot's id: processes of another boot are long gone.
    pub fn boot_id() -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// Every process `/proc` shows (empty where it cannot be read).
    pub fn all_processes() -> Vec<ProcInfo> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(stat)
            .collect()
    }

    /// When the machine booted (`btime` in /proc/stat).
    pub fn boot_time() -> Option<std::time::SystemTime> {
        let text = std::fs::read_to_string("/proc/stat").ok()?;
        let secs: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
    }

    /// Clock ticks (as in /proc/<pid>/stat) as a duration.
    pub fn ticks(n: u64) -> std::time::Duration {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let hz = u64::try_from(hz).ok().filter(|h| *h > 0).unwrap_or(100);
        std::time::Duration::from_millis(n * 1000 / hz)
    }
}

#[cfg(not(target_os = "linux"))]
mod tables {
    use super::ProcInfo;
    use sysinfo::{Pid, ProcessRefreshKind, ProcessStatus, ProcessesToUpdate, System, UpdateKind};

    /// Start times count seconds since boot here (`ticks` of one second).
    const HZ: u64 = 1;

    fn info(pid: i32, p: &sysinfo::Process) -> ProcInfo {
        // SAFETY: getpgid reads a process's group id; -1 when it is gone.
        let pgrp = unsafe { libc::getpgid(pid) };
        ProcInfo {
            pid,
            state: match p.status() {
                ProcessStatus::Zombie => 'Z',
                ProcessStatus::Run => 'R',
                _ => 'S',
            },
            ppid: p.parent().map_or(0, |pp| pp.as_u32() as i32),
            pgrp,
            start_ticks: p.start_time().saturating_sub(System::boot_time()) * HZ,
            rss: p.memory(),
        }
    }

    fn table(environ: bool) -> System {
        let mut system = System::new();
        let mut what = ProcessRefreshKind::nothing().with_memory();
        if environ {
            what = what.with_environ(UpdateKind::Always);
        }
        system.refresh_processes_specifics(ProcessesToUpdate::All, true, what);
        system
    }

    pub fn stat(pid: i32) -> Option<ProcInfo> {
        let mut system = System::new();
        let id = Pid::from_u32(pid as u32);
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[id]),
            true,
            ProcessRefreshKind::nothing().with_memory(),
        );
        system.process(id).map(|p| info(pid, p))
    }

    pub fn all_processes() -> Vec<ProcInfo> {
        table(false)
            .processes()
            .iter()
            .map(|(pid, p)| info(pid.as_u32() as i32, p))
            .collect()
    }

    pub fn environ_has(pid: i32, key: &str, value: &str) -> Option<bool> {
        let system = table(true);
        let p = system.process(Pid::from_u32(pid as u32))?;
        let wanted = format!("{key}={value}");
        Some(
            p.environ()
                .iter()
                .any(|e| e.to_str() == Some(wanted.as_str())),
        )
    }

    /// The live processes below `root` (itself left out).
    pub fn tree_below(root: i32) -> Vec<ProcInfo> {
        super::descendants(root, &all_processes())
    }

    /// Visits the pids below `root` (itself left out) until `visit` returns false.
    pub fn walk_below(root: i32, mut visit: impl FnMut(i32) -> bool) {
        for p in tree_below(root) {
            if !visit(p.pid) {
                return;
            }
        }
    }

    /// No boot id is kept here: the boot time stands for it.
    pub fn boot_id() -> Option<String> {
        Some(System::boot_time().to_string())
    }

    pub fn boot_time() -> Option<std::time::SystemTime> {
        Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(System::boot_time()))
    }

    pub fn ticks(n: u64) -> std::time::Duration {
        std::time::Duration::from_secs(n / HZ)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_follow_parent_links_and_skip_zombies() {
        let p = |pid, ppid, state| ProcInfo {
            pid,
            state,
            ppid,
            pgrp: pid,
            start_ticks: 0,
            rss: 0,
        };
        let table = [
            p(10, 1, 'S'),
            p(11, 10, 'S'),
            p(12, 11, 'Z'),
            p(13, 12, 'S'),
            p(14, 1, 'S'),
        ];
        let mut found: Vec<i32> = descendants(10, &table).iter().map(|p| p.pid).collect();
        found.sort();
        assert_eq!(found, [11, 13]);
    }
}
