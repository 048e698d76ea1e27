//! A fake Anthropic Messages API on loopback, so the real `claude` CLI can run in tests without the
//! network.
//!
//! It answers `POST /v1/messages` with a server-sent-events stream (`message_start`,
//! `content_block_start`, `content_block_delta`, `content_block_stop`, `message_delta`,
//! `message_stop`), `POST /v1/messages/count_tokens` with a count, and any `GET` with `{}`.
//!
//! What it answers is decided by the last user prompt in the request, so a test steers it through
//! the prompt it submits:
//! - By default the answer proves which turns the model saw: `seen N: p1 | p2 | ... | pN`, each
//!   prompt's first line cut to 60 characters (prompts are the user text blocks that are not
//!   `<system-reminder>`s).
//! - `[[delay 2s]]` (or `500ms`) waits that long before answering; `[[hang]]` never answers.
//! - `[[status 529]]` answers with that HTTP status and an API error body; `[[status 529 x2]]`
//!   does so for the first two requests carrying that same directive, then answers normally.
//! - `[[usage-limit 1767225600]]` answers with the text `Claude AI usage limit reached|<epoch>`
//!   (`[[usage-limit +5 x1]]`: five seconds after the answer, and only the first time).
//! - `[[limited 1767225600]]` answers 429 with the unified rate-limit headers saying `rejected` and
//!   resetting at that epoch, as the API does when a subscription's usage limit is reached.
//! - `[[reply some text]]` answers with exactly that text.
//! - `[[bash echo hi > f]]` first answers with a call of Claude Code's `Bash` tool running that
//!   command; once the request carries the tool's result, answers `ran: <the result's first line>`.
//!
//! Every request is counted; [`FakeServer::requests`] tells how many `/v1/messages` calls came.
//!
//! The same server also fakes the OpenAI Responses API for `codex` (see [`openai`]).
//! With `FAKE_LOG=path` in its environment, it appends every request it gets to that file.
//! The same server also fakes the Google Gemini API for the `gemini` CLI: see [`gemini`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

pub mod gemini;
pub mod openai;

/// A running fake server; it stops when dropped.
pub struct FakeServer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Default)]
struct State {
    messages: AtomicU64,
    /// `POST /v1/responses` requests (OpenAI).
    responses: AtomicU64,
    /// Gemini `generateContent` and `streamGenerateContent` calls.
    gemini: AtomicU64,
    /// How many times each `[[status ...]]` directive has been answered with its error.
    failures: Mutex<HashMap<String, u32>>,
}

impl FakeServer {
    /// Starts a server on 127.0.0.1 and a free port, on a thread of its own.
    pub fn start() -> std::io::Result<FakeServer> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let state = Arc::new(State::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::Builder::new()
            .name("fake-anthropic".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime for the fake server");
                rt.block_on(async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    let accept = async {
                        loop {
                            if let Ok((stream, _)) = listener.accept().await {
                                tokio::spawn(serve(stream, st.clone()));
                            }
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = rx => {}
                    }
                });
                // Connections still open (a hung answer) are dropped with the runtime.
                rt.shutdown_timeout(Duration::from_millis(100));
            })?;
        Ok(FakeServer {
            addr,
            state,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT`, for `ANTHROPIC_BASE_URL` (and `GOOGLE_GEMINI_BASE_URL`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many `POST /v1/messages` requests have come.
    pub fn requests(&self) -> u64 {
        self.state.messages.load(Ordering::SeqCst)
    }

    /// `http://127.0.0.1:PORT/v1`, the `base_url` of a codex model provider.
    pub fn openai_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// How many `POST /v1/responses` requests have come.
    pub fn responses_requests(&self) -> u64 {
        self.state.responses.load(Ordering::SeqCst)
    }

    /// How many Gemini `generateContent` and `streamGenerateContent` requests have come.
    pub fn gemini_requests(&self) -> u64 {
        self.state.gemini.load(Ordering::SeqCst)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Serves one connection: HTTP/1.1 with keep-alive, requests one after another.
async fn serve(stream: TcpStream, state: Arc<State>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let Some(request) = read_request(&mut reader).await else {
            return;
        };
        let (status, content_type, body, delay, mut headers) = answer(&request, &state);
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        // A stall: the head and this many bytes of the body are sent, then nothing more.
        let stall: Option<usize> = headers
            .iter()
            .position(|(k, _)| k == STALL_AFTER)
            .and_then(|i| headers.remove(i).1.parse().ok());
        let extra: String = headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\r\n"))
            .collect();
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nrequest-id: req_fake\r\n{extra}\r\n",
            reason(status),
            body.len()
        );
        let sent = stall.unwrap_or(body.len()).min(body.len());
        if write.write_all(head.as_bytes()).await.is_err()
            || write.write_all(&body[..sent]).await.is_err()
        {
            return;
        }
        if stall.is_some() {
            let _ = write.flush().await;
            tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
            return;
        }
    }
}

/// A pseudo-header of an [`Answer`], not sent: only so many bytes of the body are sent, then the
/// connection stays silent (a stream that stalls after its headers).
const STALL_AFTER: &str = "x-fake-stall-after";

async fn read_request(reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut length = 0usize;
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header).await.ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).await.ok()?;
    let request = Request {
        method,
        path,
        headers,
        body,
    };
    log(&request);
    Some(request)
}

