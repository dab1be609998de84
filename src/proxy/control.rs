//! The control API: rules added and removed while the proxy runs, over HTTP/1.1 + JSON, and
//! its client for `walwatch fault`.
//!
//! `GET /faults` lists, `POST /faults` adds (a rule object, or `{"rule": "error:INSERT*:x"}`),
//! `DELETE /faults/ID` removes one, `DELETE /faults` removes all. It listens on loopback
//! unless given a token: anyone who can reach it can make the database fail.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use super::rule::{RuleSet, RuleSpec};

/// Bodies larger than this are refused (413): a rule is a few hundred bytes.
const MAX_BODY: usize = 64 * 1024;

/// Where the control API listens, and the token it requires.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot listen on {addr} for the control API: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error(
        "cannot reach the control API at {addr}: {source}; is `walwatch proxy` running with --control {addr}?"
    )]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the control API answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("the control API's answer could not be read: {0}")]
    Protocol(String),
}

/// Binds the control listener; refuses a non-loopback address without a token.
pub async fn bind(config: &ControlConfig) -> Result<TcpListener, ControlError> {
    if !config.listen.ip().is_loopback() && config.token.is_none() {
        return Err(ControlError::Refused(format!(
            "the control API would accept rules from anyone who can reach {}: give \
             --control-token, or listen on 127.0.0.1",
            config.listen
        )));
    }
    TcpListener::bind(config.listen)
        .await
        .map_err(|source| ControlError::Bind {
            addr: config.listen,
            source,
        })
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    token: Option<String>,
    rules: Arc<RuleSet>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let token = Arc::new(token);
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!("control API: accept failed: {e}");
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let (rules, token) = (rules.clone(), token.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let (rules, token) = (rules.clone(), token.clone());
                async move { Ok::<_, std::convert::Infallible>(handle(req, &rules, &token).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(Io(tcp), service)
                .await
            {
                tracing::debug!("control API connection: {e}");
            }
        });
    }
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn fail(status: StatusCode, message: impl Into<String>) -> Response<Full<Bytes>> {
    answer(status, json!({"error": message.into()}))
}

fn authorised(req: &Request<Incoming>, token: &Option<String>) -> bool {
    let Some(want) = token else { return true };
    let got = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    got.len() == want.len()
        && got
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

async fn handle(
    req: Request<Incoming>,
    rules: &RuleSet,
    token: &Option<String>,
) -> Response<Full<Bytes>> {
    if !authorised(&req, token) {
        return fail(
            StatusCode::UNAUTHORIZED,
            "missing or wrong control token: send Authorization: Bearer <token>",
        );
    }
    let path = req.uri().path().trim_end_matches('/').to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/faults") => answer(StatusCode::OK, json!({"faults": rules.list()})),
        (Method::DELETE, "/faults") => answer(StatusCode::OK, json!({"removed": rules.clear()})),
        (Method::POST, "/faults") => add(req, rules).await,
        (Method::DELETE, p) if p.starts_with("/faults/") => {
            match p["/faults/".len()..].parse::<u64>() {
                Ok(id) if rules.remove(id) => answer(StatusCode::OK, json!({"removed": id})),
                Ok(id) => fail(
                    StatusCode::NOT_FOUND,
                    format!("no fault rule {id}: list them with GET /faults"),
                ),
                Err(_) => fail(
                    StatusCode::BAD_REQUEST,
                    "a rule id is a number: DELETE /faults/ID",
                ),
            }
        }
        (_, "/faults") => fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET, POST or DELETE on /faults",
        ),
        _ => fail(
            StatusCode::NOT_FOUND,
            "unknown path: the control API serves /faults and /faults/ID",
        ),
    }
}

async fn add(req: Request<Incoming>, rules: &RuleSet) -> Response<Full<Bytes>> {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {MAX_BODY} bytes"),
            );
        }
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return fail(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            );
        }
    };
    let spec = match value.get("rule").and_then(Value::as_str) {
        Some(text) => text.parse::<RuleSpec>().map_err(|e| e.to_string()),
        None => serde_json::from_value::<RuleSpec>(value).map_err(|e| {
            format!("not a rule: {e} (send a rule object or {{\"rule\": \"error:QUERY:MESSAGE\"}})")
        }),
    };
    let added = spec.and_then(|s| {
        let text = s.to_spec_string();
        rules.add(s).map(|id| (id, text)).map_err(|e| e.to_string())
    });
    match added {
        Ok((id, rule)) => answer(StatusCode::CREATED, json!({"id": id, "rule": rule})),
        Err(e) => fail(StatusCode::BAD_REQUEST, e),
    }
}

