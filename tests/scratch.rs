//! The scratch PostgreSQL cluster (`walwatch::scratch`) and the shared test-support cluster.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{ScratchOptions, cluster, own_cluster, unique_name, wait_until};

/// Set in child processes spawned by the tests below: makes `probe_child` report instead of
/// returning at once.
const PROBE_ENV: &str = "WALWATCH_SCRATCH_PROBE";

/// Not a test of its own: a child process run by the tests below. Prints what it saw of the
/// shared cluster. Without `WALWATCH_SCRATCH_PROBE` it does nothing.
#[test]
fn probe_child() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let c = cluster();
    let who = c.psql("walwatch", "SELECT current_user").unwrap();
    println!(
        "PROBE port={} root={} joined={} user={who}",
        c.port(),
        c.root_dir().display(),
        support::cluster_was_joined()
    );
    support::flush_stdout();
}

#[derive(Debug, PartialEq)]
struct Probe {
    port: u16,
    root: PathBuf,
    joined: bool,
}

/// Runs this test binary for `probe_child` only, with `envs`; returns what the child reported.
fn spawn_probe(envs: &[(&str, &str)]) -> std::process::Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["probe_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(PROBE_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

fn probe_result(child: std::process::Child) -> Probe {
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| Some(l.split_once("PROBE ")?.1))
        .unwrap_or_else(|| panic!("no PROBE line in:\n{stdout}"));
    let field = |k: &str| {
        line.split(' ')
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("no {k} in {line}"))
            .to_owned()
    };
    assert_eq!(field("user"), "postgres");
    Probe {
        port: field("port").parse().unwrap(),
        root: field("root").into(),
        joined: field("joined") == "true",
    }
}

#[test]
fn shared_cluster_is_configured() {
    let c = cluster();
    assert_eq!(
        c.psql("postgres", "SHOW wal_level").unwrap(),
        "logical",
        "default wal_level"
    );
    let settings = c
        .psql(
            "postgres",
            "SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings \
             WHERE name IN ('max_replication_slots','max_wal_senders','max_connections',\
             'fsync','listen_addresses','logging_collector','server_encoding')",
        )
        .unwrap();
    assert_eq!(
        settings,
        "fsync=off,listen_addresses=127.0.0.1,logging_collector=off,max_connections=200,\
         max_replication_slots=64,max_wal_senders=64,server_encoding=UTF8"
    );
    let roles = c
        .psql(
            "postgres",
            "SELECT string_agg(rolname || ':' || rolcanlogin || rolreplication || rolcreatedb \
             || ':' || left(rolpassword, 5), ' ' ORDER BY rolname) \
             FROM pg_authid WHERE rolname LIKE 'walwatch%'",
        )
        .unwrap();
    assert_eq!(
        roles,
        "walwatch:truetruetrue:SCRAM walwatch_clear:truetruefalse:SCRAM \
         walwatch_md5:truetruefalse:md5e7 walwatch_norepl:truefalsefalse:SCRAM \
         walwatch_trust:truetruefalse:SCRAM"
            .replace("md5e7", &roles_md5_prefix(&roles))
    );
    assert_eq!(
        c.psql(
            "walwatch",
            "SELECT pg_get_userbyid(datdba) || ',' || \
             (SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public') \
             FROM pg_database WHERE datname = current_database()"
        )
        .unwrap(),
        "walwatch,walwatch"
    );
}

/// The md5 hash's first 2 characters vary; only the `md5` prefix is the contract.
fn roles_md5_prefix(roles: &str) -> String {
    let md5 = roles
        .split(' ')
        .find(|r| r.starts_with("walwatch_md5:"))
        .unwrap();
    let pw = md5.rsplit(':').next().unwrap();
    assert!(pw.starts_with("md5"), "{md5}");
    pw.to_owned()
}

