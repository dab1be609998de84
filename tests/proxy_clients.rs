//! The fault proxy with clients whose protocol code is not ours, against a real server:
//! psycopg 3 (libpq underneath: its binary build) meets each rule kind, errors outside and
//! inside transaction blocks, prepared statements and pipeline mode; and passwords typed
//! through a running `walwatch proxy` (statements, logins) never reach its events file or its
//! log, even at `-vv`.
//!
//! psycopg comes from the venv `tests/install-pytools.sh` makes (tests/run.sh exports its
//! python as WALWATCH_PYTHON); without WALWATCH_PYTHON these tests fail, saying how to set it.
//! The Python half is tests/python/proxy_client.py: it only reports what psycopg saw, as JSON;
//! every assertion is here.

mod harness;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{TEST_DATABASE, TEST_PASSWORD};
use walwatch::proxy::{self, Proxy, ProxyAction};

/// The python with psycopg: WALWATCH_PYTHON, required.
fn python() -> PathBuf {
    let Some(python) = std::env::var_os("WALWATCH_PYTHON").filter(|p| !p.is_empty()) else {
        panic!(
            "WALWATCH_PYTHON is not set: these tests drive psycopg 3 through the proxy and need \
             a python that has it. Run them as\n    \
             WALWATCH_PYTHON=$(bash tests/install-pytools.sh) cargo test --test proxy_clients\n\
             (tests/install-pytools.sh makes the venv; tests/run.sh sets WALWATCH_PYTHON itself)"
        );
    };
    let python = PathBuf::from(python);
    let out = Command::new(&python)
        .args(["-c", "import psycopg; print(psycopg.__version__)"])
        .output()
        .unwrap_or_else(|e| panic!("WALWATCH_PYTHON={}: cannot run it: {e}", python.display()));
    assert!(
        out.status.success(),
        "WALWATCH_PYTHON={} has no psycopg ({}): point it at the venv of \
         `bash tests/install-pytools.sh`, which installs psycopg",
        python.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    python
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn upstream() -> String {
    format!("127.0.0.1:{}", support::cluster().port())
}

/// A fresh table `(id int primary key)` owned by the test role.
fn table(prefix: &str) -> String {
    let t = support::unique_name(prefix);
    harness::sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    t
}

/// `report[path...]`, failing with the whole report when it is missing.
fn at<'a>(report: &'a Value, path: &[&str]) -> &'a Value {
    let mut v = report;
    for p in path {
        v = v.get(*p).unwrap_or_else(|| {
            panic!("no {path:?} in psycopg's report:\n{report:#}");
        });
    }
    v
}

/// Asserts that an `attempt()` of the script raised the injected `disk full` (53100), as
/// psycopg's own class for that SQLSTATE.
fn assert_disk_full(report: &Value, path: &[&str]) {
    assert_raised_disk_full(at(report, path), &format!("{path:?}"));
}

fn assert_raised_disk_full(attempt: &Value, path: &str) {
    let e = attempt
        .get("error")
        .unwrap_or_else(|| panic!("{path} should have failed with the injected error: {attempt}"));
    assert_eq!(e["class"], "DiskFull", "{path:?}: {e}");
    assert_eq!(e["sqlstate"], "53100", "{path:?}: {e}");
    assert_eq!(e["message_primary"], "disk full", "{path:?}: {e}");
    assert_eq!(e["severity"], "ERROR", "{path:?}: {e}");
    assert_eq!(e["lookup_matches"], true, "{path:?}: {e}");
}

fn assert_ok(report: &Value, path: &[&str], want: Value) {
    assert_eq!(
        at(report, path).get("ok"),
        Some(&want),
        "{path:?}:\n{report:#}"
    );
}

/// What became of each of a pipeline's three statements, whenever psycopg raised it (it reads
/// results as they arrive, so an error shows while a later statement is being queued, or at
/// the Sync: that depends on timing, not on the proxy): `ok` with its status, `failed` with its
/// SQLSTATE, or `no result` (the failed one, and those the server skipped after it, up to the
/// Sync).
fn pipeline_fates(run: &Value) -> (Vec<String>, Vec<String>) {
    let steps = run["steps"].as_array().unwrap();
    let mut fates = vec![String::from("no result"); 3];
    let mut errors = Vec::new();
    for s in steps {
        for key in ["error", "sync_error", "exit_error", "result_error"] {
            if let Some(e) = s.get(key)
                && let Some(code) = e["sqlstate"].as_str()
            {
                errors.push(code.to_string());
            }
        }
        if let (Some(k), Some(status)) = (s["result"].as_u64(), s["status"].as_str()) {
            fates[k as usize] = format!("ok {status}");
        }
    }
    (fates, errors)
}

