//! An attempt's output turned into transcript entries as it comes: stdout read line by line by the
//! driver's [`Transcribe`] (Claude's, Codex's and Gemini's JSON events; a command agent's lines as
//! they are), stderr line by line as `stderr` entries. The file side is
//! `agentq_core::transcript`.

use std::sync::{Arc, Mutex};

pub use agentq_core::transcript::{Kind, Note, Writer};

/// Reads an agent's stdout, a line at a time, into transcript notes. One per attempt (or per task
/// of a long-lived process), so it may remember what it saw (a tool call's name, to name its
/// result).
pub trait Transcribe: Send {
    fn line(&mut self, line: &str, out: &mut Vec<Note>);
    /// The output ended: what is still held back (text arriving in pieces).
    fn finish(&mut self, _out: &mut Vec<Note>) {}
}

/// Every line as it is: a command agent's stdout.
pub struct Plain;

impl Transcribe for Plain {
    fn line(&mut self, line: &str, out: &mut Vec<Note>) {
        out.push(Note::new(Kind::Stdout, line));
    }
}

/// A stdout line of a JSON-speaking agent that is not JSON (a warning, say): kept as it is,
/// unless blank.
pub fn not_json(line: &str, out: &mut Vec<Note>) {
    if !line.trim().is_empty() {
        out.push(Note::new(Kind::Stdout, line));
    }
}

/// The status line a session's start gives: its id, and the model where it is said.
pub fn session_started(session: Option<&str>, model: Option<&str>) -> Note {
    let mut said = format!("session {}", session.unwrap_or("?"));
    if let Some(model) = model {
        said.push_str(&format!(", model {model}"));
    }
    Note::new(Kind::Status, said)
}

/// Every note a reader makes of `recorded`, read line by line to its end (for drivers' tests).
#[cfg(test)]
pub(crate) fn read_all(mut reader: impl Transcribe, recorded: &str) -> Vec<Note> {
    let mut notes = Vec::new();
    for line in recorded.lines() {
        reader.line(line, &mut notes);
    }
    reader.finish(&mut notes);
    notes
}

/// A summary of a tool's input for a transcript line: the one field that says what it does
/// (a command, a path, a pattern, a query), else the input's JSON.
pub fn summarise_input(input: &serde_json::Value) -> String {
    const TELLING: &[&str] = &[
        "command",
        "cmd",
        "file_path",
        "path",
        "dir_path",
        "absolute_path",
        "pattern",
        "query",
        "url",
        "prompt",
        "description",
    ];
    if let Some(text) = input.as_str() {
        return text.to_string();
    }
    for key in TELLING {
        match input.get(key) {
            Some(serde_json::Value::String(s)) => return s.clone(),
            Some(serde_json::Value::Array(parts)) if !parts.is_empty() => {
                return parts
                    .iter()
                    .map(|p| p.as_str().map_or_else(|| p.to_string(), str::to_string))
                    .collect::<Vec<_>>()
                    .join(" ");
            }
            _ => {}
        }
    }
    input.to_string()
}

