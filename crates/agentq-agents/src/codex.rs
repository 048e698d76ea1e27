//! OpenAI's Codex CLI (`agent = "codex"`, the npm package `@openai/codex`): one process per task,
//! `codex exec --json`, the prompt on stdin, and the conversation continued across tasks with
//! `codex exec resume <thread id>`.
//!
//! Facts this relies on, checked against the pinned version (see the README's test command and
//! `../shared/notes/codex-cli.md`):
//! - `codex exec --json -` reads the prompt from stdin (`-`) and prints JSON lines:
//!   `thread.started` (with the `thread_id` that names the conversation: the CLI names it, agentq
//!   records it from there), `item.*` (an `agent_message` item carries the answer's text),
//!   `turn.completed` with `usage`, or `error` and `turn.failed` (authoritative) on failure;
//! - `usage` is cumulative for the thread, not per turn: a task's share is the difference;
//! - `exec resume` does not inherit the session's sandbox (it falls back to read-only), so the
//!   configured `sandbox` travels as `-c sandbox_mode=...` on every run; without one, the CLI's
//!   own default (read-only, or what its config.toml says) stands;
//! - outside a git repository it refuses to run unless `--skip-git-repo-check` is given;
//! - a resume of an unknown thread fails with `no rollout found for thread id`;
//! - it retries a 429 that names a wait, then fails with `exceeded retry limit, last status: 429`;
//!   an account out of credit fails with `Quota exceeded`; a server it cannot reach makes it wait
//!   for ever (the timeout watchdog ends that).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::transcript::{Kind, Note, Transcribe, not_json, summarise_input};

use super::{
    Conversation, Counted, Driver, End, Environment, Join, Limit, Output, Package, Read, Reply,
    Reported, SessionPolicy, first_line,
};
use agentq_core::domain::Cause;

#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// From config; `AGENTQ_CODEX_BIN` overrides it, and `codex` on PATH is the default.
    pub bin: Option<PathBuf>,
    pub model: Option<String>,
    /// `read-only`, `workspace-write` or `danger-full-access`; `None`: the CLI's default.
    pub sandbox: Option<String>,
    /// Run outside a git repository (the CLI refuses to by default).
    pub skip_git_repo_check: bool,
    pub session: SessionPolicy,
    pub extra_args: Vec<String>,
}

/// The sandboxes `codex exec` knows, least permissive first.
pub const SANDBOXES: [&str; 3] = ["read-only", "workspace-write", "danger-full-access"];

impl Default for Settings {
    fn default() -> Self {
        Settings {
            bin: None,
            model: None,
            sandbox: None,
            skip_git_repo_check: false,
            session: SessionPolicy::Resume,
            extra_args: Vec::new(),
        }
    }
}

/// Variables Codex sets for the commands it runs: a codex started under them would take the
/// parent's thread and sandbox for its own.
const NESTING: &[&str] = &[
    "CODEX_CI",
    "CODEX_SANDBOX",
    "CODEX_SANDBOX_NETWORK_DISABLED",
    "CODEX_THREAD_ID",
    "CODEX_SESSION_ID",
    "CODEX_TOOL_CALL_ID",
    "CODEX_VERSION",
    "CODEX_MANAGED_BY_NPM",
    "CODEX_MANAGED_PACKAGE_ROOT",
    // Its Rust logging would fill stderr (agentq's own log reads AGENTQ_LOG).
    "RUST_LOG",
];

/// The npm package; scripts/test installs the tested version.
pub const PACKAGE: Package = Package {
    title: "Codex CLI",
    bin_variable: "AGENTQ_CODEX_BIN",
    install: "npm install -g @openai/codex",
    tested_version: "0.171.0",
    credentials: &["OPENAI_API_KEY", "OPENAI_BASE_URL", "CODEX_API_KEY"],
};