/// Appends the request to the file named by `FAKE_LOG`, if set: for seeing what a CLI sends.
fn log(request: &Request) {
    use std::io::Write;
    let Some(path) = std::env::var_os("FAKE_LOG") else {
        return;
    };
    let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    else {
        return;
    };
    let mut text = format!("{} {}\n", request.method, request.path);
    for (name, value) in &request.headers {
        text.push_str(&format!("{name}: {value}\n"));
    }
    text.push('\n');
    text.push_str(&String::from_utf8_lossy(&request.body));
    text.push_str("\n\n");
    let _ = file.write_all(text.as_bytes());
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Status",
    }
}

/// Status, content type, body, delay before answering, extra headers.
type Answer = (
    u16,
    &'static str,
    Vec<u8>,
    Option<Duration>,
    Vec<(String, String)>,
);

fn answer(request: &Request, state: &State) -> Answer {
    let json_answer = |status: u16, v: Value| {
        (
            status,
            "application/json",
            v.to_string().into_bytes(),
            None,
            Vec::new(),
        )
    };
    if let Some(answer) = gemini::answer(request, state) {
        return answer;
    }
    let path = request.path.split('?').next().unwrap_or("");
    if request.method == "GET" && path == "/v1/responses" {
        // A WebSocket upgrade: refused, so the client uses HTTP.
        return json_answer(
            426,
            json!({ "error": { "message": "websockets are not served", "type": "invalid_request_error", "param": null, "code": null } }),
        );
    }
    if request.method == "GET" {
        return json_answer(200, json!({}));
    }
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    match path {
        "/v1/messages/count_tokens" => json_answer(200, json!({ "input_tokens": 10 })),
        "/v1/messages" => {
            state.messages.fetch_add(1, Ordering::SeqCst);
            messages(&body, state)
        }
        "/v1/responses" => openai::responses(&body, state),
        _ => json_answer(
            404,
            json!({ "type": "error", "error": { "type": "not_found_error", "message": "no such endpoint" } }),
        ),
    }
}

