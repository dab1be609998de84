//! What a test suite sharing one database (and one recorder) needs from the harness commands:
//! walwatch's own fence and mark transactions are invisible to every predicate and count, marks
//! are the recorder's that they were made for, `eventually` looks after the call, predicates
//! read the recording's envelope, a recorder that is gone fails an assertion at once, and
//! `record --exit-with-parent` ends with the process that started it.

mod harness;
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::{KillOnDrop, assert_on, dsn, parse_jsonl, run_expecting, sql, stderr, walwatch};
use serde_json::Value;

/// A recorder of `table` into `dir/NAME.jsonl` with `extra` options, ready when this returns.
fn recorder(table: &str, dir: &Path, name: &str, extra: &[&str]) -> (KillOnDrop, PathBuf) {
    let file = dir.join(format!("{name}.jsonl"));
    let child = harness::record_with(table, &file, &dir.join(format!("{name}.ready")), extra);
    (KillOnDrop(child), file)
}

/// The slot a recording's recorder streams from: its first line says.
fn recorder_slot(file: &Path) -> String {
    let first = parse_jsonl(&std::fs::read(file).unwrap())
        .into_iter()
        .next()
        .expect("a recorder line");
    assert_eq!(first["data"]["prefix"], "walwatch.recorder", "{first}");
    let info: Value = serde_json::from_str(first["data"]["content"].as_str().unwrap()).unwrap();
    info["slot"].as_str().unwrap().to_string()
}

fn mark(name: &str, args: &[&str]) -> String {
    let d = dsn();
    let mut all = vec!["mark", "--dsn", &d, name];
    all.extend_from_slice(args);
    let out = run_expecting(&all, 0);
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn slot_exists(slot: &str) -> bool {
    sql(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
    ))
    .trim()
        == "1"
}

#[test]
fn walwatchs_own_fences_and_marks_match_no_predicate_and_no_count() {
    let t = support::unique_name("own");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let dir = tempfile::tempdir().unwrap();
    let (_rec, file) = recorder(&t, dir.path(), "run", &[]);
    let file_arg = file.to_str().unwrap();
    let begin_or_commit = r#"op == "BEGIN" || op == "COMMIT""#;

    // No application traffic: the fences of the window itself are not a violation.
    assert_on(
        "never",
        &file,
        &["--during", "1s", "--where", begin_or_commit],
        0,
    );
    mark("m", &["--input", file_arg]);
    sql(&format!("INSERT INTO {t} VALUES (1);"));
    // Each assertion fences; none of those fences' transactions is counted by the next.
    for round in 0..3 {
        let out = assert_on(
            "count",
            &file,
            &[
                "--since",
                "m",
                "--where",
                r#"op == "COMMIT""#,
                "--equals",
                "1",
                "--report",
                "json",
            ],
            0,
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report["examined"], 3,
            "round {round}: BEGIN, INSERT, COMMIT: {report}"
        );
    }
    // A failing report's last events are the application's, not walwatch's.
    let out = assert_on(
        "never",
        &file,
        &[
            "--since",
            "m",
            "--where",
            begin_or_commit,
            "--report",
            "json",
        ],
        1,
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let recent: Vec<&str> = report["recent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event"]["op"].as_str().unwrap())
        .collect();
    assert_eq!(recent, ["BEGIN", "INSERT", "COMMIT"], "{report}");

    // In the recording, every marker stands alone: no BEGIN or COMMIT of walwatch's own.
    let events = parse_jsonl(&std::fs::read(&file).unwrap());
    let ops: Vec<&str> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
    let begins = ops.iter().filter(|o| **o == "BEGIN").count();
    assert_eq!(begins, 1, "only the INSERT's transaction: {ops:?}");
    let messages = ops.iter().filter(|o| **o == "MESSAGE").count();
    assert!(
        messages >= 8,
        "the recorder line, the mark and the fences: {ops:?}"
    );
}

