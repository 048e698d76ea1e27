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
//!
//! No client can hold the daemon's resources for ever. The accept loop is written here, on
//! hyper, rather than `axum::serve`, which sets no timer and so no header timeout:
//! - a request's headers must arrive within `header_timeout` (an idle kept-alive connection is
//!   closed after as long); one cut off halfway is answered 408;
//! - its body within `request_timeout` of its headers ([`Deadline`], 408). A handler's own work
//!   is never cut short: a submit stopped after its task was queued would report a failure, and
//!   the client's retry would queue the task twice;
//! - an answer the client does not take for `request_timeout` ends the connection
//!   ([`Patient`]), event streams included;
//! - at most `max_connections` connections are served; as many again are answered 503, and any
//!   beyond those closed unanswered; at most `max_streams` event streams, the rest 503;
//! - an event stream keeps at most [`STREAM_BACKLOG`] events for its reader ([`feed`]): a reader
//!   further behind gets a last `lagged` event and the stream ends, so the follower never waits
//!   and the daemon's memory does not grow with a slow reader.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{Stream, StreamExt as _};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ops::{Status, WorkerStatus};
use crate::route::Ask;
use agentq_core::error::Error;
use agentq_core::logfile::LogFilter;
use agentq_core::wake::Ring;
use agentq_store::counters::Counters;
use agentq_store::{Histogram, Store, TaskFilter};

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
/// streams, and returns when the requests in flight are answered (or their clients cut off by
/// the timeouts).
pub async fn serve(
    listener: TcpListener,
    api: Api,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let settings = api.config.http.clone();
    let stop = CancellationToken::new();
    let state = Shared {
        api: Arc::new(api),
        stop: stop.clone(),
        streams: Arc::new(Semaphore::new(settings.max_streams as usize)),
    };
    let app = router(state);
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    let limit = settings.max_connections as usize;
    let (served, refused) = (
        Arc::new(Semaphore::new(limit)),
        Arc::new(Semaphore::new(limit)),
    );
    // Each connection holds a clone; when the last is dropped, every connection has ended.
    let (open, mut all_ended) = mpsc::channel::<()>(1);
    let mut shutdown = pin!(shutdown);
    let mut refusing = false;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // The client gave up before it was accepted.
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to be closed.
                tracing::error!("the HTTP API cannot accept a connection: {e}; trying again in 1s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = &mut shutdown => break,
                }
            }
        };
        let (permit, over_limit) = match served.clone().try_acquire_owned() {
            Ok(permit) => {
                refusing = false;
                (permit, false)
            }
            Err(_) => match refused.clone().try_acquire_owned() {
                Ok(permit) => {
                    if !refusing {
                        tracing::warn!(
                            "the HTTP API serves {limit} connections already ([http] max_connections); answering more with 503"
                        );
                    }
                    refusing = true;
                    (permit, true)
                }
                // Twice the limit: not even an answer. Dropping the stream closes it.
                Err(_) => continue,
            },
        };
        let connection = Connection {
            app: app.clone(),
            builder: builder.clone(),
            over_limit,
            patience: settings.request_timeout,
            header_timeout: settings.header_timeout,
            stop: stop.clone(),
        };
        let open = open.clone();
        tokio::spawn(async move {
            connection.serve(stream).await;
            drop((permit, open));
        });
    }
    drop(listener);
    stop.cancel();
    drop(open);
    let _ = all_ended.recv().await;
    Ok(())
}

/// Accept errors that concern one connection, not the listener.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    )
}

fn router(state: Shared) -> axum::Router {
    let max_body = usize::try_from(state.api.config.http.max_body).unwrap_or(usize::MAX);
    axum::Router::new()
        .route("/", get(dashboard))
        .route("/api/tasks", post(submit).get(list))
        .route("/api/tasks/{id}", get(show))
        .route("/api/tasks/{id}/cancel", post(cancel))
        .route("/api/tasks/{id}/retry", post(retry))
        .route("/api/tasks/{id}/transcript", get(transcript))
        .route("/api/tasks/{id}/diff", get(diff))
        .route("/api/tasks/{id}/merge", post(merge))
        .route("/api/tasks/{id}/discard", post(discard))
        .route("/api/worktrees", get(worktrees))
        .route("/api/workers/{name}/pause", post(pause))
        .route("/api/workers/{name}/resume", post(resume))
        .route("/api/workers/{name}/reset-session", post(reset_session))
        .route("/api/workers/{name}/restart", post(restart))
        .route("/api/status", get(status))
        .route("/api/events", get(events))
        .route("/api/openapi.json", get(openapi))
        .route("/metrics", get(metrics))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), admit))
        // Outermost: nothing, not even "no such path", is answered without the token.
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// One accepted connection and how to serve it.
struct Connection {
    app: axum::Router,
    builder: http1::Builder,
    /// Accepted beyond `max_connections`: its one request is answered 503.
    over_limit: bool,
    /// `request_timeout`: how long the client may leave an answer untaken.
    patience: Duration,
    header_timeout: Duration,
    /// Cancelled at shutdown: the request in flight is answered, and the connection closed.
    stop: CancellationToken,
}

