//! The replication connection: socket, startup with `replication=database`, authentication, and
//! simple queries / replication commands on it ("Streaming Replication Protocol", "Message Flow").
//!
//! Mainline tokio-postgres cannot open a replication connection, so this speaks the protocol
//! itself with `postgres-protocol`'s message codecs.

use crate::pg::quote::{quote_ident, quote_literal};
use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, SCRAM_SHA_256, SCRAM_SHA_256_PLUS, ScramSha256,
};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::fallible_iterator::FallibleIterator;
use tokio_util::codec::{Decoder, Encoder, Framed};

use super::error::{ErrorContext, PgError, ServerError};
use super::params::{ChannelBindingMode, ConnParams, Host, SslMode};
use super::stream::ReplStream;
use crate::event::Lsn;

/// Largest backend message accepted. The server never allocates more than 1 GB for a value, so a
/// larger length can only be a corrupt stream; refuse it instead of allocating.
const MAX_MESSAGE_LEN: usize = 1 << 30 | 1 << 20;

/// The session settings of the replication connection's startup packet that decoding depends on:
/// date/time output in ISO form (`DateStyle`, `IntervalStyle`), timestamptz in UTC, floats with
/// every digit that round-trips (`extra_float_digits=3`), and text in UTF-8.
const PINNED: [(&str, &str); 5] = [
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "3"),
    ("client_encoding", "UTF8"),
];

/// [`ReplConn::auth_mechanism`] when the server asked for no password (trust, or a client
/// certificate).
pub const NO_PASSWORD: &str = "no password exchange (trust or a client certificate)";

/// How much buffer a partly received message may reserve ahead of its bytes.
const RESERVE_AHEAD: usize = 1 << 20;

/// TCP, TCP with TLS, or unix-domain socket.
pub(crate) enum Socket {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// A backend message. CopyData, CopyBothResponse ('W', which `Message::parse` does not know),
/// ErrorResponse and NoticeResponse are framed here; the rest go through `Message::parse`.
pub(crate) enum Backend {
    /// CopyData payload: a zero-copy slice of the read buffer.
    CopyData(Bytes),
    CopyBothResponse,
    Error(Bytes),
    Notice(Bytes),
    Other(Message),
}

/// Frames backend messages (`Byte1 tag, Int32 length including itself, body`) and writes
/// already-encoded frontend messages.
#[derive(Default)]
pub(crate) struct PgCodec;

impl Decoder for PgCodec {
    type Item = Backend;
    type Error = PgError;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Backend>, PgError> {
        if buf.len() < 5 {
            return Ok(None);
        }
        let tag = buf[0];
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if !(4..=MAX_MESSAGE_LEN).contains(&len) {
            return Err(PgError::protocol(format!(
                "backend message '{}' has an impossible length {len}",
                tag.escape_ascii()
            )));
        }
        if buf.len() < len + 1 {
            // Room for what is missing, but never more than RESERVE_AHEAD at once: the length
            // is the server's claim, and a hostile or broken server may claim 1 GB and send
            // nothing. The buffer grows with the bytes that really arrive.
            buf.reserve((len + 1 - buf.len()).min(RESERVE_AHEAD));
            return Ok(None);
        }
        let own = |buf: &mut BytesMut| {
            let mut frame = buf.split_to(len + 1);
            frame.advance(5);
            frame.freeze()
        };
        Ok(Some(match tag {
            b'd' => Backend::CopyData(own(buf)),
            b'W' => {
                own(buf);
                Backend::CopyBothResponse
            }
            b'E' => Backend::Error(own(buf)),
            b'N' => Backend::Notice(own(buf)),
            _ => match Message::parse(buf) {
                Ok(Some(m)) => Backend::Other(m),
                Ok(None) => unreachable_frame(tag)?,
                Err(e) => {
                    return Err(PgError::protocol(format!(
                        "malformed backend message '{}': {e}",
                        tag.escape_ascii()
                    )));
                }
            },
        }))
    }
}

/// `Message::parse` saw a complete frame yet asked for more bytes: never expected; an error, not a
/// panic.
fn unreachable_frame(tag: u8) -> Result<Backend, PgError> {
    Err(PgError::protocol(format!(
        "could not parse complete backend message '{}'",
        tag.escape_ascii()
    )))
}

impl Encoder<Bytes> for PgCodec {
    type Error = PgError;
    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), PgError> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// Opens the socket `params` name: TCP (with the SSLRequest exchange and TLS handshake when
/// `want_tls`) or a unix-domain socket. Returns the server certificate's `tls-server-end-point`
/// hash when TLS is up. No startup packet is sent: the replication connection and the fault
/// proxy (which relays its client's own startup) both start from here.
pub(crate) async fn open_socket(
    params: &ConnParams,
    want_tls: bool,
) -> Result<(Socket, Option<Vec<u8>>), PgError> {
    let ctx = params.error_context();
    match &params.host {
        Host::Tcp(h) => {
            let s = TcpStream::connect((h.as_str(), params.port))
                .await
                .map_err(|source| PgError::Connect {
                    target: ctx.target.clone(),
                    source,
                })?;
            // Small messages, and latency matters (keepalive replies, proxied statements).
            s.set_nodelay(true)?;
            if want_tls {
                negotiate_tls(s, h, params).await
            } else {
                Ok((Socket::Tcp(s), None))
            }
        }
        Host::Unix(_) => {
            let path = params.socket_path().unwrap_or_default();
            let s = UnixStream::connect(&path)
                .await
                .map_err(|source| PgError::Connect {
                    target: ctx.target.clone(),
                    source,
                })?;
            Ok((Socket::Unix(s), None))
        }
    }
}

/// Asks for TLS (SSLRequest, 55.2.10 "SSL Session Encryption") and does the handshake
/// when the server answers `S`; `N` means the server has no TLS.
async fn negotiate_tls(
    mut s: TcpStream,
    host: &str,
    params: &ConnParams,
) -> Result<(Socket, Option<Vec<u8>>), PgError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Int32 length 8, Int32 80877103 (1234 << 16 | 5679).
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    match s.read_u8().await? {
        b'S' => {
            let config = super::tls::client_config(&params.tls)?;
            let name = super::tls::server_name(host)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, s)
                .await
                .map_err(|e| {
                    PgError::Tls(format!(
                        "the TLS handshake with {} failed: {e}{}",
                        params.target(),
                        match params.tls.mode {
                            SslMode::VerifyFull =>
                                " (sslmode=verify-full: the certificate must be signed by \
                                 sslrootcert's CA and name this host)",
                            SslMode::VerifyCa =>
                                " (sslmode=verify-ca: the certificate must be signed by \
                                 sslrootcert's CA)",
                            _ => "",
                        }
                    ))
                })?;
            let end_point = super::tls::peer_end_point(&tls);
            Ok((Socket::Tls(Box::new(tls)), end_point))
        }
        b'N' if matches!(params.tls.mode, SslMode::Allow | SslMode::Prefer) => {
            Ok((Socket::Tcp(s), None))
        }
        b'N' => Err(PgError::Tls(format!(
            "the server at {} does not accept TLS connections (it answered N to SSLRequest), \
             and sslmode={} needs TLS: turn on ssl in postgresql.conf, or use sslmode=prefer",
            params.target(),
            match params.tls.mode {
                SslMode::Require => "require",
                SslMode::VerifyCa => "verify-ca",
                _ => "verify-full",
            }
        ))),
        other => Err(PgError::Protocol(format!(
            "the server answered SSLRequest with `{}`, not S or N",
            other.escape_ascii()
        ))),
    }
}

