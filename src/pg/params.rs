//! Connection parameters, resolved the way libpq / psql resolve them, before any I/O.
//!
//! Precedence, per setting: the DSN, then the `PG*` environment variable, then libpq's default.
//! The password additionally falls back to the password file (`~/.pgpass`, or `PGPASSFILE` /
//! `passfile=`), matched with libpq's rules ("The Password File").

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Debian/Ubuntu build's default socket directory (`DEFAULT_PGSOCKET_DIR`).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// The application_name the replication connection reports (pg_stat_replication shows it).
pub const DEFAULT_APPLICATION_NAME: &str = "walwatch";
/// The application_name of the separate metadata (tokio-postgres) connection.
pub const META_APPLICATION_NAME: &str = "walwatch-meta";

/// A problem with the connection parameters; nothing was sent anywhere.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    #[error("invalid connection string: {0}")]
    InvalidDsn(String),
    #[error("invalid connection option `{0}` (walwatch understands libpq's keywords)")]
    UnknownOption(String),
    #[error("invalid value for `{key}`: `{value}` ({why})")]
    InvalidValue {
        key: String,
        value: String,
        why: String,
    },
    #[error(
        "cannot tell which OS user you are (no $USER and no passwd entry): set PGUSER or put \
         user= in the DSN"
    )]
    NoUser,
    #[error("{0} is not supported yet")]
    Unsupported(String),
}