#[test]
fn psycopg_meets_every_rule_kind_through_the_proxy() {
    let python = python();
    let cluster = support::cluster();
    let t = table("px_psycopg");
    let rt = runtime();
    let slow_ms = 600u64;
    let p = start_psycopg_proxy(&rt, &t, slow_ms);
    let r = run_psycopg_script(&python, cluster, &p, &t, slow_ms);
    assert_every_scenario_ran(&r);
    check_error_outside_a_block(&r);
    check_error_inside_a_block(&r);
    check_prepared_statements(&r, &t);
    check_pipelines(&r);
    check_delay(&r, slow_ms);
    check_drop(&r);
    check_psycopg_events(&p, &t, slow_ms);
}

/// The proxy of the psycopg test, in front of the shared cluster: an error for
/// `INSERT INTO {t} SELECT…` (always) and `UPDATE {t}…` (after 2), a delay of `slow_ms` for
/// `SELECT 'slow'…`, a drop for `SELECT 'drop me'…`.
fn start_psycopg_proxy(rt: &tokio::runtime::Runtime, t: &str, slow_ms: u64) -> Proxy {
    rt.block_on(
        Proxy::builder(upstream())
            .fault(proxy::error(&format!("INSERT INTO {t} SELECT*"), "disk full").sqlstate("53100"))
            .fault(
                proxy::error(&format!("UPDATE {t}*"), "disk full")
                    .sqlstate("53100")
                    .after(2),
            )
            .fault(proxy::delay(
                "SELECT 'slow'*",
                Duration::from_millis(slow_ms),
            ))
            .fault(proxy::drop("SELECT 'drop me'*"))
            .start(),
    )
    .expect("the proxy starts")
}

