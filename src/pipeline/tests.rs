//! The decode side and the fan-out, without a server: batches, positions, failures, a stalled
//! sink beside a live one, and the byte budget.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Progress;
use super::fanout::Output;
use super::sinks::{BATCH_BUDGET, SinkSet};
use crate::error::{Error, Result};
use crate::event::{Column, Event, Lsn, Op, Row, Value};
use crate::filter::{Filter, OpSet};
use crate::sink::{Batch, Sink};

/// What a test sink saw: its batches (event ops and tables, and `end`).
#[derive(Default)]
struct Seen {
    events: Vec<String>,
    ends: Vec<Lsn>,
}

/// A sink that records what it is given and acknowledges at once.
struct Collect(Arc<Mutex<Seen>>);

impl Sink for Collect {
    fn write(&mut self, b: &Batch) -> Result<()> {
        let mut seen = self.0.lock().unwrap();
        seen.events
            .extend(b.events.iter().map(|e| format!("{} {}", e.op, e.table())));
        seen.ends.push(b.end);
        Ok(())
    }
    fn acknowledge(&mut self, written: Lsn) -> Result<Lsn> {
        Ok(written)
    }
    fn describe(&self) -> String {
        "collect".into()
    }
}

/// A sink that blocks in `write` until the test lets it go, saying when it is blocked.
struct Stalled {
    entered: std_mpsc::Sender<()>,
    release: Arc<Mutex<std_mpsc::Receiver<()>>>,
}

impl Stalled {
    /// The sink, what says it entered `write`, and what lets one `write` go.
    fn new() -> (Stalled, std_mpsc::Receiver<()>, std_mpsc::Sender<()>) {
        let (entered_tx, entered) = std_mpsc::channel();
        let (release, release_rx) = std_mpsc::channel();
        let stalled = Stalled {
            entered: entered_tx,
            release: Arc::new(Mutex::new(release_rx)),
        };
        (stalled, entered, release)
    }
}

impl Sink for Stalled {
    fn write(&mut self, _: &Batch) -> Result<()> {
        let _ = self.entered.send(());
        let _ = self.release.lock().unwrap().recv();
        Ok(())
    }
    fn acknowledge(&mut self, written: Lsn) -> Result<Lsn> {
        Ok(written)
    }
    fn describe(&self) -> String {
        "stalled".into()
    }
}

type Progressed = Arc<watch::Sender<Progress>>;

fn progress() -> Progressed {
    Arc::new(watch::Sender::new(Progress::default()))
}

fn output(filter: Filter, endpos: Option<Lsn>) -> (Output, Arc<Mutex<Seen>>, Progressed) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let p = progress();
    let sinks = SinkSet::start(
        vec![Box::new(Collect(seen.clone()))],
        Lsn::ZERO,
        Arc::clone(&p),
    )
    .unwrap();
    let out = Output::new(filter, sinks, endpos, Arc::clone(&p));
    (out, seen, p)
}

fn txn(commit: u64, end: u64, tables: &[&str]) -> Vec<Event> {
    let mut begin = Event::new(Op::Begin, Lsn(commit - 10));
    begin.commit_lsn = Lsn(commit);
    let mut v = vec![begin];
    for (i, t) in tables.iter().enumerate() {
        let mut e = Event::new(Op::Insert, Lsn(commit - 9 + i as u64));
        e.schema = Some(Arc::from("public"));
        e.table = Some(Arc::from(*t));
        e.commit_lsn = Lsn(commit);
        v.push(e);
    }
    let mut c = Event::new(Op::Commit, Lsn(commit));
    c.commit_lsn = Lsn(commit);
    c.end_lsn = Some(Lsn(end));
    v.push(c);
    v
}