/// Where the server is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// A host name or IP address, reached over TCP.
    Tcp(String),
    /// A directory holding the server's socket `<dir>/.s.PGSQL.<port>`.
    Unix(PathBuf),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Tcp(h) => f.write_str(h),
            Host::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Resolved connection parameters. The password is private: `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnParams {
    pub host: Host,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    pub dbname: String,
    pub application_name: String,
    /// None: wait as long as the OS does (libpq's default, and its reading of 0).
    pub connect_timeout: Option<Duration>,
    /// TLS and channel binding, with libpq's meanings.
    pub tls: TlsParams,
    /// libpq's `options` (or `PGOPTIONS`): command-line switches for the server, such as
    /// `-c search_path=app -c statement_timeout=5s`, sent verbatim as the `options` startup
    /// parameter of both connections (the server splits it at unescaped spaces: `\ ` keeps a
    /// space in a value, as with libpq). The settings walwatch pins on the replication
    /// connection (see `ReplConn::startup`) still win over a `-c` of the same name.
    pub options: Option<String>,
}

/// `sslmode` (libpq, 34.19 "SSL Support", table "SSL Mode Descriptions").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Never TLS: no SSLRequest is sent.
    Disable,
    /// Plain first; TLS only if the server refuses the plain connection.
    Allow,
    /// TLS if the server offers it, plain otherwise (the default).
    Prefer,
    /// TLS, without checking the certificate (unless a root certificate is given: then as
    /// `VerifyCa`).
    Require,
    /// TLS, with a certificate signed by a trusted CA.
    VerifyCa,
    /// TLS, with a certificate signed by a trusted CA for the host name connected to.
    VerifyFull,
}

/// Where trusted CA certificates come from (`sslrootcert`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of CA certificates.
    File(PathBuf),
    /// The operating system's store (`sslrootcert=system`).
    System,
}

/// `channel_binding`: whether SCRAM-SHA-256-PLUS binds the authentication to the TLS session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelBindingMode {
    Disable,
    /// Use it when the server offers it over TLS (the default).
    Prefer,
    /// Fail unless the server authenticates with channel binding.
    Require,
}

/// The TLS settings of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsParams {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    /// A client certificate (PEM) and its key, for `cert` authentication.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub channel_binding: ChannelBindingMode,
}

impl Default for TlsParams {
    fn default() -> Self {
        TlsParams {
            mode: SslMode::Prefer,
            root_cert: None,
            cert: None,
            key: None,
            channel_binding: ChannelBindingMode::Prefer,
        }
    }
}

/// libpq keywords we accept and ignore (they do not change what walwatch does, or are handled
/// elsewhere), so that DSNs written for psql keep working.
const IGNORED_KEYS: &[&str] = &[
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "target_session_attrs",
    "gssencmode",
    "krbsrvname",
    "service",
    "replication",
    "client_encoding",
    "load_balance_hosts",
    "sslcompression",
];

/// Settings gathered from the DSN, before env and defaults.
#[derive(Default, Debug)]
struct Raw {
    host: Option<String>,
    hostaddr: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<String>,
    dbname: Option<String>,
    application_name: Option<String>,
    fallback_application_name: Option<String>,
    connect_timeout: Option<String>,
    passfile: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    sslcert: Option<String>,
    sslkey: Option<String>,
    channel_binding: Option<String>,
    options: Option<String>,
}

impl Raw {
    fn set(&mut self, key: &str, value: String) -> Result<(), ParamsError> {
        let slot = match key {
            "host" => &mut self.host,
            "hostaddr" => &mut self.hostaddr,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => &mut self.password,
            "dbname" => &mut self.dbname,
            "application_name" => &mut self.application_name,
            "fallback_application_name" => &mut self.fallback_application_name,
            "connect_timeout" => &mut self.connect_timeout,
            "passfile" => &mut self.passfile,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "sslcert" => &mut self.sslcert,
            "sslkey" => &mut self.sslkey,
            "channel_binding" => &mut self.channel_binding,
            "options" => &mut self.options,
            k if IGNORED_KEYS.contains(&k) || k.starts_with("ssl") => return Ok(()),
            k => return Err(ParamsError::UnknownOption(k.to_string())),
        };
        *slot = Some(value);
        Ok(())
    }
}

/// `sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `channel_binding` (and PGSSLMODE,
/// PGSSLROOTCERT, PGSSLCERT, PGSSLKEY, PGCHANNELBINDING), with libpq's defaults: the root
/// certificate `~/.postgresql/root.crt` and the client certificate `~/.postgresql/postgresql.crt`
/// (key `postgresql.key`) when those files exist, and `require` acting as `verify-ca` when a
/// root certificate is there.
fn tls_params(
    raw: &mut Raw,
    pick: &dyn Fn(Option<String>, &str) -> Option<String>,
    home: Option<&Path>,
) -> Result<TlsParams, ParamsError> {
    let mut tls = TlsParams::default();
    if let Some(mode) = pick(raw.sslmode.take(), "PGSSLMODE") {
        tls.mode = match mode.as_str() {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(ParamsError::InvalidValue {
                    key: "sslmode".into(),
                    value: mode,
                    why: "expected disable, allow, prefer, require, verify-ca or verify-full"
                        .into(),
                });
            }
        };
    }
    if let Some(cb) = pick(raw.channel_binding.take(), "PGCHANNELBINDING") {
        tls.channel_binding = match cb.as_str() {
            "disable" => ChannelBindingMode::Disable,
            "prefer" => ChannelBindingMode::Prefer,
            "require" => ChannelBindingMode::Require,
            _ => {
                return Err(ParamsError::InvalidValue {
                    key: "channel_binding".into(),
                    value: cb,
                    why: "expected disable, prefer or require".into(),
                });
            }
        };
    }
    let dot = home.map(|h| h.join(".postgresql"));
    let existing = |name: &str| dot.as_ref().map(|d| d.join(name)).filter(|p| p.is_file());
    tls.root_cert = match pick(raw.sslrootcert.take(), "PGSSLROOTCERT") {
        Some(r) if r == "system" => Some(RootCert::System),
        Some(r) => Some(RootCert::File(PathBuf::from(r))),
        None => existing("root.crt").map(RootCert::File),
    };
    tls.cert = pick(raw.sslcert.take(), "PGSSLCERT")
        .map(PathBuf::from)
        .or_else(|| existing("postgresql.crt"));
    tls.key = pick(raw.sslkey.take(), "PGSSLKEY")
        .map(PathBuf::from)
        .or_else(|| existing("postgresql.key"));
    if tls.mode == SslMode::Require && tls.root_cert.is_some() {
        tls.mode = SslMode::VerifyCa;
    }
    if matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull) && tls.root_cert.is_none() {
        return Err(ParamsError::InvalidValue {
            key: "sslrootcert".into(),
            value: String::new(),
            why: "sslmode=verify-ca and verify-full check the server's certificate against a \
                  root certificate: give sslrootcert=FILE (PEM), or sslrootcert=system for the \
                  operating system's store, or put it in ~/.postgresql/root.crt"
                .into(),
        });
    }
    if tls.mode == SslMode::Disable && tls.channel_binding == ChannelBindingMode::Require {
        return Err(ParamsError::InvalidValue {
            key: "channel_binding".into(),
            value: "require".into(),
            why: "channel binding needs TLS, and sslmode=disable rules it out".into(),
        });
    }
    Ok(tls)
}

/// Things outside the DSN/env that defaults depend on; injectable for tests.
struct Defaults<'a> {
    socket_dir_exists: &'a dyn Fn(&Path) -> bool,
    os_user: &'a dyn Fn() -> Option<String>,
}

