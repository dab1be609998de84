//! The latency figure of `benches/latency.sh` (issue 16): under a steady load of single-row
//! transactions, how long from a transaction's COMMIT until a running walwatch has its event in
//! the JSONL file it writes, and in Kafka.
//!
//!   cargo bench --bench latency -- DSN JSONL_FILE BROKERS|- RATE SECONDS
//!
//! * The writer inserts one row per transaction into `orders` (autocommit, with
//!   `synchronous_commit = on`: with it off the server's WAL writer would hold commits back for
//!   up to `wal_writer_delay`, and that is not walwatch), RATE transactions a second for
//!   SECONDS, on a fixed schedule: transaction i starts at t0 + i/RATE, so a slow one is caught
//!   up on instead of shifting every later one. How late it ran behind the schedule is reported.
//! * The file: JSONL_FILE, appended to by `walwatch --output JSONL_FILE`. A thread watches it
//!   with inotify (IN_MODIFY) and reads each new line as soon as it is written; for each COMMIT
//!   event the latency is the time it read the line minus the event's `ts` (the commit
//!   timestamp the server gave the transaction). walwatch fsyncs the file before it confirms the
//!   position to the server, but the line is visible on write(), so this is commit -> written,
//!   not commit -> fsync'd.
//! * Kafka (unless BROKERS is `-`): a consumer assigned to every partition of
//!   `walwatch.public.orders` (fetch.wait.max.ms 10) receives the messages `walwatch --sink
//!   kafka://BROKERS` produces; the latency is the receive time minus the message's `ts`.
//!   Beside it, the message's CreateTime (ms, stamped by walwatch's librdkafka producer when
//!   walwatch handed it the message) minus `ts`: how much of the latency is walwatch's.
//!
//! Everything runs on one machine, so the server's clock and this process's agree. Before the
//! timed run one transaction every 100 ms warms up until both destinations have seen an event
//! (the topic exists then); only events committed after the timed run started are counted.
//! Prints p50/p99/max in milliseconds on stdout.

use std::ffi::CString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, Timestamp};
use rdkafka::{Offset, TopicPartitionList};

const TOPIC: &str = "walwatch.public.orders";

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock before 1970")
        .as_micros() as i64
}

/// `2026-11-22T03:22:01.123456Z` (walwatch's `ts`) as microseconds since the Unix epoch.
fn parse_ts(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 27 || b[4] != b'-' || b[10] != b'T' || b[19] != b'.' || b[26] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (h, mi, se, us) = (n(11..13)?, n(14..16)?, n(17..19)?, n(20..26)?);
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant, "days_from_civil").
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((mo + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + se) * 1_000_000 + us)
}

/// What a destination observed: latencies (µs) of the events of the timed run, and whether it
/// has seen any event at all (the warm-up waits for that).
#[derive(Default)]
struct Seen {
    latencies: Mutex<Vec<i64>>,
    /// Kafka only: the message's CreateTime (ms, set by walwatch's producer) minus its `ts`.
    produced: Mutex<Vec<i64>>,
    counted: AtomicUsize,
    any: AtomicBool,
}

impl Seen {
    /// An event committed at `ts` observed at `at`; counted when it committed after `start`.
    fn event(&self, ts: &str, at: i64, start: i64, created_ms: Option<i64>) {
        self.any.store(true, Ordering::Release);
        let Some(ts) = parse_ts(ts) else {
            panic!("latency: an event's ts is not walwatch's format: {ts:?}");
        };
        if ts >= start {
            if let Some(ms) = created_ms {
                self.produced.lock().unwrap().push(ms * 1000 - ts);
            }
            self.latencies.lock().unwrap().push(at - ts);
            self.counted.fetch_add(1, Ordering::Release);
        }
    }
}

