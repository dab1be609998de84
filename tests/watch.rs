//! The harness library (`walwatch::Watch`) against a real server: each assertion passes and
//! fails where it should, fences make `never` and `count` exact, and failure reports name the
//! near miss and diagnose why an event is missing.

mod harness;
mod support;

use std::time::Duration;

use harness::{dsn, sql};
use tokio_postgres::NoTls;
use walwatch::{Error, Event, Op, Watch, named, report_of};

async fn client() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&dsn(), NoTls)
        .await
        .expect("connect as the test role");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A fresh table `t (id int primary key, status text)`.
fn table(prefix: &str) -> String {
    let t = support::unique_name(prefix);
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, status text NOT NULL DEFAULT 'new');"
    ));
    t
}

async fn start(tables: &[&str]) -> Watch {
    let dsn = tokio::task::spawn_blocking(dsn).await.unwrap();
    Watch::builder(dsn)
        .tables(tables)
        .fence_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap_or_else(|e| panic!("watch start: {e}"))
}

fn expect_report(res: Result<impl std::fmt::Debug, Error>) -> walwatch::Report {
    match res {
        Err(e) => report_of(&e)
            .unwrap_or_else(|| panic!("expected an assertion failure, got the error: {e}"))
            .clone(),
        Ok(v) => panic!("expected an assertion failure, got Ok({v:?})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eventually_passes_on_a_commit_and_fails_at_the_deadline_with_a_near_miss() {
    let t = table("ev");
    let w = start(&[&t]).await;
    let db = client().await;
    db.batch_execute(&format!("INSERT INTO {t} VALUES (1, 'paid')"))
        .await
        .unwrap();
    let tn = t.clone();
    let e = w
        .eventually(
            move |e: &Event| e.is_insert() && e.table() == tn,
            Duration::from_secs(20),
        )
        .await
        .expect("the insert arrives");
    assert_eq!(
        e.data.as_ref().unwrap().get("id").unwrap().as_i64(),
        Some(1)
    );

    let expr = format!(r#"table == "{t}" && op == "INSERT" && data.status == "shipped""#);
    let started = std::time::Instant::now();
    let report = expect_report(w.eventually_expr(&expr, Duration::from_millis(500)).await);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "failed before its deadline"
    );
    let text = report.to_string();
    let near = report
        .near_miss
        .as_ref()
        .unwrap_or_else(|| panic!("no near miss:\n{text}"));
    assert!(
        near.event
            .summary
            .starts_with(&format!("INSERT public.{t}")),
        "{text}"
    );
    assert_eq!(
        near.differed,
        vec![r#"data.status == "shipped"  (data.status is "paid")"#.to_string()],
        "{text}"
    );
    assert!(text.contains(&format!("last events on {t}")), "{text}");
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_fails_on_a_change_committed_just_before_the_fence() {
    let t = table("nv");
    let w = start(&[&t]).await;
    let db = client().await;
    let mark = w.mark("fault-start").await.unwrap();
    // Committed, but very likely not yet through the stream when never_since is called: only
    // the fence makes the check see it.
    db.batch_execute(&format!("INSERT INTO {t} VALUES (7)"))
        .await
        .unwrap();
    let report = expect_report(
        w.never_since(
            &mark,
            named("no insert during the fault", |e: &Event| e.is_insert()),
        )
        .await,
    );
    assert_eq!(report.matches.len(), 1, "{report}");
    assert_eq!(report.matches[0].event["data"]["id"], 7, "{report}");
    assert_eq!(report.predicate, "no insert during the fault");

    // The windowed form fails too, as soon as the violation arrives.
    let insert = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        db.batch_execute(&format!("INSERT INTO {t} VALUES (8)"))
            .await
            .unwrap();
    };
    let (res, ()) = tokio::join!(
        w.never(|e: &Event| e.is_insert(), Duration::from_secs(3)),
        insert
    );
    let report = expect_report(res);
    assert_eq!(report.matches[0].event["data"]["id"], 8, "{report}");
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_holds_when_nothing_matches_and_a_later_commit_is_outside_the_window() {
    let t = table("nvok");
    let other = table("nvother");
    let w = start(&[&t, &other]).await;
    let db = client().await;
    let late = client().await;
    // A transaction that writes now but commits after the window's fence.
    late.batch_execute(&format!("BEGIN; INSERT INTO {t} VALUES (1)"))
        .await
        .unwrap();
    db.batch_execute(&format!("INSERT INTO {other} VALUES (1)"))
        .await
        .unwrap();
    let expr = format!(r#"table == "{t}" && op == "INSERT""#);
    w.never_expr(&expr, Duration::from_millis(300))
        .await
        .expect("nothing on the table committed in the window");
    late.batch_execute("COMMIT").await.unwrap();
    // It is seen once committed.
    w.eventually_expr(&expr, Duration::from_secs(20))
        .await
        .expect("the late commit arrives");
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_is_exact_with_concurrent_writers_on_other_tables() {
    let t = table("cnt");
    let noise = table("noise");
    let w = start(&[&t, &noise]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let noise = noise.clone();
        tokio::spawn(async move {
            let db = client().await;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 2000 {
                db.batch_execute(&format!("INSERT INTO {noise} VALUES ({i})"))
                    .await
                    .unwrap();
                i += 1;
            }
            i
        })
    };
    let db = client().await;
    for id in 1..=3 {
        db.batch_execute(&format!("INSERT INTO {t} VALUES ({id})"))
            .await
            .unwrap();
    }
    let expr = format!(r#"table == "{t}" && op == "INSERT""#);
    let n = w.count_expr(&expr, Duration::from_secs(30)).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert_eq!(
        n, 3,
        "count of inserts into {t} ({written} noise rows written meanwhile)"
    );
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marks_sync_and_events_since() {
    let t = table("mk");
    let w = start(&[&t]).await;
    let db = client().await;
    db.batch_execute(&format!("INSERT INTO {t} VALUES (1)"))
        .await
        .unwrap();
    let m = w.mark("step-2").await.unwrap();
    db.batch_execute(&format!(
        "INSERT INTO {t} VALUES (2); UPDATE {t} SET status = 'paid' WHERE id = 2"
    ))
    .await
    .unwrap();
    w.sync().await.unwrap();
    let ops: Vec<String> = w
        .events_since(&m)
        .iter()
        .filter(|e| e.op.is_change())
        .map(|e| {
            format!(
                "{} {}",
                e.op,
                e.data
                    .as_ref()
                    .unwrap()
                    .get("id")
                    .unwrap()
                    .as_i64()
                    .unwrap()
            )
        })
        .collect();
    assert_eq!(ops, vec!["INSERT 2", "UPDATE 2"]);
    assert!(
        w.events().iter().any(|e| e.op == Op::Insert),
        "events() holds the first insert"
    );
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_diagnoses_a_table_outside_the_publication_and_an_open_transaction() {
    let watched = table("diag");
    let unwatched = table("diagx");
    let w = start(&[&watched]).await;
    let db = client().await;
    db.batch_execute(&format!("INSERT INTO {unwatched} VALUES (1)"))
        .await
        .unwrap();
    let report = expect_report(
        w.eventually_expr(
            &format!(r#"table == "{unwatched}" && op == "INSERT""#),
            Duration::from_millis(300),
        )
        .await,
    );
    assert!(
        report
            .diagnostics
            .iter()
            .any(|d| d.contains("is not in the publication") && d.contains(&unwatched)),
        "{report}"
    );

    let open = client().await;
    open.batch_execute(&format!("BEGIN; INSERT INTO {watched} VALUES (5)"))
        .await
        .unwrap();
    let report = expect_report(
        w.eventually_expr(
            &format!(r#"table == "{watched}" && data.id == 5"#),
            Duration::from_millis(300),
        )
        .await,
    );
    open.batch_execute("ROLLBACK").await.unwrap();
    assert!(
        report
            .diagnostics
            .iter()
            .any(|d| d.contains("a transaction is still open") && d.contains(&watched)),
        "{report}"
    );

    let report = expect_report(
        w.eventually_expr(
            &format!(r#"table == "{watched}" && op == "UPDATE" && old.status == "new""#),
            Duration::from_millis(100),
        )
        .await,
    );
    assert!(
        report
            .diagnostics
            .iter()
            .any(|d| d.contains("REPLICA IDENTITY DEFAULT")
                && d.contains("old.status")
                && d.contains("REPLICA IDENTITY FULL")),
        "{report}"
    );
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expression_errors_are_errors_not_assertion_failures() {
    let t = table("experr");
    let w = start(&[&t]).await;
    let db = client().await;
    db.batch_execute(&format!("INSERT INTO {t} VALUES (1)"))
        .await
        .unwrap();
    let err = w
        .eventually_expr(r#"data.id == "1""#, Duration::from_secs(20))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Expr(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("compares a number (1) with a string"),
        "{err}"
    );
    let err = w
        .eventually_expr("data.id ==", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("line 1, column"), "{err}");
    w.stop().await.unwrap();
}

/// An order service whose INSERTs a trigger rejects: `never_since` holds through the fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_since_holds_while_a_trigger_rejects_inserts() {
    let orders = support::unique_name("orders");
    sql(&format!(
        "CREATE TABLE {orders} (id serial PRIMARY KEY, item text NOT NULL);
         CREATE FUNCTION {orders}_fail() RETURNS trigger LANGUAGE plpgsql AS
           $$BEGIN RAISE EXCEPTION 'injected fault'; END$$;"
    ));
    let db = client().await;
    let place_order = |item: &'static str| {
        let sql = format!("INSERT INTO {orders} (item) VALUES ('{item}')");
        let db = &db;
        async move { db.batch_execute(&sql).await }
    };
    let watch = start(&[&orders]).await;

    // Inject the fault: every INSERT into orders fails.
    db.batch_execute(&format!(
        "CREATE TRIGGER fault BEFORE INSERT ON {orders} FOR EACH ROW EXECUTE FUNCTION {orders}_fail()"
    ))
    .await
    .unwrap();
    let fault = watch.mark("fault-start").await.unwrap();
    assert!(
        place_order("book").await.is_err(),
        "the service sees the failure"
    );
    watch
        .never_since(&fault, |e: &Event| e.is_insert())
        .await
        .expect("no row reached the WAL during the fault");

    // Heal and retry: the order eventually exists.
    db.batch_execute(&format!("DROP TRIGGER fault ON {orders}"))
        .await
        .unwrap();
    place_order("book").await.unwrap();
    let e = watch
        .eventually_expr(
            &format!(r#"table == "{orders}" && op == "INSERT" && data.item == "book""#),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(e.data.unwrap().get("item").unwrap().as_str(), Some("book"));
    watch.stop().await.unwrap();
}

/// `.partitions(Leaf)`: a partitioned table's changes come under the partition's name, with
/// the watched table in `partition_of`; by default under the watched table's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_is_watched_in_either_mode() {
    let t = support::unique_name("wpart");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY) PARTITION BY RANGE (id);
         CREATE TABLE {t}_a PARTITION OF {t} FOR VALUES FROM (MINVALUE) TO (MAXVALUE);"
    ));
    let dsn = tokio::task::spawn_blocking(dsn).await.unwrap();
    let leaf = Watch::builder(dsn.clone())
        .tables([&t])
        .partitions(walwatch::config::Partitions::Leaf)
        .start()
        .await
        .unwrap_or_else(|e| panic!("watch start: {e}"));
    let root = start(&[&t]).await;
    let db = client().await;
    db.batch_execute(&format!("INSERT INTO {t} VALUES (1)"))
        .await
        .unwrap();
    let within = Duration::from_secs(20);
    let e = leaf
        .eventually(|e: &Event| e.is_insert(), within)
        .await
        .unwrap();
    assert_eq!(e.table(), format!("{t}_a"));
    let of = e.partition_of.as_ref().expect("partition_of");
    assert_eq!((&*of.schema, &*of.table), ("public", t.as_str()));
    let e = root
        .eventually(|e: &Event| e.is_insert(), within)
        .await
        .unwrap();
    assert_eq!(e.table(), t);
    assert!(e.partition_of.is_none(), "{e:?}");
}

/// A watch's own fences and marks (and their transactions) are never seen by a predicate, its
/// or another watch's on the database; `eventually_since` looks after a mark only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watchs_markers_are_its_own_and_invisible_to_its_assertions() {
    let t = table("own");
    let (w1, w2) = (start(&[&t]).await, start(&[&t]).await);
    let db = client().await;
    db.batch_execute(&format!("INSERT INTO {t} VALUES (1)"))
        .await
        .unwrap();
    let tx_edges = |e: &Event| e.op() == Op::Begin || e.op() == Op::Commit;
    let m1 = w1.mark("phase").await.unwrap();
    w1.never(tx_edges, Duration::from_millis(200))
        .await
        .unwrap();
    let m2 = w2.mark("phase").await.unwrap();
    db.batch_execute(&format!("INSERT INTO {t} VALUES (2)"))
        .await
        .unwrap();
    // After w1's mark: one application transaction, however many fences w1 and w2 emitted.
    for _ in 0..3 {
        assert_eq!(w1.count_since(&m1, tx_edges).await.unwrap(), 2);
        assert_eq!(w2.count_since(&m2, tx_edges).await.unwrap(), 2);
    }
    assert_eq!(
        w1.count(tx_edges, Duration::from_secs(30)).await.unwrap(),
        4
    );
    let ins2 = format!(r#"table == "{t}" && op == "INSERT" && data.id == 2"#);
    let ins1 = format!(r#"table == "{t}" && op == "INSERT" && data.id == 1"#);
    let e = w2
        .eventually_since(
            &m2,
            walwatch::Expr::compile(&ins2).unwrap(),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert_eq!(e.op(), Op::Insert);
    let report = expect_report(
        w2.eventually_since(
            &m2,
            walwatch::Expr::compile(&ins1).unwrap(),
            Duration::from_millis(300),
        )
        .await,
    );
    assert!(
        report
            .window
            .contains(&format!("after mark `phase` ({})", m2.lsn)),
        "{}",
        report.window
    );
    // Since the watch started, the first row is there.
    w2.eventually_expr(&ins1, Duration::from_secs(20))
        .await
        .unwrap();
    w1.stop().await.unwrap();
    w2.stop().await.unwrap();
}