/// The user's prompts in a request, oldest first.
pub fn prompts(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for m in body["messages"].as_array().into_iter().flatten() {
        if m["role"] != "user" {
            continue;
        }
        let texts: Vec<String> = match &m["content"] {
            Value::String(s) => vec![s.clone()],
            Value::Array(blocks) => blocks
                .iter()
                .filter(|b| b["type"] == "text")
                .filter_map(|b| b["text"].as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        out.extend(
            texts
                .into_iter()
                .filter(|t| !t.trim_start().starts_with("<system-reminder>")),
        );
    }
    out
}

/// The `[[name args]]` directives in a prompt.
fn directives(prompt: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = prompt;
    while let Some(start) = rest.find("[[") {
        let Some(end) = rest[start..].find("]]") else {
            break;
        };
        let inner = rest[start + 2..start + end].trim();
        let (name, args) = inner.split_once(' ').unwrap_or((inner, ""));
        out.push((name.to_string(), args.trim().to_string()));
        rest = &rest[start + end + 2..];
    }
    out
}

fn parse_delay(text: &str) -> Option<Duration> {
    let t = text.trim();
    if let Some(ms) = t.strip_suffix("ms") {
        return ms.trim().parse().ok().map(Duration::from_millis);
    }
    if let Some(s) = t.strip_suffix('s') {
        return s.trim().parse::<f64>().ok().map(Duration::from_secs_f64);
    }
    t.parse().ok().map(Duration::from_secs)
}

/// The default answer: `seen N: p1 | ... | pN`, each prompt's first line cut to 60 characters.
fn seen(prompts: &[String]) -> String {
    let shown: Vec<String> = prompts
        .iter()
        .map(|p| {
            p.lines()
                .next()
                .unwrap_or("")
                .chars()
                .take(60)
                .collect::<String>()
        })
        .collect();
    format!("seen {}: {}", prompts.len(), shown.join(" | "))
}

/// The text of the tool result the request ends with, if its last message is one.
fn tool_result(body: &Value) -> Option<String> {
    let last = body["messages"].as_array()?.last()?;
    let blocks = last["content"].as_array()?;
    let result = blocks.iter().find(|b| b["type"] == "tool_result")?;
    Some(match &result["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    })
}

/// The event stream of a message that calls Claude Code's `Bash` tool with `command`.
fn bash_call(model: &str, command: &str) -> String {
    let input = json!({ "command": command, "description": "Run the test's command" }).to_string();
    let events = [
        (
            "message_start",
            json!({ "type": "message_start", "message": { "id": "msg_fake_tool", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": { "input_tokens": 100, "output_tokens": 1 } } }),
        ),
        (
            "content_block_start",
            json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "tool_use", "id": "toolu_fake_1", "name": "Bash", "input": {} } }),
        ),
        (
            "content_block_delta",
            json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "input_json_delta", "partial_json": input } }),
        ),
        (
            "content_block_stop",
            json!({ "type": "content_block_stop", "index": 0 }),
        ),
        (
            "message_delta",
            json!({ "type": "message_delta", "delta": { "stop_reason": "tool_use", "stop_sequence": null }, "usage": { "output_tokens": 10 } }),
        ),
        ("message_stop", json!({ "type": "message_stop" })),
    ];
    let mut out = String::new();
    for (name, data) in events {
        out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    out
}

fn messages(body: &Value, state: &State) -> Answer {
    let all = prompts(body);
    let last = all.last().cloned().unwrap_or_default();
    let mut delay = None;
    let mut text = None;
    for (name, args) in directives(&last) {
        match name.as_str() {
            "bash" => match tool_result(body) {
                Some(result) => {
                    text = Some(format!("ran: {}", result.lines().next().unwrap_or("")));
                }
                None if body["stream"] == true => {
                    let model = body["model"].as_str().unwrap_or("claude-fake");
                    return (
                        200,
                        "text/event-stream",
                        bash_call(model, &args).into_bytes(),
                        delay,
                        Vec::new(),
                    );
                }
                None => {}
            },
            "delay" => delay = parse_delay(&args),
            "hang" => delay = Some(Duration::from_secs(24 * 3600)),
            "reply" => text = Some(args),
            "usage-limit" => {
                let mut words = args.split_whitespace();
                // `+N`: N seconds after this answer.
                let epoch = match words.next().unwrap_or("0") {
                    rel if rel.starts_with('+') => {
                        let secs: u64 = rel[1..].parse().unwrap_or(0);
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap_or_default();
                        (now.as_secs() + secs).to_string()
                    }
                    abs => abs.to_string(),
                };
                let times: Option<u32> = words
                    .next()
                    .and_then(|w| w.strip_prefix('x'))
                    .and_then(|n| n.parse().ok());
                let mut failures = state.failures.lock().unwrap_or_else(|p| p.into_inner());
                let count = failures.entry(format!("usage-limit {args}")).or_insert(0);
                if times.is_none_or(|t| *count < t) {
                    *count += 1;
                    text = Some(format!("Claude AI usage limit reached|{epoch}"));
                }
            }
            "limited" => {
                // What the API does when a subscription's usage limit is reached: 429, with the
                // unified rate-limit headers saying rejected and when it resets.
                let err = json!({ "type": "error", "error": { "type": "rate_limit_error", "message": "usage limit reached" } });
                let headers = vec![
                    (
                        "anthropic-ratelimit-unified-status".to_string(),
                        "rejected".to_string(),
                    ),
                    (
                        "anthropic-ratelimit-unified-reset".to_string(),
                        args.clone(),
                    ),
                    (
                        "anthropic-ratelimit-unified-representative-claim".to_string(),
                        "five_hour".to_string(),
                    ),
                ];
                return (
                    429,
                    "application/json",
                    err.to_string().into_bytes(),
                    delay,
                    headers,
                );
            }
            "status" => {
                let mut words = args.split_whitespace();
                let status: u16 = words.next().and_then(|s| s.parse().ok()).unwrap_or(500);
                let times: Option<u32> = words
                    .next()
                    .and_then(|w| w.strip_prefix('x'))
                    .and_then(|n| n.parse().ok());
                let key = format!("status {args}");
                let mut failures = state.failures.lock().unwrap_or_else(|p| p.into_inner());
                let count = failures.entry(key).or_insert(0);
                if times.is_none_or(|t| *count < t) {
                    *count += 1;
                    let kind = match status {
                        529 => "overloaded_error",
                        429 => "rate_limit_error",
                        _ => "api_error",
                    };
                    let err = json!({ "type": "error", "error": { "type": kind, "message": format!("fake {status}") } });
                    return (
                        status,
                        "application/json",
                        err.to_string().into_bytes(),
                        delay,
                        Vec::new(),
                    );
                }
            }
            _ => {}
        }
    }
    let text = text.unwrap_or_else(|| seen(&all));
    let model = body["model"].as_str().unwrap_or("claude-fake").to_string();
    let input_tokens = 10 + (last.len() / 4) as u64;
    let output_tokens = 1 + (text.len() / 4) as u64;
    if body["stream"] == true {
        let events = [
            (
                "message_start",
                json!({ "type": "message_start", "message": { "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": { "input_tokens": input_tokens, "output_tokens": 1 } } }),
            ),
            (
                "content_block_start",
                json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
            ),
            (
                "content_block_delta",
                json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": text } }),
            ),
            (
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": 0 }),
            ),
            (
                "message_delta",
                json!({ "type": "message_delta", "delta": { "stop_reason": "end_turn", "stop_sequence": null }, "usage": { "output_tokens": output_tokens } }),
            ),
            ("message_stop", json!({ "type": "message_stop" })),
        ];
        let mut out = String::new();
        for (name, data) in events {
            out.push_str(&format!("event: {name}\ndata: {data}\n\n"));
        }
        (
            200,
            "text/event-stream",
            out.into_bytes(),
            delay,
            Vec::new(),
        )
    } else {
        let msg = json!({ "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [{ "type": "text", "text": text }], "stop_reason": "end_turn", "stop_sequence": null, "usage": { "input_tokens": input_tokens, "output_tokens": output_tokens } });
        (
            200,
            "application/json",
            msg.to_string().into_bytes(),
            delay,
            Vec::new(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives_are_found() {
        assert_eq!(
            directives("do it [[delay 2s]] and [[status 529 x2]]"),
            vec![
                ("delay".into(), "2s".into()),
                ("status".into(), "529 x2".into())
            ]
        );
        assert_eq!(parse_delay("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_delay("1.5s"), Some(Duration::from_millis(1500)));
    }

    #[test]
    fn prompts_skip_system_reminders() {
        let body = json!({ "messages": [
            { "role": "user", "content": [{ "type": "text", "text": "<system-reminder>x</system-reminder>" }, { "type": "text", "text": "first" }] },
            { "role": "assistant", "content": [{ "type": "text", "text": "answer" }] },
            { "role": "user", "content": "second" }
        ] });
        assert_eq!(prompts(&body), vec!["first", "second"]);
    }

    #[test]
    fn a_status_directive_with_a_count_fails_that_many_times() {
        let state = State::default();
        let body = json!({ "messages": [{ "role": "user", "content": "hi [[status 529 x2]]" }] });
        assert_eq!(messages(&body, &state).0, 529);
        assert_eq!(messages(&body, &state).0, 529);
        let (status, _, text, _, _) = messages(&body, &state);
        assert_eq!(status, 200);
        assert!(String::from_utf8(text).unwrap().contains("seen 1: hi"));
    }
}