/// Follows the JSONL file with inotify: every COMMIT line, timed when read.
fn tail_file(path: PathBuf, seen: Arc<Seen>, start: Arc<AtomicI64>, stop: Arc<AtomicBool>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "latency: {} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let cpath = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: plain syscalls on a descriptor this function owns.
    let ifd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
    assert!(
        ifd >= 0,
        "inotify_init1: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: cpath is a NUL-terminated path.
    let wd = unsafe { libc::inotify_add_watch(ifd, cpath.as_ptr(), libc::IN_MODIFY) };
    assert!(
        wd >= 0,
        "inotify_add_watch: {}",
        std::io::Error::last_os_error()
    );
    // The watch exists before the first read: a write after that read wakes the poll below.
    let mut file = File::open(&path).expect("open the JSONL file");
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        loop {
            let n = file.read(&mut buf).expect("read the JSONL file");
            if n == 0 {
                break;
            }
            let at = now_us();
            pending.extend_from_slice(&buf[..n]);
            let mut used = 0;
            while let Some(nl) = pending[used..].iter().position(|&c| c == b'\n') {
                let line = &pending[used..used + nl];
                used += nl + 1;
                let v: serde_json::Value = serde_json::from_slice(line).expect("a JSONL line");
                if v["op"] == "COMMIT" {
                    let ts = v["ts"].as_str().expect("ts");
                    seen.event(ts, at, start.load(Ordering::Acquire), None);
                }
            }
            pending.drain(..used);
        }
        if stop.load(Ordering::Acquire) {
            break;
        }
        let mut pfd = libc::pollfd {
            fd: ifd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; then draining the (non-blocking) inotify queue into buf.
        unsafe {
            libc::poll(&mut pfd, 1, 50);
            while libc::read(ifd, buf.as_mut_ptr().cast(), buf.len()) > 0 {}
        }
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(ifd) };
}

/// Consumes walwatch's topic from the beginning: every message, timed when received.
fn consume(brokers: String, seen: Arc<Seen>, start: Arc<AtomicI64>, stop: Arc<AtomicBool>) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "walwatch-latency")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    // The topic is created by walwatch's first message (the warm-up).
    let partitions = loop {
        if stop.load(Ordering::Acquire) {
            return;
        }
        if let Ok(md) = consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(5))
            && let Some(t) = md.topics().iter().find(|t| t.name() == TOPIC)
            && t.error().is_none()
            && !t.partitions().is_empty()
        {
            break t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let at = now_us();
                let v: serde_json::Value =
                    serde_json::from_slice(m.payload().expect("a value")).expect("a JSON value");
                let created = match m.timestamp() {
                    Timestamp::CreateTime(ms) => Some(ms),
                    _ => None,
                };
                seen.event(
                    v["ts"].as_str().expect("ts"),
                    at,
                    start.load(Ordering::Acquire),
                    created,
                );
            }
            Some(Err(e)) => eprintln!("latency: consumer: {e}"),
            None => {}
        }
    }
}

/// `p50 .. p99 .. max ..` of latencies in µs, in milliseconds.
fn percentiles(mut v: Vec<i64>) -> String {
    v.sort_unstable();
    let at =
        |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1] as f64 / 1000.0;
    format!(
        "p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        at(0.50),
        at(0.99),
        v[v.len() - 1] as f64 / 1000.0
    )
}

fn report(name: &str, what: &str, seen: &Seen, expected: usize) {
    let v = seen.latencies.lock().unwrap().clone();
    if v.is_empty() {
        println!("{name}: no events");
        return;
    }
    println!(
        "{name}: {} of {expected} {what}: {}",
        v.len(),
        percentiles(v)
    );
    let produced = seen.produced.lock().unwrap().clone();
    if !produced.is_empty() {
        println!(
            "  of which COMMIT ts -> the message's CreateTime (ms; when walwatch's producer took it): {}",
            percentiles(produced)
        );
    }
}

