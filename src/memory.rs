//! How much memory a process group holds: the resident set of every process in it, summed.
//!
//! Linux reads `/proc/<pid>/stat` (for the group) and `/proc/<pid>/statm` (for the resident pages)
//! of every process; elsewhere the answer is "unknown". A process that exits while being read is
//! skipped, so the sum is a sample, not a transaction.

/// Resident bytes of all processes in process group `pgid`; `None` where this cannot be read.
#[cfg(target_os = "linux")]
pub fn group_rss(pgid: i32) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u64::try_from(page).ok().filter(|p| *p > 0)?;
    let mut total = 0u64;
    let mut members = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command (which may hold spaces, so split after its closing paren):
        // state, ppid, pgrp, ...
        let Some(after) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let mut fields = after.split_whitespace();
        let state = fields.next();
        let pgrp: Option<i32> = fields.nth(1).and_then(|f| f.parse().ok());
        // A zombie holds no memory; it is only waiting to be reaped.
        if pgrp != Some(pgid) || state == Some("Z") {
            continue;
        }
        let Ok(statm) = std::fs::read_to_string(format!("/proc/{pid}/statm")) else {
            continue;
        };
        if let Some(resident) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.parse::<u64>().ok())
        {
            total += resident * page;
            members += 1;
        }
    }
    (members > 0).then_some(total)
}

#[cfg(not(target_os = "linux"))]
pub fn group_rss(_pgid: i32) -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_group_with_several_processes_is_summed() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 5 & sleep 5 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = child.id() as i32;
        // Wait (bounded) for both sleeps to be in the group.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut rss = group_rss(pgid);
        while rss.unwrap_or(0) < 3 * 4096 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            rss = group_rss(pgid);
        }
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
        assert!(rss.unwrap() > 3 * 4096, "{rss:?}");
        // The killed sleeps are reaped by init; give that a bounded moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while group_rss(pgid).is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(group_rss(pgid), None, "nobody left in the group");
    }
}
