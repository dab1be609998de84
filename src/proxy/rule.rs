//! Fault rules: which statements the proxy fails, holds or drops, and when.
//!
//! A fault test needs to say "the first INSERT into orders fails with disk full" in one line
//! of a shell script, in a file checked in beside the test, and over HTTP while the proxy runs
//! — so there is one rule, [`RuleSpec`], with a string form (`--fault`, see
//! [`RuleSpec::from_str`]) and an object form (JSON/TOML files, the control API) that map
//! onto each other field for field.
//!
//! A rule's `QUERY` is a glob matched against the whole statement once its leading whitespace
//! and comments are stripped ([`strip_leading`]: ORMs and drivers like to prefix statements
//! with `/* trace id */`), ASCII case-insensitively, because harnesses write `INSERT*` and
//! drivers send `insert into`.
//!
//! Counting is per rule across every connection: match n fires when n > `after`, fewer than
//! `times` have fired, and the rule's own seeded draw passes `probability`. Each rule draws
//! from its own generator seeded by the proxy's seed and the rule's id, so a failing run can
//! be replayed: the same seed and the same statements give the same decisions, whatever other
//! rules do.
//!
//! [`RuleSet::decide`] runs for every statement the proxy relays, so a rule that does not
//! match must cost next to nothing: globs are compiled once, reject on their literal prefix
//! and suffix before matching, and match without recursion or allocation.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The grammar of the string form, for error messages.
const FORM: &str = "expected error:QUERY:MESSAGE, delay:QUERY:DURATION or drop:QUERY, with \
                    options ;sqlstate=, ;times=, ;after=, ;probability=, ;database=, ;user=, \
                    ;application_name= (a ':' or ';' in QUERY is written \\: or \\;)";

/// The SQLSTATE of an error rule that names none: `internal_error`.
const DEFAULT_SQLSTATE: &str = "XX000";

/// What a rule does to a matching statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// The statement fails with this message and SQLSTATE instead of running.
    Error { message: String, sqlstate: String },
    /// The statement is held this long, then relayed.
    Delay(Duration),
    /// The client's connection is closed instead of relaying the statement.
    Drop,
}

impl Action {
    /// `error`, `delay` or `drop`: the action as the user writes it.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Error { .. } => "error",
            Action::Delay(_) => "delay",
            Action::Drop => "drop",
        }
    }
}

/// One rule as written by the user: the object form of rules files and of the control API's
/// body. [`RuleSpec::compile`] checks it; the string form is [`RuleSpec::from_str`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// `error`, `delay` or `drop`.
    pub action: String,
    /// The glob matched against the statement: `*` any run, `?` one character, `\*`, `\?`,
    /// `\\` themselves; ASCII case-insensitive. Its leading whitespace is ignored, as the
    /// statement's is.
    pub query: String,
    /// The error's message (error rules, required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The error's SQLSTATE: five digits or capital letters (error rules; default XX000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// How long to hold the statement: `250ms`, `3s`, `1.5s`, `2m` (delay rules, required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    /// Act on at most this many matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    /// Let the first this many matches pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// Act on a match with this probability, 0 to 1 (drawn from the proxy's seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    /// Only for clients connected to this database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Only for clients connected as this user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Only for clients with this `application_name` (`""`: clients that set none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
}

/// A rule, or a file of rules, that cannot be used: each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The rule itself is wrong (bad action, empty glob, missing message, bad option...).
    #[error("fault rule `{rule}`: {message}")]
    Invalid { rule: String, message: String },
    /// The rules file cannot be read.
    #[error("cannot read rules file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The rules file is not valid JSON/TOML, not shaped as rules, or holds a wrong rule.
    #[error("rules file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

fn invalid(rule: &str, message: String) -> RuleError {
    RuleError::Invalid {
        rule: rule.to_string(),
        message,
    }
}

impl FromStr for RuleSpec {
    type Err = RuleError;

    /// Parses the `--fault` form: `ACTION:QUERY[:ARG][;key=value...]`.
    ///
    /// * `error:QUERY:MESSAGE` — the message is everything after the second `:` up to the
    ///   first unescaped `;`, so it may hold `:` itself (`error:INSERT*:disk full: sorry`).
    /// * `delay:QUERY:DURATION` — `250ms`, `3s`, `1.5s`, `2m`.
    /// * `drop:QUERY`.
    ///
    /// Options follow, each after a `;`: `sqlstate=53100` (error only), `times=N`,
    /// `after=N`, `probability=P`, `database=NAME`, `user=NAME`, `application_name=NAME`;
    /// each at most once. `\:` and `\;` are a literal `:` and `;` anywhere (a `::` cast in
    /// QUERY is written `\:\:`); in QUERY every other `\x` is kept for the glob (`\*` is a
    /// literal star), elsewhere `\\` is a backslash.
    ///
    /// The rule is validated as [`RuleSpec::compile`] does.
    fn from_str(text: &str) -> Result<RuleSpec, RuleError> {
        let spec = parse_spec(text).map_err(|m| invalid(text, m))?;
        spec.build().map_err(|m| invalid(text, m))?;
        Ok(spec)
    }
}

/// The string form into a spec, checking the grammar; [`RuleSpec::build`] checks the rest.
fn parse_spec(text: &str) -> Result<RuleSpec, String> {
    let mut sections = split_unescaped(text, b';');
    let head = sections.next().unwrap_or_default();
    let Some((action, rest)) = split_once_unescaped(head, b':') else {
        return Err(if head.trim().is_empty() {
            format!("the rule is empty: {FORM}")
        } else {
            format!("`{}` has no query: {FORM}", head.trim())
        });
    };
    let action = action.trim();
    let (query, arg) = match split_once_unescaped(rest, b':') {
        Some((query, arg)) => (query, Some(arg)),
        None => (rest, None),
    };
    let mut spec = RuleSpec::blank(action, unescape(query, true));
    let cast_hint = "if the query holds a `::` cast, write it \\:\\:";
    match (action, arg) {
        ("error", Some(arg)) if arg.starts_with(':') => {
            return Err(format!(
                "the message starts with ':': {cast_hint}; a message that starts with ':' \
                 is written \\:"
            ));
        }
        ("error", arg) => spec.message = arg.map(|a| unescape(a, false)),
        ("delay", Some(arg)) if arg.contains(':') && parse_duration(arg).is_err() => {
            return Err(format!("`{arg}` is not a duration: {cast_hint}"));
        }
        ("delay", arg) => spec.delay = arg.map(|a| unescape(a, false)),
        ("drop", Some(_)) => {
            return Err(format!(
                "a drop rule takes no argument: drop:QUERY[;option=value...]; {cast_hint}"
            ));
        }
        ("drop", None) => {}
        (other, _) => return Err(format!("unknown action `{other}`: {FORM}")),
    }
    for section in sections.filter(|s| !s.trim().is_empty()) {
        set_option(&mut spec, section)?;
    }
    Ok(spec)
}

