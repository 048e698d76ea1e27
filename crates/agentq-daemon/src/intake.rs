//! Prompt-file intake: `.queue/<worker>/*.prompt` files become tasks, each exactly once.
//!
//! How a file is taken:
//! 1. It must have settled: its size, times and inode unchanged, as this daemon saw them, for
//!    `intake.settle`. The daemon's own clock decides, so a skewed file server cannot fool it.
//!    (Producers that want no delay and no doubt write another name and rename it to `*.prompt`.)
//! 2. It is renamed into `.queue/<worker>/.taking/<token>.<name>`, where `token` is random. The
//!    rename is atomic: from here on the name `<name>.prompt` is free, and a new file dropped under
//!    it is a new task, never mistaken for this one.
//! 3. It is read (at most `max_prompt_size` bytes and one more), decoded ([`text::decode`]: UTF-8,
//!    or UTF-16 with its byte-order mark; CRLF made LF), checked (not empty after decoding), and
//!    submitted with the dedup key `file:<worker>:<token>`. Then the taken file is removed.
//!
//! A crash anywhere leaves the file either in the folder (not yet taken) or in `.taking/`; each scan
//! finishes what is in `.taking/` first. Submitting again with the same token returns the task the
//! first submit made, so a crash between submit and removal costs only a removal: exactly once.
//!
//! A file that cannot be a task (empty, not text in an encoding [`text`] reads, too large,
//! unreadable, a link, a folder, a pipe) is moved to `.queue/<worker>/rejected/` with
//! `<name>.reason` beside it and an event. Nothing is deleted that was not taken.
//!
//! `max_prompt_size` caps the file's bytes, as `ls -l` shows them, before anything is read (so a
//! huge file costs nothing) and not the decoded text: UTF-16 text can grow by half as UTF-8 (three
//! bytes for two: Chinese, say) or shrink by half (ASCII).
//!
//! Files are taken oldest first (modification time, then name). Scans are triggered by file-system
//! events, with a slow periodic rescan in case events were dropped; on a network file system (or
//! with `intake.poll = true`) folders are scanned every `intake.poll_interval` instead.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use notify::{RecursiveMode, Watcher};
use rand::RngExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::text;
use agentq_core::error::Error;
use agentq_store::{NewEvent, Store, Submitted, now_ms};

pub const REJECTED_DIR: &str = "rejected";
pub const TAKING_DIR: &str = ".taking";
const SUFFIX: &str = ".prompt";

/// What a file looked like when last seen: if this stays the same for `settle`, it has settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint {
    size: u64,
    stamp: agentq_platform::fs::Stamp,
}

impl Fingerprint {
    fn of(m: &std::fs::Metadata) -> Fingerprint {
        Fingerprint {
            size: m.len(),
            stamp: agentq_platform::fs::Stamp::of(m),
        }
    }
}

/// The verdict on a listed `*.prompt` entry, before it is taken.
#[derive(Debug, PartialEq)]
pub enum Look {
    /// Settled: take it.
    Take(Fingerprint),
    /// First seen like this now (new, or changed since last seen): the settle time starts over.
    Changed(Fingerprint),
    /// Unchanged, but not yet for the settle time: look again after this long.
    Later(Duration),
    Reject(String),
    /// Gone between listing and looking.
    Gone,
}

/// Looks at one listed entry. `seen` is when and how this daemon first saw it unchanged.
/// Blocking: call on a blocking thread.
pub fn look(
    path: &Path,
    seen: Option<(Fingerprint, Instant)>,
    settle: Duration,
    max_size: u64,
) -> Look {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Look::Gone,
        Err(e) => return Look::Reject(format!("cannot be examined: {e}")),
    };
    let kind = meta.file_type();
    if kind.is_symlink() {
        return Look::Reject("is a symbolic link; prompt files must be regular files".into());
    }
    if kind.is_dir() {
        return Look::Reject("is a directory, not a prompt file".into());
    }
    if !kind.is_file() {
        return Look::Reject("is not a regular file (a pipe, socket or device)".into());
    }
    if meta.len() > max_size {
        return Look::Reject(format!(
            "is {} bytes, over max_prompt_size ({max_size} bytes)",
            meta.len()
        ));
    }
    let now = Fingerprint::of(&meta);
    match seen {
        Some((before, since)) if before == now => match settle.checked_sub(since.elapsed()) {
            Some(left) if !left.is_zero() => Look::Later(left),
            // Quiet for the settle time, but a writer may only have paused: if one still holds
            // the file open, wait for it to close (its close is an event, so no time is lost).
            _ if held_open_for_writing(path) => Look::Later(settle.max(Duration::from_millis(100))),
            _ => Look::Take(now),
        },
        _ => Look::Changed(now),
    }
}

