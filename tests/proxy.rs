//! The fault proxy against a real server, with real drivers (tokio-postgres, psql): each rule
//! kind in the simple and extended protocols, connections usable after an injected error,
//! delays that hold only their statement, drops, cancel requests, authentication passing
//! through, rules changed at runtime, and bad input that harms nobody else.

mod harness;
mod support;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{sql, walwatch};
use support::{TEST_DATABASE, TEST_PASSWORD};

use tokio_postgres::{Client, NoTls};
use walwatch::proxy::control::{self, ControlConfig};
use walwatch::proxy::{self, Proxy, ProxyAction, ProxyEvent};

fn upstream() -> String {
    format!("127.0.0.1:{}", support::cluster().port())
}

async fn start(rules: &[&str]) -> Proxy {
    let upstream = tokio::task::spawn_blocking(upstream).await.unwrap();
    let mut b = Proxy::builder(upstream);
    for r in rules {
        b = b.fault(r.parse().expect("a valid rule"));
    }
    b.start().await.expect("the proxy starts")
}

fn through(proxy: &Proxy, user: &str) -> String {
    format!(
        "postgres://{user}:{TEST_PASSWORD}@{}/{TEST_DATABASE}?application_name=proxytest",
        proxy.addr()
    )
}

async fn connect(dsn: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect through the proxy ({dsn}): {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A fresh table `t (id int primary key)` owned by the test role.
fn table(prefix: &str) -> String {
    let t = support::unique_name(prefix);
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    t
}

fn count(t: &str) -> i64 {
    sql(&format!("SELECT count(*) FROM {t};"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("count of {t}: {e}"))
}

fn db_error(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a server error, got: {e}"));
    (db.code().code().to_string(), db.message().to_string())
}

async fn select_one(c: &Client) -> i32 {
    c.query_one("SELECT 1", &[]).await.expect("SELECT 1").get(0)
}

/// Polls `count_sql` (a `SELECT count(*)`) on `client` until `ready` accepts the count; fails
/// saying `what` after `within`.
async fn wait_for_count(
    client: &Client,
    count_sql: &str,
    within: Duration,
    what: &str,
    ready: impl Fn(i64) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let n: i64 = client.query_one(count_sql, &[]).await.unwrap().get(0);
        if ready(n) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn actions(events: &[Arc<ProxyEvent>]) -> Vec<(ProxyAction, Option<String>)> {
    events
        .iter()
        .map(|e| (e.data.action, e.data.query.clone()))
        .collect()
}

#[tokio::test]
async fn an_injected_error_reaches_simple_and_extended_clients_who_carry_on() {
    let t = table("px_err");
    let p = start(&[&format!("error:INSERT INTO {t}*:disk full;sqlstate=53100")]).await;
    let c = connect(&through(&p, "walwatch")).await;

    // Simple protocol.
    let e = c
        .simple_query(&format!("/* svc */ insert into {t} VALUES (1)"))
        .await
        .unwrap_err();
    assert_eq!(db_error(&e), ("53100".into(), "disk full".into()));
    assert_eq!(select_one(&c).await, 1, "usable after the error");

    // Extended protocol, unnamed statement, then a prepared statement reused.
    let e = c
        .execute(&format!("INSERT INTO {t} VALUES ($1)"), &[&2i32])
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).0, "53100");
    let stmt = c
        .prepare(&format!("INSERT INTO {t} VALUES ($1)"))
        .await
        .unwrap();
    for id in 3..6i32 {
        let e = c.execute(&stmt, &[&id]).await.unwrap_err();
        assert_eq!(
            db_error(&e),
            ("53100".into(), "disk full".into()),
            "id {id}"
        );
        assert_eq!(select_one(&c).await, 1);
    }
    // Other statements, also prepared, pass.
    let other = c.prepare("SELECT $1::int + 1").await.unwrap();
    let row = c.query_one(&other, &[&41i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    assert_eq!(count(&t), 0, "no faulted INSERT reached the table");

    let events = p.events().all();
    assert_eq!(events.len(), 5, "{:?}", actions(&events));
    for e in &events {
        assert_eq!(e.data.action, ProxyAction::Error);
        assert!(
            e.data
                .query
                .as_deref()
                .unwrap()
                .to_lowercase()
                .contains("insert into")
        );
        assert_eq!(e.data.message.as_deref(), Some("disk full"));
        assert_eq!(e.data.sqlstate.as_deref(), Some("53100"));
        assert_eq!(&*e.data.user, "walwatch");
        assert_eq!(&*e.data.database, TEST_DATABASE);
        assert_eq!(&*e.data.application_name, "proxytest");
    }
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
}

#[tokio::test]
async fn pipelined_statements_each_get_their_own_answer() {
    let t = table("px_pipe");
    let p = start(&[&format!("error:INSERT INTO {t} VALUES (13*:unlucky")]).await;
    let c = connect(&through(&p, "walwatch")).await;
    let ins = c
        .prepare(&format!("INSERT INTO {t} VALUES ($1::int) RETURNING id"))
        .await
        .unwrap();
    // tokio-postgres pipelines concurrent queries on one connection.
    let futs = (0..40i32).map(|i| {
        let (c, ins, t) = (&c, &ins, &t);
        async move {
            if i % 5 == 0 {
                let r = c
                    .simple_query(&format!("INSERT INTO {t} VALUES (13{i})"))
                    .await;
                (i, r.map(|_| -1).map_err(|e| db_error(&e).1))
            } else {
                let r = c.query_one(ins, &[&i]).await;
                (
                    i,
                    r.map(|row| row.get::<_, i32>(0)).map_err(|e| e.to_string()),
                )
            }
        }
    });
    let results = futures_util::future::join_all(futs).await;
    for (i, r) in results {
        if i % 5 == 0 {
            assert_eq!(r, Err("unlucky".to_string()), "statement {i}");
        } else {
            assert_eq!(r, Ok(i), "statement {i}");
        }
    }
    assert_eq!(count(&t), 32);
}

#[tokio::test]
async fn an_error_in_a_transaction_block_aborts_it_as_a_real_one_would() {
    let t = table("px_tx");
    let p = start(&[&format!("error:INSERT INTO {t} VALUES (2)*:no")]).await;
    let mut c = connect(&through(&p, "walwatch")).await;
    let tx = c.transaction().await.unwrap();
    tx.execute(&format!("INSERT INTO {t} VALUES (1)"), &[])
        .await
        .unwrap();
    let e = tx
        .execute(&format!("INSERT INTO {t} VALUES (2)"), &[])
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).1, "no");
    let e = tx.execute("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(db_error(&e).0, "25P02", "the transaction is aborted");
    // COMMIT of an aborted transaction rolls back, as the server does.
    let _ = tx.commit().await;
    assert_eq!(
        count(&t),
        0,
        "the first INSERT was rolled back with the block"
    );
    assert_eq!(select_one(&c).await, 1);
    // Simple protocol in a block: the block is aborted, COMMIT rolls it back.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query(&format!("INSERT INTO {t} VALUES (1)"))
        .await
        .unwrap();
    let e = c
        .simple_query(&format!("INSERT INTO {t} VALUES (2)"))
        .await
        .unwrap_err();
    assert_eq!(db_error(&e).1, "no");
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(db_error(&e).0, "25P02", "the block is aborted");
    c.simple_query("COMMIT").await.unwrap();
    assert_eq!(count(&t), 0);
    assert_eq!(select_one(&c).await, 1);
}

/// Waits (10 s at most) for the proxy to record an event with `action`.
async fn wait_for_action(p: &Proxy, action: ProxyAction) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !p.events().all().iter().any(|e| e.data.action == action) {
        assert!(
            Instant::now() < deadline,
            "no {action:?} event within 10 s; seen: {:?}",
            actions(&p.events().all())
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_holds_its_statement_and_no_other() {
    let p = start(&["delay:SELECT 'slow'*:600ms"]).await;
    let dsn = through(&p, "walwatch");
    let (slow, fast) = (connect(&dsn).await, connect(&dsn).await);
    let started = Instant::now();
    let held = tokio::spawn(async move {
        slow.simple_query("SELECT 'slow'").await.unwrap();
        started.elapsed()
    });
    // While the slow one is held, another connection's statements pass at once.
    wait_for_action(&p, ProxyAction::Delay).await;
    let t0 = Instant::now();
    for _ in 0..5 {
        assert_eq!(select_one(&fast).await, 1);
    }
    let fast_took = t0.elapsed();
    assert!(
        !held.is_finished(),
        "the delayed statement was still held meanwhile"
    );
    let slow_took = held.await.unwrap();
    assert!(
        slow_took >= Duration::from_millis(600),
        "the delayed statement took {slow_took:?}, less than its 600 ms delay"
    );
    assert!(
        fast_took < Duration::from_millis(500),
        "other statements took {fast_took:?} while one was delayed"
    );
    let e = &p.events().all()[0];
    assert_eq!(e.data.action, ProxyAction::Delay);
    assert_eq!(e.data.duration_ms, Some(600.0));
}

#[tokio::test]
async fn a_drop_closes_that_connection_only_and_times_counts() {
    let t = table("px_drop");
    let p = start(&[&format!("drop:DELETE FROM {t}*;times=1")]).await;
    let dsn = through(&p, "walwatch");
    let (victim, bystander) = (connect(&dsn).await, connect(&dsn).await);
    let e = victim
        .execute(&format!("DELETE FROM {t}"), &[])
        .await
        .unwrap_err();
    assert!(
        e.as_db_error().is_none(),
        "a closed connection, not a server error: {e}"
    );
    assert!(victim.is_closed() || victim.simple_query("SELECT 1").await.is_err());
    assert_eq!(select_one(&bystander).await, 1);
    // times=1: the next one passes.
    bystander
        .execute(&format!("DELETE FROM {t}"), &[])
        .await
        .unwrap();
    let evs = p.events().all();
    assert_eq!(evs.len(), 1, "{:?}", actions(&evs));
    assert_eq!(evs[0].data.action, ProxyAction::Drop);
    let listed = p.rules().list();
    assert_eq!((listed[0].matched, listed[0].fired), (2, 1));
}

#[tokio::test]
async fn probability_with_a_seed_decides_the_same_way_twice() {
    let run = |seed: u64| async move {
        let upstream = tokio::task::spawn_blocking(upstream).await.unwrap();
        let p = Proxy::builder(upstream)
            .seed(seed)
            .fault(
                "error:SELECT 'coin'*:tails;probability=0.5"
                    .parse()
                    .unwrap(),
            )
            .start()
            .await
            .unwrap();
        let c = connect(&through(&p, "walwatch")).await;
        let mut flips = Vec::new();
        for _ in 0..24 {
            flips.push(c.simple_query("SELECT 'coin'").await.is_err());
        }
        flips
    };
    let a = run(11).await;
    assert_eq!(a, run(11).await, "same seed, same decisions");
    assert_ne!(a, run(12).await, "another seed, other decisions");
    assert!(a.contains(&true) && a.contains(&false), "{a:?}");
}

#[tokio::test]
async fn every_password_method_passes_through() {
    let p = start(&[]).await;
    for user in [
        "walwatch",
        "walwatch_md5",
        "walwatch_clear",
        "walwatch_trust",
    ] {
        let c = connect(&through(&p, user)).await;
        let who: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, user);
    }
    let bad = format!("postgres://walwatch:wrong@{}/{TEST_DATABASE}", p.addr());
    let e = tokio_postgres::connect(&bad, NoTls)
        .await
        .err()
        .expect("a wrong password fails");
    assert_eq!(db_error(&e).0, "28P01", "the server's own error: {e}");
}

#[tokio::test]
async fn a_cancel_request_reaches_the_right_backend() {
    let p = start(&[]).await;
    let dsn = through(&p, "walwatch");
    let (sleeper, other) = (connect(&dsn).await, connect(&dsn).await);
    let token = sleeper.cancel_token();
    let started = Instant::now();
    let sleeping = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(30)").await });
    // Wait until the server runs it.
    let running = "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' \
                   AND state = 'active'";
    let within = Duration::from_secs(10);
    wait_for_count(&other, running, within, "the sleep never started", |n| {
        n == 1
    })
    .await;
    token
        .cancel_query(NoTls)
        .await
        .expect("the cancel request is sent");
    let e = sleeping.await.unwrap().unwrap_err();
    assert_eq!(db_error(&e).0, "57014", "canceled: {e}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        select_one(&other).await,
        1,
        "the other connection was not cancelled"
    );
}

#[tokio::test]
async fn copy_passes_through() {
    let t = table("px_copy");
    let p = start(&["error:INSERT*:not this"]).await;
    let c = connect(&through(&p, "walwatch")).await;
    let sink = c
        .copy_in::<_, bytes::Bytes>(&format!("COPY {t} FROM STDIN"))
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    use futures_util::SinkExt;
    sink.send(bytes::Bytes::from_static(b"1\n2\n3\n"))
        .await
        .unwrap();
    assert_eq!(sink.finish().await.unwrap(), 3);
    assert_eq!(count(&t), 3);
}

#[tokio::test]
async fn rules_change_at_runtime_through_the_control_api() {
    let t = table("px_ctl");
    let upstream = tokio::task::spawn_blocking(upstream).await.unwrap();
    let p = Proxy::builder(upstream)
        .control(ControlConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            token: Some("tok".into()),
        })
        .start()
        .await
        .unwrap();
    let ctl = p.control_addr().unwrap().to_string();
    let c = connect(&through(&p, "walwatch")).await;
    let insert = format!("INSERT INTO {t} VALUES ($1)");
    c.execute(&insert, &[&1i32]).await.unwrap();
    let added = control::request(
        &ctl,
        Some("tok"),
        &control::Command::Add(Box::new(
            format!("error:INSERT INTO {t}*:paused").parse().unwrap(),
        )),
    )
    .await
    .unwrap();
    let id = added["id"].as_u64().unwrap();
    let e = c.execute(&insert, &[&2i32]).await.unwrap_err();
    assert_eq!(db_error(&e).1, "paused");
    control::request(&ctl, Some("tok"), &control::Command::Remove(id))
        .await
        .unwrap();
    c.execute(&insert, &[&3i32]).await.unwrap();
    assert_eq!(count(&t), 2);
    // The guard API: the rule lasts as long as the guard.
    {
        let _fault = p
            .fault(proxy::error(&format!("INSERT INTO {t}*"), "guarded"))
            .unwrap();
        assert!(c.execute(&insert, &[&4i32]).await.is_err());
    }
    c.execute(&insert, &[&5i32]).await.unwrap();
    let e = control::request(&ctl, None, &control::Command::List)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
}

#[tokio::test]
async fn bad_clients_and_a_missing_upstream_harm_nobody_else() {
    let p = start(&[]).await;
    let addr = p.addr();
    // A startup packet with an impossible length gets a protocol-violation error.
    let reply = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(&[0, 0, 0, 2, 0, 0, 0, 0]).unwrap();
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        reply
    })
    .await
    .unwrap();
    assert_eq!(reply.first(), Some(&b'E'), "{reply:?}");
    assert!(String::from_utf8_lossy(&reply).contains("08P01"));
    // A client that leaves mid-message after logging in.
    let trust = through(&p, "walwatch_trust");
    let c = connect(&trust).await;
    drop(c);
    let half = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut pkt = vec![0, 0, 0, 0, 0, 3, 0, 0];
        pkt.extend_from_slice(b"user\0walwatch_trust\0database\0");
        pkt.extend_from_slice(TEST_DATABASE.as_bytes());
        pkt.extend_from_slice(b"\0\0");
        let len = (pkt.len() as u32).to_be_bytes();
        pkt[..4].copy_from_slice(&len);
        s.write_all(&pkt).unwrap();
        s.write_all(b"Q\0\0\0\xffSELE").unwrap();
    });
    half.await.unwrap();
    let c = connect(&trust).await;
    assert_eq!(select_one(&c).await, 1, "the proxy still serves");

    // An upstream that is down: a clear error naming it, and an event.
    let port = support::free_port();
    let down = Proxy::builder(format!("127.0.0.1:{port}"))
        .start()
        .await
        .unwrap();
    let e = tokio_postgres::connect(&through(&down, "walwatch"), NoTls)
        .await
        .err()
        .expect("no upstream");
    let (code, message) = db_error(&e);
    assert_eq!(code, "08001");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
    assert!(message.contains("cannot be reached"), "{message}");
    assert_eq!(down.events().all()[0].data.action, ProxyAction::Error);
}

