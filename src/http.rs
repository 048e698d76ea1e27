//! The HTTP API: the queue over HTTP/1.1 and JSON, and Prometheus metrics, served by the daemon.
//!
//! Off unless `[http] listen` (or `agentq run --http ADDR`) names an address. [`serve`] takes a
//! bound listener and a shutdown future, as tokio's mini-redis does, so a test binds
//! `127.0.0.1:0` and has a real server; the daemon passes its first shutdown signal, at which the
//! server stops accepting and ends its event streams.
//!
//! Every route, `/metrics` and unknown paths included, needs `Authorization: Bearer <token>` with
//! the token of `.agentq/token` (compared in constant time); without it the answer is 401 and
//! nothing else. Each route does what its CLI command does, through the same [`crate::ops`]
//! function; where the CLI rings the daemon's doorbell socket, the API wakes runners in process
//! through [`Api::bell`]. Bodies are capped at `[http] max_body` and every error is
//! `{"error": "..."}` with a status that says whose mistake it was.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::Error;
use crate::logfile::LogFilter;
use crate::route::Ask;
use crate::store::{Histogram, Store, TaskFilter};
use crate::wake::Ring;

/// What the API serves from.
pub struct Api {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    /// The token callers must present.
    pub token: String,
    /// Wakes the daemon's runners, as a ring of the doorbell would.
    pub bell: Arc<dyn Fn(Ring) + Send + Sync>,
    /// The daemon's pid, for the status (it cannot see its own lock).
    pub pid: Option<i32>,
}

/// Serves the API on `listener` until `shutdown` completes; then stops accepting, ends event
/// streams, and returns when the requests in flight are answered.
pub async fn serve(
    listener: TcpListener,
    api: Api,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = CancellationToken::new();
    let max_body = usize::try_from(api.config.http.max_body).unwrap_or(usize::MAX);
    let state = Shared {
        api: Arc::new(api),
        stop: stop.clone(),
    };
    let app = axum::Router::new()
        .route("/", get(dashboard))
        .route("/api/tasks", post(submit).get(list))
        .route("/api/tasks/{id}", get(show))
        .route("/api/tasks/{id}/cancel", post(cancel))
        .route("/api/tasks/{id}/retry", post(retry))
        .route("/api/workers/{name}/pause", post(pause))
        .route("/api/workers/{name}/resume", post(resume))
        .route("/api/workers/{name}/reset-session", post(reset_session))
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .route("/api/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(max_body))
        // Outermost: nothing, not even "no such path", is answered without the token.
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await
}

#[derive(Clone)]
struct Shared {
    api: Arc<Api>,
    /// Cancelled at shutdown: event streams end.
    stop: CancellationToken,
}

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// A bad value of a named field or parameter.
    fn field(name: &str, message: impl std::fmt::Display) -> Self {
        ApiError::bad(format!("{name}: {message}"))
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::NoSuchTask { .. } => StatusCode::NOT_FOUND,
            Error::WrongState { .. } => StatusCode::CONFLICT,
            Error::Usage(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

type Answer = Result<Response, ApiError>;

fn ok(status: StatusCode, value: Value) -> Answer {
    Ok((status, Json(value)).into_response())
}

async fn auth(State(s): State<Shared>, request: Request, next: Next) -> Response {
    // The dashboard page holds no data; it asks for the token and sends it with every call.
    if request.uri().path() == "/" && request.method() == Method::GET {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| bearer(v.as_bytes()));
    let message = match presented {
        Some(t) if crate::token::matches(t, &s.api.token) => {
            return next.run(request).await;
        }
        Some(_) => "wrong token: send the one in .agentq/token (`agentq token` prints it)",
        None => {
            "missing token: send the header `Authorization: Bearer <token>` with the token in .agentq/token (`agentq token` prints it)"
        }
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The web dashboard: one self-contained page, nothing loaded from elsewhere.
async fn dashboard() -> Response {
    let mut response = axum::response::Html(DASHBOARD).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

const DASHBOARD: &str = include_str!("../assets/dashboard.html");

/// The credentials of an `Authorization: Bearer <token>` header (the scheme in any case); empty
/// for another scheme.
fn bearer(header: &[u8]) -> &[u8] {
    match header.split_at_checked(7) {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case(b"bearer ") => token.trim_ascii(),
        _ => b"",
    }
}

async fn no_route(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {method} {}; /api/openapi.json lists them",
            uri.path()
        ),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} does not take {method}; the Allow header of this answer lists the methods it takes",
            uri.path()
        ),
    )
}

/// Parses a JSON body; an empty body is `T::default()` when `empty` allows it.
fn body<T: DeserializeOwned>(
    raw: Result<Bytes, BytesRejection>,
    max: u64,
    empty: Option<T>,
) -> Result<T, ApiError> {
    let raw = raw.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is over [http] max_body ({max} bytes); send less, or raise max_body in agentq.toml"
                ),
            )
        } else {
            ApiError::new(r.status(), r.body_text())
        }
    })?;
    if raw.iter().all(u8::is_ascii_whitespace)
        && let Some(value) = empty
    {
        return Ok(value);
    }
    serde_json::from_slice(&raw)
        .map_err(|e| ApiError::bad(format!("the request body is not the JSON expected: {e}")))
}

