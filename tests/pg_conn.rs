//! Integration tests of the replication connection against a throwaway PostgreSQL server.
//!
//! Each test starts its own cluster (temp dir, free port, unix socket inside the temp dir) and
//! stops/removes it on drop, also when the test fails. The small starter here is a stand-in for
//! the shared `scratch` module and will be swapped for it.
//!
//! Needs PostgreSQL binaries in `/usr/lib/postgresql/15/bin` (or `$PG_BIN`); skipped otherwise.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use walwatch::Lsn;
use walwatch::pg::conn::ReplConn;
use walwatch::pg::error::PgError;
use walwatch::pg::params::ConnParams;
use walwatch::pg::stream::ReplMessage;

struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    sock_dir: PathBuf,
    port: u16,
    as_root: bool,
    // Dropped (removed) after `Drop::drop` has stopped the server.
    _dir: tempfile::TempDir,
}

fn pg_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    bin.join("initdb").exists().then_some(bin)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    /// A running cluster with `wal_level=logical`, `wal_sender_timeout=2s`, and one role per
    /// authentication method, or None when no PostgreSQL is installed.
    async fn start() -> Option<Cluster> {
        Self::start_with("wal_level = logical\nmax_replication_slots = 10\n").await
    }

    /// Like [`start`](Self::start), with `conf` appended to postgresql.conf.
    async fn start_with(conf: &str) -> Option<Cluster> {
        let Some(bin) = pg_bin() else {
            eprintln!("skipping: no PostgreSQL binaries (set PG_BIN)");
            return None;
        };
        let as_root = unsafe { libc::geteuid() } == 0;
        let dir = tempfile::Builder::new()
            .prefix("walwatch-pgconn-")
            .tempdir()
            .unwrap();
        if as_root {
            // initdb refuses to run as root: the server runs as `postgres`.
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()));
        }
        let data = dir.path().join("data");
        let mut c = Cluster {
            bin,
            data,
            sock_dir: dir.path().to_path_buf(),
            port: 0,
            as_root,
            _dir: dir,
        };
        run(c.cmd("initdb").args([
            "-D",
            c.data.to_str().unwrap(),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-U",
            "postgres",
            "--no-sync",
        ]));
        std::fs::write(
            c.data.join("pg_hba.conf"),
            "local all all trust\n\
             host all trust_user 127.0.0.1/32 trust\n\
             host all clear_user 127.0.0.1/32 password\n\
             host all md5_user 127.0.0.1/32 md5\n\
             host postgres all 127.0.0.1/32 scram-sha-256\n",
        )
        .unwrap();
        let base_conf = std::fs::read_to_string(c.data.join("postgresql.conf")).unwrap();
        // A free port can be taken between probing and binding: retry a few times.
        let mut started = false;
        for _ in 0..3 {
            c.port = free_port();
            let conf = format!(
                "{base_conf}\nport = {}\nlisten_addresses = '127.0.0.1'\n\
                 unix_socket_directories = '{}'\n\
                 wal_sender_timeout = '2s'\nmax_wal_senders = 10\nfsync = off\n{conf}",
                c.port,
                c.sock_dir.display()
            );
            std::fs::write(c.data.join("postgresql.conf"), conf).unwrap();
            let log = c.sock_dir.join("server.log");
            let ok = c
                .cmd("pg_ctl")
                .args(["-w", "-t", "60", "-D", c.data.to_str().unwrap()])
                .args(["-l", log.to_str().unwrap(), "start"])
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap()
                .success();
            if ok {
                started = true;
                break;
            }
            eprintln!("{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        assert!(started, "could not start the test server");
        c.sql(
            "CREATE ROLE trust_user LOGIN REPLICATION;
             CREATE ROLE clear_user LOGIN REPLICATION PASSWORD 'clear pw';
             SET password_encryption = 'md5';
             CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5 pw';
             SET password_encryption = 'scram-sha-256';
             CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram pw';
             CREATE ROLE norepl_user LOGIN PASSWORD 'norepl pw';
             CREATE TABLE t (id int PRIMARY KEY, v text);
             GRANT ALL ON t TO scram_user;
             CREATE PUBLICATION p FOR TABLE t;",
        )
        .await;
        Some(c)
    }

    fn cmd(&self, prog: &str) -> Command {
        let path = self.bin.join(prog);
        if self.as_root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Runs SQL as the superuser over the unix socket (tokio-postgres, like the metadata conn).
    async fn sql(&self, sql: &str) {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&self.sock_dir)
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap();
        let task = tokio::spawn(conn);
        client.batch_execute(sql).await.unwrap();
        drop(client);
        let _ = task.await;
    }

    fn params(&self, dsn: &str) -> ConnParams {
        let dsn = format!("host=127.0.0.1 port={} dbname=postgres {dsn}", self.port);
        ConnParams::resolve(Some(&dsn), &|_| None, None).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .args([
                "-w",
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "immediate",
                "stop",
            ])
            .stdout(std::process::Stdio::null())
            .status();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn connects_with_each_auth_method() {
    let Some(c) = Cluster::start().await else {
        return;
    };
    for dsn in [
        "user=trust_user",
        "user=clear_user password='clear pw'",
        "user=md5_user password='md5 pw'",
        "user=scram_user password='scram pw'",
    ] {
        let mut conn = ReplConn::connect(&c.params(dsn))
            .await
            .unwrap_or_else(|e| panic!("{dsn}: {e}"));
        assert!(conn.server_version_num() >= 150000, "{dsn}");
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
        assert_eq!(sys.dbname.as_deref(), Some("postgres"));
        assert_eq!(sys.timeline, 1);
        assert!(sys.xlogpos > Lsn::ZERO);
        assert!(sys.systemid > 0);
        conn.close().await.unwrap();
    }
    // Over the unix socket (trust), like psql with host=/dir.
    let dsn = format!(
        "host={} port={} user=postgres",
        c.sock_dir.display(),
        c.port
    );
    let p = ConnParams::resolve(Some(&dsn), &|_| None, None).unwrap();
    let mut conn = ReplConn::connect(&p).await.unwrap();
    let r = conn.simple_query_result("SELECT 'a' AS x").await.unwrap();
    assert_eq!(r.columns, vec!["x".to_string()]);
    assert_eq!(r.command_tag.as_deref(), Some("SELECT 1"));
    conn.close().await.unwrap();
}

#[tokio::test]
async fn auth_and_permission_errors_are_mapped() {
    let Some(c) = Cluster::start().await else {
        return;
    };
    // Wrong password → 28P01 with advice; never the password itself.
    let e = ReplConn::connect(&c.params("user=scram_user password='wrong secret'"))
        .await
        .unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("28P01"), "{s}");
    assert!(s.contains("check the password"), "{s}");
    assert!(!s.contains("wrong secret"), "{s}");
    assert!(!e.is_transient());
    let e = ReplConn::connect(&c.params("user=md5_user password=nope"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("28P01"), "{e}");

    // Password needed but none given.
    let e = ReplConn::connect(&c.params("user=scram_user"))
        .await
        .unwrap_err();
    let s = e.to_string();
    assert!(matches!(e, PgError::Auth(_)), "{s}");
    assert!(s.contains("PGPASSWORD") && s.contains("~/.pgpass"), "{s}");

    // Role without REPLICATION.
    let e = ReplConn::connect(&c.params("user=norepl_user password='norepl pw'"))
        .await
        .unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("42501"), "{s}");
    assert!(s.contains("ALTER ROLE \"norepl_user\" REPLICATION"), "{s}");

    // Missing database.
    let dsn = format!(
        "host=127.0.0.1 port={} user=trust_user dbname=nosuchdb",
        c.port
    );
    let p = ConnParams::resolve(Some(&dsn), &|_| None, None).unwrap();
    let e = ReplConn::connect(&p).await.unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("3D000"), "{s}");
    assert!(s.contains("--dsn"), "{s}");

    // No pg_hba.conf line for this database and role.
    let dsn = format!(
        "host=127.0.0.1 port={} user=scram_user password='scram pw' dbname=template1",
        c.port
    );
    let p = ConnParams::resolve(Some(&dsn), &|_| None, None).unwrap();
    let e = ReplConn::connect(&p).await.unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("28000"), "{s}");
    assert!(
        s.contains("add a line such as `host template1 scram_user"),
        "{s}"
    );
    assert!(!s.contains("scram pw"), "{s}");

    // Nobody listening.
    let dsn = format!(
        "host=127.0.0.1 port={} user=x connect_timeout=5",
        free_port()
    );
    let p = ConnParams::resolve(Some(&dsn), &|_| None, None).unwrap();
    let e = ReplConn::connect(&p).await.unwrap_err();
    let s = e.to_string();
    assert!(s.contains("accepting TCP connections"), "{s}");
    assert!(e.is_transient());

    // A missing slot, on a working connection.
    let conn = ReplConn::connect(&c.params("user=trust_user"))
        .await
        .unwrap();
    let e = conn
        .start_replication("no_such_slot", Lsn::ZERO, &[])
        .await
        .unwrap_err();
    let s = e.to_string();
    assert_eq!(e.code(), Some("42704"), "{s}");
    assert!(s.contains("--slot no_such_slot"), "{s}");
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
    let Some(c) = Cluster::start().await else {
        return;
    };
    let mut conn = ReplConn::connect(&c.params("user=scram_user password='scram pw'"))
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

    c.sql("INSERT INTO t VALUES (1, 'one')").await;
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
    c.sql("INSERT INTO t VALUES (2, 'two')").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let msgs = pump(
        &mut stream,
        deadline,
        |m| matches!(m, ReplMessage::XLogData { data, .. } if data.first() == Some(&b'C')),
    )
    .await;
    assert_eq!(first_bytes(&msgs), b"BIC", "{msgs:?}");

    // A second consumer of the same slot is refused while we hold it.
    let other = ReplConn::connect(&c.params("user=trust_user"))
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
    let Some(c) = Cluster::start_with("wal_level = replica\nmax_replication_slots = 1\n").await
    else {
        return;
    };
    let mut conn = ReplConn::connect(&c.params("user=trust_user"))
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
