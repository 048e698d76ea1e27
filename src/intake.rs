//! Prompt-file intake: `.queue/<worker>/*.prompt` files become tasks, each exactly once.
//!
//! How a file is taken:
//! 1. It must have settled: unchanged for `intake.settle`, so a file still being written is left
//!    for later (writers that want no delay write another name and rename it to `*.prompt`).
//! 2. It is opened without following links, checked to be the regular file that was listed, read,
//!    and checked again after reading: if it changed meanwhile it is left for later.
//! 3. It is submitted with a dedup key made of the worker, its name, its inode, its modification
//!    time and a SHA-256 of its content. Then it is removed.
//!
//! A crash between 3's submit and its removal leaves the file in place; the next scan computes the
//! same key, the store answers "already have it", and the file is only removed. A new file dropped
//! later under the same name has another inode or time, so it is a new task even with equal text.
//!
//! A file that cannot be a task (empty, not UTF-8, too large, unreadable, a link, a folder, a pipe)
//! is moved to `.queue/<worker>/rejected/` with `<name>.reason` beside it and an event. Nothing is
//! deleted that was not taken.
//!
//! Files are taken oldest first (modification time, then name). Scans are triggered by file-system
//! events, with a slow periodic rescan in case events were dropped; on a network file system (or
//! with `intake.poll = true`) folders are scanned every `intake.poll_interval` instead.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::store::{NewEvent, NewTask, Store, Submitted, now_ms};

pub const REJECTED_DIR: &str = "rejected";
const SUFFIX: &str = ".prompt";

/// What a look at one file found.
#[derive(Debug, PartialEq)]
pub enum Inspection {
    Ready {
        prompt: String,
        dedup_key: String,
    },
    /// Not settled yet: look again after this long.
    Later(Duration),
    Reject(String),
    /// Gone between listing and reading: someone else took it.
    Vanished,
}

/// Examines one listed `*.prompt` entry. Blocking: call on a blocking thread.
pub fn inspect(worker: &str, path: &Path, settle: Duration, max_size: u64) -> Inspection {
    let vanished_or = |e: std::io::Error, what: &str| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Inspection::Vanished
        } else {
            Inspection::Reject(format!("{what}: {e}"))
        }
    };
    let listed = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) => return vanished_or(e, "cannot be examined"),
    };
    let kind = listed.file_type();
    if kind.is_symlink() {
        return Inspection::Reject("is a symbolic link; prompt files must be regular files".into());
    }
    if kind.is_dir() {
        return Inspection::Reject("is a directory, not a prompt file".into());
    }
    if !kind.is_file() {
        return Inspection::Reject("is not a regular file (a pipe, socket or device)".into());
    }
    let age = listed
        .modified()
        .ok()
        .and_then(|m| SystemTime::now().duration_since(m).ok())
        .unwrap_or(Duration::ZERO);
    if age < settle {
        return Inspection::Later(settle - age);
    }
    if listed.len() > max_size {
        return Inspection::Reject(format!(
            "is {} bytes, over max_prompt_size ({max_size} bytes)",
            listed.len()
        ));
    }
    // O_NOFOLLOW: a link swapped in after the check above is refused, not followed.
    // O_NONBLOCK: a pipe swapped in cannot block the read.
    let mut file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) => return vanished_or(e, "is unreadable"),
    };
    let opened = match file.metadata() {
        Ok(m) => m,
        Err(e) => return Inspection::Reject(format!("is unreadable: {e}")),
    };
    if !opened.is_file() || (opened.dev(), opened.ino()) != (listed.dev(), listed.ino()) {
        return Inspection::Later(settle.max(Duration::from_millis(50)));
    }
    let mut bytes = Vec::with_capacity(opened.len() as usize);
    if let Err(e) = (&mut file).take(max_size + 1).read_to_end(&mut bytes) {
        return Inspection::Reject(format!("is unreadable: {e}"));
    }
    if changed_since(&file, &opened) {
        return Inspection::Later(settle.max(Duration::from_millis(50)));
    }
    if bytes.len() as u64 > max_size {
        return Inspection::Reject(format!("is over max_prompt_size ({max_size} bytes)"));
    }
    let key = dedup_key(worker, path, &opened, &bytes);
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            return Inspection::Reject(format!(
                "is not valid UTF-8 text (bad byte at offset {}); save it as UTF-8",
                e.utf8_error().valid_up_to()
            ));
        }
    };
    let prompt = text.strip_prefix('\u{feff}').unwrap_or(&text).to_string();
    if prompt.trim().is_empty() {
        return Inspection::Reject("is empty (or only white space): a prompt needs text".into());
    }
    Inspection::Ready {
        prompt,
        dedup_key: key,
    }
}