fn main() {
    // cargo passes `--bench` (and test runners `--list`); without our arguments there is
    // nothing to do (benches/latency.sh provides the server, walwatch and the broker).
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let [dsn, file, brokers, rate, secs] = &args[..] else {
        eprintln!(
            "latency: usage: latency DSN JSONL_FILE BROKERS|- RATE SECONDS (benches/latency.sh runs it)"
        );
        return;
    };
    let rate: f64 = rate.parse().expect("RATE");
    let secs: f64 = secs.parse().expect("SECONDS");
    let total = (rate * secs).round() as usize;
    let kafka = brokers != "-";

    let start = Arc::new(AtomicI64::new(i64::MAX));
    let stop = Arc::new(AtomicBool::new(false));
    let file_seen = Arc::new(Seen::default());
    let kafka_seen = Arc::new(Seen::default());
    let mut threads = vec![{
        let (s, st, sp, p) = (
            file_seen.clone(),
            start.clone(),
            stop.clone(),
            PathBuf::from(file),
        );
        std::thread::spawn(move || tail_file(p, s, st, sp))
    }];
    if kafka {
        let (s, st, sp, b) = (
            kafka_seen.clone(),
            start.clone(),
            stop.clone(),
            brokers.clone(),
        );
        threads.push(std::thread::spawn(move || consume(b, s, st, sp)));
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(dsn, tokio_postgres::NoTls))
        .expect("connect");
    rt.spawn(conn);
    let stmt = rt
        .block_on(async {
            client.batch_execute("SET synchronous_commit = on").await?;
            client
                .prepare("INSERT INTO orders (user_id, item, status, amount, created_at) VALUES ($1, 'latency', 'new', 12.50, now())")
                .await
        })
        .expect("prepare");
    let insert = |i: usize| {
        rt.block_on(client.execute(&stmt, &[&((i % 1000) as i32)]))
            .expect("insert");
    };

    // Warm-up: until both destinations have seen an event.
    let warm = Instant::now();
    let mut i = 0;
    while !(file_seen.any.load(Ordering::Acquire)
        && (!kafka || kafka_seen.any.load(Ordering::Acquire)))
    {
        assert!(
            warm.elapsed() < Duration::from_secs(60),
            "latency: no event arrived within 60 s of the warm-up"
        );
        insert(i);
        i += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "latency: warmed up ({i} transactions, {:.1}s); {total} transactions at {rate}/s",
        warm.elapsed().as_secs_f64()
    );

    // The timed run, on a fixed schedule.
    start.store(now_us(), Ordering::Release);
    let period = Duration::from_secs_f64(1.0 / rate);
    let t0 = Instant::now();
    let (mut late, mut max_late) = (0usize, Duration::ZERO);
    for i in 0..total {
        let due = t0 + period * i as u32;
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        } else {
            let behind = now - due;
            max_late = max_late.max(behind);
            if behind > Duration::from_millis(1) {
                late += 1;
            }
        }
        insert(i);
    }
    let took = t0.elapsed().as_secs_f64();

    // Until every transaction has arrived (or 60 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    while (file_seen.counted.load(Ordering::Acquire) < total
        || (kafka && kafka_seen.counted.load(Ordering::Acquire) < total))
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Release);
    for t in threads {
        t.join().expect("a watcher thread panicked");
    }

    println!(
        "writer: {total} single-row transactions (synchronous_commit=on), {rate}/s on a fixed schedule for {secs}s: took {took:.2}s; \
         {late} started over 1 ms behind schedule (at most {:.2} ms)",
        max_late.as_secs_f64() * 1000.0
    );
    report(
        "JSONL file (COMMIT ts -> line written to the file, seen via inotify; fsync not awaited)",
        "COMMIT events",
        &file_seen,
        total,
    );
    if kafka {
        report(
            "Kafka (COMMIT ts -> message received by a consumer of Tansu)",
            "messages",
            &kafka_seen,
            total,
        );
    }
    let short = file_seen.counted.load(Ordering::Acquire) < total
        || (kafka && kafka_seen.counted.load(Ordering::Acquire) < total);
    if short {
        eprintln!("latency: some events did not arrive within 60 s of the last commit");
        std::process::exit(1);
    }
}