/// A task id from the path.
fn task_id(text: &str) -> Result<i64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::field("id", format!("{text:?} is not a task id (a number)")))
}

/// Query parameters, refusing any not in `known`.
fn params(
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    known: &[&str],
) -> Result<HashMap<String, String>, ApiError> {
    let Query(map) = query.map_err(|e| ApiError::bad(e.body_text()))?;
    if let Some(k) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(ApiError::bad(format!(
            "unknown query parameter {k:?}; this route takes {}",
            known.join(", ")
        )));
    }
    Ok(map)
}

fn number<T: std::str::FromStr>(
    map: &HashMap<String, String>,
    name: &str,
) -> Result<Option<T>, ApiError> {
    map.get(name)
        .map(|v| {
            v.parse()
                .map_err(|_| ApiError::field(name, format!("{v:?} is not a whole number")))
        })
        .transpose()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitBody {
    prompt: String,
    worker: Option<String>,
    #[serde(default)]
    pool: bool,
    class: Option<String>,
    complexity: Option<f64>,
    priority: Option<i64>,
    timeout: Option<String>,
    max_attempts: Option<u32>,
    max_memory: Option<String>,
}

async fn submit(State(s): State<Shared>, raw: Result<Bytes, BytesRejection>) -> Answer {
    let config = &s.api.config;
    let b: SubmitBody = body(raw, config.http.max_body, None)?;
    let class = b
        .class
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| ApiError::field("class", e))?;
    if let Some(c) = b.complexity
        && !(0.0..=1.0).contains(&c)
    {
        return Err(ApiError::field(
            "complexity",
            format!("{c} is not from 0 to 1"),
        ));
    }
    let timeout = b
        .timeout
        .as_deref()
        .map(crate::cli::parse_positive_duration)
        .transpose()
        .map_err(|e| ApiError::field("timeout", e))?;
    let max_memory = b
        .max_memory
        .as_deref()
        .map(crate::cli::parse_positive_size)
        .transpose()
        .map_err(|e| ApiError::field("max_memory", e))?;
    if b.max_attempts == Some(0) {
        return Err(ApiError::field("max_attempts", "must be at least 1"));
    }
    let ask = Ask {
        worker: b.worker.as_deref(),
        pool: b.pool,
        class,
        complexity: b.complexity,
        timeout,
        max_attempts: b.max_attempts,
        priority: b.priority,
        max_memory,
    };
    crate::ops::check_prompt(&b.prompt, config.max_prompt_size)
        .map_err(|e| ApiError::field("prompt", e))?;
    crate::route::settings(config, &ask).map_err(|e| ApiError::field("worker", e))?;
    let (_, submitted) = crate::ops::submit(
        config,
        s.api.store.as_ref(),
        s.api.bell.as_ref(),
        b.prompt,
        &ask,
        "http",
    )
    .await?;
    ok(StatusCode::CREATED, submitted)
}