/// Waits for `cond` up to 10 s; panics with `what` otherwise.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn transactions_with_nothing_accepted_print_nothing() {
    let f = Filter::new(
        Some(&[("public".to_string(), "orders".to_string())]),
        OpSet::all(),
    );
    let (mut out, seen, p) = output(f, None);
    for e in txn(100, 110, &["users"])
        .into_iter()
        .chain(txn(200, 210, &["orders"]))
    {
        out.emit(e);
    }
    out.finish().unwrap();
    assert_eq!(
        seen.lock().unwrap().events,
        vec!["BEGIN ", "INSERT orders", "COMMIT "]
    );
    // Both transactions count towards the durable position, shown or not.
    assert_eq!(p.borrow().durable, Lsn(210));
}

#[test]
fn endpos_stops_before_later_commits() {
    let (mut out, seen, p) = output(Filter::new(None, OpSet::all()), Some(Lsn(205)));
    for e in txn(100, 110, &["a"])
        .into_iter()
        .chain(txn(200, 210, &["b"]))
        .chain(txn(300, 310, &["c"]))
    {
        out.emit(e);
    }
    assert!(out.done);
    out.finish().unwrap();
    // The commit at 200 is before the end position, so it is included; 300 is not.
    assert_eq!(
        seen.lock().unwrap().events,
        vec![
            "BEGIN ", "INSERT a", "COMMIT ", "BEGIN ", "INSERT b", "COMMIT "
        ]
    );
    assert!(p.borrow().done, "the end position reached is published");
}

#[test]
fn a_failing_sink_stops_and_confirms_nothing_after_it() {
    struct Broken;
    impl Sink for Broken {
        fn write(&mut self, _: &Batch) -> Result<()> {
            Err(Error::Sink {
                target: "disk".into(),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            })
        }
        fn acknowledge(&mut self, written: Lsn) -> Result<Lsn> {
            Ok(written)
        }
        fn describe(&self) -> String {
            "broken".into()
        }
    }
    let p = progress();
    let sinks = SinkSet::start(vec![Box::new(Broken)], Lsn::ZERO, Arc::clone(&p)).unwrap();
    let mut out = Output::new(Filter::new(None, OpSet::all()), sinks, None, Arc::clone(&p));
    for e in txn(100, 110, &["a"]) {
        out.emit(e);
    }
    out.seal().unwrap();
    // The failure surfaces at the next hand-off, or at the end.
    let err = out
        .seal()
        .and_then(|()| out.finish())
        .unwrap_err()
        .to_string();
    assert!(err.contains("disk is full"), "{err}");
    assert_eq!(
        p.borrow().durable,
        Lsn::ZERO,
        "nothing may be confirmed past a failed write"
    );
}

#[test]
fn a_large_transaction_goes_out_in_batches_ending_at_the_last_whole_commit() {
    let (mut out, seen, p) = output(Filter::new(None, OpSet::all()), None);
    for e in txn(100, 110, &["a"]) {
        out.emit(e);
    }
    let tables = vec!["big"; 10_000];
    for e in txn(1_000_000, 1_000_010, &tables) {
        out.emit(e);
    }
    out.finish().unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.events.len(), 3 + 10_002);
    // 10,005 events at 4,096 a batch: the first batches end at the first transaction's end,
    // because the second is not whole in them; the last ends at the second's.
    assert!(
        seen.ends.len() >= 3,
        "one batch per 4096 events: {:?}",
        seen.ends
    );
    assert_eq!(seen.ends[0], Lsn(110));
    assert_eq!(seen.ends[1], Lsn(110));
    assert_eq!(*seen.ends.last().unwrap(), Lsn(1_000_010));
    assert_eq!(p.borrow().durable, Lsn(1_000_010));
}

#[test]
fn a_stalled_sink_holds_the_confirmation_not_the_live_sink() {
    let live = Arc::new(Mutex::new(Seen::default()));
    let (stalled, entered, release) = Stalled::new();
    let p = progress();
    let sinks = SinkSet::start(
        vec![Box::new(Collect(live.clone())), Box::new(stalled)],
        Lsn(50),
        Arc::clone(&p),
    )
    .unwrap();
    let mut out = Output::new(Filter::new(None, OpSet::all()), sinks, None, Arc::clone(&p))
        .starting_at(Lsn(50));
    // One batch per transaction.
    for t in [txn(100, 110, &["a"]), txn(200, 210, &["b"])] {
        t.into_iter().for_each(|e| out.emit(e));
        out.seal().unwrap();
    }
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the stalled sink was never written to");
    wait_for("the live sink to get every event", || {
        live.lock().unwrap().events.len() == 6
    });
    assert_eq!(
        p.borrow().durable,
        Lsn(50),
        "the live sink acknowledged, but the stalled one did not: nothing may be confirmed"
    );
    // Let it go: both batches are written and acknowledged.
    release.send(()).unwrap();
    release.send(()).unwrap();
    out.finish().unwrap();
    assert_eq!(p.borrow().durable, Lsn(210));
}

