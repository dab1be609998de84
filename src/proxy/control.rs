//! The control API: fault rules added and removed while the proxy runs, over HTTP/1.1 + JSON,
//! and its client for `walwatch fault add|rm|ls|clear`.
//!
//! A fault test usually wants a fault for a stretch of the test only ("the database fails
//! while the order is placed"), with the application connected throughout, so rules change
//! without restarting the proxy. HTTP + JSON because every harness language can speak it
//! with `curl`:
//!
//! * `GET /faults` lists the rules with their counts, `GET /faults/ID` one rule;
//! * `POST /faults` adds one: a rule object, or `{"rule": "error:INSERT*:disk full"}`;
//! * `DELETE /faults/ID` removes one, `DELETE /faults` removes all.
//!
//! Whoever reaches the API can make the database fail, so it listens on loopback unless it
//! is given a token, which every request must then carry (`Authorization: Bearer TOKEN`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::events::EventLog;
use super::rule::{RuleError, RuleSet, RuleSpec};

/// Bodies larger than this are refused (413): a rule is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

/// How much of an oversized body is still read (and dropped) before the 413: a client that
/// is still sending when the connection closes gets a reset instead of the answer.
const MAX_DRAIN: usize = 1024 * 1024;

/// How long a client may take to send a request's headers (and an idle connection lasts).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the client waits to connect, and then for the answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the control API listens, and the token it requires.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// The address to listen on (`--control`).
    pub listen: SocketAddr,
    /// The bearer token every request must carry (`--control-token`); required off loopback.
    pub token: Option<String>,
}

/// Why the control API cannot start, or a command to it failed: each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The control address cannot be bound.
    #[error(
        "cannot listen on {addr} for the control API: {source}; is another proxy using it? \
         Give another --control address"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The configuration would expose the API: the message says what to change.
    #[error("{0}")]
    Refused(String),
    /// The client cannot connect to the control API.
    #[error(
        "cannot reach the control API at {addr}: {source}; is `walwatch proxy` running with \
         --control {addr}?"
    )]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The control API answered with an error (its message says what was wrong).
    #[error("the control API answered {status}: {message}")]
    Status { status: u16, message: String },
    /// The answer is not the control API's (another server at that address?) or broke off.
    #[error("{0}")]
    Protocol(String),
}

/// Binds the control listener. Refuses a non-loopback address unless a token is set, and an
/// empty token.
pub async fn bind(config: &ControlConfig) -> Result<TcpListener, ControlError> {
    let addr = config.listen;
    match config.token.as_deref() {
        Some("") => {
            return Err(ControlError::Refused(
                "the control token is empty: give a --control-token that is hard to guess".into(),
            ));
        }
        None if !addr.ip().to_canonical().is_loopback() => {
            return Err(ControlError::Refused(format!(
                "the control API would accept rules from anyone who can reach {addr}: give \
                 --control-token, or listen on 127.0.0.1"
            )));
        }
        _ => {}
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| ControlError::Bind { addr, source })
}

/// Serves the control API on `listener` until `shutdown` resolves, each connection in its own
/// task; then connections finish the request they are on and close. With `token`, every
/// request must carry `Authorization: Bearer TOKEN`.
pub async fn serve(
    listener: TcpListener,
    token: Option<String>,
    rules: Arc<RuleSet>,
    events: Arc<EventLog>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    // Connections watch this sender: its drop is their signal to close.
    let (stop, stopped) = watch::channel(());
    let token = Arc::new(token);
    tokio::pin!(shutdown);
    loop {
        let tcp = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, usually: wait rather than spin.
                    tracing::warn!("control API: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        tokio::spawn(connection(
            tcp,
            token.clone(),
            rules.clone(),
            events.clone(),
            stopped.clone(),
        ));
    }
    drop(stop);
}