/// Whether some process has `path` open for writing, where the system can tell (see
/// `agentq_platform::fs::held_open_for_writing`); where it cannot, the settle time alone decides.
pub fn held_open_for_writing(path: &Path) -> bool {
    agentq_platform::fs::held_open_for_writing(path)
}

/// What reading a taken file found.
#[derive(Debug, PartialEq)]
pub enum Content {
    Prompt(String),
    Reject(String),
    /// A passing failure (too many open files, I/O error): leave it and try again later.
    Retry(String),
    Gone,
}

/// Reads and checks a file already moved into `.taking/`. Blocking.
pub fn read_taken(path: &Path, max_size: u64) -> Content {
    // Whatever is there now, a link is not followed and a pipe cannot block the read.
    let mut file = match agentq_platform::fs::open_no_follow(path) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return Content::Reject(
                "is a symbolic link; prompt files must be regular files".into(),
            );
        }
        Err(e) => {
            return match e.kind() {
                std::io::ErrorKind::NotFound => Content::Gone,
                std::io::ErrorKind::PermissionDenied => {
                    Content::Reject(format!("is unreadable: {e}"))
                }
                _ => Content::Retry(format!("cannot be opened: {e}")),
            };
        }
    };
    match file.metadata() {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Content::Reject("is not a regular file".into()),
        Err(e) => return Content::Retry(format!("cannot be examined: {e}")),
    }
    let mut bytes = Vec::new();
    if let Err(e) = (&mut file).take(max_size + 1).read_to_end(&mut bytes) {
        return Content::Retry(format!("cannot be read: {e}"));
    }
    if bytes.len() as u64 > max_size {
        return Content::Reject(format!("is over max_prompt_size ({max_size} bytes)"));
    }
    let prompt = match text::decode(bytes) {
        Ok(prompt) => prompt,
        Err(e) => return Content::Reject(e.to_string()),
    };
    // After decoding: a file that is only a byte-order mark, or only line ends, is empty too.
    if prompt.trim().is_empty() {
        return Content::Reject("is empty (or only white space): a prompt needs text".into());
    }
    Content::Prompt(prompt)
}

/// `<token>.<name>` in `.taking/` back to its token and original name.
fn split_taken(file_name: &str) -> Option<(&str, &str)> {
    let (token, name) = file_name.split_once('.')?;
    (token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty())
        .then_some((token, name))
}

fn new_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
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

