//! The processes agentq starts: what the kernel says about them, how they die with the daemon, and
//! the book of process groups a daemon has running, so that the next daemon can kill what a
//! crashed one left behind.
//!
//! Every agent is the leader of its own process group, and carries the daemon's mark in its
//! environment ([`OWNER_ENV`]). When the daemon dies, even by `kill -9`, its [`Guardian`] — a small
//! process that does nothing else — sees it at once and kills every marked process. If the guardian
//! died too, the daemon keeps a *book* for the next one ([`Book`]): a journal in `.agentq/procs/`
//! with a line per live group, naming the group, its leader's start time and the boot it belongs
//! to. The next daemon, holding the folder's lock (so the writer is
//! certainly gone) reads the book at start-up and kills every group still alive, but only one
//! that is provably the same: its leader alive with the recorded start time, or, with the leader
//! gone, members that started no earlier than it did *and* carry the old daemon's mark in their
//! environment ([`OWNER_ENV`], inherited from the agent). A pid the kernel has since given to some
//! other process is never killed: a new leader has another start time, and a stranger's group
//! that took the old number after the whole old group died does not carry the mark.
//!
//! The book is written without fsync on purpose: they must survive the daemon's death, which
//! the page cache does; a machine crash kills the processes too, and the boot id tells.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing::warn;

use super::{LiveGroup, OWNER_ENV, Reaped, Record};

pub use super::kernel::{ProcInfo, stat};
use super::kernel::{all_processes, boot_id, boot_time, environ_has, ticks};

/// The live (not zombie) members of process group `pgid`. Empty where /proc cannot be read.
pub fn group_members(pgid: i32) -> Vec<ProcInfo> {
    all_processes()
        .into_iter()
        .filter(|p| p.pgrp == pgid && p.state != 'Z')
        .collect()
}

/// The guardian: a small process each daemon starts beside it (`agentq guard`), holding the
/// reading end of a pipe whose writing end only the daemon has. When the daemon dies, however it
/// dies, the kernel closes that end, the guardian's read returns, and it kills every process that
/// carries the daemon's mark ([`OWNER_ENV`]): the agents and whatever they started, wherever they
/// went (a `setsid` child included), and the process group each marked leader leads (so a child
/// that cleared its environment goes too).
///
/// This replaces a parent-death signal on each agent, which needs code to run between `fork` and
/// `exec`, and so a real `fork` of the whole daemon: copying its page tables and then faulting on
/// every page it writes while children start took more of the daemon's time than everything else
/// a trivial task costs. Without it, agents start with `posix_spawn` (`vfork` semantics).
pub struct Guardian {
    child: tokio::process::Child,
    /// The writing end of its pipe, held apart: tokio's `wait` closes a child's stdin first.
    pipe: Option<tokio::process::ChildStdin>,
}

