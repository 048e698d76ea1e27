//! The HTTP API of a real daemon, over real sockets, with a plain HTTP/1.1 client written here.
// Unix end-to-end tests (shell-script agents, signals); Windows has tests/windows.rs.
#![cfg(unix)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const HTTP: &str = "[http]\nlisten = \"127.0.0.1:0\"\nmax_body = \"1KiB\"\n";

/// A daemon serving the API, and what a client needs to reach it.
struct Served {
    project: Project,
    daemon: Option<Daemon>,
    addr: String,
    token: String,
}

impl Served {
    fn start(project: Project) -> Served {
        let daemon = project.start();
        let addr = api_address(&daemon.log());
        let token = project.ok(&["token"]).trim().to_string();
        Served {
            project,
            daemon: Some(daemon),
            addr,
            token,
        }
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        let auth = format!("Bearer {}", self.token);
        request(
            &self.addr,
            method,
            path,
            Some(&auth),
            body.map(str::as_bytes),
        )
    }

    /// A call that must answer `status` with JSON.
    fn json(&self, method: &str, path: &str, body: Option<&str>, status: u16) -> Value {
        let reply = self.call(method, path, body);
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
        assert!(
            reply.header("content-type").starts_with("application/json"),
            "{method} {path}: {}",
            reply.headers
        );
        serde_json::from_str(&reply.body).unwrap()
    }

    /// A call that must fail with `status` and an error naming `needle`.
    fn error(&self, method: &str, path: &str, body: Option<&str>, status: u16, needle: &str) {
        let answer = self.json(method, path, body, status);
        let message = answer["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(needle),
            "{method} {path}: {message:?} should mention {needle:?}"
        );
        assert_eq!(
            answer.as_object().unwrap().len(),
            1,
            "only an error: {answer}"
        );
    }

    /// Opens an event stream: the answer's status line and headers, and the rest to read.
    fn follow(&self, path: &str) -> (String, BufReader<TcpStream>) {
        let auth = format!("Bearer {}", self.token);
        let mut reader = BufReader::new(send(&self.addr, "GET", path, Some(&auth), None));
        let head = read_head(&mut reader);
        (head, reader)
    }

    /// A connection kept open after a first request answered 200.
    fn kept_alive(&self) -> Option<BufReader<TcpStream>> {
        let mut reader = BufReader::new(TcpStream::connect(&self.addr).unwrap());
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        (self.ask_again(&mut reader, "/api/status") == 200).then_some(reader)
    }

    /// A request on a connection that stays open; the status of its answer, read whole.
    fn ask_again(&self, reader: &mut BufReader<TcpStream>, path: &str) -> u16 {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\r\n",
            self.addr, self.token
        );
        if reader.get_mut().write_all(head.as_bytes()).is_err() {
            return 0;
        }
        let head = read_head(reader);
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length: ")
                    .map(|n| n.trim().parse().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        head.split(' ')
            .nth(1)
            .map_or(0, |code| code.parse().unwrap())
    }

    fn wait_state(&self, id: i64, state: &str) {
        wait_until(
            Duration::from_secs(30),
            &format!("task {id} {state}"),
            || self.json("GET", &format!("/api/tasks/{id}"), None, 200)["state"] == state,
        );
    }
}

/// The address the daemon's log says the API is on.
struct Reply {
    status: u16,
    /// The header lines, lower-cased names.
    headers: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or("")
    }
}

