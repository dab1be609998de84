//! Integration tests of the replication connection against scratch PostgreSQL clusters
//! (`walwatch::scratch`).
//!
//! Tests that need no special server settings use this binary's shared cluster
//! (`support::cluster()`, roles `walwatch*` and database `walwatch`, see `src/scratch.rs`) with
//! unique slot names. Tests that need other settings (`wal_sender_timeout`, `wal_level`,
//! `max_replication_slots`, `pg_hba.conf`) start a cluster of their own, stopped and removed on
//! drop, also when the test fails.
//!
//! These tests never skip: without PostgreSQL binaries they fail, and the error says how to
//! install them or point `WALWATCH_PG_BIN` at them.

mod support;

use std::time::{Duration, Instant};

use support::{ClusterHandle, ScratchCluster, ScratchOptions, TEST_DATABASE, TEST_PASSWORD};
use walwatch::Lsn;
use walwatch::pg::conn::ReplConn;
use walwatch::pg::error::PgError;
use walwatch::pg::params::ConnParams;
use walwatch::pg::stream::ReplMessage;

/// The shared cluster of this test binary (starting it blocks: off the runtime's threads).
async fn shared() -> &'static ClusterHandle {
    tokio::task::spawn_blocking(support::cluster)
        .await
        .expect("starting the shared cluster")
}

/// A cluster of this test's own; panics (no skipping) when PostgreSQL cannot be started.
async fn own(opts: ScratchOptions) -> ScratchCluster {
    tokio::task::spawn_blocking(move || support::own_cluster(opts))
        .await
        .expect("starting a scratch cluster")
}

/// Runs `sql` as the superuser through `psql` over the unix socket.
async fn psql(c: &ClusterHandle, db: &str, sql: &str) -> String {
    let (c, db, sql) = (c.clone(), db.to_owned(), sql.to_owned());
    tokio::task::spawn_blocking(move || c.psql(&db, &sql))
        .await
        .expect("psql task")
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Connection parameters from a DSN alone (no environment, no password file).
fn params(dsn: &str) -> ConnParams {
    ConnParams::resolve(Some(dsn), &|_| None, None).unwrap_or_else(|e| panic!("{dsn}: {e}"))
}

/// `host=127.0.0.1 port=<port of c> <rest>`: TCP, with only the keys of `rest`.
fn tcp(c: &ClusterHandle, rest: &str) -> ConnParams {
    params(&format!("host=127.0.0.1 port={} {rest}", c.port()))
}

#[tokio::test]
async fn connects_with_each_auth_method() {
    let c = shared().await;
    for (what, p) in [
        // trust: no password given at all.
        ("trust", tcp(c, "user=walwatch_trust dbname=walwatch")),
        (
            "password",
            params(&c.dsn_for("walwatch_clear", TEST_DATABASE)),
        ),
        ("md5", params(&c.dsn_for("walwatch_md5", TEST_DATABASE))),
        ("scram-sha-256", params(&c.dsn(TEST_DATABASE))),
    ] {
        let mut conn = ReplConn::connect(&p)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(conn.server_version_num() >= 150000, "{what}");
        assert!(conn.backend_key().is_some());
        // The pinned settings took effect.
        assert_eq!(conn.parameter("DateStyle"), Some("ISO, MDY"));
        assert_eq!(conn.parameter("TimeZone"), Some("UTC"));
        assert_eq!(conn.parameter("client_encoding"), Some("UTF8"));
        // SHOW goes through the replication grammar on a walsender.
        let rows = conn.simple_query("SHOW extra_float_digits").await.unwrap();
        assert_eq!(rows, vec![vec![Some("3".to_string())]]);
        // Several SQL statements: the rows of the last result set.
        let rows = conn
            .simple_query("SELECT 0; SELECT 1 AS one, NULL::text AS n")
            .await
            .unwrap();
        assert_eq!(rows, vec![vec![Some("1".to_string()), None]]);
        let sys = conn.identify_system().await.unwrap();
        assert_eq!(sys.dbname.as_deref(), Some(TEST_DATABASE));
        assert_eq!(sys.timeline, 1);
        assert!(sys.xlogpos > Lsn::ZERO);
        assert!(sys.systemid > 0);
        conn.close().await.unwrap();
    }
    // Over the unix socket (trust), like psql with host=/dir.
    let dsn = format!(
        "host={} port={} user=postgres",
        c.socket_dir().display(),
        c.port()
    );
    let mut conn = ReplConn::connect(&params(&dsn)).await.unwrap();
    let r = conn.simple_query_result("SELECT 'a' AS x").await.unwrap();
    assert_eq!(r.columns, vec!["x".to_string()]);
    assert_eq!(r.command_tag.as_deref(), Some("SELECT 1"));
    conn.close().await.unwrap();
}

#[tokio::test]
async fn auth_and_permission_errors_are_mapped() {
    let c = shared().await;
    // Wrong password → 28P01 with advice; never the password itself.
    let e = ReplConn::connect(&tcp(
        c,
        "user=walwatch password='wrong secret' dbname=walwatch",
    ))
    .await
    .unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("28P01"), "{s}");
    assert!(s.contains("check the password"), "{s}");
    assert!(!s.contains("wrong secret"), "{s}");
    assert!(!e.is_transient());
    let e = ReplConn::connect(&tcp(c, "user=walwatch_md5 password=nope dbname=walwatch"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("28P01"), "{e}");

    // Password needed but none given.
    let e = ReplConn::connect(&tcp(c, "user=walwatch dbname=walwatch"))
        .await
        .unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, PgError::Auth(_)), "{s}");
    assert!(s.contains("PGPASSWORD") && s.contains("~/.pgpass"), "{s}");

    // Role without REPLICATION.
    let e = ReplConn::connect(&params(&c.dsn_for("walwatch_norepl", TEST_DATABASE)))
        .await
        .unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("42501"), "{s}");
    assert!(
        s.contains("ALTER ROLE \"walwatch_norepl\" REPLICATION"),
        "{s}"
    );
    assert!(!s.contains(TEST_PASSWORD), "{s}");

    // Missing database.
    let e = ReplConn::connect(&tcp(c, "user=walwatch_trust dbname=nosuchdb"))
        .await
        .unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("3D000"), "{s}");
    assert!(s.contains("--dsn"), "{s}");

    // (No pg_hba.conf line: the shared cluster admits every database, so that case is checked
    // on a cluster of its own in `server_setup_errors_are_mapped`.)

    // Nobody listening.
    let dsn = format!(
        "host=127.0.0.1 port={} user=x connect_timeout=5",
        support::free_port()
    );
    let e = ReplConn::connect(&params(&dsn)).await.unwrap_err();
    let s = e.to_string();
    assert!(s.contains("accepting TCP connections"), "{s}");
    assert!(e.is_transient());

    // A missing slot, on a working connection.
    let slot = support::unique_name("no_such_slot");
    let conn = ReplConn::connect(&tcp(c, "user=walwatch_trust dbname=walwatch"))
        .await
        .unwrap();
    let e = conn
        .start_replication(&slot, Lsn::ZERO, &[])
        .await
        .unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("42704"), "{s}");
    assert!(s.contains(&format!("--slot {slot}")), "{s}");
}