/// Runs tests/python/proxy_client.py through the proxy `p` (and directly, for comparison) and
/// returns its JSON report.
fn run_psycopg_script(
    python: &Path,
    cluster: &support::SharedCluster,
    p: &Proxy,
    t: &str,
    slow_ms: u64,
) -> Value {
    let config = json!({
        "proxy": format!(
            "postgresql://walwatch:{TEST_PASSWORD}@{}/{TEST_DATABASE}?application_name=psycopg",
            p.addr()
        ),
        "direct": cluster.dsn(TEST_DATABASE),
        "table": t,
        "slow_ms": slow_ms,
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/proxy_client.py");
    let mut cmd = Command::new(python);
    cmd.arg(&script).arg(config.to_string());
    let out = support::run_with_deadline(
        cmd,
        Duration::from_secs(120),
        "tests/python/proxy_client.py",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the script failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "the script's output is not JSON ({e}):\n{}\n{stderr}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// No scenario of the script crashed, and psycopg ran on libpq.
fn assert_every_scenario_ran(r: &Value) {
    for scenario in [
        "error_outside_a_block",
        "error_inside_a_block",
        "prepared_statements",
        "pipelines",
        "delay",
        "drop",
    ] {
        assert!(
            r[scenario].get("crashed").is_none(),
            "{scenario} crashed:\n{}",
            r[scenario]["crashed"].as_str().unwrap_or_default()
        );
    }
    // psycopg's libpq-based implementation, not its pure-Python one without a libpq.
    assert_eq!(r["libpq_impl"], "binary", "{r:#}");
}

/// Outside a block: the injected error, as psycopg's class for 53100, in both protocols;
/// the connection idle and usable after each.
fn check_error_outside_a_block(r: &Value) {
    let o = &["error_outside_a_block"];
    let k = |key: &'static str| [o[0], key];
    assert_disk_full(r, &k("extended"));
    assert_eq!(at(r, &k("status_after_extended")), "IDLE");
    assert_ok(r, &k("select_after_extended"), json!(42));
    assert_disk_full(r, &k("simple"));
    assert_ok(r, &k("select_after_simple"), json!(42));
    assert_ok(r, &k("good_insert"), json!("INSERT 0 1"));
    assert_eq!(at(r, &k("rows")), 1, "only the INSERT no rule matched ran");
}

/// Inside a block: aborted as by a real error; ROLLBACK ends it; then all works again.
fn check_error_inside_a_block(r: &Value) {
    let i = |key: &'static str| ["error_inside_a_block", key];
    assert_ok(r, &i("first_insert"), json!("INSERT 0 1"));
    assert_disk_full(r, &i("failing_insert"));
    assert_eq!(at(r, &i("status_after_error")), "INERROR");
    let aborted = &at(r, &i("statement_in_aborted_block"))["error"];
    assert_eq!(aborted["class"], "InFailedSqlTransaction", "{r:#}");
    assert_eq!(aborted["sqlstate"], "25P02", "{r:#}");
    assert_ok(r, &i("rollback"), json!("ROLLBACK"));
    assert_eq!(at(r, &i("status_after_rollback")), "IDLE");
    assert_ok(r, &i("select_after_rollback"), json!(42));
    assert_ok(r, &i("insert_after_rollback"), json!("INSERT 0 1"));
    assert_eq!(
        at(r, &i("rows_10_11")),
        0,
        "the block was rolled back whole"
    );
    assert_eq!(at(r, &i("rows_12")), 1);
    assert_ok(r, &i("implicit_first_insert"), json!("INSERT 0 1"));
    assert_disk_full(r, &i("implicit_failing_insert"));
    assert_eq!(at(r, &i("implicit_status_after_error")), "INERROR");
    assert_ok(r, &i("implicit_rollback"), Value::Null);
    assert_eq!(at(r, &i("implicit_status_after_rollback")), "IDLE");
    assert_ok(r, &i("implicit_insert_after_rollback"), json!("INSERT 0 1"));
    assert_ok(r, &i("implicit_commit"), Value::Null);
    assert_eq!(at(r, &i("rows_13_14")), 0);
    assert_eq!(at(r, &i("rows_15")), 1);
}

/// Prepared statements: the error on each Execute of the named statement, the other
/// prepared statement untouched, and the server really holding both.
fn check_prepared_statements(r: &Value, t: &str) {
    let ps = &r["prepared_statements"];
    let failing = at(ps, &["failing"]).as_array().unwrap();
    assert_eq!(failing.len(), 4);
    for (n, a) in failing.iter().enumerate() {
        assert_raised_disk_full(a, &format!("prepared execute {n}"));
    }
    let passing = at(ps, &["passing"]).as_array().unwrap();
    assert_eq!(passing.len(), 4);
    for a in passing {
        assert_eq!(a["ok"], "INSERT 0 1", "{ps:#}");
    }
    // prepare=True made named server-side statements: the passing one prepared once and
    // executed four times; the failing one prepared anew after each failure, which is what
    // psycopg does after a real error too.
    let prepared = |key: &str, text: &str| {
        ps[key]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s.as_str() == Some(text))
            .count()
    };
    let failing_text = format!("INSERT INTO {t} SELECT $1");
    assert_eq!(
        prepared("server_prepared", &format!("INSERT INTO {t} VALUES ($1)")),
        1,
        "{ps:#}"
    );
    assert_eq!(prepared("server_prepared", &failing_text), 4, "{ps:#}");
    let direct_failing = ps["direct_failing"].as_array().unwrap();
    assert!(
        direct_failing
            .iter()
            .all(|a| a["error"]["sqlstate"] == "22012"),
        "{ps:#}"
    );
    assert_eq!(
        prepared(
            "direct_server_prepared",
            &format!("INSERT INTO {t} SELECT $1 / 0")
        ),
        4,
        "psycopg re-prepares after a real error as well: {ps:#}"
    );
    // Executed from psycopg's cache: the rule (after=2) fires on the third Execute of the
    // statement prepared at the first, and on the fourth.
    let cached = ps["cached"].as_array().unwrap();
    assert_eq!(cached[0]["ok"], "UPDATE 1", "{ps:#}");
    assert_eq!(cached[1]["ok"], "UPDATE 1", "{ps:#}");
    assert_raised_disk_full(&cached[2], "cached execute 3");
    assert_raised_disk_full(&cached[3], "cached execute 4");
    assert_ok(ps, &["select_after"], json!(42));
    assert_eq!(ps["rows_failing"], 0);
    assert_eq!(ps["rows_passing"], 4);
}

/// Pipeline mode: the injected error hits the second statement only, and the client sees
/// what it sees with a real error in that place.
fn check_pipelines(r: &Value) {
    let (pp, direct) = (&r["pipelines"]["proxy"], &r["pipelines"]["direct"]);
    let (fates, errors) = pipeline_fates(pp);
    let (direct_fates, direct_errors) = pipeline_fates(direct);
    assert_eq!(
        errors.iter().filter(|c| *c == "53100").count(),
        1,
        "the injected error, once: {pp:#}"
    );
    assert_eq!(
        direct_errors.iter().filter(|c| *c == "22012").count(),
        1,
        "{direct:#}"
    );
    assert_eq!(fates[0], "ok INSERT 0 1", "{pp:#}");
    assert_eq!(
        fates, direct_fates,
        "proxy (left), a real error (right): {r:#}"
    );
    assert_eq!(
        pp["rows"], direct["rows"],
        "the same statements took effect: {r:#}"
    );
    // None: the pipeline's statements up to the Sync were one implicit transaction, which
    // the error rolled back (the first INSERT's row too).
    assert_eq!(pp["rows"], json!([0, 0, 0]), "{pp:#}");
    assert_eq!(pp["status_after"], "IDLE");
    assert_ok(pp, &["select_after"], json!(42));
    assert_eq!(pp["second_pipeline"], json!([1, 2, 3]), "{pp:#}");
}

/// Delay: held at least the rule's delay, in both protocols; other statements are not.
fn check_delay(r: &Value, slow_ms: u64) {
    let d = &r["delay"];
    assert_ok(d, &["slow"], json!("slow"));
    assert_ok(d, &["fast"], json!("fast"));
    assert_ok(d, &["slow_extended"], json!("slow"));
    for key in ["slow_ms", "slow_extended_ms"] {
        let ms = d[key].as_f64().unwrap();
        assert!(
            ms >= slow_ms as f64,
            "{key} = {ms} ms, under the {slow_ms} ms delay: {d}"
        );
    }
    let fast = d["fast_ms"].as_f64().unwrap();
    assert!(
        fast < (slow_ms / 2) as f64,
        "an unmatched statement took {fast} ms: {d}"
    );
}

/// Drop: psycopg sees the connection closed (OperationalError), not a server error; a new
/// connection works.
fn check_drop(r: &Value) {
    let dr = &r["drop"];
    assert_ok(dr, &["before"], json!(42));
    let e = &dr["dropped"]["error"];
    assert_eq!(e["is_operational"], true, "{dr:#}");
    assert_eq!(e["class"], "OperationalError", "{dr:#}");
    assert!(e["sqlstate"].is_null(), "no server error: {dr:#}");
    assert_eq!(dr["closed_after"], true, "{dr:#}");
    assert!(dr["next_on_same"].get("error").is_some(), "{dr:#}");
    assert_ok(dr, &["new_connection"], json!(42));
}

/// The proxy's side: one event per fired rule, with what psycopg saw.
fn check_psycopg_events(p: &Proxy, t: &str, slow_ms: u64) {
    let events = p.events().all();
    let of = |action: ProxyAction| events.iter().filter(|e| e.data.action == action).count();
    // 2 outside a block, 2 inside, 4 + 2 prepared, 1 in the pipeline.
    assert_eq!(of(ProxyAction::Error), 11, "{events:#?}");
    assert_eq!(of(ProxyAction::Delay), 2, "{events:#?}");
    assert_eq!(of(ProxyAction::Drop), 1, "{events:#?}");
    let prepared = format!("INSERT INTO {t} SELECT $1");
    assert!(
        events
            .iter()
            .filter(|e| e.data.query.as_deref() == Some(&prepared))
            .count()
            >= 4
    );
    for e in &events {
        assert_eq!(&*e.data.application_name, "psycopg");
        if e.data.action == ProxyAction::Delay {
            assert_eq!(e.data.duration_ms, Some(slow_ms as f64));
        }
    }
}

/// Waits for a line containing `needle` in the file at `path`.
fn wait_for_line(path: &Path, needle: &str, deadline: Duration) -> String {
    support::wait_until_or(
        &format!("`{needle}` in {}", path.display()),
        deadline,
        || std::fs::read_to_string(path).unwrap_or_default(),
        || {
            std::fs::read_to_string(path)
                .ok()?
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_string)
        },
    )
}

#[test]
fn passwords_through_a_running_proxy_reach_neither_its_events_nor_its_log() {
    let cluster = support::cluster();
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let log = dir.path().join("proxy.log");
    let pw = Passwords::new(support::unique_name("pw"));
    create_admin_role(cluster, &pw);
    let port = support::free_port();
    let mut proxy = start_password_proxy(port, &pw, &events, &log);
    type_passwords_in_psql(cluster, port, &pw);
    let rt = runtime();
    type_passwords_in_tokio_postgres(&rt, port, &pw);
    // Every statement above was relayed and completed: its pass event is written after its
    // answer, so wait for the last one.
    let dollar = &pw.dollar;
    let last = format!("CREATE ROLE {dollar} PASSWORD '[redacted]'");
    wait_for_line(&events, &last, Duration::from_secs(10));
    let _ = proxy.0.kill();
    let _ = proxy.0.wait();

    let text = std::fs::read_to_string(&events).unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    check_no_password_leaked(&pw, &text, &stderr);
    check_statements_redacted(&pw, &text, last);
    drop_password_roles(cluster, &pw);
}

/// The roles of the passwords test, and the passwords it types.
struct Passwords {
    tag: String,
    admin: String,
    created: String,
    escaped: String,
    dollar: String,
    denied: String,
}

impl Passwords {
    fn new(tag: String) -> Self {
        Passwords {
            admin: format!("{tag}_admin"),
            created: format!("{tag}_created"),
            escaped: format!("{tag}_escaped"),
            dollar: format!("{tag}_dollar"),
            denied: format!("{tag}_denied"),
            tag,
        }
    }

    /// Each password is distinct, so a leak names where it came from.
    fn secret(&self, what: &str) -> String {
        let tag = &self.tag;
        format!("secret-{what}-{tag}")
    }
}

/// A role that logs in with SCRAM (the cluster's default for TCP) and may create roles.
fn create_admin_role(cluster: &support::SharedCluster, pw: &Passwords) {
    let admin = &pw.admin;
    cluster
        .psql(
            "postgres",
            &format!(
                "SET password_encryption = 'scram-sha-256';
                 CREATE ROLE {admin} LOGIN CREATEROLE PASSWORD '{}';",
                pw.secret("login")
            ),
        )
        .unwrap();
}

/// Starts `walwatch -vv proxy` on `port`, logging queries, writing events to `events` and its
/// stderr to `log`, with an error rule for creating the denied role; returns once it listens.
fn start_password_proxy(
    port: u16,
    pw: &Passwords,
    events: &Path,
    log: &Path,
) -> harness::KillOnDrop {
    let denied = &pw.denied;
    let child = harness::walwatch()
        .args([
            "-vv",
            "proxy",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--upstream",
            &upstream(),
            "--log-queries",
            "--fault",
            &format!("error:CREATE ROLE {denied}*:no more roles"),
            "--events",
        ])
        .arg(events)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let proxy = harness::KillOnDrop(child);
    wait_for_line(log, "listening on", Duration::from_secs(30));
    proxy
}

/// psql: the simple protocol, logged in as `user` with `password`.
fn psql_through_proxy(
    cluster: &support::SharedCluster,
    port: u16,
    user: &str,
    password: &str,
    sql: &str,
) -> Output {
    let mut cmd = Command::new(cluster.bin_dir().join("psql"));
    cmd.args(["-X", "-At", "-c", sql])
        .arg(format!(
            "host=127.0.0.1 port={port} user={user} dbname={TEST_DATABASE} sslmode=disable"
        ))
        .env("PGPASSWORD", password)
        .env("LC_MESSAGES", "C");
    support::run_with_deadline(cmd, Duration::from_secs(30), "psql through the proxy")
}

/// The trimmed stdout of a psql that must have succeeded.
fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Passwords in statements sent with psql (CREATE ROLE, ALTER ROLE, an escaped literal, one
/// refused by the proxy's rule), and at login with md5 and clear text.
fn type_passwords_in_psql(cluster: &support::SharedCluster, port: u16, pw: &Passwords) {
    let Passwords {
        admin,
        created,
        escaped,
        denied,
        ..
    } = pw;
    let psql = |user: &str, password: &str, sql: &str| {
        psql_through_proxy(cluster, port, user, password, sql)
    };
    let login = pw.secret("login");
    ok(psql(
        admin,
        &login,
        &format!("CREATE ROLE {created} PASSWORD '{}'", pw.secret("create")),
    ));
    ok(psql(
        admin,
        &login,
        &format!("ALTER ROLE {created} PASSWORD '{}'", pw.secret("alter")),
    ));
    ok(psql(
        admin,
        &login,
        &format!(
            "CREATE ROLE {escaped} LOGIN ENCRYPTED PASSWORD E'{}\\'s'",
            pw.secret("escape")
        ),
    ));
    let refused = psql(
        admin,
        &login,
        &format!("CREATE ROLE {denied} PASSWORD '{}'", pw.secret("denied")),
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("no more roles"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    // The other password methods at login: md5, and `password`, which sends it in clear text.
    for user in ["walwatch_md5", "walwatch_clear"] {
        assert_eq!(ok(psql(user, TEST_PASSWORD, "SELECT current_user")), user);
    }
}

/// tokio-postgres: the extended protocol (the password literal is in the Parse).
fn type_passwords_in_tokio_postgres(rt: &tokio::runtime::Runtime, port: u16, pw: &Passwords) {
    let Passwords {
        admin,
        created,
        dollar,
        ..
    } = pw;
    let login = pw.secret("login");
    rt.block_on(async {
        let dsn = format!(
            "host=127.0.0.1 port={port} user={admin} password={login} dbname={TEST_DATABASE}"
        );
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .expect("tokio-postgres through the proxy");
        tokio::spawn(conn);
        client
            .execute(
                &format!(
                    "ALTER ROLE {created} WITH PASSWORD '{}'",
                    pw.secret("extended")
                ),
                &[],
            )
            .await
            .unwrap();
        client
            .execute(
                &format!(
                    "CREATE ROLE {dollar} PASSWORD $pw${}$pw$",
                    pw.secret("dollar")
                ),
                &[],
            )
            .await
            .unwrap();
    });
}

/// No password typed, at login or in a statement, is in the events file `text` or the proxy's
/// `stderr`.
fn check_no_password_leaked(pw: &Passwords, text: &str, stderr: &str) {
    // At -vv (every target at trace) the proxy logs no statement and no startup packet: the
    // log is checked so that it stays so.
    assert!(stderr.contains("INFO proxy listening on"), "{stderr}");
    for what in [
        "login", "create", "alter", "escape", "denied", "extended", "dollar",
    ] {
        let s = pw.secret(what);
        for (name, body) in [("the events file", text), ("the proxy's stderr", stderr)] {
            if let Some(line) = body.lines().find(|l| l.contains(&s)) {
                panic!("the {what} password is in {name}: {line}");
            }
        }
    }
    for (name, body) in [("the events file", text), ("the proxy's stderr", stderr)] {
        if let Some(line) = body.lines().find(|l| l.contains(TEST_PASSWORD)) {
            panic!("a login password is in {name}: {line}");
        }
    }
}

/// And the statements are there, redacted, in the events file `text`; `last` is the last
/// statement's redacted text.
fn check_statements_redacted(pw: &Passwords, text: &str, last: String) {
    let Passwords {
        created,
        escaped,
        denied,
        ..
    } = pw;
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let query = |action: &str, q: String| {
        assert!(
            lines
                .iter()
                .any(|l| l["data"]["action"] == action && l["data"]["query"] == q.as_str()),
            "no {action} event for {q:?} in:\n{text}"
        );
    };
    query(
        "pass",
        format!("CREATE ROLE {created} PASSWORD '[redacted]'"),
    );
    query(
        "pass",
        format!("ALTER ROLE {created} PASSWORD '[redacted]'"),
    );
    query(
        "pass",
        format!("CREATE ROLE {escaped} LOGIN ENCRYPTED PASSWORD '[redacted]'"),
    );
    query(
        "pass",
        format!("ALTER ROLE {created} WITH PASSWORD '[redacted]'"),
    );
    query("pass", last);
    query(
        "error",
        format!("CREATE ROLE {denied} PASSWORD '[redacted]'"),
    );
}

/// Drops the roles the passwords test made.
fn drop_password_roles(cluster: &support::SharedCluster, pw: &Passwords) {
    let Passwords {
        admin,
        created,
        escaped,
        dollar,
        ..
    } = pw;
    let _ = cluster.psql(
        "postgres",
        &format!(
            "DROP ROLE IF EXISTS {created}; DROP ROLE IF EXISTS {escaped}; \
             DROP ROLE IF EXISTS {dollar}; DROP ROLE IF EXISTS {admin};"
        ),
    );
}