/// One `key=value` section of the string form.
fn set_option(spec: &mut RuleSpec, section: &str) -> Result<(), String> {
    let Some((key, raw)) = section.split_once('=') else {
        return Err(format!(
            "option `{}` is not key=value: {FORM}",
            section.trim()
        ));
    };
    let key = key.trim();
    let value = unescape(raw, false);
    let whole = |v: &str| {
        v.trim()
            .parse::<u64>()
            .map_err(|_| format!("{key}={v}: expected a whole number such as 3"))
    };
    let given_before = match key {
        "sqlstate" => spec.sqlstate.replace(value).is_some(),
        "times" => spec.times.replace(whole(&value)?).is_some(),
        "after" => spec.after.replace(whole(&value)?).is_some(),
        "probability" => {
            let p = value
                .trim()
                .parse::<f64>()
                .map_err(|_| probability_error(&value))?;
            spec.probability.replace(p).is_some()
        }
        "database" => spec.database.replace(value).is_some(),
        "user" => spec.user.replace(value).is_some(),
        "application_name" => spec.application_name.replace(value).is_some(),
        "message" | "delay" => {
            return Err(format!(
                "`{key}` is not an option: it is the third part of the rule, {FORM}"
            ));
        }
        other => return Err(format!("unknown option `{other}`: {FORM}")),
    };
    if given_before {
        return Err(format!(
            "option `{key}` is given twice: give each option once"
        ));
    }
    Ok(())
}

fn probability_error(value: &str) -> String {
    format!("probability={value}: expected a number from 0 to 1, such as 0.5")
}

/// Splits at each `sep` that is not escaped by a backslash; escapes are kept.
fn split_unescaped(s: &str, sep: u8) -> impl Iterator<Item = &str> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let r = rest?;
        match find_unescaped(r, sep) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

fn split_once_unescaped(s: &str, sep: u8) -> Option<(&str, &str)> {
    find_unescaped(s, sep).map(|i| (&s[..i], &s[i + 1..]))
}

/// The first `sep` not preceded by an escaping backslash. `sep` is ASCII, so the index is a
/// char boundary.
fn find_unescaped(s: &str, sep: u8) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == sep => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// `\:` and `\;` become `:` and `;`. For a glob every other escape is kept (it is the glob's);
/// for a value `\\` becomes `\` and other escapes are kept as written (`C:\temp`).
fn unescape(raw: &str, glob: bool) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(n @ (':' | ';')) => out.push(n),
            Some('\\') if !glob => out.push('\\'),
            Some(n) => {
                out.push('\\');
                out.push(n);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The glob for the string form: `:` and `;` escaped, the glob's own escapes kept. A glob
/// escape of `:` or `;` (`\:`, the same glob as `:`) is written `\:`, and a trailing lone `\`
/// (a literal backslash) `\\`: both read back as the same glob.
fn escape_glob(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 4);
    let mut chars = glob.chars();
    while let Some(c) = chars.next() {
        match c {
            ':' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '\\' => match chars.next() {
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push_str("\\\\"),
            },
            c => out.push(c),
        }
    }
    out
}

