//! Decoder throughput on a recorded-looking pgoutput stream: one Relation, Begin, 10,000
//! Inserts into `orders(id bigserial pk, user_id int, item text, status text,
//! amount numeric(10,2), created_at timestamptz)`, Commit.
//!
//! `decode+json` is the hot path of `walwatch --format json`: bytes -> events -> JSONL.
//! `decode` isolates the decoder (and value parsing) from serialisation; `json only` is the
//! serialisation of already-decoded events; `decode streamed` is the same transaction sent with
//! `streaming on` (buffered as bytes, replayed at Stream Commit). `arrow batch` is the Arrow
//! sink turning decoded events into one typed RecordBatch; `arrow ipc file` and
//! `arrow parquet file` encode that batch.

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use walwatch::Lsn;
use walwatch::decode::{Decoder, TypeRegistry};
use walwatch::sink::arrow::{ArrowOptions, ArrowSink};
use walwatch::sink::{Batch, Sink};

const ROWS: u64 = 10_000;
const ORDERS: u32 = 16_384;

fn cstr(o: &mut Vec<u8>, s: &str) {
    o.extend_from_slice(s.as_bytes());
    o.push(0);
}

/// The stream as (WAL start, XLogData payload) pairs, per "Logical Replication Message Formats".
fn stream() -> Vec<(Lsn, Vec<u8>)> {
    let mut out = Vec::new();
    let mut lsn = 0x1_0000_0000u64;
    let commit_lsn = lsn + ROWS * 120 + 0x100;
    let ts: i64 = 848_000_000_000_000;

    let mut rel = vec![b'R'];
    rel.extend_from_slice(&ORDERS.to_be_bytes());
    cstr(&mut rel, "public");
    cstr(&mut rel, "orders");
    rel.push(b'd');
    let cols: [(u8, &str, u32, i32); 6] = [
        (1, "id", 20, -1),
        (0, "user_id", 23, -1),
        (0, "item", 25, -1),
        (0, "status", 25, -1),
        (0, "amount", 1700, (10 << 16 | 2) + 4),
        (0, "created_at", 1184, -1),
    ];
    rel.extend_from_slice(&(cols.len() as i16).to_be_bytes());
    for (flags, name, oid, typmod) in cols {
        rel.push(flags);
        cstr(&mut rel, name);
        rel.extend_from_slice(&oid.to_be_bytes());
        rel.extend_from_slice(&typmod.to_be_bytes());
    }

    let mut begin = vec![b'B'];
    begin.extend_from_slice(&commit_lsn.to_be_bytes());
    begin.extend_from_slice(&ts.to_be_bytes());
    begin.extend_from_slice(&751u32.to_be_bytes());
    out.push((Lsn(lsn), begin));
    out.push((Lsn(lsn), rel));

    for i in 0..ROWS {
        lsn += 120;
        let id = (12_345 + i).to_string();
        let values = [
            id.as_str(),
            "42",
            "book",
            "shipped",
            "12.50",
            "2026-11-22 03:22:01.123456+00",
        ];
        let mut m = vec![b'I'];
        m.extend_from_slice(&ORDERS.to_be_bytes());
        m.push(b'N');
        m.extend_from_slice(&(values.len() as i16).to_be_bytes());
        for v in values {
            m.push(b't');
            m.extend_from_slice(&(v.len() as i32).to_be_bytes());
            m.extend_from_slice(v.as_bytes());
        }
        out.push((Lsn(lsn), m));
    }

    let mut commit = vec![b'C', 0];
    commit.extend_from_slice(&commit_lsn.to_be_bytes());
    commit.extend_from_slice(&(commit_lsn + 0x30).to_be_bytes());
    commit.extend_from_slice(&ts.to_be_bytes());
    out.push((Lsn(commit_lsn), commit));
    out
}