impl Driver for Settings {
    fn name(&self) -> &'static str {
        "codex"
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
            named_by_caller: false,
        })
    }

    fn command(&self, program: &Path, join: Option<&Join>, _spent: f64) -> Vec<String> {
        let mut argv = vec![program.to_string_lossy().into_owned(), "exec".into()];
        let resume = match join {
            Some(Join::Resume(id)) => {
                argv.push("resume".into());
                Some(id)
            }
            _ => None,
        };
        argv.push("--json".into());
        if self.skip_git_repo_check {
            argv.push("--skip-git-repo-check".into());
        }
        if let Some(model) = &self.model {
            argv.push(format!("--model={model}"));
        }
        if let Some(sandbox) = &self.sandbox {
            argv.push(format!("--config=sandbox_mode={}", toml_string(sandbox)));
        }
        argv.extend(self.extra_args.iter().cloned());
        if let Some(id) = resume {
            argv.push(id.clone());
        }
        // `-`: the prompt is read from stdin.
        argv.push("-".into());
        argv
    }

    fn environment(&self, parent: &BTreeMap<String, String>) -> Environment {
        Environment::default().removing(parent, NESTING, &[])
    }

    fn warnings(&self, idle_timeout: Option<std::time::Duration>) -> Vec<String> {
        super::quiet_while_thinking("codex", idle_timeout)
    }

    /// A turn ends with `turn.completed` or `turn.failed`: a process still alive
    /// `linger_timeout` after it is stopped, and what it printed stands.
    fn final_line(&self) -> Option<fn(&str) -> bool> {
        Some(is_final_line)
    }

    fn output_is_a_stream(&self) -> bool {
        true
    }

    fn transcriber(&self) -> Box<dyn Transcribe> {
        Box::new(Transcriber)
    }

    fn read(&self, out: &Output) -> Read {
        let run = Run::read(out.stdout);
        let code = out.exit_code.unwrap_or(0);
        if run.completed && code == 0 {
            return Read::Reply(run.reply(End::Done));
        }
        let said = run.failure.clone().or(run.error.clone());
        let both = format!("{}\n{}", said.as_deref().unwrap_or(""), out.stderr);
        if both.contains("no rollout found for thread id") {
            return Read::Gone;
        }
        if code == 2 && both.contains("error: unexpected argument") {
            // A flag `exec` takes and `exec resume` does not, in extra_args.
            return Read::Reply(run.reply(End::Failed {
                cause: Cause::Config,
                reason: format!(
                    "codex refused its command line ({}): correct extra_args in agentq.toml",
                    super::telling_line(out.stderr, "exit code 2")
                ),
                retryable: false,
            }));
        }
        if both.contains("Not inside a trusted directory") {
            return Read::Reply(run.reply(End::Failed {
                cause: Cause::Config,
                reason: "codex refuses to run outside a git repository: make the worker's cwd one, or set skip_git_repo_check = true".into(),
                retryable: false,
            }));
        }
        let Some(message) = said else {
            if run.completed {
                // A finished turn, then a failed exit: say what stderr said.
                return Read::Reply(run.reply(End::failed(
                    Cause::Crashed,
                    super::crashed(code, out.stderr),
                )));
            }
            return Read::Nothing;
        };
        let lower = message.to_lowercase();
        let end = match limit_of(&message, out.now) {
            Some(limit) => End::Limited(limit),
            None if lower.contains("context window") || lower.contains("context_length") => {
                End::Full(format!("codex: {}", first_line(&message, 300)))
            }
            None => failure(&message),
        };
        Read::Reply(run.reply(end))
    }
}

/// Whether a line of `codex exec --json` output ends the turn.
pub fn is_final_line(line: &str) -> bool {
    super::is_json_of_type(line, &["turn.completed", "turn.failed"])
}