/// Serves one connection until the client closes it or `stopped` says to.
async fn connection(
    tcp: TcpStream,
    token: Arc<Option<String>>,
    rules: Arc<RuleSet>,
    events: Arc<EventLog>,
    mut stopped: watch::Receiver<()>,
) {
    let service = hyper::service::service_fn(move |req| {
        let (token, rules, events) = (token.clone(), rules.clone(), events.clone());
        async move { Ok::<_, Infallible>(handle(req, token.as_deref(), &rules, &events).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer)
        .header_read_timeout(HEADER_TIMEOUT);
    let conn = builder.serve_connection(Io(tcp), service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = stopped.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = served {
        tracing::debug!("control API connection: {e}");
    }
}

type Reply = Response<Full<Bytes>>;

fn answer(status: StatusCode, body: Value) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body.to_string())));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    reply
}

fn fail(status: StatusCode, message: impl Into<String>) -> Reply {
    answer(status, json!({ "error": message.into() }))
}

/// What a path names.
enum Route<'a> {
    /// `/marks`.
    Marks,
    All,
    One(u64),
    BadId(&'a str),
    Unknown,
}

fn route(path: &str) -> Route<'_> {
    match path.trim_end_matches('/') {
        "/faults" => Route::All,
        "/marks" => Route::Marks,
        p => match p.strip_prefix("/faults/") {
            Some(id) => id.parse().map_or(Route::BadId(id), Route::One),
            None => Route::Unknown,
        },
    }
}

/// One request. The body is read first, whatever the answer: see [`MAX_DRAIN`].
async fn handle(
    req: Request<Incoming>,
    token: Option<&str>,
    rules: &RuleSet,
    events: &Arc<EventLog>,
) -> Reply {
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body).await;
    if let Some(token) = token
        && !authorised(&parts.headers, token)
    {
        let mut reply = fail(
            StatusCode::UNAUTHORIZED,
            "missing or wrong control token: send Authorization: Bearer <token>",
        );
        let bearer = HeaderValue::from_static("Bearer");
        reply.headers_mut().insert(header::WWW_AUTHENTICATE, bearer);
        return reply;
    }
    let body = match body {
        Body::Read(body) => body,
        Body::TooLarge { closing } => {
            let mut reply = fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY} bytes: a rule is a few hundred"),
            );
            if closing {
                let close = HeaderValue::from_static("close");
                reply.headers_mut().insert(header::CONNECTION, close);
            }
            return reply;
        }
        Body::Broken(e) => return fail(StatusCode::BAD_REQUEST, format!("broken body: {e}")),
    };
    let method = parts.method;
    match route(parts.uri.path()) {
        Route::All if method == Method::GET => {
            answer(StatusCode::OK, json!({"faults": rules.list()}))
        }
        Route::All if method == Method::POST => add(&body, rules),
        Route::All if method == Method::DELETE => {
            answer(StatusCode::OK, json!({"removed": rules.clear()}))
        }
        Route::One(id) if method == Method::GET => {
            match rules.list().into_iter().find(|r| r.id == id) {
                Some(view) => answer(StatusCode::OK, json!(view)),
                None => no_such_rule(id),
            }
        }
        Route::One(id) if method == Method::DELETE => {
            if rules.remove(id) {
                answer(StatusCode::OK, json!({"removed": id}))
            } else {
                no_such_rule(id)
            }
        }
        Route::Marks if method == Method::POST => mark(&body, events).await,
        Route::Marks => not_allowed("POST", "/marks"),
        Route::All => not_allowed("GET, POST, DELETE", "/faults"),
        Route::One(_) => not_allowed("GET, DELETE", "/faults/ID"),
        Route::BadId(id) => fail(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a rule id: ids are numbers, as GET /faults lists them"),
        ),
        Route::Unknown => fail(
            StatusCode::NOT_FOUND,
            format!(
                "no such path {}: the control API serves /faults, /faults/ID and /marks",
                parts.uri.path()
            ),
        ),
    }
}

fn no_such_rule(id: u64) -> Reply {
    fail(
        StatusCode::NOT_FOUND,
        format!("no fault rule {id}: list them with GET /faults"),
    )
}