impl ConnParams {
    /// Resolves parameters like libpq: `dsn` (URI or `key=value`), then `env` (`PGHOST`, `PGPORT`,
    /// `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGAPPNAME`, `PGCONNECT_TIMEOUT`, `PGPASSFILE`,
    /// `PGOPTIONS`), then defaults; the password falls back to the password file under `home`.
    pub fn resolve(
        dsn: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
    ) -> Result<ConnParams, ParamsError> {
        let defaults = Defaults {
            socket_dir_exists: &|p: &Path| p.is_dir(),
            os_user: &os_user_from_passwd,
        };
        Self::resolve_with(dsn, env, home, &defaults)
    }

    fn resolve_with(
        dsn: Option<&str>,
        env: &dyn Fn(&str) -> Option<String>,
        home: Option<&Path>,
        defaults: &Defaults<'_>,
    ) -> Result<ConnParams, ParamsError> {
        let mut raw = match dsn.map(str::trim) {
            None | Some("") => Raw::default(),
            Some(d) if d.starts_with("postgres://") || d.starts_with("postgresql://") => {
                parse_uri(d)?
            }
            Some(d) => parse_key_value(d)?,
        };
        // An empty string counts as unset, as in libpq.
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let pick = |v: Option<String>, var: &str| v.filter(|v| !v.is_empty()).or_else(|| env(var));

        let tls = tls_params(&mut raw, &pick, home)?;

        let port_s = pick(raw.port, "PGPORT");
        let port = match port_s {
            None => 5432,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(ParamsError::InvalidValue {
                        key: "port".into(),
                        value: p,
                        why: "expected a number from 1 to 65535".into(),
                    });
                }
            },
        };

        let host_s = pick(raw.host, "PGHOST").or_else(|| pick(raw.hostaddr, "PGHOSTADDR"));
        let host = match host_s {
            Some(h) if h.contains(',') => {
                return Err(ParamsError::Unsupported(format!(
                    "several hosts (`{h}`); give one host"
                )));
            }
            Some(h) if h.starts_with('/') => Host::Unix(PathBuf::from(h)),
            Some(h) => Host::Tcp(h),
            None => {
                let dir = Path::new(DEFAULT_SOCKET_DIR);
                if (defaults.socket_dir_exists)(dir) {
                    Host::Unix(dir.to_path_buf())
                } else {
                    Host::Tcp("localhost".into())
                }
            }
        };

        let user = match pick(raw.user, "PGUSER") {
            Some(u) => u,
            None => env("USER")
                .or_else(|| (defaults.os_user)())
                .ok_or(ParamsError::NoUser)?,
        };
        let dbname = pick(raw.dbname, "PGDATABASE").unwrap_or_else(|| user.clone());
        let application_name = pick(raw.application_name, "PGAPPNAME")
            .or(raw.fallback_application_name.filter(|v| !v.is_empty()))
            .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_string());

        let connect_timeout = match pick(raw.connect_timeout, "PGCONNECT_TIMEOUT") {
            None => None,
            Some(t) => match t.trim().parse::<i64>() {
                // libpq: zero or negative means wait indefinitely; 1 is raised to 2 seconds.
                Ok(n) if n <= 0 => None,
                Ok(n) => Some(Duration::from_secs(n.max(2) as u64)),
                Err(_) => {
                    return Err(ParamsError::InvalidValue {
                        key: "connect_timeout".into(),
                        value: t,
                        why: "expected a whole number of seconds".into(),
                    });
                }
            },
        };

        let mut params = ConnParams {
            host,
            port,
            user,
            password: pick(raw.password, "PGPASSWORD"),
            dbname,
            application_name,
            connect_timeout,
            tls,
            options: pick(raw.options, "PGOPTIONS"),
        };
        if params.password.is_none() {
            let passfile = pick(raw.passfile, "PGPASSFILE")
                .map(PathBuf::from)
                .or_else(|| home.map(|h| h.join(".pgpass")));
            if let Some(file) = passfile {
                params.password = password_from_file(&file, &params);
            }
        }
        Ok(params)
    }

    /// The password, if one was given or found in the password file.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Replaces the password (e.g. one typed at a prompt).
    pub fn set_password(&mut self, password: Option<String>) {
        self.password = password;
    }

    /// `HOST:PORT` for TCP, the socket file path for unix sockets (for messages).
    pub fn target(&self) -> String {
        match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]:{}", self.port),
            Host::Tcp(h) => format!("{h}:{}", self.port),
            Host::Unix(_) => self
                .socket_path()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        }
    }

    /// The unix socket file, `<dir>/.s.PGSQL.<port>`, when connecting over a unix socket.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            Host::Tcp(_) => None,
        }
    }

    /// A DSN for messages and logs: every setting except the password (shown as `****` when set).
    pub fn redacted(&self) -> String {
        let host = match &self.host {
            Host::Tcp(h) if h.contains(':') => format!("[{h}]"),
            Host::Tcp(h) => percent_encode(h),
            Host::Unix(p) => percent_encode(&p.display().to_string()),
        };
        let pw = if self.password.is_some() { ":****" } else { "" };
        let mut s = format!(
            "postgres://{}{pw}@{host}:{}/{}?application_name={}",
            percent_encode(&self.user),
            self.port,
            percent_encode(&self.dbname),
            percent_encode(&self.application_name)
        );
        if let Some(t) = self.connect_timeout {
            s.push_str(&format!("&connect_timeout={}", t.as_secs()));
        }
        if let Some(o) = &self.options {
            s.push_str(&format!("&options={}", percent_encode(o)));
        }
        s
    }

    /// A tokio-postgres config for the separate metadata connection: same server, role, password,
    /// database and `options`, application_name `walwatch-meta`.
    pub fn tokio_postgres_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        match &self.host {
            Host::Tcp(h) => c.host(h),
            Host::Unix(p) => c.host_path(p),
        };
        c.port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(META_APPLICATION_NAME);
        if let Some(pw) = &self.password {
            c.password(pw);
        }
        if let Some(t) = self.connect_timeout {
            c.connect_timeout(t);
        }
        if let Some(o) = &self.options {
            c.options(o);
        }
        // tokio-postgres knows disable, prefer and require; the certificate checks of
        // verify-ca and verify-full are in the TLS connector (pg::tls), and `allow` (plain
        // first) is taken as `prefer` there.
        // No TLS over unix-domain sockets (the server has none there; libpq skips it too).
        let unix = matches!(self.host, Host::Unix(_));
        c.ssl_mode(match self.tls.mode {
            _ if unix => tokio_postgres::config::SslMode::Disable,
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        c.channel_binding(match self.tls.channel_binding {
            ChannelBindingMode::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBindingMode::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBindingMode::Require => tokio_postgres::config::ChannelBinding::Require,
        });
        c
    }

    /// The context used in error messages (no password).
    pub fn error_context(&self) -> super::error::ErrorContext {
        super::error::ErrorContext {
            target: self.target(),
            user: self.user.clone(),
            dbname: self.dbname.clone(),
            slot: None,
        }
    }
}

