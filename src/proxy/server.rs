//! The proxy's listener: accepts clients, negotiates (TLS or `N`, cancel requests), connects
//! each to the upstream server and hands the pair to [`super::relay`]. Each client runs in its
//! own task, so one slow client never holds up another.
//!
//! TLS to the client ends here (`--tls-cert`): the proxy must read the statements to match
//! rules, so it cannot pass the client's TLS through to the server. It is reached both ways
//! PostgreSQL 17 serves it: an SSLRequest answered `S`, or "direct SSL" (libpq
//! `sslnegotiation=direct`), where the client's first bytes are a TLS ClientHello that must
//! name the ALPN protocol `postgresql`. Without a certificate, an SSLRequest is answered `N`
//! (the client goes on in plain text or gives up, as its sslmode says) and a direct ClientHello
//! is refused with a TLS alert, a log line and an event: a client that speaks TLS could not read
//! a PostgreSQL ErrorResponse.

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
use super::events::{EventLog, ProxyData};
use super::relay::{self, Client, End, Relay};
use super::rule::RuleSet;
use super::wire::{self, FirstPacket};
use crate::pg::conn::{Socket, open_socket};
use crate::pg::error::PgError;
use crate::pg::params::{ConnParams, SslMode};

/// How long a client may take to send its startup packet (the server's own
/// `authentication_timeout` default is one minute).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The first byte of a TLS handshake record (RFC 8446 section 5.1, ContentType handshake(22)).
/// A startup packet never starts with it: its first byte is the top byte of a length of at
/// most 10,000 (src/backend/tcop/backend_startup.c, ProcessSSLStartup, checks the same byte).
const TLS_HANDSHAKE: u8 = 0x16;

/// The ALPN protocol a direct-SSL client must offer (PostgreSQL docs, "SSL Session
/// Encryption" in protocol-flow.html; src/include/libpq/pqcomm.h, PG_ALPN_PROTOCOL).
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// A fatal `handshake_failure` alert in a plaintext TLS record (RFC 8446 sections 5.1 and 6:
/// ContentType alert(21), legacy_record_version 3.3, length 2, AlertLevel fatal(2),
/// AlertDescription handshake_failure(40)): what a direct-SSL client is told when the proxy
/// has no certificate, so that it fails at once with a TLS error rather than waiting.
const TLS_HANDSHAKE_FAILURE: [u8; 7] = [21, 3, 3, 0, 2, 2, 40];

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
    let negotiating = negotiate(shared, id, peer, tcp);
    let (stream, first) = match tokio::time::timeout(STARTUP_TIMEOUT, negotiating).await {
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
                database: client.database.clone(),
                user: client.user.clone(),
                application_name: Arc::from(app),
                ..ProxyData::own_error(client.id, "08001", &message)
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
    id: u64,
    peer: SocketAddr,
    tcp: TcpStream,
) -> std::io::Result<Option<(ClientStream, Startup)>> {
    let Some(mut stream) = direct_ssl(shared, id, peer, tcp).await? else {
        return Ok(None);
    };
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
            // Once encrypted, the server takes another SSLRequest or GSSENCRequest for a
            // startup packet of an unknown protocol version and refuses it (src/backend/tcop/
            // backend_startup.c, ProcessStartupPacket: "ssl_done" and "gss_done" are both set
            // by a successful negotiation of either).
            FirstPacket::Ssl | FirstPacket::GssEnc if matches!(stream, ClientStream::Tls(_)) => {
                let mut out = BytesMut::new();
                wire::error_response(
                    "08P01",
                    "walwatch proxy: an SSLRequest or GSSENCRequest on a connection that is \
                     already encrypted; send the startup packet",
                    &mut out,
                );
                write_plain(&mut stream, &out).await?;
                return Ok(None);
            }
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

/// PostgreSQL 17's direct SSL: when the client's first byte opens a TLS handshake, the
/// handshake comes first and the startup packet follows inside it (src/backend/tcop/
/// backend_startup.c, ProcessSSLStartup). As there, the client must have negotiated ALPN
/// `postgresql`, so that a TLS client of another protocol, sent here by mistake, cannot pass
/// for a PostgreSQL one. `None`: the connection is refused (logged, with an event).
async fn direct_ssl(
    shared: &Shared,
    id: u64,
    peer: SocketAddr,
    tcp: TcpStream,
) -> std::io::Result<Option<ClientStream>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 || first[0] != TLS_HANDSHAKE {
        return Ok(Some(ClientStream::Plain(tcp)));
    }
    let Some(acceptor) = &shared.tls else {
        let mut tcp = tcp;
        let _ = tcp.write_all(&TLS_HANDSHAKE_FAILURE).await;
        let _ = tcp.shutdown().await;
        refuse_negotiation(
            shared,
            id,
            peer,
            "walwatch proxy: a client opened with a TLS handshake (direct SSL, libpq \
             sslnegotiation=direct), but the proxy has no TLS certificate: start it with \
             --tls-cert and --tls-key, or connect with sslnegotiation=postgres",
        )
        .await;
        return Ok(None);
    };
    let mut tls = acceptor.accept(tcp).await?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        let message = "walwatch proxy: received a direct SSL connection without ALPN protocol \
                       negotiation: a PostgreSQL client must offer the ALPN protocol \
                       \"postgresql\" (libpq 17 and later do)";
        // The channel is up, so the client can read why (PostgreSQL only logs it).
        let mut out = BytesMut::new();
        wire::error_response("08P01", message, &mut out);
        let _ = tls.write_all(&out).await;
        let _ = tls.shutdown().await;
        refuse_negotiation(shared, id, peer, message).await;
        return Ok(None);
    }
    Ok(Some(ClientStream::Tls(Box::new(tls))))
}

/// Logs and records a connection refused before its startup packet (no user or database yet).
async fn refuse_negotiation(shared: &Shared, id: u64, peer: SocketAddr, message: &str) {
    tracing::warn!("proxy: connection {id} from {peer} refused: {message}");
    shared
        .events
        .record_async(ProxyData::own_error(id, "08P01", message), true)
        .await;
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
/// server does since PostgreSQL 17: a client offering only other protocols fails the handshake
/// (rustls answers `no_application_protocol`, as the server's OpenSSL callback does); one
/// offering none passes it, and [`direct_ssl`] refuses it on the direct path.
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
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