/// Marks a request that came on a connection beyond `max_connections`.
#[derive(Clone, Copy)]
struct OverLimit;

impl Connection {
    async fn serve(mut self, stream: TcpStream) {
        if self.over_limit {
            self.builder.keep_alive(false);
        }
        let over_limit = self.over_limit;
        let service = TowerToHyperService::new(self.app);
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            if over_limit {
                request.extensions_mut().insert(OverLimit);
            }
            // Boxed: the connection must be Unpin to be taken apart when it ends.
            Box::pin(service.call(request))
        });
        let io = TokioIo::new(Patient::new(stream, self.patience));
        let mut conn = self.builder.serve_connection(io, service);
        let mut stopping = pin!(self.stop.cancelled());
        let mut stopped = false;
        // Without shutdown, so that a request cut off by the header timeout can still be
        // answered on the socket.
        let served = std::future::poll_fn(|cx| {
            if !stopped && stopping.as_mut().poll(cx).is_ready() {
                stopped = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            conn.poll_without_shutdown(cx)
        })
        .await;
        let parts = conn.into_parts();
        let mut io = parts.io.into_inner();
        match served {
            // Part of a request came, not all its headers: a response is still possible. (With
            // nothing read, the connection was idle, and is closed without a word.)
            Err(e) if e.is_timeout() && !parts.read_buf.is_empty() => {
                let late = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request's headers did not arrive within [http] header_timeout ({})",
                        humantime::format_duration(self.header_timeout)
                    ),
                );
                let _ = io.write_all(&late.raw()).await;
            }
            Err(e) => tracing::debug!("an HTTP connection ended: {e}"),
            Ok(()) => {}
        }
        // Bounded like every write: a client that takes nothing is cut off after `patience`.
        let _ = io.shutdown().await;
    }
}

#[derive(Clone)]
struct Shared {
    api: Arc<Api>,
    /// Cancelled at shutdown: event streams end.
    stop: CancellationToken,
    /// One permit per event stream that may be open (`[http] max_streams`).
    streams: Arc<Semaphore>,
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
            Error::WrongState { .. } | Error::MergeConflict { .. } => StatusCode::CONFLICT,
            Error::Usage(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl ApiError {
    /// The answer as bytes to write on a socket hyper has given up, closing the connection.
    fn raw(&self) -> Vec<u8> {
        let body = json!({ "error": self.message }).to_string();
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.status.as_str(),
            self.status.canonical_reason().unwrap_or(""),
            body.len()
        )
        .into_bytes()
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

/// Once the token is checked: refuses a request on a connection beyond `max_connections`, and
/// gives the request's body `request_timeout` to arrive.
async fn admit(State(s): State<Shared>, request: Request, next: Next) -> Response {
    let http = &s.api.config.http;
    if request.extensions().get::<OverLimit>().is_some() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many connections: [http] max_connections is {}; try again in a moment, or raise max_connections in agentq.toml",
                http.max_connections
            ),
        )
        .into_response();
    }
    let limit = http.request_timeout;
    let request = request.map(|body| {
        if body.is_end_stream() {
            body
        } else {
            Body::new(Deadline::new(body, limit))
        }
    });
    next.run(request).await
}