#[tokio::test]
async fn tcp_logins_with_each_auth_method() {
    let c = tokio::task::spawn_blocking(cluster).await.unwrap();
    for user in [
        "walwatch",
        "walwatch_md5",
        "walwatch_clear",
        "walwatch_trust",
        "walwatch_norepl",
    ] {
        let dsn = c.dsn_for(user, "walwatch");
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("{user} via {dsn}: {e}"));
        let task = tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT current_user::text, coalesce(inet_server_addr()::text, 'unix')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), user);
        assert_eq!(row.get::<_, String>(1), "127.0.0.1/32");
        drop(client);
        task.await.unwrap().unwrap();
    }
    // The method pg_hba chose, as the server logged it, is not visible to the client; a wrong
    // password proves the password is checked for the non-trust roles.
    let wrong = c
        .dsn_for("walwatch_md5", "walwatch")
        .replace(support::TEST_PASSWORD, "wrong");
    let err = tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .err()
        .expect("a wrong password is refused");
    let msg = err.as_db_error().map(|e| e.message().to_owned());
    assert_eq!(
        msg.as_deref(),
        Some("password authentication failed for user \"walwatch_md5\""),
        "{err:?}"
    );
}

#[tokio::test]
async fn admin_client_is_superuser_over_the_socket() {
    let client = support::admin_client("postgres").await;
    let row = client
        .query_one(
            "SELECT current_user::text, current_setting('is_superuser'), \
             inet_server_addr() IS NULL",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");
    assert_eq!(row.get::<_, String>(1), "on");
    assert!(row.get::<_, bool>(2), "connected over the unix socket");
}

#[tokio::test]
async fn create_database_gives_walwatch_the_public_schema() {
    let c = tokio::task::spawn_blocking(cluster).await.unwrap();
    let db = unique_name("db");
    let db2 = db.clone();
    tokio::task::spawn_blocking(move || c.create_database(&db2))
        .await
        .unwrap()
        .unwrap();
    let (client, conn) = tokio_postgres::connect(&c.dsn(&db), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1);")
        .await
        .unwrap();
    let n: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

#[test]
fn psql_errors_carry_stderr() {
    let c = cluster();
    let err = c
        .psql("walwatch", "SELECT 1;\nSELEC oops;")
        .expect_err("bad SQL fails");
    let text = err.to_string();
    assert!(text.contains("syntax error"), "{text}");
    assert!(text.contains("SELEC oops"), "{text}");
    let err = c
        .psql("no_such_db_here", "SELECT 1")
        .expect_err("missing db fails");
    assert!(err.to_string().contains("does not exist"), "{err}");
    // Statements run one by one: multi-row output, one line per row.
    assert_eq!(
        c.psql("walwatch", "SELECT 1; SELECT 'a' || 'b'").unwrap(),
        "1\nab"
    );
}

#[test]
fn unique_names_are_unique_and_valid() {
    let mut seen = std::collections::HashSet::new();
    for prefix in [
        "slot",
        "Orders-Table",
        "",
        "9lives",
        "a_very_long_prefix_that_goes_on_and_on_and_on",
    ] {
        for _ in 0..50 {
            let n = unique_name(prefix);
            assert!(n.len() <= 40, "{n}");
            assert!(n.starts_with(|c: char| c.is_ascii_lowercase()), "{n}");
            assert!(
                n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{n}"
            );
            assert!(seen.insert(n.clone()), "duplicate {n}");
        }
    }
}

#[test]
fn wait_until_returns_value_and_times_out() {
    let mut n = 0;
    assert_eq!(
        wait_until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            (n >= 3).then_some(n)
        }),
        3
    );
    let err = std::panic::catch_unwind(|| {
        wait_until::<()>("never", Duration::from_millis(50), || None);
    })
    .expect_err("times out");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert_eq!(msg, "timed out after 0.1s waiting for never");
}

#[test]
fn threads_share_one_cluster() {
    let handles: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| cluster() as *const _ as usize))
        .collect();
    let addrs: Vec<usize> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(addrs.windows(2).all(|w| w[0] == w[1]), "{addrs:?}");
}

/// Another process of this test binary joins this process's shared cluster (a new cluster would
/// have another port and directory).
#[test]
fn another_process_joins_the_shared_cluster() {
    let c = cluster();
    let probe = probe_result(spawn_probe(&[]));
    assert_eq!(probe.port, c.port());
    assert_eq!(probe.root, c.root_dir());
    assert!(probe.joined, "the child joined rather than started");
    let state = std::fs::read_to_string(support::state_dir().join("state")).unwrap();
    assert!(state.contains(&format!("port={}\n", c.port())), "{state}");
}