/// An event of about `bytes` bytes (one text column).
fn wide(commit: u64, bytes: usize) -> Event {
    let mut e = Event::new(Op::Insert, Lsn(commit - 1));
    e.commit_lsn = Lsn(commit);
    e.data = Some(Row {
        columns: vec![Column {
            name: Arc::from("body"),
            value: Value::Text("x".repeat(bytes)),
        }],
    });
    e
}

#[test]
fn the_byte_budget_stops_the_decoder_while_a_sink_is_stalled() {
    let (stalled, entered, release) = Stalled::new();
    let p = progress();
    let mut sinks = SinkSet::start(vec![Box::new(stalled)], Lsn::ZERO, Arc::clone(&p)).unwrap();
    // Each batch takes a little over a quarter of the budget: the sink holds the first (in
    // `write`), two more fit beside it, and the fourth must wait.
    let size = BATCH_BUDGET / 4 + 1;
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = {
        let sent = Arc::clone(&sent);
        std::thread::spawn(move || {
            for i in 1..=6u64 {
                sinks
                    .send(vec![wide(i * 10, 16)], size, Lsn(i * 10))
                    .unwrap();
                sent.fetch_add(1, Ordering::SeqCst);
            }
            sinks.finish().unwrap();
        })
    };
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    wait_for("two batches queued behind the stalled one", || {
        sent.load(Ordering::SeqCst) == 3
    });
    // The fourth cannot reserve while three are held: give it ample time to (wrongly) pass.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sent.load(Ordering::SeqCst),
        3,
        "a batch went past a full byte budget"
    );
    for _ in 0..6 {
        release.send(()).unwrap();
    }
    sender.join().unwrap();
    assert_eq!(sent.load(Ordering::SeqCst), 6);
    assert_eq!(p.borrow().durable, Lsn(60));
}

/// The last sink to drop a batch sends its events back, and the decode side frees them before
/// it hands on the next batch (so glibc frees them on the thread that allocated them).
#[test]
fn dropped_batches_come_back_to_be_freed_before_the_next_one() {
    let (stalled, entered, release) = Stalled::new();
    let p = progress();
    let mut sinks = SinkSet::start(vec![Box::new(stalled)], Lsn::ZERO, Arc::clone(&p)).unwrap();
    sinks
        .send(txn(100, 110, &["orders"]), 64, Lsn(110))
        .unwrap();
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(sinks.waiting_to_be_freed(), 0, "the sink still holds it");
    release.send(()).unwrap();
    wait_for("the written batch's events to come back", || {
        sinks.waiting_to_be_freed() == 1
    });
    sinks
        .send(txn(200, 210, &["orders"]), 64, Lsn(210))
        .unwrap();
    // The sink holds the second batch in `write`: nothing new can have come back yet.
    entered.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        sinks.waiting_to_be_freed(),
        0,
        "the first batch's events were not freed when the next batch went out"
    );
    release.send(()).unwrap();
    sinks.finish().unwrap();
    assert_eq!(p.borrow().durable, Lsn(210));
}