/// A request body that fails with [`BodyTooSlow`] once `limit` has passed: a client sending it
/// slowly (or not at all) cannot hold a connection and a handler for ever.
struct Deadline {
    body: Body,
    limit: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Deadline {
    fn new(body: Body, limit: Duration) -> Deadline {
        Deadline {
            body,
            limit,
            timer: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl hyper::body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match this.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTooSlow(this.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within [http] request_timeout ({})", humantime::format_duration(*.0))]
struct BodyTooSlow(Duration);

/// A socket whose writes fail once the client has taken nothing for `patience`: an answer (or
/// an event stream) the client does not read cannot hold the connection for ever.
struct Patient<T> {
    io: T,
    patience: Duration,
    /// Running while a write waits for the client.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Patient<T> {
    fn new(io: T, patience: Duration) -> Patient<T> {
        Patient {
            io,
            patience,
            waiting: None,
        }
    }

    /// A write's result, or, while it cannot proceed, an error once that has lasted `patience`.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<R>>,
    ) -> Poll<std::io::Result<R>> {
        if polled.is_ready() {
            self.waiting = None;
            return polled;
        }
        let patience = self.patience;
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(patience)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the client took nothing for [http] request_timeout ({})",
                    humantime::format_duration(patience)
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Patient<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Patient<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, polled)
    }
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
        let mut causes = std::iter::successors(Some(&r as &dyn std::error::Error), |e| e.source());
        if let Some(slow) = causes.find_map(|e| e.downcast_ref::<BodyTooSlow>()) {
            ApiError::new(StatusCode::REQUEST_TIMEOUT, slow.to_string())
        } else if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
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
    isolation: Option<String>,
    repo: Option<std::path::PathBuf>,
    base: Option<String>,
    branch: Option<String>,
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
        .map(agentq_core::units::parse_positive_duration)
        .transpose()
        .map_err(|e| ApiError::field("timeout", e))?;
    let max_memory = b
        .max_memory
        .as_deref()
        .map(agentq_core::units::parse_positive_size)
        .transpose()
        .map_err(|e| ApiError::field("max_memory", e))?;
    if b.max_attempts == Some(0) {
        return Err(ApiError::field("max_attempts", "must be at least 1"));
    }
    let isolation = b
        .isolation
        .as_deref()
        .map(agentq_core::worktree::Isolation::parse)
        .transpose()
        .map_err(|e| ApiError::field("isolation", e))?;
    // A relative repository is taken from agentq.toml's folder, as the config's own are.
    let repo = b.repo.as_ref().map(|r| config.root.join(r));
    let ask = Ask {
        worker: b.worker.as_deref(),
        pool: b.pool,
        class,
        complexity: b.complexity,
        timeout,
        max_attempts: b.max_attempts,
        priority: b.priority,
        max_memory,
        isolation,
        repo: repo.as_deref(),
        base: b.base.as_deref(),
        branch: b.branch.as_deref(),
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

async fn diff(
    State(s): State<Shared>,
    Path(id): Path<String>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let id = task_id(&id)?;
    let p = params(query, &["stat"])?;
    let stat = flag(&p, "stat")?;
    let store = s.api.store.as_ref();
    let text = crate::worktree::diff(store, id, stat).await?;
    let worktree = store.get(id).await?.and_then(|t| t.worktree);
    ok(
        StatusCode::OK,
        json!({"id": id, "worktree": worktree, if stat { "stat" } else { "diff" }: text}),
    )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MergeBody {
    into: Option<String>,
    #[serde(default)]
    squash: bool,
}

async fn merge(
    State(s): State<Shared>,
    Path(id): Path<String>,
    raw: Result<Bytes, BytesRejection>,
) -> Answer {
    let id = task_id(&id)?;
    let b: MergeBody = body(raw, s.api.config.http.max_body, Some(MergeBody::default()))?;
    let done =
        crate::worktree::merge(s.api.store.as_ref(), id, b.into.as_deref(), b.squash).await?;
    ok(StatusCode::OK, done)
}

async fn discard(State(s): State<Shared>, Path(id): Path<String>) -> Answer {
    let done = crate::worktree::discard(s.api.store.as_ref(), task_id(&id)?).await?;
    ok(StatusCode::OK, done)
}

async fn worktrees(State(s): State<Shared>) -> Answer {
    let listed = crate::worktree::list(&s.api.config, s.api.store.as_ref()).await?;
    ok(
        StatusCode::OK,
        serde_json::to_value(listed).expect("worktrees serialise"),
    )
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
        .map(agentq_core::units::parse_positive_duration)
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

async fn restart(State(s): State<Shared>, Path(name): Path<String>) -> Answer {
    let config = &s.api.config;
    config
        .worker(&name)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no worker named {name:?}")))?;
    let done =
        crate::ops::restart(config, s.api.store.as_ref(), s.api.bell.as_ref(), &name).await?;
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
    let follow = flag(&p, "follow")?;
    let limit = number::<u32>(&p, "limit")?.unwrap_or(50);
    let filter = LogFilter {
        worker: p.get("worker").cloned(),
        task: number(&p, "task")?,
        kind: p.get("kind").cloned(),
    };
    let config = s.api.config.clone();
    // Taken before any work; held by the stream, so given back when it ends.
    let permit = match follow {
        true => Some(s.streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "too many event streams: [http] max_streams is {}; close one, or raise max_streams in agentq.toml",
                    config.http.max_streams
                ),
            )
        })?),
        false => None,
    };
    let mut recent =
        crate::ops::recent_events(&config, s.api.store.as_ref(), &filter, limit).await?;
    let Some(permit) = permit else {
        return ok(
            StatusCode::OK,
            serde_json::to_value(&recent.events).expect("events serialise"),
        );
    };
    let backlog = std::mem::take(&mut recent.events);
    let (feeder, fed) = feed(STREAM_BACKLOG);
    // The follower stops at shutdown, when the client has gone, or when it fell behind.
    let stop = s.stop.child_token();
    tokio::spawn(async move {
        let emit = |e| {
            if !feeder.push(e) {
                stop.cancel();
            }
        };
        let followed = tokio::select! {
            followed = crate::ops::follow_events(&config, &filter, recent, stop.clone(), emit) => followed,
            () = feeder.closed() => Ok(()),
        };
        if let Err(e) = followed {
            tracing::warn!("an HTTP event stream ended: {e}");
        }
    });
    let stream = futures_util::stream::iter(backlog.into_iter().map(Sent::Event))
        .chain(fed)
        .map(move |sent| {
            // The stream owns its place under max_streams, and gives it back when it ends.
            let _place = &permit;
            Ok::<_, Infallible>(sse_event(sent))
        });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// A task's transcript: its entries after `after` as JSON, or with `follow=1` a
/// `text/event-stream` of them and of every new one until the task has ended. Each entry is an
/// `entry` event whose id is its `seq`, so a client that reconnects with `Last-Event-ID` (or
/// `after`) continues where it was. The stream reads the transcript file as the client takes its
/// events: a slow reader costs the agent nothing. Entries rotated away before the stream began
/// are said in a `missed` event; a reader so slow that entries were rotated away while it was
/// reading gets a last `lagged` event and the stream ends. An `end` event, with the task's state,
/// closes the stream of a task that has ended.
async fn transcript(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let id = task_id(&id)?;
    let p = params(query, &["follow", "after"])?;
    let follow = flag(&p, "follow")?;
    let resume = headers
        .get("last-event-id")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::bad("the Last-Event-ID header is not an entry's seq (a whole number)")
                })
        })
        .transpose()?;
    let after = resume.or(number::<u64>(&p, "after")?).unwrap_or(0);
    let (config, store) = (s.api.config.clone(), s.api.store.clone());
    if !follow {
        let read = crate::watch::task_transcript(&config, store.as_ref(), id, after).await?;
        return ok(StatusCode::OK, read.json());
    }
    let task = store.get(id).await?.ok_or(Error::NoSuchTask { id })?;
    let permit = s.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many event streams: [http] max_streams is {}; close one, or raise max_streams in agentq.toml",
                config.http.max_streams
            ),
        )
    })?;
    let follower = crate::watch::TaskFollow::new(&config, &task, after);
    let stop = s.stop.child_token();
    struct Reading {
        follower: crate::watch::TaskFollow,
        store: Arc<dyn Store>,
        id: i64,
        queue: std::collections::VecDeque<SseEvent>,
        first: bool,
        done: bool,
        stop: CancellationToken,
        _place: tokio::sync::OwnedSemaphorePermit,
    }
    let reading = Reading {
        follower,
        store,
        id,
        queue: Default::default(),
        first: true,
        done: false,
        stop,
        _place: permit,
    };
    let stream = futures_util::stream::unfold(reading, |mut r| async move {
        loop {
            if let Some(event) = r.queue.pop_front() {
                return Some((Ok::<_, Infallible>(event), r));
            }
            if r.done {
                return None;
            }
            // Whether it has ended is asked before reading, so its last entries are read.
            let task = match r.store.get(r.id).await {
                Ok(task) => task,
                Err(e) => {
                    r.queue.push_back(stream_error(&e.to_string()));
                    r.done = true;
                    continue;
                }
            };
            let found = match r.follower.next().await {
                Ok(found) => found,
                Err(e) => {
                    r.queue.push_back(stream_error(&e.to_string()));
                    r.done = true;
                    continue;
                }
            };
            let first = std::mem::replace(&mut r.first, false);
            if let Some((from, to)) = found.missed {
                let said = json!({ "from": from, "to": to });
                if first {
                    r.queue.push_back(SseEvent::default().event("missed").data(
                        json!({ "missed": said, "note": format!("entries {from} to {to} were rotated away (the agent log keeps all its output)") }).to_string(),
                    ));
                } else {
                    r.queue.push_back(SseEvent::default().event("lagged").data(
                        json!({ "missed": said, "error": format!("this stream fell behind: entries {from} to {to} were rotated away before it took them; it ends here, reconnect with Last-Event-ID to follow from what is kept") }).to_string(),
                    ));
                    r.done = true;
                    continue;
                }
            }
            for entry in found.entries {
                r.queue.push_back(
                    SseEvent::default()
                        .event("entry")
                        .id(entry.seq.to_string())
                        .data(serde_json::to_string(&entry).expect("entries serialise")),
                );
            }
            match task {
                None => {
                    r.queue
                        .push_back(stream_error(&format!("task {} was removed", r.id)));
                    r.done = true;
                }
                Some(t) if t.state.is_terminal() => {
                    r.queue.push_back(
                        SseEvent::default()
                            .event("end")
                            .data(json!({ "task": t.id, "state": t.state }).to_string()),
                    );
                    r.done = true;
                }
                Some(_) if r.queue.is_empty() => {
                    tokio::select! {
                        _ = r.stop.cancelled() => return None,
                        _ = tokio::time::sleep(crate::watch::FOLLOW_EVERY) => {}
                    }
                }
                Some(_) => {}
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn stream_error(message: &str) -> SseEvent {
    SseEvent::default()
        .event("error")
        .data(json!({ "error": message }).to_string())
}

/// A `1`/`0` (`true`/`false`) query parameter; absent is false.
fn flag(p: &HashMap<String, String>, name: &str) -> Result<bool, ApiError> {
    match p.get(name).map(String::as_str) {
        None | Some("0" | "false") => Ok(false),
        Some("1" | "true" | "") => Ok(true),
        Some(other) => Err(ApiError::field(name, format!("{other:?} is not 1 or 0"))),
    }
}

/// The most events an event stream keeps for a reader that has not taken them. A reader further
/// behind is told so and cut off: its events would otherwise pile up in the daemon's memory.
const STREAM_BACKLOG: usize = 1024;

fn sse_event(sent: Sent<agentq_core::logfile::LogEvent>) -> SseEvent {
    match sent {
        Sent::Event(e) => {
            SseEvent::default().data(serde_json::to_string(&e).expect("events serialise"))
        }
        Sent::Lagged => SseEvent::default().event("lagged").data(
            json!({ "error": format!(
                "this stream fell more than {STREAM_BACKLOG} events behind and ends here; reconnect to follow again (GET /api/events lists what came meanwhile)"
            ) })
            .to_string(),
        ),
    }
}

/// What an event stream sends: its events, then, if its reader fell too far behind, word of it.
#[derive(Debug, PartialEq)]
enum Sent<T> {
    Event(T),
    Lagged,
}

/// The follower's end of an event stream: pushes without ever waiting.
struct Feeder<T> {
    tx: mpsc::Sender<T>,
    lagged: Arc<AtomicBool>,
}

impl<T> Feeder<T> {
    /// Queues `item` for the reader; `false` when the stream is over for the follower: the
    /// reader has gone, or holds `bound` items not yet taken (it gets those, then
    /// [`Sent::Lagged`], once every `Feeder` is dropped).
    fn push(&self, item: T) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Completes when the reader has gone.
    async fn closed(&self) {
        self.tx.closed().await;
    }
}

/// A queue of at most `bound` items from a follower to a reader, and the reader's stream: the
/// items in order, ending when the follower drops its [`Feeder`], with [`Sent::Lagged`] last if
/// the reader fell behind.
fn feed<T: Send + 'static>(bound: usize) -> (Feeder<T>, impl Stream<Item = Sent<T>> + Send) {
    let (tx, rx) = mpsc::channel(bound);
    let lagged = Arc::new(AtomicBool::new(false));
    let feeder = Feeder {
        tx,
        lagged: lagged.clone(),
    };
    let stream = futures_util::stream::unfold(Some(rx), move |rx| {
        let lagged = lagged.clone();
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(item) => Some((Sent::Event(item), Some(rx))),
                None if lagged.load(Ordering::Acquire) => Some((Sent::Lagged, None)),
                None => None,
            }
        }
    });
    (feeder, stream)
}

async fn openapi() -> Answer {
    ok(StatusCode::OK, openapi_document())
}

const RESTARTS: &str = "agent_restarting";
const REJECTED: &str = "file_rejected";
const MOVED: &str = "worker_moved";

async fn metrics(State(s): State<Shared>) -> Answer {
    let (config, store) = (&s.api.config, s.api.store.as_ref());
    let figures = store.metrics(&[RESTARTS, REJECTED, MOVED]).await?;
    let status = crate::ops::status(config, store, s.api.pid).await?;
    // Every series of the workers in sight (configured, or with tasks) and the pool, from the
    // start: `rate()` misses the first increase of a series that appears with it.
    let known = status.workers.iter().map(|w| w.name.as_str());
    let counted = figures
        .counters
        .clone()
        .with_known(known.chain([agentq_core::domain::POOL]));
    let mut out = Metrics::default();
    out.build();
    out.tasks(&figures, &counted);
    out.workers(&status.workers, &figures, &counted);
    out.daemon(&status, &figures);
    // Several daemons, one queue: which host runs what. The task figures above are the whole
    // queue's, as every daemon on the store sees them; those of the daemon and its agents are its
    // own.
    if store.shared() {
        out.hosts(&status, &figures);
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out.text,
    )
        .into_response())
}