/// `--where` and an assertion's predicate on every decoded event (expr.rs, expr/quick.rs).
fn bench_expressions(g: &mut BenchmarkGroup<'_, WallTime>, decoded: &[walwatch::Event]) {
    // `--where` on every event (expr.rs): the per-event cost of reading the variables the
    // expression uses and evaluating it. `where (CEL)` is what `--where` does: the fast path
    // (expr/quick.rs) decides its leading `==` conjuncts here. `where (CEL only)` is the same
    // expression through CEL alone (expr/scope.rs), what any expression the fast path cannot
    // decide costs.
    let expr = walwatch::Expr::compile(
        r#"op == "INSERT" && table == "orders" && data.status == "paid" && data.id > 100"#,
    )
    .expect("expression compiles");
    for (name, cel_only) in [("where (CEL)", false), ("where (CEL only)", true)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0usize;
                for e in decoded {
                    let v = if cel_only {
                        expr.eval_by_cel(e)
                    } else {
                        expr.eval(e)
                    };
                    n += usize::from(v.expect("no type error").is_match());
                }
                black_box(n)
            })
        });
    }

    // A harness assertion's predicate over a recording (nested, as Python and `--envelope
    // nested` read it): it rejects nearly every event on one comparison. Measured with the
    // fast path (expr/quick.rs) and through CEL alone, the baseline, in the same run.
    let harness = walwatch::Expr::compile_in(
        r#"type == "wal" && data.op == "INSERT" && data.table == "orders" && data.data.id == -1"#,
        walwatch::event_read::Envelope::Nested,
    )
    .expect("expression compiles");
    for (name, cel_only) in [
        ("assert predicate (fast path)", false),
        ("assert predicate (CEL only)", true),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut n = 0usize;
                for e in decoded {
                    let v = if cel_only {
                        harness.eval_by_cel(e)
                    } else {
                        harness.eval(e)
                    };
                    n += usize::from(v.expect("no type error").is_match());
                }
                black_box(n)
            })
        });
    }
}

/// A snapshot's rows as COPY sends them (`--snapshot`): one line per row, split into its
/// fields (decode/copy_text.rs), before their values are parsed.
fn bench_copy_text(g: &mut BenchmarkGroup<'_, WallTime>) {
    let lines: Vec<Vec<u8>> = (1..=ROWS)
        .map(|g| {
            format!(
                "{g}\t{}\titem-{g}\tnew\t{}.{:02}\t2026-12-08 03:00:00.{:06}+00\n",
                g % 1000,
                g % 1000,
                g % 100,
                g % 1_000_000
            )
            .into_bytes()
        })
        .collect();
    g.bench_function("copy text fields", |b| {
        let mut fields = Vec::with_capacity(6);
        b.iter(|| {
            let mut n = 0usize;
            for line in &lines {
                walwatch::decode::copy_text::fields(line, 6, &mut fields).expect("a valid line");
                n += fields.len();
            }
            black_box(n)
        })
    });
}