/// The input running dry inside a transaction hands nothing on (a batch wakes every sink
/// thread and fsyncs the JSONL file, and nothing of an open transaction can be acknowledged
/// anyway): the transaction goes out whole at its COMMIT. Between transactions, a dry input
/// hands on at once.
#[test]
fn running_dry_inside_a_transaction_hands_nothing_on_until_its_commit() {
    use super::fanout::Fanout;
    use super::{Frame, StreamSetup};
    use crate::decode::tests::fx;
    use crate::decode::{Decoder, TypeRegistry};
    use crate::pg::stream::ReplMessage;

    let seen = Arc::new(Mutex::new(Seen::default()));
    let p = progress();
    let setup = StreamSetup {
        decoder: Decoder::new(TypeRegistry::new()),
        load_types: None,
        partitions: None,
        primary_keys: None,
        tap: None,
        filter: Filter::new(None, OpSet::all()),
        sinks: vec![Box::new(Collect(seen.clone()))],
        endpos: None,
        status_interval: Duration::from_secs(10),
        start: Lsn::ZERO,
        snapshot: None,
        backfill: None,
    };
    let mut fanout = Fanout::new(setup, None, Arc::clone(&p)).unwrap();
    // Each frame arrives alone, with nothing queued behind it: the input is dry after each,
    // and the last hand-off was just now (so only running dry can make one due).
    let feed = |fanout: &mut Fanout, lsn: u64, data: Vec<u8>| {
        let frame = Frame::Message(ReplMessage::XLogData {
            wal_start: Lsn(lsn),
            wal_end: Lsn(lsn),
            server_time_us: 0,
            data: data.into(),
        });
        fanout.handle(frame).unwrap();
        if fanout.due(true, Instant::now()) {
            fanout.flush().unwrap();
        }
    };
    for (commit, end) in [(300, 310), (400, 410)] {
        feed(&mut fanout, commit - 50, fx::begin(commit, 0, 7));
        let columns = [(1, "id", 23, -1)];
        let rel = fx::relation(None, 16384, "public", "orders", b'd', &columns);
        feed(&mut fanout, commit - 50, rel);
        for i in 0..3 {
            let row = [fx::T(&i.to_string())];
            feed(&mut fanout, commit - 40 + i, fx::insert(None, 16384, &row));
            let held = fanout.out.held();
            // BEGIN waits for the first change; then every change so far is held.
            assert_eq!(
                held,
                2 + i as usize,
                "events of the open transaction were handed on after INSERT {i}"
            );
        }
        feed(&mut fanout, commit, fx::commit(commit, end, 0));
        assert_eq!(
            fanout.out.held(),
            0,
            "a committed transaction waits while dry"
        );
    }
    fanout.end(Ok(())).unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.ends,
        vec![Lsn(310), Lsn(410)],
        "one batch per transaction, each ending at its COMMIT"
    );
    assert_eq!(seen.events.len(), 10, "{:?}", seen.events);
}

/// A sink that keeps every event it is given.
struct Keep(Arc<Mutex<Vec<crate::event::Event>>>);

impl Sink for Keep {
    fn write(&mut self, b: &Batch) -> Result<()> {
        self.0.lock().unwrap().extend(b.events.iter().cloned());
        Ok(())
    }
    fn acknowledge(&mut self, written: Lsn) -> Result<Lsn> {
        Ok(written)
    }
    fn describe(&self) -> String {
        "keep".into()
    }
}

/// A chunk read between watermarks, through the decode thread: what it hands on, and what it
/// tells the backfill.
struct WindowRun {
    fanout: super::fanout::Fanout,
    kept: Arc<Mutex<Vec<crate::event::Event>>>,
    notes: tokio::sync::mpsc::UnboundedReceiver<super::windows::Note>,
    lsn: u64,
}

impl WindowRun {
    const OID: u32 = 16384;

    fn new() -> WindowRun {
        use super::StreamSetup;
        use crate::decode::{Decoder, TypeRegistry};
        let kept = Arc::new(Mutex::new(Vec::new()));
        let setup = StreamSetup {
            decoder: Decoder::new(TypeRegistry::new()),
            load_types: None,
            partitions: None,
            primary_keys: None,
            tap: None,
            filter: Filter::new(None, OpSet::all()),
            sinks: vec![Box::new(Keep(kept.clone()))],
            endpos: None,
            status_interval: Duration::from_secs(10),
            start: Lsn::ZERO,
            snapshot: None,
            backfill: None,
        };
        let (tx, notes) = tokio::sync::mpsc::unbounded_channel();
        let reports = Some(super::fanout::Reports {
            notes: tx,
            run: "run-1".into(),
            slot: "s".into(),
        });
        let fanout = super::fanout::Fanout::new(setup, reports, progress()).unwrap();
        WindowRun {
            fanout,
            kept,
            notes,
            lsn: 1000,
        }
    }