impl fmt::Display for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for ConnParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnParams")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "****"))
            .field("dbname", &self.dbname)
            .field("application_name", &self.application_name)
            .field("connect_timeout", &self.connect_timeout)
            .field("options", &self.options)
            .finish()
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986 §2.3), for a URI's parts:
/// the redacted DSN, and a DSN rewritten with another database name.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str, what: &str) -> Result<String, ParamsError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ParamsError::InvalidDsn(format!("invalid percent-encoding in {what}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ParamsError::InvalidDsn(format!("{what} is not UTF-8 after percent-decoding")))
}

/// `postgresql://[user[:password]@][host][:port][/dbname][?param=value&...]` ("Connection URIs").
fn parse_uri(dsn: &str) -> Result<Raw, ParamsError> {
    let rest = dsn
        .strip_prefix("postgresql://")
        .or_else(|| dsn.strip_prefix("postgres://"))
        .unwrap_or(dsn);
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (rest, None),
    };
    let mut raw = Raw::default();
    let hostport = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            let (u, p) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            if !u.is_empty() {
                raw.user = Some(percent_decode(u, "the user name")?);
            }
            if let Some(p) = p {
                raw.password = Some(percent_decode(p, "the password")?);
            }
            hp
        }
        None => authority,
    };
    if !hostport.is_empty() {
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| ParamsError::InvalidDsn("unterminated [IPv6 address]".into()))?;
            let port =
                match after {
                    "" => None,
                    p => Some(p.strip_prefix(':').ok_or_else(|| {
                        ParamsError::InvalidDsn("junk after [IPv6 address]".into())
                    })?),
                };
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (percent_decode(h, "the host")?, Some(p)),
                None => (percent_decode(hostport, "the host")?, None),
            }
        };
        if !host.is_empty() {
            raw.host = Some(host);
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            raw.port = Some(p.to_string());
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        raw.dbname = Some(percent_decode(db, "the database name")?);
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            ParamsError::InvalidDsn(format!("URI parameter `{pair}` has no `=value`"))
        })?;
        let k = percent_decode(k, "a URI parameter name")?;
        let v = percent_decode(v, "a URI parameter value")?;
        // libpq accepts JDBC's ssl=true as sslmode=require.
        if k == "ssl" {
            if v == "true" {
                raw.set("sslmode", "require".into())?;
            }
            continue;
        }
        raw.set(&k, v)?;
    }
    Ok(raw)
}

