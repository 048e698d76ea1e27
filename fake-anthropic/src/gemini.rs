//! The fake Google Gemini API (`generativelanguage.googleapis.com`, API-key auth), so the real
//! `gemini` CLI can run in tests without the network: point it here with
//! `GOOGLE_GEMINI_BASE_URL=<FakeServer::url()>`, `GEMINI_API_KEY=<anything>` and
//! `security.auth.selectedType = "gemini-api-key"` in its settings.
//!
//! It serves, under `/v1beta/` (also `/v1/` and `/v1alpha/`):
//! - `POST models/<model>:streamGenerateContent?alt=sse`: the answer as server-sent events, each
//!   `data: <GenerateContentResponse>\r\n\r\n`; the text comes in two chunks, the last one with
//!   `finishReason: STOP` and the full `usageMetadata`.
//! - `POST models/<model>:generateContent`: the same answer as one JSON response; the model router's
//!   call (model `auto`, asking for a `complexity_score` JSON) gets a valid classification instead.
//! - `POST models/<model>:countTokens`: `{"totalTokens": N}`; `GET models[/<model>]`: a model list or
//!   a model.
//!
//! What it answers is decided by the last user prompt, as for the Anthropic API (see the crate
//! doc). The prompts are the text parts of the `user` turns in `contents`, oldest first, without
//! what the CLI adds by itself: the `<session_context>` turn it opens every conversation with,
//! `functionResponse` parts and thoughts (the `systemInstruction` is not a turn).
//! - By default: `seen N: p1 | p2 | ... | pN`, each prompt's first line cut to 60 characters.
//! - `[[reply some text]]` answers with exactly that text.
//! - `[[tool list_directory {"dir_path":"."}]]` answers with that `functionCall` (arguments a JSON
//!   object, `{}` if left out); the request that brings its `functionResponse` back gets the
//!   default answer.
//! - `[[delay 2s]]` (or `500ms`) waits before answering; `[[hang]]` never answers.
//! - `[[status 500]]` answers with that HTTP status and a Google error body
//!   `{"error":{"code":500,"message":..,"status":"INTERNAL"}}`; `[[status 500 x2]]` only the
//!   first two times. `[[status 429]]` is `RESOURCE_EXHAUSTED` from a per-minute quota, with a
//!   `RetryInfo` of 2s (the CLI retries it); `[[quota]]` (or `[[quota x1]]`) is `RESOURCE_EXHAUSTED`
//!   from the daily quota, which the CLI takes as final: "You exceeded your current quota, ...".
//!
//! Usage (`usageMetadata`) is deterministic: `promptTokenCount` = 1000 + Σ ceil(bytes/4) over the
//! prompts, `candidatesTokenCount` = ceil(bytes/4) of the answer (at least 1),
//! `cachedContentTokenCount` = 1000 when the request carries earlier prompts (else absent),
//! `totalTokenCount` = prompt + candidates. The router's call uses 200 + 20.
//!
//! [`FakeServer::gemini_requests`](crate::FakeServer::gemini_requests) counts the
//! `generateContent` and `streamGenerateContent` calls. With `FAKE_GEMINI_LOG=<file>` in the
//! environment every Gemini request is appended to that file as a JSON line
//! (`{"method","path","body"}`), to see what the CLI sends.

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Answer, Request, State, directives, parse_delay};

