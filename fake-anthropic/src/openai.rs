//! A fake OpenAI Responses API, served by the same [`FakeServer`](crate::FakeServer) as the
//! Anthropic one, so the real `codex` CLI can run in tests without the network.
//!
//! Point codex at [`FakeServer::openai_url`](crate::FakeServer::openai_url) with a custom model
//! provider (`wire_api = "responses"`, `base_url = "http://127.0.0.1:PORT/v1"`).
//!
//! It answers `POST /v1/responses` with a server-sent-events stream (`response.created`,
//! `response.output_item.added`, `response.content_part.added`, `response.output_text.delta`,
//! `response.output_text.done`, `response.output_item.done`, `response.completed` with usage), and
//! `GET /v1/responses` (a WebSocket upgrade) with `426 Upgrade Required`, so a client that tries a
//! WebSocket falls back to HTTP at once.
//!
//! What it answers is decided by the last user prompt in `input`, as for the Anthropic API:
//! - By default `seen N: p1 | p2 | ... | pN`, each prompt's first line cut to 60 characters. The
//!   prompts are the user's own messages: codex's `developer` messages and the user messages it
//!   writes itself (`<environment_context>`, `# AGENTS.md instructions ...`, other `<tag>` blocks)
//!   are left out.
//! - `[[delay 2s]]` (or `500ms`) waits that long before answering; `[[hang]]` never answers
//!   (not even the status line); `[[stall]]` sends the status, headers and `response.created`,
//!   then nothing more (`[[stall x1]]`: only the first time).
//! - `[[reply some text]]` answers with exactly that text.
//! - `[[status 500]]` answers with that HTTP status and an OpenAI error body; `[[status 500 x2]]`
//!   only for the first two requests carrying that same directive. `[[status 429]]` is a plain
//!   rate limit (`rate_limit_exceeded`).
//! - `[[quota]]` answers 429 with the error code `insufficient_quota` (codex: "Quota exceeded.
//!   Check your plan and billing details."); `[[quota x1]]` only the first time.
//! - `[[exec echo hi > f]]` first answers with a call of codex's `exec_command` tool running that
//!   command, then, once the request carries its output, with `ran: <output>` (what follows codex's
//!   `Output:` line; or the
//!   `[[reply ...]]` text). Usage of the tool-call response is 1000 in, 10 out.
//! - `[[retry-after 2]]` adds a `retry-after: 2` header to an error answer (codex then retries a
//!   429).
//!
//! Usage in `response.completed` is deterministic: with N user prompts of total length L and
//! assistant messages of total length A in `input`, `input_tokens = 1000 N + (L + A) / 4`,
//! `cached_tokens = 1000 (N - 1)`, `output_tokens = 1 + answer length / 4`, no reasoning tokens.
//!
//! [`FakeServer::responses_requests`](crate::FakeServer::responses_requests) counts the
//! `POST /v1/responses` calls.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Answer, State, directives, parse_delay};