/// A value for the string form: `\` and `;` escaped, and a leading `:` (which would read as
/// a `::` cast in the query).
fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    if value.starts_with(':') {
        out.push('\\');
    }
    for c in value.chars() {
        if c == '\\' || c == ';' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RuleSpec {
    /// A rule with only its action and glob.
    pub(crate) fn blank(action: &str, query: String) -> RuleSpec {
        RuleSpec {
            action: action.to_string(),
            query,
            message: None,
            sqlstate: None,
            delay: None,
            times: None,
            after: None,
            probability: None,
            database: None,
            user: None,
            application_name: None,
        }
    }

    /// Checks the rule and compiles it for matching.
    pub fn compile(&self) -> Result<Rule, RuleError> {
        self.build()
            .map_err(|message| invalid(&self.to_spec_string(), message))
    }

    /// [`RuleSpec::compile`] with the message alone, for the caller to say which rule.
    fn build(&self) -> Result<Rule, String> {
        let action = self.build_action()?;
        // The statement's leading whitespace is stripped, so the glob's would never match.
        let pattern = self.query.trim_ascii_start();
        if pattern.is_empty() {
            return Err(format!("the query glob is empty: {FORM}"));
        }
        if let Some(p) = self.probability
            && !(0.0..=1.0).contains(&p)
        {
            return Err(probability_error(&p.to_string()));
        }
        if self.times == Some(0) {
            return Err("times=0 would never act: leave times out to act on every match".into());
        }
        for (key, value) in [("database", &self.database), ("user", &self.user)] {
            if value.as_deref() == Some("") {
                return Err(format!("{key}= is empty: name the {key}, or leave it out"));
            }
        }
        Ok(Rule {
            action,
            glob: Glob::new(pattern),
            spec: self.clone(),
            text: Arc::from(self.to_spec_string()),
        })
    }

    fn build_action(&self) -> Result<Action, String> {
        let none = |key: &str, value: &Option<String>, only: &str| match value {
            Some(_) => Err(format!(
                "{key} does not apply to {} rules, only to {only} rules",
                self.action
            )),
            None => Ok(()),
        };
        match self.action.as_str() {
            "error" => {
                none("delay", &self.delay, "delay")?;
                let message = match self.message.as_deref() {
                    None | Some("") => {
                        return Err("an error rule needs a message: error:QUERY:MESSAGE".into());
                    }
                    Some(m) if m.contains('\0') => {
                        return Err("the message holds a NUL character: remove it".into());
                    }
                    Some(m) => m.to_string(),
                };
                let sqlstate = self.sqlstate.as_deref().unwrap_or(DEFAULT_SQLSTATE);
                check_sqlstate(sqlstate)?;
                Ok(Action::Error {
                    message,
                    sqlstate: sqlstate.to_string(),
                })
            }
            "delay" => {
                none("message", &self.message, "error")?;
                none("sqlstate", &self.sqlstate, "error")?;
                let text = self
                    .delay
                    .as_deref()
                    .ok_or("a delay rule needs a duration: delay:QUERY:DURATION such as 3s")?;
                Ok(Action::Delay(parse_duration(text)?))
            }
            "drop" => {
                none("message", &self.message, "error")?;
                none("sqlstate", &self.sqlstate, "error")?;
                none("delay", &self.delay, "delay")?;
                Ok(Action::Drop)
            }
            other => Err(format!("unknown action `{other}`: {FORM}")),
        }
    }

    /// The string form, canonical: options in a fixed order, `:` `;` `\` escaped where
    /// needed. It parses back to the same rule.
    pub fn to_spec_string(&self) -> String {
        let mut s = format!("{}:{}", self.action, escape_glob(&self.query));
        // The action's own argument is the third part; one that does not apply (an invalid
        // rule, shown in its error) is written as an option so the message can point at it.
        let (arg, stray_message, stray_delay) = match self.action.as_str() {
            "error" => (&self.message, &None, &self.delay),
            "delay" => (&self.delay, &self.message, &None),
            _ => (&None, &self.message, &self.delay),
        };
        if let Some(arg) = arg {
            s.push(':');
            s.push_str(&escape_value(arg));
        }
        let number = |n: Option<u64>| n.map(|n| n.to_string());
        let options = [
            ("message", stray_message.clone()),
            ("delay", stray_delay.clone()),
            ("sqlstate", self.sqlstate.clone()),
            ("times", number(self.times)),
            ("after", number(self.after)),
            ("probability", self.probability.map(|p| p.to_string())),
            ("database", self.database.clone()),
            ("user", self.user.clone()),
            ("application_name", self.application_name.clone()),
        ];
        for (key, value) in options {
            if let Some(value) = value {
                s.push(';');
                s.push_str(key);
                s.push('=');
                s.push_str(&escape_value(&value));
            }
        }
        s
    }
}

fn check_sqlstate(code: &str) -> Result<(), String> {
    let shaped = code.len() == 5
        && code
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    if !shaped || code == "00000" {
        return Err(format!(
            "sqlstate={code}: expected five digits or capital letters such as 53100 \
             (disk_full) or 40001 (serialization_failure), and not 00000 (success)"
        ));
    }
    Ok(())
}

/// `250ms`, `3s`, `1.5s`, `2m` (also `us`, `min`, `h`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "`{text}` is not a duration: expected a number and a unit, such as 250ms, 3s, \
             1.5s or 2m"
        )
    };
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit.trim() {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("`{text}` is too long a delay"))
}

/// A checked rule, compiled for matching.
#[derive(Debug)]
pub struct Rule {
    action: Action,
    glob: Glob,
    spec: RuleSpec,
    /// The canonical string form, shared with every event the rule causes.
    text: Arc<str>,
}

impl Rule {
    /// What the rule does.
    pub fn action(&self) -> &Action {
        &self.action
    }

    /// The rule as written (validated).
    pub fn spec(&self) -> &RuleSpec {
        &self.spec
    }

    /// Whether `statement` (leading comments included) from `client` is one the rule is for,
    /// whatever its counts.
    pub fn matches(&self, statement: &str, client: &ClientInfo) -> bool {
        self.matches_stripped(strip_leading(statement), client)
    }

    fn matches_stripped(&self, text: &str, client: &ClientInfo) -> bool {
        let scope = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        scope(&self.spec.database, client.database)
            && scope(&self.spec.user, client.user)
            && scope(&self.spec.application_name, client.application_name)
            && self.glob.matches(text)
    }
}

/// Reads rules from a file: `.toml` holds `[[fault]]` tables, anything else is JSON, either an
/// array of rules or `{"faults": [...]}`. Every rule is checked; errors name the file and,
/// for a bad rule, which one.
pub fn load_file(path: &Path) -> Result<Vec<RuleSpec>, RuleError> {
    let text = std::fs::read_to_string(path).map_err(|source| RuleError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file_error = |message: String| RuleError::File {
        path: path.to_path_buf(),
        message,
    };
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let specs = if is_toml {
        toml_rules(&text)
    } else {
        json_rules(&text)
    }
    .map_err(file_error)?;
    for (i, spec) in specs.iter().enumerate() {
        spec.compile()
            .map_err(|e| file_error(format!("fault {}: {e}", i + 1)))?;
    }
    Ok(specs)
}

fn toml_rules(text: &str) -> Result<Vec<RuleSpec>, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        fault: Vec<RuleSpec>,
    }
    toml::from_str::<File>(text).map(|f| f.fault).map_err(|e| {
        let e = e.to_string();
        format!(
            "{}\nexpected [[fault]] tables with action, query and options",
            e.trim_end()
        )
    })
}

fn json_rules(text: &str) -> Result<Vec<RuleSpec>, String> {
    let shape = "expected a JSON array of rules, or {\"faults\": [...]}";
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}; {shape}"))?;
    let items = match value {
        serde_json::Value::Array(items) => items,
        serde_json::Value::Object(mut map) => match (map.remove("faults"), map.keys().next()) {
            (_, Some(other)) => return Err(format!("unknown key `{other}`: {shape}")),
            (Some(serde_json::Value::Array(items)), None) => items,
            _ => return Err(format!("`faults` is not an array: {shape}")),
        },
        _ => return Err(shape.to_string()),
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            serde_json::from_value::<RuleSpec>(item).map_err(|e| {
                format!(
                    "fault {}: {e} (a rule has action, query and its options)",
                    i + 1
                )
            })
        })
        .collect()
}

/// The statement with its leading whitespace and comments stripped: any mix of `-- ...`
/// line comments and `/* ... */` block comments, which nest as in PostgreSQL. An
/// unterminated block comment is left in place with what follows it.
pub fn strip_leading(statement: &str) -> &str {
    let mut s = statement;
    loop {
        s = s.trim_ascii_start();
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map_or("", |i| &rest[i + 1..]);
        } else if s.starts_with("/*") {
            match block_comment_len(s.as_bytes()) {
                Some(n) => s = &s[n..],
                None => return s,
            }
        } else {
            return s;
        }
    }
}

