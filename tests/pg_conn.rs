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

/// Runs `sql` (one row, text columns) on the metadata connection built from `p`.
async fn meta_row(p: &ConnParams, sql: &str) -> Vec<String> {
    let (client, conn) = p
        .tokio_postgres_config()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("metadata connection with {p:?}: {e}"));
    let task = tokio::spawn(conn);
    let row = client.query_one(sql, &[]).await.unwrap();
    let out = (0..row.len()).map(|i| row.get(i)).collect();
    drop(client);
    let _ = task.await;
    out
}

#[tokio::test]
async fn options_reach_both_connections_from_the_dsn_and_pgoptions() {
    let c = shared().await;
    let kv = tcp(
        c,
        r"user=walwatch_trust dbname=walwatch options='-c search_path=foo,public -c walwatch.tag=kv\\ value -c statement_timeout=5s'",
    );
    let uri = params(&format!(
        "{}?options=-c%20search_path%3Dfoo%2Cpublic%20-c%20walwatch.tag%3Duri%20-c%20statement_timeout%3D5s",
        c.dsn(TEST_DATABASE)
    ));
    let env = |k: &str| {
        (k == "PGOPTIONS")
            .then(|| "-c search_path=foo,public -c walwatch.tag=env -c statement_timeout=5s".into())
    };
    let from_env = ConnParams::resolve(
        Some(&format!(
            "host=127.0.0.1 port={} user=walwatch_trust dbname=walwatch",
            c.port()
        )),
        &env,
        None,
    )
    .unwrap();
    for (p, tag) in [(kv, "kv value"), (uri, "uri"), (from_env, "env")] {
        // The replication connection (SHOW goes through the walsender's grammar).
        let mut conn = ReplConn::connect(&p)
            .await
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
        for (guc, want) in [
            ("walwatch.tag", tag),
            ("search_path", "foo,public"),
            ("statement_timeout", "5s"),
        ] {
            let rows = conn.simple_query(&format!("SHOW {guc}")).await.unwrap();
            assert_eq!(
                rows,
                vec![vec![Some(want.to_string())]],
                "{guc} on the replication connection, options from {tag}"
            );
        }
        conn.close().await.unwrap();
        // The metadata connection.
        let got = meta_row(
            &p,
            "SELECT current_setting('walwatch.tag'), current_setting('search_path'), \
                    current_setting('statement_timeout'), application_name::text \
             FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .await;
        assert_eq!(
            got,
            [tag, "foo,public", "5s", "walwatch-meta"].map(String::from),
            "settings on the metadata connection, options from {tag}"
        );
    }
}

#[tokio::test]
async fn pinned_settings_win_over_the_same_settings_in_options() {
    let c = shared().await;
    let p = tcp(
        c,
        "user=walwatch_trust dbname=walwatch options='-c DateStyle=German,DMY \
         -c IntervalStyle=sql_standard -c TimeZone=Asia/Tokyo -c extra_float_digits=0 \
         -c client_encoding=LATIN1 -c walwatch.tag=seen'",
    );
    let mut conn = ReplConn::connect(&p).await.unwrap();
    // The options were applied (the custom GUC is there) ...
    let rows = conn.simple_query("SHOW walwatch.tag").await.unwrap();
    assert_eq!(rows, vec![vec![Some("seen".to_string())]]);
    // ... and the startup packet's pins overrode theirs: what ParameterStatus reports and what
    // SHOW says. German,DMY leaves its field order behind, which ISO output does not use.
    assert_eq!(conn.parameter("DateStyle"), Some("ISO, DMY"));
    assert_eq!(conn.parameter("IntervalStyle"), Some("postgres"));
    assert_eq!(conn.parameter("TimeZone"), Some("UTC"));
    assert_eq!(conn.parameter("client_encoding"), Some("UTF8"));
    let rows = conn.simple_query("SHOW extra_float_digits").await.unwrap();
    assert_eq!(rows, vec![vec![Some("3".to_string())]]);
    // Values come out the way decoding reads them.
    let rows = conn
        .simple_query(
            "SELECT '2024-03-05 06:07:08.5+00'::timestamptz::text, '2024-03-05'::date::text, \
                    '1 day 02:03:04'::interval::text, (0.1::float8 + 0.2::float8)::text, 'é'::text",
        )
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![
            [
                "2024-03-05 06:07:08.5+00",
                "2024-03-05",
                "1 day 02:03:04",
                // extra_float_digits=0 would round this to 0.3.
                "0.30000000000000004",
                "é"
            ]
            .map(|s| Some(s.to_string()))
            .to_vec()
        ]
    );
    conn.close().await.unwrap();
}
