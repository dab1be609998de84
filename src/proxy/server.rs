//! The proxy's listener: accepts clients, negotiates (TLS or `N`, cancel requests), connects
//! each to the upstream server and hands the pair to [`super::relay`]. Each client runs in its
//! own task, so one slow client never holds up another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::ProxyError;
use super::events::{EventLog, ProxyAction, ProxyData};
use super::relay::{self, Client, End, Relay};
use super::rule::RuleSet;
use super::wire::{self, FirstPacket};
use crate::pg::conn::{Socket, open_socket};
use crate::pg::error::PgError;
use crate::pg::params::{ConnParams, SslMode};

/// How long a client may take to send its startup packet (the server's own
/// `authentication_timeout` default is one minute).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// What every connection task shares.
pub(crate) struct Shared {
    pub rules: Arc<RuleSet>,
    pub events: Arc<EventLog>,
    pub upstream: ConnParams,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub log_queries: bool,
    /// The proxy's BackendKeyData process id (the connection number) → the key the client
    /// was given, and the server's own.
    cancels: Mutex<HashMap<u32, CancelKey>>,
    next_connection: AtomicU64,
}

struct CancelKey {
    ours: Vec<u8>,
    server_pid: u32,
    server_secret: Vec<u8>,
}

impl Shared {
    pub(crate) fn new(
        rules: Arc<RuleSet>,
        events: Arc<EventLog>,
        upstream: ConnParams,
        tls: Option<tokio_rustls::TlsAcceptor>,
        log_queries: bool,
    ) -> Shared {
        Shared {
            rules,
            events,
            upstream,
            tls,
            log_queries,
            cancels: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
        }
    }

    /// Remembers the server's key for connection `id`; returns the secret the client gets
    /// (random, as long as the server's: protocol 3.2 allows up to 256 bytes).
    pub(crate) fn register_cancel(
        &self,
        id: u64,
        server_pid: u32,
        server_secret: Vec<u8>,
    ) -> Vec<u8> {
        let ours: Vec<u8> = (0..server_secret.len()).map(|_| fastrand::u8(..)).collect();
        let key = CancelKey {
            ours: ours.clone(),
            server_pid,
            server_secret,
        };
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id as u32, key);
        ours
    }

    pub(crate) fn forget_cancel(&self, id: u64) {
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(id as u32));
    }

    /// The server's key for a cancel request carrying the proxy's key, if it is one.
    fn server_key(&self, pid: u32, secret: &[u8]) -> Option<(u32, Vec<u8>)> {
        let cancels = self.cancels.lock().unwrap_or_else(|p| p.into_inner());
        let key = cancels.get(&pid)?;
        // Constant time: the secret is what stops one client cancelling another's queries.
        let same = key.ours.len() == secret.len()
            && key
                .ours
                .iter()
                .zip(secret)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same.then(|| (key.server_pid, key.server_secret.clone()))
    }
}

/// Accepts clients until `stop` turns true.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut stopping = stop.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let shared = shared.clone();
                    let mut stop = stop.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = serve_client(&shared, tcp, peer) => {}
                            () = stopped(&mut stop) => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("proxy: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = stopped(&mut stopping) => return,
        }
    }
}

/// Resolves once the proxy is stopping (the guard `wait_for` returns is not held).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The client's side of a connection: plain, or TLS the proxy terminates.
enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

async fn serve_client(shared: &Shared, tcp: TcpStream, peer: SocketAddr) {
    let _ = tcp.set_nodelay(true);
    let id = shared.next_connection.fetch_add(1, Ordering::Relaxed) + 1;
    let (stream, first) = match tokio::time::timeout(STARTUP_TIMEOUT, negotiate(shared, tcp)).await
    {
        Ok(Ok(Some(pair))) => pair,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!("proxy: client {peer} left during negotiation: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("proxy: client {peer} sent no startup packet within a minute");
            return;
        }
    };
    let (raw, params) = first;
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let user = param("user").unwrap_or("");
    let client = Client {
        id,
        database: Arc::from(param("database").unwrap_or(user)),
        user: Arc::from(user),
    };
    let app = param("application_name").unwrap_or("").to_string();
    match connect_upstream(&shared.upstream).await {
        Ok((mut upstream, upstream_tls)) => {
            if let Err(e) = upstream.write_all(&raw).await {
                refuse_client(
                    shared,
                    stream,
                    &client,
                    &app,
                    format!("could not be written to: {e}"),
                )
                .await;
                return;
            }
            let relay = Relay::new(shared, client, &app, upstream_tls);
            let end = match stream {
                ClientStream::Plain(s) => relay.run(s, upstream).await,
                ClientStream::Tls(s) => relay.run(s, upstream).await,
            };
            if let End::Dropped = end {
                tracing::debug!("proxy: connection {id} dropped by a rule");
            }
        }
        Err(e) => {
            refuse_client(
                shared,
                stream,
                &client,
                &app,
                format!("cannot be reached: {e}"),
            )
            .await
        }
    }
}