/// The length of the (nesting) block comment `b` starts with, `None` if it never ends.
fn block_comment_len(b: &[u8]) -> Option<usize> {
    let (mut depth, mut i) = (0usize, 0usize);
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tok {
    /// This byte (ASCII lowercased).
    Lit(u8),
    /// `?`: one character.
    One,
    /// `*`: any run of characters.
    Star,
}

/// A compiled glob over UTF-8 bytes, ASCII case-insensitive.
#[derive(Debug)]
struct Glob {
    toks: Box<[Tok]>,
    /// The literal bytes before the first wildcard: checked first, the usual reject.
    prefix: Box<[u8]>,
    /// The literal bytes after the last wildcard (none without one): the text must end so.
    suffix: Box<[u8]>,
    /// No text shorter than this can match (`?` is at least a byte).
    min_len: usize,
}

impl Glob {
    fn new(pattern: &str) -> Glob {
        let mut toks = Vec::with_capacity(pattern.len());
        let mut bytes = pattern.bytes();
        while let Some(b) = bytes.next() {
            let tok = match b {
                b'\\' => Tok::Lit(bytes.next().unwrap_or(b'\\').to_ascii_lowercase()),
                b'*' => Tok::Star,
                b'?' => Tok::One,
                b => Tok::Lit(b.to_ascii_lowercase()),
            };
            // `**` is `*`, and one star is cheaper to backtrack to.
            if !(tok == Tok::Star && toks.last() == Some(&Tok::Star)) {
                toks.push(tok);
            }
        }
        let literal = |t: &Tok| match t {
            Tok::Lit(b) => Some(*b),
            _ => None,
        };
        let prefix = toks.iter().map_while(literal).collect();
        let suffix = match toks.iter().rposition(|t| literal(t).is_none()) {
            Some(last) => toks[last + 1..].iter().filter_map(literal).collect(),
            None => Box::default(),
        };
        let min_len = toks.iter().filter(|t| **t != Tok::Star).count();
        Glob {
            toks: toks.into_boxed_slice(),
            prefix,
            suffix,
            min_len,
        }
    }

    fn matches(&self, text: &str) -> bool {
        let t = text.as_bytes();
        if t.len() < self.min_len
            || !t[..self.prefix.len()].eq_ignore_ascii_case(&self.prefix)
            || !t[t.len() - self.suffix.len()..].eq_ignore_ascii_case(&self.suffix)
        {
            return false;
        }
        // Each literal token is one byte, so the prefix's tokens end where its bytes do.
        self.matches_from(t, self.prefix.len())
    }

    /// Greedy matching from `start` (in both text and tokens), backtracking only to the last
    /// star: a later star can absorb whatever an earlier one would have, so earlier ones
    /// never need revisiting. A star followed by a literal skips straight to where that
    /// literal occurs next. O(text × pattern) at worst, no recursion, no allocation.
    fn matches_from(&self, t: &[u8], start: usize) -> bool {
        let p = &self.toks;
        let (mut ti, mut pi) = (start, start);
        // (the token after the last star, where the text that star absorbs currently ends)
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(Tok::Star) if pi + 1 == p.len() => return true,
                Some(Tok::Star) => {
                    pi += 1;
                    let Some(at) = self.skip_to(pi, t, ti) else {
                        return false;
                    };
                    ti = at;
                    star = Some((pi, ti));
                    continue;
                }
                Some(Tok::One) => {
                    ti += char_len(t[ti]);
                    pi += 1;
                    continue;
                }
                Some(Tok::Lit(c)) if t[ti].to_ascii_lowercase() == *c => {
                    ti += 1;
                    pi += 1;
                    continue;
                }
                _ => {}
            }
            let Some((after_star, absorbed)) = star else {
                return false;
            };
            // The star absorbs one more character and the rest is tried again.
            let Some(next) = self.skip_to(after_star, t, absorbed + char_len(t[absorbed])) else {
                return false;
            };
            star = Some((after_star, next));
            (pi, ti) = (after_star, next);
        }
        p[pi.min(p.len())..].iter().all(|t| *t == Tok::Star)
    }

    /// Where, from `from`, the text can next match token `pi` (which follows a star): at the
    /// next occurrence of a literal, or right away; `None` if the literal never occurs again,
    /// when nothing after the star can match. A literal is ASCII or starts a UTF-8 sequence,
    /// so the position is a character boundary.
    fn skip_to(&self, pi: usize, t: &[u8], from: usize) -> Option<usize> {
        let Some(Tok::Lit(c)) = self.toks.get(pi) else {
            return Some(from);
        };
        let rest = t.get(from..)?;
        let found = if c.is_ascii_lowercase() {
            // `c` or its capital: the two bytes that differ from `c` by at most 0x20.
            rest.iter().position(|b| (b | 0x20) == *c)
        } else {
            rest.iter().position(|b| b == c)
        };
        found.map(|i| from + i)
    }
}

