//! The worked example of the README, end to end: `insert_rejected`. An order service talks to
//! PostgreSQL through the fault proxy; `error:INSERT*:disk full` is injected; the service
//! answers 5xx; `eventually` a proxy event with action error; `never` a WAL INSERT during the
//! fault; then the rule is removed and the order eventually commits. Once from Rust (one
//! `Watch` merging the proxy's events), once from the CLI (a recording and an events file in
//! one `walwatch assert`). Also how `never` is fenced over proxy events, in both.

mod harness;
mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use harness::{KillOnDrop, dsn, record, sql, walwatch};
use support::{TEST_DATABASE, TEST_PASSWORD};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use walwatch::proxy::{self, Proxy};
use walwatch::{Event, Watch, report_of};

fn upstream() -> String {
    format!("127.0.0.1:{}", support::cluster().port())
}

/// The orders table of one test.
fn orders_table() -> String {
    let t = support::unique_name("orders");
    sql(&format!(
        "CREATE TABLE {t} (id serial PRIMARY KEY, item text NOT NULL);"
    ));
    t
}

/// The application under test: `POST /orders` with the item as its body inserts an order
/// through `db_url` (the proxy) and answers 201, or 503 with the database's message when the
/// INSERT fails. HTTP/1.1, one request per connection.
struct OrderService {
    addr: std::net::SocketAddr,
}

impl OrderService {
    async fn start(db_url: &str, table: &str) -> OrderService {
        let (db, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("the service connects through the proxy: {e}"));
        tokio::spawn(conn);
        let db = Arc::new(db);
        let insert = format!("INSERT INTO {table} (item) VALUES ($1)");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (db, insert) = (db.clone(), insert.clone());
                tokio::spawn(async move { serve(tcp, &db, &insert).await });
            }
        });
        OrderService { addr }
    }

    /// Places an order; returns the HTTP status and body.
    async fn place_order(&self, item: &str) -> (u16, String) {
        let mut tcp = TcpStream::connect(self.addr).await.unwrap();
        let request = format!(
            "POST /orders HTTP/1.1\r\nHost: shop\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{item}",
            item.len()
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        tcp.read_to_string(&mut answer).await.unwrap();
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
        let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }
}

async fn serve(mut tcp: TcpStream, db: &tokio_postgres::Client, insert: &str) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    let body = loop {
        let n = tcp.read(&mut buf).await.unwrap_or(0);
        if n == 0 {
            return;
        }
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                break body[..len].to_string();
            }
        }
    };
    let (status, text) = match db.execute(insert, &[&body]).await {
        Ok(_) => ("201 Created", "created".to_string()),
        Err(e) => (
            "503 Service Unavailable",
            e.as_db_error()
                .map_or(e.to_string(), |d| d.message().to_string()),
        ),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = tcp.write_all(answer.as_bytes()).await;
}

fn through(addr: impl std::fmt::Display) -> String {
    format!("postgres://walwatch:{TEST_PASSWORD}@{addr}/{TEST_DATABASE}")
}

const PROXY_ERROR_ON_INSERT: &str =
    r#"type == "proxy" && data.action == "error" && data.query.startsWith("INSERT")"#;

/// The README's worked example, from Rust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_rejected_from_rust() {
    let orders = orders_table();
    let (upstream, dsn) = tokio::task::spawn_blocking(|| (upstream(), dsn()))
        .await
        .unwrap();
    let proxy = Proxy::builder(upstream).start().await.unwrap();
    let service = OrderService::start(&through(proxy.addr()), &orders).await;
    let watch = Watch::builder(dsn)
        .tables([&orders])
        .proxy(&proxy)
        .start()
        .await
        .unwrap();

    // The fault lasts as long as its guard.
    let fault = proxy.fault(proxy::error("INSERT*", "disk full")).unwrap();
    let mark = watch.mark("insert_fail").await.unwrap();
    let (status, body) = service.place_order("book").await;
    assert!(status >= 500, "the service answers 5xx: {status} {body}");
    assert_eq!(
        body, "disk full",
        "the database's message reaches the service"
    );
    let e = watch
        .eventually_expr(PROXY_ERROR_ON_INSERT, Duration::from_secs(10))
        .await
        .expect("a proxy event with action error");
    assert_eq!(e.proxy().unwrap().data["rule"], "error:INSERT*:disk full");
    watch
        .never_since(&mark, |e: &Event| e.is_insert())
        .await
        .expect("no WAL INSERT during the fault");

    // Heal: the order eventually commits.
    drop(fault);
    let (status, body) = service.place_order("book").await;
    assert_eq!(status, 201, "{body}");
    watch
        .eventually_expr(
            r#"type == "wal" && op == "INSERT" && data.item == "book""#,
            Duration::from_secs(20),
        )
        .await
        .expect("the order is committed");

    // What the watch saw since the mark, in order: the proxy's error, then the WAL's INSERT.
    watch.sync().await.unwrap();
    let seen: Vec<String> = watch
        .events_since(&mark)
        .iter()
        .filter(|e| e.proxy().is_some() || e.is_insert())
        .map(|e| match e.proxy() {
            Some(p) => format!("proxy {}", p.data["action"].as_str().unwrap_or("?")),
            None => format!("wal {}", e.op().as_str()),
        })
        .collect();
    assert_eq!(seen, ["proxy error", "wal INSERT"]);
    watch.stop().await.unwrap();
}