async fn list(
    State(s): State<Shared>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let p = params(query, &["state", "worker", "limit"])?;
    let state = p
        .get("state")
        .map(|v| v.parse())
        .transpose()
        .map_err(|e| ApiError::field("state", e))?;
    let limit = number::<u32>(&p, "limit")?.unwrap_or(50);
    let filter = TaskFilter {
        state,
        worker: p.get("worker").cloned(),
        limit: (limit > 0).then_some(limit),
    };
    ok(
        StatusCode::OK,
        serde_json::to_value(s.api.store.list(&filter).await?).expect("tasks serialise"),
    )
}

async fn show(State(s): State<Shared>, Path(id): Path<String>) -> Answer {
    let id = task_id(&id)?;
    let (_, record) = crate::ops::task_record(&s.api.config, s.api.store.as_ref(), id).await?;
    ok(StatusCode::OK, record)
}

async fn cancel(State(s): State<Shared>, Path(id): Path<String>) -> Answer {
    let done = crate::ops::cancel(s.api.store.as_ref(), s.api.bell.as_ref(), task_id(&id)?).await?;
    ok(StatusCode::OK, done)
}

async fn retry(State(s): State<Shared>, Path(id): Path<String>) -> Answer {
    let done = crate::ops::retry(s.api.store.as_ref(), s.api.bell.as_ref(), task_id(&id)?).await?;
    ok(StatusCode::OK, done)
}