impl Guardian {
    /// Starts the guardian of the daemon whose agents are marked `owner`. It is in its own process
    /// group, so a Ctrl-C meant for the daemon (which stops gracefully) does not reach it.
    pub fn start(owner: &str) -> std::io::Result<Guardian> {
        // This very binary, even if an upgrade has replaced the file since the daemon started.
        let exe = if cfg!(target_os = "linux") {
            PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe()?
        };
        let mut child = tokio::process::Command::new(exe)
            .arg0("agentq")
            .args(["guard", "--owner", owner])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(Guardian { child, pipe })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits until the guardian ends (it should not, while the daemon runs): no polling.
    pub async fn ended(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.child.wait().await
    }

    /// Closes the pipe (the guardian then sweeps, finding nothing after a clean stop) and waits
    /// up to `within` for it to end.
    pub async fn stop(mut self, within: std::time::Duration) {
        drop(self.pipe.take());
        if tokio::time::timeout(within, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The guardian's whole life (`agentq guard --owner X`): wait until stdin closes, then kill what
/// carries the mark. Signals from the terminal do not reach it (its own group); SIGTERM ends it.
pub fn guard(owner: &str) {
    use std::io::Read;
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    // Keepers first, asked to stop: they end what got away from the agents' mark.
    #[cfg(target_os = "linux")]
    for keeper in all_processes()
        .into_iter()
        .filter(|p| p.state != 'Z' && environ_has(p.pid, super::KEEPER_ENV, owner) == Some(true))
    {
        // SAFETY: kill takes plain integers.
        unsafe { libc::kill(keeper.pid, libc::SIGTERM) };
    }
    let killed = kill_marked(OWNER_ENV, owner);
    if !killed.is_empty() {
        eprintln!(
            "agentq guard: the daemon {owner} is gone; killed {} process(es) it left: {killed:?}",
            killed.len()
        );
    }
}

/// Kills every process whose environment holds `key=value`, and each process group such a process
/// leads; scans again until a scan finds none (a process forking while it is killed), at most a
/// few times. Returns the pids signalled.
pub fn kill_marked(key: &str, value: &str) -> Vec<i32> {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    for _ in 0..10 {
        let marked: Vec<ProcInfo> = all_processes()
            .into_iter()
            .filter(|p| p.pid != me && p.state != 'Z')
            .filter(|p| environ_has(p.pid, key, value) == Some(true))
            .collect();
        if marked.is_empty() {
            break;
        }
        for p in marked {
            if p.pgrp == p.pid {
                let _ = killpg(Pid::from_raw(p.pgrp), Signal::SIGKILL);
            }
            if kill(Pid::from_raw(p.pid), Signal::SIGKILL).is_ok() && !killed.contains(&p.pid) {
                killed.push(p.pid);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    killed
}

/// The book of live process groups, in `.agentq/procs/`: one journal per daemon run,
/// `<owner>.book`, a line `+{record}` when a group starts and `-<pgid> <start_ticks>` when it is
/// dead. Appending a line costs no new file per agent (creating and deleting one per task was a
/// good part of what a trivial task cost the daemon). When the journal holds many more lines than
/// live groups, it is rewritten with just those. A line cut short by a crash is skipped on reading.
#[derive(Debug)]
pub struct Book {
    dir: PathBuf,
    owner: String,
    boot_id: Option<String>,
    journal: Arc<Mutex<Journal>>,
}

#[derive(Debug)]
struct Journal {
    path: PathBuf,
    file: Option<std::fs::File>,
    live: HashMap<(i32, u64), Record>,
    lines: usize,
    /// A failure to write was reported (once, not at every agent).
    warned: bool,
}

/// Rewrite the journal when it has this many lines and four times as many as live groups.
const COMPACT_AT: usize = 1024;

impl Journal {
    fn append(&mut self, line: &str) -> std::io::Result<()> {
        use std::io::Write;
        if self.file.is_none() {
            let open = || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
            };
            let file = match open() {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if let Some(dir) = self.path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    open()?
                }
                other => other?,
            };
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("opened above");
        // One write per line: the journal is only appended to, whole lines at a time.
        file.write_all(line.as_bytes())?;
        self.lines += 1;
        Ok(())
    }

    fn compact(&mut self) -> std::io::Result<()> {
        let mut text = String::new();
        for record in self.live.values() {
            text.push_str(&record_line(record));
        }
        crate::files::write_atomic(&self.path, text.as_bytes())?;
        self.file = None;
        self.lines = self.live.len();
        Ok(())
    }
}

fn record_line(record: &Record) -> String {
    let json = serde_json::to_string(record).expect("a record serialises");
    format!("+{json}\n")
}

/// Replays a journal (or reads an older daemon's one-record `.json` page): the groups recorded and
/// not struck, in the order they were recorded.
fn read_journal(path: &Path) -> Vec<Record> {
    let Ok(bytes) = std::fs::read(path) else {
        return Vec::new();
    };
    if path.extension().is_some_and(|e| e == "json") {
        return serde_json::from_slice(&bytes).into_iter().collect();
    }
    let mut live: Vec<Record> = Vec::new();
    for line in String::from_utf8_lossy(&bytes).lines() {
        if let Some(json) = line.strip_prefix('+') {
            if let Ok(record) = serde_json::from_str::<Record>(json) {
                live.push(record);
            }
        } else if let Some(key) = line.strip_prefix('-') {
            let mut parts = key.split_whitespace().map(str::parse::<u64>);
            if let (Some(Ok(pgid)), Some(Ok(start))) = (parts.next(), parts.next()) {
                live.retain(|r| !(r.pgid as u64 == pgid && r.start_ticks == start));
            }
        }
    }
    live
}

/// The book's pages: every journal and older page in `dir`, with what each holds.
fn pages(dir: &Path) -> Vec<(PathBuf, Vec<Record>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "book" || e == "json"))
        .map(|p| {
            let records = read_journal(&p);
            (p, records)
        })
        .collect()
}

/// A recorded group; dropping it strikes the record (drop it once the group is dead).
#[derive(Debug)]
pub struct Recorded {
    journal: Arc<Mutex<Journal>>,
    key: (i32, u64),
}

impl Drop for Recorded {
    fn drop(&mut self) {
        let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        if j.live.remove(&self.key).is_none() {
            return;
        }
        let struck = j.append(&format!("-{} {}\n", self.key.0, self.key.1));
        let result = struck.and_then(|()| {
            if j.lines >= COMPACT_AT && j.lines >= 4 * j.live.len() {
                j.compact()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result
            && !std::mem::replace(&mut j.warned, true)
        {
            warn!(
                "cannot write the book of agent processes {}: {e}",
                j.path.display()
            );
        }
    }
}

impl Book {
    /// The mark this daemon's agents carry (see [`OWNER_ENV`]).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub fn new(state_dir: &Path, owner: &str) -> Book {
        let dir = state_dir.join("procs");
        let file: String = owner
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let journal = Journal {
            path: dir.join(format!("{file}.book")),
            file: None,
            live: HashMap::new(),
            lines: 0,
            warned: false,
        };
        Book {
            dir,
            owner: owner.to_string(),
            boot_id: boot_id(),
            journal: Arc::new(Mutex::new(journal)),
        }
    }

    /// Records the group led by `pid`, which was just started. `None` (with a warning) when the
    /// record cannot be written: the agent still runs, it only would not be reaped after a crash.
    pub fn record(&self, pid: u32, worker: &str, task: Option<i64>) -> Option<Recorded> {
        let pid = pid as i32;
        let start_ticks = stat(pid).map(|p| p.start_ticks)?;
        let record = Record {
            pgid: pid,
            start_ticks,
            boot_id: self.boot_id.clone(),
            owner: self.owner.clone(),
            worker: worker.to_string(),
            task,
        };
        let key = (pid, start_ticks);
        let line = record_line(&record);
        let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        match j.append(&line) {
            Ok(()) => {
                j.live.insert(key, record);
                Some(Recorded {
                    journal: self.journal.clone(),
                    key,
                })
            }
            Err(e) => {
                warn!(
                    worker,
                    pid,
                    "cannot record the agent's process group in {}: {e}; it would not be reaped after a crash",
                    j.path.display()
                );
                None
            }
        }
    }

    /// Kills every group an earlier daemon recorded and left alive, and strikes the records. Only
    /// for the daemon that holds the folder's lock: the records' writers are gone.
    pub fn reap(&self) -> Vec<Reaped> {
        let ours = self
            .journal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .path
            .clone();
        let mut reaped = Vec::new();
        for (path, records) in pages(&self.dir) {
            if path == ours {
                continue;
            }
            for record in records {
                if record.owner == self.owner {
                    continue;
                }
                let killed = if record.boot_id == self.boot_id {
                    kill_recorded(&record)
                } else {
                    Vec::new()
                };
                reaped.push(Reaped { record, killed });
            }
            let _ = std::fs::remove_file(&path);
        }
        reaped
    }
}

/// The live groups recorded in `state_dir`'s book, whoever recorded them. `/proc` is read once,
/// however many groups there are (`agentq top` calls this every second).
pub fn live_groups(state_dir: &Path) -> Vec<LiveGroup> {
    let records: Vec<Record> = pages(&state_dir.join("procs"))
        .into_iter()
        .flat_map(|(_, records)| records)
        .collect();
    if records.is_empty() {
        return Vec::new();
    }
    let processes = all_processes();
    let boot = boot_time();
    records
        .into_iter()
        .filter(|record| {
            processes.iter().any(|p| {
                p.pid == record.pgid && p.start_ticks == record.start_ticks && p.state != 'Z'
            })
        })
        .map(|record| {
            let (agent, rss) = match super::kernel::is_keeper(record.pgid) {
                // A keeper's tree is everything below it; the agent, its child in its group.
                true => (
                    super::kernel::keepers_agent(record.pgid, &processes).unwrap_or(record.pgid),
                    super::kernel::descendants(record.pgid, &processes)
                        .iter()
                        .map(|p| p.rss)
                        .sum(),
                ),
                false => (
                    record.pgid,
                    processes
                        .iter()
                        .filter(|p| p.pgrp == record.pgid && p.state != 'Z')
                        .map(|p| p.rss)
                        .sum(),
                ),
            };
            let started_at = boot.map(|b| b + ticks(record.start_ticks));
            LiveGroup {
                record,
                agent,
                rss,
                started_at,
            }
        })
        .collect()
}

/// When process `pid` started, to the second (Linux; `None` elsewhere or when it is gone).
pub fn started_at(pid: i32) -> Option<std::time::SystemTime> {
    Some(boot_time()? + ticks(stat(pid)?.start_ticks))
}

/// Kills what is provably left of a recorded group, and returns the pids it signalled.
fn kill_recorded(record: &Record) -> Vec<i32> {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let members = group_members(record.pgid);
    let leader = members.iter().find(|p| p.pid == record.pgid);
    match leader {
        // The leader lives with the recorded start time: the whole group is ours.
        Some(leader) if leader.start_ticks == record.start_ticks => {
            let _ = killpg(Pid::from_raw(record.pgid), Signal::SIGKILL);
            members.iter().map(|p| p.pid).collect()
        }
        // The pid now names another process: not ours, whatever its group holds.
        Some(_) => Vec::new(),
        // The leader is gone (the guardian killed it); what it left in the group
        // started after it and carries the old daemon's mark. Anything else cannot be known ours.
        None => members
            .iter()
            .filter(|p| p.start_ticks >= record.start_ticks)
            .filter(|p| environ_has(p.pid, OWNER_ENV, &record.owner) == Some(true))
            .filter(|p| kill(Pid::from_raw(p.pid), Signal::SIGKILL).is_ok())
            .map(|p| p.pid)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn stat_lines_with_odd_command_names_are_read() {
        let line = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 98765 1000000 25 18446744073709551615";
        let p = super::super::kernel::parse_stat(4242, line).unwrap();
        assert_eq!((p.state, p.ppid, p.pgrp), ('S', 1, 4242));
        assert_eq!(p.start_ticks, 98765);
        assert_eq!(p.rss, 25 * super::super::kernel::page_size());
    }

    #[test]
    fn this_process_is_seen() {
        let me = stat(std::process::id() as i32).unwrap();
        assert!(me.rss > 0);
        assert!(group_members(me.pgrp).iter().any(|p| p.pid == me.pid));
    }

    fn spawn_group(script: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sh")
            .args(["-c", script])
            .env(OWNER_ENV, "old")
            .process_group(0)
            .spawn()
            .unwrap()
    }

    /// Kills a test's whole group (`sh -c` may have forked its command) and reaps the leader.
    fn kill_group(child: &mut std::process::Child) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
    }

    fn wait_gone(pid: i32) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if stat(pid).is_none_or(|p| p.state == 'Z') {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn a_recorded_group_of_another_daemon_is_reaped_and_ours_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let before = Book::new(dir.path(), "old-daemon");
        let mut theirs = spawn_group("sleep 30 & sleep 30 & wait");
        let page = before.record(theirs.id(), "w", Some(1)).unwrap();
        std::mem::forget(page); // the old daemon died without striking it
        let ours = Book::new(dir.path(), "new-daemon");
        let mut mine = spawn_group("sleep 30");
        let mine_page = ours.record(mine.id(), "w", Some(2)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));

        let reaped = ours.reap();
        assert_eq!(reaped.len(), 1, "{reaped:?}");
        assert_eq!(reaped[0].record.owner, "old-daemon");
        assert!(reaped[0].killed.len() >= 2, "{reaped:?}");
        let _ = theirs.wait();
        assert!(
            group_members(theirs.id() as i32).is_empty() || {
                std::thread::sleep(std::time::Duration::from_millis(500));
                group_members(theirs.id() as i32).is_empty()
            }
        );
        assert!(stat(mine.id() as i32).is_some_and(|p| p.state != 'Z'));
        let live = live_groups(dir.path());
        assert_eq!(live.len(), 1, "our own record stays: {live:?}");
        assert_eq!(live[0].record.owner, "new-daemon");
        kill_group(&mut mine);
        drop(mine_page);
        // Only our journal is left, and it holds no live group.
        let pages = pages(&dir.path().join("procs"));
        assert_eq!(pages.len(), 1, "{pages:?}");
        assert!(pages[0].1.is_empty(), "{pages:?}");
    }

    #[test]
    fn the_journal_is_rewritten_when_mostly_struck_and_a_torn_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let book = Book::new(dir.path(), "host:1:abc");
        let me = std::process::id();
        let kept = book.record(me, "keep", Some(1)).unwrap();
        for i in 0..3000 {
            // The same group recorded and struck, as agents come and go.
            drop(kept_key_twin(&book, me, i));
        }
        let path = book.journal.lock().unwrap().path.clone();
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < COMPACT_AT + 10, "{lines} lines");
        let read = read_journal(&path);
        assert_eq!(read.len(), 1, "{read:?}");
        assert_eq!(read[0].worker, "keep");
        drop(kept);
        assert!(read_journal(&path).is_empty());
        // A crash mid-line leaves a torn last line; the rest still reads.
        let again = book.record(me, "again", Some(2)).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"+{\"pgid\": 12"))
            .unwrap();
        let read = read_journal(&path);
        assert_eq!(read.len(), 1, "{read:?}");
        assert_eq!(read[0].worker, "again");
        std::mem::forget(again);
    }

    /// A record of this process under a key of its own, so that `kept` stays live while these come
    /// and go.
    fn kept_key_twin(book: &Book, pid: u32, i: usize) -> Recorded {
        let mut j = book.journal.lock().unwrap();
        let record = Record {
            pgid: pid as i32,
            start_ticks: 1_000_000 + i as u64,
            boot_id: None,
            owner: book.owner.clone(),
            worker: format!("w{i}"),
            task: None,
        };
        j.append(&record_line(&record)).unwrap();
        let key = (record.pgid, record.start_ticks);
        j.live.insert(key, record);
        Recorded {
            journal: book.journal.clone(),
            key,
        }
    }

    #[test]
    fn live_groups_are_read_from_the_book_with_memory_and_start() {
        let dir = tempfile::tempdir().unwrap();
        let book = Book::new(dir.path(), "me");
        let mut child = spawn_group("sleep 30");
        let pid = child.id();
        let recorded = book.record(pid, "w", Some(7)).unwrap();
        let live = live_groups(dir.path());
        assert_eq!(live.len(), 1);
        let g = &live[0];
        assert_eq!((g.record.pgid, g.record.task), (pid as i32, Some(7)));
        let age = std::time::SystemTime::now()
            .duration_since(g.started_at.unwrap())
            .unwrap_or_default();
        assert!(age < std::time::Duration::from_secs(60), "{age:?}");
        kill_group(&mut child);
        assert!(
            live_groups(dir.path()).is_empty(),
            "a dead group is not live"
        );
        drop(recorded);
    }

    #[test]
    fn a_reused_pid_is_not_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut other = spawn_group("sleep 30");
        let pid = other.id() as i32;
        let start = stat(pid).unwrap().start_ticks;
        // A record of an earlier process that had this pid: it started before.
        let record = Record {
            pgid: pid,
            start_ticks: start - 1,
            boot_id: boot_id(),
            owner: "old".into(),
            worker: "w".into(),
            task: None,
        };
        std::fs::create_dir_all(dir.path().join("procs")).unwrap();
        std::fs::write(
            dir.path().join("procs").join(format!("{pid}-1.json")),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
        let reaped = Book::new(dir.path(), "new").reap();
        assert_eq!(reaped.len(), 1);
        assert!(reaped[0].killed.is_empty());
        assert!(
            stat(pid).is_some_and(|p| p.state != 'Z'),
            "killed a stranger"
        );
        kill_group(&mut other);
        assert!(wait_gone(pid));
    }

    #[test]
    fn with_the_leader_gone_its_leftovers_are_found_by_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("left");
        let mut leader = spawn_group(&format!(
            "sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 30' & sleep 0.2; exit 0",
            pidfile.display()
        ));
        let page = Book::new(dir.path(), "old")
            .record(leader.id(), "w", None)
            .unwrap();
        std::mem::forget(page);
        let _ = leader.wait();
        let left: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(stat(left).is_some());
        let reaped = Book::new(dir.path(), "new").reap();
        assert_eq!(reaped[0].killed, vec![left]);
        assert!(wait_gone(left), "the leftover survived");
    }

    #[test]
    fn with_the_leader_gone_a_member_without_the_mark_is_left_alone() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("left");
        // Another daemon's (or nobody's) mark: not provably ours.
        let mut leader = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "sh -c 'echo $$ > {}; exec sleep 30' & sleep 0.2; exit 0",
                    pidfile.display()
                ),
            ])
            .env(OWNER_ENV, "someone-else")
            .process_group(0)
            .spawn()
            .unwrap();
        let page = Book::new(dir.path(), "old")
            .record(leader.id(), "w", None)
            .unwrap();
        std::mem::forget(page);
        let _ = leader.wait();
        let left: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let reaped = Book::new(dir.path(), "new").reap();
        assert!(reaped[0].killed.is_empty());
        assert!(stat(left).is_some_and(|p| p.state != 'Z'));
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(left),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert!(wait_gone(left));
    }
}