/// The length of the UTF-8 sequence `first` starts.
fn char_len(first: u8) -> usize {
    match first {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

/// Who is connected: scopes rules with database=/user=/application_name=.
#[derive(Clone, Copy, Debug)]
pub struct ClientInfo<'a> {
    /// The database the client connected to.
    pub database: &'a str,
    /// The user it connected as.
    pub user: &'a str,
    /// Its current `application_name` (`""` when it set none).
    pub application_name: &'a str,
}

/// One rule of a [`RuleSet`], as listed (`GET /faults`, `walwatch fault ls`).
#[derive(Clone, Debug, Serialize)]
pub struct RuleView {
    /// Its id, for removing it.
    pub id: u64,
    /// The rule as added.
    pub spec: RuleSpec,
    /// The rule in its string form.
    pub rule: String,
    /// How many statements it matched (glob and scope), fired or not.
    pub matched: u64,
    /// How many it acted on.
    pub fired: u64,
}

/// A rule that acts on a statement.
#[derive(Clone, Debug)]
pub struct Fired {
    /// The rule's id in its [`RuleSet`].
    pub rule_id: u64,
    /// The rule's string form, for events.
    pub rule: Arc<str>,
    /// What to do.
    pub action: Action,
}

/// What to do with one statement: [`RuleSet::decide`].
#[derive(Debug, Default)]
pub struct Decision {
    /// Delays to apply in order before the statement runs (every matching delay rule that
    /// fires).
    pub delays: Vec<Fired>,
    /// The first matching error or drop rule that fires, if any (rules in the order added).
    pub terminal: Option<Fired>,
}

impl Decision {
    /// Whether the statement is relayed at once and unchanged.
    pub fn is_pass(&self) -> bool {
        self.delays.is_empty() && self.terminal.is_none()
    }
}

/// A rule in a set, with its counts.
struct Live {
    id: u64,
    rule: Rule,
    counts: Mutex<Counts>,
}

struct Counts {
    matched: u64,
    fired: u64,
    /// This rule's own draws, so another rule's matches never shift its decisions.
    rng: fastrand::Rng,
}

struct Rules {
    /// In the order added.
    live: Vec<Live>,
    /// The last id given out.
    last_id: u64,
}

/// The live rules, shared by every connection task (which call [`RuleSet::decide`]
/// concurrently) and the control API (which adds and removes).
pub struct RuleSet {
    seed: u64,
    rules: RwLock<Rules>,
}

impl RuleSet {
    /// An empty set; `seed` seeds every rule's `probability` draws.
    pub fn new(seed: u64) -> RuleSet {
        RuleSet {
            seed,
            rules: RwLock::new(Rules {
                live: Vec::new(),
                last_id: 0,
            }),
        }
    }

    // A panic elsewhere while a lock was held leaves the rules consistent (every update is
    // a single push or retain), so a poisoned lock is used as it is.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Rules> {
        self.rules.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Rules> {
        self.rules.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks and adds a rule; returns its id (1, 2, 3, ..., never reused).
    pub fn add(&self, spec: RuleSpec) -> Result<u64, RuleError> {
        let rule = spec.compile()?;
        let mut rules = self.write();
        rules.last_id += 1;
        let id = rules.last_id;
        let rng = fastrand::Rng::with_seed(self.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rules.live.push(Live {
            id,
            rule,
            counts: Mutex::new(Counts {
                matched: 0,
                fired: 0,
                rng,
            }),
        });
        Ok(id)
    }

    /// Removes rule `id`; false if there is none.
    pub fn remove(&self, id: u64) -> bool {
        let mut rules = self.write();
        let before = rules.live.len();
        rules.live.retain(|r| r.id != id);
        rules.live.len() != before
    }

    /// Removes every rule; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut rules = self.write();
        let n = rules.live.len();
        rules.live.clear();
        n
    }

    /// The rules with their counts, in the order added.
    pub fn list(&self) -> Vec<RuleView> {
        self.read()
            .live
            .iter()
            .map(|live| {
                let counts = live.counts();
                RuleView {
                    id: live.id,
                    spec: live.rule.spec.clone(),
                    rule: live.rule.text.to_string(),
                    matched: counts.matched,
                    fired: counts.fired,
                }
            })
            .collect()
    }

    /// Whether there are no rules (then every statement passes).
    pub fn is_empty(&self) -> bool {
        self.read().live.is_empty()
    }

    /// What to do with a statement about to run. Counts the match for every rule whose glob
    /// and scope match. A terminal (error or drop) rule that matches after another has
    /// fired for this statement counts the match but neither draws nor fires: it does not
    /// act, so it must not use up its `times`.
    pub fn decide(&self, statement: &str, client: &ClientInfo) -> Decision {
        let rules = self.read();
        let mut decision = Decision::default();
        if rules.live.is_empty() {
            return decision;
        }
        let text = strip_leading(statement);
        for live in &rules.live {
            if !live.rule.matches_stripped(text, client) {
                continue;
            }
            let terminal = !matches!(live.rule.action, Action::Delay(_));
            if !live.count(terminal && decision.terminal.is_some()) {
                continue;
            }
            let fired = Fired {
                rule_id: live.id,
                rule: live.rule.text.clone(),
                action: live.rule.action.clone(),
            };
            if terminal {
                decision.terminal = Some(fired);
            } else {
                decision.delays.push(fired);
            }
        }
        decision
    }
}

impl Live {
    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a match; whether the rule fires on it (never when `shadowed`).
    fn count(&self, shadowed: bool) -> bool {
        let spec = &self.rule.spec;
        let mut c = self.counts();
        c.matched += 1;
        if shadowed
            || c.matched <= spec.after.unwrap_or(0)
            || spec.times.is_some_and(|times| c.fired >= times)
        {
            return false;
        }
        if let Some(p) = spec.probability
            && c.rng.f64() >= p
        {
            return false;
        }
        c.fired += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const BOB: ClientInfo = ClientInfo {
        database: "app",
        user: "bob",
        application_name: "svc",
    };

    fn glob(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).matches(text)
    }

    fn spec(text: &str) -> RuleSpec {
        text.parse()
            .unwrap_or_else(|e| panic!("`{text}` should parse: {e}"))
    }

    fn set(rules: &[&str], seed: u64) -> RuleSet {
        let s = RuleSet::new(seed);
        for r in rules {
            s.add(spec(r)).unwrap();
        }
        s
    }

    fn fires(s: &RuleSet, statement: &str, n: usize) -> Vec<bool> {
        (0..n)
            .map(|_| s.decide(statement, &BOB).terminal.is_some())
            .collect()
    }

    #[test]
    fn leading_whitespace_and_comments_are_stripped() {
        assert_eq!(strip_leading("  \n\t\r INSERT"), "INSERT");
        assert_eq!(strip_leading("-- a\n-- b\r\n  INSERT -- c"), "INSERT -- c");
        assert_eq!(strip_leading("/* a /* nested */ b */ INSERT"), "INSERT");
        assert_eq!(strip_leading("/* a /* b /* c */ */ */INSERT"), "INSERT");
        assert_eq!(
            strip_leading("/* x */ -- y\n /**/ /* -- z */INSERT /* kept */"),
            "INSERT /* kept */"
        );
        assert_eq!(strip_leading("/***/SELECT"), "SELECT");
        assert_eq!(strip_leading("-- only a comment"), "");
        assert_eq!(strip_leading(""), "");
        assert_eq!(strip_leading("SELECT 1"), "SELECT 1");
    }

    #[test]
    fn an_unterminated_comment_is_left_in_place() {
        assert_eq!(strip_leading("/* open INSERT"), "/* open INSERT");
        assert_eq!(
            strip_leading("-- a\n /* x /* y */ INSERT"),
            "/* x /* y */ INSERT"
        );
        assert_eq!(strip_leading("/*/ INSERT"), "/*/ INSERT");
        assert_eq!(strip_leading("/*"), "/*");
    }

    #[test]
    fn globs_match_the_whole_text_case_insensitively() {
        assert!(glob("INSERT*", "insert into t values (1)"));
        assert!(glob("insert*", "INSERT"));
        assert!(glob(
            "INSERT INTO orders*",
            "Insert Into ORDERS (id) VALUES (1)"
        ));
        assert!(!glob("INSERT*", "SELECT 1; INSERT"));
        assert!(!glob("INSERT", "INSERT INTO t"));
        assert!(glob("*orders*", "UPDATE orders\nSET x = 1\nWHERE true"));
        assert!(glob("UPDATE*\n*WHERE*", "UPDATE t\nSET x = 1\nWHERE true"));
        assert!(glob("*", ""));
        assert!(glob("**", "anything"));
        assert!(!glob("x", ""));
        assert!(!glob("é*", "É"), "non-ASCII letters are compared exactly");
        assert!(glob("SELECT 'é'*", "select 'é' AS x"));
    }

    #[test]
    fn question_marks_match_one_character() {
        assert!(glob("SELECT ?", "select 1"));
        assert!(glob("SELECT ?", "select é"));
        assert!(glob("SELECT ?", "select 💥"));
        assert!(!glob("SELECT ?", "select 12"));
        assert!(!glob("SELECT ?", "select "));
        assert!(glob("a?c", "a\nc"));
        assert!(glob("*?", "x"));
        assert!(!glob("*?", ""));
        assert!(glob("?*x", "éx"));
    }

    #[test]
    fn escapes_make_wildcards_literal() {
        assert!(glob("a\\*b", "a*b"));
        assert!(!glob("a\\*b", "axb"));
        assert!(glob("a\\?", "a?"));
        assert!(!glob("a\\?", "ab"));
        assert!(glob("a\\\\b", "a\\b"));
        assert!(glob("*\\*", "SELECT 2 * 3 *"));
        assert!(!glob("*\\*", "SELECT 2 * 3"));
        assert!(glob("a\\", "a\\"), "a trailing backslash is itself");
    }

    #[test]
    fn backtracking_finds_later_matches() {
        assert!(glob("*a*b", "xxaxxaxxb"));
        assert!(glob("*ab*ab", "abxabab"));
        assert!(glob("a*b*c", "aXbYbZc"));
        assert!(!glob("a*b*c", "aXbYbZ"));
        assert!(glob("*a?", "aaa"));
        assert!(glob(
            "SELECT * FROM t WHERE *",
            "SELECT * FROM t WHERE id = 1"
        ));
    }

    /// The glob's meaning, written as plainly as possible (recursion, chars): the reference
    /// the fast matcher is checked against.
    fn reference(pattern: &[char], text: &[char]) -> bool {
        match pattern.split_first() {
            None => text.is_empty(),
            Some(('*', rest)) => (0..=text.len()).any(|i| reference(rest, &text[i..])),
            Some(('?', rest)) => !text.is_empty() && reference(rest, &text[1..]),
            Some(('\\', rest)) if !rest.is_empty() => {
                text.first()
                    .is_some_and(|t| t.eq_ignore_ascii_case(&rest[0]))
                    && reference(&rest[1..], &text[1..])
            }
            Some((c, rest)) => {
                text.first().is_some_and(|t| t.eq_ignore_ascii_case(c))
                    && reference(rest, &text[1..])
            }
        }
    }

    #[test]
    fn globs_agree_with_the_reference_matcher() {
        let mut rng = fastrand::Rng::with_seed(1);
        let alphabet = ['a', 'A', 'b', 'é', '\n', ' '];
        let wild = ['*', '?', '\\'];
        for _ in 0..20_000 {
            let pattern: String = (0..rng.usize(0..8))
                .map(|_| match rng.u8(0..3) {
                    0 => wild[rng.usize(0..wild.len())],
                    _ => alphabet[rng.usize(0..alphabet.len())],
                })
                .collect();
            let text: String = (0..rng.usize(0..10))
                .map(|_| alphabet[rng.usize(0..alphabet.len())])
                .collect();
            let p: Vec<char> = pattern.chars().collect();
            let t: Vec<char> = text.chars().collect();
            assert_eq!(
                glob(&pattern, &text),
                reference(&p, &t),
                "{pattern:?} against {text:?}"
            );
        }
    }

    #[test]
    fn pathological_globs_finish_quickly() {
        let long = "a".repeat(100_000);
        let started = Instant::now();
        assert!(!glob("*a*a*a*b", &long));
        assert!(!glob("*a*a*a*a*a*b*", &long));
        assert!(!glob("*aaaaaaaaaab*", &long));
        assert!(glob("*a*a*a*a", &long));
        let elapsed = started.elapsed();
        assert!(elapsed.as_millis() < 2_000, "took {elapsed:?}");
    }

    #[test]
    fn the_string_form_parses() {
        let s = spec("error:INSERT INTO orders*:disk full: really;sqlstate=53100;times=1");
        assert_eq!(s.action, "error");
        assert_eq!(s.query, "INSERT INTO orders*");
        assert_eq!(s.message.as_deref(), Some("disk full: really"));
        assert_eq!(s.sqlstate.as_deref(), Some("53100"));
        assert_eq!(s.times, Some(1));
        let d = spec("delay:SELECT\\:\\:int*:1.5s;probability=0.5;after=2");
        assert_eq!(d.query, "SELECT::int*");
        assert_eq!((d.probability, d.after), (Some(0.5), Some(2)));
        let action = d.compile().unwrap().action().clone();
        assert_eq!(action, Action::Delay(Duration::from_millis(1500)));
        let r = spec("drop:INSERT\\;*;user=bob;database=app;application_name=svc;");
        assert_eq!(r.query, "INSERT;*");
        assert_eq!(r.user.as_deref(), Some("bob"));
        assert_eq!(r.compile().unwrap().action(), &Action::Drop);
        assert_eq!(r.compile().unwrap().action().name(), "drop");
        let e = spec("error:X:a\\;b \\\\ C\\:\\temp");
        assert_eq!(e.message.as_deref(), Some("a;b \\ C:\\temp"));
        let default = spec("error:X:m").compile().unwrap();
        assert_eq!(
            default.action(),
            &Action::Error {
                message: "m".into(),
                sqlstate: "XX000".into()
            }
        );
    }

    #[test]
    fn durations_have_units() {
        for (text, ms) in [
            ("250ms", 250),
            ("3s", 3000),
            ("1.5s", 1500),
            ("2m", 120_000),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        assert_eq!(parse_duration("0ms"), Ok(Duration::ZERO));
        for bad in ["3", "soon", "-1s", "1..5s", "3 parsecs", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_string_form_round_trips() {
        for text in [
            "error:INSERT INTO orders*:disk full;sqlstate=53100;times=1",
            "error:*\\:\\:jsonb*:a\\;b: c \\\\d;after=3;probability=0.25",
            "delay:SELECT*:250ms;user=bob;application_name=",
            "drop:INSERT*;database=app",
            "error:a\\*b\\?c\\\\:\\:starts with a colon",
        ] {
            let parsed = spec(text);
            assert_eq!(parsed.to_spec_string(), text, "canonical form of `{text}`");
            assert_eq!(spec(&parsed.to_spec_string()), parsed);
        }
        // Options in any order come back in the canonical one.
        let s = spec("drop:X;times=2;user=u");
        assert_eq!(s.to_spec_string(), "drop:X;times=2;user=u");
        assert_eq!(
            spec("drop:X;user=u;times=2").to_spec_string(),
            "drop:X;times=2;user=u"
        );
        // A JSON rule with characters the string form escapes.
        let json: RuleSpec =
            serde_json::from_str(r#"{"action":"error","query":"a:b;c\\","message":":x;y\\"}"#)
                .unwrap();
        let back = spec(&json.to_spec_string());
        assert_eq!(back.message, json.message);
        assert!(glob(&back.query, "a:b;c\\") && glob(&json.query, "a:b;c\\"));
    }

    #[test]
    fn every_mistake_is_named() {
        for (bad, says) in [
            (
                "oops:X",
                "unknown action `oops`: expected error:QUERY:MESSAGE",
            ),
            ("drop", "`drop` has no query"),
            ("", "the rule is empty"),
            ("error:INSERT*", "an error rule needs a message"),
            ("error:INSERT*:", "an error rule needs a message"),
            ("error:SELECT 1::int*:boom", "write it \\:\\:"),
            ("error::m", "the query glob is empty"),
            ("drop:   ", "the query glob is empty"),
            ("delay:X", "a delay rule needs a duration"),
            ("delay:X:soon", "`soon` is not a duration"),
            ("delay:SELECT 1::int:1s", "write it \\:\\:"),
            (
                "delay:X:3s;sqlstate=53100",
                "sqlstate does not apply to delay rules",
            ),
            (
                "drop:X;sqlstate=53100",
                "sqlstate does not apply to drop rules",
            ),
            ("drop:X:y", "a drop rule takes no argument"),
            (
                "error:X:m;sqlstate=5310",
                "sqlstate=5310: expected five digits",
            ),
            ("error:X:m;sqlstate=53a00", "capital letters"),
            ("error:X:m;sqlstate=00000", "not 00000"),
            (
                "error:X:m;probability=2",
                "probability=2: expected a number from 0 to 1",
            ),
            ("error:X:m;probability=-0.1", "from 0 to 1"),
            ("error:X:m;probability=NaN", "from 0 to 1"),
            ("error:X:m;probability=half", "from 0 to 1"),
            ("error:X:m;times=two", "times=two: expected a whole number"),
            ("error:X:m;after=-1", "after=-1: expected a whole number"),
            ("error:X:m;times=0", "times=0 would never act"),
            ("error:X:m;times=1;times=2", "option `times` is given twice"),
            ("drop:X;user=a;user=a", "option `user` is given twice"),
            ("drop:X;user=", "user= is empty"),
            ("error:X:m;color=red", "unknown option `color`"),
            ("error:X:m;times", "option `times` is not key=value"),
            ("error:X;message=m", "`message` is not an option"),
            ("error:X:m\0", "NUL"),
        ] {
            let e = bad.parse::<RuleSpec>().unwrap_err().to_string();
            assert!(
                e.contains(says),
                "`{bad}` gave `{e}`, expected it to say `{says}`"
            );
            assert!(e.starts_with("fault rule `"), "{e}");
        }
    }

    #[test]
    fn the_object_form_is_validated_too() {
        let mut s = spec("error:X:m");
        s.delay = Some("3s".into());
        let e = s.compile().unwrap_err().to_string();
        assert!(e.contains("`error:X:m;delay=3s`"), "{e}");
        assert!(e.contains("delay does not apply to error rules"), "{e}");
        let mut d = spec("drop:X");
        d.message = Some("m".into());
        assert!(
            d.compile()
                .unwrap_err()
                .to_string()
                .contains("message does not apply")
        );
        d.action = "ERROR".into();
        assert!(
            d.compile()
                .unwrap_err()
                .to_string()
                .contains("unknown action `ERROR`")
        );
        assert!(RuleSet::new(0).add(d).is_err());
    }

    #[test]
    fn times_and_after_count_matches() {
        let s = set(&["error:INSERT*:x;after=1;times=2"], 0);
        assert_eq!(
            fires(&s, "INSERT INTO t", 5),
            [false, true, true, false, false]
        );
        assert!(s.decide("SELECT 1", &BOB).is_pass());
        let v = s.list();
        assert_eq!(
            (v[0].matched, v[0].fired),
            (5, 2),
            "a spent rule stays listed"
        );
        assert_eq!(v[0].rule, "error:INSERT*:x;times=2;after=1");
    }

    #[test]
    fn probability_is_reproducible_with_a_seed() {
        let run = |seed| fires(&set(&["error:*:x;probability=0.5"], seed), "SELECT 1", 64);
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let hits = run(7).iter().filter(|b| **b).count();
        assert!((16..=48).contains(&hits), "{hits} of 64 at p=0.5");
        let never = fires(&set(&["error:*:x;probability=0"], 1), "SELECT 1", 32);
        assert!(never.iter().all(|f| !f));
        let always = fires(&set(&["error:*:x;probability=1"], 1), "SELECT 1", 32);
        assert!(always.iter().all(|f| *f));
    }

    #[test]
    fn a_rules_draws_do_not_depend_on_other_rules() {
        let alone = fires(&set(&["drop:A;probability=0.5"], 3), "A", 32);
        let s = set(&["drop:A;probability=0.5", "drop:B;probability=0.5"], 3);
        let with_other: Vec<bool> = (0..32)
            .map(|_| {
                s.decide("B", &BOB);
                s.decide("A", &BOB).terminal.is_some()
            })
            .collect();
        assert_eq!(alone, with_other);
    }

    #[test]
    fn scope_limits_rules_to_clients() {
        let s = set(
            &[
                "error:*:db;database=other",
                "error:*:user;user=alice",
                "error:*:app;application_name=SVC",
                "error:*:all;database=app;user=bob;application_name=svc",
            ],
            0,
        );
        let t = s.decide("SELECT 1", &BOB).terminal.unwrap();
        assert_eq!(t.rule_id, 4);
        let alice = ClientInfo {
            user: "alice",
            ..BOB
        };
        assert_eq!(s.decide("SELECT 1", &alice).terminal.unwrap().rule_id, 2);
        let counts: Vec<u64> = s.list().iter().map(|v| v.matched).collect();
        assert_eq!(counts, [0, 1, 0, 1], "only in-scope matches count");
        let r = spec("drop:X;application_name=").compile().unwrap();
        let anonymous = ClientInfo {
            application_name: "",
            ..BOB
        };
        assert!(r.matches("X", &anonymous) && !r.matches("X", &BOB));
    }

    #[test]
    fn delays_accumulate_and_the_first_terminal_rule_wins() {
        let s = set(
            &[
                "delay:INSERT*:1s",
                "drop:INSERT*;user=alice",
                "error:INSERT*:a",
                "delay:*:2s",
                "error:*:b;times=1",
            ],
            0,
        );
        let d = s.decide("/* trace */ -- x\n INSERT INTO t", &BOB);
        let delays: Vec<u64> = d.delays.iter().map(|f| f.rule_id).collect();
        assert_eq!(delays, [1, 4]);
        assert_eq!(d.delays[1].action, Action::Delay(Duration::from_secs(2)));
        let t = d.terminal.unwrap();
        assert_eq!(&*t.rule, "error:INSERT*:a");
        let v = s.list();
        assert_eq!(
            (v[4].matched, v[4].fired),
            (1, 0),
            "shadowed: counted, not fired"
        );
        assert!(s.remove(3));
        assert!(!s.remove(3));
        let t = s.decide("INSERT", &BOB).terminal.unwrap();
        assert_eq!(&*t.rule, "error:*:b;times=1");
        assert_eq!(
            s.list().iter().map(|v| v.id).collect::<Vec<_>>(),
            [1, 2, 4, 5]
        );
        assert_eq!(s.clear(), 4);
        assert!(s.is_empty());
        assert_eq!(s.add(spec("drop:X")).unwrap(), 6, "ids are never reused");
    }

    #[test]
    fn rule_sets_are_shared_across_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<RuleSet>();
        let s = Arc::new(set(&["error:INSERT*:x;times=100"], 0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || fires(&s, "INSERT", 50).iter().filter(|f| **f).count())
            })
            .collect();
        let fired: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(fired, 100);
        assert_eq!((s.list()[0].matched, s.list()[0].fired), (200, 100));
    }

    #[test]
    fn json_rules_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.json");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            load_file(&path)
        };
        let r = load(r#"[{"action":"error","query":"INSERT*","message":"disk full","times":1}]"#);
        assert_eq!(r.unwrap(), [spec("error:INSERT*:disk full;times=1")]);
        let r = load(
            r#"{"faults": [{"action": "drop", "query": "X*"},
                           {"action": "delay", "query": "S*", "delay": "3s"}]}"#,
        );
        assert_eq!(r.unwrap().len(), 2);
        for (text, says) in [
            (
                r#"[{"action":"drop","query":"X*","colour":1}]"#,
                "fault 1: unknown field `colour`",
            ),
            (
                r#"[{"action":"drop","query":"X"},{"action":"error","query":"X"}]"#,
                "fault 2: fault rule `error:X`: an error rule needs a message",
            ),
            (r#"{"rules":[]}"#, "unknown key `rules`"),
            (r#"{"faults":{}}"#, "`faults` is not an array"),
            ("[{", "not JSON"),
            ("3", "expected a JSON array"),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(
                e.contains("rules.json") && e.contains(says),
                "`{text}` gave `{e}`"
            );
        }
    }

    #[test]
    fn toml_rules_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.toml");
        let load = |text: &str| {
            std::fs::write(&path, text).unwrap();
            load_file(&path)
        };
        let r = load(
            "[[fault]]\naction = \"delay\"\nquery = \"SELECT*\"\ndelay = \"3s\"\n\n\
             [[fault]]\naction = \"error\"\nquery = \"INSERT*\"\nmessage = \"full\"\n\
             sqlstate = \"53100\"\nprobability = 1\n",
        );
        let r = r.unwrap();
        assert_eq!(r[0], spec("delay:SELECT*:3s"));
        assert_eq!(
            r[1],
            spec("error:INSERT*:full;sqlstate=53100;probability=1")
        );
        for (text, says) in [
            (
                "[[fault]]\naction = \"delay\"\nquery = \"SELECT*\"\n",
                "needs a duration",
            ),
            ("[[faults]]\naction = \"drop\"\n", "faults"),
            (
                "[[fault]]\naction = \"drop\"\nquery = \"X\"\ntimes = \"two\"\n",
                "times",
            ),
            ("[[fault]\n", "[[fault]] tables"),
        ] {
            let e = load(text).unwrap_err().to_string();
            assert!(
                e.contains("rules.toml") && e.contains(says),
                "`{text}` gave `{e}`"
            );
        }
        let missing = load_file(&dir.path().join("absent.toml")).unwrap_err();
        assert!(
            missing.to_string().contains("cannot read rules file"),
            "{missing}"
        );
    }
}