/// A byte relay to the shared cluster whose connections the test can cut at once: an upstream
/// that goes away mid-query without a word (a crash, a network cut), which a real server will
/// not do on request (pg_terminate_backend sends a FATAL first).
async fn cuttable_upstream() -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let server = tokio::task::spawn_blocking(upstream).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (server, mut cut_rx) = (server.clone(), cut_rx.clone());
            tokio::spawn(async move {
                let mut up = tokio::net::TcpStream::connect(&server).await.unwrap();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut up) => {}
                    _ = cut_rx.wait_for(|cut| *cut) => {}
                }
            });
        }
    });
    (addr, cut)
}

/// The upstream goes away in the middle of a query: that client gets an 08006 error naming
/// what happened, and an event; the proxy serves the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_dying_mid_query_fails_only_that_query_clearly() {
    let (relay, cut) = cuttable_upstream().await;
    let p = Proxy::builder(relay.to_string()).start().await.unwrap();
    let c = connect(&through(&p, "walwatch")).await;
    let app = support::unique_name("midquery");
    c.batch_execute(&format!("SET application_name = '{app}'"))
        .await
        .unwrap();
    let running = tokio::spawn(async move { c.batch_execute("SELECT pg_sleep(60)").await });
    let probe = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}' AND state = 'active';"
    );
    tokio::task::spawn_blocking(move || {
        support::wait_until("the query to run upstream", Duration::from_secs(30), || {
            (sql(&probe).trim() == "1").then_some(())
        })
    })
    .await
    .unwrap();
    cut.send(true).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(20), running)
        .await
        .expect("the client is told at once, not after the query's 60 s")
        .unwrap()
        .expect_err("the query cannot complete");
    let (code, message) = db_error(&err);
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("the upstream server closed the connection"),
        "{message}"
    );
    let events = p.events().all();
    assert!(
        events.iter().any(|e| e.data.action == ProxyAction::Error
            && e.data.message.as_deref() == Some(message.as_str())
            && e.data.sqlstate.as_deref() == Some("08006")),
        "an event says so: {events:?}"
    );
    // New connections through the relay are not cut.
    cut.send(false).unwrap();
    let c = connect(&through(&p, "walwatch")).await;
    assert_eq!(select_one(&c).await, 1, "the proxy still serves");
}

