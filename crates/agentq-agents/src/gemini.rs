//! Google's Gemini CLI (`agent = "gemini"`, the npm package `@google/gemini-cli`): one process per
//! task, `--output-format=stream-json`, the prompt on stdin, and the conversation continued with
//! `--resume <session id>`.
//!
//! Facts this relies on, checked against the pinned version (see the README's test command and
//! `../shared/notes/gemini-cli.md`):
//! - without `-p`, a stdin that is not a terminal is the prompt;
//! - `--session-id <uuid>` starts a session under an id the caller chose (so agentq stores it
//!   before the process starts, as for Claude), `--resume <uuid>` continues it; sessions are kept
//!   per working directory;
//! - stream-json prints `init` (with `session_id`), `message`s (the assistant's text in `delta`
//!   pieces), `tool_use`/`tool_result`, and one `result` with `status` and per-run `stats`;
//! - exit codes: 41 auth, 42 bad input (a resume that finds nothing), 44 sandbox, 52 config,
//!   53 turn limit, 55 untrusted folder, 130 cancelled, and an API error's HTTP status & 0xFF
//!   (173 for 429, 244 for 500) once its own retries (`general.maxAttempts`) are spent;
//! - in a folder it does not trust it refuses to run (exit 55) unless `--skip-trust`;
//! - its shell and write tools are declared only with `--approval-mode=yolo`; `auto_edit` adds
//!   the edit tools; the default has neither, in a headless run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::transcript::{Kind, Note, Transcribe, not_json, session_started, summarise_input};

use super::{
    Conversation, Counted, Driver, End, Environment, Join, Limit, Output, Package, Read, Reply,
    Reported, SessionPolicy, first_line, last_line,
};
use agentq_core::domain::Cause;

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// From config; `AGENTQ_GEMINI_BIN` overrides it, and `gemini` on PATH is the default.
    pub bin: Option<PathBuf>,
    pub model: Option<String>,
    /// `default`, `auto_edit`, `yolo` or `plan`; `None`: the CLI's default.
    pub approval_mode: Option<String>,
    /// Run in a folder the CLI does not trust (`--skip-trust`).
    pub trust_workspace: bool,
    pub session: SessionPolicy,
    pub extra_args: Vec<String>,
}

/// The approval modes the CLI knows.
pub const APPROVAL_MODES: [&str; 4] = ["default", "auto_edit", "yolo", "plan"];

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bin: None,
            model: None,
            approval_mode: None,
            trust_workspace: false,
            session: SessionPolicy::Resume,
            extra_args: Vec::new(),
        }
    }
}

/// Variables the CLI sets for the commands it runs (and its own relaunch): a gemini started
/// under them would think itself inside a parent's sandbox or trusted folder.
/// `GEMINI_SANDBOX` too: in a container sandbox the CLI passes the prompt on its command line,
/// and offline it cannot start one (a worker's `env` may still set it).
const NESTING: &[&str] = &[
    "GEMINI_CLI",
    "GEMINI_CLI_NO_RELAUNCH",
    "GEMINI_CLI_TRUST_WORKSPACE",
    "GEMINI_SANDBOX",
    "SANDBOX",
];

/// The npm package; scripts/test installs the tested version.
pub const PACKAGE: Package = Package {
    title: "Gemini CLI",
    bin_variable: "AGENTQ_GEMINI_BIN",
    install: "npm install -g @google/gemini-cli",
    tested_version: "0.61.0",
    credentials: &[
        "GEMINI_API_KEY",
        "GOOGLE_API_KEY",
        "GOOGLE_GEMINI_BASE_URL",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_GENAI_USE_VERTEXAI",
    ],
};