/// `Watch::never` and `count` over proxy events: an action recorded inside the window fails
/// `never`, one recorded before it is outside; `count_since` counts the proxy's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_fences_proxy_events_by_when_the_proxy_recorded_them() {
    let t = orders_table();
    let (upstream, dsn) = tokio::task::spawn_blocking(|| (upstream(), dsn()))
        .await
        .unwrap();
    let proxy = Proxy::builder(upstream).start().await.unwrap();
    let _fault = proxy
        .fault(proxy::error(&format!("INSERT INTO {t}*"), "disk full"))
        .unwrap();
    let (db, conn) = tokio_postgres::connect(&through(proxy.addr()), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let watch = Watch::builder(dsn)
        .tables([&t])
        .proxy(&proxy)
        .start()
        .await
        .unwrap();
    let insert = format!("INSERT INTO {t} (item) VALUES ('x')");

    // Before the window: the client has its error, so the proxy recorded it already.
    db.batch_execute(&insert).await.unwrap_err();
    watch
        .never_expr(PROXY_ERROR_ON_INSERT, Duration::from_millis(300))
        .await
        .expect("an action recorded before the window is outside it");

    // Inside the window: a client fails an INSERT every 50 ms from before the call until
    // after it returns, so the 2 s window certainly holds some.
    let mark = watch.mark("inside").await.unwrap();
    let before = proxy.events().last_seq();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (stop, insert) = (stop.clone(), insert.clone());
        tokio::spawn(async move {
            let mut failed = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                db.batch_execute(&insert).await.unwrap_err();
                failed += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (db, failed)
        })
    };
    let res = watch
        .never_expr(PROXY_ERROR_ON_INSERT, Duration::from_secs(2))
        .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (db, failed) = client.await.unwrap();
    let report = report_of(res.as_ref().unwrap_err())
        .unwrap_or_else(|| panic!("expected a failed assertion, got {res:?}"))
        .clone();
    assert!(report.to_string().contains("proxy error"), "{report}");
    // Every error after the mark was recorded before this call: all counted.
    let recorded = proxy
        .events()
        .all()
        .iter()
        .filter(|e| e.seq > before)
        .count();
    assert_eq!(recorded, failed, "one event per failed INSERT");
    let counted = watch
        .count_since(
            &mark,
            walwatch::Expr::compile(PROXY_ERROR_ON_INSERT).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(counted, failed, "count_since counts the proxy's events");
    drop(db);
    watch.stop().await.unwrap();
}

/// `walwatch proxy` with an events file and a control API; returns once it listens.
fn cli_proxy(events: &Path) -> (KillOnDrop, String, String) {
    let (port, control) = (support::free_port(), support::free_port());
    let mut child = walwatch()
        .args([
            "proxy",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &upstream(),
            "--control",
            &format!("127.0.0.1:{control}"),
            "--events",
        ])
        .arg(events)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("listening on"), "the proxy said: {line}");
    // Drained to the end: a closed pipe would end the proxy at its next log line.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (
        KillOnDrop(child),
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{control}"),
    )
}

fn run(args: &[&str]) -> Output {
    walwatch().args(args).output().unwrap()
}

fn expect(out: &Output, code: i32, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}\nstderr:\n{stderr}\nstdout:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