/// A client that asks for a large result and never reads it fills its own socket buffers
/// and the proxy's; every other connection is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_up_nobody_else() {
    let p = start(&[]).await;
    let addr = p.addr();
    let stalled = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let mut pkt = vec![0, 0, 0, 0, 0, 3, 0, 0];
        pkt.extend_from_slice(b"user\0walwatch_trust\0database\0");
        pkt.extend_from_slice(TEST_DATABASE.as_bytes());
        pkt.extend_from_slice(b"\0\0");
        let len = (pkt.len() as u32).to_be_bytes();
        pkt[..4].copy_from_slice(&len);
        s.write_all(&pkt).unwrap();
        // About 200 MB of rows, far more than any socket buffer holds.
        let q = b"SELECT repeat('x', 1000000) FROM generate_series(1, 200)\0";
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((q.len() + 4) as u32).to_be_bytes());
        msg.extend_from_slice(q);
        s.write_all(&msg).unwrap();
        s // kept open, never read
    })
    .await
    .unwrap();
    // The server is blocked writing to the proxy, which holds no more of it (as a superuser:
    // another role's wait event is hidden from the test role).
    let admin = support::admin_client(TEST_DATABASE).await;
    let blocked = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'walwatch_trust' \
                   AND wait_event = 'ClientWrite'";
    let what = "the stalled query never blocked the server in ClientWrite";
    wait_for_count(&admin, blocked, Duration::from_secs(60), what, |n| n >= 1).await;
    let started = Instant::now();
    for _ in 0..20 {
        let c = connect(&through(&p, "walwatch")).await;
        assert_eq!(select_one(&c).await, 1);
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "others were held up: {:?}",
        started.elapsed()
    );
    drop(stalled);
}