/// Reads until `want` says stop, answering keepalives that ask for a reply. Polls `next()`
/// inside `select!` against a short timer, so a cancelled `next()` must lose nothing.
async fn pump(
    stream: &mut walwatch::pg::stream::ReplStream,
    deadline: Instant,
    mut want: impl FnMut(&ReplMessage) -> bool,
) -> Vec<ReplMessage> {
    let mut seen = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "deadline passed; saw {seen:?}");
        let msg = tokio::select! {
            m = stream.next() => m.expect("stream error").expect("server ended the copy"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
        };
        if let ReplMessage::Keepalive {
            wal_end,
            reply_requested: true,
            ..
        } = msg
        {
            stream
                .send_status(wal_end, wal_end, wal_end, false)
                .await
                .unwrap();
        }
        let done = want(&msg);
        seen.push(msg);
        if done {
            return seen;
        }
    }
}

fn first_bytes(msgs: &[ReplMessage]) -> Vec<u8> {
    msgs.iter()
        .filter_map(|m| match m {
            ReplMessage::XLogData { data, .. } => data.first().copied(),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn streams_pgoutput_and_survives_wal_sender_timeout() {
    // Own cluster: a short wal_sender_timeout is a server setting (the shared cluster keeps the
    // default 60s).
    let cluster = own(ScratchOptions {
        extra_conf: vec![("wal_sender_timeout".into(), "2s".into())],
        ..Default::default()
    })
    .await;
    let c = cluster.handle();
    psql(
        c,
        TEST_DATABASE,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         GRANT ALL ON t TO walwatch;
         CREATE PUBLICATION p FOR TABLE t;",
    )
    .await;
    let mut conn = ReplConn::connect(&params(&c.dsn(TEST_DATABASE)))
        .await
        .unwrap();
    let rows = conn
        .simple_query("CREATE_REPLICATION_SLOT x TEMPORARY LOGICAL pgoutput")
        .await
        .unwrap();
    assert_eq!(rows[0][0].as_deref(), Some("x"));
    let options: Vec<(String, String)> = [
        ("proto_version", "3"),
        ("publication_names", "\"p\""),
        ("messages", "true"),
        ("streaming", "on"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let mut stream = conn
        .start_replication("x", Lsn::ZERO, &options)
        .await
        .unwrap();

    psql(c, TEST_DATABASE, "INSERT INTO t VALUES (1, 'one')").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let msgs = pump(
        &mut stream,
        deadline,
        |m| matches!(m, ReplMessage::XLogData { data, .. } if data.first() == Some(&b'C')),
    )
    .await;
    assert_eq!(first_bytes(&msgs), b"BRIC", "{msgs:?}");

    // Stay idle past wal_sender_timeout (2s): the server pings every ~1s asking for a reply,
    // and would drop us after 2s without one. Wait until three such pings were answered.
    let mut asked = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    let started = Instant::now();
    pump(&mut stream, deadline, |m| {
        if matches!(
            m,
            ReplMessage::Keepalive {
                reply_requested: true,
                ..
            }
        ) {
            asked += 1;
        }
        asked >= 3
    })
    .await;
    assert!(started.elapsed() > Duration::from_secs(2));

    // Still alive: the next change arrives.
    psql(c, TEST_DATABASE, "INSERT INTO t VALUES (2, 'two')").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let msgs = pump(
        &mut stream,
        deadline,
        |m| matches!(m, ReplMessage::XLogData { data, .. } if data.first() == Some(&b'C')),
    )
    .await;
    assert_eq!(first_bytes(&msgs), b"BIC", "{msgs:?}");

    // A second consumer of the same slot is refused while we hold it.
    let other = ReplConn::connect(&tcp(c, "user=walwatch_trust dbname=walwatch"))
        .await
        .unwrap();
    let e = other
        .start_replication("x", Lsn::ZERO, &options)
        .await
        .unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("55006"), "{s}");
    assert!(
        s.contains("another consumer holds replication slot \"x\""),
        "{s}"
    );

    // finish() hands back a connection that takes further commands.
    let mut conn = stream.finish().await.unwrap();
    let sys = conn.identify_system().await.unwrap();
    assert!(sys.xlogpos > Lsn::ZERO);
    let rows = conn.simple_query("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(rows, vec![vec![Some("2".to_string())]]);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn server_setup_errors_are_mapped() {
    // Own cluster: wal_level and max_replication_slots need a server start, and pg_hba.conf is
    // narrowed below. The scratch pg_hba.conf admits every database over TCP; leave out all but
    // `walwatch` and `postgres` for SCRAM logins, and restart to load it (`pg_ctl restart -w`
    // returns once the server accepts connections again).
    let cluster = own(ScratchOptions {
        extra_conf: vec![("max_replication_slots".into(), "1".into())],
        ..ScratchOptions::with_wal_level("replica")
    })
    .await;
    let c = cluster.handle().clone();
    let hba_path = c.data_dir().join("pg_hba.conf");
    let hba = std::fs::read_to_string(&hba_path).unwrap();
    let generic = "host    all                  all              127.0.0.1/32  scram-sha-256\n";
    assert!(
        hba.contains(generic),
        "unexpected scratch pg_hba.conf:\n{hba}"
    );
    let narrowed = hba.replace(
        generic,
        "host    walwatch,postgres    all              127.0.0.1/32  scram-sha-256\n",
    );
    std::fs::write(&hba_path, narrowed).unwrap();
    let handle = c.clone();
    tokio::task::spawn_blocking(move || handle.restart())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));

    // No pg_hba.conf line for this database and role.
    let e = ReplConn::connect(&params(&c.dsn("template1")))
        .await
        .unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("28000"), "{s}");
    assert!(
        s.contains("add a line such as `host template1 walwatch"),
        "{s}"
    );
    assert!(!s.contains(TEST_PASSWORD), "{s}");

    let mut conn = ReplConn::connect(&tcp(&c, "user=walwatch_trust dbname=walwatch"))
        .await
        .unwrap();
    // Logical decoding needs wal_level = logical.
    let e = conn
        .simple_query("CREATE_REPLICATION_SLOT l TEMPORARY LOGICAL pgoutput")
        .await
        .unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("55000"), "{s}");
    assert!(s.contains("ALTER SYSTEM SET wal_level = logical"), "{s}");
    assert!(s.contains("restart the server"), "{s}");
    // The connection stays usable after an error.
    conn.simple_query("CREATE_REPLICATION_SLOT a PHYSICAL")
        .await
        .unwrap();
    // All (one) slots taken.
    let e = conn
        .simple_query("CREATE_REPLICATION_SLOT b PHYSICAL")
        .await
        .unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("53400"), "{s}");
    assert!(s.contains("max_replication_slots"), "{s}");
    assert!(s.contains("walwatch slots"), "{s}");
    conn.close().await.unwrap();
}
