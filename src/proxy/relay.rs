//! One client connection through the proxy: startup, then two directions relayed at once.
//!
//! The client→server direction ("front") reads each frontend message, asks the rules about
//! every statement about to run (a simple Query, or an Execute of a portal whose statement's
//! text was seen at Parse), and forwards, delays, replaces or drops it. The server→client
//! direction ("back") forwards every backend message, except the answers to the proxy's own
//! synthetic messages.
//!
//! An injected error is raised *by the server*: the statement is replaced by a `DO` block that
//! raises the rule's message and SQLSTATE. So the client gets a real ErrorResponse, a
//! transaction block is aborted exactly as a real failure would abort it, and ReadyForQuery
//! carries the right transaction status. In the extended protocol the Execute is replaced by
//! Parse+Bind+Execute of that block into the unnamed statement and portal; the back direction
//! swallows the ParseComplete and BindComplete the client never asked for, which is why the
//! front records, for every message that gets an answer, what answer ends it ("Message Flow",
//! "Extended Query": after an error the server skips everything up to Sync).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::events::{ProxyAction, ProxyData, redact};
use super::rule::{Action, ClientInfo, Decision, Fired};
use super::server::Shared;
use super::wire::{self, Malformed};

/// What a forwarded message's answer ends with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Startup and authentication, a simple Query, a FunctionCall: ends at ReadyForQuery.
    Simple,
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
}

impl Kind {
    /// Whether a backend message with `tag` is the last answer to this message.
    fn ends_with(self, tag: u8) -> bool {
        match self {
            Kind::Simple | Kind::Sync => tag == b'Z',
            Kind::Parse => tag == b'1',
            Kind::Bind => tag == b'2',
            Kind::Close => tag == b'3',
            Kind::Describe => tag == b'T' || tag == b'n',
            Kind::Execute => matches!(tag, b'C' | b'I' | b's'),
        }
    }
    fn is_extended(self) -> bool {
        !matches!(self, Kind::Simple | Kind::Sync)
    }
}

/// A message awaiting its answer.
struct Expect {
    kind: Kind,
    /// Sent by the proxy, not the client: its answer is not relayed (an error still is).
    synthetic: bool,
    /// With `--log-queries`: the statement, to record a pass when it completes.
    pass: Option<(String, Instant)>,
}

/// What both directions share.
struct State {
    pending: VecDeque<Expect>,
    /// An error was answered in the extended protocol: the server skips to Sync.
    skipping: bool,
    /// The server asked for SASL and the client's first answer is still to come.
    sasl_asked: bool,
    application_name: Arc<str>,
    /// The last forwarded ErrorResponse was FATAL or PANIC: the server is closing.
    server_fatal: bool,
}

/// Who the client is, for rules and events.
pub(crate) struct Client {
    pub id: u64,
    pub database: Arc<str>,
    pub user: Arc<str>,
}

/// How a connection ended, and what the client should still be told.
pub(crate) enum End {
    /// The client left (Terminate or end of stream).
    ClientGone,
    /// A drop rule fired.
    Dropped,
    /// The proxy refuses to go on: tell the client this, with this SQLSTATE.
    Refuse {
        sqlstate: &'static str,
        message: String,
    },
    /// The upstream server went away.
    UpstreamGone(String),
}

pub(crate) struct Relay<'a> {
    shared: &'a Shared,
    client: Client,
    state: Mutex<State>,
    upstream_tls: bool,
}