/// Moves a bad file to `<queue>/rejected/<name>` with its reason beside it. Returns the new path.
pub fn set_aside(path: &Path, queue: &Path, name: &str, reason: &str) -> std::io::Result<PathBuf> {
    let dir = queue.join(REJECTED_DIR);
    std::fs::create_dir_all(&dir)?;
    let mut target = dir.join(name);
    let mut n = 1;
    while target.symlink_metadata().is_ok()
        || with_suffix(&target, ".reason").symlink_metadata().is_ok()
    {
        target = dir.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &target)?;
    let when = humantime::format_rfc3339_seconds(SystemTime::now());
    agentq_core::files::write_atomic(
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

/// Network file systems do not deliver file-system events for changes made by other hosts.
fn is_network_fs(dir: &Path) -> bool {
    agentq_platform::fs::is_network_fs(dir)
}

/// Called for each task intake creates, so the worker's runner wakes.
pub type OnTask = Arc<dyn Fn(&str) + Send + Sync>;

/// Creates every worker's prompt folder; returns the workers whose folder is ready. Called before
/// the daemon says it is running, so a file dropped from then on has a folder to land in. A folder
/// that cannot be made (a file in its way, say) costs that worker its intake only.
pub fn prepare(config: &Config) -> Vec<(String, PathBuf)> {
    let mut ready = Vec::new();
    for name in config.queue_names() {
        let dir = config.queue_dir(name);
        // `.taking/` too: something in its way stops this worker's intake loudly, not file by file.
        match std::fs::create_dir_all(dir.join(TAKING_DIR)) {
            Ok(()) => ready.push((name.to_string(), dir)),
            Err(e) => error!(
                worker = %name,
                "no prompt-file intake for this worker: cannot create {}: {e}",
                dir.display()
            ),
        }
    }
    ready
}

/// Watches the prepared folders until `shutdown`.
pub async fn run(
    config: Arc<Config>,
    workers: Vec<(String, PathBuf)>,
    store: Arc<dyn Store>,
    on_task: OnTask,
    shutdown: CancellationToken,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Wake>();
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
        seen: HashMap::new(),
        given_up: HashMap::new(),
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
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(wake_at.into()) => {}
            Some(wake) = rx.recv() => {
                let mut wakes = vec![wake];
                while let Ok(w) = rx.try_recv() {
                    wakes.push(w);
                }
                for (worker, dir) in &workers {
                    let concerned = wakes.iter().any(|w| match w {
                        Wake::All => true,
                        Wake::Path(p) => p.parent() == Some(dir.as_path()),
                    });
                    if concerned {
                        due.insert(worker.clone(), Instant::now());
                    }
                }
            }
        }
    }
}

fn start_watcher(
    workers: &[(String, PathBuf)],
    tx: mpsc::UnboundedSender<Wake>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let wakes: Vec<Wake> = match res {
            Ok(event) if event.need_rescan() => vec![Wake::All],
            Ok(event) if wakes_a_scan(&event.kind) => event
                .paths
                .into_iter()
                .filter(|p| is_prompt_name(p))
                .map(Wake::Path)
                .collect(),
            Ok(_) => Vec::new(),
            // The watcher lost track (its queue overflowed, say): look everywhere.
            Err(_) => vec![Wake::All],
        };
        for wake in wakes {
            let _ = tx.send(wake);
        }
    })?;
    for (_, dir) in workers {
        watcher.watch(dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// What the watcher asks of the scan loop.
#[derive(Debug, PartialEq)]
enum Wake {
    Path(PathBuf),
    All,
}

/// Whether an event can mean a prompt file appeared or changed. Opening, reading, and closing
/// without writing cannot; intake itself opens folders and files on every scan, so letting those
/// through would make each scan trigger the next.
fn wakes_a_scan(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) | EventKind::Remove(_) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Any | EventKind::Other => true,
    }
}

/// `*.prompt` and not hidden: the names intake takes.
fn is_prompt_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(SUFFIX) && !n.starts_with('.'))
}

struct Scanner {
    config: Arc<Config>,
    store: Arc<dyn Store>,
    on_task: OnTask,
    /// When and how each not-yet-settled file was first seen unchanged.
    seen: HashMap<PathBuf, (Fingerprint, Instant)>,
    /// Files that could be neither taken nor set aside (a read-only folder, a full disk): left
    /// alone until they change or `GIVE_UP_FOR` has passed, so a stuck file cannot flood the log.
    given_up: HashMap<(PathBuf, Fingerprint), Instant>,
}

/// How soon a folder should be scanned again for work left over.
const RETRY_SOON: Duration = Duration::from_secs(1);
const GIVE_UP_FOR: Duration = Duration::from_secs(30);

/// How finishing a taken file went.
enum Finished {
    Done,
    /// Try again soon (the store was busy, say).
    Again,
    /// Try again only after `GIVE_UP_FOR` (the file cannot be read right now).
    Stuck,
}