/// The README's worked example, from the CLI: a recording and the proxy's events file in one
/// `walwatch assert`, `--since` a mark made in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_rejected_from_the_cli() {
    let orders = orders_table();
    let dir = tempfile::tempdir().unwrap();
    let (wal, events) = (dir.path().join("wal.jsonl"), dir.path().join("proxy.jsonl"));
    let (wal_s, events_s) = (wal.to_str().unwrap(), events.to_str().unwrap());
    let ready = dir.path().join("ready");
    let d = tokio::task::spawn_blocking(dsn).await.unwrap();
    let (_proxy, listen, control) = cli_proxy(&events);
    let _recorder = KillOnDrop(record(&orders, &wal, &ready));
    let service = OrderService::start(&through(&listen), &orders).await;

    expect(
        &run(&["mark", "insert_fail", "--dsn", &d, "--proxy", &control]),
        0,
        "mark",
    );
    let rule = "error:INSERT*:disk full";
    expect(
        &run(&["fault", "add", rule, "--proxy", &control]),
        0,
        "fault add",
    );
    let (status, body) = service.place_order("book").await;
    assert!(status >= 500, "the service answers 5xx: {status} {body}");

    let since = ["--since", "insert_fail"];
    let out = run(&[
        &[
            "assert",
            "eventually",
            "--proxy-events",
            events_s,
            "--within",
            "10s",
        ][..],
        &since,
        &["--where", PROXY_ERROR_ON_INSERT],
    ]
    .concat());
    expect(&out, 0, "eventually a proxy error");
    let wal_insert = r#"type == "wal" && op == "INSERT""#;
    let both = ["--input", wal_s, "--proxy-events", events_s, "--dsn", &d];
    let out = run(&[
        &["assert", "never"][..],
        &both,
        &since,
        &["--where", wal_insert],
    ]
    .concat());
    expect(&out, 0, "never a WAL INSERT during the fault");
    // The same window holds the proxy's error: it was recorded before the service answered.
    let out = run(&[
        &["assert", "never"][..],
        &both,
        &since,
        &["--where", PROXY_ERROR_ON_INSERT],
    ]
    .concat());
    let report = expect(&out, 1, "never a proxy error (there is one)");
    assert!(report.contains("proxy error"), "{report}");

    expect(
        &run(&["fault", "clear", "--proxy", &control]),
        0,
        "fault clear",
    );
    let (status, body) = service.place_order("book").await;
    assert_eq!(status, 201, "{body}");
    let out = run(&[
        &[
            "assert",
            "eventually",
            "--input",
            wal_s,
            "--dsn",
            &d,
            "--within",
            "20s",
        ][..],
        &since,
        &[
            "--where",
            r#"type == "wal" && op == "INSERT" && data.item == "book""#,
        ],
    ]
    .concat());
    expect(&out, 0, "eventually the order is committed");
    let out = run(&[
        &["assert", "count"][..],
        &both,
        &since,
        &[
            "--where",
            r#"type == "proxy" || op == "INSERT""#,
            "--equals",
            "2",
        ],
    ]
    .concat());
    expect(&out, 0, "the proxy's error and the WAL's INSERT, once each");
}

/// `walwatch assert never --during` over an events file alone (no database), `--since` a
/// mark the proxy lacks, and `watch --until` over proxy events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_events_alone_need_no_database() {
    let t = orders_table();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("proxy.jsonl");
    let events_s = events.to_str().unwrap().to_string();
    let (_proxy, listen, control) = cli_proxy(&events);
    let rule = format!("error:INSERT INTO {t}*:disk full");
    expect(
        &run(&["fault", "add", &rule, "--proxy", &control]),
        0,
        "fault add",
    );
    let (db, conn) = tokio_postgres::connect(&through(&listen), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let insert = format!("INSERT INTO {t} (item) VALUES ('x')");

    // `never --during`: no --dsn and no libpq variables, so no database to fence through.
    let never = |during: &str| {
        walwatch()
            .args([
                "assert",
                "never",
                "--proxy-events",
                &events_s,
                "--during",
                during,
            ])
            .args(["--where", PROXY_ERROR_ON_INSERT])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut quiet = never("300ms");
    let status = support::wait_until("never --during 300ms", Duration::from_secs(30), || {
        quiet.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "nothing happened in the window");
    // The window opens when the command says so; an error after that fails it at once.
    let mut child = never("60s");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("the window is open") {
        if stderr.read_line(&mut said).unwrap() == 0 {
            panic!("never --during ended before its window opened: {said}");
        }
    }
    let started = std::time::Instant::now();
    db.batch_execute(&insert).await.unwrap_err();
    let status = support::wait_until(
        "never --during 60s to fail",
        Duration::from_secs(30),
        || child.try_wait().unwrap(),
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "failed at the violation"
    );
    assert!(rest.contains("proxy error"), "{rest}");

    // `--since` a mark only the database has: a clear error (exit 2).
    let out = run(&[
        "assert",
        "count",
        "--proxy-events",
        &events_s,
        "--since",
        "nowhere",
        "--where",
        "true",
        "--at-least",
        "1",
    ]);
    let err = expect(&out, 2, "--since a mark the proxy lacks");
    assert!(err.contains("there is no mark `nowhere`"), "{err}");
    assert!(err.contains("--proxy"), "it says how to make one: {err}");

    // `watch --until` over proxy events: exits 0 when the proxy fails an INSERT.
    let ready = dir.path().join("ready");
    let mut until = walwatch()
        .args(["watch", "--dsn", &dsn(), "--tables", &t, "--ready-file"])
        .arg(&ready)
        .args(["--proxy-events", &events_s, "--within", "60s"])
        .args(["--until", PROXY_ERROR_ON_INSERT, "--report", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    support::wait_until("watch's ready file", Duration::from_secs(30), || {
        ready.exists().then_some(())
    });
    db.batch_execute(&insert).await.unwrap_err();
    let status = support::wait_until("watch --until to see it", Duration::from_secs(30), || {
        until.try_wait().unwrap()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(&mut until.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    // It matched the event recorded after start-up, not those the file held before.
    let last = std::fs::read_to_string(&events).unwrap();
    let last: serde_json::Value = serde_json::from_str(last.lines().last().unwrap()).unwrap();
    let report: serde_json::Value = err
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON report on stderr: {err}"));
    assert_eq!(
        report["matches"][0]["event"]["seq"], last["seq"],
        "{report}"
    );
    assert!(
        last["seq"].as_u64().unwrap() > 1,
        "the file held events before: {last}"
    );
}
