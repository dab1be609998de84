//! The harness commands from any language: `record` + `mark` + `assert` on a recording with
//! exit codes 0/1/2 and the JSON report, `watch --until`, `--where` on a live run and the
//! nested envelope.

mod harness;
mod support;

use std::process::{Child, Stdio};
use std::time::Duration;

use harness::{assert_on, dsn, parse_jsonl, record, run_expecting, sql, stderr, stdout, walwatch};
use serde_json::Value;

fn stop(mut child: Child) {
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = support::wait_until("walwatch to exit", Duration::from_secs(30), || {
        child.try_wait().ok().flatten()
    });
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
}

#[test]
fn record_mark_and_assert_with_exit_codes_and_reports() {
    let t = support::unique_name("rec");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, status text NOT NULL DEFAULT 'new');"
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.jsonl");
    let recorder = record(&t, &file, &dir.path().join("ready"));

    sql(&format!("INSERT INTO {t} VALUES (1, 'paid');"));
    let ins1 = format!(r#"table == "{t}" && op == "INSERT" && data.id == 1"#);
    // The row was committed before the call: `--since start` looks back for it.
    let out = assert_on(
        "eventually",
        &file,
        &["--within", "20s", "--since", "start", "--where", &ins1],
        0,
    );
    assert_eq!(stdout(&out), "", "text reports stay off stdout on success");

    // Fails at the deadline with the near miss and the last events of the table.
    let ins2 = format!(r#"table == "{t}" && op == "INSERT" && data.id == 2"#);
    let out = assert_on(
        "eventually",
        &file,
        &["--within", "300ms", "--since", "start", "--where", &ins2],
        1,
    );
    let err = stderr(&out);
    assert!(err.contains("assertion eventually failed"), "{err}");
    assert!(err.contains("data.id == 2  (data.id is 1)"), "{err}");
    assert!(err.contains(&format!("last events on {t}")), "{err}");

    // A mark, then nothing: never holds (fenced), count is 0.
    run_expecting(
        &[
            "mark",
            "--dsn",
            &dsn(),
            "--input",
            file.to_str().unwrap(),
            "fault-start",
        ],
        0,
    );
    let any_insert = format!(r#"table == "{t}" && op == "INSERT""#);
    assert_on(
        "never",
        &file,
        &["--since", "fault-start", "--where", &any_insert],
        0,
    );

    // A change committed just before the fence violates never: the fence makes it seen.
    sql(&format!("INSERT INTO {t} VALUES (3);"));
    let out = assert_on(
        "never",
        &file,
        &[
            "--since",
            "fault-start",
            "--where",
            &any_insert,
            "--report",
            "json",
        ],
        1,
    );
    let report: Value = serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("--report json is one JSON object ({e}): {}", stdout(&out)));
    assert_eq!(report["passed"], false, "{report}");
    assert_eq!(report["assertion"], "never");
    assert_eq!(report["matches"][0]["event"]["data"]["id"], 3, "{report}");

    assert_on(
        "count",
        &file,
        &[
            "--since",
            "fault-start",
            "--where",
            &any_insert,
            "--equals",
            "1",
        ],
        0,
    );
    let out = assert_on(
        "count",
        &file,
        &["--where", &any_insert, "--equals", "3", "--report", "json"],
        1,
    );
    let report: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(
        report["outcome"],
        "counted 2 matching event(s), expected exactly 3"
    );

    // Errors are exit 2: a type error, a syntax error, an unknown mark.
    let out = assert_on(
        "eventually",
        &file,
        &[
            "--within",
            "5s",
            "--since",
            "start",
            "--where",
            r#"data.id == "1""#,
        ],
        2,
    );
    assert!(
        stderr(&out).contains("compares a number (1) with a string"),
        "{}",
        stderr(&out)
    );
    let out = assert_on("never", &file, &["--where", "op =="], 2);
    assert!(stderr(&out).contains("line 1, column"), "{}", stderr(&out));
    let out = assert_on(
        "never",
        &file,
        &["--since", "nope", "--where", &any_insert],
        2,
    );
    assert!(stderr(&out).contains("no mark `nope`"), "{}", stderr(&out));

    // A window of the next 300 ms, fenced at both ends: nothing is inserted in it.
    assert_on(
        "never",
        &file,
        &["--during", "300ms", "--where", &any_insert],
        0,
    );

    stop(recorder);
    // The recording holds the changes and walwatch's markers, all valid events.
    let events = parse_jsonl(&std::fs::read(&file).unwrap());
    let marks = events
        .iter()
        .filter(|e| {
            e["data"]["prefix"]
                .as_str()
                .is_some_and(|p| p.starts_with("walwatch.mark@"))
        })
        .count();
    assert_eq!(marks, 1, "one mark recorded, for this recorder alone");
    assert!(events.iter().any(|e| {
        e["data"]["prefix"]
            .as_str()
            .is_some_and(|p| p.starts_with("walwatch.fence"))
    }));
    // Without the recorder, a fenced assertion says the recorder is gone (exit 2)...
    let out = assert_on("never", &file, &["--where", &any_insert], 2);
    assert!(
        stderr(&out).contains("the recorder is gone"),
        "{}",
        stderr(&out)
    );
    // ...and --no-fence checks the finished recording as it is.
    run_expecting(
        &[
            "assert",
            "count",
            "--no-fence",
            "--input",
            file.to_str().unwrap(),
            "--where",
            &any_insert,
            "--equals",
            "2",
        ],
        0,
    );
}

#[test]
fn watch_until_exits_on_the_first_match_or_fails_at_the_deadline() {
    let t = support::unique_name("until");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let until = format!(r#"table == "{t}" && op == "INSERT" && data.id == 2"#);
    let child = walwatch()
        .args([
            "watch",
            "--dsn",
            &dsn(),
            "--tables",
            &t,
            "--format",
            "json",
            "--envelope",
            "nested",
            "--until",
            &until,
            "--within",
            "60s",
            "--ready-file",
        ])
        .arg(&ready)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walwatch watch");
    support::wait_until("the ready file", Duration::from_secs(30), || {
        ready.exists().then_some(())
    });
    sql(&format!(
        "INSERT INTO {t} VALUES (1); INSERT INTO {t} VALUES (2);"
    ));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "stderr: {}", stderr(&out));
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let inserts: Vec<&Value> = lines
        .iter()
        .filter(|l| l["data"]["op"] == "INSERT")
        .collect();
    assert!(inserts.len() >= 2, "both inserts shown: {lines:?}");
    for l in &lines {
        assert_eq!(l["type"], "wal");
        assert!(l.get("op").is_none(), "nested envelope: {l}");
        // The inner object is a native event minus `type`: valid once `type` is put back.
        let mut inner = l["data"].clone();
        inner["type"] = Value::from("wal");
        harness::assert_valid(&inner);
    }
    assert_eq!(inserts[1]["data"]["data"]["id"], 2);

    // Nothing matches: exit 1 at the deadline, with the report on stderr.
    let out = run_expecting(
        &[
            "watch",
            "--dsn",
            &dsn(),
            "--tables",
            &t,
            "--until",
            &until,
            "--within",
            "1s",
        ],
        1,
    );
    assert!(
        stderr(&out).contains("no matching event arrived within 1.0s"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn where_filters_a_live_run_after_the_fast_paths() {
    let t = support::unique_name("wh");
    let slot = support::unique_name("slot");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, status text);"
    ));
    harness::create_slot(&slot, &t);
    sql(&format!(
        "INSERT INTO {t} VALUES (1, 'new'), (2, 'new');
         UPDATE {t} SET status = 'shipped' WHERE id = 2;
         UPDATE {t} SET status = 'lost' WHERE id = 1;"
    ));
    let events = harness::drain(
        &slot,
        &t,
        &["--where", r#"op == "UPDATE" && data.status == "shipped""#],
    );
    let changes = harness::changes(&events);
    assert_eq!(changes.len(), 1, "{events:?}");
    assert_eq!(changes[0]["data"]["id"], 2);
}

#[test]
fn a_bad_expression_is_reported_before_any_connection() {
    // Port 1: nothing listens, so an error about the expression proves no connection was tried.
    let out = run_expecting(
        &[
            "--dsn",
            "postgres://u@127.0.0.1:1/db",
            "--tables",
            "t",
            "--where",
            r#"op == "INSERT" && tabel == "x""#,
        ],
        2,
    );
    let err = stderr(&out);
    assert!(err.contains("unknown variable `tabel`"), "{err}");
    assert!(err.contains("line 1, column 19"), "{err}");
}