    fn frame(&mut self, data: Vec<u8>) {
        use crate::pg::stream::ReplMessage;
        self.lsn += 10;
        let frame = super::Frame::Message(ReplMessage::XLogData {
            wal_start: Lsn(self.lsn),
            wal_end: Lsn(self.lsn),
            server_time_us: 0,
            data: data.into(),
        });
        self.fanout.handle(frame).unwrap();
    }

    /// One transaction `xid` of `messages`.
    fn transaction(&mut self, xid: u32, messages: Vec<Vec<u8>>) {
        use crate::decode::tests::fx;
        let commit = self.lsn + 100;
        self.frame(fx::begin(commit, 0, xid));
        let columns = [(1, "id", 23, -1), (0, "v", 25, -1)];
        self.frame(fx::relation(None, Self::OID, "public", "t", b'd', &columns));
        for m in messages {
            self.frame(m);
        }
        self.frame(fx::commit(commit, commit + 5, 0));
    }

    fn watermark(&mut self, xid: u32, high: bool) {
        use crate::decode::tests::fx;
        let w = super::windows::Watermark {
            run: "run-1".into(),
            chunk: 1,
            high,
            rel: Self::OID,
        };
        let content = serde_json::to_vec(&w).unwrap();
        let m = fx::message(None, true, self.lsn, "walwatch.backfill@s", &content);
        self.transaction(xid, vec![m]);
    }

    /// The chunk: rows `id\tv`, read in a snapshot that saw `in_progress` running.
    fn chunk(&mut self, rows: &[&str], in_progress: Vec<u32>, keyed: bool) {
        use crate::event::{Relation, RelationColumn, ReplicaIdentity};
        let types = crate::decode::TypeRegistry::new();
        let col = |name: &str, oid: u32, key: bool| RelationColumn {
            name: Arc::from(name),
            type_oid: oid,
            type_modifier: -1,
            kind: types.kind_of(oid),
            is_key: key,
        };
        let relation = Arc::new(Relation {
            oid: Self::OID,
            namespace: Arc::from("public"),
            name: Arc::from("t"),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![col("id", 23, keyed), col("v", 25, false)],
            key_count: usize::from(keyed),
        });
        let rows = crate::pg::snapshot::SnapshotRows {
            relation,
            table: 0,
            at: Lsn::ZERO,
            taken: crate::event::Timestamp::from_unix_micros(0),
            lines: rows
                .iter()
                .map(|r| bytes::Bytes::from(format!("{r}\n")))
                .collect(),
            after: Some(vec!["3".into()]),
            last: true,
            window: Some(crate::pg::snapshot::ChunkWindow {
                chunk: 1,
                in_progress,
                keyed,
            }),
        };
        self.fanout.handle(super::Frame::Rows(rows)).unwrap();
    }

    /// What went out (op and `id=v`), and the notes.
    fn finish(mut self) -> (Vec<String>, Vec<super::windows::Note>) {
        self.fanout.end(Ok(())).unwrap();
        let kept = self.kept.lock().unwrap();
        let out = kept
            .iter()
            .filter(|e| e.op != Op::Begin && e.op != Op::Commit)
            .map(|e| {
                let row = e.data.as_ref().unwrap();
                let v: Vec<String> = row
                    .columns
                    .iter()
                    .map(|c| format!("{:?}", c.value))
                    .collect();
                format!("{} {}", e.op, v.join("="))
            })
            .collect();
        let mut notes = Vec::new();
        while let Ok(n) = self.notes.try_recv() {
            notes.push(n);
        }
        (out, notes)
    }
}