fn changed_since(file: &File, before: &std::fs::Metadata) -> bool {
    match file.metadata() {
        Ok(now) => {
            now.len() != before.len()
                || now.mtime_nsec() != before.mtime_nsec()
                || now.mtime() != before.mtime()
        }
        Err(_) => true,
    }
}

fn dedup_key(worker: &str, path: &Path, meta: &std::fs::Metadata, content: &[u8]) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(format!(
        "file\0{worker}\0{name}\0{}\0{}\0{}.{}\0",
        meta.dev(),
        meta.ino(),
        meta.mtime(),
        meta.mtime_nsec()
    ));
    h.update(Sha256::digest(content));
    format!("file:{}", hex::encode(h.finalize()))
}

/// Lists `*.prompt` entries, oldest first. Hidden files are skipped: they are the usual names of
/// files being written.
pub fn list_prompts(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<(SystemTime, String, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(SUFFIX) || name.starts_with('.') {
            continue;
        }
        let mtime = entry
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        found.push((mtime, name, entry.path()));
    }
    found.sort();
    Ok(found.into_iter().map(|(_, _, p)| p).collect())
}

/// Moves a bad file to `rejected/` with its reason beside it. Returns the new path.
pub fn set_aside(path: &Path, reason: &str) -> std::io::Result<PathBuf> {
    let dir = path.parent().unwrap_or(Path::new(".")).join(REJECTED_DIR);
    std::fs::create_dir_all(&dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut target = dir.join(&name);
    let mut n = 1;
    while target.symlink_metadata().is_ok()
        || with_suffix(&target, ".reason").symlink_metadata().is_ok()
    {
        target = dir.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &target)?;
    let when = humantime::format_rfc3339_seconds(SystemTime::now());
    crate::output::write_atomic(
        &with_suffix(&target, ".reason"),
        format!("{name}: {reason}\nrejected at {when}\n").as_bytes(),
    )?;
    Ok(target)
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Network file systems do not deliver inotify events for changes made by other hosts.
// f_type is i64 on glibc x86-64 but another width elsewhere, hence the cast.
#[allow(clippy::unnecessary_cast)]
fn is_network_fs(dir: &Path) -> bool {
    use nix::sys::statfs::{NFS_SUPER_MAGIC, SMB_SUPER_MAGIC, statfs};
    const CIFS: i64 = 0xFF53_4D42;
    const SMB2: i64 = 0xFE53_4D42;
    const FUSE: i64 = 0x6573_5546;
    const V9FS: i64 = 0x0102_1997;
    match statfs(dir) {
        Ok(st) => {
            let t = st.filesystem_type();
            t == NFS_SUPER_MAGIC
                || t == SMB_SUPER_MAGIC
                || [CIFS, SMB2, FUSE, V9FS].contains(&(t.0 as i64))
        }
        Err(_) => false,
    }
}

/// Called for each task intake creates, so the worker's runner wakes.
pub type OnTask = Arc<dyn Fn(&str) + Send + Sync>;

/// Watches every worker's folder until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    store: Arc<dyn Store>,
    on_task: OnTask,
    shutdown: CancellationToken,
) -> Result<()> {
    let workers: Vec<(String, PathBuf)> = config
        .workers
        .iter()
        .map(|w| (w.name.clone(), config.queue_dir(&w.name)))
        .collect();
    for (_, dir) in &workers {
        std::fs::create_dir_all(dir).map_err(|e| Error::io("creating queue folder", dir, e))?;
    }

    let (tx, mut rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut polled: HashSet<String> = HashSet::new();
    let _watcher = if config.intake.poll {
        polled.extend(workers.iter().map(|(w, _)| w.clone()));
        None
    } else {
        match start_watcher(&workers, tx) {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(
                    "file-system events unavailable ({e}); scanning prompt folders every {:?}",
                    config.intake.poll_interval
                );
                polled.extend(workers.iter().map(|(w, _)| w.clone()));
                None
            }
        }
    };
    for (worker, dir) in &workers {
        if !polled.contains(worker) && is_network_fs(dir) {
            info!(
                worker,
                "{} is on a network file system; scanning it every {:?}",
                dir.display(),
                config.intake.poll_interval
            );
            polled.insert(worker.clone());
        }
    }

    let mut scanner = Scanner {
        config: config.clone(),
        store,
        on_task,
        given_up: HashSet::new(),
    };
    let now = Instant::now();
    let mut due: HashMap<String, Instant> = workers.iter().map(|(w, _)| (w.clone(), now)).collect();
    loop {
        let now = Instant::now();
        let ready: Vec<String> = due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(w, _)| w.clone())
            .collect();
        for worker in ready {
            let dir = config.queue_dir(&worker);
            let later = scanner.scan(&worker, &dir).await;
            let regular = if polled.contains(&worker) {
                config.intake.poll_interval
            } else {
                config.intake.rescan_interval
            };
            let next = later.map(|l| l.min(regular)).unwrap_or(regular);
            due.insert(worker, Instant::now() + next);
        }
        let wake_at = due
            .values()
            .min()
            .copied()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(wake_at.into()) => {}
            Some(path) = rx.recv() => {
                let mut paths = vec![path];
                while let Ok(p) = rx.try_recv() {
                    paths.push(p);
                }
                for (worker, dir) in &workers {
                    if paths.iter().any(|p| p.starts_with(dir) && p.parent() == Some(dir.as_path())) {
                        due.insert(worker.clone(), Instant::now());
                    }
                }
            }
        }
    }
}

