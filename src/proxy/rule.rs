//! Fault rules: which statements a proxy fails, holds or drops, and when.
//!
//! A rule is written `ACTION:QUERY[:ARG][;key=value...]` on the command line
//! (`error:INSERT*:disk full;sqlstate=53100`, `delay:SELECT*:3s`, `drop:INSERT*`), or as an
//! object with the same fields in a JSON/TOML rules file and over the control API. `QUERY` is
//! a glob matched against the whole statement once its leading whitespace and comments are
//! stripped, ASCII case-insensitively: `*` any run (newlines too), `?` one character, `\*`,
//! `\?`, `\\` themselves. In the string form `\:` and `\;` are a literal `:` and `;`.
//!
//! Counting is per rule across every connection: match n fires when n > `after`, fewer than
//! `times` have fired, and the rule's own seeded draw passes `probability` — the same seed
//! and the same statements give the same decisions.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The options a rule may carry, for messages.
const FORM: &str = "expected error:QUERY:MESSAGE, delay:QUERY:DURATION or drop:QUERY, with \
                    options ;sqlstate= ;times= ;after= ;probability= ;database= ;user= \
                    ;application_name=";

/// What a rule does to a matching statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Error { message: String, sqlstate: String },
    Delay(Duration),
    Drop,
}

impl Action {
    pub fn name(&self) -> &'static str {
        match self {
            Action::Error { .. } => "error",
            Action::Delay(_) => "delay",
            Action::Drop => "drop",
        }
    }
}

/// A rule as the user writes it: the JSON/TOML form, and the control API's body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// `error`, `delay` or `drop`.
    pub action: String,
    /// The glob.
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
    /// `3s`, `250ms`, `1.5s`, `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub application_name: Option<String>,
}

/// A rule that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("fault rule `{rule}`: {message}")]
    Invalid { rule: String, message: String },
    #[error("rules file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

fn invalid(rule: &str, message: impl Into<String>) -> RuleError {
    RuleError::Invalid {
        rule: rule.to_string(),
        message: message.into(),
    }
}

/// Splits at unescaped `sep`, keeping escapes (they are the glob's or the message's).
fn split_unescaped(s: &str, sep: char, max: usize) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) if n == ':' || n == ';' => parts.last_mut().map(|p| p.push(n)),
                Some(n) => parts.last_mut().map(|p| {
                    p.push('\\');
                    p.push(n)
                }),
                None => parts.last_mut().map(|p| p.push('\\')),
            };
        } else if c == sep && parts.len() < max {
            parts.push(String::new());
        } else if let Some(p) = parts.last_mut() {
            p.push(c);
        }
    }
    parts
}

impl FromStr for RuleSpec {
    type Err = RuleError;
    /// The `--fault` form.
    fn from_str(text: &str) -> Result<RuleSpec, RuleError> {
        // Options first: the message may hold ':' but not an unescaped ';'.
        let mut sections = split_unescaped_raw(text, ';').into_iter();
        let head = sections.next().unwrap_or_default();
        let parts = split_unescaped(&head, ':', 3);
        let action = parts[0].trim().to_ascii_lowercase();
        let query = parts.get(1).cloned().unwrap_or_default();
        let arg = parts.get(2).cloned();
        let mut spec = RuleSpec {
            action: action.clone(),
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
        };
        match action.as_str() {
            "error" => spec.message = arg,
            "delay" => spec.delay = arg,
            "drop" if arg.is_some() => {
                return Err(invalid(text, "drop takes no argument: drop:QUERY"));
            }
            "drop" => {}
            other => return Err(invalid(text, format!("unknown action `{other}`: {FORM}"))),
        }
        for opt in sections {
            let (key, value) = opt
                .split_once('=')
                .ok_or_else(|| invalid(text, format!("option `{opt}` is not key=value: {FORM}")))?;
            let value = value.to_string();
            let num = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| invalid(text, format!("{key}={v}: expected a whole number")))
            };
            let slot_taken = match key.trim() {
                "sqlstate" => spec.sqlstate.replace(value).is_some(),
                "times" => spec.times.replace(num(&value)?).is_some(),
                "after" => spec.after.replace(num(&value)?).is_some(),
                "probability" => {
                    let p = value.parse::<f64>().map_err(|_| {
                        invalid(
                            text,
                            format!("probability={value}: expected a number from 0 to 1"),
                        )
                    })?;
                    spec.probability.replace(p).is_some()
                }
                "database" => spec.database.replace(value).is_some(),
                "user" => spec.user.replace(value).is_some(),
                "application_name" => spec.application_name.replace(value).is_some(),
                other => return Err(invalid(text, format!("unknown option `{other}`: {FORM}"))),
            };
            if slot_taken {
                return Err(invalid(
                    text,
                    format!("option `{}` is given twice", key.trim()),
                ));
            }
        }
        spec.compile_as(text)?;
        Ok(spec)
    }
}