/// A chunk's rows go out at its high watermark, minus the rows the stream changed between
/// the watermarks (their changes stand for them); the backfill hears how many of each.
#[test]
fn rows_changed_between_the_watermarks_come_from_the_stream_not_the_chunk() {
    use crate::decode::tests::fx;
    let mut run = WindowRun::new();
    // Queued before the high watermark existed (backfill.rs), so before it is decoded.
    run.chunk(&["1\ta", "2\tb", "3\tc"], vec![], true);
    run.watermark(7, false);
    let update = fx::update(None, WindowRun::OID, None, &[fx::T("2"), fx::T("B")]);
    run.transaction(8, vec![update]);
    run.watermark(9, true);
    // After the high watermark: applies after the chunk's rows.
    let delete = fx::delete(None, WindowRun::OID, b'K', &[fx::T("3"), fx::N]);
    run.transaction(10, vec![delete]);
    let (out, notes) = run.finish();
    assert_eq!(
        out,
        vec![
            "UPDATE Int(2)=Text(\"B\")",
            "READ Int(1)=Text(\"a\")",
            "READ Int(3)=Text(\"c\")",
            "DELETE Int(3)",
        ],
        "row 2, changed in the window, must not be overwritten by the chunk's older copy"
    );
    assert!(
        matches!(
            notes.as_slice(),
            [super::windows::Note::Rows {
                chunk: Some(1),
                rows: 2,
                dropped: 1,
                done: true,
                ..
            }]
        ),
        "{notes:?}"
    );
}

/// When matching the window's changes to the chunk's rows would not be exact, the chunk is
/// discarded (read again), and nothing of it goes out.
#[test]
fn a_chunk_that_cannot_be_reconciled_is_discarded() {
    use crate::decode::tests::fx;
    let toast = || fx::update(None, WindowRun::OID, None, &[fx::T("2"), fx::U]);
    let plain = || fx::update(None, WindowRun::OID, None, &[fx::T("2"), fx::T("B")]);
    let cases: [(&str, bool, Vec<u32>, Vec<u8>); 3] = [
        ("TOASTed value left out", true, vec![], toast()),
        ("no key", false, vec![], plain()),
        // xid 5 committed before the low watermark, yet the chunk's snapshot saw it running.
        ("not yet visible", true, vec![5], plain()),
    ];
    for (case, keyed, in_progress, change) in cases {
        let mut run = WindowRun::new();
        run.transaction(
            5,
            vec![fx::insert(None, WindowRun::OID, &[fx::T("9"), fx::T("z")])],
        );
        run.chunk(&["1\ta", "2\tb"], in_progress, keyed);
        run.watermark(7, false);
        run.transaction(8, vec![change]);
        run.watermark(9, true);
        let (out, notes) = run.finish();
        assert!(
            out.iter().all(|e| !e.starts_with("READ")),
            "{case}: the chunk's rows went out: {out:?}"
        );
        assert!(
            matches!(
                notes.as_slice(),
                [super::windows::Note::Discarded { chunk: 1, .. }]
            ),
            "{case}: {notes:?}"
        );
    }
}

/// A sink that holds back what it is written (an open Arrow batch) until `flush` is set.
struct Holding {
    flush: Arc<std::sync::atomic::AtomicBool>,
    held: bool,
    writes: u64,
    /// Acknowledgements made while holding rows back.
    held_acks: Arc<std::sync::atomic::AtomicUsize>,
}

