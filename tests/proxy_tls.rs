//! The fault proxy and TLS, against real servers and real clients: client TLS terminated by
//! the proxy (psql, tokio-postgres with walwatch's own connector), a proxy without a
//! certificate answering `N`, TLS from the proxy to the server (seen on the server, in
//! pg_stat_ssl), SCRAM channel binding refused clearly and in time, and PostgreSQL 17's direct
//! SSL (a TLS ClientHello first, ALPN `postgresql`) with libpq and a raw rustls client.
//!
//! The certificates are made here (rcgen): a CA, and a certificate it signs for `localhost`
//! and 127.0.0.1, used by the proxy and, for the upstream tests, by a throwaway server with
//! `ssl = on`. Those upstream tests need a server built with SSL (`support::
//! server_has_ssl_or_skip`); tests/run.sh leaves this binary out where the server has none.

mod harness;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use support::{ScratchCluster, ScratchOptions, TEST_DATABASE, TEST_PASSWORD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use walwatch::pg::params::ConnParams;
use walwatch::proxy::{self, Proxy, ProxyAction};

/// How long any one client may take to connect, fail or run its statements.
const DEADLINE: Duration = Duration::from_secs(30);

/// A CA and a certificate it signed for `localhost` and 127.0.0.1, as PEM files in `dir`.
struct Certs {
    dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "walwatch proxy test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(path("proxy.crt"), cert.pem()).unwrap();
    std::fs::write(path("proxy.key"), key.serialize_pem()).unwrap();
    Certs {
        ca: path("ca.pem"),
        cert: path("proxy.crt"),
        key: path("proxy.key"),
        dir,
    }
}

/// A server of its own with `ssl = on`, serving this certificate and key.
fn ssl_cluster(cert: &Path, key: &Path) -> ScratchCluster {
    let cluster = support::own_cluster(ScratchOptions::default());
    // The server reads its key as the data directory's owner, and wants it private.
    let data = cluster.data_dir().to_path_buf();
    let owner = std::fs::metadata(&data).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for (name, from) in [
        ("proxytest-server.crt", cert),
        ("proxytest-server.key", key),
    ] {
        let path = data.join(name);
        std::fs::copy(from, &path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    cluster
        .psql(
            "postgres",
            "ALTER SYSTEM SET ssl_cert_file = 'proxytest-server.crt';
             ALTER SYSTEM SET ssl_key_file = 'proxytest-server.key';
             ALTER SYSTEM SET ssl = on;
             SELECT pg_reload_conf();",
        )
        .unwrap();
    support::wait_until("ssl to be on", DEADLINE, || {
        (cluster.psql("postgres", "SHOW ssl").ok()? == "on").then_some(())
    });
    cluster
}

fn shared_upstream() -> String {
    format!("127.0.0.1:{}", support::cluster().port())
}

/// A fresh table `(id int primary key)` owned by the test role, on the shared cluster.
fn table(prefix: &str) -> String {
    let t = support::unique_name(prefix);
    harness::sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    t
}

/// psql (the server's, so libpq of that version) with a libpq connection string; statements
/// as `-c` arguments, stopping at the first error.
fn psql(bin: &Path, conninfo: &str, password: &str, statements: &[&str]) -> Output {
    let mut cmd = Command::new(bin.join("psql"));
    cmd.args(["-X", "-At", "-v", "ON_ERROR_STOP=1"]);
    for s in statements {
        cmd.args(["-c", s]);
    }
    cmd.arg(conninfo)
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env("LC_MESSAGES", "C")
        // A root certificate in ~/.postgresql would turn sslmode=require into verify-ca.
        .env("PGSSLROOTCERT", "/nonexistent/walwatch-test-root.crt")
        .env_remove("PGSSLMODE")
        .env_remove("PGCHANNELBINDING");
    support::run_with_deadline(cmd, DEADLINE, &format!("psql {conninfo}"))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

fn assert_success(out: &Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", stderr(out));
}

fn conninfo(port: u16, user: &str, extra: &str) -> String {
    format!(
        "host=localhost hostaddr=127.0.0.1 port={port} user={user} dbname={TEST_DATABASE} {extra}"
    )
}

/// tokio-postgres with walwatch's own TLS connector (src/pg/tls.rs), as walwatch's metadata
/// connection uses it.
async fn walwatch_client(port: u16, options: &str) -> Result<tokio_postgres::Client, String> {
    let dsn =
        format!("postgres://walwatch:{TEST_PASSWORD}@localhost:{port}/{TEST_DATABASE}?{options}");
    let params = ConnParams::resolve(Some(&dsn), &|_| None, None).map_err(|e| e.to_string())?;
    let config = walwatch::config::Config::new(params);
    tokio::time::timeout(DEADLINE, walwatch::session::connect_meta(&config))
        .await
        .map_err(|_| format!("connecting with {options} took over {DEADLINE:?}"))?
        .map_err(|e| format!("{e:#}"))
}

fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a server error, got: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// A proxy terminating TLS with `certs` in front of the shared cluster; with `failing`, the
/// INSERTs into that table fail with `disk full` (53100).
async fn tls_proxy(certs: &Certs, failing: Option<&str>) -> Proxy {
    let upstream = tokio::task::spawn_blocking(shared_upstream).await.unwrap();
    let mut b = Proxy::builder(upstream).tls(&certs.cert, &certs.key);
    if let Some(t) = failing {
        let fault = proxy::error(&format!("INSERT INTO {t}*"), "disk full").sqlstate("53100");
        b = b.fault(fault);
    }
    b.start()
        .await
        .expect("the proxy starts with a certificate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_terminates_client_tls_and_still_injects_errors() {
    let certs = certs();
    let t = tokio::task::spawn_blocking(|| table("pxtls_term"))
        .await
        .unwrap();
    let p = tls_proxy(&certs, Some(&t)).await;
    let port = p.addr().port();
    let bin = support::cluster().bin_dir().to_path_buf();

    // psql, sslmode=require: TLS to the proxy, queries through, the error injected.
    let ca = certs.ca.display().to_string();
    let out = tokio::task::spawn_blocking({
        let (bin, t, ca) = (bin.clone(), t.clone(), ca.clone());
        move || {
            let require = psql(
                &bin,
                &conninfo(port, "walwatch", "sslmode=require"),
                TEST_PASSWORD,
                &["SELECT 40 + 2", &format!("INSERT INTO {t} VALUES (1)")],
            );
            // verify-full against the test CA: the certificate the client got is the proxy's,
            // and the session is TLS (verify-full never goes without).
            let verified = psql(
                &bin,
                &conninfo(
                    port,
                    "walwatch",
                    &format!("sslmode=verify-full sslrootcert={ca}"),
                ),
                TEST_PASSWORD,
                &[&format!("INSERT INTO {t} VALUES (2)"), "SELECT 'after'"],
            );
            // The proxy's TLS ends at the proxy: the server sees a plain connection.
            let upstream_ssl = psql(
                &bin,
                &conninfo(port, "walwatch", "sslmode=require"),
                TEST_PASSWORD,
                &["SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"],
            );
            (require, verified, upstream_ssl)
        }
    })
    .await
    .unwrap();
    let (require, verified, upstream_ssl) = out;
    assert!(!require.status.success(), "the INSERT must fail");
    assert_eq!(stdout(&require), "42", "{}", stderr(&require));
    assert!(
        stderr(&require).contains("ERROR:  disk full"),
        "{}",
        stderr(&require)
    );
    assert!(!verified.status.success());
    assert!(
        stderr(&verified).contains("ERROR:  disk full"),
        "verify-full with the test CA: {}",
        stderr(&verified)
    );
    assert_success(&upstream_ssl, "psql over TLS");
    assert_eq!(stdout(&upstream_ssl), "f");

    // tokio-postgres with walwatch's rustls connector, verify-full.
    let c = walwatch_client(port, &format!("sslmode=verify-full&sslrootcert={ca}"))
        .await
        .expect("tokio-postgres with verify-full through the proxy");
    let row = c.query_one("SELECT 40 + 2", &[]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    let e = c
        .execute(&format!("INSERT INTO {t} VALUES ($1)"), &[&3i32])
        .await
        .unwrap_err();
    assert_eq!(db_error(&e), ("53100".into(), "disk full".into()));
    let e = c
        .simple_query(&format!("INSERT INTO {t} VALUES (4)"))
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).0, "53100");
    assert_eq!(
        c.query_one("SELECT 'usable'::text", &[])
            .await
            .unwrap()
            .get::<_, String>(0),
        "usable"
    );
    // Another CA: the handshake with the proxy is refused by the client.
    let other = certs_dir_with_other_ca();
    let e = walwatch_client(
        port,
        &format!("sslmode=verify-full&sslrootcert={}", other.ca.display()),
    )
    .await
    .expect_err("a certificate from another CA is refused");
    assert!(e.contains("TLS"), "{e}");
    let errors = p
        .events()
        .all()
        .iter()
        .filter(|e| e.data.action == ProxyAction::Error)
        .count();
    assert_eq!(errors, 4, "{:#?}", p.events().all());
}

/// A second, unrelated CA (its own files).
fn certs_dir_with_other_ca() -> Certs {
    certs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_without_a_certificate_answers_n() {
    let p = Proxy::builder(tokio::task::spawn_blocking(shared_upstream).await.unwrap())
        .start()
        .await
        .unwrap();
    let port = p.addr().port();
    // The SSLRequest's answer, byte for byte.
    let mut s = tokio::net::TcpStream::connect(p.addr()).await.unwrap();
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut answer))
        .await
        .expect("an answer to SSLRequest")
        .unwrap();
    assert_eq!(&answer, b"N");
    drop(s);

    let bin = support::cluster().bin_dir().to_path_buf();
    let (prefer, require) = tokio::task::spawn_blocking(move || {
        (
            psql(
                &bin,
                &conninfo(port, "walwatch", "sslmode=prefer"),
                TEST_PASSWORD,
                &["SELECT 40 + 2"],
            ),
            psql(
                &bin,
                &conninfo(port, "walwatch", "sslmode=require"),
                TEST_PASSWORD,
                &["SELECT 40 + 2"],
            ),
        )
    })
    .await
    .unwrap();
    assert_success(&prefer, "sslmode=prefer goes on in plain text");
    assert_eq!(stdout(&prefer), "42");
    assert!(!require.status.success());
    assert!(
        stderr(&require).contains("server does not support SSL, but SSL was required"),
        "{}",
        stderr(&require)
    );
    // walwatch's own client says it as clearly.
    let c = walwatch_client(port, "sslmode=prefer").await.unwrap();
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
    let e = walwatch_client(port, "sslmode=require")
        .await
        .err()
        .unwrap();
    assert!(e.to_lowercase().contains("tls") || e.contains("SSL"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_reaches_the_server_over_tls_when_the_upstream_asks() {
    if !support::server_has_ssl_or_skip("proxy_tls::the_proxy_reaches_the_server_over_tls") {
        return;
    }
    let certs = certs();
    let (cert, key) = (certs.cert.clone(), certs.key.clone());
    let cluster = tokio::task::spawn_blocking(move || ssl_cluster(&cert, &key))
        .await
        .unwrap();
    cluster
        .psql(
            TEST_DATABASE,
            "SET ROLE walwatch; CREATE TABLE up_t (id int PRIMARY KEY);",
        )
        .unwrap();
    let ssl_of = |proxy: &Proxy, user: &'static str| {
        let dsn = format!(
            "postgres://{user}:{TEST_PASSWORD}@{}/{TEST_DATABASE}",
            proxy.addr()
        );
        async move {
            let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("{user} through the proxy: {e}"));
            tokio::spawn(conn);
            let ssl: bool = c
                .query_one(
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (c, ssl)
        }
    };
    let tls = Proxy::builder(format!(
        "postgres://127.0.0.1:{}/?sslmode=require",
        cluster.port()
    ))
    .fault(proxy::error("INSERT INTO up_t*", "disk full").sqlstate("53100"))
    .start()
    .await
    .unwrap();
    // SCRAM (the client is plain: it offers no channel binding) and md5.
    for user in ["walwatch", "walwatch_md5"] {
        let (c, ssl) = ssl_of(&tls, user).await;
        assert!(
            ssl,
            "{user}: the server sees the proxy's connection without SSL"
        );
        let e = c
            .execute("INSERT INTO up_t VALUES ($1)", &[&1i32])
            .await
            .unwrap_err();
        assert_eq!(db_error(&e).0, "53100", "errors are injected over TLS too");
        assert_eq!(
            c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
            1
        );
    }
    // The control: the same server through a proxy told sslmode=disable.
    let plain = Proxy::builder(format!(
        "postgres://127.0.0.1:{}/?sslmode=disable",
        cluster.port()
    ))
    .start()
    .await
    .unwrap();
    let (_, ssl) = ssl_of(&plain, "walwatch").await;
    assert!(!ssl, "sslmode=disable upstream, yet the server saw SSL");

    // sslmode=require against a server without TLS: the client is told why.
    let no_tls = Proxy::builder(format!(
        "postgres://127.0.0.1:{}/?sslmode=require",
        tokio::task::spawn_blocking(|| support::cluster().port())
            .await
            .unwrap()
    ))
    .start()
    .await
    .unwrap();
    let dsn = format!(
        "postgres://walwatch:{TEST_PASSWORD}@{}/{TEST_DATABASE}",
        no_tls.addr()
    );
    let e = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .err()
        .expect("the upstream refuses TLS");
    let (code, message) = db_error(&e);
    assert_eq!(code, "08001");
    assert!(message.contains("does not accept TLS"), "{message}");
    drop(cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_channel_binding_through_a_tls_terminating_proxy_fails_clearly() {
    if !support::server_has_ssl_or_skip("proxy_tls::scram_channel_binding") {
        return;
    }
    let certs = certs();
    let (cert, key) = (certs.cert.clone(), certs.key.clone());
    let cluster = tokio::task::spawn_blocking(move || ssl_cluster(&cert, &key))
        .await
        .unwrap();
    let bin = cluster.bin_dir().to_path_buf();
    // TLS at both ends of the proxy: the client's binding is to the proxy's session, the
    // server's to its own.
    let both = Proxy::builder(format!(
        "postgres://127.0.0.1:{}/?sslmode=require",
        cluster.port()
    ))
    .tls(&certs.cert, &certs.key)
    .start()
    .await
    .unwrap();
    // TLS at the client's end only: the server offers no SCRAM-SHA-256-PLUS.
    let client_only = tls_proxy(&certs, None).await;
    let (bp, cp) = (both.addr().port(), client_only.addr().port());
    let runs = tokio::task::spawn_blocking(move || {
        let run = |port: u16, extra: &str| {
            let started = Instant::now();
            let out = psql(
                &bin,
                &conninfo(port, "walwatch", extra),
                TEST_PASSWORD,
                &["SELECT 40 + 2"],
            );
            (out, started.elapsed())
        };
        (
            run(bp, "sslmode=require channel_binding=require"),
            run(bp, "sslmode=require"),
            run(bp, "sslmode=require channel_binding=disable"),
            run(cp, "sslmode=require channel_binding=require"),
        )
    })
    .await
    .unwrap();
    let (required, preferred, disabled, without_plus) = runs;
    let why = "SCRAM channel binding cannot work through this proxy";
    for (what, (out, took)) in [
        ("channel_binding=require", &required),
        ("channel_binding=prefer (libpq's default)", &preferred),
    ] {
        assert!(!out.status.success(), "{what}: {}", stdout(out));
        let err = stderr(out);
        assert!(err.contains(why), "{what}: {err}");
        assert!(
            err.contains("channel_binding=disable"),
            "says what to do: {err}"
        );
        assert!(*took < Duration::from_secs(10), "{what} took {took:?}");
    }
    assert_success(&disabled.0, "channel_binding=disable through the proxy");
    assert_eq!(stdout(&disabled.0), "42");
    // No binding offered at all: libpq's own refusal, at once.
    let (out, took) = &without_plus;
    assert!(!out.status.success());
    assert!(
        stderr(out).contains("channel binding is required, but server did not offer an authentication method that supports channel binding"),
        "{}",
        stderr(out)
    );
    assert!(*took < Duration::from_secs(10), "took {took:?}");
    // One error event per refusal (require and prefer).
    let refused = both
        .events()
        .all()
        .iter()
        .filter(|e| e.data.action == ProxyAction::Error)
        .filter(|e| e.data.message.as_deref().is_some_and(|m| m.contains(why)))
        .count();
    assert_eq!(refused, 2, "{:#?}", both.events().all());
    drop(cluster);
}

/// A rustls client for direct SSL to the proxy, trusting `ca`, offering `alpn`.
async fn direct_tls(
    addr: std::net::SocketAddr,
    ca: &Path,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(
        DEADLINE,
        connector.connect(ServerName::try_from("localhost").unwrap(), tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("the TLS handshake hung"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_ssl_with_alpn_postgresql_reaches_the_server() {
    let certs = certs();
    let t = tokio::task::spawn_blocking(|| table("pxtls_direct"))
        .await
        .unwrap();
    let p = tls_proxy(&certs, Some(&t)).await;
    // The ClientHello is the first thing on the wire: no SSLRequest.
    let tls = direct_tls(p.addr(), &certs.ca, &[b"postgresql"])
        .await
        .expect("the direct TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    // The startup packet and everything after it inside that TLS session: tokio-postgres on
    // the established stream, told not to negotiate TLS again.
    let mut config = tokio_postgres::Config::new();
    config
        .user("walwatch")
        .password(TEST_PASSWORD)
        .dbname(TEST_DATABASE)
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (c, conn) = config
        .connect_raw(tls, tokio_postgres::NoTls)
        .await
        .expect("startup inside direct SSL");
    tokio::spawn(conn);
    assert_eq!(
        c.query_one("SELECT 40 + 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        42
    );
    let e = c
        .execute(&format!("INSERT INTO {t} VALUES ($1)"), &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(db_error(&e), ("53100".into(), "disk full".into()));
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );

    // Inside TLS, another SSLRequest is refused as the server refuses it.
    let mut tls = direct_tls(p.addr(), &certs.ca, &[b"postgresql"])
        .await
        .unwrap();
    tls.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut reply))
        .await
        .expect("an answer, not a hang");
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    assert!(String::from_utf8_lossy(&reply).contains("already encrypted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_ssl_without_alpn_postgresql_is_refused() {
    let certs = certs();
    let p = tls_proxy(&certs, None).await;
    // No ALPN at all: the handshake completes, then the proxy says why and closes.
    let mut tls = direct_tls(p.addr(), &certs.ca, &[])
        .await
        .expect("a handshake without ALPN completes");
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut reply))
        .await
        .expect("the proxy closes, not hangs");
    assert_eq!(reply.first(), Some(&b'E'), "an ErrorResponse: {reply:?}");
    let text = String::from_utf8_lossy(&reply);
    assert!(text.contains("08P01") && text.contains("ALPN"), "{text}");
    // Only another protocol: refused in the handshake (no_application_protocol).
    let e = direct_tls(p.addr(), &certs.ca, &[b"http/1.1"])
        .await
        .expect_err("ALPN without postgresql fails the handshake");
    assert!(e.to_string().to_lowercase().contains("application"), "{e}");
    let events = p.events().all();
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].data.action, ProxyAction::Error);
    assert_eq!(events[0].data.sqlstate.as_deref(), Some("08P01"));
    assert!(events[0].data.message.as_deref().unwrap().contains("ALPN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_ssl_to_a_proxy_without_a_certificate_fails_at_once() {
    let certs = certs();
    let p = Proxy::builder(tokio::task::spawn_blocking(shared_upstream).await.unwrap())
        .start()
        .await
        .unwrap();
    let started = Instant::now();
    let e = direct_tls(p.addr(), &certs.ca, &[b"postgresql"])
        .await
        .expect_err("no TLS without a certificate");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // rustls names the alert the proxy sent.
    assert!(e.to_string().contains("HandshakeFailure"), "{e}");
    let events = p.events().all();
    assert_eq!(events.len(), 1, "{events:#?}");
    let message = events[0].data.message.as_deref().unwrap();
    assert!(
        message.contains("direct SSL") && message.contains("--tls-cert"),
        "{message}"
    );
    // The proxy still serves plain clients.
    let dsn = format!(
        "postgres://walwatch:{TEST_PASSWORD}@{}/{TEST_DATABASE}",
        p.addr()
    );
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(
        c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0),
        1
    );
}

/// `walwatch proxy` (the binary) on a free port; its stderr goes to `log`.
struct CliProxy {
    child: std::process::Child,
    port: u16,
}

impl Drop for CliProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli_proxy(extra: &[&std::ffi::OsStr], log: &Path) -> CliProxy {
    let port = support::free_port();
    let child = harness::walwatch()
        .args(["proxy", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &shared_upstream()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let proxy = CliProxy { child, port };
    support::wait_until_or(
        "the proxy to listen",
        DEADLINE,
        || std::fs::read_to_string(log).unwrap_or_default(),
        || {
            std::fs::read_to_string(log)
                .ok()?
                .contains("listening on")
                .then_some(())
        },
    );
    proxy
}

#[test]
fn libpq_direct_ssl_through_the_cli_proxy() {
    let bin = support::cluster().bin_dir().to_path_buf();
    let major = support::server_major_version(&bin).expect("the server's version");
    if major < 17 {
        // libpq learnt sslnegotiation=direct in 17: this run's psql cannot ask for it. The
        // raw rustls tests above cover direct SSL here; tests/run.sh runs this binary on
        // PostgreSQL 17 too, whose psql this test uses.
        eprintln!(
            "libpq_direct_ssl_through_the_cli_proxy: psql {major} has no sslnegotiation=direct \
             (libpq 17+); covered by the PostgreSQL 17 run of tests/run.sh"
        );
        return;
    }
    let certs = certs();
    let t = table("pxtls_libpq");
    let log = certs.dir.path().join("tls-proxy.log");
    let tls = cli_proxy(
        &[
            "--tls-cert".as_ref(),
            certs.cert.as_os_str(),
            "--tls-key".as_ref(),
            certs.key.as_os_str(),
            "--fault".as_ref(),
            format!("error:INSERT INTO {t}*:disk full").as_ref(),
        ],
        &log,
    );
    let direct = format!(
        "sslnegotiation=direct sslmode=verify-full sslrootcert={}",
        certs.ca.display()
    );
    let out = psql(
        &bin,
        &conninfo(tls.port, "walwatch", &direct),
        TEST_PASSWORD,
        &["SELECT 40 + 2", &format!("INSERT INTO {t} VALUES (1)")],
    );
    assert_eq!(stdout(&out), "42", "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ERROR:  disk full"),
        "{}",
        stderr(&out)
    );
    // The same with sslmode=require, and channel binding off (the upstream is plain anyway).
    let out = psql(
        &bin,
        &conninfo(
            tls.port,
            "walwatch_md5",
            "sslnegotiation=direct sslmode=require",
        ),
        TEST_PASSWORD,
        &["SELECT current_user"],
    );
    assert_success(&out, "direct SSL, sslmode=require");
    assert_eq!(stdout(&out), "walwatch_md5");

    // A proxy without a certificate: libpq fails at once, and the proxy's log says why.
    let log = certs.dir.path().join("plain-proxy.log");
    let plain = cli_proxy(&[], &log);
    let started = Instant::now();
    let out = psql(
        &bin,
        &conninfo(
            plain.port,
            "walwatch",
            "sslnegotiation=direct sslmode=require",
        ),
        TEST_PASSWORD,
        &["SELECT 1"],
    );
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        stderr(&out).contains("handshake failure"),
        "libpq reports the proxy's alert: {}",
        stderr(&out)
    );
    let line = support::wait_until_or(
        "the refusal in the proxy's log",
        DEADLINE,
        || std::fs::read_to_string(&log).unwrap_or_default(),
        || {
            std::fs::read_to_string(&log)
                .ok()?
                .lines()
                .find(|l| l.contains("direct SSL"))
                .map(str::to_string)
        },
    );
    assert!(line.contains("--tls-cert"), "{line}");
}

#[test]
fn proxy_cli_refuses_unusable_certificates() {
    let certs = certs();
    let out = harness::walwatch()
        .args([
            "proxy",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:1",
        ])
        .arg("--tls-cert")
        .arg(certs.dir.path().join("missing.crt"))
        .arg("--tls-key")
        .arg(&certs.key)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot read the certificate"), "{err}");
}
