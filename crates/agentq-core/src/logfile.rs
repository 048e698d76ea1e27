//! Size-rotated, append-only log files: the daemon's event log (`.agentq/events.jsonl`) and the
//! per-task agent output logs.
//!
//! # How it works
//!
//! A [`RotatingFile`] appends with `O_APPEND`, so every `write` lands whole at the end of the file
//! even when the daemon and a CLI command append to the same path at once. When an append would take
//! the file past its size limit, `path` is renamed to `path.1` (`.1` to `.2`, and so on, the oldest
//! removed) and a fresh `path` is started. Appenders and rotation meet on an `flock` of a sibling
//! file, `<path>.lock`, which is never renamed:
//!
//! - an append holds the lock *shared*, so appenders never wait for each other, only for a rotation;
//!   under it the appender checks that its open file is still the one at `path` (another process may
//!   have rotated it away) and reopens if not, so no line is written into a file that is already
//!   `path.1`;
//! - a rotation holds it *exclusive* and checks the size again once it has it, because another
//!   process may have rotated while this one waited; two processes never rotate the same file twice;
//! - readers ([`read_events`], [`follow`]) hold it shared only while they list and open the
//!   generations. An open file stays readable after it is renamed or removed, so they read at leisure
//!   without holding up appenders or rotation.
//!
//! The event log is JSON lines of [`LogEvent`]. A line that does not parse (a torn write after a
//! crash, stray garbage) is skipped by readers rather than failing the whole read.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Append-only file rotated by size: when an append would take it past `max_size`, `path` is
/// renamed to `path.1`, `.1` to `.2`, ... keeping at most `backups` old files (the oldest is
/// removed), and a new `path` is started.
#[derive(Debug)]
pub struct RotatingFile {
    path: PathBuf,
    /// `None`: one writer only (see [`RotatingFile::single_writer`]), no lock file.
    lock_path: Option<PathBuf>,
    max_size: u64,
    backups: u32,
    /// Appends from threads of one process take turns here; processes take turns on the flock.
    handles: Mutex<Handles>,
}

/// The open files of a [`RotatingFile`], opened on first append and kept open.
#[derive(Debug, Default)]
struct Handles {
    lock: Option<File>,
    file: Option<File>,
}

impl RotatingFile {
    /// Opens nothing yet: the folder and files are created on the first append, so a log that is
    /// never written leaves no trace.
    pub fn new(path: PathBuf, max_size: u64, backups: u32) -> RotatingFile {
        RotatingFile {
            lock_path: Some(sibling(&path, "lock")),
            path,
            max_size,
            backups,
            handles: Mutex::new(Handles::default()),
        }
    }

    /// A log only this value ever writes (a task's agent log): no lock file and no flock per
    /// append, as no other process appends or rotates it.
    pub fn single_writer(path: PathBuf, max_size: u64, backups: u32) -> RotatingFile {
        RotatingFile {
            lock_path: None,
            ..RotatingFile::new(path, max_size, backups)
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `bytes` whole: they are never split across a rotation. An append larger than
    /// `max_size` goes whole into a fresh file. Files may exceed `max_size` by the appends other
    /// processes make at the same moment, since appenders only share the lock. Nothing is synced
    /// to disk: a log may lose its last lines in a power cut, never its earlier ones.
    pub fn append(&self, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        // The handles are plain files; one left behind by a panicking thread is still usable.
        let mut handles = self.handles.lock().unwrap_or_else(PoisonError::into_inner);
        let Handles { lock, file } = &mut *handles;
        let guard = match &self.lock_path {
            Some(lock_path) => {
                let lock = match lock.take() {
                    Some(l) => lock.insert(l),
                    None => lock.insert(self.open_lock(lock_path)?),
                };
                // Appenders share the lock where a single append is atomic, else take turns.
                let guard = if agentq_platform::fs::APPEND_IS_ATOMIC {
                    FileLock::shared(lock)
                } else {
                    FileLock::exclusive(lock)
                }
                .map_err(|e| with_path(e, "locking", lock_path))?;
                Some((guard, lock_path))
            }
            None => {
                if file.is_none() {
                    self.ensure_folder()?;
                }
                None
            }
        };
        let mut current = self.current(file)?;
        if self.needs_rotation(current, bytes.len())? {
            if let Some((guard, lock_path)) = &guard {
                guard
                    .upgrade()
                    .map_err(|e| with_path(e, "locking", lock_path))?;
            }
            // Another process may have rotated while this one waited for the exclusive lock.
            current = self.current(file)?;
            if self.needs_rotation(current, bytes.len())? {
                // This handle is let go first: Windows removes an open file only once it is
                // closed, so `path` could not be started over while it is held.
                *file = None;
                rotate(&self.path, self.backups)?;
                current = self.current(file)?;
            }
        }
        write_whole(current, bytes).map_err(|e| with_path(e, "appending to", &self.path))
    }

    /// Whether `bytes` more would take `file` past the limit. An empty file takes any append, so
    /// that one larger than the limit still lands, whole, in a file of its own.
    fn needs_rotation(&self, file: &File, bytes: usize) -> io::Result<bool> {
        let size = file
            .metadata()
            .map_err(|e| with_path(e, "reading size of", &self.path))?
            .len();
        Ok(size > 0 && size.saturating_add(bytes as u64) > self.max_size)
    }

    /// The open file at `path`, reopened if `path` is now another file (rotated by another process)
    /// or gone.
    fn current<'h>(&self, slot: &'h mut Option<File>) -> io::Result<&'h File> {
        let file = match slot.take() {
            Some(f) if is_at(&self.path, &f)? => f,
            _ => OpenOptions::new()
                .append(true)
                .create(true)
                .open(&self.path)
                .map_err(|e| with_path(e, "opening log", &self.path))?,
        };
        Ok(slot.insert(file))
    }