#[test]
fn the_cli_proxy_fails_psql_statements_and_writes_events() {
    let cluster = support::cluster();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let port = support::free_port();
    let t = table("px_cli");
    let mut child = walwatch()
        .args([
            "proxy",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &upstream(),
            "--fault",
            &format!("error:INSERT INTO {t}*:disk full"),
            "--events",
        ])
        .arg(&events)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let _child = harness::KillOnDrop(child);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while stderr.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).to_string();
    assert!(line.contains("listening on"), "the proxy said: {line}");
    let psql = |sql: &str| {
        std::process::Command::new(cluster.bin_dir().join("psql"))
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .arg(format!(
                "postgresql://walwatch:{TEST_PASSWORD}@127.0.0.1:{port}/{TEST_DATABASE}"
            ))
            .output()
            .unwrap()
    };
    let out = psql(&format!("INSERT INTO {t} VALUES (1)"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ERROR:  disk full"), "psql said: {err}");
    let out = psql("SELECT 40 + 2");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    let text = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("schemas/proxy-event.schema.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    for l in &lines {
        let errors: Vec<String> = validator.iter_errors(l).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{l} violates the schema: {errors:?}");
    }
    assert_eq!(lines[0]["type"], "proxy");
    assert_eq!(lines[0]["data"]["action"], "error");
    assert_eq!(
        lines[0]["data"]["rule"],
        format!("error:INSERT INTO {t}*:disk full")
    );
    // `walwatch assert` reads proxy events with the same expressions as WAL events.
    let assert = |kind: &str, expr: &str, code: i32| {
        let mut cmd = walwatch();
        cmd.args(["assert", kind, "--no-fence", "--input"])
            .arg(&events);
        if kind == "eventually" {
            // The file is complete: look back from its start, not after the call.
            cmd.args(["--within", "5s", "--since", "start"]);
        }
        let out = cmd.args(["--where", expr]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert_eq!(
            out.status.code(),
            Some(code),
            "assert {kind} {expr}: {stderr}"
        );
        stderr
    };
    let harness = r#"type == "proxy" && data.action == "error" && data.query.startsWith("INSERT")"#;
    assert("eventually", harness, 0);
    let report = assert("never", harness, 1);
    assert!(
        report.contains("proxy error #1"),
        "the report names the event: {report}"
    );
    assert("never", r#"type == "proxy" && data.action == "drop""#, 0);
}

#[test]
fn bad_rules_are_refused_before_listening() {
    let out = walwatch()
        .args(["proxy", "--upstream", "127.0.0.1:1", "--fault", "oops:X"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown action `oops`"), "{err}");
    assert!(err.contains("error:QUERY:MESSAGE"), "{err}");
}

/// 200 connections × 1,000 statements at once, with rules that never match in the path of
/// every statement: each answer is checked against its own statement, so a response relayed
/// to the wrong client or lost would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_get_only_their_own_answers() {
    let mut rules = Vec::new();
    for i in 0..10 {
        rules.push(format!("error:DELETE FROM nowhere_{i}*:never"));
    }
    // Its own cluster: 200 clients at once would crowd the shared one's max_connections.
    let cluster = tokio::task::spawn_blocking(|| {
        support::own_cluster(support::ScratchOptions {
            extra_conf: vec![("max_connections".into(), "260".into())],
            ..Default::default()
        })
    })
    .await
    .unwrap();
    let mut b = Proxy::builder(format!("127.0.0.1:{}", cluster.port()));
    for r in &rules {
        b = b.fault(r.parse().unwrap());
    }
    let p = b.start().await.unwrap();
    let dsn = through(&p, "walwatch_trust");
    let mut tasks = Vec::new();
    for conn in 0..200i64 {
        let dsn = dsn.clone();
        tasks.push(tokio::spawn(async move {
            let c = connect(&dsn).await;
            let stmt = c
                .prepare("SELECT $1::bigint * 1000 + $2::bigint")
                .await
                .unwrap();
            for i in 0..1000i64 {
                let got: i64 = if i % 10 == 0 {
                    let rows = c
                        .simple_query(&format!("SELECT {conn} * 1000 + {i}"))
                        .await
                        .unwrap();
                    match &rows[1] {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            r.get(0).unwrap().parse().unwrap()
                        }
                        other => panic!("connection {conn}: expected a row, got {other:?}"),
                    }
                } else {
                    c.query_one(&stmt, &[&conn, &i]).await.unwrap().get(0)
                };
                assert_eq!(got, conn * 1000 + i, "connection {conn}, statement {i}");
            }
            conn
        }));
    }
    let mut done = 0;
    for t in tasks {
        t.await.expect("a connection's task");
        done += 1;
    }
    assert_eq!(done, 200);
    assert!(p.events().all().is_empty(), "no rule matched");
    assert!(p.rules().list().iter().all(|r| r.matched == 0));
}
