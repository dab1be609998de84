//! The terminal view: one readable line per change, transactions as rules.
//!
//! ```text
//! ── BEGIN xid 751 · 2026-11-22T03:22:01.123456Z ──
//! INSERT public.orders id=1 item='book' amount=12.50
//! UPDATE public.orders id=1 status: 'new' → 'shipped'
//! ── COMMIT xid 751 · 0/1A2B4F0 ──
//! ```
//!
//! Colour only when asked (the CLI asks when stdout is a terminal). Values are shown as SQL
//! literals: text quoted with `'`, numbers bare, NULL as NULL.

use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};

use super::{Batch, Sink};
use crate::error::{Error, Result};
use crate::event::{Event, Lsn, Op, Row, Value, bytea_hex};

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";

fn op_colour(op: Op) -> &'static str {
    match op {
        Op::Insert => "\x1b[32m",
        Op::Update => "\x1b[33m",
        Op::Delete => "\x1b[31m",
        Op::Truncate => "\x1b[35m",
        Op::Message | Op::Proxy => "\x1b[36m",
        Op::Begin | Op::Commit | Op::Read => DIM,
    }
}

pub struct TerminalSink<W: Write + Send = BufWriter<io::Stdout>> {
    out: W,
    color: bool,
    line: String,
}

impl TerminalSink {
    pub fn stdout(color: bool) -> TerminalSink {
        TerminalSink::new(BufWriter::with_capacity(1 << 16, io::stdout()), color)
    }
}