impl Scanner {
    /// Finishes what is in `.taking/`, then takes every settled file. Returns when to look again.
    async fn scan(&mut self, worker: &str, dir: &Path) -> Option<Duration> {
        let mut later: Option<Duration> = None;
        let mut soon = |d: Duration| later = Some(later.map_or(d, |l: Duration| l.min(d)));
        self.given_up
            .retain(|_, since| since.elapsed() < GIVE_UP_FOR);

        let taking = dir.join(TAKING_DIR);
        let left = blocking(move || list_taking(&taking))
            .await
            .unwrap_or_default();
        for entry in left {
            if self.gave_up_on(&entry.path) {
                continue;
            }
            let Some((token, name)) = entry.parsed else {
                let reason =
                    "was found in .taking/ under a name agentq does not give; set aside unread";
                self.reject(worker, dir, &entry.path, &entry.file_name, reason)
                    .await;
                continue;
            };
            match self.finish(worker, dir, &entry.path, &token, &name).await {
                Finished::Done => {}
                Finished::Again => soon(RETRY_SOON),
                Finished::Stuck => self.give_up(&entry.path),
            }
        }

        let listing = {
            let dir = dir.to_path_buf();
            blocking(move || list_prompts(&dir)).await
        };
        let paths = match listing {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                warn!(worker, "cannot list {}: {e}", dir.display());
                return Some(self.config.intake.rescan_interval);
            }
            None => return Some(RETRY_SOON),
        };
        // Forget sightings of this folder's files that are gone; other folders' are not ours.
        let listed: HashSet<&PathBuf> = paths.iter().collect();
        self.seen
            .retain(|p, _| p.parent() != Some(dir) || listed.contains(p));
        for path in paths {
            if self.gave_up_on(&path) {
                continue;
            }
            let (settle, cap) = (self.config.intake.settle, self.config.max_prompt_size);
            let seen = self.seen.get(&path).copied();
            let p = path.clone();
            let Some(found) = blocking(move || look(&p, seen, settle, cap)).await else {
                continue;
            };
            let name = file_name(&path);
            match found {
                Look::Gone => {}
                Look::Changed(fingerprint) => {
                    self.seen
                        .insert(path.clone(), (fingerprint, Instant::now()));
                    // A floor, so that settle = 0 and a file that keeps changing cannot spin.
                    soon(settle.max(Duration::from_millis(10)));
                }
                Look::Later(wait) => soon(wait),
                Look::Reject(reason) => self.reject(worker, dir, &path, &name, &reason).await,
                Look::Take(_) => {
                    self.seen.remove(&path);
                    let token = new_token();
                    let taken = dir
                        .join(TAKING_DIR)
                        .join(format!("{token}.{}", fit_name(&name)));
                    let (from, to) = (path.clone(), taken.clone());
                    let moved = blocking(move || {
                        std::fs::create_dir_all(to.parent().expect("in .taking"))?;
                        std::fs::rename(&from, &to)
                    })
                    .await;
                    match moved {
                        Some(Ok(())) => match self.finish(worker, dir, &taken, &token, &name).await
                        {
                            Finished::Done => {}
                            Finished::Again => soon(RETRY_SOON),
                            Finished::Stuck => self.give_up(&taken),
                        },
                        Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Some(Err(e)) => {
                            warn!(
                                worker,
                                "cannot take {name}: {e}; trying again in {GIVE_UP_FOR:?} or when it changes"
                            );
                            self.give_up(&path);
                        }
                        None => soon(RETRY_SOON),
                    }
                }
            }
        }
        later
    }

    /// Reads, submits and removes a file in `.taking/`.
    async fn finish(
        &mut self,
        worker: &str,
        dir: &Path,
        taken: &Path,
        token: &str,
        name: &str,
    ) -> Finished {
        let cap = self.config.max_prompt_size;
        let p = taken.to_path_buf();
        let Some(content) = blocking(move || read_taken(&p, cap)).await else {
            return Finished::Again;
        };
        let prompt = match content {
            Content::Prompt(prompt) => prompt,
            Content::Gone => return Finished::Done,
            Content::Reject(reason) => {
                self.reject(worker, dir, taken, name, &reason).await;
                return Finished::Done;
            }
            Content::Retry(why) => {
                warn!(worker, "{name} {why}; trying again in {GIVE_UP_FOR:?}");
                return Finished::Stuck;
            }
        };
        let ask = crate::route::Ask {
            worker: Some(worker),
            ..Default::default()
        };
        let plan = match crate::route::plan(&self.config, &prompt, &ask) {
            Ok(plan) => plan,
            Err(e) => {
                // Intake runs only for configured workers and the pool, which always plan.
                warn!(worker, "cannot route {name}: {e}; trying again");
                return Finished::Again;
            }
        };
        let now = now_ms();
        let task = plan
            .task(
                prompt,
                &format!("file:{name}"),
                Some(format!("file:{worker}:{token}")),
                now,
            )
            .await;
        let task = match task {
            Ok(task) => task,
            // Its worktree cannot be made as asked (no repository, no such base, a dirty one
            // where a clean one is required): set aside with the reason, not lost.
            Err(Error::Usage(why)) => {
                self.reject(worker, dir, taken, name, &why).await;
                return Finished::Done;
            }
            Err(e) => {
                warn!(worker, "cannot queue {name}: {e}; trying again");
                return Finished::Again;
            }
        };
        let submitted = self.store.submit(&task).await;
        match submitted {
            Ok(Submitted::New(id)) => {
                info!(worker, task = id, "took {name}");
                (self.on_task)(plan.runs_on());
            }
            Ok(Submitted::Duplicate(id)) => {
                debug!(
                    worker,
                    task = id,
                    "{name} was already taken as task {id}; removing it"
                )
            }
            Err(e) => {
                warn!(worker, "cannot queue {name}: {e}; trying again");
                return Finished::Again;
            }
        }
        let p = taken.to_path_buf();
        match blocking(move || std::fs::remove_file(&p)).await {
            Some(Ok(())) => Finished::Done,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => Finished::Done,
            // Queued already; a later scan finds the same token, gets Duplicate, and removes it.
            Some(Err(e)) => {
                warn!(
                    worker,
                    "cannot remove {}: {e}; trying again in {GIVE_UP_FOR:?}",
                    taken.display()
                );
                Finished::Stuck
            }
            None => Finished::Again,
        }
    }

    async fn reject(&mut self, worker: &str, dir: &Path, path: &Path, name: &str, reason: &str) {
        let moved = {
            let (path, dir, name, reason) = (
                path.to_path_buf(),
                dir.to_path_buf(),
                name.to_string(),
                reason.to_string(),
            );
            blocking(move || set_aside(&path, &dir, &name, &reason)).await
        };
        let message = match moved {
            Some(Ok(target)) => {
                let shown = target.strip_prefix(&self.config.root).unwrap_or(&target);
                warn!(
                    worker,
                    "rejected {name}: {reason} (moved to {})",
                    shown.display()
                );
                format!("{name}: {reason}; moved to {}", shown.display())
            }
            other => {
                let e = match other {
                    Some(Err(e)) => e.to_string(),
                    _ => "the move was interrupted".into(),
                };
                warn!(
                    worker,
                    "rejected {name}: {reason}; could not move it aside: {e}; trying again in {GIVE_UP_FOR:?}"
                );
                self.give_up(path);
                format!("{name}: {reason}; could not move it aside: {e}")
            }
        };
        let event = NewEvent {
            task_id: None,
            worker: Some(worker.to_string()),
            kind: "file_rejected".into(),
            message,
            data: None,
            now: now_ms(),
        };
        if let Err(e) = self.store.record_event(&event).await {
            warn!(worker, "could not record rejection of {name}: {e}");
        }
    }

    fn give_up(&mut self, path: &Path) {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            self.given_up
                .insert((path.to_path_buf(), Fingerprint::of(&meta)), Instant::now());
        }
    }

    fn gave_up_on(&self, path: &Path) -> bool {
        !self.given_up.is_empty()
            && std::fs::symlink_metadata(path).is_ok_and(|m| {
                self.given_up
                    .contains_key(&(path.to_path_buf(), Fingerprint::of(&m)))
            })
    }
}