    fn ensure_folder(&self) -> io::Result<()> {
        match self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(dir) if !dir.is_dir() => {
                std::fs::create_dir_all(dir).map_err(|e| with_path(e, "creating log folder", dir))
            }
            _ => Ok(()),
        }
    }

    fn open_lock(&self, lock_path: &Path) -> io::Result<File> {
        self.ensure_folder()?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock_path)
            .map_err(|e| with_path(e, "opening lock file", lock_path))
    }
}

/// Writes `bytes` with one `write` where the kernel allows it: with `O_APPEND` a single write to a
/// regular file is not interleaved with other appenders'. A short write (disk full) is completed
/// with further writes, which is the best that can be done then.
fn write_whole(mut file: &File, bytes: &[u8]) -> io::Result<()> {
    file.write_all(bytes)
}

/// Shifts the generations up by one (`path.N` to `path.N+1`, ..., `path` to `path.1`), removing
/// those that would pass `backups`. Called with the exclusive lock held.
fn rotate(path: &Path, backups: u32) -> io::Result<()> {
    // Oldest first, so each rename goes to a name already moved out of the way.
    for (n, old) in numbered(path)? {
        if n >= backups {
            remove_if_present(&old).map_err(|e| with_path(e, "removing old log", &old))?;
        } else {
            let to = sibling(path, &(n + 1).to_string());
            std::fs::rename(&old, &to).map_err(|e| with_path(e, "rotating log", &old))?;
        }
    }
    if backups == 0 {
        remove_if_present(path).map_err(|e| with_path(e, "removing full log", path))
    } else {
        std::fs::rename(path, sibling(path, "1")).map_err(|e| with_path(e, "rotating log", path))
    }
}

/// The rotated files of `path` that exist, as (generation, path), oldest (highest number) first.
fn numbered(path: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(with_path(e, "listing log folder", dir)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| with_path(e, "listing log folder", dir))?;
        let file_name = entry.file_name();
        let generation = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(name))
            .and_then(|n| n.strip_prefix('.'))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|&n| n > 0);
        if let Some(n) = generation {
            found.push((n, entry.path()));
        }
    }
    found.sort_by_key(|(n, _)| std::cmp::Reverse(*n));
    Ok(found)
}

/// The files of a rotated log, oldest first: path.N ... path.1, path (only those that exist).
/// A folder that cannot be listed gives what could be found, possibly nothing.
pub fn generations(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = numbered(path)
        .unwrap_or_default()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if path.exists() {
        files.push(path.to_path_buf());
    }
    files
}

/// The log's files opened at one moment: the rotated ones (oldest first) and the current one.
struct Snapshot {
    rotated: Vec<File>,
    current: Option<File>,
}

/// Opens every generation of `path` under the shared lock, so that no rotation moves the files
/// between listing and opening them. The lock is released before anything is read.
fn open_generations(path: &Path) -> io::Result<Snapshot> {
    let lock_path = sibling(path, "lock");
    // No lock file means no writer has ever appended here; there is nothing to coordinate with.
    let lock_file = match File::open(&lock_path) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(with_path(e, "opening lock file", &lock_path)),
    };
    let _guard = match &lock_file {
        Some(f) => Some(FileLock::shared(f).map_err(|e| with_path(e, "locking", &lock_path))?),
        None => None,
    };
    let mut rotated = Vec::new();
    for (_, old) in numbered(path)? {
        if let Some(f) = open_if_present(&old)? {
            rotated.push(f);
        }
    }
    Ok(Snapshot {
        rotated,
        current: open_if_present(path)?,
    })
}