impl Driver for Settings {
    fn name(&self) -> &'static str {
        "gemini"
    }

    fn package(&self) -> Option<&'static Package> {
        Some(&PACKAGE)
    }

    fn configured_bin(&self) -> Option<&PathBuf> {
        self.bin.as_ref()
    }

    fn conversation(&self) -> Option<Conversation> {
        Some(Conversation {
            policy: self.session,
            named_by_caller: true,
        })
    }

    fn command(&self, program: &Path, join: Option<&Join>, _spent: f64) -> Vec<String> {
        let mut argv = vec![
            program.to_string_lossy().into_owned(),
            "--output-format=stream-json".into(),
        ];
        match join {
            Some(Join::Start(id)) => argv.push(format!("--session-id={id}")),
            Some(Join::Resume(id)) => argv.push(format!("--resume={id}")),
            Some(Join::New) | None => {}
        }
        if let Some(model) = &self.model {
            argv.push(format!("--model={model}"));
        }
        if let Some(mode) = &self.approval_mode {
            argv.push(format!("--approval-mode={mode}"));
        }
        if self.trust_workspace {
            argv.push("--skip-trust".into());
        }
        argv.extend(self.extra_args.iter().cloned());
        argv
    }

    /// Its launcher starts node a second time, with a heap sized to the machine; a worker's
    /// `env` may set `GEMINI_CLI_NO_RELAUNCH = "true"` to save that start (0.7 s a task) at the
    /// cost of node's default heap.
    fn environment(&self, parent: &BTreeMap<String, String>) -> Environment {
        Environment::default().removing(parent, NESTING, &[])
    }

    fn warnings(&self, idle_timeout: Option<std::time::Duration>) -> Vec<String> {
        super::quiet_while_thinking("gemini", idle_timeout)
    }

    fn final_line(&self) -> Option<fn(&str) -> bool> {
        Some(is_result_line)
    }

    fn output_is_a_stream(&self) -> bool {
        true
    }

    fn transcriber(&self) -> Box<dyn Transcribe> {
        Box::new(Transcriber::default())
    }

    fn read(&self, out: &Output) -> Read {
        let run = Run::read(out.stdout);
        let code = out.exit_code.unwrap_or(0);
        let stderr_error = stderr_error(out.stderr);
        let message = run
            .error
            .clone()
            .or(stderr_error.as_ref().map(|(m, _)| m.clone()));
        let both = format!("{}\n{}", message.as_deref().unwrap_or(""), out.stderr);
        if code == 42 && gone(&both) {
            return Read::Gone;
        }
        if run.status.as_deref() == Some("success") && code == 0 {
            return Read::Reply(run.reply(End::Done));
        }
        if run.status.is_none() && message.is_none() {
            if code == 0 {
                return Read::Nothing;
            }
            return match verdict(code, last_line(out.stderr, ""), out.now) {
                Some(end) => Read::Reply(run.reply(end)),
                None => Read::Nothing,
            };
        }
        let message = message.unwrap_or_else(|| last_line(out.stderr, "no message").to_string());
        let status = stderr_error.and_then(|(_, s)| s).or(match code {
            173 => Some(429),
            244 => Some(500),
            _ => None,
        });
        let end = match limit_of(&message, status, out.now) {
            Some(limit) => End::Limited(limit),
            None => verdict(code, &message, out.now).unwrap_or_else(|| {
                End::failed(
                    Cause::AgentError,
                    format!("gemini: {}", first_line(&message, 300)),
                )
            }),
        };
        Read::Reply(run.reply(end))
    }
}

/// What an exit code says, with the message that came with it.
fn verdict(code: i32, message: &str, now: chrono::DateTime<chrono::Local>) -> Option<End> {
    let said = first_line(message, 300);
    let config = |what: &str| End::Failed {
        cause: Cause::Config,
        reason: format!("gemini: {what}: {said}"),
        retryable: false,
    };
    Some(match code {
        41 => config("authentication failed (exit 41)"),
        44 => config("its sandbox could not start (exit 44)"),
        52 => config("its configuration was refused (exit 52)"),
        55 => End::Failed {
            cause: Cause::Config,
            reason: "gemini does not trust the worker's folder (exit 55): set trust_workspace = true, or trust the folder in gemini once".into(),
            retryable: false,
        },
        53 => End::Full(format!(
            "gemini: the session's turn limit was reached (exit 53): {said}"
        )),
        // 42: its own input checks; 144: the API's 400 (& 0xFF).
        42 | 144 => End::Failed {
            cause: Cause::BadInput,
            reason: format!("gemini: its input was refused (exit {code}): {said}"),
            retryable: false,
        },
        173 => End::Limited(limit_of(message, Some(429), now)?),
        _ => return None,
    })
}