/// A value for `-c key=value`, which the CLI parses as TOML.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// What one `codex exec --json` run printed.
#[derive(Debug, Default)]
struct Run {
    thread: Option<String>,
    /// The last `agent_message`'s text: the answer.
    text: Option<String>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    turns: u64,
    completed: bool,
    /// `turn.failed`'s message.
    failure: Option<String>,
    /// The last `error` event's message (retry notices, non-fatal errors).
    error: Option<String>,
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
                "thread.started" => run.thread = str_at("/thread_id"),
                "item.completed" if str_at("/item/type").as_deref() == Some("agent_message") => {
                    run.text = str_at("/item/text");
                }
                "turn.completed" => {
                    run.completed = true;
                    run.turns += 1;
                    let usage = |k: &str| v.pointer(&format!("/usage/{k}")).and_then(Value::as_u64);
                    // `cached_input_tokens` is a part of `input_tokens`, not beside it.
                    run.input_tokens = usage("input_tokens").or(run.input_tokens);
                    run.output_tokens = usage("output_tokens").or(run.output_tokens);
                }
                "turn.failed" => {
                    run.completed = false;
                    run.failure = str_at("/error/message");
                }
                "error" => run.error = str_at("/message"),
                _ => {}
            }
        }
        run
    }

    fn reply(self, end: End) -> Reply {
        Reply {
            text: self.text.unwrap_or_default(),
            session: self.thread,
            usage: Reported {
                cost_usd: None,
                input_tokens: self.input_tokens.map(Counted::Conversation),
                output_tokens: self.output_tokens.map(Counted::Conversation),
                turns: (self.turns > 0).then_some(self.turns),
            },
            end,
        }
    }
}

/// A usage or rate limit in a failure's message: a 429 the CLI gave up on, an exhausted quota, a
/// plan's usage limit.
fn limit_of(message: &str, now: chrono::DateTime<chrono::Local>) -> Option<Limit> {
    if !super::says_limit(message) {
        return None;
    }
    // "... try again in 4 days 2 hours" / "try again at Dec 29th, 2025 10:15 PM": a wait or a
    // moment, when given.
    let lower = message.to_lowercase();
    let until = super::retry_after(&lower, now).or_else(|| {
        let (_, at) = lower.split_once("try again at")?;
        super::parse_reset(at.trim_end_matches(['.', ' ']), now).map(|t| t.timestamp_millis())
    });
    Some(Limit {
        until,
        message: first_line(message, 200),
    })
}

/// A `turn.failed` as a failure: refused credentials are the worker's setup, a request refused as
/// malformed is the task's input; anything else may pass.
fn failure(message: &str) -> End {
    let lower = message.to_lowercase();
    let cause = if lower.contains("401")
        || lower.contains("403")
        || lower.contains("unauthorized")
        || lower.contains("missing environment variable")
    {
        Cause::Config
    } else if lower.contains("400 bad request") {
        Cause::BadInput
    } else {
        Cause::AgentError
    };
    End::failed(cause, format!("codex: {}", first_line(message, 300)))
}

/// Codex's `exec --json` events as transcript entries: the thread as a status, a command when it
/// starts and its output when it completes, file changes, MCP tool calls and web searches as tool
/// calls, the agent's messages and reasoning, and each turn's end (tokens, or why it failed).
#[derive(Default)]
pub struct Transcriber;