fn open_if_present(path: &Path) -> io::Result<Option<File>> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(with_path(e, "opening log", path)),
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `path` names the same file as the open `file`. A missing `path` names nothing.
fn is_at(path: &Path, file: &File) -> io::Result<bool> {
    agentq_platform::fs::same_file(path, file).map_err(|e| with_path(e, "checking log", path))
}

/// `path` with `.suffix` added to its file name: `events.jsonl` -> `events.jsonl.1`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

/// Keeps the error's kind (callers match on it) and adds what was being done, and to which file.
fn with_path(e: io::Error, about: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{about} {}: {e}", path.display()))
}

/// A lock on a lock file (std's: `flock` on Unix, `LockFileEx` on Windows), released when
/// dropped.
struct FileLock<'f> {
    file: &'f File,
}

impl<'f> FileLock<'f> {
    fn shared(file: &'f File) -> io::Result<FileLock<'f>> {
        retry_interrupted(|| file.lock_shared())?;
        Ok(FileLock { file })
    }

    fn exclusive(file: &'f File) -> io::Result<FileLock<'f>> {
        retry_interrupted(|| file.lock())?;
        Ok(FileLock { file })
    }

    /// Turns a shared lock into an exclusive one. The shared lock is dropped first (as `flock`
    /// would do anyway, and as Windows needs), so two upgraders cannot deadlock; whatever was
    /// checked under the shared lock must be checked again.
    fn upgrade(&self) -> io::Result<()> {
        let _ = self.file.unlock();
        retry_interrupted(|| self.file.lock())
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // Unlocking a lock this process holds cannot fail in a way worth reporting (Wine reports
        // an error though the lock is gone); closing the file would release it anyway.
        let _ = self.file.unlock();
    }
}

fn retry_interrupted(mut f: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// The fields every event has; `data` must not use these names, or the line would hold a key twice.
const FIXED_FIELDS: [&str; 6] = ["ts", "time", "kind", "task", "worker", "message"];

/// One line of the event log.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LogEvent {
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    /// `ts` as RFC 3339 UTC with milliseconds, for people reading the file.
    pub time: String,
    /// `task_queued`, `task_started`, `memory_report`, `task_finished`, `worker_paused`, ...
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub task: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub worker: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub message: String,
    /// Figures of the event (e.g. rss_mb, peak_mb, duration_ms, reason), flattened into the line.
    #[serde(flatten)]
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl LogEvent {
    pub fn new(kind: impl Into<String>, ts_ms: i64) -> Self {
        LogEvent {
            ts: ts_ms,
            time: rfc3339_millis(ts_ms),
            kind: kind.into(),
            task: None,
            worker: None,
            message: String::new(),
            data: serde_json::Map::new(),
        }
    }

    /// An event stamped with the current time.
    pub fn now(kind: impl Into<String>) -> Self {
        LogEvent::new(kind, chrono::Utc::now().timestamp_millis())
    }

    pub fn task(mut self, id: i64) -> Self {
        self.task = Some(id);
        self
    }

    pub fn worker(mut self, name: impl Into<String>) -> Self {
        self.worker = Some(name.into());
        self
    }

    pub fn message(mut self, text: impl Into<String>) -> Self {
        self.message = text.into();
        self
    }

    /// Adds a figure to the line. The key must not be one of the fixed fields (`ts`, `time`,
    /// `kind`, `task`, `worker`, `message`); [`EventLog::append`] refuses an event whose is.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.data.insert(key.into(), value.into());
        self
    }
}

/// An out-of-range time gives an empty `time`; `ts` still holds the number.
fn rfc3339_millis(ts_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ts_ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// The daemon's JSON-lines event log.
#[derive(Debug)]
pub struct EventLog {
    file: RotatingFile,
}

impl EventLog {
    pub fn new(path: PathBuf, max_size: u64, backups: u32) -> EventLog {
        EventLog {
            file: RotatingFile::new(path, max_size, backups),
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Appends one event as one line (compact JSON and `\n`), never split across files.
    pub fn append(&self, e: &LogEvent) -> io::Result<()> {
        if let Some(key) = e.data.keys().find(|k| FIXED_FIELDS.contains(&k.as_str())) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "event {} has a figure named `{key}`, which is a fixed field of every event; \
                     give the figure another name",
                    e.kind
                ),
            ));
        }
        let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
        line.push(b'\n');
        self.file.append(&line)
    }
}

/// Which events to read; `None` lets any value through.
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    pub worker: Option<String>,
    pub task: Option<i64>,
    pub kind: Option<String>,
}

