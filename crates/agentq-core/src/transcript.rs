//! A task's transcript: what its agent did, as typed entries (assistant text, tool calls and their
//! results, thinking, status, stdout and stderr lines, the result), one JSON object per line in
//! `.agentq/transcripts/<worker or pool>/task_<id>.jsonl`.
//!
//! Each driver turns its agent's output into entries (`agentq_agents::transcript`); this module
//! owns the file: writing (one writer per attempt, the runner's), reading, and following.
//!
//! # How it works
//!
//! Every entry carries `seq`, counted from 1 across all of a task's attempts: the writer of a
//! later attempt starts after the last `seq` it finds in the file. Readers ask for what comes
//! after a `seq` they already have ([`read_after`], a [`Cursor`] for following), which is also the
//! `id` of the API's server-sent events, so a client that reconnects with `Last-Event-ID` misses
//! nothing and sees nothing twice. The file is a [`RotatingFile`] with one older generation, like
//! the agent log: the newest part of a long transcript is kept. What rotation took away before a
//! reader got to it is reported to it as a gap, never silently skipped.
//!
//! Writing never fails an attempt: a transcript is a record, not the result; a write that fails
//! is said once in the daemon's log and the rest of the attempt's entries are dropped.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use crate::logfile::{RotatingFile, generations};

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The assistant's text.
    Text,
    /// The model's thinking, or a summary of its reasoning.
    Thinking,
    /// A tool called: `tool` names it, `text` summarises its input.
    ToolCall,
    /// What a tool gave back, summarised; `error` when it failed.
    ToolResult,
    /// The agent's own notices: session started, model, usage limit, retries.
    Status,
    /// A line of a command agent's stdout (or a line a driver could not read).
    Stdout,
    /// A line of the agent's stderr.
    Stderr,
    /// The final result.
    Result,
}

impl Kind {
    /// How many bytes of text an entry of this kind keeps: a transcript is for watching, and the
    /// full output is in the agent log.
    pub fn cap(self) -> usize {
        match self {
            Kind::Text | Kind::Result | Kind::Thinking => 64 << 10,
            Kind::ToolCall => 2 << 10,
            Kind::ToolResult => 4 << 10,
            Kind::Status | Kind::Stdout | Kind::Stderr => 16 << 10,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Thinking => "thinking",
            Kind::ToolCall => "tool_call",
            Kind::ToolResult => "tool_result",
            Kind::Status => "status",
            Kind::Stdout => "stdout",
            Kind::Stderr => "stderr",
            Kind::Result => "result",
        }
    }
}

/// What a driver read from its agent, before it is numbered and stamped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub kind: Kind,
    pub tool: Option<String>,
    pub text: String,
    pub error: bool,
}

impl Note {
    pub fn new(kind: Kind, text: impl Into<String>) -> Note {
        Note {
            kind,
            tool: None,
            text: text.into(),
            error: false,
        }
    }

    pub fn tool(mut self, name: impl Into<String>) -> Note {
        self.tool = Some(name.into());
        self
    }

    pub fn error(mut self, error: bool) -> Note {
        self.error = error;
        self
    }
}

/// One line of a transcript.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// 1, 2, 3, ... across the task's attempts.
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub ts: i64,
    pub attempt: u32,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub error: bool,
}

/// Where a task's transcript is, under the state folder: `transcripts/<folder>/task_<id>.jsonl`,
/// the folder being its worker's name or `pool`.
pub fn path(state_dir: &Path, folder: &str, task: i64) -> PathBuf {
    state_dir
        .join(DIR)
        .join(folder)
        .join(format!("task_{task}.jsonl"))
}

/// The transcripts' folder under the state folder.
pub const DIR: &str = "transcripts";

/// Cuts `text` to at most `cap` bytes, on a character boundary, saying how much was left out.
pub fn cut(mut text: String, cap: usize) -> String {
    if text.len() <= cap {
        return text;
    }
    let total = text.len();
    let mut end = cap;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(&format!(" … ({} more bytes)", total - end));
    text
}

/// The writer of one attempt's entries.
#[derive(Debug)]
pub struct Writer {
    file: RotatingFile,
    attempt: u32,
    last: Mutex<u64>,
    failed: AtomicBool,
}