/// Answers a request if its path is one of the Gemini API's, `None` otherwise.
pub(crate) fn answer(request: &Request, state: &State) -> Option<Answer> {
    let (path, _query) = request
        .path
        .split_once('?')
        .unwrap_or((request.path.as_str(), ""));
    let rest = ["/v1beta/", "/v1alpha/", "/v1/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix))?;
    let rest = rest.strip_prefix("models")?;
    log(request);
    let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
    if request.method == "GET" {
        return Some(match rest.strip_prefix('/') {
            Some(name) if !name.is_empty() => json_answer(200, model_info(name)),
            _ => json_answer(
                200,
                json!({ "models": [model_info("gemini-2.5-pro"), model_info("gemini-2.5-flash")] }),
            ),
        });
    }
    let Some((model, method)) = rest.strip_prefix('/').and_then(|r| r.rsplit_once(':')) else {
        return Some(not_found(path));
    };
    Some(match method {
        "streamGenerateContent" => {
            state.gemini.fetch_add(1, Ordering::SeqCst);
            generate(model, &body, state, true)
        }
        "generateContent" => {
            state.gemini.fetch_add(1, Ordering::SeqCst);
            if is_router_call(&body) {
                router(model)
            } else {
                generate(model, &body, state, false)
            }
        }
        "countTokens" => {
            let all = prompts(&body);
            json_answer(200, json!({ "totalTokens": prompt_tokens(&all) }))
        }
        _ => not_found(path),
    })
}

fn json_answer(status: u16, v: Value) -> Answer {
    (
        status,
        "application/json",
        v.to_string().into_bytes(),
        None,
        Vec::new(),
    )
}

fn not_found(path: &str) -> Answer {
    json_answer(
        404,
        error_body(404, &format!("fake: no such method {path}")),
    )
}

fn model_info(name: &str) -> Value {
    json!({
        "name": format!("models/{name}"),
        "displayName": name,
        "inputTokenLimit": 1_048_576,
        "outputTokenLimit": 65_536,
        "supportedGenerationMethods": ["generateContent", "countTokens"],
    })
}

/// Appends the request to `$FAKE_GEMINI_LOG`, if set.
fn log(request: &Request) {
    let Some(file) = std::env::var_os("FAKE_GEMINI_LOG") else {
        return;
    };
    let body: Value = serde_json::from_slice(&request.body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&request.body).into_owned()));
    let line = json!({ "method": request.method, "path": request.path, "body": body });
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
    {
        let _ = writeln!(f, "{line}");
    }
}

/// The user's own prompts in a request, oldest first.
pub fn prompts(body: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for content in body["contents"].as_array().into_iter().flatten() {
        if content["role"] != "user" {
            continue;
        }
        let texts: Vec<&str> = content["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["thought"] != true)
            .filter_map(|p| p["text"].as_str())
            .filter(|t| !t.trim_start().starts_with("<session_context>"))
            .collect();
        if !texts.is_empty() {
            out.push(texts.concat());
        }
    }
    out
}

/// Whether the last turn of a request is a user turn carrying a `functionResponse`.
fn ends_with_function_response(body: &Value) -> bool {
    body["contents"]
        .as_array()
        .and_then(|c| c.last())
        .is_some_and(|last| {
            last["role"] == "user"
                && last["parts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| !p["functionResponse"].is_null())
        })
}

/// Whether this is the model router's classification call (model `auto`).
fn is_router_call(body: &Value) -> bool {
    let config = &body["generationConfig"];
    let schema = if config["responseJsonSchema"].is_null() {
        &config["responseSchema"]
    } else {
        &config["responseJsonSchema"]
    };
    !schema["properties"]["complexity_score"].is_null()
}

fn router(model: &str) -> Answer {
    let text = json!({
        "complexity_reasoning": "fake router: a simple request",
        "complexity_score": 1,
    })
    .to_string();
    let response = json!({
        "candidates": [{
            "content": { "role": "model", "parts": [{ "text": text }] },
            "finishReason": "STOP",
            "index": 0,
        }],
        "usageMetadata": { "promptTokenCount": 200, "candidatesTokenCount": 20, "totalTokenCount": 220 },
        "modelVersion": model,
        "responseId": "fake-router",
    });
    json_answer(200, response)
}

fn tokens(text: &str) -> u64 {
    text.len().div_ceil(4) as u64
}

fn prompt_tokens(prompts: &[String]) -> u64 {
    1000 + prompts.iter().map(|p| tokens(p)).sum::<u64>()
}

/// The Google status name and a message like the API's for an HTTP status.
fn status_name(code: u16) -> (&'static str, &'static str) {
    match code {
        400 => ("INVALID_ARGUMENT", "Request contains an invalid argument."),
        401 => (
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
        ),
        403 => ("PERMISSION_DENIED", "The caller does not have permission."),
        404 => ("NOT_FOUND", "Requested entity was not found."),
        429 => ("RESOURCE_EXHAUSTED", "Resource has been exhausted."),
        500 => (
            "INTERNAL",
            "An internal error has occurred. Please retry or report in https://developers.generativeai.google/guide/troubleshooting",
        ),
        503 => (
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
        ),
        504 => (
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
        ),
        _ => ("UNKNOWN", "Unknown error."),
    }
}

fn error_body(code: u16, message: &str) -> Value {
    json!({ "error": { "code": code, "message": message, "status": status_name(code).0 } })
}

/// A 429 as the API sends it when a quota is exceeded: per minute (retryable) or per day (final).
fn quota_error(model: &str, daily: bool) -> Value {
    let (quota_id, limit, retry) = if daily {
        (
            "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
            "250",
            "37s",
        )
    } else {
        (
            "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
            "10",
            "2s",
        )
    };
    let message = format!(
        "You exceeded your current quota, please check your plan and billing details. For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. To monitor your current usage, head to: https://ai.dev/usage?tab=rate-limit. \n* Quota exceeded for metric: generativelanguage.googleapis.com/generate_content_free_tier_requests, limit: {limit}, model: {model}\nPlease retry in {retry}."
    );
    json!({ "error": {
        "code": 429,
        "message": message,
        "status": "RESOURCE_EXHAUSTED",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{
                    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                    "quotaId": quota_id,
                    "quotaDimensions": { "location": "global", "model": model },
                    "quotaValue": limit,
                }],
            },
            {
                "@type": "type.googleapis.com/google.rpc.Help",
                "links": [{ "description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits" }],
            },
            { "@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry },
        ],
    } })
}