impl<W: Write + Send> TerminalSink<W> {
    pub fn new(out: W, color: bool) -> TerminalSink<W> {
        TerminalSink {
            out,
            color,
            line: String::with_capacity(256),
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn paint(&mut self, style: &str, text: &str) {
        if self.color {
            self.line.push_str(style);
            self.line.push_str(text);
            self.line.push_str(RESET);
        } else {
            self.line.push_str(text);
        }
    }

    /// Renders one event into `self.line` (without a newline).
    fn render(&mut self, e: &Event) {
        self.line.clear();
        match e.op {
            Op::Begin | Op::Commit => {
                let mut text = format!("── {}", e.op);
                if let Some(xid) = e.xid {
                    let _ = write!(text, " xid {xid}");
                }
                match (e.op, e.ts) {
                    (Op::Begin, Some(ts)) => {
                        let _ = write!(text, " · {ts}");
                    }
                    _ => {
                        let _ = write!(text, " · {}", e.commit_lsn);
                    }
                }
                text.push_str(" ──");
                self.paint(DIM, &text);
            }
            Op::Message => {
                self.paint(op_colour(e.op), "MESSAGE");
                if let Some(m) = &e.message {
                    self.line.push(' ');
                    let prefix = m.prefix.clone();
                    self.paint(BOLD, &prefix);
                    self.line.push(' ');
                    match m.content_str() {
                        Some(s) => push_quoted(&mut self.line, s),
                        None => push_quoted(&mut self.line, &bytea_hex(&m.content)),
                    }
                    if !m.transactional {
                        self.line.push_str(" (non-transactional)");
                    }
                }
            }
            op => {
                self.paint(op_colour(op), op.as_str());
                self.line.push(' ');
                let name = format!("{}.{}", e.schema(), e.table());
                self.paint(BOLD, &name);
                match op {
                    Op::Update => self.render_update(e),
                    Op::Truncate => {}
                    _ => {
                        if let Some(row) = &e.data {
                            push_row(&mut self.line, row, None);
                        }
                    }
                }
            }
        }
    }

    /// The row's label first (its key columns; under REPLICA IDENTITY FULL, where the server
    /// marks every column as key, the first column); then, when the old row is known, only the
    /// columns that changed as `col: old → new`; otherwise every other new value.
    fn render_update(&mut self, e: &Event) {
        let Some(new) = &e.data else { return };
        let key_names: Vec<&str> = match &e.key {
            Some(k) if k.len() < new.len() => k.columns.iter().map(|c| &*c.name).collect(),
            _ => new.columns.first().map(|c| &*c.name).into_iter().collect(),
        };
        for c in &new.columns {
            if key_names.contains(&&*c.name) {
                let before = e.old.as_ref().and_then(|o| o.get(&c.name));
                match before {
                    Some(b) if b != &c.value => {
                        let _ = write!(self.line, " {}: ", c.name);
                        push_value(&mut self.line, b);
                        self.line.push_str(" → ");
                        push_value(&mut self.line, &c.value);
                    }
                    _ => {
                        let _ = write!(self.line, " {}=", c.name);
                        push_value(&mut self.line, &c.value);
                    }
                }
            }
        }
        let full_old = e.old.as_ref().filter(|o| o.len() >= new.len());
        for c in &new.columns {
            if key_names.contains(&&*c.name) {
                continue;
            }
            match full_old.map(|o| o.get(&c.name)) {
                Some(Some(before)) if before == &c.value => {}
                Some(Some(before)) => {
                    let _ = write!(self.line, " {}: ", c.name);
                    push_value(&mut self.line, before);
                    self.line.push_str(" → ");
                    push_value(&mut self.line, &c.value);
                }
                _ => {
                    let _ = write!(self.line, " {}=", c.name);
                    push_value(&mut self.line, &c.value);
                }
            }
        }
        for name in &e.unchanged {
            let _ = write!(self.line, " {name}=‹unchanged›");
        }
    }
}

/// ` col=value` for each column, skipping the names in `skip`.
fn push_row(line: &mut String, row: &Row, skip: Option<&[&str]>) {
    for c in &row.columns {
        if skip.is_some_and(|s| s.contains(&&*c.name)) {
            continue;
        }
        line.push(' ');
        line.push_str(&c.name);
        line.push('=');
        push_value(line, &c.value);
    }
}

fn push_quoted(line: &mut String, s: &str) {
    line.push('\'');
    for ch in s.chars() {
        match ch {
            '\'' => line.push_str("''"),
            '\n' => line.push_str("\\n"),
            '\r' => line.push_str("\\r"),
            '\t' => line.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(line, "\\u{{{:x}}}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('\'');
}

fn push_value(line: &mut String, v: &Value) {
    match v {
        Value::Null => line.push_str("NULL"),
        Value::Bool(b) => line.push_str(if *b { "true" } else { "false" }),
        Value::Int(i) => {
            let _ = write!(line, "{i}");
        }
        Value::Float(f) => {
            let _ = write!(line, "{f}");
        }
        Value::Numeric(n) => line.push_str(n),
        Value::Json(j) => line.push_str(j.get()),
        Value::Bytea(b) => push_quoted(line, &bytea_hex(b)),
        Value::Array(items) => {
            line.push('{');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    line.push(',');
                }
                push_value(line, item);
            }
            line.push('}');
        }
        other => push_quoted(line, other.as_str().unwrap_or_default()),
    }
}

impl<W: Write + Send> TerminalSink<W> {
    fn put(&mut self, event: &Event) -> Result<()> {
        self.render(event);
        self.line.push('\n');
        self.out
            .write_all(self.line.as_bytes())
            .map_err(|source| Error::Sink {
                target: "standard output".into(),
                source,
            })
    }
}

impl<W: Write + Send> Sink for TerminalSink<W> {
    fn write(&mut self, batch: &Batch) -> Result<()> {
        batch.events.iter().try_for_each(|e| self.put(e))
    }

    /// Shown is delivered: a terminal acknowledges once its output is flushed.
    fn acknowledge(&mut self, written: Lsn) -> Result<Lsn> {
        self.out.flush().map_err(|source| Error::Sink {
            target: "standard output".into(),
            source,
        })?;
        Ok(written)
    }

    fn describe(&self) -> String {
        "standard output".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Column, Lsn, Timestamp};
    use std::sync::Arc;

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

    fn render(e: &Event) -> String {
        let mut sink = TerminalSink::new(Vec::new(), false);
        sink.put(e).unwrap();
        String::from_utf8(sink.into_inner()).unwrap()
    }

    fn change(op: Op) -> Event {
        let mut e = Event::new(op, Lsn(0x10));
        e.schema = Some(Arc::from("public"));
        e.table = Some(Arc::from("orders"));
        e
    }

    #[test]
    fn insert_is_one_line_of_sql_literals() {
        let mut e = change(Op::Insert);
        e.data = Some(row(&[
            ("id", Value::Int(1)),
            ("item", Value::Text("it's".into())),
            ("amount", Value::Numeric("12.50".into())),
            ("note", Value::Null),
        ]));
        assert_eq!(
            render(&e),
            "INSERT public.orders id=1 item='it''s' amount=12.50 note=NULL\n"
        );
    }

    #[test]
    fn a_snapshot_row_reads_like_an_insert_under_its_own_op() {
        let mut e = change(Op::Read);
        e.data = Some(row(&[
            ("id", Value::Int(1)),
            ("item", Value::Text("book".into())),
        ]));
        assert_eq!(render(&e), "READ public.orders id=1 item='book'\n");
    }

    #[test]
    fn update_with_old_row_shows_only_changes() {
        let mut e = change(Op::Update);
        e.key = Some(row(&[("id", Value::Int(1))]));
        e.old = Some(row(&[
            ("id", Value::Int(1)),
            ("status", Value::Text("new".into())),
            ("item", Value::Text("book".into())),
        ]));
        e.data = Some(row(&[
            ("id", Value::Int(1)),
            ("status", Value::Text("shipped".into())),
            ("item", Value::Text("book".into())),
        ]));
        assert_eq!(
            render(&e),
            "UPDATE public.orders id=1 status: 'new' → 'shipped'\n"
        );
    }

    #[test]
    fn update_under_replica_identity_full_is_labelled_by_its_first_column() {
        let full = |status: &str| {
            row(&[
                ("id", Value::Int(1)),
                ("status", Value::Text(status.into())),
                ("item", Value::Text("book".into())),
            ])
        };
        let mut e = change(Op::Update);
        e.key = Some(full("shipped"));
        e.old = Some(full("new"));
        e.data = Some(full("shipped"));
        assert_eq!(
            render(&e),
            "UPDATE public.orders id=1 status: 'new' → 'shipped'\n"
        );
    }

    #[test]
    fn a_key_change_shows_old_and_new_key() {
        let mut e = change(Op::Update);
        e.key = Some(row(&[("id", Value::Int(2))]));
        e.old = Some(row(&[("id", Value::Int(1))]));
        e.data = Some(row(&[
            ("id", Value::Int(2)),
            ("status", Value::Text("x".into())),
        ]));
        assert_eq!(render(&e), "UPDATE public.orders id: 1 → 2 status='x'\n");
    }

    #[test]
    fn update_without_old_row_shows_new_values_and_unchanged_toast() {
        let mut e = change(Op::Update);
        e.key = Some(row(&[("id", Value::Int(1))]));
        e.data = Some(row(&[
            ("id", Value::Int(1)),
            ("status", Value::Text("shipped".into())),
        ]));
        e.unchanged = vec![Arc::from("body")];
        assert_eq!(
            render(&e),
            "UPDATE public.orders id=1 status='shipped' body=‹unchanged›\n"
        );
    }

    #[test]
    fn transactions_are_rules() {
        let mut b = Event::new(Op::Begin, Lsn(1));
        b.xid = Some(751);
        b.ts = Some(Timestamp(0));
        assert_eq!(
            render(&b),
            "── BEGIN xid 751 · 2000-01-01T00:00:00.000000Z ──\n"
        );
        let mut c = Event::new(Op::Commit, Lsn(1));
        c.xid = Some(751);
        c.commit_lsn = Lsn(0x1A2B4F0);
        assert_eq!(render(&c), "── COMMIT xid 751 · 0/1A2B4F0 ──\n");
    }

    #[test]
    fn colour_only_when_asked() {
        let e = change(Op::Delete);
        let mut sink = TerminalSink::new(Vec::new(), true);
        sink.put(&e).unwrap();
        let out = String::from_utf8(sink.into_inner()).unwrap();
        assert!(out.starts_with("\x1b[31mDELETE\x1b[0m"), "{out:?}");
        assert!(!render(&e).contains('\x1b'));
    }
}