/// Text content as a tool result or message gives it: a string, or a list of blocks whose `text`
/// parts are joined.
pub fn text_of(content: &serde_json::Value) -> String {
    match content {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(serde_json::Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// One attempt's transcript: splits stdout and stderr into lines, has the driver read stdout's,
/// and writes the notes. Shared by the stdout and stderr readers.
pub struct Transcript {
    writer: Writer,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Transcript {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcript")
            .field("path", &self.writer.path())
            .finish_non_exhaustive()
    }
}

struct Inner {
    reader: Box<dyn Transcribe>,
    out: Vec<u8>,
    err: Vec<u8>,
}

/// A line longer than this is cut into pieces: a transcript is read by people.
const LONGEST_LINE: usize = 1 << 20;

impl Transcript {
    pub fn new(writer: Writer, reader: Box<dyn Transcribe>) -> Arc<Transcript> {
        Arc::new(Transcript {
            writer,
            inner: Mutex::new(Inner {
                reader,
                out: Vec::new(),
                err: Vec::new(),
            }),
        })
    }

    pub fn path(&self) -> &std::path::Path {
        self.writer.path()
    }

    /// Bytes from the agent's stdout.
    pub fn stdout(&self, bytes: &[u8]) {
        let mut notes = Vec::new();
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let Inner { reader, out, .. } = &mut *inner;
            for line in complete_lines(out, bytes) {
                reader.line(&line, &mut notes);
            }
        }
        self.writer.write(notes);
    }

    /// A whole line from the agent's stdout (a long-lived process's reader splits them itself).
    pub fn stdout_line(&self, line: &str) {
        let mut notes = Vec::new();
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .reader
            .line(line, &mut notes);
        self.writer.write(notes);
    }

    /// Bytes from the agent's stderr.
    pub fn stderr(&self, bytes: &[u8]) {
        let lines = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            complete_lines(&mut inner.err, bytes)
        };
        self.writer.write(
            lines
                .into_iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| Note::new(Kind::Stderr, l))
                .collect(),
        );
    }

    /// A notice of agentq's own (a restart, an interrupt), in the agent's stream.
    pub fn note(&self, note: Note) {
        self.writer.write(vec![note]);
    }

    /// The output ended: lines without their newline, and what the driver held back.
    pub fn finish(&self) {
        let mut notes = Vec::new();
        {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            let Inner { reader, out, err } = &mut *inner;
            if !out.is_empty() {
                let line = String::from_utf8_lossy(out).into_owned();
                out.clear();
                reader.line(trim_cr(&line), &mut notes);
            }
            reader.finish(&mut notes);
            if !err.trim_ascii().is_empty() {
                notes.push(Note::new(Kind::Stderr, String::from_utf8_lossy(err)));
            }
            err.clear();
        }
        self.writer.write(notes);
    }
}

/// Appends `bytes` to `pending` and takes out the lines it completes (without `\r\n`/`\n`). A
/// line past [`LONGEST_LINE`] is given out in pieces of that size.
fn complete_lines(pending: &mut Vec<u8>, bytes: &[u8]) -> Vec<String> {
    pending.extend_from_slice(bytes);
    let mut lines = Vec::new();
    let mut start = 0;
    while let Some(at) = pending[start..].iter().position(|b| *b == b'\n') {
        let line = String::from_utf8_lossy(&pending[start..start + at]);
        lines.push(trim_cr(&line).to_string());
        start += at + 1;
    }
    pending.drain(..start);
    while pending.len() > LONGEST_LINE {
        let piece: Vec<u8> = pending.drain(..LONGEST_LINE).collect();
        lines.push(String::from_utf8_lossy(&piece).into_owned());
    }
    lines
}

fn trim_cr(line: &str) -> &str {
    line.strip_suffix('\r').unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentq_core::transcript::read_after;

    #[test]
    fn lines_are_split_across_reads_and_stderr_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let t = Transcript::new(Writer::open(path.clone(), 1 << 20, 1), Box::new(Plain));
        t.stdout(b"hel");
        t.stderr(b"warn");
        t.stdout(b"lo\r\nwor");
        t.stderr(b"ing\n\n");
        t.stdout(b"ld");
        t.finish();
        let got: Vec<(Kind, String)> = read_after(&path, 0)
            .unwrap()
            .entries
            .into_iter()
            .map(|e| (e.kind, e.text))
            .collect();
        assert_eq!(
            got,
            [
                (Kind::Stdout, "hello".to_string()),
                (Kind::Stderr, "warning".to_string()),
                (Kind::Stdout, "world".to_string()),
            ]
        );
    }

    #[test]
    fn a_tool_input_is_summarised_by_its_telling_field() {
        use serde_json::json;
        assert_eq!(summarise_input(&json!({"command": "ls -la"})), "ls -la");
        assert_eq!(
            summarise_input(&json!({"file_path": "/a/b.rs", "content": "..."})),
            "/a/b.rs"
        );
        assert_eq!(
            summarise_input(&json!({"command": ["bash", "-lc", "ls"]})),
            "bash -lc ls"
        );
        assert_eq!(summarise_input(&json!({"x": 1})), r#"{"x":1}"#);
    }
}