#[test]
fn marks_are_the_recorders_they_were_made_for() {
    let t = support::unique_name("scope");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let dir = tempfile::tempdir().unwrap();
    let (_a, file_a) = recorder(&t, dir.path(), "a", &[]);
    let (_b, file_b) = recorder(&t, dir.path(), "b", &[]);
    let insert = format!(r#"table == "{t}" && op == "INSERT""#);

    // Test A marks, inserts; then test B marks (later) and inserts nothing.
    let lsn_a = mark("phase", &["--input", file_a.to_str().unwrap()]);
    sql(&format!("INSERT INTO {t} VALUES (1);"));
    mark("phase", &["--input", file_b.to_str().unwrap()]);
    // A still counts from its own mark, and says which mark it used.
    let out = assert_on(
        "count",
        &file_a,
        &[
            "--since", "phase", "--where", &insert, "--equals", "1", "--report", "json",
        ],
        0,
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let window = report["window"].as_str().unwrap();
    assert!(
        window.contains(&format!("after the latest mark `phase` ({lsn_a} at line")),
        "the report names the mark and its LSN {lsn_a}: {window}"
    );
    assert_on(
        "never",
        &file_b,
        &["--since", "phase", "--where", &insert],
        0,
    );

    // Each recording holds its own mark only.
    for (file, own) in [(&file_a, &lsn_a), (&file_b, &String::new())] {
        let slot = recorder_slot(file);
        let marks: Vec<Value> = parse_jsonl(&std::fs::read(file).unwrap())
            .into_iter()
            .filter(|e| e["data"]["content"] == "phase")
            .collect();
        assert_eq!(marks.len(), 1, "{}: {marks:?}", file.display());
        assert_eq!(marks[0]["data"]["prefix"], format!("walwatch.mark@{slot}"));
        if !own.is_empty() {
            assert_eq!(marks[0]["lsn"], own.as_str());
        }
    }

    // --recorder SLOT addresses a recorder by name; without either, every recorder sees it.
    mark("named", &["--recorder", &recorder_slot(&file_b)]);
    mark("everyone", &[]);
    for (file, named) in [(&file_a, 0), (&file_b, 1)] {
        assert_on(
            "count",
            file,
            &["--since", "everyone", "--where", "true", "--equals", "0"],
            0,
        );
        let events = parse_jsonl(&std::fs::read(file).unwrap());
        let n = events
            .iter()
            .filter(|e| e["data"]["content"] == "named")
            .count();
        assert_eq!(n, named, "{}", file.display());
    }
    let out = run_expecting(&["mark", "--dsn", &dsn(), "start"], 2);
    assert!(
        stderr(&out).contains("cannot be named `start`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn eventually_looks_after_the_call_unless_told_where_to_start() {
    let t = support::unique_name("after");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let dir = tempfile::tempdir().unwrap();
    let (_rec, file) = recorder(&t, dir.path(), "run", &[]);
    // An earlier test's row.
    mark("before", &["--input", file.to_str().unwrap()]);
    sql(&format!("INSERT INTO {t} VALUES (1);"));
    let insert = format!(r#"table == "{t}" && op == "INSERT""#);
    let out = assert_on(
        "eventually",
        &file,
        &["--within", "500ms", "--where", &insert],
        1,
    );
    assert!(stderr(&out).contains("after the call"), "{}", stderr(&out));
    assert_on(
        "eventually",
        &file,
        &["--since", "start", "--where", &insert],
        0,
    );
    assert_on(
        "eventually",
        &file,
        &["--since", "before", "--where", &insert],
        0,
    );

    // A row committed after the call is seen: run it in the background, act once it says the
    // window is open.
    let mut child = walwatch()
        .args(["assert", "eventually", "--dsn", &dsn(), "--input"])
        .arg(&file)
        .args(["--within", "30s", "--where", &insert])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let opened = lines.find(|l| {
        l.as_ref()
            .is_ok_and(|l| l.contains("eventually: the window is open"))
    });
    assert!(opened.is_some(), "the window-open line");
    sql(&format!("INSERT INTO {t} VALUES (2);"));
    let status = support::wait_until("assert eventually to exit", Duration::from_secs(30), || {
        child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0));

    // A recording that has ended has no "after the call": say how to look back.
    let out = run_expecting(
        &[
            "assert",
            "eventually",
            "--no-fence",
            "--input",
            file.to_str().unwrap(),
            "--where",
            &insert,
        ],
        2,
    );
    assert!(stderr(&out).contains("--since start"), "{}", stderr(&out));
}

#[test]
fn predicates_and_reports_read_the_recordings_envelope() {
    let t = support::unique_name("nest");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, status text);"
    ));
    let dir = tempfile::tempdir().unwrap();
    let (_rec, file) = recorder(&t, dir.path(), "run", &["--envelope", "nested"]);
    sql(&format!("INSERT INTO {t} VALUES (1, 'new');"));
    let nested =
        format!(r#"data.table == "{t}" && data.op == "INSERT" && data.data.status == "new""#);
    assert_on(
        "eventually",
        &file,
        &["--since", "start", "--where", &nested],
        0,
    );
    assert_on("count", &file, &["--where", &nested, "--equals", "1"], 0);

    // A near miss and the recent events are printed as the file has them.
    let miss =
        format!(r#"data.table == "{t}" && data.op == "INSERT" && data.data.status == "paid""#);
    let out = assert_on("count", &file, &["--where", &miss, "--equals", "1"], 1);
    let text = stderr(&out);
    assert!(
        text.contains(r#"not true: data.data.status == "paid"  (data.data.status is "new")"#),
        "{text}"
    );
    assert!(
        text.contains(r#"{"type":"wal","data":{"op":"INSERT""#),
        "{text}"
    );
    assert!(!text.contains("had no field"), "{text}");

    // A native path on a nested recording says what to write instead.
    let out = assert_on(
        "count",
        &file,
        &["--where", r#"table == "x""#, "--equals", "0"],
        2,
    );
    assert!(
        stderr(&out).contains("write `data.table`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_assertion_on_a_recording_whose_recorder_is_gone_fails_at_once() {
    let t = support::unique_name("gone");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let dir = tempfile::tempdir().unwrap();
    let (mut rec, file) = recorder(&t, dir.path(), "run", &[]);
    sql(&format!("INSERT INTO {t} VALUES (1);"));
    run_expecting(
        &[
            "mark",
            "--dsn",
            &dsn(),
            "--input",
            file.to_str().unwrap(),
            "m",
        ],
        0,
    );
    let slot = recorder_slot(&file);
    let pid = rec.0.id();
    rec.0.kill().unwrap();
    rec.0.wait().unwrap();
    support::wait_until("the temporary slot to go", Duration::from_secs(30), || {
        (!slot_exists(&slot)).then_some(())
    });
    let where_ = format!(r#"table == "{t}""#);
    // What the recording holds is still there to find: a finished recording is no error.
    assert_on(
        "eventually",
        &file,
        &["--since", "start", "--where", r#"op == "BEGIN""#],
        0,
    );
    let started = Instant::now();
    let out = assert_on("never", &file, &["--where", &where_], 2);
    let text = stderr(&out);
    assert!(text.contains("the recorder is gone"), "{text}");
    assert!(text.contains(&format!("slot {slot}, pid {pid}")), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // A recorder on another machine is checked through its slot alone.
    let lines = std::fs::read_to_string(&file).unwrap();
    let moved = lines.replacen(r#"\"host\":\""#, r#"\"host\":\"elsewhere-"#, 1);
    assert_ne!(moved, lines, "the recorder line names its host");
    let copy = dir.path().join("copy.jsonl");
    std::fs::write(&copy, moved).unwrap();
    let out = assert_on(
        "eventually",
        &copy,
        &["--within", "30s", "--where", &where_],
        2,
    );
    let text = stderr(&out);
    assert!(
        text.contains(&format!("its slot {slot} no longer exists")),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    // A mark for a recorder that is gone is refused at once, not waited for.
    let out = run_expecting(
        &[
            "mark",
            "--dsn",
            &dsn(),
            "--input",
            file.to_str().unwrap(),
            "x",
        ],
        2,
    );
    assert!(
        stderr(&out).contains("the recorder is gone"),
        "{}",
        stderr(&out)
    );
    let out = run_expecting(
        &[
            "mark",
            "--dsn",
            &dsn(),
            "--input",
            "f.jsonl",
            "--recorder",
            "s",
            "x",
        ],
        2,
    );
    assert!(
        stderr(&out).contains("cannot be used with"),
        "{}",
        stderr(&out)
    );
}

/// The recorder dies while an assertion waits on it: the assertion fails within a second,
/// not at its deadline.
#[test]
fn a_recorder_dying_while_an_assertion_waits_fails_it_at_once() {
    let t = support::unique_name("dies");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let dir = tempfile::tempdir().unwrap();
    let (mut rec, file) = recorder(&t, dir.path(), "run", &[]);
    let mut waiting = KillOnDrop(
        walwatch()
            .args(["assert", "eventually", "--dsn", &dsn(), "--input"])
            .arg(&file)
            .args(["--within", "60s", "--where", &format!(r#"table == "{t}""#)])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(waiting.0.stderr.take().unwrap()).lines();
    let opened = lines.find(|l| l.as_ref().is_ok_and(|l| l.contains("the window is open")));
    assert!(opened.is_some(), "the window-open line");
    rec.0.kill().unwrap();
    rec.0.wait().unwrap();
    let killed = Instant::now();
    let status = support::wait_until("the assertion to fail", Duration::from_secs(30), || {
        waiting.0.try_wait().unwrap()
    });
    let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
    assert_eq!(status.code(), Some(2), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("the recorder is gone")),
        "{rest:?}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(5),
        "took {:?}",
        killed.elapsed()
    );
}

/// Starts `sh` running two recorders in the background, one with --exit-with-parent; returns
/// the shell and the recorders' pids.
fn recorders_under_a_shell(t: &str, dir: &Path) -> (Child, u32, u32) {
    let bin = env!("CARGO_BIN_EXE_walwatch");
    let d = dsn();
    let script = format!(
        "'{bin}' record --dsn '{d}' --tables {t} --output {dir}/a.jsonl --ready-file {dir}/a.ready \
           --exit-with-parent 2>/dev/null & echo $! > {dir}/a.pid; \
         '{bin}' record --dsn '{d}' --tables {t} --output {dir}/b.jsonl --ready-file {dir}/b.ready \
           2>/dev/null & echo $! > {dir}/b.pid; \
         wait",
        dir = dir.display()
    );
    let shell = Command::new("sh").arg("-c").arg(script).spawn().unwrap();
    let pid = |n: &str| -> u32 {
        let ready = dir.join(format!("{n}.ready"));
        support::wait_until("a recorder's ready file", Duration::from_secs(30), || {
            ready.exists().then_some(())
        });
        std::fs::read_to_string(dir.join(format!("{n}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (a, b) = (pid("a"), pid("b"));
    (shell, a, b)
}

#[test]
fn a_recorder_with_exit_with_parent_ends_with_its_killed_parent() {
    let t = support::unique_name("orphan");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let dir = tempfile::tempdir().unwrap();
    let (mut shell, a, b) = recorders_under_a_shell(&t, dir.path());
    let slot_a = recorder_slot(&dir.path().join("a.jsonl"));
    let _guards = (PidGuard(a), PidGuard(b));
    shell.kill().unwrap(); // SIGKILL: the parent gets no chance to clean up.
    shell.wait().unwrap();
    support::wait_until(
        "the orphaned recorder to exit",
        Duration::from_secs(10),
        || (!walwatch::scratch::process_alive(a)).then_some(()),
    );
    support::wait_until("its temporary slot to go", Duration::from_secs(10), || {
        (!slot_exists(&slot_a)).then_some(())
    });
    // The one without the option is still recording: the option is what ended the other.
    assert!(
        walwatch::scratch::process_alive(b),
        "the recorder without --exit-with-parent stays"
    );
}

/// Kills `pid` with SIGTERM when dropped.
struct PidGuard(u32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on a process this test started.
        unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
    }
}

#[test]
fn record_refuses_what_only_watch_does_and_the_help_says_what_each_option_means() {
    let out = run_expecting(&["record", "--until", "true"], 2);
    assert!(
        stderr(&out).contains("does not take --until"),
        "{}",
        stderr(&out)
    );
    let help = run_expecting(&["record", "--help"], 0);
    let help = String::from_utf8(help.stdout).unwrap();
    for hidden in ["--until", "--within", "--report", "--proxy-events"] {
        assert!(
            !help.contains(hidden),
            "record --help lists {hidden}:\n{help}"
        );
    }
    assert!(help.contains("--exit-with-parent"), "{help}");
    let help = String::from_utf8(run_expecting(&["assert", "count", "--help"], 0).stdout).unwrap();
    for (flag, says) in [
        ("--equals", "exactly N"),
        ("--at-least", "N or more"),
        ("--at-most", "N or fewer"),
        ("--since", "start"),
    ] {
        let line = help
            .lines()
            .skip_while(|l| !l.trim_start().starts_with(flag))
            .take(3)
            .collect::<String>();
        assert!(line.contains(says), "{flag}: {line}\n{help}");
    }
    let help = String::from_utf8(run_expecting(&["mark", "--help"], 0).stdout).unwrap();
    assert!(help.contains("LSN) on stdout"), "{help}");
    // -v before or after `assert` is accepted (a usage error would be exit 2 before any I/O).
    let out = run_expecting(
        &[
            "-v",
            "assert",
            "never",
            "--no-fence",
            "--input",
            "/nonexistent",
            "--where",
            "true",
        ],
        2,
    );
    assert!(
        stderr(&out).contains("no such recording"),
        "{}",
        stderr(&out)
    );
}