impl Transcribe for Transcriber {
    fn line(&mut self, line: &str, out: &mut Vec<Note>) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return not_json(line, out);
        };
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let item = v.get("item").unwrap_or(&Value::Null);
        match (
            v.get("type").and_then(Value::as_str),
            item.get("type").and_then(Value::as_str),
        ) {
            (Some("thread.started"), _) => out.push(Note::new(
                Kind::Status,
                format!(
                    "thread {}",
                    text(&v, "thread_id").unwrap_or_else(|| "?".into())
                ),
            )),
            (Some("item.started"), Some("command_execution")) => out.push(
                Note::new(Kind::ToolCall, text(item, "command").unwrap_or_default()).tool("shell"),
            ),
            (Some("item.completed"), Some(kind)) => match kind {
                "agent_message" => out.push(Note::new(
                    Kind::Text,
                    text(item, "text").unwrap_or_default(),
                )),
                "reasoning" => out.push(Note::new(
                    Kind::Thinking,
                    text(item, "text").unwrap_or_default(),
                )),
                "command_execution" => {
                    let code = item.get("exit_code").and_then(Value::as_i64);
                    let mut said = text(item, "aggregated_output").unwrap_or_default();
                    if let Some(code) = code.filter(|c| *c != 0) {
                        said.push_str(&format!("(exit {code})"));
                    }
                    out.push(
                        Note::new(Kind::ToolResult, said.trim_end().to_string())
                            .tool("shell")
                            .error(code.is_some_and(|c| c != 0)),
                    );
                }
                "file_change" => {
                    let changes: Vec<String> = item
                        .get("changes")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            format!(
                                "{} {}",
                                text(c, "kind").unwrap_or_else(|| "change".into()),
                                text(c, "path").unwrap_or_default()
                            )
                        })
                        .collect();
                    out.push(Note::new(Kind::ToolCall, changes.join(", ")).tool("edit"));
                }
                "mcp_tool_call" => {
                    let name = format!(
                        "{}.{}",
                        text(item, "server").unwrap_or_default(),
                        text(item, "tool").unwrap_or_default()
                    );
                    let args = item.get("arguments").cloned().unwrap_or(Value::Null);
                    out.push(Note::new(Kind::ToolCall, summarise_input(&args)).tool(name));
                }
                "web_search" => out.push(
                    Note::new(Kind::ToolCall, text(item, "query").unwrap_or_default())
                        .tool("web_search"),
                ),
                "error" => out.push(
                    Note::new(Kind::Status, text(item, "message").unwrap_or_default()).error(true),
                ),
                _ => {}
            },
            (Some("turn.completed"), _) => {
                let usage = v.get("usage").unwrap_or(&Value::Null);
                let n = |k: &str| usage.get(k).and_then(Value::as_u64).unwrap_or(0);
                out.push(Note::new(
                    Kind::Result,
                    format!(
                        "done · {} in / {} out tokens",
                        n("input_tokens"),
                        n("output_tokens")
                    ),
                ));
            }
            (Some("turn.failed"), _) => out.push(
                Note::new(
                    Kind::Result,
                    format!(
                        "failed: {}",
                        v.pointer("/error/message")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                    ),
                )
                .error(true),
            ),
            (Some("error"), _) => out
                .push(Note::new(Kind::Status, text(&v, "message").unwrap_or_default()).error(true)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcribed(recorded: &str) -> Vec<(Kind, Option<String>, String, bool)> {
        crate::transcript::read_all(Transcriber, recorded)
            .into_iter()
            .map(|n| (n.kind, n.tool, n.text, n.error))
            .collect()
    }

    #[test]
    fn recorded_runs_read_as_commands_their_output_messages_and_ends() {
        let run = transcribed(include_str!(
            "../../../fake-anthropic/fixtures/codex/exec-fail.jsonl"
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
            ]
        );
        assert_eq!(run[1].1.as_deref(), Some("shell"));
        assert!(run[1].2.contains("echo oops; exit 3"), "{run:?}");
        assert_eq!((run[2].2.as_str(), run[2].3), ("oops\n(exit 3)", true));
        assert_eq!(run[3].2, "ran: oops");
        assert_eq!(run[4].2, "done · 2007 in / 13 out tokens");

        let quota = transcribed(include_str!(
            "../../../fake-anthropic/fixtures/codex/quota.jsonl"
        ));
        let last = quota.last().unwrap();
        assert_eq!(last.0, Kind::Result);
        assert!(last.3 && last.2.contains("Quota exceeded"), "{quota:?}");
    }

    fn out(stdout: &str, stderr: &str, code: i32) -> Output<'static> {
        Output {
            stdout: Box::leak(stdout.to_string().into_boxed_str()),
            stderr: Box::leak(stderr.to_string().into_boxed_str()),
            exit_code: Some(code),
            now: chrono::Local::now(),
        }
    }

    #[test]
    fn a_new_thread_and_a_resumed_one_take_the_prompt_from_stdin() {
        let s = Settings {
            model: Some("gpt-5.5".into()),
            sandbox: Some("workspace-write".into()),
            skip_git_repo_check: true,
            extra_args: vec!["--config=features.plugins=false".into()],
            ..Settings::default()
        };
        let bin = Path::new("/bin/codex");
        assert_eq!(
            s.command(bin, Some(&Join::New), 0.0),
            [
                "/bin/codex",
                "exec",
                "--json",
                "--skip-git-repo-check",
                "--model=gpt-5.5",
                "--config=sandbox_mode=\"workspace-write\"",
                "--config=features.plugins=false",
                "-"
            ]
        );
        let resumed = s.command(bin, Some(&Join::Resume("t-1".into())), 0.0);
        assert_eq!(&resumed[..4], ["/bin/codex", "exec", "resume", "--json"]);
        assert_eq!(&resumed[resumed.len() - 2..], ["t-1", "-"]);
        assert!(
            resumed.contains(&"--config=sandbox_mode=\"workspace-write\"".to_string()),
            "resume does not inherit the sandbox: it is given again"
        );
        let plain = Settings::default().command(bin, None, 0.0);
        assert_eq!(
            plain,
            ["/bin/codex", "exec", "--json", "-"],
            "the CLI's defaults stand"
        );
    }

    #[test]
    fn a_completed_turn_is_read_with_its_thread_and_cumulative_usage() {
        let stdout = r#"{"type":"thread.started","thread_id":"01a2"}
{"type":"turn.started"}
{"type":"item.completed","item":{"id":"item_0","type":"command_execution","command":"ls","exit_code":0}}
{"type":"item.completed","item":{"id":"item_1","type":"agent_message","text":"first"}}
{"type":"item.completed","item":{"id":"item_2","type":"agent_message","text":"the answer"}}
{"type":"turn.completed","usage":{"input_tokens":20725,"cached_input_tokens":100,"output_tokens":52}}
"#;
        let Read::Reply(r) = s().read(&out(stdout, "", 0)) else {
            panic!()
        };
        assert_eq!(r.text, "the answer");
        assert!(is_final_line(stdout.lines().last().unwrap()));
        assert!(!is_final_line(stdout.lines().next().unwrap()));
        assert_eq!(r.session.as_deref(), Some("01a2"));
        assert_eq!(r.end, End::Done);
        assert_eq!(r.usage.input_tokens, Some(Counted::Conversation(20725)));
        assert_eq!(r.usage.output_tokens, Some(Counted::Conversation(52)));
    }

    fn s() -> Settings {
        Settings::default()
    }

    #[test]
    fn failures_limits_and_gone_threads_are_told_apart() {
        let failed = |msg: &str| {
            format!(
                "{{\"type\":\"thread.started\",\"thread_id\":\"t\"}}\n{{\"type\":\"error\",\"message\":\"{msg}\"}}\n{{\"type\":\"turn.failed\",\"error\":{{\"message\":\"{msg}\"}}}}\n"
            )
        };
        let limited = s().read(&out(
            &failed("exceeded retry limit, last status: 429 Too Many Requests"),
            "",
            1,
        ));
        assert!(
            matches!(
                &limited,
                Read::Reply(Reply {
                    end: End::Limited(_),
                    ..
                })
            ),
            "{limited:?}"
        );
        let quota = s().read(&out(
            &failed("Quota exceeded. Check your plan and billing details."),
            "",
            1,
        ));
        assert!(matches!(
            quota,
            Read::Reply(Reply {
                end: End::Limited(_),
                ..
            })
        ));
        let Read::Reply(r) = s().read(&out(
            &failed("stream disconnected before completion"),
            "",
            1,
        )) else {
            panic!()
        };
        assert_eq!(
            r.end,
            End::failed(
                Cause::AgentError,
                "codex: stream disconnected before completion"
            )
        );
        let Read::Reply(r) = s().read(&out(
            &failed("Missing environment variable: `FAKE_OPENAI_KEY`."),
            "",
            1,
        )) else {
            panic!()
        };
        assert!(matches!(
            r.end,
            End::Failed {
                cause: Cause::Config,
                retryable: false,
                ..
            }
        ));
        assert_eq!(
            s().read(&out(
                "",
                "Error: thread/resume: thread/resume failed: no rollout found for thread id 0199 (code -32600)\n",
                1
            )),
            Read::Gone
        );
        let Read::Reply(r) = s().read(&out(
            "",
            "Not inside a trusted directory and --skip-git-repo-check was not specified.\n",
            1,
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
            s().read(&out("", "Segmentation fault\n", 139)),
            Read::Nothing
        );
    }

    #[test]
    fn a_limit_says_when_it_resets_when_the_message_does() {
        use chrono::TimeZone;
        let now = chrono::Local::now();
        let l = limit_of("You've hit your usage limit. Try again in 30s.", now).unwrap();
        assert_eq!(l.until, Some(now.timestamp_millis() + 30_000));
        let weekly = limit_of(
            "You've hit your usage limit. Upgrade to Pro, or try again in 4 days 2 hours.",
            now,
        )
        .unwrap();
        assert_eq!(weekly.until, Some(now.timestamp_millis() + 98 * 3_600_000));
        let dated = limit_of(
            "You've hit your usage limit. Try again at Dec 29th, 2099 10:15 PM.",
            now,
        )
        .unwrap();
        assert_eq!(
            dated.until,
            Some(
                chrono::Local
                    .with_ymd_and_hms(2099, 12, 29, 22, 15, 0)
                    .unwrap()
                    .timestamp_millis()
            )
        );
        assert_eq!(
            limit_of("unexpected status 500, request id req_8f429a1", now),
            None,
            "a 429 inside an id is not a limit"
        );
        assert_eq!(limit_of("429 Too Many Requests", now).unwrap().until, None);
        assert_eq!(limit_of("stream error", now), None);
    }

    /// What the pinned CLI really printed against the fake API (fake-anthropic/fixtures/codex).
    #[test]
    fn the_recorded_runs_of_the_real_cli_are_read_right() {
        macro_rules! fixture {
            ($name:literal) => {
                include_str!(concat!("../../../fake-anthropic/fixtures/codex/", $name))
            };
        }
        let read = |stdout: &str, stderr: &str, code| s().read(&out(stdout, stderr, code));
        let Read::Reply(first) = read(fixture!("success.jsonl"), "", 0) else {
            panic!()
        };
        let Read::Reply(third) = read(fixture!("resume-2.jsonl"), "", 0) else {
            panic!()
        };
        assert_eq!(first.session, third.session, "one thread");
        assert!(third.text.starts_with("seen 3: "), "{}", third.text);
        assert_eq!(third.end, End::Done);
        let (Some(Counted::Conversation(a)), Some(Counted::Conversation(b))) =
            (first.usage.input_tokens, third.usage.input_tokens)
        else {
            panic!("{:?}", third.usage)
        };
        assert!(b > a, "the thread's running total: {a}, then {b}");
        for (name, stdout) in [
            ("rate-limit-429", fixture!("rate-limit-429.jsonl")),
            (
                "rate-limit-429-retry-after",
                fixture!("rate-limit-429-retry-after.jsonl"),
            ),
            ("quota", fixture!("quota.jsonl")),
        ] {
            let Read::Reply(r) = read(stdout, "", 1) else {
                panic!("{name}")
            };
            assert!(matches!(r.end, End::Limited(_)), "{name}: {:?}", r.end);
        }
        for (name, stdout) in [
            ("server-error-500", fixture!("server-error-500.jsonl")),
            ("stall-idle-timeout", fixture!("stall-idle-timeout.jsonl")),
        ] {
            let Read::Reply(r) = read(stdout, "", 1) else {
                panic!("{name}")
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
                "{name}: {:?}",
                r.end
            );
        }
        let Read::Reply(r) = read(fixture!("missing-env-key.jsonl"), "", 1) else {
            panic!()
        };
        assert!(matches!(
            r.end,
            End::Failed {
                cause: Cause::Config,
                retryable: false,
                ..
            }
        ));
        assert_eq!(read("", fixture!("unknown-thread.stderr"), 1), Read::Gone);
        let Read::Reply(r) = read("", fixture!("no-git-repo-check.stderr"), 1) else {
            panic!()
        };
        assert!(matches!(
            r.end,
            End::Failed {
                cause: Cause::Config,
                ..
            }
        ));
        for (name, stdout) in [
            ("exec-tool", fixture!("exec-tool.jsonl")),
            ("exec-fail", fixture!("exec-fail.jsonl")),
            (
                "rate-limit-429-then-ok",
                fixture!("rate-limit-429-then-ok.jsonl"),
            ),
            ("big-prompt", fixture!("big-prompt.jsonl")),
        ] {
            let Read::Reply(r) = read(stdout, "", 0) else {
                panic!("{name}")
            };
            assert_eq!(
                r.end,
                End::Done,
                "{name}: a failed tool or a retried call is not a failed task"
            );
            assert!(!r.text.is_empty(), "{name}");
        }
        assert_eq!(
            read(fixture!("hang.jsonl"), "", 143),
            Read::Nothing,
            "killed mid-turn: no reply"
        );
    }
}