fn not_allowed(allow: &'static str, path: &str) -> Reply {
    let mut reply = fail(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{path} takes {allow}"),
    );
    reply
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    reply
}

enum Body {
    Read(Bytes),
    /// Over [`MAX_BODY`]; `closing` when not all of it was read, so the connection must close.
    TooLarge {
        closing: bool,
    },
    Broken(hyper::Error),
}

async fn read_body(headers: &HeaderMap, mut body: Incoming) -> Body {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_DRAIN as u64) {
        return Body::TooLarge { closing: true };
    }
    let (mut kept, mut seen) = (BytesMut::new(), 0usize);
    while let Some(frame) = body.frame().await {
        let data = match frame {
            Ok(frame) => frame.into_data().unwrap_or_default(),
            Err(e) => return Body::Broken(e),
        };
        seen += data.len();
        if seen <= MAX_BODY {
            kept.extend_from_slice(&data);
        } else if seen > MAX_DRAIN {
            return Body::TooLarge { closing: true };
        }
    }
    if seen > MAX_BODY {
        return Body::TooLarge { closing: false };
    }
    Body::Read(kept.freeze())
}

/// `POST /faults`.
fn add(body: &[u8], rules: &RuleSet) -> Reply {
    let spec = match parse_rule(body) {
        Ok(spec) => spec,
        Err(message) => return fail(StatusCode::BAD_REQUEST, message),
    };
    let rule = spec.to_spec_string();
    match rules.add(spec) {
        Ok(id) => answer(StatusCode::CREATED, json!({"id": id, "rule": rule})),
        Err(e) => fail(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// `POST /marks` with `{"name": NAME}`: records a mark event (fsync'd before the answer).
async fn mark(body: &[u8], events: &Arc<EventLog>) -> Reply {
    let name = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("name").and_then(Value::as_str).map(str::to_string));
    match name {
        Some(name) if !name.is_empty() => {
            let seq = events.mark(&name).await.seq;
            answer(StatusCode::CREATED, json!({"seq": seq, "name": name}))
        }
        _ => fail(
            StatusCode::BAD_REQUEST,
            "send {\"name\": \"<mark name>\"}: a mark needs a non-empty name",
        ),
    }
}

/// A rule object, or `{"rule": "<string form>"}`.
fn parse_rule(body: &[u8]) -> Result<RuleSpec, String> {
    const SEND: &str = "send a rule object such as {\"action\": \"error\", \"query\": \
                        \"INSERT*\", \"message\": \"disk full\"}, or {\"rule\": \
                        \"error:INSERT*:disk full\"}";
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e}): {SEND}"))?;
    let Value::Object(object) = &value else {
        return Err(format!("the body is not a JSON object: {SEND}"));
    };
    match (object.get("rule"), object.len()) {
        (None, _) => serde_json::from_value(value).map_err(|e| format!("not a rule: {e}; {SEND}")),
        (Some(Value::String(text)), 1) => text.parse().map_err(|e: RuleError| e.to_string()),
        (Some(_), _) => Err(format!(
            "`rule` is the rule in its --fault form, a string, and the only key: {SEND}"
        )),
    }
}

/// Whether the request carries `Authorization: Bearer <token>`.
fn authorised(headers: &HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, given)| given.trim());
    given.is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes()))
}

/// Equality in a time that depends only on the length of `want`: how long a wrong token takes
/// to refuse says nothing about how much of it was right.
fn same_secret(given: &[u8], want: &[u8]) -> bool {
    let mut diff = given.len() ^ want.len();
    for (i, w) in want.iter().enumerate() {
        diff |= usize::from(given.get(i).copied().unwrap_or(0) ^ w);
    }
    std::hint::black_box(diff) == 0
}

/// One command for a running proxy's control API.
#[derive(Clone, Debug)]
pub enum Command {
    /// `GET /faults`.
    List,
    /// `POST /faults` (boxed: a rule is far larger than the other commands).
    Add(Box<RuleSpec>),
    /// `DELETE /faults/ID`.
    Remove(u64),
    /// `DELETE /faults`.
    Clear,
    /// `POST /marks`: a named mark in the proxy's events.
    Mark(String),
}