impl LogFilter {
    pub fn matches(&self, e: &LogEvent) -> bool {
        self.worker
            .as_ref()
            .is_none_or(|w| e.worker.as_ref() == Some(w))
            && self.task.is_none_or(|t| e.task == Some(t))
            && self.kind.as_ref().is_none_or(|k| &e.kind == k)
    }
}

/// Reads every event across the generations, oldest first, that passes the filter; lines that
/// are not valid events (a torn last line, garbage) are skipped, not errors. A log that does not
/// exist yet has no events.
pub fn read_events(path: &Path, filter: &LogFilter) -> io::Result<Vec<LogEvent>> {
    let mut events = Vec::new();
    for_each_event(path, filter, |e| events.push(e))?;
    Ok(events)
}

/// As [`read_events`], passing each event to `on_event` instead of keeping them all: a reader
/// that wants only the latest few holds only those, however long the log.
pub fn for_each_event(
    path: &Path,
    filter: &LogFilter,
    mut on_event: impl FnMut(LogEvent),
) -> io::Result<()> {
    let snapshot = open_generations(path)?;
    let mut keep = |e: LogEvent| {
        if filter.matches(&e) {
            on_event(e);
        }
    };
    for mut file in snapshot.rotated.into_iter().chain(snapshot.current) {
        read_whole(&mut file, path, &mut keep)?;
    }
    Ok(())
}

/// Splits what is read from a log into lines, keeping a partial last line until its newline
/// arrives.
#[derive(Default)]
struct Lines {
    pending: Vec<u8>,
    /// Where each read lands, kept between reads (a follower reads every poll).
    chunk: Vec<u8>,
}

impl Lines {
    /// Reads `file` from its position to its end, passing on each complete line as an event.
    fn read(
        &mut self,
        file: &mut File,
        path: &Path,
        on_event: &mut impl FnMut(LogEvent),
    ) -> io::Result<()> {
        // A chunk at a time, so that reading a long log holds a chunk and a partial line, not the
        // whole file (and a copy of it).
        self.chunk.resize(64 * 1024, 0);
        loop {
            let n = match file.read(&mut self.chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(with_path(e, "reading log", path)),
            };
            let start = self.pending.len();
            self.pending.extend_from_slice(&self.chunk[..n]);
            let Some(last_newline) = self.pending[start..].iter().rposition(|&b| b == b'\n') else {
                continue;
            };
            let end = start + last_newline;
            for line in self.pending[..end].split(|&b| b == b'\n') {
                if let Some(e) = parse_event(line) {
                    on_event(e);
                }
            }
            self.pending.drain(..=end);
        }
    }

    /// Ends a file that will get no more lines: an unterminated last line counts if it is a whole
    /// event, and is dropped otherwise.
    fn finish(&mut self, on_event: &mut impl FnMut(LogEvent)) {
        if let Some(e) = parse_event(&self.pending) {
            on_event(e);
        }
        self.pending.clear();
    }
}

fn parse_event(line: &[u8]) -> Option<LogEvent> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    serde_json::from_slice(line).ok()
}

/// Reads a file that is done with (a rotated generation) from its position to the end.
fn read_whole(file: &mut File, path: &Path, on_event: &mut impl FnMut(LogEvent)) -> io::Result<()> {
    let mut lines = Lines::default();
    lines.read(file, path, on_event)?;
    lines.finish(on_event);
    Ok(())
}