/// Several processes starting at once in a fresh state dir get one cluster, started by one of
/// them; the watchdog stops and removes it once the last of them has exited.
#[test]
fn concurrent_processes_get_one_cluster_torn_down_after_the_last() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_owned();
    let env = [("WALWATCH_TEST_PG_STATE_DIR", state_dir.as_str())];
    let children: Vec<_> = (0..3).map(|_| spawn_probe(&env)).collect();
    let probes: Vec<Probe> = children.into_iter().map(probe_result).collect();
    let exited = Instant::now();
    assert!(
        probes
            .iter()
            .all(|p| p.port == probes[0].port && p.root == probes[0].root),
        "{probes:?}"
    );
    assert_eq!(
        probes.iter().filter(|p| !p.joined).count(),
        1,
        "exactly one started it: {probes:?}"
    );
    assert_ne!(probes[0].root, cluster().root_dir(), "not this binary's");

    let root = probes[0].root.clone();
    let state_file = state.path().join("state");
    wait_until(
        "the watchdog to remove the cluster",
        Duration::from_secs(30),
        || (!root.exists() && !state_file.exists()).then_some(()),
    );
    let took = exited.elapsed();
    assert!(
        took >= Duration::from_secs(2),
        "torn down too early: {took:?}"
    );
    eprintln!("torn down {took:?} after the last process exited");
    let port_free = std::net::TcpListener::bind(("127.0.0.1", probes[0].port)).is_ok();
    assert!(port_free, "the server's port is free again");
}

/// A state file whose postmaster was killed is ignored and replaced by a new cluster.
#[test]
fn stale_state_is_replaced() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_owned();
    let env = [("WALWATCH_TEST_PG_STATE_DIR", state_dir.as_str())];
    // Hold the lease like a test process would, so the watchdog leaves the cluster alone while
    // this test kills its postmaster behind its back.
    let lease = std::fs::File::create(state.path().join("lease")).unwrap();
    // SAFETY: flock on an open descriptor.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lease), libc::LOCK_SH) },
        0
    );
    let first = probe_result(spawn_probe(&env));
    assert!(!first.joined);
    let handle = support::ClusterHandle::from_parts(
        first.root.clone(),
        walwatch::scratch::find_bin_dir().unwrap(),
        first.port,
    );
    let pid = handle.postmaster_pid().expect("postmaster.pid");
    // SAFETY: signalling the postmaster of the cluster this test made.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    wait_until(
        "the killed postmaster to die",
        Duration::from_secs(10),
        || (!walwatch::scratch::process_alive(pid)).then_some(()),
    );
    let second = probe_result(spawn_probe(&env));
    assert!(!second.joined, "a dead cluster is not joined");
    assert_ne!(second.root, first.root);
    assert!(!first.root.exists(), "the stale directory was removed");
    drop(lease);
    let root = second.root.clone();
    wait_until(
        "the watchdog to remove the cluster",
        Duration::from_secs(30),
        || (!root.exists()).then_some(()),
    );
}