impl<'a> Relay<'a> {
    pub(crate) fn new(
        shared: &'a Shared,
        client: Client,
        application_name: &str,
        upstream_tls: bool,
    ) -> Relay<'a> {
        let mut pending = VecDeque::new();
        // The startup packet was sent: its answer ends at the first ReadyForQuery.
        pending.push_back(Expect {
            kind: Kind::Simple,
            synthetic: false,
            pass: None,
        });
        Relay {
            shared,
            client,
            state: Mutex::new(State {
                pending,
                skipping: false,
                sasl_asked: false,
                application_name: Arc::from(application_name),
                server_fatal: false,
            }),
            upstream_tls,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Relays until either side ends; then tells the client what it must know.
    pub(crate) async fn run<C, U>(&self, client: C, upstream: U) -> End
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let (mut client_rd, mut client_wr) = tokio::io::split(client);
        let (mut up_rd, mut up_wr) = tokio::io::split(upstream);
        let end = tokio::select! {
            end = self.front(&mut client_rd, &mut up_wr) => end,
            end = self.back(&mut up_rd, &mut client_wr) => end,
        };
        match &end {
            End::Refuse { sqlstate, message } => {
                self.error_event(sqlstate, message).await;
                let mut out = BytesMut::new();
                wire::error_response(sqlstate, message, &mut out);
                let _ = client_wr.write_all(&out).await;
            }
            End::UpstreamGone(why) if !self.state().server_fatal => {
                let message = format!("walwatch proxy: the upstream server {why}");
                self.error_event("08006", &message).await;
                let mut out = BytesMut::new();
                wire::error_response("08006", &message, &mut out);
                let _ = client_wr.write_all(&out).await;
            }
            _ => {}
        }
        let _ = client_wr.shutdown().await;
        end
    }