fn gone(text: &str) -> bool {
    let lower = text.to_lowercase();
    lower.contains("no previous sessions found")
        || lower.contains("error resuming session")
        || lower.contains("invalid session identifier")
        || (lower.contains("session") && lower.contains("not found"))
}

/// The JSON error a failed run ends its stderr with, pretty-printed over several lines
/// (`{"session_id":..,"error":{"message":..,"code":429}}`), with its HTTP status when it has one.
fn stderr_error(stderr: &str) -> Option<(String, Option<u16>)> {
    let trimmed = stderr.trim_end();
    let start = if trimmed.starts_with('{') {
        0
    } else {
        trimmed.rfind("\n{")? + 1
    };
    let v: Value = serde_json::from_str(&trimmed[start..]).ok()?;
    let error = v.get("error")?;
    let message = error.get("message")?.as_str()?.to_string();
    let code = error
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u16::try_from(c).ok());
    Some((message, code))
}

/// Whether a line of stream-json output is the `result` that ends a run.
pub fn is_result_line(line: &str) -> bool {
    super::is_json_of_type(line, &["result"])
}

/// What one stream-json run printed.
#[derive(Debug, Default)]
struct Run {
    session: Option<String>,
    text: String,
    /// `result.status`: `success` or `error`.
    status: Option<String>,
    error: Option<String>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl Run {
    fn read(stdout: &str) -> Run {
        let mut run = Run::default();
        for line in stdout.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
                continue;
            };
            let str_at = |ptr: &str| v.pointer(ptr).and_then(Value::as_str).map(str::to_string);
            match v.get("type").and_then(Value::as_str).unwrap_or("") {
                "init" => run.session = str_at("/session_id"),
                "message" if str_at("/role").as_deref() == Some("assistant") => {
                    let piece = str_at("/content").unwrap_or_default();
                    if v.get("delta").and_then(Value::as_bool) == Some(true) {
                        run.text.push_str(&piece);
                    } else {
                        run.text = piece;
                    }
                }
                // What it said before a tool call was on the way: the answer is what follows
                // the last one (as Claude's result and Codex's last message are).
                "tool_use" | "tool_result" => run.text.clear(),
                "result" => {
                    run.status = str_at("/status");
                    if let Some(message) = str_at("/error/message") {
                        run.error = Some(message);
                    }
                    let stat = |k: &str| v.pointer(&format!("/stats/{k}")).and_then(Value::as_u64);
                    run.input_tokens = stat("input_tokens");
                    run.output_tokens = stat("output_tokens");
                }
                "error" if str_at("/severity").as_deref() == Some("error") => {
                    run.error = str_at("/message");
                }
                _ => {}
            }
        }
        run
    }

    fn reply(self, end: End) -> Reply {
        Reply {
            text: self.text,
            session: self.session,
            usage: Reported {
                cost_usd: None,
                input_tokens: self.input_tokens.map(Counted::Run),
                output_tokens: self.output_tokens.map(Counted::Run),
                turns: None,
            },
            end,
        }
    }
}

/// A quota or rate limit: an HTTP 429, `RESOURCE_EXHAUSTED`, or the API's quota message, with the
/// wait it suggests (`Suggested retry after 2s`), if any.
fn limit_of(
    message: &str,
    status: Option<u16>,
    now: chrono::DateTime<chrono::Local>,
) -> Option<Limit> {
    let limited = status == Some(429) || super::says_limit(message);
    limited.then(|| Limit {
        until: super::retry_after(message, now),
        message: first_line(message.trim_start_matches("[API Error: "), 200),
    })
}

/// Gemini's stream-json events as transcript entries: `init` as a status, the assistant's text
/// (which comes in pieces: held until a line is whole or another event comes), tool calls and their
/// results (named by their call), errors, and the `result` as how the run ended.
#[derive(Default)]
pub struct Transcriber {
    /// Tool call ids and their tools' names.
    tools: BTreeMap<String, String>,
    /// Assistant text not yet a whole line.
    text: String,
}