/// `key = value ...`, values optionally single-quoted, `\` escaping the next character
/// ("Keyword/Value Connection Strings").
fn parse_key_value(dsn: &str) -> Result<Raw, ParamsError> {
    let mut raw = Raw::default();
    let mut chars = dsn.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            // The text is not echoed: a mistyped URI can hold a password.
            return Err(ParamsError::InvalidDsn(
                "expected key=value pairs or a postgres:// / postgresql:// URI".into(),
            ));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            loop {
                match chars.next() {
                    None => {
                        return Err(ParamsError::InvalidDsn(format!(
                            "unterminated quoted value for `{key}`"
                        )));
                    }
                    Some('\\') => match chars.next() {
                        Some(c) => value.push(c),
                        None => {
                            return Err(ParamsError::InvalidDsn(format!(
                                "unterminated quoted value for `{key}`"
                            )));
                        }
                    },
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        raw.set(&key, value)?;
    }
    Ok(raw)
}

/// The password for `params` from a libpq password file, or None. The file is ignored (with a
/// warning) when it is readable or writable by group or others, as libpq does.
fn password_from_file(path: &Path, params: &ConnParams) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        tracing::warn!(
            "password file \"{}\" is not a plain file; ignoring it",
            path.display()
        );
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "password file \"{}\" has group or world access; permissions should be u=rw \
                 (0600) or less (fix with `chmod 0600 {}`); ignoring it",
                path.display(),
                path.display()
            );
            return None;
        }
    }
    let text = std::fs::read_to_string(path).ok()?;
    pgpass_lookup(&text, params)
}

/// libpq's matching: `hostname:port:database:username:password`, first match wins, `*` matches
/// anything in the first four fields, `\` escapes `:` and `\`. `localhost` also matches a unix
/// socket connection to the default socket directory.
fn pgpass_lookup(text: &str, params: &ConnParams) -> Option<String> {
    let host = match &params.host {
        Host::Tcp(h) => h.clone(),
        Host::Unix(p) if p == Path::new(DEFAULT_SOCKET_DIR) => "localhost".to_string(),
        Host::Unix(p) => p.display().to_string(),
    };
    let port = params.port.to_string();
    let wanted = [
        host.as_str(),
        port.as_str(),
        params.dbname.as_str(),
        params.user.as_str(),
    ];
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some(fields) = split_pgpass_line(line) else {
            continue;
        };
        let matches = fields[..4]
            .iter()
            .zip(wanted)
            .all(|(f, w)| f == "*" || f == w);
        if matches {
            return Some(fields[4].clone());
        }
    }
    None
}

/// Splits one line into its five fields (the password is everything after the fourth `:`),
/// unescaping `\x` to `x`. None for lines with fewer than five fields.
fn split_pgpass_line(line: &str) -> Option<[String; 5]> {
    let mut fields: Vec<String> = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    fields.last_mut()?.push(n);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut()?.push(c),
        }
    }
    fields.try_into().ok()
}