/// Follows the log like `tail -F`: yields events appended after the call (or, with `from_start`,
/// everything first), surviving rotation: when `path` becomes another file it finishes the old
/// one, reads any generations rotated in between, then continues with the new `path` from its
/// start. A log that does not exist yet is waited for. Polls every `every`; returns `Ok` when
/// `stop` is cancelled. Reads are plain blocking file reads of what one poll brought (or, with
/// `from_start`, the whole log once), which are short enough not to hold up a tokio worker.
///
/// If more than `backups` rotations happen within one poll, the files rotated past the end are
/// gone and their events are missed.
pub async fn follow(
    path: &Path,
    filter: &LogFilter,
    from_start: bool,
    every: Duration,
    stop: CancellationToken,
    mut on_event: impl FnMut(LogEvent),
) -> io::Result<()> {
    let mut emit = |e: LogEvent| {
        if filter.matches(&e) {
            on_event(e);
        }
    };
    let mut lines = Lines::default();
    let mut current = if from_start {
        let snapshot = open_generations(path)?;
        for mut old in snapshot.rotated {
            read_whole(&mut old, path, &mut emit)?;
        }
        snapshot.current
    } else {
        let mut file = open_if_present(path)?;
        if let Some(f) = file.as_mut() {
            f.seek(SeekFrom::End(0))
                .map_err(|e| with_path(e, "seeking in log", path))?;
        }
        file
    };
    loop {
        if let Some(file) = current.as_mut() {
            restart_if_truncated(file, path, &mut lines)?;
            lines.read(file, path, &mut emit)?;
        }
        let moved = match &current {
            Some(file) => !is_at(path, file)? && path.exists(),
            None => path.exists(),
        };
        if moved {
            current = switch_file(path, current, &mut lines, &mut emit)?;
        }
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Moves [`follow`] from `old` (no longer at `path`) to the file now at `path`: finishes `old`,
/// reads the generations rotated after it, and returns the new file, read up to its end.
fn switch_file(
    path: &Path,
    old: Option<File>,
    lines: &mut Lines,
    emit: &mut impl FnMut(LogEvent),
) -> io::Result<Option<File>> {
    let snapshot = open_generations(path)?;
    if let Some(mut old) = old {
        // Appends that came after the last read and before the rotation.
        lines.read(&mut old, path, emit)?;
        lines.finish(emit);
        let old_id =
            agentq_platform::fs::file_id(&old).map_err(|e| with_path(e, "checking log", path))?;
        // The old file is now one of the rotated ones; those after it came in between. If it is
        // not among them it was rotated past the last backup, and so were any between.
        let mut after_old = false;
        for mut rotated in snapshot.rotated {
            if after_old {
                read_whole(&mut rotated, path, emit)?;
            } else {
                let id = agentq_platform::fs::file_id(&rotated)
                    .map_err(|e| with_path(e, "checking log", path))?;
                after_old = id == old_id;
            }
        }
    }
    let mut current = snapshot.current;
    if let Some(file) = current.as_mut() {
        lines.read(file, path, emit)?;
    }
    Ok(current)
}

/// A file cut shorter than what was already read (a `truncate` or `> file` by hand) is read again
/// from its start, as `tail -F` does.
fn restart_if_truncated(file: &mut File, path: &Path, lines: &mut Lines) -> io::Result<()> {
    let size = file
        .metadata()
        .map_err(|e| with_path(e, "checking log", path))?
        .len();
    let position = file
        .stream_position()
        .map_err(|e| with_path(e, "seeking in log", path))?;
    if size < position {
        file.seek(SeekFrom::Start(0))
            .map_err(|e| with_path(e, "seeking in log", path))?;
        lines.pending.clear();
    }
    Ok(())
}

/// Keeps a folder of per-task logs bounded: of the logs whose file name starts with `prefix`,
/// keeps the `keep` most recently modified and removes the rest. A log counts once together with
/// its rotated generations (`name.1`, ...) and its lock file (`name.lock`), which go with it, so
/// `keep` is a number of logs, not of files. The logs named in `spare` (still being written) are
/// never removed. Returns how many files were removed; a missing folder has nothing to prune.
pub fn prune(dir: &Path, prefix: &str, keep: usize, spare: &[String]) -> io::Result<usize> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(with_path(e, "listing log folder", dir)),
    };
    // log name -> (newest modification of its files, its files)
    let mut logs: std::collections::HashMap<String, (SystemTime, Vec<PathBuf>)> =
        std::collections::HashMap::new();
    for entry in entries {
        let entry = entry.map_err(|e| with_path(e, "listing log folder", dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        let meta = match entry.metadata() {
            Ok(m) => m,
            // Removed by another pruner since the listing.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(with_path(e, "checking", &entry.path())),
        };
        if !meta.is_file() {
            continue;
        }
        let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        let log = logs
            .entry(log_name(&name).to_string())
            .or_insert((SystemTime::UNIX_EPOCH, Vec::new()));
        log.0 = log.0.max(modified);
        log.1.push(entry.path());
    }
    let mut logs: Vec<(String, (SystemTime, Vec<PathBuf>))> = logs.into_iter().collect();
    // Newest first; the name breaks ties so the choice does not depend on listing order.
    logs.sort_by(|a, b| b.1.0.cmp(&a.1.0).then_with(|| b.0.cmp(&a.0)));
    let mut removed = 0;
    for (_, (_, files)) in logs
        .into_iter()
        .skip(keep)
        .filter(|(log, _)| !spare.contains(log))
    {
        for file in files {
            remove_if_present(&file).map_err(|e| with_path(e, "removing old log", &file))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The log a file belongs to: `task_7.log.2` and `task_7.log.lock` belong to `task_7.log`.
fn log_name(file_name: &str) -> &str {
    match file_name.rsplit_once('.') {
        Some((log, "lock")) => log,
        Some((log, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => log,
        _ => file_name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap()
    }

    /// Every line of every generation, oldest first.
    fn all_lines(path: &Path) -> Vec<String> {
        generations(path)
            .iter()
            .flat_map(|p| read(p).lines().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    #[test]
    fn rotation_keeps_at_most_backups_and_newest_data_in_path() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("logs/out.log");
        let f = RotatingFile::new(path.clone(), 100, 2);
        for i in 0..10 {
            f.append(format!("line {i:02} {}\n", "x".repeat(30)).as_bytes())
                .unwrap();
        }
        let gens = generations(&path);
        assert_eq!(
            gens,
            vec![sibling(&path, "2"), sibling(&path, "1"), path.clone()]
        );
        assert!(!sibling(&path, "3").exists());
        assert!(read(&path).ends_with(&format!("line 09 {}\n", "x".repeat(30))));
        for g in &gens {
            assert!(std::fs::metadata(g).unwrap().len() <= 100);
        }
        // The lines that are kept are the newest ones, in order.
        let kept = all_lines(&path);
        let expected: Vec<String> = (10 - kept.len()..10)
            .map(|i| format!("line {i:02} {}", "x".repeat(30)))
            .collect();
        assert_eq!(kept, expected);
    }

    #[test]
    fn no_backups_means_starting_over() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out.log");
        let f = RotatingFile::new(path.clone(), 10, 0);
        f.append(b"first 123\n").unwrap();
        f.append(b"second 12\n").unwrap();
        assert_eq!(generations(&path), vec![path.clone()]);
        assert_eq!(read(&path), "second 12\n");
    }

    #[test]
    fn an_append_larger_than_the_limit_lands_whole_in_a_fresh_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("out.log");
        let f = RotatingFile::new(path.clone(), 10, 3);
        let big = format!("{}\n", "b".repeat(49));
        f.append(b"abc\n").unwrap();
        f.append(big.as_bytes()).unwrap();
        assert_eq!(read(&sibling(&path, "1")), "abc\n");
        assert_eq!(read(&path), big);
        // An empty log takes it without rotating; the next append then starts a new file.
        let other = d.path().join("other.log");
        let g = RotatingFile::new(other.clone(), 10, 3);
        g.append(big.as_bytes()).unwrap();
        assert_eq!(generations(&other), vec![other.clone()]);
        g.append(b"next\n").unwrap();
        assert_eq!(read(&sibling(&other, "1")), big);
        assert_eq!(read(&other), "next\n");
    }

    fn line(writer: usize, i: usize) -> String {
        // ~100 bytes with the newline.
        format!("{writer} {i:05} {}\n", "p".repeat(90))
    }

    /// Every line of every generation is whole, and each appended line is there exactly once.
    fn assert_all_lines_whole(path: &Path, writers: usize, per_writer: usize) {
        let lines = all_lines(path);
        assert_eq!(lines.len(), writers * per_writer);
        let mut seen = HashSet::new();
        for l in &lines {
            let mut parts = l.split(' ');
            let w: usize = parts.next().unwrap().parse().unwrap();
            let i: usize = parts.next().unwrap().parse().unwrap();
            assert_eq!(format!("{l}\n"), line(w, i), "a line was split or mixed");
            assert!(seen.insert((w, i)), "line {w} {i} appears twice");
        }
        assert!(generations(path).len() > 10, "the test should rotate often");
    }

    #[test]
    fn threads_sharing_one_file_lose_and_split_no_line() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("shared.log");
        let f = Arc::new(RotatingFile::new(path.clone(), 20 * 1024, 1000));
        let threads: Vec<_> = (0..2)
            .map(|w| {
                let f = f.clone();
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        f.append(line(w, i).as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_all_lines_whole(&path, 2, 2000);
        // One process serialises its own appends, so the limit holds exactly.
        for g in generations(&path) {
            assert!(std::fs::metadata(&g).unwrap().len() <= 20 * 1024);
        }
    }

    #[test]
    fn separate_instances_on_one_path_lose_and_split_no_line() {
        // Each instance has its own descriptors and lock, as two processes would.
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("shared.log");
        let threads: Vec<_> = (0..2)
            .map(|w| {
                let f = RotatingFile::new(path.clone(), 20 * 1024, 1000);
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        f.append(line(w, i).as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_all_lines_whole(&path, 2, 2000);
    }

    fn event(kind: &str, ts: i64, task: i64, worker: &str) -> LogEvent {
        LogEvent::new(kind, ts).task(task).worker(worker)
    }

    #[test]
    fn events_round_trip_as_single_flat_lines() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("events.jsonl");
        let log = EventLog::new(path.clone(), 1 << 20, 3);
        let e = LogEvent::new("memory_report", 1_700_000_000_123)
            .task(7)
            .worker("w1")
            .message("line one\nline two")
            .with("rss_mb", 512)
            .with("reason", "limit");
        log.append(&e).unwrap();
        log.append(&LogEvent::new("worker_paused", 5)).unwrap();
        let text = read(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains(r#""time":"2023-11-14T22:13:20.123Z""#));
        assert!(lines[0].contains(r#""rss_mb":512"#));
        assert_eq!(
            lines[1],
            r#"{"ts":5,"time":"1970-01-01T00:00:00.005Z","kind":"worker_paused"}"#
        );
        let back = read_events(&path, &LogFilter::default()).unwrap();
        assert_eq!(back, vec![e, LogEvent::new("worker_paused", 5)]);
    }

    #[test]
    fn a_figure_named_like_a_fixed_field_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let log = EventLog::new(d.path().join("events.jsonl"), 1 << 20, 3);
        let err = log
            .append(&LogEvent::new("task_finished", 1).with("kind", "x"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("`kind`"));
    }

    #[test]
    fn read_events_filters_across_generations_and_skips_bad_lines() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("events.jsonl");
        let log = EventLog::new(path.clone(), 300, 10);
        for i in 0..20 {
            let worker = if i % 2 == 0 { "even" } else { "odd" };
            let kind = if i % 5 == 0 {
                "task_queued"
            } else {
                "task_started"
            };
            log.append(&event(kind, i, i % 3, worker)).unwrap();
        }
        assert!(generations(&path).len() > 2);
        // Garbage between lines and a torn last line, as a crash mid-write would leave.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"not json\n\xff\xfe\n\n{\"ts\":99,\"time\":\"x\",\"ki")
            .unwrap();

        let all = read_events(&path, &LogFilter::default()).unwrap();
        assert_eq!(
            all.iter().map(|e| e.ts).collect::<Vec<_>>(),
            (0..20).collect::<Vec<_>>()
        );
        let odd = LogFilter {
            worker: Some("odd".into()),
            ..LogFilter::default()
        };
        assert!(
            read_events(&path, &odd)
                .unwrap()
                .iter()
                .all(|e| e.ts % 2 == 1)
        );
        let queued_task_0 = LogFilter {
            task: Some(0),
            kind: Some("task_queued".into()),
            ..LogFilter::default()
        };
        let ts: Vec<i64> = read_events(&path, &queued_task_0)
            .unwrap()
            .iter()
            .map(|e| e.ts)
            .collect();
        assert_eq!(ts, vec![0, 15]);
        assert!(
            read_events(&d.path().join("missing.jsonl"), &LogFilter::default())
                .unwrap()
                .is_empty()
        );
    }

    /// Polls `done` every few milliseconds for up to two seconds.
    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn follow_sees_new_lines_and_continues_across_rotations() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("events.jsonl");
        let log = EventLog::new(path.clone(), 400, 50);
        log.append(&event("before_start", 0, 0, "w")).unwrap();

        let seen = Arc::new(Mutex::new(Vec::<LogEvent>::new()));
        let stop = CancellationToken::new();
        let follower = {
            let (path, seen, stop) = (path.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                let filter = LogFilter {
                    worker: Some("w".into()),
                    ..LogFilter::default()
                };
                follow(
                    &path,
                    &filter,
                    false,
                    Duration::from_millis(10),
                    stop,
                    |e| seen.lock().unwrap().push(e),
                )
                .await
            })
        };
        let count = |kind: &str| {
            seen.lock()
                .unwrap()
                .iter()
                .filter(|e| e.kind == kind)
                .count()
        };

        // Until a probe is seen the follower may not have opened the log yet.
        let mut probes = 0;
        wait_for("the follower to start", || {
            probes += 1;
            log.append(&event("probe", 0, 0, "w")).unwrap();
            count("probe") > 0
        })
        .await;

        // Many rotations within one poll, then a line written in two pieces, then more rotations.
        for i in 1..=40 {
            log.append(&event("burst", i, i, "w")).unwrap();
            log.append(&event("burst", i, i, "other")).unwrap();
        }
        let mut torn = serde_json::to_vec(&event("torn", 41, 41, "w")).unwrap();
        torn.push(b'\n');
        let raw = RotatingFile::new(path.clone(), 1 << 20, 50);
        raw.append(&torn[..10]).unwrap();
        wait_for("the burst", || count("burst") == 40).await;
        raw.append(&torn[10..]).unwrap();
        for i in 42..=60 {
            log.append(&event("burst", i, i, "w")).unwrap();
        }
        wait_for("everything", || count("burst") == 59).await;
        stop.cancel();
        follower.await.unwrap().unwrap();

        assert!(generations(&path).len() > 10, "the test should rotate");
        let seen = seen.lock().unwrap();
        assert_eq!(count_kind(&seen, "before_start"), 0);
        // Probes appended before the follower opened the log are rightly not seen.
        assert!((1..=probes).contains(&count_kind(&seen, "probe")));
        let after: Vec<i64> = seen
            .iter()
            .filter(|e| e.kind != "probe")
            .map(|e| e.ts)
            .collect();
        assert_eq!(after, (1..=60).collect::<Vec<_>>());
        assert!(seen.iter().all(|e| e.worker.as_deref() == Some("w")));
    }

    fn count_kind(events: &[LogEvent], kind: &str) -> usize {
        events.iter().filter(|e| e.kind == kind).count()
    }

    #[tokio::test]
    async fn follow_from_start_reads_the_old_generations_first() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("events.jsonl");
        let log = EventLog::new(path.clone(), 300, 10);
        for i in 0..10 {
            log.append(&event("old", i, i, "w")).unwrap();
        }
        let seen = Arc::new(Mutex::new(Vec::<i64>::new()));
        let stop = CancellationToken::new();
        let follower = {
            let (path, seen, stop) = (path.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                follow(
                    &path,
                    &LogFilter::default(),
                    true,
                    Duration::from_millis(10),
                    stop,
                    |e| seen.lock().unwrap().push(e.ts),
                )
                .await
            })
        };
        wait_for("the old events", || seen.lock().unwrap().len() == 10).await;
        log.append(&event("new", 10, 10, "w")).unwrap();
        wait_for("the new event", || seen.lock().unwrap().len() == 11).await;
        stop.cancel();
        follower.await.unwrap().unwrap();
        assert_eq!(*seen.lock().unwrap(), (0..11).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn follow_waits_for_a_log_that_does_not_exist_yet() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("later/events.jsonl");
        let seen = Arc::new(Mutex::new(Vec::<i64>::new()));
        let stop = CancellationToken::new();
        let follower = {
            let (path, seen, stop) = (path.clone(), seen.clone(), stop.clone());
            tokio::spawn(async move {
                follow(
                    &path,
                    &LogFilter::default(),
                    false,
                    Duration::from_millis(10),
                    stop,
                    |e| seen.lock().unwrap().push(e.ts),
                )
                .await
            })
        };
        // On this single-threaded runtime, yielding lets the follower make its first poll and
        // find no log, before the log is created.
        tokio::task::yield_now().await;
        assert!(!path.exists());
        let log = EventLog::new(path.clone(), 1 << 20, 3);
        log.append(&event("first", 1, 1, "w")).unwrap();
        wait_for("the first event", || seen.lock().unwrap().len() == 1).await;
        stop.cancel();
        follower.await.unwrap().unwrap();
    }

    #[test]
    fn prune_keeps_the_newest_logs_with_their_generations() {
        let d = tempfile::tempdir().unwrap();
        let base = SystemTime::now() - Duration::from_secs(3600);
        let touch = |name: &str, age_s: u64| {
            let p = d.path().join(name);
            let f = File::create(&p).unwrap();
            f.set_modified(base - Duration::from_secs(age_s)).unwrap();
        };
        for i in 0..5u64 {
            // task_4 is the newest.
            touch(&format!("task_{i}.log"), 100 - i);
        }
        touch("task_0.log.1", 200);
        touch("task_0.log.lock", 200);
        touch("task_4.log.1", 200);
        touch("task_4.log.lock", 200);
        touch("other.txt", 1000);

        // task_1 is still being written: spared.
        let spare = ["task_1.log".to_string()];
        assert_eq!(prune(d.path(), "task_", 2, &spare).unwrap(), 4);
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "other.txt",
                "task_1.log",
                "task_3.log",
                "task_4.log",
                "task_4.log.1",
                "task_4.log.lock"
            ]
        );
        assert_eq!(prune(d.path(), "task_", 2, &spare).unwrap(), 0);
        assert_eq!(prune(d.path(), "task_", 2, &[]).unwrap(), 1);
        assert_eq!(
            prune(&d.path().join("missing"), "task_", 2, &[]).unwrap(),
            0
        );
    }

    #[test]
    fn a_single_writer_log_rotates_without_a_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("task_1.log");
        let log = RotatingFile::single_writer(path.clone(), 100, 1);
        for _ in 0..5 {
            log.append(&[b'x'; 60]).unwrap();
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 60);
        assert_eq!(std::fs::metadata(sibling(&path, "1")).unwrap().len(), 60);
        assert!(!sibling(&path, "2").exists(), "one older file");
        assert!(!sibling(&path, "lock").exists(), "no lock file");
    }
}
