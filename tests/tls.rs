//! TLS against a real server: a throwaway cluster with `ssl = on` and a certificate for
//! `localhost` signed by a CA generated here (rcgen). verify-full succeeds with the right CA
//! and host name and fails with the wrong ones; require works without a CA; SCRAM-SHA-256-PLUS
//! is what is negotiated over TLS (asserted, not assumed); channel_binding=require fails
//! clearly without TLS; the metadata connection is encrypted too.
//!
//! The server must be built with SSL (Debian's 15 and the PyPI 17 are; the PyPI 18 is not):
//! against one without, the TLS test fails saying so, unless `WALWATCH_PG_SSL=0` asks to skip
//! it (`support::server_has_ssl_or_skip`).

mod harness;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use walwatch::pg::conn::ReplConn;
use walwatch::pg::params::ConnParams;
use walwatch::scratch::{ScratchCluster, ScratchOptions, TEST_PASSWORD};

struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        cert,
        issuer: rcgen::Issuer::new(params, key),
    }
}

/// A cluster serving TLS with a certificate for `localhost` only (not 127.0.0.1) signed by
/// `ca`; the CA's PEM file is returned beside it.
fn tls_cluster(ca: &Ca, dir: &Path) -> (ScratchCluster, PathBuf) {
    let cluster = ScratchCluster::start(ScratchOptions::default()).expect("own cluster");
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    // The server reads its key as the data directory's owner, and wants it private.
    let data = cluster.data_dir().to_path_buf();
    let owner = std::fs::metadata(&data).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    for (name, pem) in [
        ("walwatch-server.crt", cert.pem()),
        ("walwatch-server.key", key.serialize_pem()),
        ("walwatch-ca.crt", ca.cert.pem()),
    ] {
        let path = data.join(name);
        std::fs::write(&path, pem).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    // A role that logs in with a client certificate only (CN = role name, the `cert` method).
    let hba = data.join("pg_hba.conf");
    let lines = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!("hostssl all,replication walwatch_cert 127.0.0.1/32 cert\n{lines}"),
    )
    .unwrap();
    cluster
        .psql("postgres", "CREATE ROLE walwatch_cert LOGIN REPLICATION;")
        .unwrap();
    cluster
        .psql(
            "postgres",
            "ALTER SYSTEM SET ssl_cert_file = 'walwatch-server.crt';
             ALTER SYSTEM SET ssl_key_file = 'walwatch-server.key';
             ALTER SYSTEM SET ssl_ca_file = 'walwatch-ca.crt';
             ALTER SYSTEM SET ssl = on;
             SELECT pg_reload_conf();",
        )
        .unwrap();
    support::wait_until("ssl to be on", Duration::from_secs(30), || {
        (cluster.psql("postgres", "SHOW ssl").ok()? == "on").then_some(())
    });
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    (cluster, ca_file)
}

fn params(cluster: &ScratchCluster, host: &str, options: &str) -> ConnParams {
    let dsn = format!(
        "postgres://walwatch:{TEST_PASSWORD}@{host}:{}/walwatch?{options}",
        cluster.port()
    );
    ConnParams::resolve(Some(&dsn), &|_| None, None).unwrap()
}