/// What IDENTIFY_SYSTEM returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    /// The cluster's system identifier.
    pub systemid: u64,
    pub timeline: u32,
    /// The current WAL flush position. Informational only: never resume from it.
    pub xlogpos: Lsn,
    /// The database connected to (None on a physical connection).
    pub dbname: Option<String>,
}

/// The last result set of a simple query.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
    /// The CommandComplete tag of the last command (`SELECT 1`, `CREATE_REPLICATION_SLOT`).
    pub command_tag: Option<String>,
}

/// The read buffer of a connection (see `connect_inner`).
const READ_BUFFER: usize = 256 << 10;

/// A replication connection (`replication=database`), ready for commands.
pub struct ReplConn {
    pub(crate) framed: Framed<Socket, PgCodec>,
    pub(crate) ctx: ErrorContext,
    parameters: HashMap<String, String>,
    backend_key: Option<(i32, i32)>,
    server_version_num: u32,
    /// The `tls-server-end-point` channel binding data of a TLS connection (None: no TLS, or
    /// a certificate whose signature names no hash).
    end_point: Option<Vec<u8>>,
    tls: bool,
    /// The authentication exchange that succeeded: `SCRAM-SHA-256-PLUS`, `SCRAM-SHA-256`, `md5`,
    /// `password`, or [`NO_PASSWORD`] when the server asked for nothing.
    auth_mechanism: &'static str,
}

impl std::fmt::Debug for ReplConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplConn")
            .field("target", &self.ctx.target)
            .field("user", &self.ctx.user)
            .field("dbname", &self.ctx.dbname)
            .field("server_version_num", &self.server_version_num)
            .finish()
    }
}