impl Command {
    fn http(&self) -> Result<(Method, String, Bytes), ControlError> {
        Ok(match self {
            Command::List => (Method::GET, "/faults".into(), Bytes::new()),
            Command::Clear => (Method::DELETE, "/faults".into(), Bytes::new()),
            Command::Remove(id) => (Method::DELETE, format!("/faults/{id}"), Bytes::new()),
            Command::Mark(name) => {
                let body = json!({ "name": name }).to_string();
                (Method::POST, "/marks".into(), Bytes::from(body))
            }
            Command::Add(spec) => {
                let body = serde_json::to_vec(spec).map_err(|e| {
                    ControlError::Protocol(format!("the rule cannot be sent as JSON: {e}"))
                })?;
                (Method::POST, "/faults".into(), Bytes::from(body))
            }
        })
    }
}

/// Sends one command to the control API at `addr` (`host:port`, or `http://host:port`) and
/// returns its JSON answer; a non-2xx answer is an [`ControlError::Status`] carrying the
/// server's error message.
pub async fn request(
    addr: &str,
    token: Option<&str>,
    command: &Command,
) -> Result<Value, ControlError> {
    let addr = addr.trim();
    let addr = addr
        .strip_prefix("http://")
        .unwrap_or(addr)
        .trim_end_matches('/');
    let tcp = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(connected) => connected,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no connection within {} s", CONNECT_TIMEOUT.as_secs()),
        )),
    }
    .map_err(|source| ControlError::Connect {
        addr: addr.to_string(),
        source,
    })?;
    tokio::time::timeout(ANSWER_TIMEOUT, exchange(tcp, addr, token, command))
        .await
        .unwrap_or_else(|_| {
            Err(ControlError::Protocol(format!(
                "the control API at {addr} did not answer within {} s",
                ANSWER_TIMEOUT.as_secs()
            )))
        })
}

/// The request and its answer over `tcp`.
async fn exchange(
    tcp: TcpStream,
    addr: &str,
    token: Option<&str>,
    command: &Command,
) -> Result<Value, ControlError> {
    let broken = |e: hyper::Error| {
        ControlError::Protocol(format!(
            "no HTTP answer from {addr} ({e}): is it the proxy's --control address, not its \
             --listen one?"
        ))
    };
    let (method, path, body) = command.http()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(Io(tcp))
        .await
        .map_err(broken)?;
    // It ends once `sender` is dropped.
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, addr);
    if !body.is_empty() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| ControlError::Protocol(format!("cannot build the request: {e}")))?;
    let res = sender.send_request(req).await.map_err(broken)?;
    let status = res.status();
    let bytes = res.into_body().collect().await.map_err(broken)?.to_bytes();
    let value = serde_json::from_slice::<Value>(&bytes);
    if !status.is_success() {
        let message = match &value {
            Ok(v) => v.get("error").and_then(Value::as_str).map(str::to_string),
            Err(_) => None,
        };
        return Err(ControlError::Status {
            status: status.as_u16(),
            message: message.unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&bytes);
                let cut: String = text.chars().take(200).collect();
                format!("{cut} (not the control API's answer: is {addr} its --control address?)")
            }),
        });
    }
    value.map_err(|e| {
        ControlError::Protocol(format!(
            "the answer from {addr} is not JSON ({e}): is it the proxy's --control address?"
        ))
    })
}

/// hyper's I/O traits over a tokio TCP stream (what hyper-util's `TokioIo` does). Reads go
/// through a small buffer rather than into hyper's uninitialised one: no `unsafe`, and the
/// control API moves a few hundred bytes.
struct Io(TcpStream);

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut chunk = [0u8; 8192];
        let n = buf.remaining().min(chunk.len());
        let mut read = tokio::io::ReadBuf::new(&mut chunk[..n]);
        ready!(tokio::io::AsyncRead::poll_read(
            Pin::new(&mut self.get_mut().0),
            cx,
            &mut read
        ))?;
        buf.put_slice(read.filled());
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(Pin::new(&mut self.get_mut().0), cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write_vectored(Pin::new(&mut self.get_mut().0), cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        tokio::io::AsyncWrite::is_write_vectored(&self.0)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().0), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().0), cx)
    }
}