/// The user's own prompts in a Responses API request's `input`, oldest first.
pub fn prompts(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for item in body["input"].as_array().into_iter().flatten() {
        if item["role"] != "user" || !matches!(item["type"].as_str(), None | Some("message")) {
            continue;
        }
        let texts: Vec<String> = match &item["content"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(parts) => parts
                .iter()
                .filter(|p| p["type"] == "input_text")
                .filter_map(|p| p["text"].as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        out.extend(texts.into_iter().filter(|t| !injected(t)));
    }
    out
}

/// Whether a user text block is one codex writes itself rather than the user's prompt.
fn injected(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with("# AGENTS.md instructions")
        || [
            "<environment_context>",
            "<user_instructions>",
            "<skills_instructions>",
            "<user_shell_command>",
            "<turn_aborted>",
            "<subagent_notification>",
            "<model_switch>",
            "<personality_spec>",
            "<collaboration_mode>",
            "<realtime_conversation>",
        ]
        .iter()
        .any(|tag| t.starts_with(tag))
}

/// The assistant's earlier answers in `input`.
fn assistant_texts(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for item in body["input"].as_array().into_iter().flatten() {
        if item["role"] != "assistant" {
            continue;
        }
        for part in item["content"].as_array().into_iter().flatten() {
            if let Some(t) = part["text"].as_str() {
                out.push(t.to_string());
            }
        }
    }
    out
}

fn error(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({ "error": { "message": message, "type": kind, "param": null, "code": code } })
}

/// The answer to `POST /v1/responses`.
pub(crate) fn responses(body: &Value, state: &State) -> Answer {
    let n = state.responses.fetch_add(1, Ordering::SeqCst) + 1;
    let all = prompts(body);
    let last = all.last().cloned().unwrap_or_default();
    let mut delay = None;
    let mut text = None;
    let mut headers = Vec::new();
    let mut failure: Option<(u16, Value)> = None;
    let mut stall = false;
    let mut exec = None;
    for (name, args) in directives(&last) {
        // `x2` as the last word: only the first two times this same directive is seen.
        let times: Option<u32> = args
            .split_whitespace()
            .last()
            .and_then(|w| w.strip_prefix('x'))
            .and_then(|n| n.parse().ok());
        let fail_now = || {
            let mut failures = state.failures.lock().unwrap_or_else(|p| p.into_inner());
            let count = failures.entry(format!("openai {name} {args}")).or_insert(0);
            let now = times.is_none_or(|t| *count < t);
            if now {
                *count += 1;
            }
            now
        };
        match name.as_str() {
            "delay" => delay = parse_delay(&args),
            "hang" => delay = Some(Duration::from_secs(24 * 3600)),
            "stall" => stall = fail_now(),
            "reply" => text = Some(args.clone()),
            "exec" => exec = Some(args.clone()),
            "retry-after" => headers.push(("retry-after".to_string(), args.trim().to_string())),
            "quota" if failure.is_none() && fail_now() => {
                failure = Some((
                    429,
                    error(
                        "You exceeded your current quota, please check your plan and billing details.",
                        "insufficient_quota",
                        Some("insufficient_quota"),
                    ),
                ));
            }
            "status" => {
                let status: u16 = args
                    .split_whitespace()
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(500);
                if failure.is_none() && fail_now() {
                    let err = match status {
                        429 => error(
                            "Rate limit reached for requests (fake). Please try again later.",
                            "requests",
                            Some("rate_limit_exceeded"),
                        ),
                        400..=499 => {
                            error(&format!("fake {status}"), "invalid_request_error", None)
                        }
                        _ => error(
                            "The server had an error while processing your request. Sorry about that! (fake)",
                            "server_error",
                            None,
                        ),
                    };
                    failure = Some((status, err));
                }
            }
            _ => {}
        }
    }
    if let Some((status, err)) = failure {
        return (
            status,
            "application/json",
            err.to_string().into_bytes(),
            delay,
            headers,
        );
    }
    if let Some(cmd) = exec {
        match tool_output(body) {
            // The command ran: the answer shows its output (unless `[[reply ...]]` says otherwise).
            Some(output) => {
                if text.is_none() {
                    // codex's output starts with a header (chunk id, wall time, exit code).
                    let shown = output.split_once("Output:\n").map_or(&*output, |(_, o)| o);
                    text = Some(format!("ran: {}", shown.trim()));
                }
            }
            None => {
                let events = function_call(n, &cmd);
                return (
                    200,
                    "text/event-stream",
                    events.into_bytes(),
                    delay,
                    Vec::new(),
                );
            }
        }
    }
    let text = text.unwrap_or_else(|| crate::seen(&all));
    let model = body["model"].as_str().unwrap_or("gpt-fake").to_string();
    let prompt_len: usize = all.iter().map(String::len).sum();
    let answer_len: usize = assistant_texts(body).iter().map(String::len).sum();
    let count = all.len().max(1) as u64;
    let input_tokens = 1000 * count + ((prompt_len + answer_len) / 4) as u64;
    let cached_tokens = 1000 * (count - 1);
    let output_tokens = 1 + (text.len() / 4) as u64;
    let events = sse(n, &model, &text, input_tokens, cached_tokens, output_tokens);
    if stall {
        // Only `response.created` goes out.
        let first = events.find("\n\n").map_or(0, |i| i + 2);
        headers.push((crate::STALL_AFTER.to_string(), first.to_string()));
    } else {
        headers.clear();
    }
    (
        200,
        "text/event-stream",
        events.into_bytes(),
        delay,
        headers,
    )
}

/// The output of the tool call answering this turn's prompt, if it has been made: the text of the
/// first `function_call_output` after the last user message.
fn tool_output(body: &Value) -> Option<String> {
    let input = body["input"].as_array()?;
    let last_user = input.iter().rposition(|i| i["role"] == "user")?;
    let item = input[last_user..]
        .iter()
        .find(|i| i["type"] == "function_call_output")?;
    Some(match &item["output"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(""),
        other => other.to_string(),
    })
}

/// The event stream of a response that calls codex's `exec_command` tool with `cmd`.
fn function_call(n: u64, cmd: &str) -> String {
    let id = format!("resp_fake_{n}");
    let item = json!({
        "type": "function_call",
        "id": format!("fc_fake_{n}"),
        "status": "completed",
        "call_id": format!("call_fake_{n}"),
        "name": "exec_command",
        "arguments": json!({ "cmd": cmd }).to_string(),
    });
    let usage = json!({
        "input_tokens": 1000,
        "input_tokens_details": { "cached_tokens": 0 },
        "output_tokens": 10,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": 1010,
    });
    let events = [
        json!({ "type": "response.created", "sequence_number": 0, "response": { "id": id, "object": "response", "status": "in_progress", "output": [] } }),
        json!({ "type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": item }),
        json!({ "type": "response.output_item.done", "sequence_number": 2, "output_index": 0, "item": item }),
        json!({ "type": "response.completed", "sequence_number": 3, "response": { "id": id, "object": "response", "status": "completed", "output": [item], "usage": usage } }),
    ];
    events_text(&events)
}

fn events_text(events: &[Value]) -> String {
    let mut out = String::new();
    for event in events {
        let name = event["type"].as_str().unwrap_or_default();
        out.push_str(&format!("event: {name}\ndata: {event}\n\n"));
    }
    out
}

/// The event stream of a response with one assistant message.
fn sse(
    n: u64,
    model: &str,
    text: &str,
    input_tokens: u64,
    cached_tokens: u64,
    output_tokens: u64,
) -> String {
    let id = format!("resp_fake_{n}");
    let item_id = format!("msg_fake_{n}");
    let item = |status: &str, content: Value| json!({ "type": "message", "id": item_id, "status": status, "role": "assistant", "content": content });
    let done_item = item(
        "completed",
        json!([{ "type": "output_text", "text": text, "annotations": [] }]),
    );
    let response = |status: &str, output: Value, usage: Value| json!({ "id": id, "object": "response", "created_at": 1767225600, "status": status, "model": model, "output": output, "usage": usage });
    let usage = json!({
        "input_tokens": input_tokens,
        "input_tokens_details": { "cached_tokens": cached_tokens },
        "output_tokens": output_tokens,
        "output_tokens_details": { "reasoning_tokens": 0 },
        "total_tokens": input_tokens + output_tokens,
    });
    let events = [
        json!({ "type": "response.created", "sequence_number": 0, "response": response("in_progress", json!([]), Value::Null) }),
        json!({ "type": "response.output_item.added", "sequence_number": 1, "output_index": 0, "item": item("in_progress", json!([])) }),
        json!({ "type": "response.content_part.added", "sequence_number": 2, "item_id": item_id, "output_index": 0, "content_index": 0, "part": { "type": "output_text", "text": "", "annotations": [] } }),
        json!({ "type": "response.output_text.delta", "sequence_number": 3, "item_id": item_id, "output_index": 0, "content_index": 0, "delta": text }),
        json!({ "type": "response.output_text.done", "sequence_number": 4, "item_id": item_id, "output_index": 0, "content_index": 0, "text": text }),
        json!({ "type": "response.output_item.done", "sequence_number": 5, "output_index": 0, "item": done_item }),
        json!({ "type": "response.completed", "sequence_number": 6, "response": response("completed", json!([done_item]), usage) }),
    ];
    events_text(&events)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request of codex 0.171.0 for the third turn of a thread (`exec`, then two
    /// `exec resume`), with an AGENTS.md in the working directory; long texts and tools trimmed.
    const THIRD_TURN: &str = include_str!("../fixtures/codex/request-third-turn.json");
    /// A request carrying a tool's output: three turns that each ran a command, the sandbox
    /// changed between them (so codex added `<environment_context>` messages in the middle).
    const TOOL_OUTPUT: &str = include_str!("../fixtures/codex/request-tool-output.json");

    fn events(answer: &Answer) -> Vec<Value> {
        String::from_utf8_lossy(&answer.2)
            .split("\n\n")
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    fn request(prompt: &str) -> Value {
        json!({ "model": "gpt-5.5", "stream": true, "input": [
            { "type": "message", "role": "developer", "content": [{ "type": "input_text", "text": "You are Codex" }] },
            { "type": "message", "role": "user", "content": [{ "type": "input_text", "text": "<environment_context>x</environment_context>" }] },
            { "type": "message", "role": "user", "content": [{ "type": "input_text", "text": prompt }] }
        ] })
    }

    #[test]
    fn the_prompts_are_the_users_own_messages() {
        let body: Value = serde_json::from_str(THIRD_TURN).unwrap();
        assert_eq!(
            prompts(&body),
            vec![
                "alpha: remember the word apple\nsecond line of alpha",
                "beta: what word?",
                "gamma: and again"
            ]
        );
        let body: Value = serde_json::from_str(TOOL_OUTPUT).unwrap();
        assert_eq!(
            prompts(&body),
            vec![
                "make a file [[exec echo hello > w1.txt && cat w1.txt]]",
                "again [[exec echo two > w2.txt && cat w2.txt]]",
                "again [[exec echo three > w3.txt && cat w3.txt]]"
            ]
        );
    }

    #[test]
    fn the_default_answer_lists_the_prompts_with_deterministic_usage() {
        let state = State::default();
        let body: Value = serde_json::from_str(THIRD_TURN).unwrap();
        let answer = responses(&body, &state);
        assert_eq!((answer.0, answer.1), (200, "text/event-stream"));
        let events = events(&answer);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let text = "seen 3: alpha: remember the word apple | beta: what word? | gamma: and again";
        assert_eq!(events[3]["delta"], text);
        assert_eq!(events[5]["item"]["content"][0]["text"], text);
        // Prompts 51 + 16 + 16 bytes, earlier answers 38 + 57.
        let usage = &events[6]["response"]["usage"];
        assert_eq!(usage["input_tokens"], 3000 + (51 + 16 + 16 + 38 + 57) / 4);
        assert_eq!(usage["input_tokens_details"]["cached_tokens"], 2000);
        assert_eq!(usage["output_tokens"], 1 + text.len() / 4);
        assert_eq!(state.responses.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn errors_come_the_first_k_times() {
        let state = State::default();
        let body = request("hi [[status 500 x2]]");
        assert_eq!(responses(&body, &state).0, 500);
        let (status, _, err, _, _) = responses(&body, &state);
        assert_eq!(status, 500);
        let err: Value = serde_json::from_slice(&err).unwrap();
        assert_eq!(err["error"]["type"], "server_error");
        let answer = responses(&body, &state);
        assert_eq!(answer.0, 200);
        assert_eq!(events(&answer)[3]["delta"], "seen 1: hi [[status 500 x2]]");

        let (status, _, err, _, headers) =
            responses(&request("[[status 429]] [[retry-after 2]]"), &state);
        assert_eq!(status, 429);
        assert_eq!(headers, vec![("retry-after".to_string(), "2".to_string())]);
        let err: Value = serde_json::from_slice(&err).unwrap();
        assert_eq!(err["error"]["code"], "rate_limit_exceeded");

        let body = request("[[quota x1]]");
        let (status, _, err, _, _) = responses(&body, &state);
        assert_eq!(status, 429);
        let err: Value = serde_json::from_slice(&err).unwrap();
        assert_eq!(err["error"]["code"], "insufficient_quota");
        assert_eq!(responses(&body, &state).0, 200);
    }

    #[test]
    fn reply_delay_hang_and_stall() {
        let state = State::default();
        let answer = responses(&request("x [[reply just this]] [[delay 250ms]]"), &state);
        assert_eq!(events(&answer)[3]["delta"], "just this");
        assert_eq!(answer.3, Some(Duration::from_millis(250)));
        let answer = responses(&request("[[hang]]"), &state);
        assert!(answer.3.unwrap() >= Duration::from_secs(3600));
        let answer = responses(&request("[[stall x1]]"), &state);
        let after: usize = answer.4[0].1.parse().unwrap();
        assert_eq!(answer.4[0].0, crate::STALL_AFTER);
        assert!(
            String::from_utf8_lossy(&answer.2[..after]).starts_with("event: response.created\n")
        );
        assert!(responses(&request("[[stall x1]]"), &state).4.is_empty());
    }

    #[test]
    fn exec_calls_the_tool_then_shows_its_output() {
        let state = State::default();
        let answer = responses(
            &request("go [[exec echo three > w3.txt && cat w3.txt]]"),
            &state,
        );
        let events = events(&answer);
        let call = &events.last().unwrap()["response"]["output"][0];
        assert_eq!(call["type"], "function_call");
        assert_eq!(call["name"], "exec_command");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args["cmd"], "echo three > w3.txt && cat w3.txt");

        let body: Value = serde_json::from_str(TOOL_OUTPUT).unwrap();
        let answer = responses(&body, &state);
        assert_eq!(self::events(&answer)[3]["delta"], "ran: three");
    }

    #[test]
    fn the_server_counts_responses_and_refuses_websockets() {
        use std::io::{Read, Write};
        let server = crate::FakeServer::start().unwrap();
        assert_eq!(server.openai_url(), format!("{}/v1", server.url()));
        let exchange = |request: String| {
            let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
            let mut head = [0u8; 12];
            stream.read_exact(&mut head).unwrap();
            String::from_utf8_lossy(&head).to_string()
        };
        let get = "GET /v1/responses HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n";
        assert_eq!(exchange(get.to_string()), "HTTP/1.1 426");
        let body = request("hello").to_string();
        let post = format!(
            "POST /v1/responses HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(exchange(post), "HTTP/1.1 200");
        assert_eq!(server.responses_requests(), 1);
        assert_eq!(server.requests(), 0);
    }
}