impl ReplConn {
    /// Opens the socket, sends the startup packet, authenticates and waits for ReadyForQuery.
    /// `params.connect_timeout` bounds the whole sequence, as in libpq.
    pub async fn connect(params: &ConnParams) -> Result<ReplConn, PgError> {
        let fut = Self::connect_tls_as_asked(params);
        match params.connect_timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .map_err(|_| PgError::ConnectTimeout {
                    target: params.target(),
                    timeout: t,
                })?,
            None => fut.await,
        }
    }

    /// `sslmode` decides the attempts (libpq, 34.19 "SSL Support"): `allow` tries plain first
    /// and TLS when the server refuses a plain connection; `prefer` tries TLS first and plain
    /// when the server has none or the TLS handshake fails; the others make one attempt.
    async fn connect_tls_as_asked(params: &ConnParams) -> Result<ReplConn, PgError> {
        match params.tls.mode {
            SslMode::Allow => match Self::connect_inner(params, false).await {
                // 28000: no pg_hba.conf entry matches the plain connection ("no encryption").
                Err(e) if e.code() == Some("28000") => Self::connect_inner(params, true).await,
                other => other,
            },
            SslMode::Prefer => match Self::connect_inner(params, true).await {
                Err(PgError::Tls(why)) => {
                    tracing::debug!("TLS failed ({why}); sslmode=prefer tries without");
                    Self::connect_inner(params, false).await
                }
                other => other,
            },
            SslMode::Disable => Self::connect_inner(params, false).await,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                Self::connect_inner(params, true).await
            }
        }
    }

    async fn connect_inner(params: &ConnParams, want_tls: bool) -> Result<ReplConn, PgError> {
        let ctx = params.error_context();
        let (socket, end_point) = open_socket(params, want_tls).await?;
        let tls = matches!(socket, Socket::Tls(_));
        let mut conn = ReplConn {
            // Large reads: the read buffer is refilled this much at a time (tokio-util's
            // Framed reserves at least its original capacity when it must grow), so a busy
            // stream costs one read per many frames.
            framed: Framed::with_capacity(socket, PgCodec, READ_BUFFER),
            ctx,
            parameters: HashMap::new(),
            backend_key: None,
            server_version_num: 0,
            end_point,
            tls,
            auth_mechanism: NO_PASSWORD,
        };
        conn.startup(params).await?;
        Ok(conn)
    }

    async fn startup(&mut self, params: &ConnParams) -> Result<(), PgError> {
        // `replication=database`: a logical walsender bound to `database`, which also accepts SQL.
        // The other settings are pinned because every text value we parse (timestamps,
        // intervals, floats, and the bytes of any text at all) is parsed assuming exactly these;
        // a server or role default must not change how we read data.
        //
        // The user's `options` go along, and cannot undo the pins: the server applies the
        // switches in `options` first and the other startup parameters after them, both at the
        // same priority (PGC_S_CLIENT), so a pinned parameter overrides a `-c` of the same GUC
        // (src/backend/utils/init/postinit.c, process_startup_options(); checked against
        // PostgreSQL 15 by tests/pg_conn.rs). Role and database defaults (ALTER ROLE ... SET)
        // rank lower still. `check_pinned` below verifies what the server reports.
        let mut startup: Vec<(&str, &str)> = vec![
            ("user", &params.user),
            ("database", &params.dbname),
            ("replication", "database"),
            ("application_name", &params.application_name),
        ];
        if let Some(options) = &params.options {
            startup.push(("options", options));
        }
        startup.extend_from_slice(&PINNED);
        let mut buf = BytesMut::new();
        frontend::startup_message(startup.iter().copied(), &mut buf)?;
        self.send(buf).await?;
        self.authenticate(params).await?;

        // After AuthenticationOk: ParameterStatus*, BackendKeyData, then ReadyForQuery
        // ("Message Flow", "Start-up").
        loop {
            match self.recv().await? {
                Backend::Other(Message::ParameterStatus(body)) => {
                    let name = body.name().map_err(proto)?.to_string();
                    let value = body.value().map_err(proto)?.to_string();
                    self.parameters.insert(name, value);
                }
                Backend::Other(Message::BackendKeyData(body)) => {
                    self.backend_key = Some((body.process_id(), body.secret_key()));
                }
                Backend::Other(Message::ReadyForQuery(_)) => break,
                Backend::Error(body) => return Err(self.server_error(&body)),
                Backend::Notice(body) => self.notice(&body),
                other => return Err(unexpected(&other, "startup")),
            }
        }
        self.server_version_num = self
            .parameters
            .get("server_version_num")
            .and_then(|v| v.parse().ok())
            .or_else(|| {
                self.parameters
                    .get("server_version")
                    .and_then(|v| parse_server_version(v))
            })
            .ok_or_else(|| PgError::protocol("server did not report a parsable server_version"))?;
        self.check_pinned(params)
    }

    /// Refuses a session whose reported settings are not the pinned ones. The server reports
    /// DateStyle, IntervalStyle, TimeZone and client_encoding in ParameterStatus at startup
    /// (GUC_REPORT; "Asynchronous Operations" in the protocol chapter lists them);
    /// extra_float_digits is not reported. A setting not reported (an old server, a proxy) is
    /// taken as pinned.
    fn check_pinned(&self, params: &ConnParams) -> Result<(), PgError> {
        for (name, want) in PINNED {
            let Some(got) = self.parameters.get(name) else {
                continue;
            };
            // DateStyle is reported with its field order ("ISO, MDY"); ISO output does not
            // depend on the order, so only the output style is checked.
            let ok = match name {
                "DateStyle" => got.split(',').next().map(str::trim) == Some(want),
                _ => got == want,
            };
            if !ok {
                let hint = if params.options.is_some() {
                    " (check -c settings in `options` / PGOPTIONS)"
                } else {
                    ""
                };
                return Err(PgError::protocol(format!(
                    "the server runs this session with {name} = `{got}`, but walwatch asked for                      `{want}` in the startup packet and decodes values assuming it{hint}"
                )));
            }
        }
        Ok(())
    }

    async fn authenticate(&mut self, params: &ConnParams) -> Result<(), PgError> {
        let need_password = || {
            params.password().ok_or_else(|| {
                PgError::Auth(format!(
                    "the server requires a password for role \"{}\" but none was given: set \
                     PGPASSWORD, put it in the DSN, or add a line to ~/.pgpass \
                     (hostname:port:database:username:password, chmod 0600)",
                    params.user
                ))
            })
        };
        loop {
            match self.recv().await? {
                Backend::Other(Message::AuthenticationOk) => {
                    // channel_binding=require: the server must have proved it holds the
                    // certificate's session, which only SCRAM-SHA-256-PLUS does (libpq refuses
                    // trust, password and md5 here too).
                    if params.tls.channel_binding == ChannelBindingMode::Require
                        && self.auth_mechanism != SCRAM_SHA_256_PLUS
                    {
                        return Err(PgError::Auth(format!(
                            "channel_binding=require, but the server authenticated role \"{}\" \
                             with {} instead of SCRAM-SHA-256-PLUS: nothing proves it is the \
                             server the TLS certificate names",
                            params.user, self.auth_mechanism
                        )));
                    }
                    return Ok(());
                }
                Backend::Other(Message::AuthenticationCleartextPassword) => {
                    self.auth_mechanism = "password";
                    let pw = need_password()?;
                    let mut buf = BytesMut::new();
                    frontend::password_message(pw.as_bytes(), &mut buf)?;
                    self.send(buf).await?;
                }
                Backend::Other(Message::AuthenticationMd5Password(body)) => {
                    self.auth_mechanism = "md5";
                    let pw = need_password()?;
                    let hash = md5_hash(params.user.as_bytes(), pw.as_bytes(), body.salt());
                    let mut buf = BytesMut::new();
                    frontend::password_message(hash.as_bytes(), &mut buf)?;
                    self.send(buf).await?;
                }
                Backend::Other(Message::AuthenticationSasl(body)) => {
                    let mut mechanisms = Vec::new();
                    let mut it = body.mechanisms();
                    while let Some(m) = it.next().map_err(proto)? {
                        mechanisms.push(m.to_string());
                    }
                    let pw = need_password()?;
                    self.scram(pw, &mechanisms, params.tls.channel_binding)
                        .await?;
                }
                Backend::Error(body) => return Err(self.server_error(&body)),
                Backend::Notice(body) => self.notice(&body),
                Backend::Other(Message::AuthenticationGss)
                | Backend::Other(Message::AuthenticationGssContinue(_))
                | Backend::Other(Message::AuthenticationSspi) => {
                    return Err(unsupported_auth("GSSAPI/SSPI"));
                }
                Backend::Other(Message::AuthenticationKerberosV5) => {
                    return Err(unsupported_auth("Kerberos V5"));
                }
                Backend::Other(Message::AuthenticationScmCredential) => {
                    return Err(unsupported_auth("SCM credential"));
                }
                other => return Err(unexpected(&other, "authentication")),
            }
        }
    }

    /// SCRAM-SHA-256, with `tls-server-end-point` channel binding (SCRAM-SHA-256-PLUS) over TLS
    /// when the server offers it and `channel_binding` allows ("SASL Authentication", 55.3.1).
    /// The GS2 header tells the server what the client could do, so a man in the middle that
    /// strips the PLUS offer is caught by the server ("y": client supports binding, thought the
    /// server did not).
    async fn scram(
        &mut self,
        password: &str,
        mechanisms: &[String],
        binding: ChannelBindingMode,
    ) -> Result<(), PgError> {
        let offered = |m: &str| mechanisms.iter().any(|x| x == m);
        let (mechanism, channel) = match (binding, &self.end_point) {
            (ChannelBindingMode::Disable, _) => (SCRAM_SHA_256, ChannelBinding::unsupported()),
            (_, Some(hash)) if offered(SCRAM_SHA_256_PLUS) => (
                SCRAM_SHA_256_PLUS,
                ChannelBinding::tls_server_end_point(hash.clone()),
            ),
            (ChannelBindingMode::Require, _) => {
                let why = if !self.tls {
                    "the connection is not TLS (check sslmode, and that the server has ssl = on)"
                } else if self.end_point.is_none() {
                    "the server's certificate has no hash to bind to (an Ed25519 certificate)"
                } else {
                    "the server does not offer SCRAM-SHA-256-PLUS"
                };
                return Err(PgError::Auth(format!(
                    "channel_binding=require, but channel binding is not possible: {why}; the \
                     server offers SASL mechanisms [{}]",
                    mechanisms.join(", ")
                )));
            }
            (ChannelBindingMode::Prefer, Some(_)) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
            (ChannelBindingMode::Prefer, None) => (SCRAM_SHA_256, ChannelBinding::unsupported()),
        };
        if !offered(mechanism) {
            let hint = if offered(SCRAM_SHA_256_PLUS) && !self.tls {
                ": SCRAM-SHA-256-PLUS binds to a TLS session, and this connection is not TLS \
                 (use sslmode=require or stricter, with ssl = on on the server)"
            } else {
                ""
            };
            return Err(PgError::Auth(format!(
                "the server offers SASL mechanisms [{}], and walwatch can do {mechanism} \
                 here{hint}",
                mechanisms.join(", ")
            )));
        }
        self.auth_mechanism = mechanism;
        let mut scram = ScramSha256::new(password.as_bytes(), channel);
        let mut buf = BytesMut::new();
        frontend::sasl_initial_response(mechanism, scram.message(), &mut buf)?;
        self.send(buf).await?;
        loop {
            match self.recv().await? {
                Backend::Other(Message::AuthenticationSaslContinue(body)) => {
                    scram
                        .update(body.data())
                        .map_err(|e| PgError::Auth(format!("SCRAM exchange failed: {e}")))?;
                    let mut buf = BytesMut::new();
                    frontend::sasl_response(scram.message(), &mut buf)?;
                    self.send(buf).await?;
                }
                Backend::Other(Message::AuthenticationSaslFinal(body)) => {
                    scram.finish(body.data()).map_err(|e| {
                        PgError::Auth(format!(
                            "the server's SCRAM signature did not verify ({e}): it may not be \
                             the server you meant"
                        ))
                    })?;
                    return Ok(());
                }
                Backend::Error(body) => return Err(self.server_error(&body)),
                Backend::Notice(body) => self.notice(&body),
                other => return Err(unexpected(&other, "SCRAM authentication")),
            }
        }
    }

    /// Runs one simple query (possibly several `;`-separated statements) and returns the rows of
    /// the last result set, columns by position, values as text (NULL = None).
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, PgError> {
        Ok(self.simple_query_result(sql).await?.rows)
    }

    /// Like [`simple_query`](Self::simple_query), keeping column names and the command tag.
    pub async fn simple_query_result(&mut self, sql: &str) -> Result<QueryResult, PgError> {
        let mut buf = BytesMut::new();
        frontend::query(sql, &mut buf)?;
        self.send(buf).await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            match self.recv().await? {
                Backend::Other(Message::RowDescription(body)) => {
                    result.columns.clear();
                    result.rows.clear();
                    let mut fields = body.fields();
                    while let Some(f) = fields.next().map_err(proto)? {
                        result.columns.push(f.name().to_string());
                    }
                }
                Backend::Other(Message::DataRow(body)) => {
                    let mut row = Vec::with_capacity(result.columns.len());
                    let mut ranges = body.ranges();
                    while let Some(r) = ranges.next().map_err(proto)? {
                        row.push(match r {
                            None => None,
                            Some(r) => Some(
                                std::str::from_utf8(&body.buffer()[r])
                                    .map_err(|_| PgError::protocol("a text value is not UTF-8"))?
                                    .to_string(),
                            ),
                        });
                    }
                    result.rows.push(row);
                }
                Backend::Other(Message::CommandComplete(body)) => {
                    result.command_tag = Some(body.tag().map_err(proto)?.to_string());
                }
                Backend::Other(Message::EmptyQueryResponse) => {}
                Backend::Other(Message::ReadyForQuery(_)) => break,
                Backend::Error(body) => {
                    // The server skips the rest and sends ReadyForQuery; keep the first error.
                    let e = self.server_error(&body);
                    error.get_or_insert(e);
                }
                Backend::Notice(body) => self.notice(&body),
                Backend::Other(Message::ParameterStatus(body)) => {
                    let name = body.name().map_err(proto)?.to_string();
                    let value = body.value().map_err(proto)?.to_string();
                    self.parameters.insert(name, value);
                }
                Backend::CopyBothResponse
                | Backend::Other(Message::CopyOutResponse(_))
                | Backend::Other(Message::CopyInResponse(_)) => {
                    return Err(PgError::protocol(
                        "the query started a COPY; use start_replication for START_REPLICATION",
                    ));
                }
                other => return Err(unexpected(&other, "a simple query")),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(result),
        }
    }

    /// IDENTIFY_SYSTEM: system identifier, timeline, current WAL flush position, database.
    pub async fn identify_system(&mut self) -> Result<SystemInfo, PgError> {
        let r = self.simple_query_result("IDENTIFY_SYSTEM").await?;
        let row = match r.rows.as_slice() {
            [row] if row.len() >= 4 => row,
            _ => {
                return Err(PgError::protocol(format!(
                    "IDENTIFY_SYSTEM returned {} rows, expected one row of 4 columns",
                    r.rows.len()
                )));
            }
        };
        let field = |i: usize| {
            row[i]
                .clone()
                .ok_or_else(|| PgError::protocol(format!("IDENTIFY_SYSTEM column {i} is NULL")))
        };
        let systemid = field(0)?;
        let timeline = field(1)?;
        let xlogpos = field(2)?;
        Ok(SystemInfo {
            systemid: systemid.parse().map_err(|_| {
                PgError::protocol(format!(
                    "IDENTIFY_SYSTEM systemid `{systemid}` is not a number"
                ))
            })?,
            timeline: timeline.parse().map_err(|_| {
                PgError::protocol(format!(
                    "IDENTIFY_SYSTEM timeline `{timeline}` is not a number"
                ))
            })?,
            xlogpos: xlogpos.parse().map_err(|_| {
                PgError::protocol(format!("IDENTIFY_SYSTEM xlogpos `{xlogpos}` is not an LSN"))
            })?,
            dbname: row[3].clone(),
        })
    }

    /// Sends `START_REPLICATION SLOT "slot" LOGICAL X/Y ("k" 'v', ...)` and waits for the
    /// CopyBothResponse. `start` = [`Lsn::ZERO`] resumes where the slot is confirmed.
    pub async fn start_replication(
        mut self,
        slot: &str,
        start: Lsn,
        options: &[(String, String)],
    ) -> Result<ReplStream, PgError> {
        self.ctx.slot = Some(slot.to_string());
        let sql = start_replication_sql(slot, start, options);
        tracing::debug!(%sql, "starting replication");
        let mut buf = BytesMut::new();
        frontend::query(&sql, &mut buf)?;
        self.send(buf).await?;
        let mut error = None;
        loop {
            match self.recv().await? {
                Backend::CopyBothResponse if error.is_none() => {
                    return Ok(ReplStream::new(self));
                }
                Backend::Error(body) => {
                    let e = self.server_error(&body);
                    error.get_or_insert(e);
                }
                Backend::Notice(body) => self.notice(&body),
                Backend::Other(Message::ParameterStatus(_)) => {}
                Backend::Other(Message::ReadyForQuery(_)) => {
                    return Err(error.unwrap_or_else(|| {
                        PgError::protocol("START_REPLICATION ended without starting a copy")
                    }));
                }
                other => return Err(unexpected(&other, "START_REPLICATION")),
            }
        }
    }

    /// Ends the session politely (Terminate) and closes the socket.
    pub async fn close(mut self) -> Result<(), PgError> {
        let mut buf = BytesMut::new();
        frontend::terminate(&mut buf);
        self.send(buf).await?;
        let _ =
            futures_util::future::poll_fn(|cx| Pin::new(self.framed.get_mut()).poll_shutdown(cx))
                .await;
        Ok(())
    }

    /// `server_version_num` as reported, or derived from `server_version` (15.20 → 150020).
    /// The authentication exchange that succeeded (`SCRAM-SHA-256-PLUS`, `SCRAM-SHA-256`,
    /// `md5`, `password`, or [`NO_PASSWORD`]).
    pub fn auth_mechanism(&self) -> &'static str {
        self.auth_mechanism
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// A ParameterStatus value reported by the server (`server_version`, `TimeZone`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// The backend's process id and cancel key (BackendKeyData).
    pub fn backend_key(&self) -> Option<(i32, i32)> {
        self.backend_key
    }

    /// Connection facts for error messages (no password).
    pub fn error_context(&self) -> &ErrorContext {
        &self.ctx
    }

    pub(crate) async fn send(&mut self, buf: BytesMut) -> Result<(), PgError> {
        self.framed.send(buf.freeze()).await
    }

    /// Next backend message; a closed socket is a lost connection (transient).
    pub(crate) async fn recv(&mut self) -> Result<Backend, PgError> {
        match self.framed.next().await {
            Some(r) => r,
            None => Err(PgError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            ))),
        }
    }

    pub(crate) fn server_error(&self, body: &[u8]) -> PgError {
        match ServerError::parse(body, &self.ctx) {
            Ok(e) => e.into(),
            Err(e) => e,
        }
    }

    pub(crate) fn notice(&self, body: &[u8]) {
        match ServerError::parse(body, &self.ctx) {
            Ok(n) => tracing::warn!("server {}: {}", n.severity, n.message),
            Err(e) => tracing::warn!("unparsable server notice: {e}"),
        }
    }
}