/// Splits at unescaped `sep`, keeping every escape for the next split.
fn split_unescaped_raw(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in s.chars() {
        let p = parts.last_mut().expect("never empty");
        if escaped {
            p.push('\\');
            p.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(String::new());
        } else {
            p.push(c);
        }
    }
    if escaped && let Some(p) = parts.last_mut() {
        p.push('\\');
    }
    parts
}

fn escape_spec(s: &str) -> String {
    s.replace(':', "\\:").replace(';', "\\;")
}

impl RuleSpec {
    /// Validates and compiles.
    pub fn compile(&self) -> Result<Rule, RuleError> {
        self.compile_as(&self.to_spec_string())
    }

    fn compile_as(&self, shown: &str) -> Result<Rule, RuleError> {
        let bad = |m: String| invalid(shown, m);
        if self.query.is_empty() {
            return Err(bad(format!("the query glob is empty: {FORM}")));
        }
        let not_for = |field: &str, set: bool| -> Result<(), RuleError> {
            if set {
                Err(invalid(
                    shown,
                    format!("{field} does not apply to a {} rule", self.action),
                ))
            } else {
                Ok(())
            }
        };
        let action = match self.action.as_str() {
            "error" => {
                not_for("delay", self.delay.is_some())?;
                let message = self
                    .message
                    .clone()
                    .filter(|m| !m.is_empty())
                    .ok_or_else(|| {
                        bad("an error rule needs a message: error:QUERY:MESSAGE".into())
                    })?;
                if message.contains('\0') {
                    return Err(bad("the message holds a NUL character".into()));
                }
                let sqlstate = self.sqlstate.clone().unwrap_or_else(|| "XX000".into());
                let valid = sqlstate.len() == 5
                    && sqlstate
                        .bytes()
                        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
                    && sqlstate != "00000";
                if !valid {
                    return Err(bad(format!(
                        "sqlstate={sqlstate}: expected five digits or capital letters (such as \
                         53100, disk_full), not 00000"
                    )));
                }
                Action::Error { message, sqlstate }
            }
            "delay" => {
                not_for("message", self.message.is_some())?;
                not_for("sqlstate", self.sqlstate.is_some())?;
                let text = self
                    .delay
                    .as_deref()
                    .ok_or_else(|| bad("a delay rule needs a duration: delay:QUERY:3s".into()))?;
                Action::Delay(parse_duration(text).map_err(bad)?)
            }
            "drop" => {
                not_for("message", self.message.is_some())?;
                not_for("sqlstate", self.sqlstate.is_some())?;
                not_for("delay", self.delay.is_some())?;
                Action::Drop
            }
            other => return Err(bad(format!("unknown action `{other}`: {FORM}"))),
        };
        if let Some(p) = self.probability
            && !(0.0..=1.0).contains(&p)
        {
            return Err(bad(format!(
                "probability={p}: expected a number from 0 to 1"
            )));
        }
        Ok(Rule {
            action,
            glob: Glob::new(&self.query),
            spec: self.clone(),
            text: Arc::from(shown),
        })
    }

