//! Array text (8.15.6 Array Input and Output Syntax) -> nested [`Value::Array`]s.
//!
//! Output form: `{e1,e2}`, one brace level per dimension (`{{1,2},{3,4}}`), `{}` for an empty
//! array, and a `[lb:ub]...=` dimension decoration in front when a lower bound is not 1
//! (`[0:1]={1,2}`; the bounds are dropped here, JSON arrays start at 0). Elements are separated
//! by the element type's `typdelim` (`,` for all but `box`, which uses `;`). An element is
//! double-quoted when it is empty, is `NULL` in any case, or contains braces, the delimiter,
//! quotes, backslashes or white space; inside quotes `\` escapes the next character. The
//! unquoted word `NULL` (case-insensitive) is a null element; `"NULL"` is the four letters.
//! White space around elements is ignored on input.

use crate::event::Value;

/// PostgreSQL's MAXDIM.
const MAX_DIMS: usize = 6;

/// `None` when `text` is not array output; each element's text goes through `elem`.
pub(super) fn parse(text: &str, delim: u8, elem: &mut dyn FnMut(&str) -> Value) -> Option<Value> {
    let mut p = Parser {
        b: text.as_bytes(),
        text,
        i: 0,
        delim,
        scratch: Vec::new(),
    };
    p.skip_ws();
    if p.peek() == Some(b'[') {
        p.dims()?;
    }
    let items = p.level(elem, 1)?;
    p.skip_ws();
    (p.i == p.b.len()).then_some(Value::Array(items))
}

struct Parser<'a> {
    b: &'a [u8],
    text: &'a str,
    i: usize,
    delim: u8,
    /// Unescaped element bytes, reused across elements.
    scratch: Vec<u8>,
}

/// array_isspace: the white space array_in skips.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c')
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.i += 1;
        }
    }

    /// `-`? digits.
    fn bound(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        (self.i > start).then_some(())
    }

    /// The decoration `[lb:ub][lb:ub]...=`, skipped.
    fn dims(&mut self) -> Option<()> {
        while self.peek() == Some(b'[') {
            self.i += 1;
            self.bound()?;
            if self.peek() == Some(b':') {
                self.i += 1;
                self.bound()?;
            }
            self.eat(b']')?;
        }
        self.skip_ws();
        self.eat(b'=')?;
        self.skip_ws();
        Some(())
    }

    /// One `{...}` level.
    fn level(&mut self, elem: &mut dyn FnMut(&str) -> Value, depth: usize) -> Option<Vec<Value>> {
        self.eat(b'{')?;
        self.skip_ws();
        let mut items = Vec::new();
        if self.eat(b'}').is_some() {
            return Some(items);
        }
        loop {
            self.skip_ws();
            let item = match self.peek()? {
                b'{' if depth < MAX_DIMS => Value::Array(self.level(elem, depth + 1)?),
                b'{' => return None,
                b'"' => self.quoted(elem)?,
                _ => self.unquoted(elem)?,
            };
            items.push(item);
            self.skip_ws();
            match self.peek()? {
                b'}' => {
                    self.i += 1;
                    return Some(items);
                }
                c if c == self.delim => self.i += 1,
                _ => return None,
            }
        }
    }

    /// `"..."` with backslash escapes; never NULL.
    fn quoted(&mut self, elem: &mut dyn FnMut(&str) -> Value) -> Option<Value> {
        self.i += 1;
        let start = self.i;
        // Fast path: no escapes, the element is a slice of the input.
        while let Some(c) = self.peek() {
            match c {
                b'"' => {
                    let s = &self.text[start..self.i];
                    self.i += 1;
                    return Some(elem(s));
                }
                b'\\' => break,
                _ => self.i += 1,
            }
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.b[start..self.i]);
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' => {
                    self.i += 1;
                    self.scratch.push(self.peek()?);
                }
                c => self.scratch.push(c),
            }
            self.i += 1;
        }
        self.i += 1;
        // Only ASCII backslashes were removed from valid UTF-8.
        let s = std::str::from_utf8(&self.scratch).ok()?;
        Some(elem(s))
    }

    /// A bare element up to the delimiter or `}`, trailing white space dropped; `NULL` is null.
    fn unquoted(&mut self, elem: &mut dyn FnMut(&str) -> Value) -> Option<Value> {
        let start = self.i;
        let mut escaped = false;
        // End of the significant text: past the last non-space or escaped character.
        let mut end = start;
        while let Some(c) = self.peek() {
            if c == self.delim || c == b'}' {
                break;
            }
            match c {
                b'{' | b'"' => return None,
                b'\\' => {
                    escaped = true;
                    self.i += 2;
                    if self.i > self.b.len() {
                        return None;
                    }
                    end = self.i;
                }
                c => {
                    self.i += 1;
                    if !is_space(c) {
                        end = self.i;
                    }
                }
            }
        }
        if end == start {
            return None;
        }
        let raw = &self.b[start..end];
        if !escaped {
            if raw.eq_ignore_ascii_case(b"NULL") {
                return Some(Value::Null);
            }
            return Some(elem(&self.text[start..end]));
        }
        self.scratch.clear();
        let mut k = 0;
        while k < raw.len() {
            if raw[k] == b'\\' {
                k += 1;
            }
            self.scratch.push(raw[k]);
            k += 1;
        }
        let s = std::str::from_utf8(&self.scratch).ok()?;
        Some(elem(s))
    }
}