fn bench(c: &mut Criterion) {
    let msgs = stream();
    let events = ROWS + 2;
    let mut g = c.benchmark_group("pgoutput");
    g.throughput(Throughput::Elements(events));

    g.bench_function("decode+json", |b| {
        let mut buf = Vec::with_capacity(1 << 20);
        b.iter(|| {
            let mut dec = Decoder::new(TypeRegistry::new());
            buf.clear();
            for (lsn, m) in &msgs {
                dec.decode(*lsn, m, &mut |e| {
                    e.write_json(&mut buf);
                    buf.push(b'\n');
                })
                .expect("fixture decodes");
            }
            black_box(buf.len())
        })
    });

    g.bench_function("decode", |b| {
        b.iter(|| {
            let mut dec = Decoder::new(TypeRegistry::new());
            let mut n = 0usize;
            for (lsn, m) in &msgs {
                dec.decode(*lsn, m, &mut |e| {
                    n += 1;
                    black_box(e);
                })
                .expect("fixture decodes");
            }
            black_box(n)
        })
    });

    // Serialisation alone (event.rs), to show how the decode+json figure splits.
    let mut decoded = Vec::with_capacity(msgs.len());
    let mut dec = Decoder::new(TypeRegistry::new());
    for (lsn, m) in &msgs {
        dec.decode(*lsn, m, &mut |e| decoded.push(e))
            .expect("fixture decodes");
    }
    g.bench_function("json only", |b| {
        let mut buf = Vec::with_capacity(1 << 20);
        b.iter(|| {
            buf.clear();
            for e in &decoded {
                e.write_json(&mut buf);
                buf.push(b'\n');
            }
            black_box(buf.len())
        })
    });

    // The Arrow sink (sink/arrow): decoded `orders` events -> one typed RecordBatch (Int64,
    // Int32, Utf8, Decimal128(10,2), Timestamp(µs, UTC) columns plus the change columns), then
    // the same batch encoded as an Arrow IPC file and as a Parquet file.
    let to_batch = |events: &Batch| {
        let options = ArrowOptions {
            rows: events.events.len(),
            ..ArrowOptions::default()
        };
        let (mut sink, rx) = ArrowSink::channel(options, 2);
        sink.write(events).expect("arrow accepts the events");
        sink.finish(Lsn::ZERO).expect("the batch closes");
        rx.try_recv().expect("one batch").batch
    };
    let events = Batch::new(decoded.clone(), Lsn::ZERO);
    g.bench_function("arrow batch", |b| {
        b.iter(|| black_box(to_batch(&events).num_rows()))
    });
    let batch = to_batch(&events);
    g.bench_function("arrow ipc file", |b| {
        b.iter(|| {
            let mut w = arrow_ipc::writer::FileWriter::try_new(Vec::new(), &batch.schema())
                .expect("ipc writer");
            w.write(&batch).expect("ipc write");
            w.finish().expect("ipc footer");
            black_box(w.into_inner().expect("ipc bytes").len())
        })
    });
    g.bench_function("arrow parquet file", |b| {
        b.iter(|| {
            let mut w = parquet::arrow::ArrowWriter::try_new(Vec::new(), batch.schema(), None)
                .expect("parquet writer");
            w.write(&batch).expect("parquet write");
            black_box(w.into_inner().expect("parquet bytes").len())
        })
    });

    bench_expressions(&mut g, &decoded);

    bench_copy_text(&mut g);

    // Every column null: the decoder's own per-event cost, without UTF-8 checks and value
    // parsing (value.rs) — parse, relation lookup, row/key building, Arc name clones.
    let nulls: Vec<(Lsn, Vec<u8>)> = msgs
        .iter()
        .map(|(lsn, m)| match m.first() {
            Some(b'I') => {
                let mut n = m[..8].to_vec(); // tag, OID, 'N', column count
                n.extend(std::iter::repeat_n(b'n', 6));
                (*lsn, n)
            }
            _ => (*lsn, m.clone()),
        })
        .collect();
    g.bench_function("decode null rows", |b| {
        b.iter(|| {
            let mut dec = Decoder::new(TypeRegistry::new());
            let mut n = 0usize;
            for (lsn, m) in &nulls {
                dec.decode(*lsn, m, &mut |e| {
                    n += 1;
                    black_box(e);
                })
                .expect("fixture decodes");
            }
            black_box(n)
        })
    });

    // The same transaction streamed (protocol v2): buffered as bytes, replayed at Stream Commit.
    let streamed = to_streamed(&msgs);
    g.bench_function("decode streamed", |b| {
        b.iter(|| {
            let mut dec = Decoder::new(TypeRegistry::new()).with_protocol(2);
            let mut n = 0usize;
            for (lsn, m) in &streamed {
                dec.decode(*lsn, m, &mut |e| {
                    n += 1;
                    black_box(e);
                })
                .expect("fixture decodes");
            }
            black_box(n)
        })
    });
    g.finish();
}

/// Rewrites the stream as one streamed transaction: Stream Start, Relation and Inserts with a
/// leading xid, Stream Stop, Stream Commit.
fn to_streamed(msgs: &[(Lsn, Vec<u8>)]) -> Vec<(Lsn, Vec<u8>)> {
    let xid = 751u32;
    let mut out = Vec::new();
    let first = msgs.first().map_or(Lsn(0), |m| m.0);
    let mut start = vec![b'S'];
    start.extend_from_slice(&xid.to_be_bytes());
    start.push(1);
    out.push((first, start));
    let mut commit = None;
    for (lsn, m) in msgs {
        match m.first() {
            Some(b'R' | b'I') => {
                let mut s = vec![m[0]];
                s.extend_from_slice(&xid.to_be_bytes());
                s.extend_from_slice(&m[1..]);
                out.push((*lsn, s));
            }
            Some(b'C') => commit = Some((*lsn, m.clone())),
            _ => {}
        }
    }
    out.push((first, vec![b'E']));
    if let Some((lsn, c)) = commit {
        let mut s = vec![b'c'];
        s.extend_from_slice(&xid.to_be_bytes());
        s.extend_from_slice(&c[1..]);
        out.push((lsn, s));
    }
    out
}

criterion_group!(benches, bench);
criterion_main!(benches);