    /// The `--fault` form (parses back to the same rule).
    pub fn to_spec_string(&self) -> String {
        let mut s = format!("{}:{}", self.action, escape_spec(&self.query));
        if let Some(m) = &self.message {
            s.push(':');
            s.push_str(&escape_spec(m));
        }
        if let Some(d) = &self.delay {
            s.push(':');
            s.push_str(&escape_spec(d));
        }
        let opts: [(&str, Option<String>); 7] = [
            ("sqlstate", self.sqlstate.clone()),
            ("times", self.times.map(|v| v.to_string())),
            ("after", self.after.map(|v| v.to_string())),
            ("probability", self.probability.map(|v| v.to_string())),
            ("database", self.database.clone()),
            ("user", self.user.clone()),
            ("application_name", self.application_name.clone()),
        ];
        for (k, v) in opts {
            if let Some(v) = v {
                s.push_str(&format!(";{k}={}", escape_spec(&v)));
            }
        }
        s
    }
}

/// `3s`, `250ms`, `1.5s`, `2m`, `100us`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 3s, 250ms or 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" | "min" => n * 60.0,
        "us" => n / 1_000_000.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (ms, s or m)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| format!("`{text}` is out of range"))
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    action: Action,
    glob: Glob,
    spec: RuleSpec,
    text: Arc<str>,
}

impl Rule {
    pub fn action(&self) -> &Action {
        &self.action
    }
    pub fn spec(&self) -> &RuleSpec {
        &self.spec
    }
}

/// Rules from a `.toml` (`[[fault]]` tables) or JSON (an array, or `{"faults": [...]}`) file.
pub fn load_file(path: &Path) -> Result<Vec<RuleSpec>, RuleError> {
    let err = |message: String| RuleError::File {
        path: path.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let specs: Vec<RuleSpec> = if path.extension().is_some_and(|e| e == "toml") {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            fault: Vec<RuleSpec>,
        }
        toml::from_str::<File>(&text)
            .map_err(|e| err(format!("{e} (expected [[fault]] tables)")))?
            .fault
    } else {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum File {
            List(Vec<RuleSpec>),
            Object { faults: Vec<RuleSpec> },
        }
        match serde_json::from_str::<File>(&text) {
            Ok(File::List(v)) | Ok(File::Object { faults: v }) => v,
            Err(e) => {
                return Err(err(format!(
                    "{e} (expected a JSON array of rules or {{\"faults\": [...]}})"
                )));
            }
        }
    };
    for s in &specs {
        s.compile().map_err(|e| err(e.to_string()))?;
    }
    Ok(specs)
}