/// One command for a running proxy.
#[derive(Clone, Debug)]
pub enum Command {
    List,
    Add(Box<RuleSpec>),
    Remove(u64),
    Clear,
}

/// Sends one command to the control API at `addr` and returns its JSON answer; a non-2xx
/// answer is an error carrying the server's message.
pub async fn request(
    addr: &str,
    token: Option<&str>,
    command: &Command,
) -> Result<Value, ControlError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ControlError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let proto = |e: hyper::Error| ControlError::Protocol(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(Io(tcp))
        .await
        .map_err(proto)?;
    tokio::spawn(conn);
    let (method, path, body) = match command {
        Command::List => (Method::GET, "/faults".to_string(), String::new()),
        Command::Clear => (Method::DELETE, "/faults".to_string(), String::new()),
        Command::Remove(id) => (Method::DELETE, format!("/faults/{id}"), String::new()),
        Command::Add(spec) => (
            Method::POST,
            "/faults".to_string(),
            serde_json::to_string(spec).unwrap_or_default(),
        ),
    };
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, addr)
        .header(hyper::header::CONTENT_TYPE, "application/json");
    if let Some(t) = token {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| ControlError::Protocol(e.to_string()))?;
    let res = sender.send_request(req).await.map_err(proto)?;
    let status = res.status();
    let bytes = res.into_body().collect().await.map_err(proto)?.to_bytes();
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ControlError::Protocol(format!("not JSON: {e}")))?;
    if !status.is_success() {
        return Err(ControlError::Status {
            status: status.as_u16(),
            message: value
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_string(),
        });
    }
    Ok(value)
}

/// hyper's I/O traits over a tokio TCP stream.
struct Io(TcpStream);

impl hyper::rt::Read for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        // SAFETY: tokio's ReadBuf only writes initialised bytes into the unfilled part and
        // reports how many; `advance` then marks exactly those as filled.
        let n = unsafe {
            let mut tbuf = tokio::io::ReadBuf::uninit(buf.as_mut());
            match tokio::io::AsyncRead::poll_read(Pin::new(&mut self.get_mut().0), cx, &mut tbuf) {
                Poll::Ready(Ok(())) => tbuf.filled().len(),
                other => return other,
            }
        };
        unsafe { buf.advance(n) };
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
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().0), cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().0), cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(token: Option<&str>) -> (String, Arc<RuleSet>) {
        let rules = Arc::new(RuleSet::new(0));
        let l = bind(&ControlConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: token.map(String::from),
        })
        .await
        .unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(serve(
            l,
            token.map(String::from),
            rules.clone(),
            std::future::pending(),
        ));
        (addr, rules)
    }

    #[tokio::test]
    async fn rules_are_added_listed_and_removed() {
        let (addr, rules) = start(None).await;
        let spec: RuleSpec = "error:INSERT*:disk full".parse().unwrap();
        let a = request(&addr, None, &Command::Add(Box::new(spec)))
            .await
            .unwrap();
        assert_eq!(a["id"], 1);
        assert_eq!(a["rule"], "error:INSERT*:disk full");
        let b = request(
            &addr,
            None,
            &Command::Add(Box::new("drop:X*".parse().unwrap())),
        )
        .await
        .unwrap();
        assert_eq!(b["id"], 2);
        let list = request(&addr, None, &Command::List).await.unwrap();
        assert_eq!(list["faults"].as_array().unwrap().len(), 2, "{list}");
        assert_eq!(list["faults"][0]["matched"], 0);
        request(&addr, None, &Command::Remove(1)).await.unwrap();
        let e = request(&addr, None, &Command::Remove(1)).await.unwrap_err();
        assert!(e.to_string().contains("no fault rule 1"), "{e}");
        assert_eq!(rules.list().len(), 1);
        let c = request(&addr, None, &Command::Clear).await.unwrap();
        assert_eq!(c["removed"], 1);
        assert!(rules.is_empty());
    }

    #[tokio::test]
    async fn a_token_is_required_when_set() {
        let (addr, _) = start(Some("s3cret")).await;
        for t in [None, Some("wrong")] {
            let e = request(&addr, t, &Command::List).await.unwrap_err();
            assert!(e.to_string().contains("401"), "{e}");
        }
        request(&addr, Some("s3cret"), &Command::List)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn non_loopback_needs_a_token() {
        let open = ControlConfig {
            listen: "0.0.0.0:0".parse().unwrap(),
            token: None,
        };
        let e = bind(&open).await.unwrap_err();
        assert!(e.to_string().contains("--control-token"), "{e}");
        let with = ControlConfig {
            token: Some("t".into()),
            ..open
        };
        assert!(bind(&with).await.is_ok());
    }
}