impl Transcriber {
    /// Gives out the held text's whole lines; with `all`, the rest too.
    fn flush(&mut self, all: bool, out: &mut Vec<Note>) {
        let end = if all {
            self.text.len()
        } else {
            match self.text.rfind('\n') {
                Some(at) => at + 1,
                None => return,
            }
        };
        let said: String = self.text.drain(..end).collect();
        let said = said.trim_end_matches('\n');
        if !said.trim().is_empty() {
            out.push(Note::new(Kind::Text, said));
        }
    }
}

impl Transcribe for Transcriber {
    fn line(&mut self, line: &str, out: &mut Vec<Note>) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            if !line.trim().is_empty() {
                self.flush(true, out);
            }
            return not_json(line, out);
        };
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let kind = v.get("type").and_then(Value::as_str);
        if kind == Some("message") {
            if text(&v, "role").as_deref() == Some("assistant") {
                self.text.push_str(&text(&v, "content").unwrap_or_default());
                if v.get("delta").and_then(Value::as_bool) == Some(true) {
                    self.flush(false, out);
                } else {
                    self.flush(true, out);
                }
            }
            return;
        }
        self.flush(true, out);
        let error_text = |v: &Value| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| text(v, "message"))
                .unwrap_or_default()
        };
        match kind {
            Some("init") => out.push(session_started(
                text(&v, "session_id").as_deref(),
                text(&v, "model").as_deref(),
            )),
            Some("tool_use") => {
                let name = text(&v, "tool_name").unwrap_or_else(|| "tool".into());
                if let Some(id) = text(&v, "tool_id") {
                    self.tools.insert(id, name.clone());
                }
                let input = v.get("parameters").cloned().unwrap_or(Value::Null);
                out.push(Note::new(Kind::ToolCall, summarise_input(&input)).tool(name));
            }
            Some("tool_result") => {
                let name = text(&v, "tool_id")
                    .and_then(|id| self.tools.get(&id).cloned())
                    .unwrap_or_else(|| "tool".into());
                let failed = text(&v, "status").is_some_and(|s| s != "success");
                let said = text(&v, "output")
                    .or_else(|| text(&v, "status"))
                    .unwrap_or_default();
                out.push(Note::new(Kind::ToolResult, said).tool(name).error(failed));
            }
            Some("error") => out.push(Note::new(Kind::Status, error_text(&v)).error(true)),
            Some("result") => {
                if text(&v, "status").as_deref() == Some("success") {
                    let stats = v.get("stats").unwrap_or(&Value::Null);
                    let n = |k: &str| stats.get(k).and_then(Value::as_u64).unwrap_or(0);
                    out.push(Note::new(
                        Kind::Result,
                        format!(
                            "done · {} in / {} out tokens",
                            n("input_tokens"),
                            n("output_tokens")
                        ),
                    ));
                } else {
                    out.push(
                        Note::new(Kind::Result, format!("failed: {}", error_text(&v))).error(true),
                    );
                }
            }
            _ => {}
        }
    }

    fn finish(&mut self, out: &mut Vec<Note>) {
        self.flush(true, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcribed(recorded: &str) -> Vec<(Kind, Option<String>, String, bool)> {
        crate::transcript::read_all(Transcriber::default(), recorded)
            .into_iter()
            .map(|n| (n.kind, n.tool, n.text, n.error))
            .collect()
    }

    #[test]
    fn recorded_runs_read_as_tool_calls_whole_text_and_ends() {
        let run = transcribed(include_str!(
            "../../../fake-anthropic/fixtures/gemini/tool-not-registered.stream.jsonl"
        ));
        let kinds: Vec<Kind> = run.iter().map(|n| n.0).collect();
        assert_eq!(
            kinds,
            [
                Kind::Status,
                Kind::ToolCall,
                Kind::ToolResult,
                Kind::Text,
                Kind::Result
            ],
            "{run:?}"
        );
        assert_eq!(
            (run[1].1.as_deref(), run[1].2.as_str()),
            (Some("run_shell_command"), "echo hi")
        );
        assert_eq!(run[2].1.as_deref(), Some("run_shell_command"));
        assert!(run[2].3, "the tool failed");
        // The two pieces of the answer make one entry.
        assert_eq!(
            run[3].2,
            r#"seen 1: shell [[tool run_shell_command {"command":"echo hi"}]]"#
        );
        assert_eq!(run[4].2, "done · 2028 in / 31 out tokens");

        let failed = transcribed(include_str!(
            "../../../fake-anthropic/fixtures/gemini/server-error-500.stream.jsonl"
        ));
        let last = failed.last().unwrap();
        assert!(last.0 == Kind::Result && last.3 && last.2.starts_with("failed: [API Error"));
    }

    fn out(stdout: &'static str, stderr: &'static str, code: i32) -> Output<'static> {
        Output {
            stdout,
            stderr,
            exit_code: Some(code),
            now: chrono::Local::now(),
        }
    }

    #[test]
    fn sessions_are_named_by_agentq_and_resumed_by_id() {
        let s = Settings {
            model: Some("gemini-3.8-flash".into()),
            approval_mode: Some("yolo".into()),
            trust_workspace: true,
            ..Settings::default()
        };
        let bin = Path::new("gemini");
        assert_eq!(
            s.command(bin, Some(&Join::Start("u-1".into())), 0.0),
            [
                "gemini",
                "--output-format=stream-json",
                "--session-id=u-1",
                "--model=gemini-3.8-flash",
                "--approval-mode=yolo",
                "--skip-trust"
            ]
        );
        assert_eq!(
            Settings::default().command(bin, Some(&Join::Resume("u-1".into())), 0.0),
            ["gemini", "--output-format=stream-json", "--resume=u-1"]
        );
    }

    #[test]
    fn a_successful_run_is_read_from_its_deltas_and_per_run_stats() {
        let stdout = r#"{"type":"init","timestamp":"t","session_id":"7162","model":"auto"}
{"type":"message","timestamp":"t","role":"user","content":"hi"}
{"type":"message","timestamp":"t","role":"assistant","content":"FAKE ","delta":true}
{"type":"message","timestamp":"t","role":"assistant","content":"answer","delta":true}
{"type":"result","timestamp":"t","status":"success","stats":{"total_tokens":24457,"input_tokens":24366,"output_tokens":91}}
"#;
        assert!(is_result_line(stdout.lines().last().unwrap()));
        let Read::Reply(r) = Settings::default().read(&out(stdout, "", 0)) else {
            panic!()
        };
        assert_eq!(
            (r.text.as_str(), r.session.as_deref()),
            ("FAKE answer", Some("7162"))
        );
        assert_eq!(r.end, End::Done);
        assert_eq!(r.usage.input_tokens, Some(Counted::Run(24366)));
        assert_eq!(r.usage.output_tokens, Some(Counted::Run(91)));
    }

    #[test]
    fn quota_errors_pause_and_others_fail() {
        let limited = r#"{"type":"init","session_id":"s"}
{"type":"result","status":"error","error":{"type":"unknown","message":"[API Error: You exceeded your current quota, please check your plan. Suggested retry after 2s.]\nPlease wait and try again later."},"stats":{"input_tokens":0,"output_tokens":0}}
"#;
        let Read::Reply(r) = Settings::default().read(&out(limited, "", 173)) else {
            panic!()
        };
        let End::Limited(limit) = r.end else {
            panic!("{:?}", r.end)
        };
        assert!(limit.until.is_some(), "the suggested wait is kept");
        let failed = r#"{"type":"result","status":"error","error":{"type":"unknown","message":"[API Error: {\"error\":{\"code\":500}}]"}}"#;
        let Read::Reply(r) = Settings::default().read(&out(failed, "", 244)) else {
            panic!()
        };
        assert!(
            matches!(
                r.end,
                End::Failed {
                    cause: Cause::AgentError,
                    retryable: true,
                    ..
                }
            ),
            "{:?}",
            r.end
        );
        let Read::Reply(r) = Settings::default().read(&out(
            "",
            "Gemini CLI is not running in a trusted directory.\n",
            55,
        )) else {
            panic!()
        };
        assert!(matches!(
            r.end,
            End::Failed {
                cause: Cause::Config,
                ..
            }
        ));
        assert_eq!(
            Settings::default().read(&out(
                "",
                "Error resuming session: No previous sessions found for this project.\n",
                42
            )),
            Read::Gone
        );
        assert_eq!(
            Settings::default().read(&out("", "Killed\n", 137)),
            Read::Nothing
        );
    }

    /// What the pinned CLI really printed against the fake API (fake-anthropic/fixtures/gemini).
    #[test]
    fn the_recorded_runs_of_the_real_cli_are_read_right() {
        macro_rules! fixture {
            ($name:literal) => {
                include_str!(concat!("../../../fake-anthropic/fixtures/gemini/", $name))
            };
        }
        let read = |stdout: &'static str, stderr: &'static str, code| {
            Settings::default().read(&out(stdout, stderr, code))
        };
        let Read::Reply(r) = read(fixture!("resume.stream.jsonl"), "", 0) else {
            panic!()
        };
        assert!(
            r.text
                .starts_with("seen 3: Say hello | Now a second prompt"),
            "{}",
            r.text
        );
        assert_eq!(r.end, End::Done);
        assert!(matches!(r.usage.input_tokens, Some(Counted::Run(n)) if n > 0));
        assert!(r.session.is_some());
        for (stdout, stderr, code) in [
            (
                fixture!("rate-limit-429.stream.jsonl"),
                fixture!("rate-limit-429.stream.stderr"),
                173,
            ),
            (
                fixture!("quota-daily.stream.jsonl"),
                fixture!("quota-daily.stream.stderr"),
                173,
            ),
            ("", fixture!("rate-limit-429.json.stderr"), 173),
        ] {
            let Read::Reply(r) = read(stdout, stderr, code) else {
                panic!("{stdout}")
            };
            assert!(matches!(r.end, End::Limited(_)), "{:?}", r.end);
        }
        let Read::Reply(r) = read(fixture!("rate-limit-429.stream.jsonl"), "", 173) else {
            panic!()
        };
        let End::Limited(limit) = r.end else { panic!() };
        assert!(limit.until.is_some(), "Suggested retry after 2s: {limit:?}");
        for (stdout, stderr, code) in [
            (
                fixture!("server-error-500.stream.jsonl"),
                fixture!("server-error-500.stream.stderr"),
                244,
            ),
            (
                fixture!("overloaded-503.stream.jsonl"),
                fixture!("overloaded-503.stream.stderr"),
                247,
            ),
            (
                fixture!("hang-headers-timeout.stream.jsonl"),
                fixture!("hang-headers-timeout.stream.stderr"),
                1,
            ),
        ] {
            let Read::Reply(r) = read(stdout, stderr, code) else {
                panic!("{stdout}")
            };
            assert!(
                matches!(
                    r.end,
                    End::Failed {
                        cause: Cause::AgentError,
                        retryable: true,
                        ..
                    }
                ),
                "{:?}",
                r.end
            );
        }
        let Read::Reply(r) = read(fixture!("bad-request-400.stream.jsonl"), "", 144) else {
            panic!()
        };
        assert!(
            matches!(
                r.end,
                End::Failed {
                    cause: Cause::BadInput,
                    retryable: false,
                    ..
                }
            ),
            "{:?}",
            r.end
        );
        for stderr in [
            fixture!("unknown-session.stderr"),
            fixture!("unknown-session-no-sessions.stderr"),
            fixture!("resume-other-cwd.stderr"),
        ] {
            assert_eq!(read("", stderr, 42), Read::Gone, "{stderr}");
        }
        assert_eq!(
            read(fixture!("sigterm.stream.jsonl"), "", 0),
            Read::Nothing,
            "stopped before its result: no reply"
        );
        let Read::Reply(r) = read(fixture!("tool-call.stream.jsonl"), "", 0) else {
            panic!()
        };
        assert_eq!(r.end, End::Done);
        assert!(
            r.text.starts_with("seen "),
            "the answer after the tool call: {}",
            r.text
        );
        let Read::Reply(r) = read("", fixture!("rate-limit-429.json.stderr"), 173) else {
            panic!()
        };
        let End::Limited(limit) = r.end else { panic!() };
        assert!(
            limit.message.contains("exceeded your current quota"),
            "{limit:?}"
        );
        let Read::Reply(r) = read("", "Error: Maximum session turns exceeded\n", 53) else {
            panic!()
        };
        assert!(matches!(r.end, End::Full(_)), "{:?}", r.end);
    }
}