/// Leading whitespace and comments (`-- ...` lines, nesting `/* ... */`) stripped. An
/// unterminated block comment is left in place.
pub fn strip_leading(statement: &str) -> &str {
    let mut s = statement;
    loop {
        let t = s.trim_start();
        if let Some(rest) = t.strip_prefix("--") {
            s = rest.find('\n').map_or("", |i| &rest[i + 1..]);
        } else if t.starts_with("/*") {
            let b = t.as_bytes();
            let (mut depth, mut i) = (0usize, 0usize);
            loop {
                if i + 1 >= b.len() {
                    return t;
                }
                if b[i] == b'/' && b[i + 1] == b'*' {
                    depth += 1;
                    i += 2;
                } else if b[i] == b'*' && b[i + 1] == b'/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            s = &t[i..];
        } else {
            return t;
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tok {
    Byte(u8),
    Any,
    Star,
}

/// A compiled glob over bytes, ASCII case-insensitive.
#[derive(Debug)]
struct Glob {
    toks: Vec<Tok>,
}

impl Glob {
    fn new(pattern: &str) -> Glob {
        let mut toks = Vec::new();
        let mut b = pattern.bytes();
        while let Some(c) = b.next() {
            toks.push(match c {
                b'\\' => Tok::Byte(b.next().unwrap_or(b'\\').to_ascii_lowercase()),
                b'*' if toks.last() == Some(&Tok::Star) => continue,
                b'*' => Tok::Star,
                b'?' => Tok::Any,
                c => Tok::Byte(c.to_ascii_lowercase()),
            });
        }
        Glob { toks }
    }

    /// Greedy matching with backtracking to the last star: O(pattern × text) at worst, no
    /// recursion. `?` matches one character (all the bytes of a UTF-8 sequence).
    fn matches(&self, text: &str) -> bool {
        let t = text.as_bytes();
        let p = &self.toks;
        let (mut ti, mut pi) = (0, 0);
        let mut back: Option<(usize, usize)> = None;
        while ti < t.len() {
            let step = match p.get(pi) {
                Some(Tok::Byte(c)) if t[ti].to_ascii_lowercase() == *c => Some(1),
                Some(Tok::Any) => Some(char_len(t[ti])),
                Some(Tok::Star) => {
                    back = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                _ => None,
            };
            match (step, back) {
                (Some(n), _) => {
                    ti += n;
                    pi += 1;
                }
                (None, Some((bp, bt))) => {
                    pi = bp + 1;
                    ti = bt + char_len(t[bt]);
                    back = Some((bp, ti));
                }
                (None, None) => return false,
            }
        }
        p[pi.min(p.len())..].iter().all(|t| *t == Tok::Star)
    }
}

fn char_len(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

/// Who is connected: scopes rules with database=/user=/application_name=.
pub struct ClientInfo<'a> {
    pub database: &'a str,
    pub user: &'a str,
    pub application_name: &'a str,
}

struct Live {
    id: u64,
    rule: Rule,
    counts: Mutex<Counts>,
}

struct Counts {
    matched: u64,
    fired: u64,
    rng: fastrand::Rng,
}

/// A listed rule.
#[derive(Clone, Debug, Serialize)]
pub struct RuleView {
    pub id: u64,
    pub spec: RuleSpec,
    pub rule: String,
    pub matched: u64,
    pub fired: u64,
}

/// A rule that fired.
#[derive(Clone, Debug)]
pub struct Fired {
    pub rule_id: u64,
    pub rule: Arc<str>,
    pub action: Action,
}

/// What to do with one statement.
#[derive(Debug, Default)]
pub struct Decision {
    /// Delays to hold, in order, before the statement runs.
    pub delays: Vec<Fired>,
    /// The first error or drop rule that fired.
    pub terminal: Option<Fired>,
}

impl Decision {
    pub fn is_pass(&self) -> bool {
        self.delays.is_empty() && self.terminal.is_none()
    }
}

/// The live rules, shared by every connection and the control API.
pub struct RuleSet {
    seed: u64,
    rules: RwLock<Arc<Vec<Arc<Live>>>>,
    next_id: Mutex<u64>,
}

impl RuleSet {
    pub fn new(seed: u64) -> RuleSet {
        RuleSet {
            seed,
            rules: RwLock::new(Arc::new(Vec::new())),
            next_id: Mutex::new(0),
        }
    }

    fn snapshot(&self) -> Arc<Vec<Arc<Live>>> {
        self.rules.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut Vec<Arc<Live>>)) {
        let mut guard = self.rules.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**guard).clone();
        f(&mut next);
        *guard = Arc::new(next);
    }

    /// Adds a rule; returns its id (1, 2, 3... never reused).
    pub fn add(&self, spec: RuleSpec) -> Result<u64, RuleError> {
        let rule = spec.compile()?;
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            *n
        };
        let rng = fastrand::Rng::with_seed(self.seed ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let live = Arc::new(Live {
            id,
            rule,
            counts: Mutex::new(Counts {
                matched: 0,
                fired: 0,
                rng,
            }),
        });
        self.update(|v| v.push(live));
        Ok(id)
    }

    pub fn remove(&self, id: u64) -> bool {
        let mut found = false;
        self.update(|v| {
            let before = v.len();
            v.retain(|r| r.id != id);
            found = v.len() != before;
        });
        found
    }

    pub fn clear(&self) -> usize {
        let mut n = 0;
        self.update(|v| {
            n = v.len();
            v.clear();
        });
        n
    }

    pub fn is_empty(&self) -> bool {
        self.snapshot().is_empty()
    }

    pub fn list(&self) -> Vec<RuleView> {
        self.snapshot()
            .iter()
            .map(|r| {
                let c = r.counts.lock().unwrap_or_else(|p| p.into_inner());
                RuleView {
                    id: r.id,
                    spec: r.rule.spec.clone(),
                    rule: r.rule.text.to_string(),
                    matched: c.matched,
                    fired: c.fired,
                }
            })
            .collect()
    }

    /// What to do with a statement about to run; counts the match of every rule whose glob
    /// and scope match.
    pub fn decide(&self, statement: &str, client: &ClientInfo) -> Decision {
        let rules = self.snapshot();
        let mut d = Decision::default();
        if rules.is_empty() {
            return d;
        }
        let text = strip_leading(statement);
        for live in rules.iter() {
            let spec = &live.rule.spec;
            let scoped = spec
                .database
                .as_deref()
                .is_none_or(|v| v == client.database)
                && spec.user.as_deref().is_none_or(|v| v == client.user)
                && spec
                    .application_name
                    .as_deref()
                    .is_none_or(|v| v == client.application_name);
            if !scoped || !live.rule.glob.matches(text) {
                continue;
            }
            let is_delay = matches!(live.rule.action, Action::Delay(_));
            if !is_delay && d.terminal.is_some() {
                continue;
            }
            if !live.fires(spec) {
                continue;
            }
            let fired = Fired {
                rule_id: live.id,
                rule: live.rule.text.clone(),
                action: live.rule.action.clone(),
            };
            if is_delay {
                d.delays.push(fired);
            } else {
                d.terminal = Some(fired);
            }
        }
        d
    }
}

impl Live {
    fn fires(&self, spec: &RuleSpec) -> bool {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.matched += 1;
        if c.matched <= spec.after.unwrap_or(0) || spec.times.is_some_and(|t| c.fired >= t) {
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
    use super::*;

    const ANY: ClientInfo = ClientInfo {
        database: "app",
        user: "bob",
        application_name: "svc",
    };

    fn glob(p: &str, t: &str) -> bool {
        Glob::new(p).matches(t)
    }

    #[test]
    fn leading_comments_and_whitespace_are_stripped() {
        assert_eq!(strip_leading("  \n\tINSERT"), "INSERT");
        assert_eq!(strip_leading("-- a\n-- b\n INSERT"), "INSERT");
        assert_eq!(strip_leading("/* a /* nested */ b */ INSERT"), "INSERT");
        assert_eq!(
            strip_leading("/* x */ -- y\n /**/INSERT /* not */"),
            "INSERT /* not */"
        );
        assert_eq!(strip_leading("/* open INSERT"), "/* open INSERT");
        assert_eq!(strip_leading("-- only"), "");
    }

    #[test]
    fn globs_match_the_whole_text_case_insensitively() {
        assert!(glob("INSERT*", "insert into t values (1)"));
        assert!(glob("INSERT*", "INSERT"));
        assert!(!glob("INSERT*", "SELECT 1; INSERT"));
        assert!(glob("*orders*", "UPDATE orders\nSET x = 1"));
        assert!(glob("SELECT ?", "select 1"));
        assert!(glob("SELECT ?", "select é"));
        assert!(!glob("SELECT ?", "select 12"));
        assert!(glob("a\\*b", "a*b"));
        assert!(!glob("a\\*b", "axb"));
        assert!(glob("a\\?", "a?"));
        assert!(glob("*", ""));
        assert!(!glob("x", ""));
        let long = "a".repeat(100_000);
        assert!(!glob("*a*a*a*a*b", &long));
    }

    #[test]
    fn spec_strings_parse_validate_and_round_trip() {
        let s: RuleSpec = "error:INSERT INTO orders*:disk full: really;sqlstate=53100;times=1"
            .parse()
            .unwrap();
        assert_eq!(s.action, "error");
        assert_eq!(s.query, "INSERT INTO orders*");
        assert_eq!(s.message.as_deref(), Some("disk full: really"));
        assert_eq!(s.sqlstate.as_deref(), Some("53100"));
        assert_eq!(s.times, Some(1));
        let back: RuleSpec = s.to_spec_string().parse().unwrap();
        assert_eq!(back, s);
        let d: RuleSpec = "delay:SELECT\\:x*:250ms;probability=0.5".parse().unwrap();
        assert_eq!(d.query, "SELECT:x*");
        assert_eq!(
            d.compile().unwrap().action(),
            &Action::Delay(Duration::from_millis(250))
        );
        assert_eq!(d.to_spec_string().parse::<RuleSpec>().unwrap(), d);
        let drop: RuleSpec = "drop:INSERT*;user=bob".parse().unwrap();
        assert_eq!(drop.compile().unwrap().action(), &Action::Drop);
        for (bad, says) in [
            ("oops:X", "unknown action `oops`"),
            ("error:INSERT*", "needs a message"),
            ("error::m", "glob is empty"),
            ("delay:X", "needs a duration"),
            ("delay:X:soon", "not a duration"),
            ("delay:X:3s;sqlstate=53100", "does not apply"),
            ("error:X:m;sqlstate=5310", "five digits"),
            ("error:X:m;sqlstate=00000", "not 00000"),
            ("error:X:m;probability=2", "from 0 to 1"),
            ("error:X:m;times=two", "whole number"),
            ("error:X:m;times=1;times=2", "given twice"),
            ("error:X:m;color=red", "unknown option"),
            ("drop:X:y", "no argument"),
        ] {
            let e = bad.parse::<RuleSpec>().unwrap_err().to_string();
            assert!(
                e.contains(says),
                "`{bad}` gave `{e}`, expected it to say `{says}`"
            );
        }
    }

    fn set(rules: &[&str], seed: u64) -> RuleSet {
        let s = RuleSet::new(seed);
        for r in rules {
            s.add(r.parse().unwrap()).unwrap();
        }
        s
    }

    #[test]
    fn times_and_after_count_matches() {
        let s = set(&["error:INSERT*:x;after=1;times=2"], 0);
        let fired: Vec<bool> = (0..5)
            .map(|_| s.decide("INSERT INTO t", &ANY).terminal.is_some())
            .collect();
        assert_eq!(fired, vec![false, true, true, false, false]);
        assert!(s.decide("SELECT 1", &ANY).is_pass());
        let v = s.list();
        assert_eq!((v[0].matched, v[0].fired), (5, 2));
    }

    #[test]
    fn probability_is_reproducible_with_a_seed() {
        let run = |seed| {
            let s = set(&["error:*:x;probability=0.5"], seed);
            (0..64)
                .map(|_| s.decide("SELECT 1", &ANY).terminal.is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let hits = run(7).iter().filter(|b| **b).count();
        assert!((16..=48).contains(&hits), "{hits} of 64 at p=0.5");
    }

    #[test]
    fn delays_accumulate_and_the_first_terminal_rule_wins() {
        let s = set(
            &[
                "delay:INSERT*:1s",
                "drop:INSERT*;user=alice",
                "error:INSERT*:a",
                "error:*:b",
            ],
            0,
        );
        let d = s.decide("/* svc */ INSERT INTO t", &ANY);
        assert_eq!(d.delays.len(), 1);
        let t = d.terminal.unwrap();
        assert_eq!(
            t.action,
            Action::Error {
                message: "a".into(),
                sqlstate: "XX000".into()
            }
        );
        assert_eq!(&*t.rule, "error:INSERT*:a");
        assert!(s.remove(3));
        assert!(!s.remove(3));
        assert_eq!(
            s.decide("INSERT", &ANY).terminal.unwrap().rule.as_ref(),
            "error:*:b"
        );
        assert_eq!(s.clear(), 3);
        assert!(s.is_empty());
    }

    #[test]
    fn rules_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("r.json");
        std::fs::write(
            &json,
            r#"[{"action":"error","query":"INSERT*","message":"disk full","times":1}]"#,
        )
        .unwrap();
        assert_eq!(
            load_file(&json).unwrap()[0].message.as_deref(),
            Some("disk full")
        );
        std::fs::write(&json, r#"{"faults":[{"action":"drop","query":"X*"}]}"#).unwrap();
        assert_eq!(load_file(&json).unwrap()[0].action, "drop");
        std::fs::write(&json, r#"[{"action":"drop","query":"X*","colour":1}]"#).unwrap();
        assert!(load_file(&json).unwrap_err().to_string().contains("r.json"));
        let toml = dir.path().join("r.toml");
        std::fs::write(
            &toml,
            "[[fault]]\naction = \"delay\"\nquery = \"SELECT*\"\ndelay = \"3s\"\n",
        )
        .unwrap();
        assert_eq!(load_file(&toml).unwrap()[0].delay.as_deref(), Some("3s"));
        std::fs::write(
            &toml,
            "[[fault]]\naction = \"delay\"\nquery = \"SELECT*\"\n",
        )
        .unwrap();
        assert!(
            load_file(&toml)
                .unwrap_err()
                .to_string()
                .contains("needs a duration")
        );
    }
}