fn send(
    addr: &str,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<&[u8]>,
) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(auth) = auth {
        head.push_str(&format!("Authorization: {auth}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    if let Some(body) = body {
        // The server may answer (413) and close before it has read it all.
        let _ = stream.write_all(body);
    }
    stream
}

/// One request on its own connection; the whole reply.
fn request(addr: &str, method: &str, path: &str, auth: Option<&str>, body: Option<&[u8]>) -> Reply {
    read_reply(send(addr, method, path, auth, body))
}

/// A reply read to its end: the server closes the connection after it.
fn read_reply(mut stream: TcpStream) -> Reply {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, rest) = raw.split_once("\r\n\r\n").expect("a header block");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: String = lines
        .map(|l| match l.split_once(": ") {
            Some((k, v)) => format!("{}: {v}\n", k.to_ascii_lowercase()),
            None => format!("{l}\n"),
        })
        .collect();
    let body = if headers.contains("transfer-encoding: chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// A reply's status line and headers, up to the blank line; empty if the connection closed first.
fn read_head(reader: &mut BufReader<TcpStream>) -> String {
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        match reader.read_line(&mut head) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    head
}

/// A reply that is a JSON error and nothing else, naming `needle`.
fn assert_error(reply: &Reply, status: u16, needle: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert!(
        reply.header("content-type").starts_with("application/json"),
        "{}",
        reply.headers
    );
    let answer: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        answer.as_object().unwrap().len(),
        1,
        "only an error: {answer}"
    );
    let message = answer["error"].as_str().unwrap_or_default();
    assert!(
        message.contains(needle),
        "{message:?} should mention {needle:?}"
    );
}

fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

fn config(extra: &str) -> Project {
    Project::with_workers(
        &["w", "other"],
        RECORDING_AGENT,
        &format!("worker = \"w\"\n{HTTP}{extra}"),
    )
}

#[test]
fn without_the_token_nothing_is_answered() {
    let s = Served::start(config(""));
    for path in [
        "/api/status",
        "/api/tasks",
        "/metrics",
        "/api/openapi.json",
        "/api/nope",
        "/index.html",
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Basic abc"),
            Some("Bearer "),
        ] {
            let reply = request(&s.addr, "GET", path, auth, None);
            assert_eq!(reply.status, 401, "{path} with {auth:?}");
            let answer: Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
            assert!(
                answer["error"].as_str().unwrap().contains(".agentq/token"),
                "{answer}"
            );
        }
    }
    // A near miss (the token with one character changed) is as wrong as any.
    let mut near = s.token.clone().into_bytes();
    near[10] = if near[10] == b'a' { b'b' } else { b'a' };
    let near = format!("Bearer {}", String::from_utf8(near).unwrap());
    let reply = request(
        &s.addr,
        "POST",
        "/api/tasks",
        Some(&near),
        Some(br#"{"prompt": "sneaky"}"#),
    );
    assert_eq!(reply.status, 401);
    assert_eq!(s.project.json(&["tasks"]), json!([]), "nothing was queued");

    // The token: 64 hex digits in a file only its owner reads.
    assert_eq!(s.token.len(), 64);
    let file = s.project.path(".agentq/token");
    assert_eq!(read(&file).trim(), s.token);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The scheme's name is case-insensitive, as HTTP has it.
    let lower = format!("bearer {}", s.token);
    let reply = request(&s.addr, "GET", "/api/status", Some(&lower), None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    // With the token, an unknown path is a JSON 404.
    s.error("GET", "/api/nope", None, 404, "/api/openapi.json");
    s.error("GET", "/api/tasks/1/cancel", None, 405, "does not take GET");
    let reply = s.call("GET", "/api/tasks/1/cancel", None);
    assert_eq!(reply.header("allow"), "POST");
    // The dashboard page alone is served without the token: it holds no data, and asks for it.
    let page = request(&s.addr, "GET", "/", None, None);
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").starts_with("text/html"));
    assert!(
        page.header("content-security-policy")
            .contains("default-src 'self'")
    );
    assert!(page.body.contains("agentq token"));
    assert_eq!(request(&s.addr, "POST", "/", None, Some(b"{}")).status, 401);
}

#[test]
fn tasks_are_submitted_listed_shown_cancelled_and_retried() {
    let s = Served::start(config(""));
    let queued = s.json(
        "POST",
        "/api/tasks",
        Some(r#"{"prompt": "hello api"}"#),
        201,
    );
    let id = queued["id"].as_i64().unwrap();
    assert_eq!(queued["worker"], "w");
    assert_eq!(queued["pool"], false);
    assert_eq!(queued["class"], "short");
    assert!(queued["route_reason"].is_string(), "{queued}");
    s.wait_state(id, "succeeded");
    let task = s.json("GET", &format!("/api/tasks/{id}"), None, 200);
    assert_eq!(task["output"], "done: hello api");
    assert_eq!(task["source"], "http");
    assert_eq!(
        event_kinds(&task),
        ["task_queued", "task_started", "task_finished"]
    );
    assert_eq!(task["attempt_history"][0]["outcome"], "succeeded");
    // The same record `agentq show --json` prints.
    assert_eq!(task, s.project.task(id));

    // Everything a submit may set.
    let full = s.json(
        "POST",
        "/api/tasks",
        Some(
            r#"{"prompt": "all of it", "worker": "other", "pool": false, "class": "long",
                "complexity": 0.9, "priority": 7, "timeout": "30s", "max_attempts": 2,
                "max_memory": "2GiB"}"#,
        ),
        201,
    );
    let full_id = full["id"].as_i64().unwrap();
    s.wait_state(full_id, "succeeded");
    let t = s.json("GET", &format!("/api/tasks/{full_id}"), None, 200);
    assert_eq!(
        (
            &t["worker"],
            &t["class"],
            &t["priority"],
            &t["timeout_ms"],
            &t["max_attempts"],
            &t["max_memory"]
        ),
        (
            &json!("other"),
            &json!("long"),
            &json!(7),
            &json!(30_000),
            &json!(2),
            &json!(2u64 << 30)
        )
    );

    // What is wrong, and with which field.
    for (body, status, needle) in [
        (r#"{"prompt": "  "}"#, 400, "prompt: the prompt is empty"),
        (
            r#"{"prompt": "x", "worker": "nobody"}"#,
            400,
            "worker: no worker named \"nobody\"",
        ),
        (
            r#"{"prompt": "x", "timeout": "soon"}"#,
            400,
            "timeout: invalid duration",
        ),
        (
            r#"{"prompt": "x", "timeout": "0s"}"#,
            400,
            "timeout: must be above zero",
        ),
        (
            r#"{"prompt": "x", "max_memory": "lots"}"#,
            400,
            "max_memory: invalid size",
        ),
        (
            r#"{"prompt": "x", "max_attempts": 0}"#,
            400,
            "max_attempts: must be at least 1",
        ),
        (r#"{"prompt": "x", "class": "medium"}"#, 400, "class:"),
        (r#"{"prompt": "x", "complexity": 2}"#, 400, "complexity:"),
        (
            r#"{"prompt": "x", "colour": "red"}"#,
            400,
            "unknown field `colour`",
        ),
        (r#"{"worker": "w"}"#, 400, "missing field `prompt`"),
        (r#"{"prompt": "x""#, 400, "not the JSON expected"),
        ("", 400, "not the JSON expected"),
    ] {
        s.error("POST", "/api/tasks", Some(body), status, needle);
    }
    let big = format!(r#"{{"prompt": "{}"}}"#, "x".repeat(2000));
    s.error(
        "POST",
        "/api/tasks",
        Some(&big),
        413,
        "max_body (1024 bytes)",
    );
    assert_eq!(s.project.json(&["tasks"]).as_array().unwrap().len(), 2);

    // Listing.
    let list = s.json("GET", "/api/tasks?state=succeeded&worker=w", None, 200);
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [id]);
    assert_eq!(
        s.json("GET", "/api/tasks?limit=1", None, 200)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        s.json("GET", "/api/tasks", None, 200)
            .as_array()
            .unwrap()
            .len(),
        2
    );
    s.error("GET", "/api/tasks?state=done", None, 400, "state:");
    s.error("GET", "/api/tasks?limit=many", None, 400, "limit:");
    s.error(
        "GET",
        "/api/tasks?colour=red",
        None,
        400,
        "unknown query parameter \"colour\"",
    );
    s.error("GET", "/api/tasks/999", None, 404, "no task 999");
    s.error("GET", "/api/tasks/first", None, 400, "id:");

    // Cancel and retry, and the states that refuse them.
    s.error("POST", "/api/tasks/999/cancel", None, 404, "no task 999");
    s.error(
        "POST",
        &format!("/api/tasks/{id}/cancel"),
        None,
        409,
        "succeeded",
    );
    s.error(
        "POST",
        &format!("/api/tasks/{id}/retry"),
        None,
        409,
        "succeeded",
    );
    s.json("POST", "/api/workers/w/pause", None, 200);
    let held = s.json("POST", "/api/tasks", Some(r#"{"prompt": "held"}"#), 201)["id"]
        .as_i64()
        .unwrap();
    let cancelled = s.json("POST", &format!("/api/tasks/{held}/cancel"), None, 200);
    assert_eq!(
        cancelled,
        json!({ "id": held, "was": "queued", "state": "cancelled" })
    );
    s.error(
        "POST",
        &format!("/api/tasks/{held}/cancel"),
        None,
        409,
        "cancelled",
    );
    let retried = s.json("POST", &format!("/api/tasks/{held}/retry"), None, 200);
    assert_eq!(retried, json!({ "id": held, "state": "queued" }));
    s.error(
        "POST",
        &format!("/api/tasks/{held}/retry"),
        None,
        409,
        "queued",
    );
    let resumed = s.json("POST", "/api/workers/w/resume", None, 200);
    assert_eq!(resumed, json!({ "worker": "w", "was_paused": true }));
    s.wait_state(held, "succeeded");
    assert_eq!(s.project.output(held), "done: held");
    drop(s.daemon);
}

#[test]
fn workers_are_paused_resumed_and_reset_and_status_is_the_clis() {
    let s = Served::start(config(""));
    let paused = s.json(
        "POST",
        "/api/workers/other/pause",
        Some(r#"{"for": "30m"}"#),
        200,
    );
    assert_eq!(paused["worker"], "other");
    let until = paused["paused_until"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (until - now - 30 * 60_000).abs() < 60_000,
        "{until} vs {now}"
    );
    s.error(
        "POST",
        "/api/workers/other/pause",
        Some(r#"{"for": "a while"}"#),
        400,
        "for: invalid duration",
    );
    s.error(
        "POST",
        "/api/workers/other/pause",
        Some(r#"{"until": "1h"}"#),
        400,
        "unknown field `until`",
    );
    s.error(
        "POST",
        "/api/workers/nobody/pause",
        None,
        404,
        "no worker named \"nobody\"",
    );
    s.error(
        "POST",
        "/api/workers/nobody/resume",
        None,
        404,
        "no worker named \"nobody\"",
    );
    // The pool can be paused like a worker.
    s.json("POST", "/api/workers/pool/pause", Some("{}"), 200);

    // The status is what `agentq status --json` prints, but for memory figures, which move
    // between the two reads (the daemon's own resident memory, most of all).
    let without_memory = |mut v: serde_json::Value| {
        v["daemon"]["memory_mb"] = serde_json::Value::Null;
        for w in v["workers"].as_array_mut().unwrap() {
            w["memory_mb"] = serde_json::Value::Null;
            w["memory_peak_mb"] = serde_json::Value::Null;
        }
        v
    };
    let status = s.json("GET", "/api/status", None, 200);
    assert!(status["daemon"]["memory_mb"].as_f64().unwrap() > 0.0);
    assert_eq!(
        without_memory(status.clone()),
        without_memory(s.project.json(&["status"]))
    );
    assert_eq!(status["daemon"]["running"], true);
    let other = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "other")
        .unwrap();
    assert!(
        other["state"].as_str().unwrap().starts_with("paused"),
        "{other}"
    );
    assert_eq!(other["pause_reason"], "paused through the HTTP API");

    assert_eq!(
        s.json("POST", "/api/workers/other/resume", None, 200),
        json!({ "worker": "other", "was_paused": true })
    );
    assert_eq!(
        s.json("POST", "/api/workers/pool/resume", None, 200),
        json!({ "worker": "pool", "was_paused": true })
    );
    s.error(
        "POST",
        "/api/workers/w/reset-session",
        None,
        400,
        "keeps no conversation",
    );
    s.error(
        "POST",
        "/api/workers/nobody/reset-session",
        None,
        404,
        "no worker named \"nobody\"",
    );

    let doc = s.json("GET", "/api/openapi.json", None, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/tasks",
        "/api/tasks/{id}",
        "/api/tasks/{id}/cancel",
        "/api/tasks/{id}/retry",
        "/api/workers/{name}/pause",
        "/api/workers/{name}/resume",
        "/api/workers/{name}/reset-session",
        "/api/status",
        "/api/events",
        "/api/openapi.json",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is described");
    }
}

#[test]
fn a_reset_session_reaches_a_claude_worker() {
    let fake = fake_anthropic::FakeServer::start().unwrap();
    let p = Project::with_claude(&fake, "");
    // [http] goes before the worker's tables.
    let text =
        read(&p.path("agentq.toml")).replacen("[[worker]]", &format!("{HTTP}\n[[worker]]"), 1);
    std::fs::write(p.path("agentq.toml"), text).unwrap();
    let s = Served::start(p);
    assert_eq!(
        s.json("POST", "/api/workers/c/reset-session", None, 200),
        json!({ "worker": "c", "had_session": false })
    );
}

#[test]
fn metrics_are_named_typed_and_counted() {
    let s = Served::start(config("\n[pool]\ncommand = [\"cat\"]\nmax_workers = 3\n"));
    let id = s.json(
        "POST",
        "/api/tasks",
        Some(r#"{"prompt": "measure me"}"#),
        201,
    )["id"]
        .as_i64()
        .unwrap();
    s.wait_state(id, "succeeded");
    // A prompt file intake sets aside (empty), so the rejection counter has one.
    s.project.drop_file(".queue/w/empty.prompt", b"");
    wait_until(
        Duration::from_secs(20),
        "the rejection to be counted",
        || {
            s.call("GET", "/metrics", None)
                .body
                .contains("agentq_intake_rejections_total 1\n")
        },
    );
    assert!(s.project.path(".queue/w/rejected/empty.prompt").exists());

    let reply = s.call("GET", "/metrics", None);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .header("content-type")
            .starts_with("text/plain; version=0.0.4")
    );
    let text = reply.body;
    for (name, kind) in [
        ("agentq_build_info", "gauge"),
        ("agentq_tasks", "gauge"),
        ("agentq_tasks_finished_total", "counter"),
        ("agentq_task_retries_total", "counter"),
        ("agentq_task_duration_seconds", "histogram"),
        ("agentq_task_queue_wait_seconds", "histogram"),
        ("agentq_task_memory_peak_bytes", "histogram"),
        ("agentq_tokens_total", "counter"),
        ("agentq_worker_state", "gauge"),
        ("agentq_worker_restarts_total", "counter"),
        ("agentq_cost_usd_total", "counter"),
        ("agentq_queue_depth", "gauge"),
        ("agentq_pool_running", "gauge"),
        ("agentq_pool_max_workers", "gauge"),
        ("agentq_intake_rejections_total", "counter"),
        ("agentq_worker_memory_bytes", "gauge"),
        ("agentq_daemon_memory_bytes", "gauge"),
        ("agentq_daemon_start_time_seconds", "gauge"),
    ] {
        assert!(
            text.contains(&format!("\n# HELP {name} "))
                || text.starts_with(&format!("# HELP {name} ")),
            "HELP of {name}:\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "TYPE of {name}:\n{text}"
        );
    }
    for line in [
        "agentq_tasks{state=\"succeeded\",class=\"short\"} 1",
        "agentq_tasks_finished_total{worker=\"w\",state=\"succeeded\",cause=\"none\"} 1",
        "agentq_task_duration_seconds_bucket{worker=\"w\",le=\"+Inf\"} 1",
        "agentq_task_duration_seconds_count{worker=\"w\"} 1",
        "agentq_task_queue_wait_seconds_count{worker=\"w\"} 1",
        "agentq_worker_state{worker=\"w\",state=\"idle\"} 1",
        "agentq_worker_state{worker=\"w\",state=\"running\"} 0",
        "agentq_worker_restarts_total{worker=\"w\"} 0",
        "agentq_cost_usd_total{worker=\"w\"} 0",
        "agentq_queue_depth{worker=\"other\"} 0",
        "agentq_pool_running 0",
        "agentq_pool_max_workers 3",
        "agentq_intake_rejections_total 1",
        "agentq_worker_memory_bytes{worker=\"w\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
    }
    // One daemon on its own store: no hosts to tell apart.
    assert!(!text.contains("agentq_hosts") && !text.contains("agentq_worker_host"));
    // A task this short may end before its memory is sampled: whatever was counted, +Inf holds all.
    let value_of = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in:\n{text}"))
            .trim()
            .to_string()
    };
    assert_eq!(
        value_of("agentq_task_memory_peak_bytes_bucket{worker=\"w\",le=\"+Inf\"} "),
        value_of("agentq_task_memory_peak_bytes_count{worker=\"w\"} ")
    );
    let daemon_mb = value_of("agentq_daemon_memory_bytes ")
        .parse::<f64>()
        .unwrap()
        / 1048576.0;
    assert!(daemon_mb > 1.0 && daemon_mb < 500.0, "{daemon_mb} MiB");
    let started = value_of("agentq_daemon_start_time_seconds ")
        .parse::<f64>()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(started <= now && now - started < 600.0, "{started} {now}");
    // Every sample line is `name{labels} number`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
}

#[test]
fn the_event_stream_delivers_a_tasks_events_and_ends_at_shutdown() {
    let mut s = Served::start(config(""));
    let earlier = s.json("POST", "/api/tasks", Some(r#"{"prompt": "before"}"#), 201)["id"]
        .as_i64()
        .unwrap();
    s.wait_state(earlier, "succeeded");

    // Without follow: the latest events, as JSON.
    let latest = s.json("GET", "/api/events?limit=2", None, 200);
    let kinds: Vec<&str> = latest
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["task_started", "task_finished"]);
    let of_task = s.json(
        "GET",
        &format!("/api/events?task={earlier}&limit=0"),
        None,
        200,
    );
    assert_eq!(of_task.as_array().unwrap().len(), 3);
    s.error("GET", "/api/events?follow=maybe", None, 400, "follow:");

    let (head, mut reader) = s.follow("/api/events?follow=1&limit=1");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );

    let id = s.json("POST", "/api/tasks", Some(r#"{"prompt": "streamed"}"#), 201)["id"]
        .as_i64()
        .unwrap();
    let mut seen: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen
        .iter()
        .any(|e| e["task"] == id && e["kind"] == "task_finished")
    {
        assert!(Instant::now() < deadline, "events seen: {seen:?}");
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            seen.push(serde_json::from_str(data).unwrap());
        }
    }
    // The last event before the stream began, then the new task's, in order, as in the log.
    assert_eq!(seen[0]["task"], earlier);
    assert_eq!(seen[0]["kind"], "task_finished");
    let kinds: Vec<&str> = seen[1..]
        .iter()
        .filter(|e| e["task"] == id)
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["task_queued", "task_started", "task_finished"]);

    // Stopping the daemon ends the stream, and the daemon exits.
    let daemon = s.daemon.take().unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    let mut daemon = daemon;
    assert!(
        daemon.wait(Duration::from_secs(20)).success(),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_slow_client_is_cut_off_and_told_so_but_an_event_stream_is_not() {
    let s = Served::start(config(
        "header_timeout = \"1s\"\nrequest_timeout = \"1s\"\n",
    ));
    let connect = || {
        let stream = TcpStream::connect(&s.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    };

    // Half a request's headers: 408 once header_timeout has passed, and the connection closed.
    let started = Instant::now();
    let mut half = connect();
    half.write_all(b"GET /api/status HTTP/1.1\r\nHost: agentq\r\n")
        .unwrap();
    let reply = read_reply(half);
    assert_error(&reply, 408, "[http] header_timeout (1s)");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Connected, and nothing sent: closed after as long, without a word.
    let mut silent = connect();
    let mut said = Vec::new();
    silent.read_to_end(&mut said).unwrap();
    assert!(said.is_empty(), "{}", text(&said));

    // A body that stops halfway: 408 once request_timeout has passed, and nothing queued.
    let mut slow = connect();
    let head = format!(
        "POST /api/tasks HTTP/1.1\r\nHost: agentq\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n{{\"prompt\": \"slo",
        s.token
    );
    slow.write_all(head.as_bytes()).unwrap();
    assert_error(&read_reply(slow), 408, "[http] request_timeout (1s)");
    assert_eq!(s.project.json(&["tasks"]), json!([]), "nothing was queued");

    // The event stream is one request that goes on: it outlives both timeouts.
    let (head, mut reader) = s.follow("/api/events?follow=1&limit=0");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Three times the timeouts, with nothing to send meanwhile: the time passing is the test.
    std::thread::sleep(Duration::from_secs(3));
    let id = s.json("POST", "/api/tasks", Some(r#"{"prompt": "later"}"#), 201)["id"]
        .as_i64()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no task_finished of task {id}");
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
        if let Some(data) = line.trim_end().strip_prefix("data: ") {
            let e: Value = serde_json::from_str(data).unwrap();
            if e["task"] == id && e["kind"] == "task_finished" {
                break;
            }
        }
    }
}

#[test]
fn connections_and_streams_beyond_their_limits_are_answered_503() {
    // A long header_timeout, so that the connection kept open is not closed for idling.
    let mut s = Served::start(config(
        "max_connections = 2\nmax_streams = 1\nheader_timeout = \"5m\"\n",
    ));
    let (head, stream) = s.follow("/api/events?follow=1");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.error(
        "GET",
        "/api/events?follow=1",
        None,
        503,
        "[http] max_streams is 1",
    );
    // The other connection, kept open. (The one just answered may take a moment to give its
    // place back.)
    let mut kept = None;
    wait_until(Duration::from_secs(30), "a connection to be served", || {
        kept = s.kept_alive();
        kept.is_some()
    });
    let mut kept = kept.unwrap();
    // A third connection: 503, once the token is checked; without it, 401 as ever.
    s.error(
        "GET",
        "/api/status",
        None,
        503,
        "[http] max_connections is 2",
    );
    assert_eq!(
        request(&s.addr, "GET", "/api/status", None, None).status,
        401
    );
    // Those served are served still.
    assert_eq!(s.ask_again(&mut kept, "/api/tasks"), 200);

    // Places are given back when connections and streams end.
    drop(kept);
    wait_until(Duration::from_secs(30), "a connection's place back", || {
        s.call("GET", "/api/status", None).status == 200
    });
    drop(stream);
    let mut stream = None;
    wait_until(Duration::from_secs(30), "the stream's place back", || {
        let (head, reader) = s.follow("/api/events?follow=1");
        stream = Some(reader);
        head.starts_with("HTTP/1.1 200")
    });

    // At shutdown, the stream ends, a connection kept open is closed, and the daemon exits.
    let mut kept = None;
    wait_until(Duration::from_secs(30), "a connection to be served", || {
        kept = s.kept_alive();
        kept.is_some()
    });
    let mut daemon = s.daemon.take().unwrap();
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let mut rest = Vec::new();
    kept.unwrap().read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{}", text(&rest));
    let _ = stream.unwrap().read_to_end(&mut rest);
    assert!(
        daemon.wait(Duration::from_secs(30)).success(),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_listen_address_beyond_loopback_needs_allow_remote() {
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "[http]\nlisten = \"0.0.0.0:0\"\n");
    let out = p.run(&["run"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("agentq.toml:5:"), "{err}");
    assert!(err.contains("allow_remote"), "{err}");

    // --http is checked the same way, and overrides the file.
    let p = Project::with_workers(&["w"], RECORDING_AGENT, "");
    let out = p.run(&["run", "--http", "0.0.0.0:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--http: listen address 0.0.0.0:0"),
        "{}",
        text(&out.stderr)
    );
    let out = p.run(&["run", "--http", "somewhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("127.0.0.1:7777"),
        "{}",
        text(&out.stderr)
    );
    let daemon = p.start_with(p.cmd(&["run", "--http", "127.0.0.1:0"]));
    let addr = api_address(&daemon.log());
    let token = format!("Bearer {}", p.ok(&["token"]).trim());
    assert_eq!(
        request(&addr, "GET", "/api/status", Some(&token), None).status,
        200
    );
    assert!(daemon.stop().success());

    // Allowed, it serves, with a warning.
    let p = Project::with_workers(
        &["w"],
        RECORDING_AGENT,
        "[http]\nlisten = \"0.0.0.0:0\"\nallow_remote = true\n",
    );
    let daemon = p.start();
    let log = daemon.log();
    assert!(log.contains("reachable from other machines"), "{log}");
    let port = api_address(&log).rsplit(':').next().unwrap().to_string();
    let token = format!("Bearer {}", p.ok(&["token"]).trim());
    let reply = request(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/api/status",
        Some(&token),
        None,
    );
    assert_eq!(reply.status, 200);
    assert!(daemon.stop().success());
}

#[test]
fn init_and_token_make_one_private_token() {
    let dir = tempfile::tempdir().unwrap();
    let p = Project { dir };
    p.ok(&["init"]);
    let file = p.path(".agentq/token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(p.ok(&["token"]).trim(), read(&file).trim());

    // A project from before tokens gets one when asked.
    std::fs::remove_file(&file).unwrap();
    let made = p.ok(&["token"]);
    assert_eq!(made.trim().len(), 64);
    assert_eq!(p.ok(&["token"]), made);
}

/// `[retention]` keeps the newest two finished tasks of each worker: the daemon removes the
/// others with their events and files, and `/metrics` goes on counting them (its counters never
/// go down).
#[test]
fn retention_removes_old_tasks_and_metrics_counters_never_go_down() {
    let s = Served::start(config(
        "\n[retention]\nkeep_per_worker = 2\ninterval = \"1s\"\nbatch = 2\n",
    ));
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = s.json(
            "POST",
            "/api/tasks",
            Some(&format!(r#"{{"prompt": "task {i}"}}"#)),
            201,
        )["id"]
            .as_i64()
            .unwrap();
        s.wait_state(id, "succeeded");
        ids.push(id);
    }
    assert!(
        s.project
            .path(&format!(".output/w/task_{}.txt", ids[0]))
            .exists()
    );
    wait_until(Duration::from_secs(20), "retention to keep two", || {
        s.project.json(&["tasks"]).as_array().unwrap().len() == 2
    });
    for id in &ids[..3] {
        assert!(!s.project.path(&format!(".output/w/task_{id}.txt")).exists());
        assert!(
            !s.project
                .path(&format!(".output/w/task_{id}.json"))
                .exists()
        );
        assert!(!s.project.run(&["show", &id.to_string()]).status.success());
    }
    assert!(
        s.project
            .path(&format!(".output/w/task_{}.txt", ids[4]))
            .exists()
    );
    let text = s.call("GET", "/metrics", None).body;
    for line in [
        "agentq_tasks{state=\"succeeded\",class=\"short\"} 5",
        "agentq_task_duration_seconds_count{worker=\"w\"} 5",
        "agentq_task_duration_seconds_bucket{worker=\"w\",le=\"+Inf\"} 5",
        "agentq_tasks_finished_total{worker=\"w\",state=\"succeeded\",cause=\"none\"} 5",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
    }
    let removed = s.project.json(&["events", "--kind", "tasks_removed"]);
    assert!(!removed.as_array().unwrap().is_empty(), "{removed}");
}

/// An agent that says a line, waits for `go` to appear, says another, and answers.
const TALKING_AGENT: &str = r#"["sh", "-c", "read p; echo \"first $p\"; echo warn >&2; while [ ! -e go ]; do sleep 0.05; done; echo \"second $p\""]"#;

/// Reads server-sent events until one named `until`: each as (event, id, data).
fn read_events(
    reader: &mut BufReader<TcpStream>,
    until: &str,
) -> Vec<(String, Option<String>, Value)> {
    let mut events = Vec::new();
    let (mut event, mut id, mut data) = (String::new(), None, String::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "events so far: {events:?}");
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("the stream ended before {until}: {events:?}");
        }
        let line = line.trim_end();
        if line.is_empty() {
            if data.is_empty() {
                continue;
            }
            let done = event == until;
            events.push((
                std::mem::take(&mut event),
                id.take(),
                serde_json::from_str(&std::mem::take(&mut data)).unwrap(),
            ));
            if done {
                return events;
            }
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push_str(v);
        }
    }
}

#[test]
fn a_tasks_transcript_is_read_whole_and_followed_live_and_resumed_by_last_event_id() {
    let s = Served::start(Project::with_workers(&["w"], TALKING_AGENT, HTTP));
    s.error("GET", "/api/tasks/99/transcript", None, 404, "no task 99");
    s.error(
        "GET",
        "/api/tasks/1/transcript?follow=2",
        None,
        400,
        "follow",
    );
    let unauthorised = request(&s.addr, "GET", "/api/tasks/1/transcript", None, None);
    assert_eq!(unauthorised.status, 401);

    // Paused: the task waits, and has no transcript yet.
    s.json("POST", "/api/workers/w/pause", None, 200);
    let id = s.json("POST", "/api/tasks", Some(r#"{"prompt": "hi"}"#), 201)["id"]
        .as_i64()
        .unwrap();
    let none = s.json("GET", &format!("/api/tasks/{id}/transcript"), None, 200);
    assert_eq!(none["exists"], false);
    assert!(
        none["note"]
            .as_str()
            .unwrap()
            .contains("no transcript yet: it is queued"),
        "{none}"
    );

    // Followed live: the first lines come while the agent still works.
    let (head, mut reader) = s.follow(&format!("/api/tasks/{id}/transcript?follow=1"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.json("POST", "/api/workers/w/resume", None, 200);
    let early = read_events(&mut reader, "entry");
    let mut seen = early;
    seen.extend(read_events(&mut reader, "entry"));
    // (stdout and stderr are read apart: in either order.)
    let mut texts: Vec<(&str, &str)> = seen
        .iter()
        .map(|(_, _, d)| (d["kind"].as_str().unwrap(), d["text"].as_str().unwrap()))
        .collect();
    texts.sort();
    assert_eq!(texts, [("stderr", "warn"), ("stdout", "first hi")]);
    assert_eq!(seen[1].1.as_deref(), Some("2"), "an entry's id is its seq");
    assert_eq!(
        s.json("GET", &format!("/api/tasks/{id}"), None, 200)["state"],
        "running"
    );
    std::fs::write(s.project.path("go"), "").unwrap();
    let rest = read_events(&mut reader, "end");
    assert_eq!(rest[0].2["text"], "second hi");
    assert_eq!(rest.last().unwrap().2["state"], "succeeded");

    // Whole, or after a seq; and a stream resumed with Last-Event-ID gives only what came after.
    let whole = s.json("GET", &format!("/api/tasks/{id}/transcript"), None, 200);
    assert_eq!(whole["entries"].as_array().unwrap().len(), 3);
    assert_eq!(whole["next"], 3);
    let after = s.json(
        "GET",
        &format!("/api/tasks/{id}/transcript?after=2"),
        None,
        200,
    );
    assert_eq!(after["entries"][0]["text"], "second hi");
    // The Last-Event-ID header rides on the line after the token's.
    let auth = format!("Bearer {}\r\nLast-Event-ID: 2", s.token);
    let mut resumed = BufReader::new(send(
        &s.addr,
        "GET",
        &format!("/api/tasks/{id}/transcript?follow=1"),
        Some(&auth),
        None,
    ));
    read_head(&mut resumed);
    let again = read_events(&mut resumed, "end");
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(again[0].1.as_deref(), Some("3"));
}

/// Every sample of a scrape, by its name and labels.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            (series.to_string(), value.parse().unwrap())
        })
        .collect()
}

/// `/metrics`' counters have every series from the start (at 0), count each task's end, retry and
/// wait as it happens, and do not go down when `agentq clean` removes the history.
#[test]
fn metrics_counters_start_at_zero_and_never_go_down_when_history_is_cleaned() {
    let s = Served::start(config(
        "\n[[worker]]\nname = \"bad\"\nagent = \"command\"\ncommand = [\"sh\", \"-c\", \"exit 3\"]\n",
    ));
    let fresh = samples(&s.call("GET", "/metrics", None).body);
    let build = fresh
        .iter()
        .find(|(k, _)| k.starts_with("agentq_build_info{"))
        .expect("agentq_build_info");
    assert!(
        build
            .0
            .contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && *build.1 == 1.0,
        "{build:?}"
    );
    for worker in ["w", "other", "bad", "pool"] {
        for series in [
            format!(
                "agentq_tasks_finished_total{{worker=\"{worker}\",state=\"succeeded\",cause=\"none\"}}"
            ),
            format!(
                "agentq_tasks_finished_total{{worker=\"{worker}\",state=\"dead\",cause=\"interrupted\"}}"
            ),
            format!(
                "agentq_tasks_finished_total{{worker=\"{worker}\",state=\"cancelled\",cause=\"cancelled\"}}"
            ),
            format!("agentq_task_retries_total{{worker=\"{worker}\",cause=\"crashed\"}}"),
            format!("agentq_task_duration_seconds_count{{worker=\"{worker}\"}}"),
            format!("agentq_task_queue_wait_seconds_bucket{{worker=\"{worker}\",le=\"0.1\"}}"),
            format!("agentq_task_memory_peak_bytes_sum{{worker=\"{worker}\"}}"),
            format!("agentq_tokens_total{{worker=\"{worker}\",kind=\"output\"}}"),
            format!("agentq_cost_usd_total{{worker=\"{worker}\"}}"),
        ] {
            assert_eq!(fresh.get(&series), Some(&0.0), "{series} in {fresh:#?}");
        }
    }

    for prompt in ["one", "two"] {
        let id = s.json(
            "POST",
            "/api/tasks",
            Some(&format!(r#"{{"prompt": "{prompt}"}}"#)),
            201,
        )["id"]
            .as_i64()
            .unwrap();
        s.wait_state(id, "succeeded");
    }
    let bad = s.json(
        "POST",
        "/api/tasks",
        Some(r#"{"prompt": "fails", "worker": "bad", "max_attempts": 2}"#),
        201,
    )["id"]
        .as_i64()
        .unwrap();
    s.wait_state(bad, "dead");
    let before = samples(&s.call("GET", "/metrics", None).body);
    for (series, want) in [
        (
            "agentq_tasks_finished_total{worker=\"w\",state=\"succeeded\",cause=\"none\"}",
            2.0,
        ),
        (
            "agentq_tasks_finished_total{worker=\"bad\",state=\"dead\",cause=\"crashed\"}",
            1.0,
        ),
        (
            "agentq_task_retries_total{worker=\"bad\",cause=\"crashed\"}",
            1.0,
        ),
        ("agentq_task_duration_seconds_count{worker=\"w\"}", 2.0),
        (
            "agentq_task_queue_wait_seconds_bucket{worker=\"w\",le=\"+Inf\"}",
            2.0,
        ),
        ("agentq_task_duration_seconds_count{worker=\"bad\"}", 1.0),
        ("agentq_tasks{state=\"succeeded\",class=\"short\"}", 2.0),
    ] {
        assert_eq!(before.get(series), Some(&want), "{series} in {before:#?}");
    }

    let cleaned = s.project.json(&["clean"]);
    assert!(
        s.project.json(&["tasks"]).as_array().unwrap().is_empty(),
        "{cleaned}"
    );
    let after = samples(&s.call("GET", "/metrics", None).body);
    let mut compared = 0;
    for (series, was) in &before {
        let name = series.split('{').next().unwrap();
        let counts = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .any(|end| name.ends_with(end))
            || name == "agentq_tasks";
        // The daemon's own figures move on their own (its memory); the rest must stay as they were.
        if counts && !name.starts_with("agentq_daemon_") {
            assert_eq!(after.get(series), Some(was), "{series} after clean");
            compared += 1;
        }
    }
    assert!(compared > 100, "{compared} series compared");
}