/// A bin dir of symlinks to this run's server binaries: another server as far as the shared
/// cluster's bookkeeping can tell (another canonical bin dir), the same programs. The server
/// follows the symlinks to find its share and lib dirs (src/port/exec.c, find_my_exec).
fn symlinked_bin_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let real = support::server_bin_dir().expect("a server bin dir");
    let dir = tempfile::tempdir().unwrap();
    // The server user (initdb refuses root) must be able to get in.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(real).unwrap() {
        let entry = entry.unwrap();
        std::os::unix::fs::symlink(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// The state dir is per server (`pg<major>-<hash of the bin dir>`): a run against another
/// server gets a cluster of its own, never this one.
#[test]
fn another_server_gets_its_own_shared_cluster() {
    let c = cluster();
    let major = support::server_major_version(support::server_bin_dir().unwrap()).unwrap();
    let key = support::state_dir()
        .parent()
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap();
    assert!(key.starts_with(&format!("pg{major}-")), "{key}");

    let other = symlinked_bin_dir();
    let bin = other.path().to_str().unwrap();
    let probe = probe_result(spawn_probe(&[("WALWATCH_PG_BIN", bin)]));
    assert!(!probe.joined, "it started a cluster of its own: {probe:?}");
    assert_ne!(probe.port, c.port());
    assert_ne!(probe.root, c.root_dir());
    let root = probe.root.clone();
    wait_until(
        "the other server's watchdog to remove its cluster",
        Duration::from_secs(30),
        || (!root.exists()).then_some(()),
    );
}

/// Should two servers' runs still share a state dir, a live cluster of the other server is
/// refused, not joined.
#[test]
fn a_cluster_of_another_server_is_never_joined() {
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().to_str().unwrap().to_owned();
    // Hold the lease so that the first cluster outlives its probe.
    let lease = std::fs::File::create(state.path().join("lease")).unwrap();
    // SAFETY: flock on an open descriptor.
    assert_eq!(
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lease), libc::LOCK_SH) },
        0
    );
    let first = probe_result(spawn_probe(&[(
        "WALWATCH_TEST_PG_STATE_DIR",
        state_dir.as_str(),
    )]));
    let other = symlinked_bin_dir();
    let out = spawn_probe(&[
        ("WALWATCH_TEST_PG_STATE_DIR", state_dir.as_str()),
        ("WALWATCH_PG_BIN", other.path().to_str().unwrap()),
    ])
    .wait_with_output()
    .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "joined a cluster of another server:\n{text}"
    );
    assert!(
        text.contains("refusing to join a cluster of another server"),
        "{text}"
    );
    assert!(!text.contains("PROBE "), "{text}");
    // The first one is left alone, and goes once nobody holds the lease.
    assert!(first.root.exists());
    drop(lease);
    let root = first.root.clone();
    wait_until(
        "the watchdog to remove the cluster",
        Duration::from_secs(30),
        || (!root.exists()).then_some(()),
    );
}

#[test]
fn replica_cluster_of_its_own_stops_and_removes_its_dir() {
    let started = Instant::now();
    let own = own_cluster(ScratchOptions::with_wal_level("replica"));
    eprintln!("own cluster started in {:?}", started.elapsed());
    assert_ne!(own.port(), cluster().port());
    assert_eq!(own.psql("postgres", "SHOW wal_level").unwrap(), "replica");
    assert!(own.socket_dir().as_os_str().len() < 90);
    let root = own.handle().root_dir().to_path_buf();
    let pid = own.handle().postmaster_pid().unwrap();
    assert!(root.join("server.log").exists());
    own.stop().unwrap();
    assert!(!root.exists(), "stop() removed {}", root.display());
    assert!(!walwatch::scratch::process_alive(pid), "postmaster gone");
}

#[test]
fn drop_stops_and_extra_conf_applies() {
    let own = own_cluster(ScratchOptions {
        extra_conf: vec![("work_mem".into(), "7MB".into())],
        fsync: true,
        ..Default::default()
    });
    assert_eq!(own.psql("postgres", "SHOW work_mem").unwrap(), "7MB");
    assert_eq!(own.psql("postgres", "SHOW fsync").unwrap(), "on");
    let root = own.handle().root_dir().to_path_buf();
    let pid = own.handle().postmaster_pid().unwrap();
    drop(own);
    assert!(!root.exists());
    assert!(!walwatch::scratch::process_alive(pid));
}

#[test]
fn restart_and_start_after_kill() {
    let own = own_cluster(ScratchOptions::default());
    let before = own.handle().postmaster_pid().unwrap();
    own.handle().restart().unwrap();
    let pid = own.handle().postmaster_pid().unwrap();
    assert_ne!(pid, before, "a new postmaster");
    assert_eq!(own.psql("walwatch", "SELECT 1").unwrap(), "1");
    // SAFETY: signalling our own cluster's postmaster.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    own.start_server_again().unwrap();
    assert_eq!(own.psql("walwatch", "SELECT 42").unwrap(), "42");
    own.stop().unwrap();
}

#[test]
fn bad_option_fails_with_the_server_log() {
    let err = support::ScratchCluster::start(ScratchOptions::with_wal_level("bogus"))
        .expect_err("an invalid wal_level does not start");
    let text = err.to_string();
    assert!(text.contains("did not start"), "{text}");
    assert!(
        text.contains("wal_level"),
        "the log tail names the setting: {text}"
    );
}