/// Tells a client the upstream server cannot serve it, and records that.
async fn refuse_client(
    shared: &Shared,
    stream: ClientStream,
    client: &Client,
    app: &str,
    why: String,
) {
    let message = format!(
        "walwatch proxy: the upstream server {} {why}",
        shared.upstream.target()
    );
    shared
        .events
        .record_async(
            ProxyData {
                action: ProxyAction::Error,
                query: None,
                rule: None,
                message: Some(message.clone()),
                sqlstate: Some("08001".into()),
                connection: client.id,
                database: client.database.clone(),
                user: client.user.clone(),
                application_name: Arc::from(app),
                duration_ms: None,
            },
            true,
        )
        .await;
    let mut out = BytesMut::new();
    wire::error_response("08001", &message, &mut out);
    let _ = match stream {
        ClientStream::Plain(mut s) => s.write_all(&out).await,
        ClientStream::Tls(mut s) => s.write_all(&out).await,
    };
}

type Startup = (BytesMut, Vec<(String, String)>);

/// Answers SSLRequest and GSSENCRequest until the StartupMessage; serves a cancel request.
/// `None` when the connection was a cancel request or is refused.
async fn negotiate(
    shared: &Shared,
    tcp: TcpStream,
) -> std::io::Result<Option<(ClientStream, Startup)>> {
    let mut stream = ClientStream::Plain(tcp);
    loop {
        let first = match &mut stream {
            ClientStream::Plain(s) => relay::read_first(s).await?,
            ClientStream::Tls(s) => relay::read_first(s).await?,
        };
        let first = match first {
            Ok(f) => f,
            Err(e) => {
                let mut out = BytesMut::new();
                wire::error_response("08P01", &format!("walwatch proxy: {e}"), &mut out);
                write_plain(&mut stream, &out).await?;
                return Ok(None);
            }
        };
        match first {
            FirstPacket::Ssl => match (stream, &shared.tls) {
                (ClientStream::Plain(mut s), Some(acceptor)) => {
                    s.write_all(b"S").await?;
                    stream = ClientStream::Tls(Box::new(acceptor.accept(s).await?));
                }
                (mut other, _) => {
                    write_plain(&mut other, b"N").await?;
                    stream = other;
                }
            },
            FirstPacket::GssEnc => write_plain(&mut stream, b"N").await?,
            FirstPacket::Cancel { pid, secret } => {
                cancel(shared, pid, &secret).await;
                return Ok(None);
            }
            FirstPacket::Startup { raw, params, .. } => return Ok(Some((stream, (raw, params)))),
        }
    }
}

async fn write_plain(stream: &mut ClientStream, bytes: &[u8]) -> std::io::Result<()> {
    match stream {
        ClientStream::Plain(s) => s.write_all(bytes).await,
        ClientStream::Tls(s) => s.write_all(bytes).await,
    }
}

/// Sends a client's cancel request on to the server with the server's key. Nothing is
/// answered, as the server answers nothing ("Canceling Requests in Progress").
async fn cancel(shared: &Shared, pid: u32, secret: &[u8]) {
    let Some((server_pid, server_secret)) = shared.server_key(pid, secret) else {
        tracing::debug!("proxy: a cancel request for an unknown key was ignored");
        return;
    };
    match connect_upstream(&shared.upstream).await {
        Ok((mut s, _)) => {
            let _ = s
                .write_all(&wire::cancel_request(server_pid, &server_secret))
                .await;
            let _ = s.shutdown().await;
        }
        Err(e) => tracing::warn!("proxy: could not pass a cancel request on: {e}"),
    }
}

/// Opens the upstream socket as its `sslmode` asks. `allow` connects without TLS: the
/// client's own startup and authentication are relayed, so they cannot be replayed over TLS
/// when the server refuses them. Returns whether TLS is up.
async fn connect_upstream(params: &ConnParams) -> Result<(Socket, bool), PgError> {
    let (socket, _) = match params.tls.mode {
        SslMode::Disable | SslMode::Allow => open_socket(params, false).await?,
        SslMode::Prefer => match open_socket(params, true).await {
            Err(PgError::Tls(why)) => {
                tracing::debug!("upstream TLS failed ({why}); sslmode=prefer goes without");
                open_socket(params, false).await?
            }
            other => other?,
        },
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            open_socket(params, true).await?
        }
    };
    let tls = matches!(socket, Socket::Tls(_));
    Ok((socket, tls))
}

/// A TLS acceptor for `--tls-cert`/`--tls-key` (PEM), offering ALPN `postgresql` as the
/// server does since PostgreSQL 17.
pub(crate) fn acceptor(
    cert: &PathBuf,
    key: &PathBuf,
) -> Result<tokio_rustls::TlsAcceptor, ProxyError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |what: &str, e: String| ProxyError::Tls(format!("{what}: {e}"));
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            bad(
                &format!("cannot read the certificate {}", cert.display()),
                e.to_string(),
            )
        })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        bad(
            &format!("cannot read the private key {}", key.display()),
            e.to_string(),
        )
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad("TLS setup failed", e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| {
        bad(
            "the certificate and key do not make a TLS identity",
            e.to_string(),
        )
    })?;
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