impl Writer {
    /// A writer for attempt `attempt` of the transcript at `path`, numbering on from what is
    /// there (an earlier attempt's entries). Nothing is created before the first entry.
    pub fn open(path: PathBuf, max_size: u64, attempt: u32) -> Writer {
        let last = last_seq(&path);
        Writer {
            file: RotatingFile::single_writer(path, max_size, 1),
            attempt,
            last: Mutex::new(last),
            failed: AtomicBool::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Appends the notes, stamped now, in one write.
    pub fn write(&self, notes: Vec<Note>) {
        if notes.is_empty() || self.failed.load(Ordering::Relaxed) {
            return;
        }
        let ts = chrono::Utc::now().timestamp_millis();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let mut bytes = Vec::new();
        for note in notes {
            *last += 1;
            let entry = Entry {
                seq: *last,
                ts,
                attempt: self.attempt,
                text: cut(note.text, note.kind.cap()),
                kind: note.kind,
                tool: note.tool,
                error: note.error,
            };
            serde_json::to_writer(&mut bytes, &entry).expect("entries serialise");
            bytes.push(b'\n');
        }
        if let Err(e) = self.file.append(&bytes) {
            self.failed.store(true, Ordering::Relaxed);
            tracing::warn!(
                "cannot write the transcript {}: {e}; the rest of this attempt's is dropped",
                self.file.path().display()
            );
        }
    }
}

/// The last `seq` in the transcript at `path`, 0 if there is none: read from the end of its
/// newest generation that has an entry.
fn last_seq(path: &Path) -> u64 {
    for file in generations(path).iter().rev() {
        if let Some(seq) = last_seq_of(file) {
            return seq;
        }
    }
    0
}

fn last_seq_of(path: &Path) -> Option<u64> {
    let mut file = File::open(path).ok()?;
    let size = file.metadata().ok()?.len();
    let from = size.saturating_sub(256 << 10);
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    tail.split(|b| *b == b'\n')
        .rev()
        .find_map(|line| serde_json::from_slice::<Entry>(line).ok())
        .map(|e| e.seq)
}

/// What a read found: the entries after the `seq` asked for, and the ones that were wanted but
/// are gone (rotated away), as the first and last missing `seq`.
#[derive(Debug, Default, PartialEq)]
pub struct Found {
    pub entries: Vec<Entry>,
    pub missed: Option<(u64, u64)>,
}

/// Every entry after `after` (0: all), oldest first. A transcript that does not exist reads as
/// empty; [`exists`] tells the two apart.
pub fn read_after(path: &Path, after: u64) -> io::Result<Found> {
    let mut cursor = Cursor::new(path.to_path_buf(), after);
    cursor.read()
}

/// Whether the task has a transcript yet.
pub fn exists(path: &Path) -> bool {
    !generations(path).is_empty()
}

/// The last `n` entries (all with `n` = 0).
pub fn read_last(path: &Path, n: usize) -> io::Result<Vec<Entry>> {
    let mut entries = read_after(path, 0)?.entries;
    if n > 0 && entries.len() > n {
        entries.drain(..entries.len() - n);
    }
    Ok(entries)
}

/// Reads a transcript as it grows: each [`Cursor::read`] gives what was appended since the last,
/// across rotations.
#[derive(Debug)]
pub struct Cursor {
    path: PathBuf,
    /// The last `seq` given out.
    after: u64,
    /// The current generation, open, with the part of a line not yet complete.
    open: Option<(File, Vec<u8>)>,
}

impl Cursor {
    pub fn new(path: PathBuf, after: u64) -> Cursor {
        Cursor {
            path,
            after,
            open: None,
        }
    }

    /// The last `seq` given out.
    pub fn position(&self) -> u64 {
        self.after
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lets go of the open file; the next read opens the transcript again.
    pub fn close(&mut self) {
        self.open = None;
    }

    /// What was appended since the last read. Reads the open file on while it is still the one at
    /// the path; after a rotation (or the first time), every generation from the oldest.
    pub fn read(&mut self) -> io::Result<Found> {
        let mut found = Found::default();
        let still_here = match &self.open {
            Some((file, _)) => is_at(&self.path, file),
            None => false,
        };
        if let (true, Some((file, pending))) = (still_here, self.open.as_mut()) {
            read_lines(file, pending, &mut found.entries)?;
        } else {
            // Finish the old file first (appends before its rotation), then the generations.
            if let Some((mut file, mut pending)) = self.open.take() {
                read_lines(&mut file, &mut pending, &mut found.entries)?;
            }
            let files = generations(&self.path);
            let count = files.len();
            for (i, path) in files.into_iter().enumerate() {
                let mut file = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let mut pending = Vec::new();
                read_lines(&mut file, &mut pending, &mut found.entries)?;
                if i + 1 == count && path == self.path {
                    self.open = Some((file, pending));
                }
            }
        }
        found.entries.retain(|e| e.seq > self.after);
        found.entries.sort_by_key(|e| e.seq);
        found.entries.dedup_by_key(|e| e.seq);
        if let Some(first) = found.entries.first()
            && first.seq > self.after + 1
        {
            found.missed = Some((self.after + 1, first.seq - 1));
        }
        if let Some(last) = found.entries.last() {
            self.after = last.seq;
        }
        Ok(found)
    }
}

/// Reads complete lines from `file`'s position on; a last line without its newline waits in
/// `pending` for the rest.
fn read_lines(file: &mut File, pending: &mut Vec<u8>, out: &mut Vec<Entry>) -> io::Result<()> {
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    pending.extend_from_slice(&bytes);
    let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
        return Ok(());
    };
    for line in pending[..end].split(|b| *b == b'\n') {
        // A torn line (a crash mid-write) is skipped, as in the event log.
        if let Ok(entry) = serde_json::from_slice::<Entry>(line) {
            out.push(entry);
        }
    }
    pending.drain(..=end);
    Ok(())
}

/// Whether `file` is still the file at `path`.
fn is_at(path: &Path, file: &File) -> bool {
    let Ok(there) = File::open(path) else {
        return false;
    };
    match (
        agentq_platform::fs::file_id(file),
        agentq_platform::fs::file_id(&there),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notes(texts: &[&str]) -> Vec<Note> {
        texts.iter().map(|t| Note::new(Kind::Stdout, *t)).collect()
    }

    #[test]
    fn entries_are_numbered_on_across_attempts_and_read_after_a_seq() {
        let dir = tempfile::tempdir().unwrap();
        let path = super::path(dir.path(), "w", 7);
        assert!(!exists(&path));
        let first = Writer::open(path.clone(), 1 << 20, 1);
        first.write(notes(&["a", "b"]));
        drop(first);
        let second = Writer::open(path.clone(), 1 << 20, 2);
        second.write(vec![
            Note::new(Kind::ToolCall, "ls").tool("Bash"),
            Note::new(Kind::Stderr, "oops"),
        ]);
        let all = read_after(&path, 0).unwrap();
        let seqs: Vec<(u64, u32)> = all.entries.iter().map(|e| (e.seq, e.attempt)).collect();
        assert_eq!(seqs, [(1, 1), (2, 1), (3, 2), (4, 2)]);
        assert_eq!(all.entries[2].tool.as_deref(), Some("Bash"));
        assert_eq!(all.missed, None);
        let later = read_after(&path, 2).unwrap();
        assert_eq!(later.entries.len(), 2);
        assert_eq!(read_last(&path, 1).unwrap()[0].text, "oops");
    }

    #[test]
    fn a_cursor_follows_growth_and_rotation_and_reports_what_it_missed() {
        let dir = tempfile::tempdir().unwrap();
        let path = super::path(dir.path(), "w", 1);
        // Small enough that every few entries rotate.
        let writer = Writer::open(path.clone(), 300, 1);
        let mut cursor = Cursor::new(path.clone(), 0);
        assert_eq!(cursor.read().unwrap(), Found::default());
        writer.write(notes(&["one"]));
        assert_eq!(cursor.read().unwrap().entries[0].text, "one");
        let mut seen = vec![1];
        for i in 2..=12 {
            writer.write(notes(&[&format!("line {i}")]));
            if i % 2 == 0 {
                let found = cursor.read().unwrap();
                assert_eq!(found.missed, None, "read often enough to miss nothing");
                seen.extend(found.entries.iter().map(|e| e.seq));
            }
        }
        assert_eq!(seen, (1..=12).collect::<Vec<u64>>());
        // A reader far behind finds the oldest entries rotated away, and is told which.
        let found = read_after(&path, 0).unwrap();
        let (from, to) = found.missed.expect("rotated away");
        assert_eq!(from, 1);
        assert_eq!(to + 1, found.entries[0].seq);
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_and_says_so() {
        let cut = cut("é".repeat(10), 5);
        assert!(cut.starts_with("éé"), "{cut}");
        assert!(cut.ends_with("(16 more bytes)"), "{cut}");
    }
}