/// Whether a `[[name args]]` directive with an optional `xK` count should fail this time (and
/// counts it if so).
fn fails_now(state: &State, key: String, times: Option<u32>) -> bool {
    let mut failures = state.failures.lock().unwrap_or_else(|p| p.into_inner());
    let count = failures.entry(key).or_insert(0);
    if times.is_none_or(|t| *count < t) {
        *count += 1;
        true
    } else {
        false
    }
}

fn count_arg(word: Option<&str>) -> Option<u32> {
    word.and_then(|w| w.strip_prefix('x'))
        .and_then(|n| n.parse().ok())
}

/// The answer to a `generateContent` or `streamGenerateContent` call.
fn generate(model: &str, body: &Value, state: &State, stream: bool) -> Answer {
    let all = prompts(body);
    let last = all.last().cloned().unwrap_or_default();
    let mut delay = None;
    let mut text = None;
    let mut call = None;
    for (name, args) in directives(&last) {
        let error = match name.as_str() {
            "delay" => {
                delay = parse_delay(&args);
                None
            }
            "hang" => {
                delay = Some(Duration::from_secs(24 * 3600));
                None
            }
            "reply" => {
                text = Some(args);
                None
            }
            "tool" => {
                let (tool, arguments) = args.split_once(' ').unwrap_or((&args, ""));
                let arguments: Value = serde_json::from_str(arguments).unwrap_or(json!({}));
                call = Some(json!({ "name": tool, "args": arguments }));
                None
            }
            "status" => {
                let mut words = args.split_whitespace();
                let code: u16 = words.next().and_then(|s| s.parse().ok()).unwrap_or(500);
                let times = count_arg(words.next());
                fails_now(state, format!("gemini status {args}"), times).then(|| {
                    let body = if code == 429 {
                        quota_error(model, false)
                    } else {
                        error_body(code, status_name(code).1)
                    };
                    (code, body)
                })
            }
            "quota" => {
                let times = count_arg(args.split_whitespace().next());
                fails_now(state, format!("gemini quota {args}"), times)
                    .then(|| (429, quota_error(model, true)))
            }
            _ => None,
        };
        if let Some((code, body)) = error {
            let mut answer = json_answer(code, body);
            answer.3 = delay;
            return answer;
        }
    }
    let text = text.unwrap_or_else(|| {
        let shown: Vec<String> = all
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
        format!("seen {}: {}", all.len(), shown.join(" | "))
    });
    // A tool call, unless this request brings its result back.
    let call = call.filter(|_| !ends_with_function_response(body));
    let prompt = prompt_tokens(&all);
    let candidates = match &call {
        Some(call) => tokens(&call.to_string()),
        None => tokens(&text).max(1),
    };
    let mut usage = json!({
        "promptTokenCount": prompt,
        "candidatesTokenCount": candidates,
        "totalTokenCount": prompt + candidates,
        "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": prompt }],
    });
    if all.len() > 1 {
        usage["cachedContentTokenCount"] = json!(1000);
    }
    let response_id = format!("fake-{}", state.gemini.load(Ordering::SeqCst));
    let chunk = |part: Value, last: bool| {
        let mut candidate = json!({
            "content": { "role": "model", "parts": [part] },
            "index": 0,
        });
        let usage = if last {
            candidate["finishReason"] = json!("STOP");
            usage.clone()
        } else {
            json!({ "promptTokenCount": prompt, "totalTokenCount": prompt })
        };
        json!({
            "candidates": [candidate],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": response_id,
        })
    };
    let chunks = if let Some(call) = call {
        vec![chunk(json!({ "functionCall": call }), true)]
    } else if !stream {
        vec![chunk(json!({ "text": text }), true)]
    } else {
        // Two chunks, split at a character boundary near the middle, so a client must
        // concatenate them.
        let mut split = text.len() / 2;
        while !text.is_char_boundary(split) {
            split += 1;
        }
        vec![
            chunk(json!({ "text": &text[..split] }), false),
            chunk(json!({ "text": &text[split..] }), true),
        ]
    };
    if !stream {
        let mut answer = json_answer(200, chunks[0].clone());
        answer.3 = delay;
        return answer;
    }
    let mut out = String::new();
    for data in chunks {
        out.push_str(&format!("data: {data}\r\n\r\n"));
    }
    (
        200,
        "text/event-stream",
        out.into_bytes(),
        delay,
        Vec::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_texts(answer: &Answer) -> Vec<Value> {
        String::from_utf8(answer.2.clone())
            .unwrap()
            .split("\r\n\r\n")
            .filter(|s| !s.is_empty())
            .map(|s| serde_json::from_str(s.strip_prefix("data: ").unwrap()).unwrap())
            .collect()
    }

    #[test]
    fn the_stream_comes_in_two_chunks_that_make_the_answer() {
        let state = State::default();
        let body = json!({ "contents": [{ "role": "user", "parts": [{ "text": "hello" }] }] });
        let answer = generate("gemini-2.5-flash", &body, &state, true);
        assert_eq!(answer.0, 200);
        let chunks = stream_texts(&answer);
        assert_eq!(chunks.len(), 2);
        let text: String = chunks
            .iter()
            .map(|c| {
                c["candidates"][0]["content"]["parts"][0]["text"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(text, "seen 1: hello");
        let last = &chunks[1];
        assert_eq!(last["candidates"][0]["finishReason"], "STOP");
        assert_eq!(last["usageMetadata"]["promptTokenCount"], 1002);
        assert_eq!(last["usageMetadata"]["candidatesTokenCount"], 4);
        assert_eq!(last["usageMetadata"]["totalTokenCount"], 1006);
    }

    #[test]
    fn status_and_quota_directives_answer_google_errors() {
        let state = State::default();
        let body = |p: &str| json!({ "contents": [{ "role": "user", "parts": [{ "text": p }] }] });
        let a = generate("m", &body("x [[status 500 x1]]"), &state, true);
        assert_eq!(a.0, 500);
        let err: Value = serde_json::from_slice(&a.2).unwrap();
        assert_eq!(err["error"]["status"], "INTERNAL");
        assert_eq!(err["error"]["code"], 500);
        assert_eq!(
            generate("m", &body("x [[status 500 x1]]"), &state, true).0,
            200
        );
        let a = generate("m", &body("[[status 429]]"), &state, true);
        let err: Value = serde_json::from_slice(&a.2).unwrap();
        assert_eq!(a.0, 429);
        assert_eq!(err["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(err["error"]["details"][2]["retryDelay"], "2s");
        let a = generate("m", &body("[[quota]]"), &state, true);
        let err: Value = serde_json::from_slice(&a.2).unwrap();
        assert!(
            err["error"]["details"][0]["violations"][0]["quotaId"]
                .as_str()
                .unwrap()
                .contains("PerDay")
        );
    }

    fn answer_text(answer: &Answer) -> String {
        stream_texts(answer)
            .iter()
            .flat_map(|c| {
                c["candidates"][0]["content"]["parts"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .filter_map(|p| p["text"].as_str().map(str::to_string))
            .collect()
    }

    /// A real request of gemini 0.61.0 (system instruction and tools trimmed): a resumed session
    /// whose first turn called a tool.
    fn real_request() -> Value {
        serde_json::from_str(include_str!(
            "../fixtures/gemini/request-resume-after-tool.json"
        ))
        .unwrap()
    }

    #[test]
    fn prompts_of_a_real_request_leave_out_what_the_cli_adds() {
        let body = real_request();
        let first = r#"look around [[tool list_directory {"dir_path":"."}]]"#;
        assert_eq!(prompts(&body), vec![first, "and now?"]);
        let answer = generate("gemini-2.5-flash", &body, &State::default(), true);
        assert_eq!(answer_text(&answer), format!("seen 2: {first} | and now?"));
    }

    #[test]
    fn a_tool_directive_calls_the_tool_once() {
        let state = State::default();
        let mut body = real_request();
        let contents = body["contents"].as_array_mut().unwrap();
        contents.truncate(3);
        // Model turn 2 called the tool and turn 3 brings its result: now the text answer.
        assert!(ends_with_function_response(&body));
        let answer = generate("gemini-2.5-flash", &body, &state, true);
        assert!(answer_text(&answer).starts_with("seen 1: look around"));
        // The first request: the call.
        body["contents"].as_array_mut().unwrap().truncate(1);
        let answer = generate("gemini-2.5-flash", &body, &state, true);
        let chunks = stream_texts(&answer);
        assert_eq!(chunks.len(), 1);
        let part = &chunks[0]["candidates"][0]["content"]["parts"][0];
        assert_eq!(
            part["functionCall"],
            json!({ "name": "list_directory", "args": { "dir_path": "." } })
        );
    }

    /// One request over TCP: status line and body.
    fn http(server: &crate::FakeServer, method: &str, path: &str, body: &str) -> (String, String) {
        use std::io::{BufRead, BufReader, Read, Write};
        let mut stream = std::net::TcpStream::connect(server.addr()).unwrap();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut out = vec![0; length];
        reader.read_exact(&mut out).unwrap();
        (status.trim().to_string(), String::from_utf8(out).unwrap())
    }

    #[test]
    fn the_server_serves_gemini_paths_and_counts_them() {
        let server = crate::FakeServer::start().unwrap();
        let body = r#"{"contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#;
        let (status, sse) = http(
            &server,
            "POST",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            body,
        );
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(sse.starts_with("data: {") && sse.ends_with("\r\n\r\n"));
        let (_, json) = http(
            &server,
            "POST",
            "/v1beta/models/gemini-2.5-flash:generateContent",
            body,
        );
        assert!(json.contains("seen 1: hi"));
        let (_, count) = http(
            &server,
            "POST",
            "/v1beta/models/gemini-2.5-flash:countTokens",
            body,
        );
        assert_eq!(count, r#"{"totalTokens":1001}"#);
        assert_eq!(server.gemini_requests(), 2);
        assert_eq!(server.requests(), 0);
    }

    #[test]
    fn the_router_call_gets_a_classification() {
        let body = json!({ "contents": [], "generationConfig": { "responseMimeType": "application/json", "responseJsonSchema": { "type": "object", "properties": { "complexity_reasoning": { "type": "string" }, "complexity_score": { "type": "integer" } } } } });
        assert!(is_router_call(&body));
        let a = router("gemini-2.5-flash-lite");
        let v: Value = serde_json::from_slice(&a.2).unwrap();
        let text = v["candidates"][0]["content"]["parts"][0]["text"]
            .as_str()
            .unwrap();
        let inner: Value = serde_json::from_str(text).unwrap();
        assert_eq!(inner["complexity_score"], 1);
    }
}