fn proto(e: io::Error) -> PgError {
    PgError::protocol(format!("malformed backend message: {e}"))
}

fn unsupported_auth(method: &str) -> PgError {
    PgError::Auth(format!(
        "the server asks for {method} authentication, which walwatch does not support: use \
         scram-sha-256, md5, password or trust for this role in pg_hba.conf"
    ))
}

pub(crate) fn unexpected(msg: &Backend, during: &str) -> PgError {
    let what = match msg {
        Backend::CopyData(_) => "CopyData".to_string(),
        Backend::CopyBothResponse => "CopyBothResponse".to_string(),
        Backend::Error(_) => "ErrorResponse".to_string(),
        Backend::Notice(_) => "NoticeResponse".to_string(),
        Backend::Other(m) => message_name(m).to_string(),
    };
    PgError::protocol(format!("unexpected {what} during {during}"))
}

fn message_name(m: &Message) -> &'static str {
    match m {
        Message::AuthenticationOk => "AuthenticationOk",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::NotificationResponse(_) => "NotificationResponse",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "message",
    }
}

/// `15.20 (Debian 15.20-1.pgdg120+1)` → 150020; `9.6.24` → 90624; `17devel` → 170000.
pub fn parse_server_version(v: &str) -> Option<u32> {
    let num: String = v
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = num
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next().and_then(Result::ok).unwrap_or(0);
    if major >= 10 {
        Some(major * 10000 + minor)
    } else {
        let patch = parts.next().and_then(Result::ok).unwrap_or(0);
        Some(major * 10000 + minor * 100 + patch)
    }
}

