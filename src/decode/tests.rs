//! Decoder tests on byte fixtures written per "Logical Replication Message Formats".

use super::pgoutput::{OldKind, ParseContext, parse_in};
use super::*;
use crate::event::{Column, Event, Lsn, Op, Row, Timestamp, Value};

/// Byte builders for every message, one function per message of the protocol docs.
pub(crate) mod fx {
    pub enum Col<'a> {
        N,
        U,
        T(&'a str),
        B(&'a [u8]),
    }
    pub use Col::*;

    fn xid(out: &mut Vec<u8>, xid: Option<u32>) {
        if let Some(x) = xid {
            out.extend_from_slice(&x.to_be_bytes());
        }
    }

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    pub fn tuple(out: &mut Vec<u8>, cols: &[Col]) {
        out.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for c in cols {
            match c {
                N => out.push(b'n'),
                U => out.push(b'u'),
                T(s) => {
                    out.push(b't');
                    out.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
                B(b) => {
                    out.push(b'b');
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    pub fn begin(final_lsn: u64, ts: i64, xid: u32) -> Vec<u8> {
        let mut o = vec![b'B'];
        o.extend_from_slice(&final_lsn.to_be_bytes());
        o.extend_from_slice(&ts.to_be_bytes());
        o.extend_from_slice(&xid.to_be_bytes());
        o
    }

    pub fn commit(commit_lsn: u64, end_lsn: u64, ts: i64) -> Vec<u8> {
        let mut o = vec![b'C', 0];
        o.extend_from_slice(&commit_lsn.to_be_bytes());
        o.extend_from_slice(&end_lsn.to_be_bytes());
        o.extend_from_slice(&ts.to_be_bytes());
        o
    }

    pub fn origin(lsn: u64, name: &str) -> Vec<u8> {
        let mut o = vec![b'O'];
        o.extend_from_slice(&lsn.to_be_bytes());
        cstr(&mut o, name);
        o
    }

    /// Columns: (flags, name, type oid, typmod).
    pub fn relation(
        x: Option<u32>,
        oid: u32,
        ns: &str,
        name: &str,
        ident: u8,
        cols: &[(u8, &str, u32, i32)],
    ) -> Vec<u8> {
        let mut o = vec![b'R'];
        xid(&mut o, x);
        o.extend_from_slice(&oid.to_be_bytes());
        cstr(&mut o, ns);
        cstr(&mut o, name);
        o.push(ident);
        o.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for (flags, n, t, m) in cols {
            o.push(*flags);
            cstr(&mut o, n);
            o.extend_from_slice(&t.to_be_bytes());
            o.extend_from_slice(&m.to_be_bytes());
        }
        o
    }

    pub fn type_(x: Option<u32>, oid: u32, ns: &str, name: &str) -> Vec<u8> {
        let mut o = vec![b'Y'];
        xid(&mut o, x);
        o.extend_from_slice(&oid.to_be_bytes());
        cstr(&mut o, ns);
        cstr(&mut o, name);
        o
    }

    pub fn insert(x: Option<u32>, oid: u32, new: &[Col]) -> Vec<u8> {
        let mut o = vec![b'I'];
        xid(&mut o, x);
        o.extend_from_slice(&oid.to_be_bytes());
        o.push(b'N');
        tuple(&mut o, new);
        o
    }

    pub fn update(x: Option<u32>, oid: u32, old: Option<(u8, &[Col])>, new: &[Col]) -> Vec<u8> {
        let mut o = vec![b'U'];
        xid(&mut o, x);
        o.extend_from_slice(&oid.to_be_bytes());
        if let Some((kind, cols)) = old {
            o.push(kind);
            tuple(&mut o, cols);
        }
        o.push(b'N');
        tuple(&mut o, new);
        o
    }

    pub fn delete(x: Option<u32>, oid: u32, kind: u8, old: &[Col]) -> Vec<u8> {
        let mut o = vec![b'D'];
        xid(&mut o, x);
        o.extend_from_slice(&oid.to_be_bytes());
        o.push(kind);
        tuple(&mut o, old);
        o
    }

    pub fn truncate(x: Option<u32>, options: u8, oids: &[u32]) -> Vec<u8> {
        let mut o = vec![b'T'];
        xid(&mut o, x);
        o.extend_from_slice(&(oids.len() as i32).to_be_bytes());
        o.push(options);
        for oid in oids {
            o.extend_from_slice(&oid.to_be_bytes());
        }
        o
    }

    pub fn message(
        x: Option<u32>,
        transactional: bool,
        lsn: u64,
        prefix: &str,
        content: &[u8],
    ) -> Vec<u8> {
        let mut o = vec![b'M'];
        xid(&mut o, x);
        o.push(u8::from(transactional));
        o.extend_from_slice(&lsn.to_be_bytes());
        cstr(&mut o, prefix);
        o.extend_from_slice(&(content.len() as i32).to_be_bytes());
        o.extend_from_slice(content);
        o
    }

    pub fn stream_start(xid: u32, first: bool) -> Vec<u8> {
        let mut o = vec![b'S'];
        o.extend_from_slice(&xid.to_be_bytes());
        o.push(u8::from(first));
        o
    }

    pub fn stream_stop() -> Vec<u8> {
        vec![b'E']
    }

    pub fn stream_commit(xid: u32, commit_lsn: u64, end_lsn: u64, ts: i64) -> Vec<u8> {
        let mut o = vec![b'c'];
        o.extend_from_slice(&xid.to_be_bytes());
        o.push(0);
        o.extend_from_slice(&commit_lsn.to_be_bytes());
        o.extend_from_slice(&end_lsn.to_be_bytes());
        o.extend_from_slice(&ts.to_be_bytes());
        o
    }

    pub fn stream_abort(xid: u32, subxid: u32, info: Option<(u64, i64)>) -> Vec<u8> {
        let mut o = vec![b'A'];
        o.extend_from_slice(&xid.to_be_bytes());
        o.extend_from_slice(&subxid.to_be_bytes());
        if let Some((lsn, ts)) = info {
            o.extend_from_slice(&lsn.to_be_bytes());
            o.extend_from_slice(&ts.to_be_bytes());
        }
        o
    }

    pub fn begin_prepare(prepare_lsn: u64, end_lsn: u64, ts: i64, xid: u32, gid: &str) -> Vec<u8> {
        let mut o = vec![b'b'];
        o.extend_from_slice(&prepare_lsn.to_be_bytes());
        o.extend_from_slice(&end_lsn.to_be_bytes());
        o.extend_from_slice(&ts.to_be_bytes());
        o.extend_from_slice(&xid.to_be_bytes());
        cstr(&mut o, gid);
        o
    }

    /// Prepare ('P') or Stream Prepare ('p').
    pub fn prepare(
        tag: u8,
        prepare_lsn: u64,
        end_lsn: u64,
        ts: i64,
        xid: u32,
        gid: &str,
    ) -> Vec<u8> {
        let mut o = vec![tag, 0];
        o.extend_from_slice(&prepare_lsn.to_be_bytes());
        o.extend_from_slice(&end_lsn.to_be_bytes());
        o.extend_from_slice(&ts.to_be_bytes());
        o.extend_from_slice(&xid.to_be_bytes());
        cstr(&mut o, gid);
        o
    }

    pub fn commit_prepared(commit_lsn: u64, end_lsn: u64, ts: i64, xid: u32, gid: &str) -> Vec<u8> {
        let mut o = vec![b'K', 0];
        o.extend_from_slice(&commit_lsn.to_be_bytes());
        o.extend_from_slice(&end_lsn.to_be_bytes());
        o.extend_from_slice(&ts.to_be_bytes());
        o.extend_from_slice(&xid.to_be_bytes());
        cstr(&mut o, gid);
        o
    }

    pub fn rollback_prepared(
        prepare_end: u64,
        rollback_end: u64,
        prepare_ts: i64,
        rollback_ts: i64,
        xid: u32,
        gid: &str,
    ) -> Vec<u8> {
        let mut o = vec![b'r', 0];
        o.extend_from_slice(&prepare_end.to_be_bytes());
        o.extend_from_slice(&rollback_end.to_be_bytes());
        o.extend_from_slice(&prepare_ts.to_be_bytes());
        o.extend_from_slice(&rollback_ts.to_be_bytes());
        o.extend_from_slice(&xid.to_be_bytes());
        cstr(&mut o, gid);
        o
    }
}

use fx::{B, N, T, U};

const ORDERS: u32 = 16_384;
const USERS: u32 = 16_400;
const INT8: u32 = 20;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const BYTEA: u32 = 17;
const TS: i64 = 848_000_000_000_000;

/// orders(id int8 key, user_id int4, item text, note text).
fn orders_rel(x: Option<u32>) -> Vec<u8> {
    fx::relation(
        x,
        ORDERS,
        "public",
        "orders",
        b'd',
        &[
            (1, "id", INT8, -1),
            (0, "user_id", INT4, -1),
            (0, "item", TEXT, -1),
            (0, "note", TEXT, -1),
        ],
    )
}

/// orders after `ALTER TABLE orders ADD status text`.
fn orders_rel_v2(x: Option<u32>) -> Vec<u8> {
    fx::relation(
        x,
        ORDERS,
        "public",
        "orders",
        b'd',
        &[
            (1, "id", INT8, -1),
            (0, "user_id", INT4, -1),
            (0, "item", TEXT, -1),
            (0, "note", TEXT, -1),
            (0, "status", TEXT, -1),
        ],
    )
}

/// users(name text): no key (REPLICA IDENTITY NOTHING).
fn users_rel(x: Option<u32>) -> Vec<u8> {
    fx::relation(x, USERS, "app", "users", b'n', &[(0, "name", TEXT, -1)])
}

/// What the value engine makes of this text: the decoder's tests do not depend on how
/// `value.rs` maps types, only on the decoder passing the right OID and text.
fn v(oid: u32, text: &str) -> Value {
    TypeRegistry::new().parse_text(oid, text)
}

fn row(cols: &[(&str, Value)]) -> Row {
    Row {
        columns: cols
            .iter()
            .map(|(n, v)| Column {
                name: Arc::from(*n),
                value: v.clone(),
            })
            .collect(),
    }
}

fn names(r: &Row) -> Vec<&str> {
    r.columns.iter().map(|c| &*c.name).collect()
}

/// Decodes (lsn, message) pairs, collecting every event; panics on a decode error.
fn run(dec: &mut Decoder, msgs: &[(u64, Vec<u8>)]) -> Vec<Event> {
    try_run(dec, msgs).unwrap()
}

fn try_run(dec: &mut Decoder, msgs: &[(u64, Vec<u8>)]) -> Result<Vec<Event>, DecodeError> {
    let mut out = Vec::new();
    for (lsn, m) in msgs {
        dec.decode(Lsn(*lsn), m, &mut |e| out.push(e))?;
    }
    Ok(out)
}

fn ops(evs: &[Event]) -> Vec<Op> {
    evs.iter().map(|e| e.op).collect()
}

fn dec() -> Decoder {
    Decoder::new(TypeRegistry::new())
}

fn ins(x: Option<u32>, id: &str) -> Vec<u8> {
    fx::insert(x, ORDERS, &[T(id), T("42"), T("book"), N])
}

// ---------------------------------------------------------------- protocol v1

#[test]
fn v1_transaction_with_insert() {
    let mut d = dec().with_protocol(1);
    let evs = run(
        &mut d,
        &[
            (0x100, fx::begin(0x500, TS, 751)),
            (0x110, orders_rel(None)),
            (
                0x120,
                fx::insert(None, ORDERS, &[T("1"), T("42"), T("book"), N]),
            ),
            (0x500, fx::commit(0x500, 0x530, TS + 1)),
        ],
    );
    assert_eq!(ops(&evs), [Op::Begin, Op::Insert, Op::Commit]);
    let b = &evs[0];
    assert_eq!(
        (b.lsn, b.commit_lsn, b.xid, b.ts, b.end_lsn),
        (Lsn(0x100), Lsn(0x500), Some(751), Some(Timestamp(TS)), None)
    );
    let i = &evs[1];
    assert_eq!((i.schema(), i.table()), ("public", "orders"));
    assert_eq!(
        (i.lsn, i.commit_lsn, i.xid, i.ts),
        (Lsn(0x120), Lsn(0x500), Some(751), Some(Timestamp(TS)))
    );
    assert_eq!(
        i.data,
        Some(row(&[
            ("id", v(INT8, "1")),
            ("user_id", v(INT4, "42")),
            ("item", v(TEXT, "book")),
            ("note", Value::Null),
        ]))
    );
    assert_eq!(i.key, Some(row(&[("id", v(INT8, "1"))])));
    assert_eq!((i.old.clone(), i.unchanged.len()), (None, 0));
    let c = &evs[2];
    assert_eq!(
        (c.lsn, c.commit_lsn, c.end_lsn, c.xid, c.ts),
        (
            Lsn(0x500),
            Lsn(0x500),
            Some(Lsn(0x530)),
            Some(751),
            Some(Timestamp(TS + 1))
        )
    );
    assert!(!d.in_transaction());
    // Column names are shared with the relation cache, not copied per row.
    let rel = d.relation(ORDERS).unwrap();
    assert!(Arc::ptr_eq(
        &rel.columns[0].name,
        &evs[1].data.as_ref().unwrap().columns[0].name
    ));
    assert_eq!(rel.replica_identity, ReplicaIdentity::Default);
    assert_eq!(
        rel.columns.iter().map(|c| c.is_key).collect::<Vec<_>>(),
        [true, false, false, false]
    );
    // The change carries the relation it was decoded with (typed sinks read the column kinds);
    // BEGIN and COMMIT carry none.
    let carried = evs[1]
        .relation
        .as_ref()
        .expect("INSERT carries its relation");
    assert!(std::ptr::eq(&**carried, rel));
    assert!(carried.columns.iter().all(|c| c.kind != ColumnKind::Other));
    assert!(evs[0].relation.is_none() && evs[2].relation.is_none());
}

#[test]
fn in_transaction_tracks_begin_and_commit() {
    let mut d = dec();
    run(&mut d, &[(1, fx::begin(9, TS, 5))]);
    assert!(d.in_transaction());
    run(&mut d, &[(9, fx::commit(9, 10, TS))]);
    assert!(!d.in_transaction());
}

fn in_tx(extra: Vec<(u64, Vec<u8>)>) -> Vec<Event> {
    let mut d = dec();
    let mut msgs = vec![
        (0x100, fx::begin(0x900, TS, 7)),
        (0x101, orders_rel(None)),
        (0x102, users_rel(None)),
    ];
    msgs.extend(extra);
    msgs.push((0x900, fx::commit(0x900, 0x930, TS)));
    let evs = run(&mut d, &msgs);
    evs[1..evs.len() - 1].to_vec()
}

#[test]
fn update_without_old_tuple() {
    let evs = in_tx(vec![(
        0x200,
        fx::update(None, ORDERS, None, &[T("1"), T("43"), T("pen"), N]),
    )]);
    let e = &evs[0];
    assert_eq!(e.op, Op::Update);
    assert_eq!(
        e.data,
        Some(row(&[
            ("id", v(INT8, "1")),
            ("user_id", v(INT4, "43")),
            ("item", v(TEXT, "pen")),
            ("note", Value::Null),
        ]))
    );
    assert_eq!(e.old, None);
    assert_eq!(e.key, Some(row(&[("id", v(INT8, "1"))])));
    assert_eq!(
        (e.lsn, e.commit_lsn, e.xid),
        (Lsn(0x200), Lsn(0x900), Some(7))
    );
}

#[test]
fn update_with_key_old_tuple_keeps_only_key_columns() {
    // Primary key changed from 1 to 2: the server sends the old key ('K'), non-key as null.
    let evs = in_tx(vec![(
        0x200,
        fx::update(
            None,
            ORDERS,
            Some((b'K', &[T("1"), N, N, N])),
            &[T("2"), T("42"), T("book"), N],
        ),
    )]);
    let e = &evs[0];
    assert_eq!(e.old, Some(row(&[("id", v(INT8, "1"))])));
    assert_eq!(e.key, Some(row(&[("id", v(INT8, "2"))])));
    assert_eq!(
        names(e.data.as_ref().unwrap()),
        ["id", "user_id", "item", "note"]
    );
}

#[test]
fn update_with_full_old_tuple_and_unchanged_toast() {
    let evs = in_tx(vec![(
        0x200,
        fx::update(
            None,
            ORDERS,
            Some((b'O', &[T("1"), T("42"), T("book"), N])),
            &[T("1"), T("42"), T("pen"), U],
        ),
    )]);
    let e = &evs[0];
    assert_eq!(
        e.old,
        Some(row(&[
            ("id", v(INT8, "1")),
            ("user_id", v(INT4, "42")),
            ("item", v(TEXT, "book")),
            ("note", Value::Null),
        ]))
    );
    // The unchanged TOAST column is not in `data` (never as null), only in `unchanged`.
    assert_eq!(names(e.data.as_ref().unwrap()), ["id", "user_id", "item"]);
    assert_eq!(e.unchanged, vec![Arc::<str>::from("note")]);
    assert_eq!(e.key, Some(row(&[("id", v(INT8, "1"))])));
}

#[test]
fn update_key_falls_back_to_old_tuple_when_key_is_unchanged_toast() {
    let evs = in_tx(vec![(
        0x200,
        fx::update(
            None,
            ORDERS,
            Some((b'O', &[T("7"), T("1"), T("a"), T("x")])),
            &[U, T("2"), T("b"), T("x")],
        ),
    )]);
    let e = &evs[0];
    assert_eq!(e.key, Some(row(&[("id", v(INT8, "7"))])));
    assert_eq!(e.unchanged, vec![Arc::<str>::from("id")]);
}

#[test]
fn delete_with_key_tuple_emits_only_key_columns() {
    let evs = in_tx(vec![(
        0x200,
        fx::delete(None, ORDERS, b'K', &[T("5"), N, N, N]),
    )]);
    let e = &evs[0];
    assert_eq!(e.op, Op::Delete);
    assert_eq!(e.data, Some(row(&[("id", v(INT8, "5"))])));
    assert_eq!(e.key, e.data);
    assert_eq!(e.old, None);
}

#[test]
fn delete_with_full_old_tuple() {
    let evs = in_tx(vec![(
        0x200,
        fx::delete(None, ORDERS, b'O', &[T("5"), T("9"), T("cup"), T("n")]),
    )]);
    let e = &evs[0];
    assert_eq!(
        e.data,
        Some(row(&[
            ("id", v(INT8, "5")),
            ("user_id", v(INT4, "9")),
            ("item", v(TEXT, "cup")),
            ("note", v(TEXT, "n")),
        ]))
    );
    assert_eq!(e.key, Some(row(&[("id", v(INT8, "5"))])));
    assert_eq!(e.old, None);
}

#[test]
fn relation_without_key_columns_gives_no_key() {
    let evs = in_tx(vec![
        (0x200, fx::insert(None, USERS, &[T("ann")])),
        (0x201, fx::delete(None, USERS, b'O', &[T("ann")])),
    ]);
    assert_eq!((evs[0].schema(), evs[0].table()), ("app", "users"));
    assert_eq!(evs[0].key, None);
    assert_eq!(evs[1].key, None);
    assert_eq!(evs[1].data, Some(row(&[("name", v(TEXT, "ann"))])));
}

#[test]
fn truncate_emits_one_event_per_relation() {
    let evs = in_tx(vec![(0x200, fx::truncate(None, 3, &[ORDERS, USERS]))]);
    assert_eq!(ops(&evs), [Op::Truncate, Op::Truncate]);
    assert_eq!((evs[0].table(), evs[1].table()), ("orders", "users"));
    assert_eq!((evs[1].schema(), evs[1].data.clone()), ("app", None));
    assert_eq!(
        (evs[0].lsn, evs[0].commit_lsn, evs[0].xid),
        (Lsn(0x200), Lsn(0x900), Some(7))
    );
    match parse(&fx::truncate(None, 3, &[ORDERS]), false).unwrap() {
        Message::Truncate(t) => {
            assert!(t.cascade() && t.restart_identity());
            assert_eq!(t.relation_ids().collect::<Vec<_>>(), [ORDERS]);
        }
        m => panic!("{m:?}"),
    }
}

#[test]
fn transactional_message_is_stamped_like_a_change() {
    let evs = in_tx(vec![(
        0x200,
        fx::message(None, true, 0x200, "fence", b"42"),
    )]);
    let e = &evs[0];
    assert_eq!(e.op, Op::Message);
    assert_eq!(
        (e.lsn, e.commit_lsn, e.xid, e.ts),
        (Lsn(0x200), Lsn(0x900), Some(7), Some(Timestamp(TS)))
    );
    let m = e.message.as_ref().unwrap();
    assert!(m.transactional);
    assert_eq!(
        (m.prefix.as_str(), m.content.as_slice()),
        ("fence", &b"42"[..])
    );
}

#[test]
fn non_transactional_message_is_emitted_alone() {
    let mut d = dec();
    let evs = run(
        &mut d,
        &[(0x300, fx::message(None, false, 0x300, "p", b"\xff"))],
    );
    let e = &evs[0];
    assert_eq!(
        (e.op, e.lsn, e.commit_lsn, e.xid, e.ts),
        (Op::Message, Lsn(0x300), Lsn(0x300), None, None)
    );
    assert!(!e.message.as_ref().unwrap().transactional);
}

#[test]
fn origin_and_type_emit_nothing() {
    let mut d = dec();
    let evs = run(
        &mut d,
        &[
            (1, fx::begin(9, TS, 5)),
            (2, fx::origin(0x77, "upstream")),
            (3, fx::type_(None, 90_000, "", "mood")),
            (4, fx::type_(None, 90_001, "app", "color")),
            (9, fx::commit(9, 10, TS)),
        ],
    );
    assert_eq!(ops(&evs), [Op::Begin, Op::Commit]);
    let t = d.type_name(90_000).unwrap();
    assert_eq!((&*t.namespace, &*t.name), ("pg_catalog", "mood"));
    assert_eq!(&*d.type_name(90_001).unwrap().namespace, "app");
}

#[test]
fn unknown_user_types_are_reported_once_in_and_out_of_streams() {
    let mut d = dec();
    d.types_mut().insert(90_002, super::value::TypeKind::Enum);
    run(
        &mut d,
        &[
            (1, fx::begin(9, TS, 5)),
            (2, fx::type_(None, 90_000, "app", "qty")),
            (3, fx::type_(None, 90_002, "app", "known")),
            (4, fx::type_(None, 25, "", "text")),
            (9, fx::commit(9, 10, TS)),
        ],
    );
    assert_eq!(
        d.take_unknown_types(),
        vec![90_000],
        "only user types the registry lacks"
    );
    assert!(d.take_unknown_types().is_empty(), "taken once");
    run(
        &mut d,
        &[
            (11, fx::stream_start(77, true)),
            (12, fx::type_(Some(77), 90_001, "app", "state")),
            (13, fx::stream_stop()),
        ],
    );
    assert_eq!(
        d.take_unknown_types(),
        vec![90_001],
        "noticed when it arrives in a stream, before the transaction is replayed"
    );
}

#[test]
fn empty_namespace_means_pg_catalog() {
    let mut d = dec();
    run(
        &mut d,
        &[(
            1,
            fx::relation(None, 1259, "", "pg_class", b'n', &[(0, "relname", 19, -1)]),
        )],
    );
    assert_eq!(&*d.relation(1259).unwrap().namespace, "pg_catalog");
    assert_eq!(
        d.relation(1259).unwrap().replica_identity,
        ReplicaIdentity::Nothing
    );
}

#[test]
fn binary_columns_use_parse_binary() {
    let mut d = dec();
    let evs = run(
        &mut d,
        &[
            (1, fx::begin(9, TS, 5)),
            (
                2,
                fx::relation(None, 1, "s", "blob", b'f', &[(0, "b", BYTEA, -1)]),
            ),
            (3, fx::insert(None, 1, &[B(&[0xde, 0xad])])),
            (9, fx::commit(9, 10, TS)),
        ],
    );
    assert_eq!(
        evs[1].data.as_ref().unwrap().columns[0].value,
        TypeRegistry::new().parse_binary(BYTEA, &[0xde, 0xad])
    );
}

#[test]
fn relation_resent_after_alter_changes_later_events() {
    let mut d = dec();
    let evs = run(
        &mut d,
        &[
            (1, fx::begin(0x90, TS, 5)),
            (2, orders_rel(None)),
            (3, ins(None, "1")),
            (4, orders_rel_v2(None)),
            (
                5,
                fx::insert(None, ORDERS, &[T("2"), T("42"), T("book"), N, T("new")]),
            ),
            (0x90, fx::commit(0x90, 0x99, TS)),
        ],
    );
    assert_eq!(names(evs[1].data.as_ref().unwrap()).len(), 4);
    assert_eq!(
        names(evs[2].data.as_ref().unwrap()),
        ["id", "user_id", "item", "note", "status"]
    );
    assert_eq!(d.relation(ORDERS).unwrap().columns.len(), 5);
}

// ---------------------------------------------------------------- protocol v2: streaming

#[test]
fn streamed_transaction_committed() {
    let mut d = dec().with_protocol(2);
    let pre = run(
        &mut d,
        &[
            (0x1000, fx::stream_start(100, true)),
            (0x1000, orders_rel(Some(100))),
            (0x1010, ins(Some(100), "1")),
            (0x1020, ins(Some(100), "2")),
            (0x1030, fx::stream_stop()),
            (0x1040, fx::stream_start(100, false)),
            (0x1050, ins(Some(100), "3")),
            (0x1060, fx::stream_stop()),
        ],
    );
    assert!(pre.is_empty(), "nothing is emitted before the commit");
    assert_eq!(d.open_streams(), 1);
    assert!(d.buffered_bytes() > 0);
    assert!(!d.in_transaction());
    // The stream's Relation does not touch the shared cache.
    assert!(d.relation(ORDERS).is_none());
    let evs = run(
        &mut d,
        &[(0x2000, fx::stream_commit(100, 0x1FF0, 0x2010, TS))],
    );
    assert_eq!(
        ops(&evs),
        [Op::Begin, Op::Insert, Op::Insert, Op::Insert, Op::Commit]
    );
    let b = &evs[0];
    assert_eq!(
        (b.lsn, b.commit_lsn, b.xid, b.ts),
        (Lsn(0x1000), Lsn(0x1FF0), Some(100), Some(Timestamp(TS)))
    );
    let lsns: Vec<u64> = evs[1..4].iter().map(|e| e.lsn.0).collect();
    assert_eq!(lsns, [0x1010, 0x1020, 0x1050]);
    for e in &evs[1..4] {
        assert_eq!(
            (e.commit_lsn, e.xid, e.table()),
            (Lsn(0x1FF0), Some(100), "orders")
        );
    }
    assert_eq!(evs[3].key, Some(row(&[("id", v(INT8, "3"))])));
    let c = &evs[4];
    assert_eq!(
        (c.lsn, c.commit_lsn, c.end_lsn),
        (Lsn(0x2000), Lsn(0x1FF0), Some(Lsn(0x2010)))
    );
    assert_eq!((d.open_streams(), d.buffered_bytes()), (0, 0));
}

/// The server marks a relation described inside a streamed transaction as sent when that
/// transaction commits (pgoutput.c, `cleanup_rel_sync_cache`), so the next transaction's
/// changes refer to it without a Relation message: the decoder must have kept it.
#[test]
fn relation_described_in_a_committed_stream_serves_later_transactions() {
    for proto in [2, 3, 4] {
        let mut d = dec().with_protocol(proto);
        let evs = run(
            &mut d,
            &[
                (1, fx::stream_start(100, true)),
                (2, orders_rel(Some(100))),
                (3, ins(Some(100), "1")),
                (4, fx::stream_stop()),
                (5, fx::stream_commit(100, 5, 6, TS)),
                // No Relation: the server considers it sent.
                (7, fx::begin(9, TS, 101)),
                (
                    8,
                    fx::update(None, ORDERS, None, &[T("1"), T("7"), T("pen"), N]),
                ),
                (9, fx::commit(9, 10, TS)),
            ],
        );
        assert_eq!(
            ops(&evs),
            [
                Op::Begin,
                Op::Insert,
                Op::Commit,
                Op::Begin,
                Op::Update,
                Op::Commit
            ],
            "protocol v{proto}"
        );
        assert_eq!(evs[4].key, Some(row(&[("id", v(INT8, "1"))])));
        assert_eq!(d.relation(ORDERS).map(|r| r.columns.len()), Some(4));
    }
}

/// An aborted stream's relation descriptions are forgotten, as the server forgets them
/// (`cleanup_rel_sync_cache(xid, false)`), and a stream that only prepared keeps them to
/// itself: the server describes the relation again before it is needed.
#[test]
fn relation_described_in_an_aborted_or_prepared_stream_is_not_adopted() {
    let mut d = dec().with_protocol(3);
    run(
        &mut d,
        &[
            (1, fx::stream_start(100, true)),
            (2, orders_rel(Some(100))),
            (3, ins(Some(100), "1")),
            (4, fx::stream_stop()),
            (5, fx::stream_abort(100, 100, None)),
            (6, fx::stream_start(200, true)),
            (7, orders_rel(Some(200))),
            (8, ins(Some(200), "2")),
            (9, fx::stream_stop()),
            (10, fx::prepare(b'p', 10, 11, TS, 200, "g")),
        ],
    );
    assert!(d.relation(ORDERS).is_none());
    let evs = run(&mut d, &[(12, fx::commit_prepared(12, 13, TS, 200, "g"))]);
    assert_eq!(ops(&evs), [Op::Begin, Op::Insert, Op::Commit]);
    assert!(d.relation(ORDERS).is_none());
}

/// Adopting a committed stream's description never reverts a newer shape: only the
/// relations the server described in the stream are adopted, not the shapes the decoder
/// pinned from its cache.
#[test]
fn committed_stream_adopts_only_what_the_server_described_in_it() {
    let mut d = dec();
    run(
        &mut d,
        &[
            (1, fx::begin(3, TS, 1)),
            (2, orders_rel(None)),
            (3, fx::commit(3, 4, TS)),
            (5, fx::stream_start(100, true)),
            (6, ins(Some(100), "1")), // pinned from the cache: v1
            (7, fx::stream_stop()),
            (8, fx::begin(10, TS, 2)),
            (9, orders_rel_v2(None)),
            (10, fx::commit(10, 11, TS)),
            (20, fx::stream_commit(100, 20, 21, TS)),
        ],
    );
    assert_eq!(d.relation(ORDERS).map(|r| r.columns.len()), Some(5));
}

#[test]
fn streamed_transaction_aborted() {
    let mut d = dec();
    let evs = run(
        &mut d,
        &[
            (1, fx::stream_start(100, true)),
            (2, orders_rel(Some(100))),
            (3, ins(Some(100), "1")),
            (4, fx::stream_stop()),
            (5, fx::stream_abort(100, 100, None)),
        ],
    );
    assert!(evs.is_empty());
    assert_eq!((d.open_streams(), d.buffered_bytes()), (0, 0));
    // Committing it now is an error: its changes are gone.
    let err = try_run(&mut d, &[(6, fx::stream_commit(100, 6, 7, TS))]).unwrap_err();
    assert!(
        matches!(err, DecodeError::UnknownStream { xid: 100, .. }),
        "{err}"
    );
}

#[test]
fn aborted_subtransaction_drops_only_its_rows() {
    let mut d = dec();
    let evs = run(
        &mut d,
        &[
            (1, fx::stream_start(100, true)),
            (2, orders_rel(Some(100))),
            (3, ins(Some(100), "1")),
            (4, ins(Some(101), "2")), // SAVEPOINT a; INSERT
            (
                5,
                fx::update(Some(101), ORDERS, None, &[T("1"), T("0"), T("x"), N]),
            ),
            (6, ins(Some(102), "3")), // another subtransaction, kept
            (7, ins(Some(100), "4")),
            (8, fx::stream_stop()),
            (9, fx::stream_abort(100, 101, None)), // ROLLBACK TO a
            (10, fx::stream_commit(100, 10, 11, TS)),
        ],
    );
    assert_eq!(
        ops(&evs),
        [Op::Begin, Op::Insert, Op::Insert, Op::Insert, Op::Commit]
    );
    let ids: Vec<Value> = evs[1..4]
        .iter()
        .map(|e| e.data.as_ref().unwrap().columns[0].value.clone())
        .collect();
    assert_eq!(ids, [v(INT8, "1"), v(INT8, "3"), v(INT8, "4")]);
    // Events carry the top-level xid, as in a non-streamed transaction.
    assert!(evs.iter().all(|e| e.xid == Some(100)));
}

#[test]
fn interleaved_streamed_transactions() {
    let mut d = dec();
    let evs = run(
        &mut d,
        &[
            (1, fx::stream_start(100, true)),
            (2, orders_rel(Some(100))),
            (3, ins(Some(100), "1")),
            (4, fx::stream_stop()),
            (5, fx::stream_start(200, true)),
            (6, orders_rel(Some(200))),
            (7, ins(Some(200), "2")),
            (8, fx::stream_stop()),
            (9, fx::stream_start(100, false)),
            (10, ins(Some(100), "3")),
            (11, fx::stream_stop()),
        ],
    );
    assert!(evs.is_empty());
    assert_eq!(d.open_streams(), 2);
    let evs = run(
        &mut d,
        &[
            (20, fx::stream_commit(200, 20, 21, TS)),
            (30, fx::stream_commit(100, 30, 31, TS + 5)),
        ],
    );
    let summary: Vec<(Op, Option<u32>, u64)> = evs.iter().map(|e| (e.op, e.xid, e.lsn.0)).collect();
    assert_eq!(
        summary,
        [
            (Op::Begin, Some(200), 5),
            (Op::Insert, Some(200), 7),
            (Op::Commit, Some(200), 20),
            (Op::Begin, Some(100), 1),
            (Op::Insert, Some(100), 3),
            (Op::Insert, Some(100), 10),
            (Op::Commit, Some(100), 30),
        ]
    );
    assert_eq!(evs[6].ts, Some(Timestamp(TS + 5)));
}

#[test]
fn stream_schema_overlay_is_isolated_from_other_transactions() {
    let mut d = dec();
    // Txn 100 streams with the old shape; txn 200 (after ALTER) streams with the new one and
    // commits first; then a non-streamed txn re-sends the new shape to the shared cache.
    let evs = run(
        &mut d,
        &[
            (1, fx::stream_start(100, true)),
            (2, orders_rel(Some(100))),
            (3, ins(Some(100), "1")),
            (4, fx::stream_stop()),
            (5, fx::stream_start(200, true)),
            (6, orders_rel_v2(Some(200))),
            (
                7,
                fx::insert(Some(200), ORDERS, &[T("2"), T("1"), T("a"), N, T("s")]),
            ),
            (8, fx::stream_stop()),
            (9, fx::stream_commit(200, 9, 10, TS)),
            (11, fx::begin(14, TS, 300)),
            (12, orders_rel_v2(None)),
            (
                13,
                fx::insert(None, ORDERS, &[T("3"), T("1"), T("a"), N, T("s")]),
            ),
            (14, fx::commit(14, 15, TS)),
            (20, fx::stream_commit(100, 20, 21, TS)),
        ],
    );
    let shapes: Vec<(Option<u32>, usize)> = evs
        .iter()
        .filter(|e| e.op == Op::Insert)
        .map(|e| (e.xid, e.data.as_ref().unwrap().len()))
        .collect();
    assert_eq!(shapes, [(Some(200), 5), (Some(300), 5), (Some(100), 4)]);
}

#[test]
fn stream_without_its_own_relation_pins_the_cached_shape() {
    let mut d = dec();
    let evs = run(
        &mut d,
        &[
            (1, fx::begin(3, TS, 1)),
            (2, orders_rel(None)),
            (3, fx::commit(3, 4, TS)),
            (5, fx::stream_start(100, true)),
            (6, ins(Some(100), "1")), // relies on the cached shape
            (7, fx::stream_stop()),
            (8, fx::begin(10, TS, 2)),
            (9, orders_rel_v2(None)), // ALTER TABLE elsewhere
            (10, fx::commit(10, 11, TS)),
            (20, fx::stream_commit(100, 20, 21, TS)),
        ],
    );
    let ins_ev = evs.iter().find(|e| e.op == Op::Insert).unwrap();
    assert_eq!(ins_ev.data.as_ref().unwrap().len(), 4);
    assert_eq!(ins_ev.lsn, Lsn(6));
}

#[test]
fn relation_resent_mid_stream_applies_from_that_point() {
    let mut d = dec();
    let evs = run(
        &mut d,
        &[
            (1, fx::stream_start(100, true)),
            (2, orders_rel(Some(100))),
            (3, ins(Some(100), "1")),
            (4, orders_rel_v2(Some(100))),
            (
                5,
                fx::insert(Some(100), ORDERS, &[T("2"), T("1"), T("a"), N, T("s")]),
            ),
            (6, fx::stream_stop()),
            (7, fx::stream_commit(100, 7, 8, TS)),
        ],
    );
    let lens: Vec<usize> = evs
        .iter()
        .filter_map(|e| e.data.as_ref().map(Row::len))
        .collect();
    assert_eq!(lens, [4, 5]);
}

#[test]
fn stream_carries_every_change_kind_and_messages() {
    let mut d = dec();
    let evs = run(
        &mut d,
        &[
            (1, fx::stream_start(100, true)),
            (1, fx::origin(0, "o")),
            (2, orders_rel(Some(100))),
            (2, users_rel(Some(100))),
            (2, fx::type_(Some(100), 90_000, "public", "mood")),
            (
                3,
                fx::update(
                    Some(100),
                    ORDERS,
                    Some((b'K', &[T("1"), N, N, N])),
                    &[T("2"), T("1"), T("a"), U],
                ),
            ),
            (4, fx::delete(Some(100), ORDERS, b'K', &[T("2"), N, N, N])),
            (5, fx::truncate(Some(100), 0, &[USERS])),
            (6, fx::message(Some(100), true, 6, "tx", b"in")),
            (7, fx::message(Some(100), false, 7, "now", b"out")),
            (8, fx::stream_stop()),
        ],
    );
    // The non-transactional message is not held back; it carries the stream's xid.
    assert_eq!(ops(&evs), [Op::Message]);
    assert_eq!(
        (evs[0].xid, evs[0].commit_lsn, evs[0].ts),
        (Some(100), Lsn(7), None)
    );
    let evs = run(&mut d, &[(9, fx::stream_commit(100, 9, 10, TS))]);
    assert_eq!(
        ops(&evs),
        [
            Op::Begin,
            Op::Update,
            Op::Delete,
            Op::Truncate,
            Op::Message,
            Op::Commit
        ]
    );
    assert_eq!(evs[1].old, Some(row(&[("id", v(INT8, "1"))])));
    assert_eq!(evs[1].unchanged, vec![Arc::<str>::from("note")]);
    assert_eq!(evs[2].data, Some(row(&[("id", v(INT8, "2"))])));
    assert_eq!(evs[3].table(), "users");
    assert_eq!((evs[4].xid, evs[4].commit_lsn), (Some(100), Lsn(9)));
    assert_eq!(&*d.type_name(90_000).unwrap().name, "mood");
}

#[test]
fn million_row_streamed_transaction_stays_compact() {
    let mut d = dec();
    let mut sink = |_e: Event| {};
    d.decode(Lsn(1), &fx::stream_start(100, true), &mut sink)
        .unwrap();
    d.decode(Lsn(1), &orders_rel(Some(100)), &mut sink).unwrap();
    let mut msg = Vec::new();
    for i in 0..1_000_000u64 {
        msg.clear();
        let id = (12_345 + i).to_string();
        msg.extend(fx::insert(
            Some(100),
            ORDERS,
            &[
                T(&id),
                T("42"),
                T("book"),
                T("2026-11-22 03:22:01.123456+00"),
            ],
        ));
        d.decode(Lsn(2 + i), &msg, &mut sink).unwrap();
    }
    let bytes = d.buffered_bytes();
    assert!(bytes < 120 << 20, "1M rows buffered in {bytes} bytes");
    d.decode(Lsn(9), &fx::stream_stop(), &mut sink).unwrap();
    d.decode(Lsn(9), &fx::stream_abort(100, 100, None), &mut sink)
        .unwrap();
    assert_eq!(d.buffered_bytes(), 0);
}

// ---------------------------------------------------------------- protocol v3: two-phase

#[test]
fn prepared_transaction_committed() {
    let mut d = dec().with_protocol(3);
    let evs = run(
        &mut d,
        &[
            (0x100, fx::begin_prepare(0x1F0, 0x200, TS, 900, "gx")),
            (0x110, orders_rel(None)),
            (0x120, ins(None, "1")),
            (0x1F0, fx::prepare(b'P', 0x1F0, 0x200, TS, 900, "gx")),
        ],
    );
    assert!(evs.is_empty());
    assert_eq!(d.open_streams(), 1);
    assert_eq!(d.oldest_buffered_lsn(), Some(Lsn(0x100)));
    // A later transaction alters the table before COMMIT PREPARED.
    run(
        &mut d,
        &[
            (0x300, fx::begin(0x310, TS, 901)),
            (0x301, orders_rel_v2(None)),
            (0x310, fx::commit(0x310, 0x320, TS)),
        ],
    );
    let evs = run(
        &mut d,
        &[(0x400, fx::commit_prepared(0x400, 0x410, TS + 9, 900, "gx"))],
    );
    assert_eq!(ops(&evs), [Op::Begin, Op::Insert, Op::Commit]);
    assert_eq!(
        (evs[0].lsn, evs[0].commit_lsn, evs[0].xid, evs[0].ts),
        (Lsn(0x100), Lsn(0x400), Some(900), Some(Timestamp(TS + 9)))
    );
    assert_eq!((evs[1].lsn, evs[1].commit_lsn), (Lsn(0x120), Lsn(0x400)));
    assert_eq!(
        evs[1].data.as_ref().unwrap().len(),
        4,
        "decoded with its own shape"
    );
    assert_eq!((evs[2].lsn, evs[2].end_lsn), (Lsn(0x400), Some(Lsn(0x410))));
    assert_eq!((d.open_streams(), d.oldest_buffered_lsn()), (0, None));
}

#[test]
fn prepared_transaction_rolled_back() {
    let mut d = dec();
    let evs = run(
        &mut d,
        &[
            (1, orders_rel(None)),
            (2, fx::begin_prepare(4, 5, TS, 900, "gx")),
            (3, ins(None, "1")),
            (4, fx::prepare(b'P', 4, 5, TS, 900, "gx")),
            (6, fx::rollback_prepared(5, 7, TS, TS + 1, 900, "gx")),
            // Rolling back a prepare never received is harmless.
            (8, fx::rollback_prepared(5, 9, TS, TS + 1, 901, "other")),
        ],
    );
    assert!(evs.is_empty());
    assert_eq!((d.open_streams(), d.buffered_bytes()), (0, 0));
    let err = try_run(&mut d, &[(9, fx::commit_prepared(9, 10, TS, 900, "gx"))]).unwrap_err();
    assert!(
        matches!(&err, DecodeError::UnknownPrepared { gid, .. } if gid == "gx"),
        "{err}"
    );
}

#[test]
fn stream_prepare_turns_a_streamed_transaction_into_a_prepared_one() {
    let mut d = dec().with_protocol(3);
    let evs = run(
        &mut d,
        &[
            (1, fx::stream_start(100, true)),
            (2, orders_rel(Some(100))),
            (3, ins(Some(100), "1")),
            (4, fx::stream_stop()),
            (5, fx::prepare(b'p', 5, 6, TS, 100, "g1")),
        ],
    );
    assert!(evs.is_empty());
    assert_eq!(d.open_streams(), 1);
    let evs = run(&mut d, &[(9, fx::commit_prepared(9, 10, TS, 100, "g1"))]);
    assert_eq!(ops(&evs), [Op::Begin, Op::Insert, Op::Commit]);
    assert_eq!(
        (evs[0].lsn, evs[1].lsn, evs[2].end_lsn),
        (Lsn(1), Lsn(3), Some(Lsn(10)))
    );
}

// ---------------------------------------------------------------- protocol v4

#[test]
fn v4_parallel_stream_abort_carries_lsn_and_ts() {
    let bytes = fx::stream_abort(100, 101, Some((0xABC, TS)));
    let ctx = ParseContext {
        in_stream: false,
        abort_info: true,
    };
    match parse_in(&bytes, ctx).unwrap() {
        Message::StreamAbort(a) => {
            assert_eq!((a.xid, a.subxid), (100, 101));
            assert_eq!(
                (a.abort_lsn, a.abort_ts),
                (Some(Lsn(0xABC)), Some(Timestamp(TS)))
            );
        }
        m => panic!("{m:?}"),
    }
    let mut d = dec().with_protocol(4).with_parallel_streaming(true);
    let evs = run(
        &mut d,
        &[
            (1, fx::stream_start(100, true)),
            (2, orders_rel(Some(100))),
            (3, ins(Some(100), "1")),
            (4, fx::stream_stop()),
            (5, bytes.clone()),
        ],
    );
    assert!(evs.is_empty());
    assert_eq!(d.open_streams(), 1);
    run(&mut d, &[(6, fx::stream_abort(100, 100, Some((6, TS))))]);
    assert_eq!(d.open_streams(), 0);
    // The same bytes to a decoder not told about parallel streaming: a specific error.
    let err = try_run(&mut dec(), &[(5, bytes)]).unwrap_err();
    assert!(
        matches!(err, DecodeError::StreamAbortLength { len: 25, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("with_parallel_streaming"));
    // And the short form to one that was.
    let mut d = dec().with_parallel_streaming(true);
    let err = try_run(&mut d, &[(5, fx::stream_abort(1, 1, None))]).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { .. }), "{err}");
}

#[test]
fn parallel_flag_is_ignored_below_v4() {
    let mut d = dec().with_protocol(3).with_parallel_streaming(true);
    run(&mut d, &[(5, fx::stream_abort(1, 1, None))]);
}

// ---------------------------------------------------------------- parser

/// Every message kind, with the context it must be parsed in.
fn all_fixtures() -> Vec<(Vec<u8>, ParseContext)> {
    let plain = ParseContext::default();
    let stream = ParseContext {
        in_stream: true,
        abort_info: false,
    };
    let v4 = ParseContext {
        in_stream: false,
        abort_info: true,
    };
    let mut out = Vec::new();
    for (ctx, x) in [(plain, None), (stream, Some(100))] {
        out.push((orders_rel(x), ctx));
        out.push((fx::type_(x, 90_000, "public", "mood"), ctx));
        out.push((ins(x, "1"), ctx));
        out.push((fx::insert(x, ORDERS, &[B(b"\x01\x02"), N, U, T("")]), ctx));
        out.push((fx::update(x, ORDERS, None, &[T("1"), N, N, U]), ctx));
        out.push((
            fx::update(
                x,
                ORDERS,
                Some((b'K', &[T("1"), N, N, N])),
                &[T("2"), N, N, N],
            ),
            ctx,
        ));
        out.push((
            fx::update(
                x,
                ORDERS,
                Some((b'O', &[T("1"), N, N, N])),
                &[T("2"), N, N, N],
            ),
            ctx,
        ));
        out.push((fx::delete(x, ORDERS, b'K', &[T("1"), N, N, N]), ctx));
        out.push((fx::delete(x, ORDERS, b'O', &[T("1"), N, N, N]), ctx));
        out.push((fx::truncate(x, 1, &[ORDERS, USERS]), ctx));
        out.push((fx::message(x, true, 9, "p", b"c"), ctx));
    }
    out.extend([
        (fx::begin(1, TS, 2), plain),
        (fx::commit(1, 2, TS), plain),
        (fx::origin(1, "o"), plain),
        (fx::stream_start(1, true), plain),
        (fx::stream_stop(), plain),
        (fx::stream_commit(1, 2, 3, TS), plain),
        (fx::stream_abort(1, 2, None), plain),
        (fx::stream_abort(1, 2, Some((3, TS))), v4),
        (fx::begin_prepare(1, 2, TS, 3, "g"), plain),
        (fx::prepare(b'P', 1, 2, TS, 3, "g"), plain),
        (fx::prepare(b'p', 1, 2, TS, 3, "g"), plain),
        (fx::commit_prepared(1, 2, TS, 3, "g"), plain),
        (fx::rollback_prepared(1, 2, TS, TS, 3, "g"), plain),
    ]);
    out
}

#[test]
fn every_fixture_parses_and_every_truncated_prefix_fails() {
    for (bytes, ctx) in all_fixtures() {
        let m = parse_in(&bytes, ctx).unwrap_or_else(|e| panic!("{bytes:?}: {e}"));
        for len in 0..bytes.len() {
            let r = parse_in(&bytes[..len], ctx);
            assert!(
                r.is_err(),
                "{} prefix of {len} bytes parsed: {r:?}",
                m.name()
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(
            parse_in(&longer, ctx).is_err(),
            "{} with a trailing byte",
            m.name()
        );
    }
}

#[test]
fn parser_fields_match_the_docs() {
    match parse(&fx::begin(0x10, TS, 7), false).unwrap() {
        Message::Begin(b) => assert_eq!(
            (b.final_lsn, b.commit_ts, b.xid),
            (Lsn(0x10), Timestamp(TS), 7)
        ),
        m => panic!("{m:?}"),
    }
    match parse(&fx::commit(1, 2, TS), false).unwrap() {
        Message::Commit(c) => assert_eq!(
            (c.commit_lsn, c.end_lsn, c.commit_ts),
            (Lsn(1), Lsn(2), Timestamp(TS))
        ),
        m => panic!("{m:?}"),
    }
    match parse(&fx::origin(5, "up"), false).unwrap() {
        Message::Origin(o) => assert_eq!((o.lsn, o.name), (Lsn(5), "up")),
        m => panic!("{m:?}"),
    }
    match parse(&orders_rel(Some(9)), true).unwrap() {
        Message::Relation(r) => {
            assert_eq!(
                (r.xid, r.oid, r.namespace, r.name, r.replica_identity),
                (Some(9), ORDERS, "public", "orders", b'd')
            );
            let cols: Vec<_> = r
                .columns()
                .map(|c| (c.flags, c.name, c.type_oid, c.type_modifier))
                .collect();
            assert_eq!(cols[0], (1, "id", INT8, -1));
            assert_eq!(cols.len(), 4);
        }
        m => panic!("{m:?}"),
    }
    match parse(&fx::type_(Some(3), 5, "a", "b"), true).unwrap() {
        Message::Type(t) => assert_eq!((t.xid, t.oid, t.namespace, t.name), (Some(3), 5, "a", "b")),
        m => panic!("{m:?}"),
    }
    match parse(&fx::insert(None, 1, &[T("x"), N, U, B(b"\0")]), false).unwrap() {
        Message::Insert(i) => {
            use super::pgoutput::ColumnData as C;
            assert_eq!(
                i.new.iter().collect::<Vec<_>>(),
                [C::Text(b"x"), C::Null, C::UnchangedToast, C::Binary(b"\0")]
            );
        }
        m => panic!("{m:?}"),
    }
    match parse(&fx::update(None, 1, Some((b'O', &[N])), &[T("x")]), false).unwrap() {
        Message::Update(u) => {
            assert_eq!(u.old.map(|(k, t)| (k, t.ncols)), Some((OldKind::Full, 1)));
            assert_eq!(u.new.ncols, 1);
        }
        m => panic!("{m:?}"),
    }
    match parse(&fx::delete(Some(4), 1, b'K', &[N]), true).unwrap() {
        Message::Delete(d) => assert_eq!((d.xid, d.kind), (Some(4), OldKind::Key)),
        m => panic!("{m:?}"),
    }
    match parse(&fx::message(None, false, 8, "pre", b"body"), false).unwrap() {
        Message::Message(m) => assert_eq!(
            (m.transactional, m.lsn, m.prefix, m.content),
            (false, Lsn(8), "pre", &b"body"[..])
        ),
        m => panic!("{m:?}"),
    }
    match parse(&fx::stream_start(6, false), false).unwrap() {
        Message::StreamStart(s) => assert_eq!((s.xid, s.first_segment), (6, false)),
        m => panic!("{m:?}"),
    }
    assert_eq!(
        parse(&fx::stream_stop(), false).unwrap(),
        Message::StreamStop
    );
    match parse(&fx::stream_commit(6, 1, 2, TS), false).unwrap() {
        Message::StreamCommit(c) => assert_eq!(
            (c.xid, c.commit_lsn, c.end_lsn, c.commit_ts),
            (6, Lsn(1), Lsn(2), Timestamp(TS))
        ),
        m => panic!("{m:?}"),
    }
    match parse(&fx::stream_abort(6, 7, None), false).unwrap() {
        Message::StreamAbort(a) => assert_eq!((a.xid, a.subxid, a.abort_lsn), (6, 7, None)),
        m => panic!("{m:?}"),
    }
    match parse(&fx::begin_prepare(1, 2, TS, 3, "g"), false).unwrap() {
        Message::BeginPrepare(b) => assert_eq!(
            (b.prepare_lsn, b.end_lsn, b.prepare_ts, b.xid, b.gid),
            (Lsn(1), Lsn(2), Timestamp(TS), 3, "g")
        ),
        m => panic!("{m:?}"),
    }
    match parse(&fx::prepare(b'P', 1, 2, TS, 3, "g"), false).unwrap() {
        Message::Prepare(p) => assert_eq!(
            (p.prepare_lsn, p.end_lsn, p.xid, p.gid),
            (Lsn(1), Lsn(2), 3, "g")
        ),
        m => panic!("{m:?}"),
    }
    match parse(&fx::prepare(b'p', 1, 2, TS, 3, "g"), false).unwrap() {
        Message::StreamPrepare(p) => assert_eq!((p.prepare_lsn, p.xid, p.gid), (Lsn(1), 3, "g")),
        m => panic!("{m:?}"),
    }
    match parse(&fx::commit_prepared(1, 2, TS, 3, "g"), false).unwrap() {
        Message::CommitPrepared(c) => assert_eq!(
            (c.commit_lsn, c.end_lsn, c.commit_ts, c.xid, c.gid),
            (Lsn(1), Lsn(2), Timestamp(TS), 3, "g")
        ),
        m => panic!("{m:?}"),
    }
    match parse(&fx::rollback_prepared(1, 2, TS, TS + 1, 3, "g"), false).unwrap() {
        Message::RollbackPrepared(r) => assert_eq!(
            (
                r.prepare_end_lsn,
                r.rollback_end_lsn,
                r.prepare_ts,
                r.rollback_ts,
                r.xid,
                r.gid
            ),
            (Lsn(1), Lsn(2), Timestamp(TS), Timestamp(TS + 1), 3, "g")
        ),
        m => panic!("{m:?}"),
    }
}

// ---------------------------------------------------------------- malformed input

/// A decoder that knows `orders` and `users` and is inside a transaction.
fn ready() -> Decoder {
    let mut d = dec();
    run(
        &mut d,
        &[
            (1, orders_rel(None)),
            (1, users_rel(None)),
            (2, fx::begin(9, TS, 5)),
        ],
    );
    d
}

#[test]
fn decoder_rejects_every_truncated_prefix() {
    for (bytes, ctx) in all_fixtures() {
        for len in 0..bytes.len() {
            let mut d = ready();
            if ctx.in_stream {
                run(
                    &mut d,
                    &[(2, fx::commit(9, 9, TS)), (3, fx::stream_start(100, true))],
                );
            }
            let d = if ctx.abort_info {
                d.with_parallel_streaming(true)
            } else {
                d
            };
            let mut d = d;
            assert!(
                d.decode(Lsn(5), &bytes[..len], &mut |_| {}).is_err(),
                "prefix {len} of {bytes:?}"
            );
        }
    }
}

#[test]
fn corrupted_bytes_never_panic() {
    // Every byte of every fixture replaced by a few interesting values, decoded in and out of
    // streams: Ok or Err, never a panic.
    for (bytes, ctx) in all_fixtures() {
        for i in 0..bytes.len() {
            for b in [0x00, 0x01, 0x7F, 0x80, 0xFF, b'n', b'u', b't', b'K'] {
                let mut m = bytes.clone();
                m[i] = b;
                let mut d = ready();
                if ctx.in_stream {
                    let _ = try_run(
                        &mut d,
                        &[(2, fx::commit(9, 9, TS)), (3, fx::stream_start(100, true))],
                    );
                }
                let _ = d.decode(Lsn(5), &m, &mut |e| {
                    let _ = e.to_json();
                });
                let _ = try_run(
                    &mut d,
                    &[
                        (6, fx::stream_stop()),
                        (7, fx::stream_commit(100, 7, 8, TS)),
                    ],
                );
            }
        }
    }
}

#[test]
fn specific_errors() {
    let e = |msgs: &[(u64, Vec<u8>)]| try_run(&mut ready(), msgs).unwrap_err();

    assert_eq!(e(&[(5, vec![])]), DecodeError::Empty);
    assert_eq!(
        e(&[(5, vec![b'Z', 0])]),
        DecodeError::UnknownTag { tag: b'Z' }
    );

    let err = e(&[(5, fx::insert(None, 4242, &[T("1")]))]);
    assert_eq!(
        err,
        DecodeError::UnknownRelation {
            msg: "Insert",
            oid: 4242
        }
    );
    assert!(err.to_string().contains("OID 4242"));

    // Negative and huge value lengths.
    let mut neg = fx::insert(None, USERS, &[T("abc")]);
    let at = neg.len() - 7;
    neg[at..at + 4].copy_from_slice(&(-5i32).to_be_bytes());
    assert!(matches!(
        e(&[(5, neg)]),
        DecodeError::BadValue {
            field: "column value length",
            value: -5,
            ..
        }
    ));
    let mut huge = fx::insert(None, USERS, &[T("abc")]);
    huge[at..at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(matches!(
        e(&[(5, huge)]),
        DecodeError::Truncated {
            field: "column value",
            ..
        }
    ));

    // Negative column count.
    let mut negcols = fx::insert(None, USERS, &[T("abc")]);
    negcols[6..8].copy_from_slice(&(-1i16).to_be_bytes());
    assert!(matches!(
        e(&[(5, negcols)]),
        DecodeError::BadValue {
            field: "tuple column count",
            ..
        }
    ));

    // Unknown tuple kind.
    let mut kind = fx::insert(None, USERS, &[T("abc")]);
    kind[8] = b'x';
    let err = e(&[(5, kind)]);
    assert_eq!(
        err,
        DecodeError::UnknownTupleKind {
            msg: "Insert",
            column: 0,
            kind: b'x'
        }
    );

    // Bad tuple tag.
    let mut tag = fx::insert(None, USERS, &[T("abc")]);
    tag[5] = b'Q';
    assert!(matches!(
        e(&[(5, tag)]),
        DecodeError::BadTupleTag { found: b'Q', .. }
    ));

    // Invalid UTF-8 names the table and column.
    let mut bad = fx::insert(None, USERS, &[T("ab")]);
    let n = bad.len();
    bad[n - 1] = 0xFF;
    let err = e(&[(5, bad)]);
    assert_eq!(
        err,
        DecodeError::ColumnUtf8 {
            schema: "app".into(),
            table: "users".into(),
            column: "name".into()
        }
    );
    assert!(err.to_string().contains("app.users.name"));

    // Column count differs from the Relation.
    let err = e(&[(5, fx::insert(None, USERS, &[T("a"), T("b")]))]);
    assert!(
        matches!(
            err,
            DecodeError::ColumnCount {
                expected: 1,
                got: 2,
                ..
            }
        ),
        "{err}"
    );

    // Unterminated string.
    let mut s = fx::origin(1, "abc");
    s.pop();
    assert!(matches!(
        e(&[(5, s)]),
        DecodeError::UnterminatedString {
            field: "origin name",
            ..
        }
    ));

    // Unknown replica identity.
    let mut r = users_rel(None);
    let at = 1 + 4 + "app\0users\0".len();
    r[at] = b'z';
    assert!(matches!(
        e(&[(5, r)]),
        DecodeError::BadValue {
            field: "replica identity",
            ..
        }
    ));

    // Negative truncate count.
    let mut t = fx::truncate(None, 0, &[]);
    t[1..5].copy_from_slice(&(-1i32).to_be_bytes());
    assert!(matches!(
        e(&[(5, t)]),
        DecodeError::BadValue {
            field: "relation count",
            ..
        }
    ));
}

#[test]
fn out_of_order_messages_are_errors() {
    let mut d = dec();
    assert!(matches!(
        try_run(&mut d, &[(1, fx::commit(1, 2, TS))]),
        Err(DecodeError::Unexpected { msg: "Commit", .. })
    ));
    let mut d = dec();
    run(&mut d, &[(1, orders_rel(None))]);
    assert!(matches!(
        try_run(&mut d, &[(1, ins(None, "1"))]),
        Err(DecodeError::Unexpected { msg: "Insert", .. })
    ));
    let mut d = ready();
    assert!(matches!(
        try_run(&mut d, &[(3, fx::begin(9, TS, 6))]),
        Err(DecodeError::Unexpected { msg: "Begin", .. })
    ));
    let mut d = dec();
    assert!(matches!(
        try_run(&mut d, &[(1, fx::stream_start(1, false))]),
        Err(DecodeError::UnknownStream { xid: 1, .. })
    ));
    let mut d = dec();
    assert!(matches!(
        try_run(
            &mut d,
            &[(1, fx::stream_start(1, true)), (2, fx::begin(3, TS, 4))]
        ),
        Err(DecodeError::Unexpected { msg: "Begin", .. })
    ));
    let mut d = ready();
    assert!(matches!(
        try_run(&mut d, &[(3, fx::stream_commit(1, 3, 4, TS))]),
        Err(DecodeError::Unexpected {
            msg: "Stream Commit",
            ..
        })
    ));
    let mut d = dec();
    assert!(matches!(
        try_run(&mut d, &[(1, fx::stream_stop())]),
        Err(DecodeError::Unexpected {
            msg: "Stream Stop",
            ..
        })
    ));
    // Streaming under protocol v1, two-phase under v2.
    let err = try_run(
        &mut dec().with_protocol(1),
        &[(1, fx::stream_start(1, true))],
    )
    .unwrap_err();
    assert!(err.to_string().contains("protocol v1"), "{err}");
    let err = try_run(
        &mut dec().with_protocol(2),
        &[(1, fx::begin_prepare(1, 2, TS, 3, "g"))],
    )
    .unwrap_err();
    assert!(err.to_string().contains("v3"), "{err}");
}

#[test]
fn reset_forgets_connection_state() {
    let mut d = dec().with_protocol(2);
    run(
        &mut d,
        &[(1, orders_rel(None)), (2, fx::stream_start(1, true))],
    );
    d.reset();
    assert_eq!(
        (d.relation(ORDERS), d.open_streams(), d.protocol()),
        (None, 0, 2)
    );
    run(&mut d, &[(1, fx::begin(2, TS, 3))]);
    assert!(d.in_transaction());
}

#[test]
fn events_serialise() {
    let evs = in_tx(vec![(0x200, ins(None, "1"))]);
    let json = evs[0].to_json();
    assert!(json.starts_with(r#"{"type":"wal","op":"INSERT","schema":"public","table":"orders","lsn":"0/200","commit_lsn":"0/900","xid":7,"#), "{json}");
}

// ---------------------------------------------------------------- real server bytes

/// `lsn|hex` lines from `pg_logical_slot_peek_binary_changes` on PostgreSQL 15.18 (see
/// testdata/README.md for the workload).
fn recorded(text: &str) -> Vec<(u64, Vec<u8>)> {
    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
    text.lines()
        .map(|l| {
            let (lsn, data) = l.split_once('|').unwrap();
            (lsn.parse::<Lsn>().unwrap().0, hex(data))
        })
        .collect()
}

#[test]
fn real_pg15_streamed_and_two_phase_stream_matches_the_plain_one() {
    let plain = run(&mut dec(), &recorded(include_str!("testdata/pg15_v1.txt")));
    let mut d = dec().with_protocol(3);
    let streamed = run(
        &mut d,
        &recorded(include_str!("testdata/pg15_v3_stream_2pc.txt")),
    );
    assert_eq!(
        (d.open_streams(), d.buffered_bytes(), d.in_transaction()),
        (0, 0, false)
    );
    // Streaming changes when the transaction arrives, never what it contains.
    assert_eq!(plain.len(), streamed.len());
    for (p, s) in plain.iter().zip(&streamed) {
        assert_eq!(
            (
                p.op,
                &p.table,
                p.commit_lsn,
                p.xid,
                &p.data,
                &p.old,
                &p.key,
                &p.unchanged
            ),
            (
                s.op,
                &s.table,
                s.commit_lsn,
                s.xid,
                &s.data,
                &s.old,
                &s.key,
                &s.unchanged
            )
        );
        // Including BEGIN: the first Stream Start is sent at the transaction's first LSN,
        // where a Begin would have been.
        assert_eq!((p.lsn, p.end_lsn, p.ts), (s.lsn, s.end_lsn, s.ts), "{p:?}");
    }
    let big: Vec<&Event> = streamed
        .iter()
        .filter(|e| e.op == Op::Insert && e.xid == Some(0x2fe))
        .collect();
    // 400 rows, 400 rolled back to a savepoint (dropped), ALTER TABLE ADD extra, 200 rows.
    assert_eq!(big.len(), 600);
    assert_eq!(
        (
            big[0].data.as_ref().unwrap().len(),
            big[599].data.as_ref().unwrap().len()
        ),
        (7, 8)
    );
    assert!(
        big.iter()
            .all(|e| e.data.as_ref().unwrap().get("status") == Some(&v(TEXT, "new")))
    );
    // The TOASTed note is unchanged in the first UPDATE, and the key change sends the old key.
    let updates: Vec<&Event> = streamed.iter().filter(|e| e.op == Op::Update).collect();
    assert_eq!(updates[0].unchanged, vec![Arc::<str>::from("note")]);
    assert_eq!(updates[1].old, Some(row(&[("id", v(INT8, "1"))])));
    assert_eq!(updates[1].key, Some(row(&[("id", v(INT8, "100"))])));
    // REPLICA IDENTITY FULL: old row on UPDATE, full row on DELETE.
    assert_eq!(updates[2].old.as_ref().map(Row::len), Some(2));
    let deletes: Vec<&Event> = streamed.iter().filter(|e| e.op == Op::Delete).collect();
    assert_eq!(deletes[0].data.as_ref().map(Row::len), Some(2));
    // With REPLICA IDENTITY FULL the server flags every column as key.
    assert_eq!(deletes[0].key, deletes[0].data);
    assert_eq!(names(deletes[1].data.as_ref().unwrap()), ["id"]);
    // Two-phase: g1 committed, g2 rolled back.
    let items: Vec<&Value> = streamed
        .iter()
        .filter_map(|e| e.data.as_ref()?.get("item"))
        .collect();
    assert!(items.contains(&&v(TEXT, "prep")));
    assert!(!items.contains(&&v(TEXT, "prep2")));
    let msgs: Vec<(&str, bool)> = streamed
        .iter()
        .filter_map(|e| e.message.as_ref())
        .map(|m| (m.prefix.as_str(), m.transactional))
        .collect();
    assert_eq!(msgs, [("nontx", false), ("fence", true)]);
    assert_eq!(streamed.iter().filter(|e| e.op == Op::Truncate).count(), 2);
}

// ---------------------------------------------------------------- spilling large transactions

#[test]
fn spilled_streamed_transactions_replay_the_same_events_in_bounded_memory() {
    // One streamed transaction of 20,000 rows in many segments, with a subtransaction rolled
    // back after its rows were spilled; decoded in memory and with a tiny spill threshold.
    let mut msgs = vec![(1, fx::stream_start(100, true)), (2, orders_rel(Some(100)))];
    let mut lsn = 3;
    for i in 0..20_000u32 {
        if i % 1000 == 999 {
            msgs.push((lsn, fx::stream_stop()));
            msgs.push((lsn + 1, fx::stream_start(100, false)));
            lsn += 2;
        }
        // Rows 5,000..6,000 belong to subtransaction 101, rolled back later.
        let xid = if (5_000..6_000).contains(&i) {
            101
        } else {
            100
        };
        msgs.push((lsn, ins(Some(xid), &i.to_string())));
        lsn += 1;
    }
    msgs.push((lsn, fx::stream_stop()));
    msgs.push((lsn + 1, fx::stream_abort(100, 101, None)));
    let commit = (lsn + 2, fx::stream_commit(100, lsn + 2, lsn + 3, TS));

    let mut plain = dec().with_protocol(2);
    assert!(run(&mut plain, &msgs).is_empty());
    let in_memory = plain.buffered_bytes();
    let expected = run(&mut plain, std::slice::from_ref(&commit));

    let threshold = 2 * super::txbuf::CHUNK;
    let mut spilling = dec()
        .with_protocol(2)
        .with_spill(super::txbuf::MemSpill { threshold });
    let mut peak = 0;
    for m in &msgs {
        assert!(run(&mut spilling, std::slice::from_ref(m)).is_empty());
        peak = peak.max(spilling.buffered_bytes());
    }
    assert!(spilling.spilled_bytes() > 0, "nothing was spilled");
    assert!(
        peak <= threshold + super::txbuf::CHUNK && peak < in_memory,
        "memory {peak} B with a {threshold} B threshold ({in_memory} B unspilled)"
    );
    let got = run(&mut spilling, std::slice::from_ref(&commit));
    assert_eq!(got.len(), 19_000 + 2, "BEGIN, 19,000 rows kept, COMMIT");
    assert_eq!(got, expected);
    assert_eq!((spilling.open_streams(), spilling.buffered_bytes()), (0, 0));
    // Reset keeps the policy.
    spilling.reset();
    assert!(spilling.spill.is_some());
}

/// Round trips through the byte builders: any field values, encoded as the protocol docs lay
/// them out, parse back to the same fields, for every message kind.
mod roundtrip {
    use super::fx;
    use super::pgoutput::{ColumnData, Message, OldKind, ParseContext, parse_in};
    use crate::event::{Lsn, Timestamp};
    use proptest::prelude::*;

    const PLAIN: ParseContext = ParseContext {
        in_stream: false,
        abort_info: false,
    };

    /// A name as the server sends it: a C string, so no NUL.
    fn name() -> impl Strategy<Value = String> {
        "[^\u{0}]{0,24}"
    }

    #[derive(Clone, Debug)]
    enum Cell {
        Null,
        Unchanged,
        Text(String),
        Binary(Vec<u8>),
    }

    fn cells() -> impl Strategy<Value = Vec<Cell>> {
        prop::collection::vec(
            prop_oneof![
                Just(Cell::Null),
                Just(Cell::Unchanged),
                "[^\u{0}]{0,40}".prop_map(Cell::Text),
                prop::collection::vec(any::<u8>(), 0..40).prop_map(Cell::Binary),
            ],
            0..12,
        )
    }

    fn encode(cells: &[Cell]) -> Vec<fx::Col<'_>> {
        cells
            .iter()
            .map(|c| match c {
                Cell::Null => fx::N,
                Cell::Unchanged => fx::U,
                Cell::Text(s) => fx::T(s),
                Cell::Binary(b) => fx::B(b),
            })
            .collect()
    }

    fn same(got: impl Iterator<Item = ColumnData<'static>>, want: &[Cell]) -> bool {
        let got: Vec<_> = got.collect();
        got.len() == want.len()
            && got.iter().zip(want).all(|(g, w)| match (g, w) {
                (ColumnData::Null, Cell::Null) => true,
                (ColumnData::UnchangedToast, Cell::Unchanged) => true,
                (ColumnData::Text(t), Cell::Text(s)) => *t == s.as_bytes(),
                (ColumnData::Binary(b), Cell::Binary(v)) => *b == v.as_slice(),
                _ => false,
            })
    }

    /// Parses `bytes` (leaked: parsed messages borrow them, and proptest cases are few).
    fn parse(bytes: Vec<u8>, ctx: ParseContext) -> Message<'static> {
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        parse_in(bytes, ctx).unwrap_or_else(|e| panic!("{e}: {bytes:?}"))
    }

    fn in_stream(x: Option<u32>) -> ParseContext {
        ParseContext {
            in_stream: x.is_some(),
            abort_info: false,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn begin_and_commit(lsn: u64, end: u64, ts: i64, xid: u32) {
            let Message::Begin(b) = parse(fx::begin(lsn, ts, xid), PLAIN) else { panic!() };
            prop_assert_eq!((b.final_lsn, b.commit_ts, b.xid), (Lsn(lsn), Timestamp(ts), xid));
            let Message::Commit(c) = parse(fx::commit(lsn, end, ts), PLAIN) else { panic!() };
            prop_assert_eq!((c.commit_lsn, c.end_lsn, c.commit_ts), (Lsn(lsn), Lsn(end), Timestamp(ts)));
        }

        #[test]
        fn origin_and_type(lsn: u64, oid: u32, x: Option<u32>, a in name(), b in name()) {
            let Message::Origin(o) = parse(fx::origin(lsn, &a), PLAIN) else { panic!() };
            prop_assert_eq!((o.lsn, o.name), (Lsn(lsn), a.as_str()));
            let Message::Type(t) = parse(fx::type_(x, oid, &a, &b), in_stream(x)) else { panic!() };
            prop_assert_eq!((t.xid, t.oid, t.namespace, t.name), (x, oid, a.as_str(), b.as_str()));
        }

        #[test]
        fn relation(
            x: Option<u32>,
            oid: u32,
            ns in name(),
            rel in name(),
            ident in prop::sample::select(vec![b'd', b'n', b'f', b'i']),
            cols in prop::collection::vec((0u8..2, name(), any::<u32>(), any::<i32>()), 0..10),
        ) {
            let defs: Vec<(u8, &str, u32, i32)> =
                cols.iter().map(|(f, n, t, m)| (*f, n.as_str(), *t, *m)).collect();
            let Message::Relation(r) = parse(fx::relation(x, oid, &ns, &rel, ident, &defs), in_stream(x))
            else { panic!() };
            prop_assert_eq!((r.xid, r.oid, r.namespace, r.name, r.replica_identity),
                (x, oid, ns.as_str(), rel.as_str(), ident));
            let got: Vec<(u8, String, u32, i32)> =
                r.columns().map(|c| (c.flags, c.name.to_string(), c.type_oid, c.type_modifier)).collect();
            prop_assert_eq!(got, cols);
        }

        #[test]
        fn insert_update_delete(x: Option<u32>, oid: u32, new in cells(), old in cells(), full: bool) {
            let kind = if full { b'O' } else { b'K' };
            let Message::Insert(i) = parse(fx::insert(x, oid, &encode(&new)), in_stream(x)) else { panic!() };
            prop_assert!(i.xid == x && i.oid == oid && same(i.new.iter(), &new));
            let bytes = fx::update(x, oid, Some((kind, &encode(&old))), &encode(&new));
            let Message::Update(u) = parse(bytes, in_stream(x)) else { panic!() };
            let (k, t) = u.old.unwrap();
            prop_assert!(u.xid == x && u.oid == oid && same(u.new.iter(), &new) && same(t.iter(), &old));
            prop_assert_eq!(k, if full { OldKind::Full } else { OldKind::Key });
            let Message::Delete(d) = parse(fx::delete(x, oid, kind, &encode(&old)), in_stream(x)) else { panic!() };
            prop_assert!(d.xid == x && d.oid == oid && same(d.old.iter(), &old));
        }

        #[test]
        fn truncate_and_message(
            x: Option<u32>,
            options in 0u8..4,
            oids in prop::collection::vec(any::<u32>(), 0..8),
            transactional: bool,
            lsn: u64,
            prefix in name(),
            content in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let Message::Truncate(t) = parse(fx::truncate(x, options, &oids), in_stream(x)) else { panic!() };
            prop_assert_eq!((t.xid, t.options), (x, options));
            prop_assert_eq!(t.relation_ids().collect::<Vec<_>>(), oids);
            let bytes = fx::message(x, transactional, lsn, &prefix, &content);
            let Message::Message(m) = parse(bytes, in_stream(x)) else { panic!() };
            prop_assert_eq!((m.xid, m.transactional, m.lsn, m.prefix, m.content),
                (x, transactional, Lsn(lsn), prefix.as_str(), content.as_slice()));
        }

        #[test]
        fn streaming(xid: u32, sub: u32, first: bool, lsn: u64, end: u64, ts: i64, info: Option<(u64, i64)>) {
            let Message::StreamStart(s) = parse(fx::stream_start(xid, first), PLAIN) else { panic!() };
            prop_assert_eq!((s.xid, s.first_segment), (xid, first));
            prop_assert!(matches!(parse(fx::stream_stop(), PLAIN), Message::StreamStop));
            let Message::StreamCommit(c) = parse(fx::stream_commit(xid, lsn, end, ts), PLAIN) else { panic!() };
            prop_assert_eq!((c.xid, c.commit_lsn, c.end_lsn, c.commit_ts), (xid, Lsn(lsn), Lsn(end), Timestamp(ts)));
            let ctx = ParseContext { in_stream: false, abort_info: info.is_some() };
            let Message::StreamAbort(a) = parse(fx::stream_abort(xid, sub, info), ctx) else { panic!() };
            prop_assert_eq!((a.xid, a.subxid), (xid, sub));
            prop_assert_eq!(a.abort_lsn.zip(a.abort_ts), info.map(|(l, t)| (Lsn(l), Timestamp(t))));
        }

        #[test]
        fn two_phase(xid: u32, lsn: u64, end: u64, ts: i64, ts2: i64, gid in name(), streamed: bool) {
            let Message::BeginPrepare(b) = parse(fx::begin_prepare(lsn, end, ts, xid, &gid), PLAIN) else { panic!() };
            prop_assert_eq!((b.prepare_lsn, b.end_lsn, b.prepare_ts, b.xid, b.gid),
                (Lsn(lsn), Lsn(end), Timestamp(ts), xid, gid.as_str()));
            let tag = if streamed { b'p' } else { b'P' };
            let p = match parse(fx::prepare(tag, lsn, end, ts, xid, &gid), PLAIN) {
                Message::Prepare(p) | Message::StreamPrepare(p) => p,
                _ => panic!(),
            };
            prop_assert_eq!((p.prepare_lsn, p.end_lsn, p.prepare_ts, p.xid, p.gid),
                (Lsn(lsn), Lsn(end), Timestamp(ts), xid, gid.as_str()));
            let Message::CommitPrepared(c) = parse(fx::commit_prepared(lsn, end, ts, xid, &gid), PLAIN) else { panic!() };
            prop_assert_eq!((c.commit_lsn, c.end_lsn, c.commit_ts, c.xid, c.gid),
                (Lsn(lsn), Lsn(end), Timestamp(ts), xid, gid.as_str()));
            let bytes = fx::rollback_prepared(lsn, end, ts, ts2, xid, &gid);
            let Message::RollbackPrepared(r) = parse(bytes, PLAIN) else { panic!() };
            prop_assert_eq!((r.prepare_end_lsn, r.rollback_end_lsn, r.prepare_ts, r.rollback_ts, r.xid, r.gid),
                (Lsn(lsn), Lsn(end), Timestamp(ts), Timestamp(ts2), xid, gid.as_str()));
        }
    }
}