fn start_watcher(
    workers: &[(String, PathBuf)],
    tx: mpsc::UnboundedSender<PathBuf>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    })?;
    for (_, dir) in workers {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

struct Scanner {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    on_task: OnTask,
    /// Files that could be neither taken nor set aside (say, a read-only folder): not retried on
    /// every scan, so a stuck file cannot flood the log. Keyed by path and modification time.
    given_up: HashSet<(PathBuf, i64)>,
}

impl Scanner {
    /// Takes every ready file of one folder. Returns when to look again for files not yet settled.
    async fn scan(&mut self, worker: &str, dir: &Path) -> Option<Duration> {
        let listing = {
            let dir = dir.to_path_buf();
            tokio::task::spawn_blocking(move || list_prompts(&dir)).await
        };
        let paths = match listing {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                warn!(worker, "cannot list {}: {e}", dir.display());
                return None;
            }
            Err(e) => {
                warn!(worker, "listing {} failed: {e}", dir.display());
                return None;
            }
        };
        let mut later: Option<Duration> = None;
        for path in paths {
            let mtime = std::fs::symlink_metadata(&path)
                .map(|m| m.mtime())
                .unwrap_or(0);
            if self.given_up.contains(&(path.clone(), mtime)) {
                continue;
            }
            let (settle, cap) = (self.config.intake.settle, self.config.max_prompt_size);
            let (w, p) = (worker.to_string(), path.clone());
            let found =
                match tokio::task::spawn_blocking(move || inspect(&w, &p, settle, cap)).await {
                    Ok(found) => found,
                    Err(e) => {
                        warn!(worker, "examining {} failed: {e}", path.display());
                        continue;
                    }
                };
            match found {
                Inspection::Vanished => {}
                Inspection::Later(wait) => later = Some(later.map_or(wait, |l| l.min(wait))),
                Inspection::Ready { prompt, dedup_key } => {
                    if let Err(e) = self.take(worker, &path, prompt, dedup_key).await {
                        warn!(worker, "could not take {}: {e}", path.display());
                        self.given_up.insert((path, mtime));
                    }
                }
                Inspection::Reject(reason) => self.reject(worker, &path, mtime, &reason).await,
            }
        }
        later
    }

    async fn take(
        &self,
        worker: &str,
        path: &Path,
        prompt: String,
        dedup_key: String,
    ) -> Result<()> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let limits = &self
            .config
            .worker(worker)
            .expect("intake runs for configured workers")
            .limits;
        let now = now_ms();
        let submitted = self
            .store
            .submit(&NewTask {
                worker: worker.to_string(),
                prompt,
                priority: 0,
                max_attempts: limits.max_attempts,
                timeout_ms: None,
                not_before: now,
                source: format!("file:{name}"),
                dedup_key: Some(dedup_key),
                now,
            })
            .await?;
        match submitted {
            Submitted::New(id) => {
                info!(worker, task = id, "took {name}");
                (self.on_task)(worker);
            }
            Submitted::Duplicate(id) => debug!(
                worker,
                task = id,
                "{name} was already taken as task {id}; removing it"
            ),
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("removing taken prompt file", path, e)),
        }
    }

    async fn reject(&mut self, worker: &str, path: &Path, mtime: i64, reason: &str) {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let moved = {
            let (path, reason) = (path.to_path_buf(), reason.to_string());
            tokio::task::spawn_blocking(move || set_aside(&path, &reason)).await
        };
        let message = match moved {
            Ok(Ok(target)) => {
                let shown = target.strip_prefix(&self.config.root).unwrap_or(&target);
                warn!(
                    worker,
                    "rejected {name}: {reason} (moved to {})",
                    shown.display()
                );
                format!("{name}: {reason}; moved to {}", shown.display())
            }
            Ok(Err(e)) => {
                warn!(
                    worker,
                    "rejected {name}: {reason}; could not move it aside: {e}"
                );
                self.given_up.insert((path.to_path_buf(), mtime));
                format!("{name}: {reason}; could not move it aside: {e}")
            }
            Err(e) => format!("{name}: {reason}; {e}"),
        };
        let event = NewEvent {
            task_id: None,
            worker: Some(worker.to_string()),
            kind: "rejected".into(),
            message,
            now: now_ms(),
        };
        if let Err(e) = self.store.record_event(&event).await {
            warn!(worker, "could not record rejection of {name}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const NOW: Duration = Duration::ZERO;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn rejected(found: Inspection) -> String {
        match found {
            Inspection::Reject(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_good_file_is_ready_and_its_key_is_stable() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.prompt", "\u{feff}Fix the bug\n".as_bytes());
        let Inspection::Ready { prompt, dedup_key } = inspect("w", &p, NOW, 100) else {
            panic!()
        };
        assert_eq!(prompt, "Fix the bug\n");
        let Inspection::Ready {
            dedup_key: again, ..
        } = inspect("w", &p, NOW, 100)
        else {
            panic!()
        };
        assert_eq!(
            dedup_key, again,
            "the same file gives the same key after a crash"
        );
        let Inspection::Ready {
            dedup_key: other, ..
        } = inspect("v", &p, NOW, 100)
        else {
            panic!()
        };
        assert_ne!(dedup_key, other);
    }

    #[test]
    fn a_file_being_written_waits() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.prompt", b"half");
        assert!(matches!(
            inspect("w", &p, Duration::from_secs(60), 100),
            Inspection::Later(_)
        ));
    }

    #[test]
    fn bad_files_are_rejected_with_a_reason() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        assert!(rejected(inspect("w", &write(dir, "e.prompt", b""), NOW, 100)).contains("empty"));
        assert!(
            rejected(inspect("w", &write(dir, "s.prompt", b" \n\t"), NOW, 100)).contains("empty")
        );
        assert!(
            rejected(inspect(
                "w",
                &write(dir, "b.prompt", b"ok\xff\xfe"),
                NOW,
                100
            ))
            .contains("offset 2")
        );
        assert!(
            rejected(inspect(
                "w",
                &write(dir, "big.prompt", &[b'x'; 101]),
                NOW,
                100
            ))
            .contains("101 bytes")
        );
        std::fs::create_dir(dir.join("d.prompt")).unwrap();
        assert!(rejected(inspect("w", &dir.join("d.prompt"), NOW, 100)).contains("directory"));
        std::os::unix::fs::symlink(dir.join("big.prompt"), dir.join("l.prompt")).unwrap();
        assert!(rejected(inspect("w", &dir.join("l.prompt"), NOW, 100)).contains("symbolic link"));
        nix::unistd::mkfifo(&dir.join("f.prompt"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(
            rejected(inspect("w", &dir.join("f.prompt"), NOW, 100)).contains("not a regular file")
        );
        assert_eq!(
            inspect("w", &dir.join("gone.prompt"), NOW, 100),
            Inspection::Vanished
        );
    }

    #[test]
    fn unreadable_files_are_rejected_when_not_root() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "u.prompt", b"secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
        match inspect("w", &p, NOW, 100) {
            // root reads anything: nothing to test as root.
            Inspection::Ready { .. } => assert!(nix::unistd::geteuid().is_root()),
            found => assert!(rejected(found).contains("unreadable")),
        }
    }

    #[test]
    fn listing_is_oldest_first_and_skips_other_names() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let old = write(dir, "z.prompt", b"1");
        let new = write(dir, "a.prompt", b"2");
        write(dir, ".hidden.prompt", b"3");
        write(dir, "notes.txt", b"4");
        let t = std::time::SystemTime::now();
        File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(t - Duration::from_secs(10))
            .unwrap();
        File::options()
            .write(true)
            .open(&new)
            .unwrap()
            .set_modified(t)
            .unwrap();
        assert_eq!(list_prompts(dir).unwrap(), vec![old, new]);
    }

    #[test]
    fn set_aside_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let first = set_aside(&write(d.path(), "x.prompt", b""), "is empty").unwrap();
        let second = set_aside(&write(d.path(), "x.prompt", b""), "is empty again").unwrap();
        assert_ne!(first, second);
        let reason = std::fs::read_to_string(with_suffix(&second, ".reason")).unwrap();
        assert!(reason.starts_with("x.prompt: is empty again\n"), "{reason}");
        assert!(with_suffix(&first, ".reason").exists());
    }
}