/// The START_REPLICATION command for a logical slot.
pub fn start_replication_sql(slot: &str, start: Lsn, options: &[(String, String)]) -> String {
    let mut sql = format!(
        "START_REPLICATION SLOT {} LOGICAL {start}",
        quote_ident(slot)
    );
    if !options.is_empty() {
        let opts: Vec<String> = options
            .iter()
            .map(|(k, v)| format!("{} {}", quote_ident(k), quote_literal(v)))
            .collect();
        sql.push_str(&format!(" ({})", opts.join(", ")));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::stream::ReplMessage;

    #[test]
    fn versions() {
        assert_eq!(
            parse_server_version("15.20 (Debian 15.20-1.pgdg120+1)"),
            Some(150020)
        );
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("17devel"), Some(170000));
        assert_eq!(parse_server_version("16beta1"), Some(160000));
        assert_eq!(parse_server_version("x"), None);
    }

    #[test]
    fn start_replication_quoting() {
        let sql = start_replication_sql(
            "my\"slot",
            Lsn(0x16_B374_D848),
            &[
                ("proto_version".into(), "3".into()),
                ("publication_names".into(), "\"p\",'q'".into()),
            ],
        );
        assert_eq!(
            sql,
            "START_REPLICATION SLOT \"my\"\"slot\" LOGICAL 16/B374D848 \
             (\"proto_version\" '3', \"publication_names\" '\"p\",''q''')"
        );
        assert_eq!(
            start_replication_sql("s", Lsn::ZERO, &[]),
            "START_REPLICATION SLOT \"s\" LOGICAL 0/0"
        );
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn codec_frames_and_waits() {
        let mut bytes = frame(b'd', b"wxyz");
        bytes.extend(frame(b'W', &[0, 0, 0]));
        bytes.extend(frame(b'Z', b"I"));
        let mut codec = PgCodec;
        // Byte-by-byte arrival: nothing until a frame is complete, and no bytes lost.
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for b in bytes {
            buf.extend_from_slice(&[b]);
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                out.push(m);
            }
        }
        assert_eq!(out.len(), 3);
        assert!(matches!(&out[0], Backend::CopyData(d) if &d[..] == b"wxyz"));
        assert!(matches!(out[1], Backend::CopyBothResponse));
        assert!(matches!(out[2], Backend::Other(Message::ReadyForQuery(_))));
        assert!(buf.is_empty());
    }

    #[test]
    fn a_claimed_length_is_not_allocated_before_its_bytes_arrive() {
        // CopyData claiming just under 1 GB, of which 10 bytes came.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"d");
        buf.extend_from_slice(&((1u32 << 30) - 1).to_be_bytes());
        buf.extend_from_slice(&[0; 10]);
        assert!(PgCodec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= 2 * RESERVE_AHEAD,
            "reserved {} bytes for a claim",
            buf.capacity()
        );
        // More than 1 GB is no message PostgreSQL can send: an error, not a wait.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(b"d");
        buf.extend_from_slice(&(u32::MAX).to_be_bytes());
        let Err(e) = PgCodec.decode(&mut buf) else {
            panic!("a 4 GB claim was accepted");
        };
        assert!(e.to_string().contains("impossible length"), "{e}");
    }

    #[test]
    fn codec_rejects_garbage() {
        let mut codec = PgCodec;
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 2][..]);
        assert!(matches!(codec.decode(&mut buf), Err(PgError::Protocol(_))));
        let mut buf = BytesMut::from(&[b'd', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(codec.decode(&mut buf), Err(PgError::Protocol(_))));
        // Unknown tag: an error, not a panic.
        let mut buf = BytesMut::from(&frame(b'?', b"")[..]);
        assert!(matches!(codec.decode(&mut buf), Err(PgError::Protocol(_))));
        // A ReadyForQuery with a trailing byte.
        let mut buf = BytesMut::from(&frame(b'Z', b"Ix")[..]);
        assert!(matches!(codec.decode(&mut buf), Err(PgError::Protocol(_))));
    }

    /// A scripted server on a local TCP port, for what a real server will not readily do.
    mod fake {
        use super::*;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpListener;

        pub(super) fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
            super::frame(tag, body)
        }

        pub(super) fn auth(code: i32, extra: &[u8]) -> Vec<u8> {
            let mut b = code.to_be_bytes().to_vec();
            b.extend_from_slice(extra);
            msg(b'R', &b)
        }

        /// AuthenticationOk, server_version, BackendKeyData, ReadyForQuery.
        pub(super) fn ready() -> Vec<u8> {
            let mut v = auth(0, b"");
            v.extend(msg(b'S', b"server_version\x0015.4 (Debian)\x00"));
            v.extend(msg(b'K', &[0, 0, 0, 7, 0, 0, 0, 9]));
            v.extend(msg(b'Z', b"I"));
            v
        }

        pub(super) async fn read_startup(s: &mut tokio::net::TcpStream) -> Vec<u8> {
            let len = s.read_u32().await.unwrap() as usize;
            let mut b = vec![0; len - 4];
            s.read_exact(&mut b).await.unwrap();
            b
        }

        pub(super) async fn read_msg(s: &mut tokio::net::TcpStream) -> (u8, Vec<u8>) {
            let tag = s.read_u8().await.unwrap();
            let len = s.read_u32().await.unwrap() as usize;
            let mut b = vec![0; len - 4];
            s.read_exact(&mut b).await.unwrap();
            (tag, b)
        }

        /// Starts a server running `script` on the first connection; returns client params.
        pub(super) async fn serve<F, Fut>(dsn_extra: &str, script: F) -> ConnParams
        where
            F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
            Fut: std::future::Future<Output = ()> + Send,
        {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = l.local_addr().unwrap().port();
            tokio::spawn(async move {
                let (s, _) = l.accept().await.unwrap();
                script(s).await;
            });
            // The scripts speak plain protocol unless they ask for TLS negotiation themselves.
            let tls = if dsn_extra.contains("sslmode") {
                ""
            } else {
                "sslmode=disable"
            };
            let dsn = format!("host=127.0.0.1 port={port} user=u dbname=d {tls} {dsn_extra}");
            ConnParams::resolve(Some(&dsn), &|_| None, None).unwrap()
        }

        /// Reads the SSLRequest, answers N (no TLS here), then reads the startup packet.
        pub(super) async fn refuse_tls(s: &mut tokio::net::TcpStream) {
            let mut first = [0u8; 8];
            s.read_exact(&mut first).await.unwrap();
            write(s, b"N").await;
            read_startup(s).await;
        }

        pub(super) async fn write(s: &mut tokio::net::TcpStream, b: &[u8]) {
            s.write_all(b).await.unwrap();
        }
    }

    #[tokio::test]
    async fn startup_packet_and_version() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let p = fake::serve("application_name=app", |mut s| async move {
            let startup = fake::read_startup(&mut s).await;
            fake::write(&mut s, &fake::ready()).await;
            tx.send(startup).unwrap();
            let _ = fake::read_msg(&mut s).await; // Terminate
        })
        .await;
        let conn = ReplConn::connect(&p).await.unwrap();
        assert_eq!(conn.server_version_num(), 150004);
        assert_eq!(conn.backend_key(), Some((7, 9)));
        let startup = rx.await.unwrap();
        // Protocol 3.0, then name\0value\0 pairs, then \0.
        assert_eq!(&startup[..4], &[0, 3, 0, 0]);
        let text = String::from_utf8(startup[4..].to_vec()).unwrap();
        for pair in [
            "user\0u\0",
            "database\0d\0",
            "replication\0database\0",
            "application_name\0app\0",
            "DateStyle\0ISO\0",
            "IntervalStyle\0postgres\0",
            "TimeZone\0UTC\0",
            "extra_float_digits\x003\0",
            "client_encoding\0UTF8\0",
        ] {
            assert!(text.contains(pair), "{pair:?} missing in {text:?}");
        }
        conn.close().await.unwrap();
    }

    #[tokio::test]
    async fn options_go_in_the_startup_packet_before_the_pins() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let p = fake::serve(
            "options='-c search_path=app -c DateStyle=German'",
            |mut s| async move {
                let startup = fake::read_startup(&mut s).await;
                fake::write(&mut s, &fake::ready()).await;
                tx.send(startup).unwrap();
                let _ = fake::read_msg(&mut s).await; // Terminate
            },
        )
        .await;
        let conn = ReplConn::connect(&p).await.unwrap();
        let startup = rx.await.unwrap();
        let text = String::from_utf8(startup[4..].to_vec()).unwrap();
        let options = text
            .find("options\0-c search_path=app -c DateStyle=German\0")
            .unwrap_or_else(|| panic!("no options in {text:?}"));
        let pin = text.find("DateStyle\0ISO\0").expect("DateStyle pinned");
        assert!(options < pin, "{text:?}");
        conn.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_session_without_the_pinned_settings_is_refused() {
        for (reported, ok) in [
            (&b"DateStyle\0ISO, DMY\0"[..], true),
            (b"DateStyle\0German, DMY\0", false),
            (b"TimeZone\0Asia/Tokyo\0", false),
            (b"IntervalStyle\0sql_standard\0", false),
            (b"client_encoding\0LATIN1\0", false),
        ] {
            let p = fake::serve("options=-cfoo=bar", move |mut s| async move {
                fake::read_startup(&mut s).await;
                // AuthenticationOk, the setting, then the rest of ready().
                let ready = fake::ready();
                let ok_len = fake::auth(0, b"").len();
                let mut reply = ready[..ok_len].to_vec();
                reply.extend(fake::msg(b'S', reported));
                reply.extend_from_slice(&ready[ok_len..]);
                fake::write(&mut s, &reply).await;
                // Terminate, or the client hanging up.
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut [0u8; 16]).await;
            })
            .await;
            let shown = String::from_utf8_lossy(reported).replace('\0', " ");
            match ReplConn::connect(&p).await {
                Ok(conn) if ok => conn.close().await.unwrap(),
                Ok(_) => panic!("accepted a session reporting {shown}"),
                Err(e) if ok => panic!("refused a session reporting {shown}: {e}"),
                Err(e) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("walwatch asked for") && msg.contains("PGOPTIONS"),
                        "{shown}: {msg}"
                    );
                }
            }
        }
    }

    /// The first 8 bytes a client sends, and what it does after the server answers `answer`.
    async fn ssl_request_exchange(sslmode: &str, answer: u8) -> (Vec<u8>, Result<(), String>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let p = fake::serve(&format!("sslmode={sslmode}"), move |mut s| async move {
            use tokio::io::AsyncReadExt;
            let mut first = vec![0; 8];
            s.read_exact(&mut first).await.unwrap();
            let is_ssl_request = first == [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
            let _ = tx.send(first);
            if is_ssl_request {
                fake::write(&mut s, &[answer]).await;
                if answer == b'N' {
                    fake::read_startup(&mut s).await;
                    fake::write(&mut s, &fake::ready()).await;
                }
            } else {
                // The rest of a startup packet.
                let mut rest = vec![0; 1024];
                let _ = s.read(&mut rest).await;
                fake::write(&mut s, &fake::ready()).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        })
        .await;
        let res = ReplConn::connect(&p)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        (rx.await.unwrap(), res)
    }

    #[tokio::test]
    async fn sslmode_decides_whether_tls_is_asked_and_needed() {
        const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
        // disable never sends SSLRequest: the first bytes are the startup packet (v3.0).
        let (first, res) = ssl_request_exchange("disable", b'N').await;
        assert_eq!(&first[4..8], &[0, 3, 0, 0], "{first:?}");
        assert_eq!(res, Ok(()));
        // prefer asks, and goes on in plain text when the server has no TLS.
        let (first, res) = ssl_request_exchange("prefer", b'N').await;
        assert_eq!(first, SSL_REQUEST);
        assert_eq!(res, Ok(()));
        // require asks, and stops when the server has no TLS.
        let (first, res) = ssl_request_exchange("require", b'N').await;
        assert_eq!(first, SSL_REQUEST);
        let e = res.unwrap_err();
        assert!(
            e.contains("does not accept TLS") && e.contains("sslmode=require"),
            "{e}"
        );
        // An answer that is neither S nor N is a protocol error.
        let (_, res) = ssl_request_exchange("require", b'E').await;
        assert!(res.unwrap_err().contains("not S or N"));
    }

    #[tokio::test]
    async fn scram_plus_only_is_a_clear_error() {
        let p = fake::serve("password=pw", |mut s| async move {
            fake::read_startup(&mut s).await;
            fake::write(&mut s, &fake::auth(10, b"SCRAM-SHA-256-PLUS\0\0")).await;
            let _ = fake::read_msg(&mut s).await;
        })
        .await;
        let e = ReplConn::connect(&p).await.unwrap_err();
        let s = e.to_string();
        assert!(matches!(e, PgError::Auth(_)), "{s}");
        assert!(s.contains("SCRAM-SHA-256-PLUS") && s.contains("TLS"), "{s}");
    }

    #[tokio::test]
    async fn channel_binding_required_without_tls_is_a_clear_error() {
        // Offered SCRAM-SHA-256 on a plain connection.
        let p = fake::serve(
            "password=pw sslmode=prefer channel_binding=require",
            |mut s| async move {
                fake::refuse_tls(&mut s).await;
                fake::write(&mut s, &fake::auth(10, b"SCRAM-SHA-256\0\0")).await;
                let _ = fake::read_msg(&mut s).await;
            },
        )
        .await;
        let e = ReplConn::connect(&p).await.unwrap_err().to_string();
        assert!(
            e.contains("channel_binding=require") && e.contains("not TLS"),
            "{e}"
        );
        // Trust (no password exchange at all) does not satisfy it either.
        let p = fake::serve(
            "sslmode=prefer channel_binding=require",
            |mut s| async move {
                fake::refuse_tls(&mut s).await;
                fake::write(&mut s, &fake::ready()).await;
                let _ = fake::read_msg(&mut s).await;
            },
        )
        .await;
        let e = ReplConn::connect(&p).await.unwrap_err().to_string();
        assert!(
            e.contains("with no password exchange (trust or a client certificate) instead of SCRAM-SHA-256-PLUS"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn unsupported_method_and_missing_password() {
        let p = fake::serve("password=pw", |mut s| async move {
            fake::read_startup(&mut s).await;
            fake::write(&mut s, &fake::auth(7, b"")).await;
            let _ = fake::read_msg(&mut s).await;
        })
        .await;
        let e = ReplConn::connect(&p).await.unwrap_err();
        assert!(e.to_string().contains("GSSAPI"), "{e}");

        let p = fake::serve("", |mut s| async move {
            fake::read_startup(&mut s).await;
            fake::write(&mut s, &fake::auth(3, b"")).await;
            let _ = fake::read_msg(&mut s).await;
        })
        .await;
        let e = ReplConn::connect(&p).await.unwrap_err();
        let s = e.to_string();
        assert!(s.contains("PGPASSWORD") && s.contains("~/.pgpass"), "{s}");
        assert!(!e.is_transient());
    }

    fn xlog(i: u64) -> Vec<u8> {
        let mut w = vec![b'w'];
        w.extend_from_slice(&i.to_be_bytes());
        w.extend_from_slice(&(i + 1).to_be_bytes());
        w.extend_from_slice(&0i64.to_be_bytes());
        w.extend_from_slice(format!("I{i}").as_bytes());
        frame(b'd', &w)
    }

    /// Frames dribbled one byte at a time while the client polls `next()` inside `select!`
    /// against a timer that usually wins: every message arrives whole and in order.
    #[tokio::test]
    async fn next_is_cancel_safe_and_finish_drains() {
        const N: u64 = 40;
        let p = fake::serve("", |mut s| async move {
            fake::read_startup(&mut s).await;
            fake::write(&mut s, &fake::ready()).await;
            let (tag, _) = fake::read_msg(&mut s).await;
            assert_eq!(tag, b'Q');
            fake::write(&mut s, &frame(b'W', &[0, 0, 0])).await;
            let mut all = Vec::new();
            for i in 0..N {
                all.extend(xlog(i));
            }
            for chunk in all.chunks(3) {
                fake::write(&mut s, chunk).await;
                tokio::time::sleep(std::time::Duration::from_micros(200)).await;
            }
            // Wait for the client's CopyDone, then end the command.
            loop {
                let (tag, _) = fake::read_msg(&mut s).await;
                if tag == b'c' {
                    break;
                }
            }
            fake::write(&mut s, &xlog(99)).await; // still in flight: drained by finish()
            fake::write(&mut s, &frame(b'c', b"")).await;
            fake::write(&mut s, &frame(b'C', b"START_STREAMING\0")).await;
            fake::write(&mut s, &frame(b'Z', b"I")).await;
            let (tag, _) = fake::read_msg(&mut s).await;
            assert_eq!(tag, b'X');
        })
        .await;
        let conn = ReplConn::connect(&p).await.unwrap();
        let mut stream = conn.start_replication("s", Lsn::ZERO, &[]).await.unwrap();
        let mut got = Vec::new();
        let mut cancelled = 0;
        while got.len() < N as usize {
            tokio::select! {
                m = stream.next() => got.push(m.unwrap().unwrap()),
                _ = tokio::task::yield_now() => cancelled += 1,
            }
        }
        assert!(
            cancelled > 0,
            "the timer never won; the test proves nothing"
        );
        for (i, m) in got.iter().enumerate() {
            let ReplMessage::XLogData {
                wal_start, data, ..
            } = m
            else {
                panic!("{m:?}");
            };
            assert_eq!(wal_start.0, i as u64);
            assert_eq!(&data[..], format!("I{i}").as_bytes());
        }
        stream
            .send_status(Lsn(1), Lsn(1), Lsn(1), false)
            .await
            .unwrap();
        let conn = stream.finish().await.unwrap();
        conn.close().await.unwrap();
    }

    /// What a scripted server sends after startup and the client's START_REPLICATION; the
    /// stream's first outcome, as text (`Ok(..)` or the error).
    async fn hostile(reply: Vec<u8>) -> String {
        let p = fake::serve("", move |mut s| async move {
            fake::read_startup(&mut s).await;
            fake::write(&mut s, &fake::ready()).await;
            fake::read_msg(&mut s).await;
            fake::write(&mut s, &reply).await;
            // Then the connection closes (the task ends).
        })
        .await;
        let conn = ReplConn::connect(&p).await.unwrap();
        let stream = conn.start_replication("s", Lsn::ZERO, &[]).await;
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => return format!("start: {e}"),
        };
        let out = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
            .await
            .expect("the stream answers within 10 s, whatever the server sent");
        match out {
            Ok(m) => format!("Ok({m:?})"),
            Err(e) => format!("next: {e}"),
        }
    }

    #[tokio::test]
    async fn a_hostile_server_gets_clean_errors() {
        let copy_both = frame(b'W', &[0, 0, 0]);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            // Out of order: rows instead of a copy.
            (
                "DataRow for START_REPLICATION",
                frame(b'D', &[0, 0]),
                "start: ",
            ),
            // Out of order: a copy before CopyBoth.
            ("CopyData before CopyBoth", frame(b'd', b"k"), "start: "),
            // Truncated: a frame cut off by the connection closing.
            (
                "a frame cut short",
                [copy_both.clone(), vec![b'd', 0, 0, 1, 0, b'w', 0]].concat(),
                "next: ",
            ),
            // Oversized: a CopyData claiming 1 GB, then nothing.
            (
                "a 1 GB claim",
                [copy_both.clone(), vec![b'd', 0x40, 0, 0, 0]].concat(),
                "next: ",
            ),
            // Beyond any message PostgreSQL sends.
            (
                "a 4 GB claim",
                [copy_both.clone(), vec![b'd', 0xff, 0xff, 0xff, 0xff]].concat(),
                "impossible length",
            ),
            // An unknown CopyData kind, and a keepalive one byte short.
            (
                "an unknown CopyData kind",
                [copy_both.clone(), frame(b'd', b"x123")].concat(),
                "next: ",
            ),
            (
                "a short keepalive",
                [copy_both.clone(), frame(b'd', &[b'k'; 17])].concat(),
                "next: ",
            ),
            // A query's rows in the middle of the stream.
            (
                "a RowDescription mid-stream",
                [copy_both, frame(b'T', &[0, 0])].concat(),
                "next: ",
            ),
        ];
        for (what, reply, expect) in cases {
            let got = hostile(reply).await;
            assert!(
                got.contains(expect) && !got.starts_with("Ok"),
                "{what}: got {got}"
            );
        }
    }

    #[tokio::test]
    async fn stream_errors() {
        // A truncated XLogData inside a well-framed CopyData.
        let p = fake::serve("", |mut s| async move {
            fake::read_startup(&mut s).await;
            fake::write(&mut s, &fake::ready()).await;
            fake::read_msg(&mut s).await;
            fake::write(&mut s, &frame(b'W', &[0, 0, 0])).await;
            fake::write(&mut s, &frame(b'd', b"w\0\0\0")).await;
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        })
        .await;
        let conn = ReplConn::connect(&p).await.unwrap();
        let mut stream = conn.start_replication("s", Lsn::ZERO, &[]).await.unwrap();
        let e = stream.next().await.unwrap_err();
        assert!(
            matches!(e, PgError::Protocol(ref m) if m.contains("truncated XLogData")),
            "{e}"
        );

        // The server shutting down mid-stream: a transient server error.
        let p = fake::serve("", |mut s| async move {
            fake::read_startup(&mut s).await;
            fake::write(&mut s, &fake::ready()).await;
            fake::read_msg(&mut s).await;
            fake::write(&mut s, &frame(b'W', &[0, 0, 0])).await;
            fake::write(
                &mut s,
                &frame(
                    b'E',
                    b"SFATAL\0VFATAL\0C57P01\0Mterminating connection due to administrator command\0\0",
                ),
            )
            .await;
        })
        .await;
        let conn = ReplConn::connect(&p).await.unwrap();
        let mut stream = conn.start_replication("s", Lsn::ZERO, &[]).await.unwrap();
        let e = stream.next().await.unwrap_err();
        assert_eq!(e.code(), Some("57P01"));
        assert!(e.is_transient());
        // And then the socket closes: a lost connection, also transient.
        let e = stream.next().await.unwrap_err();
        assert!(matches!(e, PgError::Io(_)), "{e}");
        assert!(e.is_transient());
    }
}