/// The effective user's login name from the passwd database.
fn os_user_from_passwd() -> Option<String> {
    // SAFETY: getpwuid_r writes into our buffer and `pwd`; we read pw_name only on success.
    unsafe {
        let mut pwd: libc::passwd = std::mem::zeroed();
        let mut buf = vec![0 as libc::c_char; 4096];
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        );
        if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
            return None;
        }
        Some(
            std::ffi::CStr::from_ptr(pwd.pw_name)
                .to_string_lossy()
                .into_owned(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    fn resolve(dsn: Option<&str>, env: &[(&str, &str)]) -> Result<ConnParams, ParamsError> {
        let env = env_of(env);
        let d = Defaults {
            socket_dir_exists: &|_| false,
            os_user: &|| Some("osuser".into()),
        };
        ConnParams::resolve_with(dsn, &env, None, &d)
    }

    #[test]
    fn defaults_like_libpq() {
        let p = resolve(None, &[]).unwrap();
        assert_eq!(p.host, Host::Tcp("localhost".into()));
        assert_eq!(p.port, 5432);
        assert_eq!(p.user, "osuser");
        assert_eq!(p.dbname, "osuser");
        assert_eq!(p.application_name, "walwatch");
        assert_eq!(p.password(), None);
        assert_eq!(p.connect_timeout, None);
        // $USER wins over the passwd entry.
        let p = resolve(None, &[("USER", "bob")]).unwrap();
        assert_eq!((p.user.as_str(), p.dbname.as_str()), ("bob", "bob"));
        // The default socket directory when it exists.
        let env = env_of(&[]);
        let d = Defaults {
            socket_dir_exists: &|_| true,
            os_user: &|| Some("osuser".into()),
        };
        let p = ConnParams::resolve_with(None, &env, None, &d).unwrap();
        assert_eq!(p.host, Host::Unix(DEFAULT_SOCKET_DIR.into()));
        assert_eq!(
            p.socket_path().unwrap(),
            PathBuf::from("/var/run/postgresql/.s.PGSQL.5432")
        );
    }

    #[test]
    fn uri_full() {
        let p = resolve(
            Some("postgresql://al%40ice:s%3Acret@db.example:6543/my%20db?application_name=cdc&connect_timeout=7"),
            &[],
        )
        .unwrap();
        assert_eq!(p.host, Host::Tcp("db.example".into()));
        assert_eq!(p.port, 6543);
        assert_eq!(p.user, "al@ice");
        assert_eq!(p.password(), Some("s:cret"));
        assert_eq!(p.dbname, "my db");
        assert_eq!(p.application_name, "cdc");
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(7)));
    }

    #[test]
    fn uri_socket_and_ipv6() {
        let p = resolve(Some("postgres:///shop?host=/tmp/pg&port=5433"), &[]).unwrap();
        assert_eq!(p.host, Host::Unix("/tmp/pg".into()));
        assert_eq!(
            p.socket_path().unwrap(),
            PathBuf::from("/tmp/pg/.s.PGSQL.5433")
        );
        assert_eq!(p.dbname, "shop");
        let p = resolve(Some("postgres://%2Fvar%2Flib%2Fpg/shop"), &[]).unwrap();
        assert_eq!(p.host, Host::Unix("/var/lib/pg".into()));
        let p = resolve(Some("postgres://u@[::1]:5444/d"), &[]).unwrap();
        assert_eq!(p.host, Host::Tcp("::1".into()));
        assert_eq!(p.port, 5444);
        assert_eq!(p.target(), "[::1]:5444");
    }

    #[test]
    fn key_value() {
        let p = resolve(
            Some(r"host=h1 port = 5999 user='o\'brien' password='a b\\c' dbname=x application_name=it\ s"),
            &[],
        )
        .unwrap();
        assert_eq!(p.host, Host::Tcp("h1".into()));
        assert_eq!(p.port, 5999);
        assert_eq!(p.user, "o'brien");
        assert_eq!(p.password(), Some(r"a b\c"));
        assert_eq!(p.dbname, "x");
        assert_eq!(p.application_name, "it s");
    }

    #[test]
    fn bad_dsns() {
        assert!(matches!(
            resolve(Some("host=x port=abc"), &[]),
            Err(ParamsError::InvalidValue { .. })
        ));
        assert!(matches!(
            resolve(Some("host=x bogus=1"), &[]),
            Err(ParamsError::UnknownOption(_))
        ));
        assert!(matches!(
            resolve(Some("host='x"), &[]),
            Err(ParamsError::InvalidDsn(_))
        ));
        assert!(matches!(
            resolve(Some("hostx"), &[]),
            Err(ParamsError::InvalidDsn(_))
        ));
        assert!(matches!(
            resolve(Some("postgres://h/d?bad%zz=1"), &[]),
            Err(ParamsError::InvalidDsn(_))
        ));
        assert!(matches!(
            resolve(Some("postgres://h1,h2/d"), &[]),
            Err(ParamsError::Unsupported(_))
        ));
        assert!(matches!(
            resolve(Some("sslmode=verify-full"), &[]),
            Err(ParamsError::InvalidValue { ref key, .. }) if key == "sslrootcert"
        ));
        assert!(matches!(
            resolve(Some("sslmode=disable channel_binding=require"), &[]),
            Err(ParamsError::InvalidValue { ref key, .. }) if key == "channel_binding"
        ));
        assert!(matches!(
            resolve(Some("sslmode=sometimes"), &[]),
            Err(ParamsError::InvalidValue { ref key, .. }) if key == "sslmode"
        ));
    }

    #[test]
    fn tls_settings_follow_libpq() {
        let p = resolve(Some("host=h"), &[]).unwrap();
        assert_eq!(p.tls, TlsParams::default());
        assert_eq!(p.tls.mode, SslMode::Prefer);
        let p = resolve(Some("sslmode=require"), &[]).unwrap();
        assert_eq!(p.tls.mode, SslMode::Require);
        // A root certificate makes require check the chain, as in libpq.
        let p = resolve(Some("sslmode=require sslrootcert=/ca.pem"), &[]).unwrap();
        assert_eq!(p.tls.mode, SslMode::VerifyCa);
        assert_eq!(p.tls.root_cert, Some(RootCert::File("/ca.pem".into())));
        let p = resolve(
            Some("postgres://u@h/d?sslmode=verify-full&sslrootcert=system&channel_binding=require"),
            &[],
        )
        .unwrap();
        assert_eq!(p.tls.mode, SslMode::VerifyFull);
        assert_eq!(p.tls.root_cert, Some(RootCert::System));
        assert_eq!(p.tls.channel_binding, ChannelBindingMode::Require);
        let p = resolve(
            Some("host=h"),
            &[
                ("PGSSLMODE", "verify-ca"),
                ("PGSSLROOTCERT", "/r.pem"),
                ("PGSSLCERT", "/c.pem"),
                ("PGSSLKEY", "/k.pem"),
            ],
        )
        .unwrap();
        assert_eq!(p.tls.mode, SslMode::VerifyCa);
        assert_eq!(
            (p.tls.cert.as_deref(), p.tls.key.as_deref()),
            (Some(Path::new("/c.pem")), Some(Path::new("/k.pem")))
        );
        // JDBC's ssl=true.
        assert_eq!(
            resolve(Some("postgres://h/d?ssl=true"), &[])
                .unwrap()
                .tls
                .mode,
            SslMode::Require
        );
    }

    #[test]
    fn env_fills_what_dsn_leaves() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "6000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "envpw"),
            ("PGDATABASE", "envdb"),
            ("PGAPPNAME", "envapp"),
            ("PGCONNECT_TIMEOUT", "1"),
        ];
        let p = resolve(None, &env).unwrap();
        assert_eq!(p.host, Host::Tcp("envhost".into()));
        assert_eq!(p.port, 6000);
        assert_eq!(p.user, "envuser");
        assert_eq!(p.password(), Some("envpw"));
        assert_eq!(p.dbname, "envdb");
        assert_eq!(p.application_name, "envapp");
        // libpq raises 1s to 2s.
        assert_eq!(p.connect_timeout, Some(Duration::from_secs(2)));
        // The DSN wins where it speaks.
        let p = resolve(Some("postgres://dsnuser@dsnhost/dsndb"), &env).unwrap();
        assert_eq!(p.host, Host::Tcp("dsnhost".into()));
        assert_eq!(p.user, "dsnuser");
        assert_eq!(p.dbname, "dsndb");
        assert_eq!(p.port, 6000);
        assert_eq!(p.password(), Some("envpw"));
        // Empty env values count as unset; 0 timeout = none.
        let p = resolve(None, &[("PGHOST", ""), ("PGCONNECT_TIMEOUT", "0")]).unwrap();
        assert_eq!(p.host, Host::Tcp("localhost".into()));
        assert_eq!(p.connect_timeout, None);
        // dbname defaults to the resolved user.
        let p = resolve(Some("user=carol"), &[]).unwrap();
        assert_eq!(p.dbname, "carol");
    }

    #[test]
    fn options_from_the_dsn_or_pgoptions() {
        // key=value, quoted, with libpq's `\ ` for a space inside one switch's value kept as is:
        // the server splits the string itself (pg_split_opts).
        let p = resolve(
            Some(r"host=h options='-c search_path=foo -c statement_timeout=5s -c x.y=a\\ b'"),
            &[],
        )
        .unwrap();
        assert_eq!(
            p.options.as_deref(),
            Some(r"-c search_path=foo -c statement_timeout=5s -c x.y=a\ b")
        );
        // URI, percent-encoded.
        let p = resolve(Some("postgres://u@h/d?options=-c%20search_path%3Dfoo"), &[]).unwrap();
        assert_eq!(p.options.as_deref(), Some("-c search_path=foo"));
        // PGOPTIONS when the DSN has none; the DSN wins when it has one.
        let env = [("PGOPTIONS", "-c work_mem=64MB")];
        let p = resolve(Some("host=h"), &env).unwrap();
        assert_eq!(p.options.as_deref(), Some("-c work_mem=64MB"));
        let p = resolve(Some("host=h options=-cgeqo=off"), &env).unwrap();
        assert_eq!(p.options.as_deref(), Some("-cgeqo=off"));
        assert_eq!(resolve(Some("host=h"), &[]).unwrap().options, None);
        // Both connections get them, and the redacted DSN keeps them (and resolves back).
        let p = resolve(Some("host=h options='-c search_path=a,b'"), &[]).unwrap();
        assert_eq!(
            p.tokio_postgres_config().get_options(),
            Some("-c search_path=a,b")
        );
        assert!(
            p.redacted().ends_with("&options=-c%20search_path%3Da%2Cb"),
            "{}",
            p.redacted()
        );
        let back = resolve(Some(&p.redacted()), &[]).unwrap();
        assert_eq!(back.options, p.options);
        assert_eq!(
            resolve(Some("host=h"), &[])
                .unwrap()
                .tokio_postgres_config()
                .get_options(),
            None
        );
    }

    fn params(host: Host, port: u16, db: &str, user: &str) -> ConnParams {
        ConnParams {
            host,
            port,
            user: user.into(),
            password: None,
            dbname: db.into(),
            application_name: "walwatch".into(),
            connect_timeout: None,
            tls: TlsParams::default(),
            options: None,
        }
    }

    #[test]
    fn pgpass_matching() {
        let text = "\
# comment
db.example:5432:shop:alice:first
*:*:shop:bob:bobpw
db\\:weird:5432:*:*:colon\\:host
localhost:5432:*:carol:sockpw
/tmp/pg:5433:*:carol:tmpsock
*:*:*:*:pw:with:colons
";
        let tcp = |h: &str| Host::Tcp(h.into());
        let look = |h, port, db, u| pgpass_lookup(text, &params(h, port, db, u));
        assert_eq!(
            look(tcp("db.example"), 5432, "shop", "alice").as_deref(),
            Some("first")
        );
        assert_eq!(
            look(tcp("other"), 1, "shop", "bob").as_deref(),
            Some("bobpw")
        );
        assert_eq!(
            look(tcp("db:weird"), 5432, "x", "y").as_deref(),
            Some("colon:host")
        );
        assert_eq!(
            look(tcp("localhost"), 5432, "d", "carol").as_deref(),
            Some("sockpw")
        );
        let default_sock = Host::Unix(DEFAULT_SOCKET_DIR.into());
        assert_eq!(
            look(default_sock, 5432, "d", "carol").as_deref(),
            Some("sockpw")
        );
        assert_eq!(
            look(Host::Unix("/tmp/pg".into()), 5433, "d", "carol").as_deref(),
            Some("tmpsock")
        );
        // First match wins; the catch-all keeps colons in the password.
        assert_eq!(
            look(tcp("db.example"), 5432, "shop2", "alice").as_deref(),
            Some("pw:with:colons")
        );
        assert_eq!(
            pgpass_lookup("h:1:d:u\n", &params(tcp("h"), 1, "d", "u")),
            None
        );
    }

    #[test]
    fn pgpass_file_permissions_and_precedence() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".pgpass");
        std::fs::write(&file, "*:*:*:*:frompass\n").unwrap();
        let d = Defaults {
            socket_dir_exists: &|_| false,
            os_user: &|| Some("osuser".into()),
        };
        let run = |dsn: Option<&str>, env: &[(&str, &str)]| {
            let env = env_of(env);
            ConnParams::resolve_with(dsn, &env, Some(dir.path()), &d).unwrap()
        };
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(run(None, &[]).password(), Some("frompass"));
        // A given password wins over the file.
        assert_eq!(run(None, &[("PGPASSWORD", "env")]).password(), Some("env"));
        assert_eq!(run(Some("password=dsn"), &[]).password(), Some("dsn"));
        // Group/world readable: ignored.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(run(None, &[]).password(), None);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert_eq!(run(None, &[]).password(), None);
        // PGPASSFILE / passfile= point elsewhere.
        let other = dir.path().join("other");
        std::fs::write(&other, "*:*:*:*:other\n").unwrap();
        std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
        let o = other.to_str().unwrap();
        assert_eq!(run(None, &[("PGPASSFILE", o)]).password(), Some("other"));
        assert_eq!(
            run(Some(&format!("passfile={o}")), &[]).password(),
            Some("other")
        );
    }

    #[test]
    fn redaction() {
        let p = resolve(Some("postgres://alice:hunter2@db:5432/shop"), &[]).unwrap();
        let shown = [
            p.redacted(),
            p.to_string(),
            format!("{p:?}"),
            format!("{p:#?}"),
        ];
        for s in &shown {
            assert!(!s.contains("hunter2"), "{s}");
        }
        assert_eq!(
            p.redacted(),
            "postgres://alice:****@db:5432/shop?application_name=walwatch"
        );
        let p = resolve(Some("host=/tmp/s user=u dbname=d"), &[]).unwrap();
        assert_eq!(
            p.redacted(),
            "postgres://u@%2Ftmp%2Fs:5432/d?application_name=walwatch"
        );
        // The redacted DSN resolves back to the same place.
        let back = resolve(Some(&p.redacted()), &[]).unwrap();
        assert_eq!(back.host, p.host);
    }

    #[test]
    fn tokio_postgres_config_mirrors_params() {
        let p = resolve(Some("postgres://alice:pw@db:6000/shop"), &[]).unwrap();
        let c = p.tokio_postgres_config();
        assert_eq!(c.get_user(), Some("alice"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        assert_eq!(c.get_dbname(), Some("shop"));
        assert_eq!(c.get_ports(), &[6000]);
        assert_eq!(c.get_application_name(), Some("walwatch-meta"));
        assert_eq!(
            c.get_hosts(),
            &[tokio_postgres::config::Host::Tcp("db".into())]
        );
    }
}
