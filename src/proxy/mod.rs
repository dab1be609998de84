//! `walwatch proxy`: a PostgreSQL protocol proxy that injects faults by statement pattern.
//!
//! Test harnesses put it between an application and its database and inject errors, delays
//! and dropped connections on the statements that match a glob (`error:INSERT*:disk full`).
//! Every action becomes a "proxy" event ([`events`]), for assertions beside the WAL's events.
//!
//! Layout: [`wire`] frames the protocol, [`rule`] decides, [`relay`] carries one connection,
//! [`server`] accepts them, [`control`] changes the rules of a running proxy. This file is the
//! library face: [`Proxy::builder`].

pub mod control;
pub mod events;
mod relay;
pub mod rule;
mod server;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

pub use events::{EventLog, ProxyAction, ProxyData, ProxyEvent};
pub use rule::{RuleSet, RuleSpec};

use crate::pg::params::{ConnParams, Host};

/// Why the proxy cannot start or a rule cannot be used: each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The upstream address is not usable.
    #[error("--upstream {upstream}: {message}")]
    Upstream { upstream: String, message: String },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}; is another proxy or server using it?")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be used.
    #[error("{0}")]
    Tls(String),
    /// A rule is invalid.
    #[error(transparent)]
    Rule(#[from] rule::RuleError),
    /// The control API cannot start or answer.
    #[error(transparent)]
    Control(#[from] control::ControlError),
    /// The events file cannot be opened.
    #[error("--events {}: {source}", path.display())]
    Events {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Configures a [`Proxy`]; see [`Proxy::builder`].
#[derive(Clone, Debug)]
pub struct ProxyBuilder {
    upstream: String,
    listen: SocketAddr,
    rules: Vec<RuleSpec>,
    seed: u64,
    events: Option<PathBuf>,
    log_queries: bool,
    tls: Option<(PathBuf, PathBuf)>,
    control: Option<control::ControlConfig>,
    retain: usize,
}

/// A running proxy. Dropping it stops it (connections through it are closed).
pub struct Proxy {
    addr: SocketAddr,
    control_addr: Option<SocketAddr>,
    rules: Arc<RuleSet>,
    events: Arc<EventLog>,
    stop: watch::Sender<bool>,
}

/// Removes its rule from the proxy when dropped: the fault lasts as long as the guard.
#[must_use = "the fault is removed as soon as the guard is dropped"]
pub struct FaultGuard {
    id: u64,
    rules: Arc<RuleSet>,
}

impl FaultGuard {
    /// The rule's id (as `walwatch fault ls` shows it).
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        self.rules.remove(self.id);
    }
}

impl ProxyBuilder {
    /// Where clients connect (default `127.0.0.1:0`, a free port: see [`Proxy::addr`]).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }
    /// A rule active from the start.
    pub fn fault(mut self, rule: RuleSpec) -> Self {
        self.rules.push(rule);
        self
    }
    /// The seed of `probability=` draws (default 0): the same seed and statements give the
    /// same decisions.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Also writes every event to this JSONL file (appended to; fsync'd before each action).
    pub fn events_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.events = Some(path.into());
        self
    }
    /// Records every statement relayed unchanged as a `pass` event.
    pub fn log_queries(mut self, on: bool) -> Self {
        self.log_queries = on;
        self
    }
    /// Terminates clients' TLS with this certificate and key (PEM); without, a client asking
    /// for TLS is answered `N`.
    pub fn tls(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls = Some((cert.into(), key.into()));
        self
    }
    /// Serves the control API (see [`control`]).
    pub fn control(mut self, config: control::ControlConfig) -> Self {
        self.control = Some(config);
        self
    }
    /// How many events to keep in memory (default 100,000).
    pub fn retain(mut self, events: usize) -> Self {
        self.retain = events;
        self
    }

    /// Binds and starts serving on the current tokio runtime.
    pub async fn start(self) -> Result<Proxy, ProxyError> {
        let upstream = upstream_params(&self.upstream)?;
        let rules = Arc::new(RuleSet::new(self.seed));
        for spec in self.rules {
            rules.add(spec)?;
        }
        let events = EventLog::open(self.events.as_deref(), self.retain).map_err(|source| {
            ProxyError::Events {
                path: self.events.clone().unwrap_or_default(),
                source,
            }
        })?;
        let tls = match &self.tls {
            Some((cert, key)) => Some(server::acceptor(cert, key)?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|source| ProxyError::Listen {
                addr: self.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| ProxyError::Listen {
            addr: self.listen,
            source,
        })?;
        let (stop, stopped) = watch::channel(false);
        let control_addr = match &self.control {
            Some(config) => {
                let l = control::bind(config).await?;
                let a = l.local_addr().ok();
                let mut s = stopped.clone();
                let shutdown = async move {
                    let _ = s.wait_for(|v| *v).await;
                };
                tokio::spawn(control::serve(
                    l,
                    config.token.clone(),
                    rules.clone(),
                    events.clone(),
                    shutdown,
                ));
                a
            }
            None => None,
        };
        let shared = Arc::new(server::Shared::new(
            rules.clone(),
            events.clone(),
            upstream,
            tls,
            self.log_queries,
        ));
        tokio::spawn(server::serve(listener, shared, stopped));
        Ok(Proxy {
            addr,
            control_addr,
            rules,
            events,
            stop,
        })
    }
}

impl Proxy {
    /// A proxy in front of `upstream`: a libpq DSN (`postgres://host:5432`, `host=... port=...`)
    /// or `host:port`. Only where the server is and its TLS settings are used: clients bring
    /// their own user, database and password.
    pub fn builder(upstream: impl Into<String>) -> ProxyBuilder {
        ProxyBuilder {
            upstream: upstream.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            rules: Vec::new(),
            seed: 0,
            events: None,
            log_queries: false,
            tls: None,
            control: None,
            retain: 100_000,
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the control API listens, when it was asked for.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control_addr
    }

    /// Adds a rule until the returned guard is dropped.
    pub fn fault(&self, rule: RuleSpec) -> Result<FaultGuard, ProxyError> {
        let id = self.rules.add(rule)?;
        Ok(FaultGuard {
            id,
            rules: self.rules.clone(),
        })
    }

    /// The live rules.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Records a mark named `name` in the proxy's events (and `--events` file, fsync'd) and
    /// returns its sequence number: `walwatch assert --since NAME` over the events file starts
    /// its window there, as it does at a mark of that name in a WAL recording.
    pub async fn mark(&self, name: &str) -> u64 {
        self.events.mark(name).await.seq
    }

    /// The events recorded so far.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// Stops accepting and closes every connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `--upstream` as connection parameters: `host:port` or a DSN. Environment variables such as
/// PGSSLMODE apply as with libpq.
pub fn upstream_params(upstream: &str) -> Result<ConnParams, ProxyError> {
    let bad = |message: String| ProxyError::Upstream {
        upstream: upstream.to_string(),
        message,
    };
    let dsn = if !upstream.contains('=') && !upstream.contains("://") {
        let (host, port) = upstream.rsplit_once(':').ok_or_else(|| {
            bad(
                "expected host:port or a libpq connection string such as postgres://host:5432"
                    .into(),
            )
        })?;
        port.parse::<u16>()
            .map_err(|_| bad(format!("`{port}` is not a port number")))?;
        format!("postgres://{host}:{port}")
    } else {
        upstream.to_string()
    };
    let env = |name: &str| std::env::var(name).ok();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let params =
        ConnParams::resolve(Some(&dsn), &env, home.as_deref()).map_err(|e| bad(e.to_string()))?;
    if let Host::Unix(_) = params.host {
        tracing::debug!(
            "proxy upstream is a unix-domain socket: {}",
            params.target()
        );
    }
    Ok(params)
}

/// An `error` rule: matching statements fail with `message` (SQLSTATE XX000 unless
/// [`RuleSpec::sqlstate`] is set).
pub fn error(query: &str, message: &str) -> RuleSpec {
    RuleSpec {
        message: Some(message.to_string()),
        ..RuleSpec::blank("error", query.to_string())
    }
}

/// A `delay` rule: matching statements are held for `delay` before they are relayed.
pub fn delay(query: &str, delay: std::time::Duration) -> RuleSpec {
    RuleSpec {
        delay: Some(format!("{}ms", delay.as_millis())),
        ..RuleSpec::blank("delay", query.to_string())
    }
}

/// A `drop` rule: the client's connection is closed when a matching statement arrives.
pub fn drop(query: &str) -> RuleSpec {
    RuleSpec::blank("drop", query.to_string())
}

impl RuleSpec {
    /// The SQLSTATE of an error rule.
    pub fn sqlstate(mut self, code: &str) -> Self {
        self.sqlstate = Some(code.to_string());
        self
    }
    /// Acts on at most `n` matches.
    pub fn times(mut self, n: u64) -> Self {
        self.times = Some(n);
        self
    }
    /// Lets the first `n` matches pass.
    pub fn after(mut self, n: u64) -> Self {
        self.after = Some(n);
        self
    }
    /// Acts on a match with probability `p` (see [`ProxyBuilder::seed`]).
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = Some(p);
        self
    }
    /// Only for clients connected to `database`.
    pub fn database(mut self, name: &str) -> Self {
        self.database = Some(name.to_string());
        self
    }
    /// Only for clients connected as `user`.
    pub fn user(mut self, name: &str) -> Self {
        self.user = Some(name.to_string());
        self
    }
    /// Only for clients with this `application_name`.
    pub fn application_name(mut self, name: &str) -> Self {
        self.application_name = Some(name.to_string());
        self
    }
}