/// How many events of `kind` were recorded: of `worker`, or of any.
fn count(figures: &agentq_store::Metrics, kind: &str, worker: Option<&str>) -> f64 {
    figures
        .events
        .iter()
        .filter(|(k, w, _)| k == kind && (worker.is_none() || w.as_deref() == worker))
        .map(|(_, _, n)| n)
        .sum::<u64>() as f64
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

    /// A histogram per worker from store figures in another unit, which `unit` turns into the
    /// metric's.
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        by_worker: &BTreeMap<String, Histogram>,
        unit: fn(f64) -> f64,
    ) {
        self.family(name, "histogram", help);
        let (bucket, sum, count) = (
            format!("{name}_bucket"),
            format!("{name}_sum"),
            format!("{name}_count"),
        );
        for (worker, h) in by_worker {
            for (bound, n) in h.bounds.iter().zip(&h.counts) {
                let le = unit(*bound).to_string();
                self.sample(&bucket, &[("worker", worker), ("le", &le)], *n as f64);
            }
            self.sample(
                &bucket,
                &[("worker", worker), ("le", "+Inf")],
                h.count as f64,
            );
            self.sample(&sum, &[("worker", worker)], unit(h.sum));
            self.sample(&count, &[("worker", worker)], h.count as f64);
        }
    }

    /// Which agentq serves this, as Prometheus's `*_build_info` convention has it.
    fn build(&mut self) {
        self.family(
            "agentq_build_info",
            "gauge",
            "1, labelled with agentq's version and the system it was built for.",
        );
        self.sample(
            "agentq_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("os", std::env::consts::OS),
                ("arch", std::env::consts::ARCH),
            ],
            1.0,
        );
    }

    /// A family with one sample, without labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per worker, labelled with its name.
    fn per_worker(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        workers: &[WorkerStatus],
        value: impl Fn(&WorkerStatus) -> f64,
    ) {
        self.family(name, kind, help);
        for w in workers {
            self.sample(name, &[("worker", &w.name)], value(w));
        }
    }

    /// The queue's tasks: how many in each state; and, counted as they ended, how they ended,
    /// the retries, how long they waited and ran, and how much memory they held.
    fn tasks(&mut self, figures: &agentq_store::Metrics, counted: &Counters) {
        self.family("agentq_tasks", "gauge", "Tasks by state and class.");
        for (state, class, n) in &figures.tasks {
            let class = class.as_deref().unwrap_or("none");
            self.sample(
                "agentq_tasks",
                &[("state", state.as_str()), ("class", class)],
                *n as f64,
            );
        }
        let name = "agentq_tasks_finished_total";
        self.family(
            name,
            "counter",
            "Tasks that ended, by worker, state and cause (none: succeeded; interrupted: its daemon died under it too often).",
        );
        for ((worker, state, cause), n) in &counted.finished {
            let labels = [("worker", worker), ("state", state), ("cause", cause)];
            self.sample(name, &labels.map(|(k, v)| (k, v.as_str())), *n as f64);
        }
        let name = "agentq_task_retries_total";
        self.family(
            name,
            "counter",
            "Retries scheduled after a failed attempt, by worker and the attempt's cause.",
        );
        for ((worker, cause), n) in &counted.retries {
            self.sample(name, &[("worker", worker), ("cause", cause)], *n as f64);
        }
        self.histogram(
            "agentq_task_duration_seconds",
            "How long ended tasks' last attempts ran.",
            &counted.duration_ms,
            |ms| ms / 1000.0,
        );
        self.histogram(
            "agentq_task_queue_wait_seconds",
            "How long ended tasks waited from being queued to their first attempt's start.",
            &counted.queue_wait_ms,
            |ms| ms / 1000.0,
        );
        self.histogram(
            "agentq_task_memory_peak_bytes",
            "The most resident memory ended tasks' last attempts held.",
            &counted.memory_peak_mb,
            |mib| mib * MIB,
        );
    }

    /// Each worker's state, restarts, spending, queue and memory.
    fn workers(
        &mut self,
        workers: &[WorkerStatus],
        figures: &agentq_store::Metrics,
        counted: &Counters,
    ) {
        self.family(
            "agentq_worker_state",
            "gauge",
            "1 for the state each worker is in, 0 for the others.",
        );
        for w in workers {
            for phase in ["idle", "running", "paused", "errored", "stopped"] {
                self.sample(
                    "agentq_worker_state",
                    &[("worker", &w.name), ("state", phase)],
                    if w.phase() == phase { 1.0 } else { 0.0 },
                );
            }
        }
        self.per_worker(
            "agentq_worker_restarts_total",
            "counter",
            "Restarts of workers' long-lived agent processes after they died.",
            workers,
            |w| count(figures, RESTARTS, Some(&w.name)),
        );
        let name = "agentq_cost_usd_total";
        self.family(
            name,
            "counter",
            "What each worker's attempts have cost, US dollars, as the agent reported.",
        );
        for (worker, cost) in &counted.cost_usd {
            self.sample(name, &[("worker", worker)], *cost);
        }
        let name = "agentq_tokens_total";
        self.family(
            name,
            "counter",
            "Tokens each worker's attempts read (kind=input) and wrote (kind=output), as the agent reported.",
        );
        for ((worker, kind), n) in &counted.tokens {
            self.sample(name, &[("worker", worker), ("kind", kind)], *n as f64);
        }
        self.per_worker(
            "agentq_queue_depth",
            "gauge",
            "Tasks queued for each worker (its pool tasks included).",
            workers,
            |w| w.queued as f64,
        );
        self.per_worker(
            "agentq_worker_memory_bytes",
            "gauge",
            "Resident memory of each worker's agent processes now (the pool's: all its tasks'); 0 with none.",
            workers,
            |w| w.memory_mb.unwrap_or(0.0) * MIB,
        );
    }

    /// The daemon itself, its pool and its intake.
    fn daemon(&mut self, status: &Status, figures: &agentq_store::Metrics) {
        self.single(
            "agentq_daemon_memory_bytes",
            "gauge",
            "Resident memory of the daemon itself.",
            status.memory_mb.unwrap_or(0.0) * MIB,
        );
        self.single(
            "agentq_daemon_start_time_seconds",
            "gauge",
            "When the daemon started, seconds since the epoch.",
            status.started_at.unwrap_or(0) as f64 / 1000.0,
        );
        self.single(
            "agentq_pool_running",
            "gauge",
            "Pool tasks running now.",
            status.pool_tasks.len() as f64,
        );
        self.single(
            "agentq_pool_max_workers",
            "gauge",
            "Pool tasks that may run at once ([pool] max_workers).",
            status.max_workers as f64,
        );
        self.single(
            "agentq_intake_rejections_total",
            "counter",
            "Prompt files intake set aside in rejected/.",
            count(figures, REJECTED, None),
        );
    }

    /// The daemons on a shared store, and which of them holds each worker.
    fn hosts(&mut self, status: &Status, figures: &agentq_store::Metrics) {
        self.single(
            "agentq_hosts",
            "gauge",
            "Daemons whose host row is in force on the shared store.",
            status.hosts.len() as f64,
        );
        self.family(
            "agentq_worker_host",
            "gauge",
            "1 for the host whose daemon holds each worker's lease; absent while none does.",
        );
        for w in &status.workers {
            if let Some(host) = &w.host {
                self.sample(
                    "agentq_worker_host",
                    &[("worker", &w.name), ("host", host)],
                    1.0,
                );
            }
        }
        self.per_worker(
            "agentq_worker_moves_total",
            "counter",
            "Times each worker's lease was taken by a daemon of another host.",
            &status.workers,
            |w| count(figures, MOVED, Some(&w.name)),
        );
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
            "description": "The queue of coding-agent tasks that `agentq run` serves. Every route needs `Authorization: Bearer <token>`, the token being the one in .agentq/token (`agentq token`). Any route may also answer 408 (the request's headers or body came slower than [http] header_timeout or request_timeout allow) or 503 (more connections than [http] max_connections)."
        },
        "security": [{ "bearer": [] }],
        "paths": {
            "/api/tasks": {
                "post": {
                    "summary": "Queue a task (agentq submit)",
                    "requestBody": { "required": true, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Submit" } } } },
                    "responses": {
                        "201": object("queued: {id, worker, pool, class, route_reason}"),
                        "400": error, "401": error, "408": error, "413": error
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
            "/api/tasks/{id}/diff": {
                "get": {
                    "summary": "The change a task made in its worktree, from its base to its branch (agentq diff): {id, worktree, diff} or with stat=1 {id, worktree, stat}",
                    "parameters": [id, query("stat", "integer", "1: only the files changed and how much (git diff --stat)")],
                    "responses": { "200": object("{id, worktree, diff | stat}"), "400": error, "401": error, "404": error, "409": error }
                }
            },
            "/api/tasks/{id}/merge": {
                "post": {
                    "summary": "Merge a task's change (agentq merge): body {into?: branch (default: the checked-out one), squash?: bool}; 409 with the conflicting files when it does not apply cleanly, the repository left as it was",
                    "parameters": [id],
                    "requestBody": { "required": false, "content": { "application/json": { "schema": { "type": "object", "properties": { "into": { "type": "string" }, "squash": { "type": "boolean" } }, "additionalProperties": false } } } },
                    "responses": { "200": object("{id, merged, into, commit, squash, branch, message, worktree}"), "400": error, "401": error, "404": error, "409": error }
                }
            },
            "/api/tasks/{id}/discard": {
                "post": {
                    "summary": "Throw away a task's change: its worktree and branch are removed (agentq discard)",
                    "parameters": [id],
                    "responses": { "200": object("{id, discarded, message, worktree}"), "400": error, "401": error, "404": error, "409": error }
                }
            },
            "/api/worktrees": {
                "get": {
                    "summary": "The tasks' worktrees with their size and state, and folders no task names (agentq worktrees --json)",
                    "responses": { "200": { "description": "worktrees", "content": { "application/json": { "schema": { "type": "array", "items": { "type": "object" } } } } }, "401": error }
                }
            },
            "/api/tasks/{id}/transcript": {
                "get": {
                    "summary": "What the task's agent did, as typed entries (text, thinking, tool_call, tool_result, status, stdout, stderr, result; each with seq, ts, attempt): all after `after` as JSON, or with follow=1 a text/event-stream of `entry` events (id: the entry's seq, so Last-Event-ID resumes), then `end` when the task has ended; `missed` says entries rotated away before the stream began, `lagged` ends a stream whose reader fell behind the rotation",
                    "parameters": [
                        id,
                        query("follow", "integer", "1: stream server-sent events until the task has ended"),
                        query("after", "integer", "only entries after this seq (the Last-Event-ID header wins)")
                    ],
                    "responses": {
                        "200": { "description": "the transcript", "content": {
                            "application/json": { "schema": { "type": "object" } },
                            "text/event-stream": { "schema": { "type": "string" } }
                        } },
                        "400": error, "401": error, "404": error, "503": error
                    }
                }
            },
            "/api/workers/{name}/pause": {
                "post": {
                    "summary": "Pause a worker (or the pool) for a while, or until resumed",
                    "parameters": [name],
                    "requestBody": { "required": false, "content": { "application/json": { "schema": { "type": "object", "properties": { "for": { "type": "string", "example": "30m" } }, "additionalProperties": false } } } },
                    "responses": { "200": object("{worker, paused_until}"), "400": error, "401": error, "404": error, "408": error }
                }
            },
            "/api/workers/{name}/resume": {
                "post": {
                    "summary": "End a worker's pause",
                    "parameters": [name],
                    "responses": { "200": object("{worker, was_paused}"), "401": error, "404": error }
                }
            },
            "/api/workers/{name}/restart": {
                "post": {
                    "summary": "Restart a worker: clear its pause or error, and start its agent afresh (a long-lived process is replaced), as `agentq worker restart` does",
                    "parameters": [name],
                    "responses": { "200": object("{worker, was_errored, was_paused, was}"), "401": error, "404": error }
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
                    "summary": "The event log: the latest events as JSON, or with follow=1 a text/event-stream of them and every new one; a stream whose reader falls too far behind ends with an event named lagged",
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
                        "400": error, "401": error, "503": error
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
                        "max_memory": { "type": "string", "example": "2GiB" },
                        "isolation": { "type": "string", "enum": ["none", "worktree"], "description": "worktree: a git worktree and branch of its own (default: the worker's isolation)" },
                        "repo": { "type": "string", "description": "with a worktree: the git repository, relative to agentq.toml's folder (default: the worker's)" },
                        "base": { "type": "string", "description": "with a worktree: the commit or branch its branch starts from (default: the worker's base, or HEAD)" },
                        "branch": { "type": "string", "description": "with a worktree: its branch's name, which must not exist yet" }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::FromRequest;
    use tokio::io::AsyncReadExt as _;

    #[tokio::test]
    async fn a_reader_that_keeps_up_gets_every_item_and_no_lag() {
        let (feeder, fed) = feed(4);
        let mut fed = pin!(fed);
        for i in 0..100 {
            assert!(feeder.push(i));
            assert_eq!(fed.next().await, Some(Sent::Event(i)));
        }
        drop(feeder);
        assert_eq!(fed.next().await, None, "no lag to report");
    }

    #[tokio::test]
    async fn a_reader_too_far_behind_gets_what_was_queued_then_word_of_it() {
        let (feeder, fed) = feed(4);
        for i in 0..4 {
            assert!(feeder.push(i));
        }
        // The follower is refused at once, never made to wait, and holds nothing more.
        assert!(!feeder.push(4));
        assert!(!feeder.push(5));
        drop(feeder);
        let sent: Vec<Sent<i32>> = fed.collect().await;
        assert_eq!(
            sent,
            [
                Sent::Event(0),
                Sent::Event(1),
                Sent::Event(2),
                Sent::Event(3),
                Sent::Lagged
            ]
        );
    }

    #[tokio::test]
    async fn a_reader_gone_ends_the_follower() {
        let (feeder, fed) = feed::<i32>(4);
        assert!(feeder.push(1));
        drop(fed);
        tokio::time::timeout(Duration::from_secs(30), feeder.closed())
            .await
            .expect("the feeder learns the reader has gone");
        assert!(!feeder.push(2));
        assert!(!feeder.lagged.load(Ordering::Acquire), "gone is not behind");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
        let never = Body::from_stream(futures_util::stream::pending::<Result<Bytes, Infallible>>());
        let request = Request::new(Body::new(Deadline::new(never, Duration::from_secs(2))));
        let raw = Bytes::from_request(request, &()).await;
        let e = body::<Value>(raw, 1024, None).unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_TIMEOUT);
        assert!(
            e.message.contains("[http] request_timeout (2s)"),
            "{}",
            e.message
        );

        // A body that is all there is reads as ever.
        let whole = Body::new(Deadline::new(Body::from("{}"), Duration::from_secs(2)));
        let raw = Bytes::from_request(Request::new(whole), &()).await;
        assert_eq!(body::<Value>(raw, 1024, None).unwrap(), json!({}));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_takes_nothing_is_cut_off_and_a_slow_one_is_not() {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut io = Patient::new(ours, Duration::from_secs(30));
        let started = tokio::time::Instant::now();
        let e = io.write_all(&[0; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("request_timeout (30s)"), "{e}");
        assert!(started.elapsed() >= Duration::from_secs(30));

        // Taking 64 bytes a second, 100 seconds in all: never 30 s without progress.
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut io = Patient::new(ours, Duration::from_secs(30));
        let reader = tokio::spawn(async move {
            let mut taken = 0;
            let mut chunk = [0; 64];
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match theirs.read(&mut chunk).await.unwrap() {
                    0 => return taken,
                    n => taken += n,
                }
            }
        });
        io.write_all(&[0; 6400]).await.unwrap();
        io.shutdown().await.unwrap();
        assert_eq!(reader.await.unwrap(), 6400);
    }
}