impl Sink for Holding {
    fn write(&mut self, _: &Batch) -> Result<()> {
        // Holds back the rows of its second batch on (the first is durable at once).
        self.writes += 1;
        if self.writes >= 2 {
            self.held = true;
        }
        Ok(())
    }
    fn acknowledge(&mut self, written: Lsn) -> Result<Lsn> {
        if self.flush.load(std::sync::atomic::Ordering::SeqCst) {
            self.held = false;
        } else if self.held {
            self.held_acks
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(written)
    }
    fn held_from(&self) -> Option<u64> {
        self.held.then_some(2)
    }
    fn describe(&self) -> String {
        "holding".into()
    }
}

/// A snapshot's rows all share one position, so only the count of batches durable in every
/// sink can say they are durable: a sink that holds rows back holds that count at the batch
/// before its oldest held one, whatever the position it acknowledges; the batches before count.
#[test]
fn batches_count_as_durable_up_to_the_oldest_one_a_sink_holds_back() {
    let flush = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let live = Arc::new(Mutex::new(Seen::default()));
    let p = progress();
    let held_acks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let holding = Holding {
        flush: flush.clone(),
        held: false,
        writes: 0,
        held_acks: held_acks.clone(),
    };
    let mut sinks = SinkSet::start(
        vec![Box::new(Collect(live.clone())), Box::new(holding)],
        Lsn(50),
        Arc::clone(&p),
    )
    .unwrap();
    for _ in 0..3 {
        let mut e = Event::new(Op::Read, Lsn(50));
        e.commit_lsn = Lsn(50);
        sinks.send(vec![e], 100, Lsn(50)).unwrap();
    }
    wait_for("the live sink to get every batch", || {
        live.lock().unwrap().ends.len() == 3
    });
    // The holding sink acknowledged after the last batch, still holding it back.
    wait_for("acknowledgements while holding", || {
        live.lock().unwrap().ends.len() == 3
            && held_acks.load(std::sync::atomic::Ordering::SeqCst) >= 2
    });
    assert_eq!(
        p.borrow().batches,
        1,
        "a sink holds the rows of batches 2 and 3 back: only the first is durable in every sink"
    );
    flush.store(true, std::sync::atomic::Ordering::SeqCst);
    wait_for("the three batches durable", || p.borrow().batches == 3);
    sinks.finish().unwrap();
}

/// A request for this slot stops the decode thread until the backfill has taken it: nothing
/// after it in the stream goes on before, so the slot cannot be confirmed past a request that
/// a stop would lose. A request for another slot is not taken.
#[test]
fn a_snapshot_request_holds_the_stream_until_the_backfill_has_it() {
    use crate::decode::tests::fx;
    let request = |slot: &str, id: &str| {
        let r = crate::snapshot_request::Request {
            request: id.into(),
            tables: vec![("public".into(), "t".into())],
        };
        let content = serde_json::to_vec(&r).unwrap();
        fx::message(
            None,
            true,
            0,
            &format!("walwatch.backfill@{slot}"),
            &content,
        )
    };
    let mut run = WindowRun::new();
    let insert = fx::insert(None, WindowRun::OID, &[fx::T("9"), fx::T("z")]);
    let (_idle, other) = tokio::sync::mpsc::unbounded_channel();
    let mut notes = std::mem::replace(&mut run.notes, other);
    let (run, heard, others) = std::thread::scope(|s| {
        let decode = s.spawn(move || {
            run.transaction(4, vec![request("another_slot", "r0")]);
            run.transaction(5, vec![request("s", "r1")]);
            run.transaction(6, vec![insert]);
            run
        });
        // Every request heard is answered (a wrong one too: nothing here may leave the decode
        // thread waiting for ever); only ours is looked at.
        let mut others = Vec::new();
        let (request, taken) = loop {
            match notes.blocking_recv() {
                Some(super::windows::Note::Request { request, taken, .. }) => {
                    if request.request == "r1" {
                        break (request, taken);
                    }
                    others.push(request.request);
                    let _ = taken.send(());
                }
                Some(_) => {}
                None => panic!("no request heard"),
            }
        };
        // Must not happen: the decode thread going on (to the INSERT and the end) first.
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_millis(300) {
            assert!(
                !decode.is_finished(),
                "the decode thread went on before the request was taken"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        taken.send(()).unwrap();
        (decode.join().unwrap(), request, others)
    });
    assert!(
        others.is_empty(),
        "a request for another slot was taken: {others:?}"
    );
    assert_eq!(heard.tables, vec![("public".to_string(), "t".to_string())]);
    let (out, _) = run.finish();
    assert_eq!(
        out,
        vec!["INSERT Int(9)=Text(\"z\")"],
        "the stream went on after"
    );
}