/// hyper's timer over tokio's, for the server's header timeout.
#[derive(Clone, Copy, Debug)]
struct TokioTimer;

impl hyper::rt::Timer for TokioTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(TokioSleep(Box::pin(tokio::time::sleep(duration))))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        Box::pin(TokioSleep(Box::pin(tokio::time::sleep_until(deadline))))
    }
}

struct TokioSleep(Pin<Box<tokio::time::Sleep>>);

impl Future for TokioSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl hyper::rt::Sleep for TokioSleep {}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Serves a fresh rule set on a free loopback port.
    async fn start(token: Option<&str>) -> (String, Arc<RuleSet>) {
        let (addr, rules, _) = start_with_events(token).await;
        (addr, rules)
    }

    /// [`start`], also returning the proxy's event log the API records marks in.
    async fn start_with_events(token: Option<&str>) -> (String, Arc<RuleSet>, Arc<EventLog>) {
        let events = EventLog::open(None, 100).unwrap();
        let rules = Arc::new(RuleSet::new(0));
        let config = ControlConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: token.map(String::from),
        };
        let listener = bind(&config).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let shutdown = std::future::pending();
        let log = events.clone();
        tokio::spawn(serve(listener, config.token, rules.clone(), log, shutdown));
        (addr, rules, events)
    }

    #[tokio::test]
    async fn a_mark_is_recorded_in_the_events_with_its_name() {
        let (addr, _, events) = start_with_events(None).await;
        let answer = request(&addr, None, &Command::Mark("fault-start".into()))
            .await
            .unwrap();
        assert_eq!(answer["name"], "fault-start", "{answer}");
        let seq = answer["seq"].as_u64().unwrap();
        let recorded = events.all();
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!(recorded[0].seq, seq);
        assert_eq!(
            recorded[0].data.action,
            crate::proxy::events::ProxyAction::Mark
        );
        assert_eq!(recorded[0].data.message.as_deref(), Some("fault-start"));
        let event = recorded[0].to_event();
        assert_eq!(crate::marker::mark_name(&event), Some("fault-start"));
        assert!(crate::marker::is_marker(&event));
        let (status, body) = raw(&addr, "POST", "/marks", "{\"name\": \"\"}").await;
        assert_eq!(status, 400, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("non-empty name"),
            "{body}"
        );
        assert_eq!(events.all().len(), 1, "a refused mark is not recorded");
    }

    /// One request written by hand (for what [`request`] never sends): the status and the
    /// JSON body of the answer.
    async fn raw(addr: &str, method: &str, path: &str, body: &str) -> (u16, Value) {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(body.as_bytes()).await.unwrap();
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).await.unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {reply}"));
        (status, json)
    }

    fn status_of(e: &ControlError) -> (u16, &str) {
        match e {
            ControlError::Status { status, message } => (*status, message),
            other => panic!("expected an error status, got {other}"),
        }
    }

    #[tokio::test]
    async fn rules_are_added_listed_and_removed() {
        let (addr, rules) = start(None).await;
        let spec: RuleSpec = "error:INSERT*:disk full;times=1".parse().unwrap();
        let a = request(&addr, None, &Command::Add(Box::new(spec)))
            .await
            .unwrap();
        assert_eq!(
            a,
            json!({"id": 1, "rule": "error:INSERT*:disk full;times=1"})
        );
        let body = r#"{"rule": "drop:DELETE*;user=bob"}"#;
        let (status, b) = raw(&addr, "POST", "/faults", body).await;
        assert_eq!(
            (status, b),
            (201, json!({"id": 2, "rule": "drop:DELETE*;user=bob"}))
        );
        let list = request(&addr, None, &Command::List).await.unwrap();
        let faults = list["faults"].as_array().unwrap();
        assert_eq!(faults.len(), 2, "{list}");
        assert_eq!(faults[0]["id"], 1);
        assert_eq!(faults[0]["spec"]["message"], "disk full");
        assert_eq!(
            (&faults[0]["matched"], &faults[0]["fired"]),
            (&json!(0), &json!(0))
        );
        assert_eq!(faults[1]["rule"], "drop:DELETE*;user=bob");
        let (status, one) = raw(&addr, "GET", "/faults/2", "").await;
        assert_eq!((status, &one["spec"]["user"]), (200, &json!("bob")));
        let removed = request(&addr, None, &Command::Remove(1)).await.unwrap();
        assert_eq!(removed, json!({"removed": 1}));
        assert_eq!(rules.list().len(), 1);
        let cleared = request(&addr, None, &Command::Clear).await.unwrap();
        assert_eq!(cleared, json!({"removed": 1}));
        assert!(rules.is_empty());
    }

    #[tokio::test]
    async fn removing_an_unknown_rule_says_how_to_list_them() {
        let (addr, _) = start(None).await;
        let e = request(&addr, None, &Command::Remove(7)).await.unwrap_err();
        assert_eq!(
            status_of(&e),
            (404, "no fault rule 7: list them with GET /faults")
        );
        assert!(e.to_string().contains("404"), "{e}");
        let (status, body) = raw(&addr, "GET", "/faults/7", "").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("no fault rule 7: list them with GET /faults"))
        );
    }

    #[tokio::test]
    async fn invalid_rules_and_bodies_are_refused_with_a_reason() {
        let (addr, rules) = start(None).await;
        let bad: RuleSpec =
            serde_json::from_str(r#"{"action": "error", "query": "INSERT*"}"#).unwrap();
        let e = request(&addr, None, &Command::Add(Box::new(bad)))
            .await
            .unwrap_err();
        let (status, message) = status_of(&e);
        assert_eq!(status, 400);
        assert!(
            message.contains("an error rule needs a message"),
            "{message}"
        );
        for (body, says) in [
            ("{not json", "the body is not JSON"),
            ("", "the body is not JSON"),
            ("[1]", "not a JSON object"),
            (
                r#"{"action": "drop", "query": "X", "colour": 1}"#,
                "unknown field `colour`",
            ),
            (r#"{"rule": "oops:X"}"#, "unknown action `oops`"),
            (r#"{"rule": "drop:X", "times": 1}"#, "the only key"),
            (r#"{"rule": 3}"#, "a string"),
        ] {
            let (status, answer) = raw(&addr, "POST", "/faults", body).await;
            let message = answer["error"].as_str().unwrap_or_default();
            assert_eq!(status, 400, "{body}: {answer}");
            assert!(message.contains(says), "`{body}` gave `{message}`");
        }
        assert!(rules.is_empty());
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let (addr, rules) = start(None).await;
        let huge: RuleSpec = format!("error:INSERT*:{}", "x".repeat(100 * 1024))
            .parse()
            .unwrap();
        let e = request(&addr, None, &Command::Add(Box::new(huge)))
            .await
            .unwrap_err();
        let (status, message) = status_of(&e);
        assert_eq!(status, 413);
        assert!(message.contains("larger than 65536 bytes"), "{message}");
        // A declared length too large to read at all is answered at once.
        let mut tcp = TcpStream::connect(&addr).await.unwrap();
        let head = "POST /faults HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n";
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
        assert!(rules.is_empty());
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_named() {
        let (addr, _) = start(None).await;
        let (status, body) = raw(&addr, "GET", "/rules", "").await;
        assert_eq!(status, 404);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("/faults, /faults/ID and /marks")
        );
        let (status, body) = raw(&addr, "PUT", "/faults", "{}").await;
        assert_eq!(
            (status, body["error"].as_str()),
            (405, Some("/faults takes GET, POST, DELETE"))
        );
        let (status, _) = raw(&addr, "POST", "/faults/1", "{}").await;
        assert_eq!(status, 405);
        let (status, body) = raw(&addr, "DELETE", "/faults/one", "").await;
        assert_eq!(status, 400);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("`one` is not a rule id")
        );
        // A trailing slash and an http:// address are fine.
        let (status, _) = raw(&addr, "GET", "/faults/", "").await;
        assert_eq!(status, 200);
        let url = format!("http://{addr}/");
        assert!(request(&url, None, &Command::List).await.is_ok());
    }

    #[tokio::test]
    async fn a_token_is_required_when_set() {
        let (addr, rules) = start(Some("s3cret")).await;
        let spec: RuleSpec = "drop:X".parse().unwrap();
        for token in [
            None,
            Some("wrong"),
            Some("s3cret2"),
            Some("s3cre"),
            Some(""),
        ] {
            let e = request(&addr, token, &Command::Add(Box::new(spec.clone())))
                .await
                .unwrap_err();
            let want = "missing or wrong control token: send Authorization: Bearer <token>";
            assert_eq!(status_of(&e), (401, want), "token {token:?}");
        }
        assert!(rules.is_empty(), "no rule was added without the token");
        request(&addr, Some("s3cret"), &Command::Add(Box::new(spec)))
            .await
            .unwrap();
        let list = request(&addr, Some("s3cret"), &Command::List)
            .await
            .unwrap();
        assert_eq!(list["faults"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        for other in [&b"abd"[..], b"ab", b"abcd", b""] {
            assert!(!same_secret(other, b"abc"), "{other:?}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  t0k "),
        );
        assert!(authorised(&headers, "t0k"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic t0k"));
        assert!(!authorised(&headers, "t0k"));
    }

    #[tokio::test]
    async fn a_public_address_needs_a_token() {
        let open = ControlConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            token: None,
        };
        let e = bind(&open).await.unwrap_err();
        assert!(matches!(e, ControlError::Refused(_)));
        assert!(
            e.to_string()
                .contains("give --control-token, or listen on 127.0.0.1"),
            "{e}"
        );
        let empty = ControlConfig {
            token: Some(String::new()),
            ..open.clone()
        };
        assert!(
            bind(&empty)
                .await
                .unwrap_err()
                .to_string()
                .contains("token is empty")
        );
        let with = ControlConfig {
            token: Some("t".into()),
            ..open
        };
        assert!(bind(&with).await.is_ok());
        let v6 = ControlConfig {
            listen: "[::1]:0".parse().unwrap(),
            token: None,
        };
        // Loopback needs no token (a host without IPv6 fails to bind, which is not a refusal).
        assert!(!matches!(bind(&v6).await, Err(ControlError::Refused(_))));
    }

    #[tokio::test]
    async fn serving_stops_on_shutdown_and_the_client_says_where_it_looked() {
        let rules = Arc::new(RuleSet::new(0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let server = tokio::spawn(serve(
            listener,
            None,
            rules,
            EventLog::open(None, 10).unwrap(),
            shutdown,
        ));
        request(&addr, None, &Command::List).await.unwrap();
        stop.send(()).unwrap();
        server.await.unwrap();
        let e = request(&addr, None, &Command::List).await.unwrap_err();
        assert!(matches!(e, ControlError::Connect { .. }), "{e}");
        let want = format!("is `walwatch proxy` running with --control {addr}?");
        assert!(e.to_string().contains(&want), "{e}");
    }

    #[tokio::test]
    async fn a_server_that_is_not_the_control_api_is_named() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = tcp.read(&mut buf).await;
            let _ = tcp.write_all(b"E\0\0\0\x08garbage").await;
        });
        let e = request(&addr, None, &Command::List).await.unwrap_err();
        assert!(matches!(e, ControlError::Protocol(_)), "{e}");
        assert!(e.to_string().contains("--control address"), "{e}");
    }
}