/// The worker (or `pool`) named in the path; 404 when there is none.
fn known_worker(config: &Config, name: &str) -> Result<(), ApiError> {
    config
        .resolve_queue(name)
        .map(|_| ())
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PauseBody {
    #[serde(rename = "for")]
    duration: Option<String>,
}

async fn pause(
    State(s): State<Shared>,
    Path(name): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer {
    let config = &s.api.config;
    known_worker(config, &name)?;
    let b: PauseBody = body(raw, config.http.max_body, Some(PauseBody::default()))?;
    let duration = b
        .duration
        .as_deref()
        .map(crate::cli::parse_positive_duration)
        .transpose()
        .map_err(|e| ApiError::field("for", e))?;
    let done = crate::ops::pause(
        config,
        s.api.store.as_ref(),
        &name,
        duration,
        "paused through the HTTP API",
    )
    .await?;
    ok(StatusCode::OK, done)
}

async fn resume(State(s): State<Shared>, Path(name): Path<String>) -> Answer {
    known_worker(&s.api.config, &name)?;
    let done = crate::ops::resume(
        &s.api.config,
        s.api.store.as_ref(),
        s.api.bell.as_ref(),
        &name,
        "resumed through the HTTP API",
    )
    .await?;
    ok(StatusCode::OK, done)
}

async fn reset_session(State(s): State<Shared>, Path(name): Path<String>) -> Answer {
    let config = &s.api.config;
    config
        .worker(&name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no worker named {name:?}")))?;
    let done = crate::ops::reset_session(
        config,
        s.api.store.as_ref(),
        &name,
        "asked through the HTTP API",
    )
    .await?;
    ok(StatusCode::OK, done)
}

async fn status(State(s): State<Shared>) -> Answer {
    let status = crate::ops::status(&s.api.config, s.api.store.as_ref(), s.api.pid).await?;
    ok(StatusCode::OK, status.to_json())
}

async fn events(
    State(s): State<Shared>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let p = params(query, &["follow", "limit", "task", "worker", "kind"])?;
    let follow = match p.get("follow").map(String::as_str) {
        None | Some("0" | "false") => false,
        Some("1" | "true" | "") => true,
        Some(other) => {
            return Err(ApiError::field(
                "follow",
                format!("{other:?} is not 1 or 0"),
            ));
        }
    };
    let limit = number::<u32>(&p, "limit")?.unwrap_or(50);
    let filter = LogFilter {
        worker: p.get("worker").cloned(),
        task: number(&p, "task")?,
        kind: p.get("kind").cloned(),
    };
    let config = s.api.config.clone();
    let mut recent =
        crate::ops::recent_events(&config, s.api.store.as_ref(), &filter, limit).await?;
    if !follow {
        return ok(
            StatusCode::OK,
            serde_json::to_value(&recent.events).expect("events serialise"),
        );
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    for e in recent.events.drain(..) {
        let _ = tx.send(e);
    }
    // The follower stops at shutdown, or when the client has gone.
    let stop = s.stop.child_token();
    {
        let (tx, stop) = (tx.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = tx.closed() => stop.cancel(),
                _ = stop.cancelled() => {}
            }
        });
    }
    tokio::spawn(async move {
        let followed = crate::ops::follow_events(&config, &filter, recent, stop, |e| {
            let _ = tx.send(e);
        })
        .await;
        if let Err(e) = followed {
            tracing::warn!("an HTTP event stream ended: {e}");
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let e = rx.recv().await?;
        let line = serde_json::to_string(&e).expect("events serialise");
        Some((Ok::<_, Infallible>(SseEvent::default().data(line)), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

async fn openapi() -> Answer {
    ok(StatusCode::OK, openapi_document())
}

/// Upper bounds of the duration histogram, seconds.
const DURATION_BOUNDS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Upper bounds of the memory histogram, MiB.
const MEMORY_BOUNDS_MIB: &[f64] = &[16.0, 64.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];
const RESTARTS: &str = "agent_restarting";
const REJECTED: &str = "file_rejected";

async fn metrics(State(s): State<Shared>) -> Answer {
    let (config, store) = (&s.api.config, s.api.store.as_ref());
    let duration_ms: Vec<f64> = DURATION_BOUNDS.iter().map(|b| b * 1000.0).collect();
    let figures = store
        .metrics(&duration_ms, MEMORY_BOUNDS_MIB, &[RESTARTS, REJECTED])
        .await?;
    let status = crate::ops::status(config, store, s.api.pid).await?;
    let mut out = Metrics::default();

    out.family("agentq_tasks", "gauge", "Tasks by state and class.");
    for (state, class, n) in &figures.tasks {
        let class = class.as_deref().unwrap_or("none");
        out.sample(
            "agentq_tasks",
            &[("state", state.as_str()), ("class", class)],
            *n as f64,
        );
    }
    out.histogram(
        "agentq_task_duration_seconds",
        "How long ended tasks' last attempts ran.",
        &figures.duration_ms,
        DURATION_BOUNDS,
        1.0 / 1000.0,
    );
    let memory_bounds: Vec<f64> = MEMORY_BOUNDS_MIB.iter().map(|b| b * MIB).collect();
    out.histogram(
        "agentq_task_memory_peak_bytes",
        "The most resident memory ended tasks' last attempts held.",
        &figures.memory_peak_mb,
        &memory_bounds,
        MIB,
    );

    out.family(
        "agentq_worker_state",
        "gauge",
        "1 for the state each worker is in, 0 for the others.",
    );
    for w in &status.workers {
        for phase in ["idle", "running", "paused", "errored", "stopped"] {
            out.sample(
                "agentq_worker_state",
                &[("worker", &w.name), ("state", phase)],
                if w.phase() == phase { 1.0 } else { 0.0 },
            );
        }
    }
    out.family(
        "agentq_worker_restarts_total",
        "counter",
        "Restarts of workers' long-lived agent processes after they died.",
    );
    for w in &status.workers {
        let n = figures
            .events
            .iter()
            .filter(|(k, worker, _)| k == RESTARTS && worker.as_deref() == Some(&w.name))
            .map(|(_, _, n)| n)
            .sum::<u64>();
        out.sample(
            "agentq_worker_restarts_total",
            &[("worker", &w.name)],
            n as f64,
        );
    }
    out.family(
        "agentq_cost_usd_total",
        "counter",
        "What each worker's attempts have cost, US dollars, as the agent reported.",
    );
    for w in &status.workers {
        out.sample(
            "agentq_cost_usd_total",
            &[("worker", &w.name)],
            w.cost_total_usd,
        );
    }
    out.family(
        "agentq_queue_depth",
        "gauge",
        "Tasks queued for each worker (its pool tasks included).",
    );
    for w in &status.workers {
        out.sample(
            "agentq_queue_depth",
            &[("worker", &w.name)],
            w.queued as f64,
        );
    }
    out.family("agentq_pool_running", "gauge", "Pool tasks running now.");
    out.sample("agentq_pool_running", &[], status.pool_tasks.len() as f64);
    out.family(
        "agentq_pool_max_workers",
        "gauge",
        "Pool tasks that may run at once ([pool] max_workers).",
    );
    out.sample("agentq_pool_max_workers", &[], status.max_workers as f64);
    out.family(
        "agentq_intake_rejections_total",
        "counter",
        "Prompt files intake set aside in rejected/.",
    );
    let rejected: u64 = figures
        .events
        .iter()
        .filter(|(k, _, _)| k == REJECTED)
        .map(|(_, _, n)| n)
        .sum();
    out.sample("agentq_intake_rejections_total", &[], rejected as f64);

    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.text,
    )
        .into_response())
}

const MIB: f64 = 1024.0 * 1024.0;

/// The Prometheus text format, written a family at a time.
#[derive(Default)]
struct Metrics {
    text: String,
}

impl Metrics {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A histogram from store figures in another unit: `scale` turns them into the metric's.
    fn histogram(&mut self, name: &str, help: &str, h: &Histogram, bounds: &[f64], scale: f64) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (bound, n) in bounds.iter().zip(&h.counts) {
            self.sample(&bucket, &[("le", &bound.to_string())], *n as f64);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count as f64);
        self.sample(&format!("{name}_sum"), &[], h.sum * scale);
        self.sample(&format!("{name}_count"), &[], h.count as f64);
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The OpenAPI 3 description of the routes above, written by hand.
fn openapi_document() -> Value {
    let error = json!({ "$ref": "#/components/responses/Error" });
    let id =
        json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } });
    let name = json!({ "name": "name", "in": "path", "required": true, "description": "a worker's name, or pool", "schema": { "type": "string" } });
    let object = |description: &str| json!({ "description": description, "content": { "application/json": { "schema": { "type": "object" } } } });
    let query = |name: &str, kind: &str, description: &str| json!({ "name": name, "in": "query", "required": false, "description": description, "schema": { "type": kind } });
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "agentq",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The queue of coding-agent tasks that `agentq run` serves. Every route needs `Authorization: Bearer <token>`, the token being the one in .agentq/token (`agentq token`)."
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/api/tasks": {
                "post": {
                    "summary": "Queue a task (agentq submit)",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Submit" } } } },
                    "responses": {
                        "201": object("queued: {id, worker, pool, class, route_reason}"),
                        "400": error, "401": error, "413": error
                    }
                },
                "get": {
                    "summary": "List tasks, newest first (agentq tasks)",
                    "parameters": [
                        query("state", "string", "queued, running, succeeded, failed, cancelled or dead"),
                        query("worker", "string", "only this worker's tasks"),
                        query("limit", "integer", "at most this many (default 50, 0: all)")
                    ],
                    "responses": {
                        "200": { "description": "task summaries", "content": { "application/json": { "schema": { "type": "array", "items": { "type": "object" } } } } },
                        "400": error, "401": error
                    }
                }
            },
            "/api/tasks/{id}": {
                "get": {
                    "summary": "A task with its events and attempts (agentq show --json)",
                    "parameters": [id],
                    "responses": { "200": object("the task"), "401": error, "404": error }
                }
            },
            "/api/tasks/{id}/cancel": {
                "post": {
                    "summary": "Cancel a queued or running task",
                    "parameters": [id],
                    "responses": { "200": object("{id, was, state}"), "401": error, "404": error, "409": error }
                }
            },
            "/api/tasks/{id}/retry": {
                "post": {
                    "summary": "Queue a failed, dead or cancelled task again",
                    "parameters": [id],
                    "responses": { "200": object("{id, state}"), "401": error, "404": error, "409": error }
                }
            },
            "/api/workers/{name}/pause": {
                "post": {
                    "summary": "Pause a worker (or the pool) for a while, or until resumed",
                    "parameters": [name],
                    "requestBody": { "required": false, "content": { "application/json": { "schema": { "type": "object", "properties": { "for": { "type": "string", "example": "30m" } }, "additionalProperties": false } } } },
                    "responses": { "200": object("{worker, paused_until}"), "400": error, "401": error, "404": error }
                }
            },
            "/api/workers/{name}/resume": {
                "post": {
                    "summary": "End a worker's pause",
                    "parameters": [name],
                    "responses": { "200": object("{worker, was_paused}"), "401": error, "404": error }
                }
            },
            "/api/workers/{name}/reset-session": {
                "post": {
                    "summary": "Start a Claude worker's next task in a new conversation",
                    "parameters": [name],
                    "responses": { "200": object("{worker, had_session}"), "400": error, "401": error, "404": error }
                }
            },
            "/api/status": {
                "get": {
                    "summary": "Workers, the pool and queue totals (agentq status --json)",
                    "responses": { "200": object("the status"), "401": error }
                }
            },
            "/api/events": {
                "get": {
                    "summary": "The event log: the latest events as JSON, or with follow=1 a text/event-stream of them and every new one",
                    "parameters": [
                        query("follow", "integer", "1: stream server-sent events until the daemon stops"),
                        query("limit", "integer", "the latest this many first (default 50, 0: all)"),
                        query("task", "integer", "only this task's events"),
                        query("worker", "string", "only this worker's events"),
                        query("kind", "string", "only events of this kind")
                    ],
                    "responses": {
                        "200": { "description": "events", "content": {
                            "application/json": { "schema": { "type": "array", "items": { "type": "object" } } },
                            "text/event-stream": { "schema": { "type": "string" } }
                        } },
                        "400": error, "401": error
                    }
                }
            },
            "/api/openapi.json": {
                "get": { "summary": "This document", "responses": { "200": object("OpenAPI 3"), "401": error } }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": { "200": { "description": "text format 0.0.4", "content": { "text/plain": { "schema": { "type": "string" } } } }, "401": error }
                }
            }
        },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "responses": {
                "Error": { "description": "what was wrong", "content": { "application/json": { "schema": {
                    "type": "object", "properties": { "error": { "type": "string" } }, "required": ["error"]
                } } } }
            },
            "schemas": {
                "Submit": {
                    "type": "object",
                    "required": ["prompt"],
                    "additionalProperties": false,
                    "properties": {
                        "prompt": { "type": "string" },
                        "worker": { "type": "string" },
                        "pool": { "type": "boolean" },
                        "class": { "type": "string", "enum": ["long", "short"] },
                        "complexity": { "type": "number", "minimum": 0, "maximum": 1 },
                        "priority": { "type": "integer" },
                        "timeout": { "type": "string", "example": "30s" },
                        "max_attempts": { "type": "integer", "minimum": 1 },
                        "max_memory": { "type": "string", "example": "2GiB" }
                    }
                }
            }
        }
    })
}