    /// Client → server.
    async fn front<R, W>(&self, rd: &mut R, wr: &mut W) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut conn = Statements::default();
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut out = BytesMut::with_capacity(16 * 1024);
        loop {
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => {
                    if !buf.is_empty() {
                        return refuse_malformed("the client closed the connection mid-message");
                    }
                    return End::ClientGone;
                }
                Ok(_) => {}
            }
            loop {
                let frame = match wire::split_frame(&mut buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return refuse_malformed(&e.0),
                };
                match self.on_frontend(frame, &mut conn, &mut out, wr).await {
                    Ok(None) => {}
                    Ok(Some(end)) => {
                        let _ = wr.write_all(&out).await;
                        return end;
                    }
                    Err(e) => return refuse_malformed(&e.0),
                }
            }
            if !out.is_empty() {
                if let Err(e) = wr.write_all(&out).await {
                    return End::UpstreamGone(format!("could not be written to: {e}"));
                }
                out.clear();
            }
        }
    }

    /// One frontend message: forwarded into `out`, replaced, or the end of the connection.
    async fn on_frontend<W: AsyncWrite + Unpin>(
        &self,
        frame: BytesMut,
        conn: &mut Statements,
        out: &mut BytesMut,
        wr: &mut W,
    ) -> Result<Option<End>, Malformed> {
        let kind = match frame[0] {
            b'Q' => {
                let text = wire::query_text(&frame)?.to_string();
                return self.statement(&text, frame, None, conn, out, wr).await;
            }
            b'E' => {
                let portal = wire::execute_portal(&frame)?;
                let unnamed = portal.is_empty();
                let Some(text) = conn.portals.get(portal).cloned() else {
                    self.expect(Kind::Execute, false, None);
                    out.extend_from_slice(&frame);
                    return Ok(None);
                };
                return self
                    .statement(&text, frame, Some(unnamed), conn, out, wr)
                    .await;
            }
            b'P' => {
                let (name, text) = wire::parse_message(&frame)?;
                conn.statements.insert(name.into(), Arc::from(text));
                if name.is_empty() {
                    conn.unnamed_parse = Some(frame.clone());
                    conn.unnamed_clobbered = false;
                }
                Kind::Parse
            }
            b'B' => {
                let (portal, statement) = wire::bind_message(&frame)?;
                if statement.is_empty() && conn.unnamed_clobbered {
                    // The proxy's own Parse replaced the client's unnamed statement: put the
                    // client's back before its Bind uses it.
                    if let Some(parse) = &conn.unnamed_parse {
                        self.expect(Kind::Parse, true, None);
                        out.extend_from_slice(parse);
                    }
                    conn.unnamed_clobbered = false;
                }
                match conn.statements.get(statement).cloned() {
                    Some(text) => conn.portals.insert(portal.into(), text),
                    None => conn.portals.remove(portal),
                };
                Kind::Bind
            }
            b'D' => Kind::Describe,
            b'C' => {
                let (what, name) = wire::target(&frame)?;
                if what == b'S' {
                    conn.statements.remove(name);
                } else {
                    conn.portals.remove(name);
                }
                Kind::Close
            }
            b'S' => Kind::Sync,
            b'F' => Kind::Simple,
            b'X' => {
                out.extend_from_slice(&frame);
                return Ok(Some(End::ClientGone));
            }
            b'p' => {
                if let Some(end) = self.check_sasl(&frame) {
                    return Ok(Some(end));
                }
                out.extend_from_slice(&frame);
                return Ok(None);
            }
            // Flush, CopyData, CopyDone, CopyFail: no answer of their own.
            _ => {
                out.extend_from_slice(&frame);
                return Ok(None);
            }
        };
        self.expect(kind, false, None);
        out.extend_from_slice(&frame);
        Ok(None)
    }

    /// A statement about to run: `frame` is its Query, or the Execute of a portal holding it
    /// (`unnamed_portal` says which portal). The rules decide.
    async fn statement<W: AsyncWrite + Unpin>(
        &self,
        text: &str,
        frame: BytesMut,
        execute_unnamed: Option<bool>,
        conn: &mut Statements,
        out: &mut BytesMut,
        wr: &mut W,
    ) -> Result<Option<End>, Malformed> {
        let kind = if execute_unnamed.is_some() {
            Kind::Execute
        } else {
            Kind::Simple
        };
        let decision = if self.shared.rules.is_empty() {
            Decision::default()
        } else {
            let app = self.state().application_name.clone();
            let info = ClientInfo {
                database: &self.client.database,
                user: &self.client.user,
                application_name: &app,
            };
            self.shared.rules.decide(text, &info)
        };
        let pass = self
            .shared
            .log_queries
            .then(|| (redact(text), Instant::now()));
        for fired in &decision.delays {
            if let Action::Delay(d) = fired.action {
                self.fired(fired, text, None, Some(d)).await;
                // What came before the delayed statement goes now; only it waits.
                if wr.write_all(out).await.is_ok() {
                    out.clear();
                }
                tokio::time::sleep(d).await;
            }
        }
        match decision.terminal {
            None => {
                self.expect(kind, false, pass);
                out.extend_from_slice(&frame);
            }
            Some(fired) => match &fired.action {
                Action::Drop => {
                    self.fired(&fired, text, None, None).await;
                    return Ok(Some(End::Dropped));
                }
                Action::Error { message, sqlstate } => {
                    self.fired(&fired, text, Some((message, sqlstate)), None)
                        .await;
                    let raise = wire::raise_statement(message, sqlstate);
                    if kind == Kind::Simple {
                        self.expect(Kind::Simple, false, None);
                        wire::query(&raise, out)?;
                    } else {
                        self.expect(Kind::Parse, true, None);
                        self.expect(Kind::Bind, true, None);
                        self.expect(Kind::Execute, false, None);
                        wire::parse_bind_execute(&raise, out)?;
                        conn.unnamed_clobbered = true;
                        conn.portals.remove("");
                    }
                }
                Action::Delay(_) => {
                    self.expect(kind, false, pass);
                    out.extend_from_slice(&frame);
                }
            },
        }
        Ok(None)
    }

    /// SCRAM channel binding binds the client to the TLS session it sees: through this proxy
    /// that session ends here, so the server's binding (to its own certificate) can never
    /// match, and a client saying it supports binding (`y`) is taken by the server for a
    /// downgrade attack when the server's own connection is TLS (src/backend/libpq/
    /// auth-scram.c, read_client_first_message). Either way authentication would fail with a
    /// puzzling message; say why instead.
    fn check_sasl(&self, frame: &[u8]) -> Option<End> {
        let asked = std::mem::take(&mut self.state().sasl_asked);
        if !asked || !self.upstream_tls {
            return None;
        }
        let (mechanism, flag) = wire::sasl_initial(frame)?;
        if mechanism.ends_with("-PLUS") || flag == b'y' {
            return Some(End::Refuse {
                sqlstate: "08004",
                message: "walwatch proxy: SCRAM channel binding cannot work through this \
                          proxy: the client's TLS session ends at the proxy and the server's \
                          at the server, so their bindings can never match. Connect through \
                          the proxy with channel_binding=disable, or give the proxy an \
                          upstream with sslmode=disable"
                    .into(),
            });
        }
        None
    }

    fn expect(&self, kind: Kind, synthetic: bool, pass: Option<(String, Instant)>) {
        self.state().pending.push_back(Expect {
            kind,
            synthetic,
            pass,
        });
    }

    /// Server → client.
    async fn back<R, W>(&self, rd: &mut R, wr: &mut W) -> End
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        let mut out = BytesMut::with_capacity(16 * 1024);
        loop {
            match rd.read_buf(&mut buf).await {
                Ok(0) => return End::UpstreamGone("closed the connection".into()),
                Err(e) => return End::UpstreamGone(format!("connection failed: {e}")),
                Ok(_) => {}
            }
            let mut passes = Vec::new();
            loop {
                let frame = match wire::split_frame(&mut buf) {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => return End::UpstreamGone(format!("sent a corrupt message: {e}")),
                };
                if let Some(p) = self.on_backend(&frame, &mut out) {
                    passes.push(p);
                }
            }
            if !out.is_empty() {
                if wr.write_all(&out).await.is_err() {
                    return End::ClientGone;
                }
                out.clear();
            }
            for (query, started) in passes {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                self.event(ProxyAction::Pass, Some(query), None, None, Some(ms))
                    .await;
            }
        }
    }

    /// One backend message into `out` (or swallowed); a completed statement to log.
    fn on_backend(&self, frame: &[u8], out: &mut BytesMut) -> Option<(String, Instant)> {
        let tag = frame[0];
        let mut st = self.state();
        match tag {
            b'K' => {
                self.rewrite_key(frame, out);
                return None;
            }
            b'R' if wire::body(frame).get(..4) == Some(&[0, 0, 0, 10]) => st.sasl_asked = true,
            b'S' => {
                if let Some(("application_name", rest)) = wire::take_cstr(wire::body(frame))
                    && let Some((value, _)) = wire::take_cstr(rest)
                {
                    st.application_name = Arc::from(value);
                }
            }
            b'E' => st.server_fatal = is_fatal(frame),
            _ => {}
        }
        let mut completed = None;
        let mut relay = true;
        if tag == b'E' {
            if let Some(head) = st.pending.front()
                && head.kind.is_extended()
            {
                st.pending.pop_front();
                st.skipping = true;
            }
        } else {
            if st.skipping && tag == b'Z' {
                while st.pending.front().is_some_and(|e| e.kind != Kind::Sync) {
                    st.pending.pop_front();
                }
                st.skipping = false;
            }
            if st.pending.front().is_some_and(|e| e.kind.ends_with(tag))
                && let Some(done) = st.pending.pop_front()
            {
                relay = !done.synthetic;
                completed = done.pass;
            }
        }
        if relay {
            out.extend_from_slice(frame);
        }
        completed
    }

    /// BackendKeyData: the client gets the proxy's key, so its cancel requests come here and
    /// are sent on with the server's key (server.rs).
    fn rewrite_key(&self, frame: &[u8], out: &mut BytesMut) {
        let body = wire::body(frame);
        if body.len() < 8 {
            out.extend_from_slice(frame);
            return;
        }
        let pid = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let secret = body[4..].to_vec();
        let ours = self.shared.register_cancel(self.client.id, pid, secret);
        wire::backend_key_data(self.client.id as u32, &ours, out);
    }

    async fn fired(
        &self,
        fired: &Fired,
        text: &str,
        error: Option<(&String, &String)>,
        delay: Option<Duration>,
    ) {
        let action = match fired.action {
            Action::Error { .. } => ProxyAction::Error,
            Action::Delay(_) => ProxyAction::Delay,
            Action::Drop => ProxyAction::Drop,
        };
        let (message, sqlstate) = match error {
            Some((m, s)) => (Some(m.clone()), Some(s.clone())),
            None => (None, None),
        };
        let data = self.data(
            action,
            Some(redact(text)),
            Some(fired.rule.clone()),
            message,
        );
        let data = ProxyData {
            sqlstate,
            duration_ms: delay.map(|d| d.as_secs_f64() * 1000.0),
            ..data
        };
        self.shared.events.record_async(data, true).await;
    }

    async fn event(
        &self,
        action: ProxyAction,
        query: Option<String>,
        rule: Option<Arc<str>>,
        message: Option<String>,
        duration_ms: Option<f64>,
    ) {
        let data = ProxyData {
            duration_ms,
            ..self.data(action, query, rule, message)
        };
        let durable = action != ProxyAction::Pass;
        self.shared.events.record_async(data, durable).await;
    }

    /// The event of an error of the proxy's own, sent to the client with `sqlstate`.
    async fn error_event(&self, sqlstate: &str, message: &str) {
        let data = ProxyData {
            sqlstate: Some(sqlstate.to_string()),
            ..self.data(ProxyAction::Error, None, None, Some(message.to_string()))
        };
        self.shared.events.record_async(data, true).await;
    }

    fn data(
        &self,
        action: ProxyAction,
        query: Option<String>,
        rule: Option<Arc<str>>,
        message: Option<String>,
    ) -> ProxyData {
        ProxyData {
            action,
            query,
            rule,
            message,
            sqlstate: None,
            connection: self.client.id,
            database: self.client.database.clone(),
            user: self.client.user.clone(),
            application_name: self.state().application_name.clone(),
            duration_ms: None,
        }
    }
}