async fn connect(cluster: &ScratchCluster, host: &str, options: &str) -> Result<ReplConn, String> {
    ReplConn::connect(&params(cluster, host, options))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_ca_and_the_host_name_and_binds_the_channel() {
    // Needs `ssl = on`, which a server built without SSL refuses (tests/run.sh leaves this
    // binary out of the run on such a build).
    if !support::server_has_ssl_or_skip("tls::verify_full_checks_the_ca_and_the_host_name") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let right = ca("walwatch test CA");
    let (cluster, ca_file) = tls_cluster(&right, dir.path());
    let ca_opt = format!("sslrootcert={}", ca_file.display());

    // The right CA and the certificate's host name: TLS, and SCRAM bound to it.
    let conn = connect(
        &cluster,
        "localhost",
        &format!("sslmode=verify-full&{ca_opt}"),
    )
    .await
    .expect("verify-full with the right CA and host name");
    assert!(conn.is_tls());
    assert_eq!(conn.auth_mechanism(), "SCRAM-SHA-256-PLUS");

    // The same server by IP address: the certificate does not name 127.0.0.1.
    let e = connect(
        &cluster,
        "127.0.0.1",
        &format!("sslmode=verify-full&{ca_opt}"),
    )
    .await
    .expect_err("verify-full must check the host name");
    assert!(
        e.contains("TLS handshake") && e.contains("verify-full"),
        "{e}"
    );
    // verify-ca does not check the name, only the chain.
    let conn = connect(
        &cluster,
        "127.0.0.1",
        &format!("sslmode=verify-ca&{ca_opt}"),
    )
    .await
    .expect("verify-ca ignores the host name");
    assert!(conn.is_tls());

    // Another CA: refused by verify-full and verify-ca alike.
    let wrong = ca("some other CA");
    let wrong_file = dir.path().join("wrong.pem");
    std::fs::write(&wrong_file, wrong.cert.pem()).unwrap();
    for mode in ["verify-full", "verify-ca"] {
        let e = connect(
            &cluster,
            "localhost",
            &format!("sslmode={mode}&sslrootcert={}", wrong_file.display()),
        )
        .await
        .expect_err("a certificate from another CA must be refused");
        assert!(e.contains("TLS handshake"), "{mode}: {e}");
    }

    // require encrypts without a CA.
    let conn = connect(&cluster, "127.0.0.1", "sslmode=require")
        .await
        .expect("require without a CA");
    assert!(conn.is_tls());
    assert_eq!(conn.auth_mechanism(), "SCRAM-SHA-256-PLUS");
    // The default (prefer) uses TLS when the server has it.
    let conn = connect(&cluster, "127.0.0.1", "").await.unwrap();
    assert!(conn.is_tls());
    // channel_binding=disable: plain SCRAM over TLS; require: PLUS.
    let conn = connect(
        &cluster,
        "127.0.0.1",
        "sslmode=require&channel_binding=disable",
    )
    .await
    .unwrap();
    assert_eq!(conn.auth_mechanism(), "SCRAM-SHA-256");
    let conn = connect(
        &cluster,
        "127.0.0.1",
        "sslmode=require&channel_binding=require",
    )
    .await
    .unwrap();
    assert_eq!(conn.auth_mechanism(), "SCRAM-SHA-256-PLUS");
    // disable: no TLS at all.
    let conn = connect(&cluster, "127.0.0.1", "sslmode=disable")
        .await
        .unwrap();
    assert!(!conn.is_tls());
    assert_eq!(conn.auth_mechanism(), "SCRAM-SHA-256");

    // The metadata connection (tokio-postgres) is encrypted the same way.
    let mut config = walwatch::config::Config::new(params(
        &cluster,
        "localhost",
        &format!("sslmode=verify-full&{ca_opt}"),
    ));
    config.tables = Vec::new();
    let meta = walwatch::session::connect_meta(&config).await.unwrap();
    let row = meta
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the metadata connection is not TLS");
    let mut bad = config.clone();
    bad.conn = params(
        &cluster,
        "127.0.0.1",
        &format!("sslmode=verify-full&{ca_opt}"),
    );
    assert!(
        walwatch::session::connect_meta(&bad).await.is_err(),
        "the metadata connection must verify the host name too"
    );

    // A client certificate (CN = the role) instead of a password.
    let mut cp = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.distinguished_name
        .push(rcgen::DnType::CommonName, "walwatch_cert");
    let ck = rcgen::KeyPair::generate().unwrap();
    let client = cp.signed_by(&ck, &right.issuer).unwrap();
    let (crt, key) = (dir.path().join("client.crt"), dir.path().join("client.key"));
    std::fs::write(&crt, client.pem()).unwrap();
    std::fs::write(&key, ck.serialize_pem()).unwrap();
    let cert_dsn = |extra: &str| {
        format!(
            "host=localhost port={} user=walwatch_cert dbname=walwatch sslmode=verify-full \
             sslrootcert={} {extra}",
            cluster.port(),
            ca_file.display()
        )
    };
    let p = ConnParams::resolve(
        Some(&cert_dsn(&format!(
            "sslcert={} sslkey={}",
            crt.display(),
            key.display()
        ))),
        &|_| None,
        None,
    )
    .unwrap();
    let conn = ReplConn::connect(&p)
        .await
        .expect("certificate authentication");
    assert_eq!(conn.auth_mechanism(), walwatch::pg::conn::NO_PASSWORD);
    let p = ConnParams::resolve(Some(&cert_dsn("")), &|_| None, None).unwrap();
    let e = ReplConn::connect(&p).await.unwrap_err().to_string();
    assert!(
        e.contains("client certificate"),
        "without the certificate: {e}"
    );

    // And walwatch end to end over verify-full.
    let dsn = format!(
        "postgres://walwatch:{TEST_PASSWORD}@localhost:{}/walwatch?sslmode=verify-full&{ca_opt}",
        cluster.port()
    );
    cluster
        .psql(
            "walwatch",
            "SET ROLE walwatch; CREATE TABLE tls_t (id int PRIMARY KEY);",
        )
        .unwrap();
    let out = harness::walwatch()
        .args([
            "--dsn", &dsn, "--slot", "tls_slot", "--tables", "tls_t", "--endpos", "now",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster.stop().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_binding_required_against_a_server_without_tls_fails_clearly() {
    // The shared test cluster has no TLS.
    let c = support::cluster();
    let dsn = format!(
        "postgres://walwatch:{TEST_PASSWORD}@127.0.0.1:{}/walwatch?channel_binding=require",
        c.port()
    );
    let e = ReplConn::connect(&ConnParams::resolve(Some(&dsn), &|_| None, None).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("channel_binding=require") && e.contains("not TLS"),
        "{e}"
    );
    let dsn = dsn.replace("channel_binding=require", "sslmode=require");
    let e = ReplConn::connect(&ConnParams::resolve(Some(&dsn), &|_| None, None).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not accept TLS"), "{e}");
}