/// The original name as kept in `.taking/`: short enough that `<token>.` fits before it within the
/// usual 255-byte limit of a file name (cut on a character boundary; a task's source and a
/// rejection then show the cut name).
fn fit_name(name: &str) -> &str {
    const ROOM: usize = 255 - 33;
    if name.len() <= ROOM {
        return name;
    }
    let mut end = ROOM;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    &name[..end]
}

/// Runs file-system work off the async threads (a slow disk or a hung mount must not stall the
/// daemon). `None` if the blocking task itself failed.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// An entry of `.taking/`: a file a scan took but did not finish.
struct Taken {
    path: PathBuf,
    file_name: String,
    /// Token and original name, if the name is one intake gives.
    parsed: Option<(String, String)>,
}

/// The entries of `.taking/`, oldest first.
fn list_taking(dir: &Path) -> Vec<Taken> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<(SystemTime, Taken)> = entries
        .flatten()
        .map(|e| {
            let file_name = e.file_name().to_string_lossy().into_owned();
            let parsed = split_taken(&file_name).map(|(t, n)| (t.to_string(), n.to_string()));
            let mtime = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (
                mtime,
                Taken {
                    path: e.path(),
                    file_name,
                    parsed,
                },
            )
        })
        .collect();
    found.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| a.1.file_name.cmp(&b.1.file_name))
    });
    found.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(unix)]
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Looks twice, the second time as if `settle` had passed since the first.
    fn settled(path: &Path, cap: u64) -> Look {
        let settle = Duration::from_millis(1);
        match look(path, None, settle, cap) {
            Look::Changed(_) => {}
            other => return other,
        }
        let meta = std::fs::symlink_metadata(path).unwrap();
        let first = (
            Fingerprint::of(&meta),
            Instant::now() - Duration::from_secs(1),
        );
        look(path, Some(first), settle, cap)
    }

    #[cfg_attr(not(unix), allow(dead_code))]
    fn rejected(found: Look) -> String {
        match found {
            Look::Reject(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    fn content_rejected(found: Content) -> String {
        match found {
            Content::Reject(r) => r,
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn a_file_is_taken_only_once_it_stays_unchanged_for_the_settle_time() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "a.prompt", b"half");
        let settle = Duration::from_secs(60);
        assert!(
            matches!(look(&p, None, settle, 100), Look::Changed(_)),
            "first sight"
        );
        let meta = std::fs::symlink_metadata(&p).unwrap();
        let seen = (Fingerprint::of(&meta), Instant::now());
        assert!(matches!(look(&p, Some(seen), settle, 100), Look::Later(left) if left < settle));
        std::fs::write(&p, b"half and more").unwrap();
        assert!(
            matches!(look(&p, Some(seen), settle, 100), Look::Changed(_)),
            "a change starts over"
        );
        assert!(matches!(settled(&p, 100), Look::Take(_)));
    }

    #[test]
    fn a_file_held_open_for_writing_is_not_taken_until_closed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("slow.prompt");
        let mut writer = std::fs::File::create(&p).unwrap();
        std::io::Write::write_all(&mut writer, b"part one").unwrap();
        assert!(held_open_for_writing(&p));
        assert!(
            matches!(settled(&p, 100), Look::Later(_)),
            "quiet, but still open"
        );
        drop(writer);
        assert!(!held_open_for_writing(&p));
        assert!(matches!(settled(&p, 100), Look::Take(_)));
        let reader = std::fs::File::open(&p).unwrap();
        assert!(!held_open_for_writing(&p), "readers do not count");
        drop(reader);
    }

    #[test]
    fn a_taken_file_is_read_and_checked() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        assert_eq!(
            read_taken(&write(dir, "a", "\u{feff}Fix the bug\n".as_bytes()), 100),
            Content::Prompt("Fix the bug\n".into())
        );
        assert!(content_rejected(read_taken(&write(dir, "e", b""), 100)).contains("empty"));
        assert!(content_rejected(read_taken(&write(dir, "s", b" \n\t"), 100)).contains("empty"));
        // Decoded first, then found empty: only a byte-order mark, or only line ends.
        for (name, only) in [
            ("m8", &b"\xEF\xBB\xBF"[..]),
            ("m16", b"\xFF\xFE"),
            ("m16n", b"\xFE\xFF\0\r\0\n"),
            ("crlf", b"\r\n\r\n"),
        ] {
            assert!(
                content_rejected(read_taken(&write(dir, name, only), 100)).contains("empty"),
                "{name}"
            );
        }
        assert_eq!(
            read_taken(&write(dir, "u16", b"\xFF\xFEo\0k\0\r\0\n\0"), 100),
            Content::Prompt("ok\n".into())
        );
        assert!(
            content_rejected(read_taken(&write(dir, "odd", b"\xFF\xFEo\0k"), 100))
                .contains("odd number of bytes")
        );
        assert!(
            content_rejected(read_taken(&write(dir, "b", b"ok\xff\xfe"), 100)).contains("offset 2")
        );
        assert!(
            content_rejected(read_taken(&write(dir, "g", &[b'x'; 101]), 100))
                .contains("over max_prompt_size")
        );
        assert_eq!(read_taken(&dir.join("gone"), 100), Content::Gone);
    }

    #[cfg(unix)] // links and pipes made the Unix way
    #[test]
    fn entries_that_are_not_files_are_rejected_at_once() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        assert!(
            rejected(settled(&write(dir, "big.prompt", &[b'x'; 101]), 100)).contains("101 bytes")
        );
        std::fs::create_dir(dir.join("d.prompt")).unwrap();
        assert!(
            rejected(look(&dir.join("d.prompt"), None, Duration::ZERO, 100)).contains("directory")
        );
        std::os::unix::fs::symlink(dir.join("big.prompt"), dir.join("l.prompt")).unwrap();
        assert!(
            rejected(look(&dir.join("l.prompt"), None, Duration::ZERO, 100))
                .contains("symbolic link")
        );
        nix::unistd::mkfifo(&dir.join("f.prompt"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(
            rejected(look(&dir.join("f.prompt"), None, Duration::ZERO, 100))
                .contains("not a regular file")
        );
        assert_eq!(
            look(&dir.join("gone.prompt"), None, Duration::ZERO, 100),
            Look::Gone
        );
    }

    #[cfg(unix)] // mode 000
    #[test]
    fn unreadable_files_are_rejected_when_not_root() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "u", b"secret");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o000)).unwrap();
        match read_taken(&p, 100) {
            // root reads anything: nothing to test as root.
            Content::Prompt(_) => assert!(nix::unistd::geteuid().is_root()),
            found => assert!(content_rejected(found).contains("unreadable")),
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
        let set = |p: &Path, t| {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(t)
                .unwrap()
        };
        set(&old, t - Duration::from_secs(10));
        set(&new, t);
        assert_eq!(list_prompts(dir).unwrap(), vec![old, new]);
    }

    #[test]
    fn taken_names_keep_token_and_original_name() {
        let token = new_token();
        let joined = format!("{token}.my.task.prompt");
        assert_eq!(
            split_taken(&joined),
            Some((token.as_str(), "my.task.prompt"))
        );
        assert_eq!(split_taken("notatoken.x.prompt"), None);
        assert_ne!(new_token(), token);
    }

    #[test]
    fn only_events_that_can_bring_prompt_files_wake_a_scan() {
        use notify::EventKind;
        use notify::event::{
            AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind, RenameMode,
        };
        assert!(wakes_a_scan(&EventKind::Create(CreateKind::File)));
        assert!(wakes_a_scan(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
        assert!(wakes_a_scan(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        // Intake's own opens and reads must not trigger another scan.
        assert!(!wakes_a_scan(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(!wakes_a_scan(&EventKind::Access(AccessKind::Close(
            AccessMode::Read
        ))));
        assert!(!wakes_a_scan(&EventKind::Remove(RemoveKind::File)));
        assert!(is_prompt_name(Path::new("/q/w/a.prompt")));
        assert!(!is_prompt_name(Path::new("/q/w/.taking")));
        assert!(!is_prompt_name(Path::new("/q/w/.a.prompt")));
        assert!(!is_prompt_name(Path::new("/q/w/a.prompt.tmp")));
    }

    #[test]
    fn long_names_fit_in_taking() {
        let long = format!("{}é.prompt", "n".repeat(250));
        let fit = fit_name(&long);
        assert!(fit.len() + 33 <= 255 && long.starts_with(fit));
        assert_eq!(fit_name("short.prompt"), "short.prompt");
    }

    #[test]
    fn set_aside_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let q = d.path();
        let first = set_aside(&write(q, "x.prompt", b""), q, "x.prompt", "is empty").unwrap();
        let second = set_aside(
            &write(q, "tok.x.prompt", b""),
            q,
            "x.prompt",
            "is empty again",
        )
        .unwrap();
        assert_ne!(first, second);
        assert_eq!(first, q.join("rejected/x.prompt"));
        let reason = std::fs::read_to_string(with_suffix(&second, ".reason")).unwrap();
        assert!(reason.starts_with("x.prompt: is empty again\n"), "{reason}");
        assert!(with_suffix(&first, ".reason").exists());
    }
}