impl Drop for Relay<'_> {
    fn drop(&mut self) {
        self.shared.forget_cancel(self.client.id);
    }
}

/// The texts of the client's prepared statements and portals, to match rules at Execute.
#[derive(Default)]
struct Statements {
    statements: HashMap<Box<str>, Arc<str>>,
    portals: HashMap<Box<str>, Arc<str>>,
    /// The client's last Parse into the unnamed statement, to restore it.
    unnamed_parse: Option<BytesMut>,
    /// The proxy's injected Parse has replaced the client's unnamed statement.
    unnamed_clobbered: bool,
}

fn refuse_malformed(why: &str) -> End {
    End::Refuse {
        sqlstate: "08P01",
        message: format!(
            "walwatch proxy: malformed message from the client ({why}); closing the connection"
        ),
    }
}

/// Whether an ErrorResponse's severity is FATAL or PANIC.
fn is_fatal(frame: &[u8]) -> bool {
    let mut rest = wire::body(frame);
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            break;
        }
        let Some((value, after)) = wire::take_cstr(tail) else {
            break;
        };
        if field == b'V' || field == b'S' {
            return value == "FATAL" || value == "PANIC";
        }
        rest = after;
    }
    false
}

/// Reads the whole untagged first packet of a connection.
pub(crate) async fn read_first<S: AsyncRead + Unpin>(
    s: &mut S,
) -> std::io::Result<Result<wire::FirstPacket, Malformed>> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    let len = match wire::packet_len(&head) {
        Ok(Some(len)) => len,
        Ok(None) => unreachable_len(),
        Err(e) => return Ok(Err(e)),
    };
    let mut raw = BytesMut::with_capacity(len);
    raw.put_slice(&head);
    raw.resize(len, 0);
    s.read_exact(&mut raw[4..]).await?;
    Ok(wire::parse_first(raw))
}

/// `packet_len` of four bytes always knows the length.
fn unreachable_len() -> usize {
    8
}
