//! The command line against a real server: help, errors with exit code 2 and one clear line,
//! a live run stopped by SIGTERM that leaves nothing behind, and a closed stdout pipe.

mod harness;
mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use harness::{dsn, run_expecting, sql, walwatch};
use walwatch::scratch::{ScratchCluster, ScratchOptions};

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The error line walwatch prints (the last line of stderr), checked to be one line.
fn error_line(out: &std::process::Output) -> String {
    let err = stderr_of(out);
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with("walwatch: error:"))
        .unwrap_or_else(|| panic!("no `walwatch: error:` line in stderr:\n{err}"));
    line.to_string()
}

#[test]
fn help_lists_the_options_and_examples() {
    let out = run_expecting(&["--help"], 0);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--dsn", "--tables", "--ops", "--slot", "--endpos", "--format", "demo", "Examples",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

#[test]
fn a_bad_dsn_is_a_clear_error() {
    let out = run_expecting(
        &[
            "--dsn",
            "postgres://u@127.0.0.1:notaport/db",
            "--tables",
            "t",
        ],
        2,
    );
    let line = error_line(&out);
    assert!(line.contains("port"), "{line}");
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let out = run_expecting(
        &[
            "--dsn",
            "postgres://u:secret@127.0.0.1:1/db",
            "--tables",
            "t",
        ],
        2,
    );
    let line = error_line(&out);
    assert!(
        line.contains("127.0.0.1") && line.contains("running"),
        "expected a hint that the server may not be running: {line}"
    );
    assert!(
        !stderr_of(&out).contains("secret"),
        "the password leaked: {}",
        stderr_of(&out)
    );
}

/// The password never reaches the output of a failing run, even with every log level on,
/// nor `--help` while it is in the environment.
#[test]
fn the_password_appears_in_no_log_line_or_error() {
    let c = support::cluster();
    let secret = "s3cr3t-Pa55-xyzzy";
    let port = c.port();
    // (what, DSN, PGPASSWORD)
    let runs: Vec<(&str, String, Option<&str>)> = vec![
        (
            "wrong password",
            format!("postgres://walwatch:{secret}@127.0.0.1:{port}/walwatch"),
            None,
        ),
        (
            "no such database",
            format!("postgres://walwatch:{secret}@127.0.0.1:{port}/nope"),
            None,
        ),
        (
            "unreachable",
            format!("postgres://walwatch:{secret}@127.0.0.1:1/walwatch"),
            None,
        ),
        (
            "password from the environment",
            format!("postgres://walwatch@127.0.0.1:{port}/walwatch"),
            Some(secret),
        ),
        (
            "key=value DSN",
            format!("host=127.0.0.1 port={port} user=walwatch password={secret} dbname=walwatch"),
            None,
        ),
    ];
    for (what, dsn, env) in runs {
        let out = walwatch()
            .args(["--dsn", &dsn, "--tables", "no_such_table_here"])
            .envs(env.map(|pw| ("PGPASSWORD", pw)))
            .env("WALWATCH_LOG", "trace")
            .output()
            .expect("spawn walwatch");
        assert_eq!(out.status.code(), Some(2), "{what}: {}", stderr_of(&out));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            stderr_of(&out)
        );
        assert!(!all.contains(secret), "{what}: the password leaked:\n{all}");
    }
    let out = walwatch()
        .arg("--help")
        .env("PGPASSWORD", secret)
        .output()
        .expect("spawn walwatch");
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(secret));
}

#[test]
fn a_role_without_replication_is_told_how_to_fix_it() {
    let c = support::cluster();
    let dsn = format!(
        "postgres://walwatch_norepl:walwatch-test-password@127.0.0.1:{}/walwatch",
        c.port()
    );
    let out = run_expecting(&["--dsn", &dsn, "--tables", "t"], 2);
    let line = error_line(&out);
    assert!(line.contains("REPLICATION"), "{line}");
}

#[test]
fn a_server_without_logical_wal_level_is_refused() {
    let cluster = ScratchCluster::start(ScratchOptions {
        wal_level: "replica".into(),
        ..ScratchOptions::default()
    })
    .expect("start a wal_level=replica cluster");
    let out = run_expecting(&["--dsn", &cluster.dsn("walwatch"), "--tables", "t"], 2);
    let line = error_line(&out);
    assert!(
        line.contains("wal_level") && line.contains("logical"),
        "{line}"
    );
    cluster.stop().expect("stop cluster");
}

/// Reads stdout lines on a thread so the test can wait on them with a deadline.
fn line_reader(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts a live `walwatch --tables TABLE --format json` with its stdout read line by line.
fn spawn_json(dsn: &str, table: &str) -> (Child, mpsc::Receiver<String>) {
    let mut child = walwatch()
        .args(["--dsn", dsn, "--tables", table, "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walwatch");
    let lines = line_reader(&mut child);
    (child, lines)
}

/// The next INSERT event walwatch prints, as JSON (waited for with a deadline).
fn next_insert(lines: &mpsc::Receiver<String>) -> serde_json::Value {
    let line = support::wait_until("an INSERT on stdout", Duration::from_secs(30), || {
        lines
            .try_recv()
            .ok()
            .filter(|l| l.contains("\"op\":\"INSERT\""))
    });
    serde_json::from_str(&line).unwrap()
}

/// Waits until walwatch (by PID) has created its temporary slot: from then on, every commit
/// reaches it.
fn wait_for_slot(pid: u32) -> String {
    support::wait_until("walwatch's temporary slot", Duration::from_secs(30), || {
        let out = support::cluster()
            .psql(
                "walwatch",
                &format!(
                    "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE 'walwatch\\_{pid}\\_%'"
                ),
            )
            .ok()?;
        let name = out.trim().to_string();
        (!name.is_empty()).then_some(name)
    })
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    support::wait_until("walwatch to exit", within, || {
        child.try_wait().ok().flatten()
    })
}

#[test]
fn live_run_stops_on_sigterm_and_leaves_nothing_behind() {
    let t = support::unique_name("live");
    sql(&format!(
        "CREATE TABLE {t} (id int PRIMARY KEY, item text);"
    ));
    let (mut child, lines) = spawn_json(&dsn(), &t);
    let pid = child.id();
    let slot = wait_for_slot(pid);
    sql(&format!("INSERT INTO {t} VALUES (1, 'book');"));
    let event = next_insert(&lines);
    harness::assert_valid(&event);
    assert_eq!(event["data"], serde_json::json!({"id": 1, "item": "book"}));

    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean stop");
    let leftovers = support::cluster()
        .psql(
            "walwatch",
            &format!(
                "SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE slot_name = '{slot}'
                 UNION ALL SELECT 'publication ' || pubname FROM pg_publication WHERE pubname LIKE 'walwatch\\_{pid}\\_%'"
            ),
        )
        .unwrap();
    assert_eq!(leftovers.trim(), "", "walwatch left these behind");
}

#[test]
fn a_closed_stdout_pipe_ends_quietly() {
    let t = support::unique_name("pipe");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let (mut child, lines) = spawn_json(&dsn(), &t);
    let pid = child.id();
    wait_for_slot(pid);
    sql(&format!("INSERT INTO {t} VALUES (1);"));
    support::wait_until("the first line", Duration::from_secs(30), || {
        lines.try_recv().ok()
    });
    drop(lines); // like `| head -1`: the reader goes away and the pipe closes
    // Keep writing until walwatch notices the closed pipe.
    let mut n = 2;
    let status = support::wait_until(
        "walwatch to exit on the closed pipe",
        Duration::from_secs(30),
        || {
            sql(&format!(
                "INSERT INTO {t} SELECT g FROM generate_series({n}, {}) g;",
                n + 999
            ));
            n += 1000;
            child.try_wait().ok().flatten()
        },
    );
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "a closed pipe is not an error; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("error"), "stderr:\n{stderr}");
}

#[test]
fn a_server_restart_mid_stream_is_an_error_not_a_silent_exit() {
    let cluster = ScratchCluster::start(ScratchOptions::default()).expect("start own cluster");
    let dsn = cluster.dsn("walwatch");
    cluster
        .psql(
            "walwatch",
            "SET ROLE walwatch; CREATE TABLE restart_t (id int PRIMARY KEY);",
        )
        .unwrap();
    let (mut child, lines) = spawn_json(&dsn, "restart_t");
    let pid = child.id();
    support::wait_until("walwatch's temporary slot", Duration::from_secs(30), || {
        let out = cluster
            .psql(
                "walwatch",
                &format!("SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'walwatch\\_{pid}\\_%' AND active"),
            )
            .ok()?;
        (out.trim() == "1").then_some(())
    });
    cluster
        .psql("walwatch", "INSERT INTO restart_t VALUES (1);")
        .unwrap();
    support::wait_until("the INSERT on stdout", Duration::from_secs(30), || {
        lines.try_recv().ok().filter(|l| l.contains("INSERT"))
    });
    cluster.handle().restart().expect("restart the server");
    let status = wait_exit(&mut child, Duration::from_secs(60));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        status.code(),
        Some(2),
        "the stream ending under walwatch must be an error; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains("walwatch: error:")
            && (stderr.contains("run walwatch again") || stderr.contains("shutting down")),
        "{stderr}"
    );
    cluster.stop().expect("stop cluster");
}

#[test]
fn a_stalled_reader_does_not_get_walwatch_timed_out() {
    let cluster = ScratchCluster::start(ScratchOptions {
        extra_conf: vec![("wal_sender_timeout".into(), "2s".into())],
        ..ScratchOptions::default()
    })
    .expect("start own cluster");
    let dsn = cluster.dsn("walwatch");
    cluster
        .psql(
            "walwatch",
            "SET ROLE walwatch; CREATE TABLE stall_t (id int PRIMARY KEY, pad text);",
        )
        .unwrap();
    // Nobody reads stdout yet: the pipe, the sink buffer and the frame channel fill up, and
    // walwatch stops reading the socket (backpressure) — but must keep answering the server.
    let mut child = walwatch()
        .args([
            "--dsn",
            &dsn,
            "--tables",
            "stall_t",
            "--format",
            "json",
            "--status-interval",
            "0.5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walwatch");
    let pid = child.id();
    let active = |extra: &str| {
        cluster
            .psql(
                "walwatch",
                &format!(
                    "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s ON s.active_pid = r.pid
                     WHERE s.slot_name LIKE 'walwatch\\_{pid}\\_%' {extra}"
                ),
            )
            .map(|o| o.trim() == "1")
            .unwrap_or(false)
    };
    support::wait_until("walwatch streaming", Duration::from_secs(30), || {
        active("").then_some(())
    });
    // About 90 MB of pgoutput frames in 300 transactions (each small enough not to be streamed
    // and buffered until its commit): were they read off the socket regardless, memory would
    // grow by that much.
    const ROWS: usize = 300_000;
    let inserts = harness::inserts_in_batches("stall_t", ROWS, 250);
    cluster.psql("walwatch", &inserts).unwrap();
    let stalled_at = cluster.psql("walwatch", "SELECT now()").unwrap();
    // Condition, not a sleep: the server keeps receiving our replies more than three
    // wal_sender_timeouts after the reader stalled.
    support::wait_until(
        "the server to get a reply 6 s after the stall",
        Duration::from_secs(30),
        || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "walwatch exited while stalled"
            );
            active(&format!(
                "AND r.reply_time > '{}'::timestamptz + interval '6 s'",
                stalled_at.trim()
            ))
            .then_some(())
        },
    );
    // Memory did not grow with the backlog: the bounded channel stopped the socket reads.
    eprintln!(
        "walwatch peak RSS while stalled: {} MB",
        support::peak_rss_kb(pid) / 1024
    );
    let peak_kb = support::peak_rss_kb(pid);
    assert!(
        peak_kb < 60 * 1024,
        "walwatch's peak RSS reached {} MB with a stalled reader; backpressure should hold it \
         near the channel's bound",
        peak_kb / 1024
    );
    // Now read: every row arrives.
    let lines = line_reader(&mut child);
    let mut inserts = 0;
    support::wait_until("every row after the stall", Duration::from_secs(60), || {
        while let Ok(l) = lines.try_recv() {
            if l.contains("\"op\":\"INSERT\"") {
                inserts += 1;
            }
        }
        (inserts == ROWS).then_some(())
    });
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = wait_exit(&mut child, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    cluster.stop().expect("stop cluster");
}

#[test]
fn types_created_after_start_decode_as_their_base_types() {
    let t = support::unique_name("late");
    sql(&format!("CREATE TABLE {t} (id int PRIMARY KEY);"));
    let (mut child, lines) = spawn_json(&dsn(), &t);
    let pid = child.id();
    wait_for_slot(pid);
    // Created after walwatch loaded its type registry.
    sql(&format!(
        "CREATE DOMAIN {t}_qty AS int CHECK (VALUE >= 0);
         CREATE TYPE {t}_state AS ENUM ('new', 'paid');
         ALTER TABLE {t} ADD COLUMN qty {t}_qty, ADD COLUMN state {t}_state, ADD COLUMN qtys {t}_qty[];
         INSERT INTO {t} VALUES (1, 7, 'paid', '{{1,2}}');"
    ));
    let event = next_insert(&lines);
    assert_eq!(
        event["data"],
        serde_json::json!({"id": 1, "qty": 7, "state": "paid", "qtys": [1, 2]}),
        "a domain over int must be a number, its array an array of numbers"
    );
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(
        wait_exit(&mut child, Duration::from_secs(30)).code(),
        Some(0)
    );
}

/// `--dsn`, `-v` and `-q` are global: accepted before and after the subcommand. Run against a
/// port where no server listens, each of them must get as far as connecting: exit code 2 with
/// walwatch's connection error, not clap's usage error (also exit code 2).
#[test]
fn dsn_verbose_and_quiet_are_accepted_before_and_after_the_subcommand() {
    let dsn = "host=127.0.0.1 port=1 user=u dbname=d sslmode=disable connect_timeout=5";
    let dir = tempfile::tempdir().unwrap();
    let rec = dir.path().join("rec.jsonl");
    std::fs::write(&rec, "").unwrap();
    let rec = rec.to_str().unwrap();
    let assert_never = ["never", "--input", rec, "--where", "true"];
    let runs: Vec<Vec<&str>> = vec![
        vec!["--dsn", dsn, "slots"],
        vec!["slots", "--dsn", dsn],
        vec!["--dsn", dsn, "slots", "drop", "nosuch"],
        vec!["slots", "--dsn", dsn, "drop", "nosuch"],
        vec!["slots", "drop", "nosuch", "--dsn", dsn],
        vec!["--dsn", dsn, "mark", "m"],
        vec!["--dsn", dsn, "watch", "--tables", "t"],
        [&["-v", "--dsn", dsn, "assert"][..], &assert_never].concat(),
        [&["assert", "-v", "--dsn", dsn][..], &assert_never].concat(),
        [&["--dsn", dsn, "-v", "assert"][..], &assert_never, &["-q"]].concat(),
    ];
    for args in &runs {
        let out = run_expecting(args, 2);
        let err = stderr_of(&out);
        assert!(
            !err.contains("Usage:") && !err.contains("cannot be used with"),
            "walwatch {args:?} was refused as a usage error:\n{err}"
        );
        assert!(
            error_line(&out).contains("cannot connect to 127.0.0.1:1"),
            "walwatch {args:?} did not fail on connecting:\n{err}"
        );
    }
    // -q took effect after the subcommand as before it: an assertion on the recording alone
    // (no fence, no server) logs its verdict, unless -q.
    for (args, quiet) in [
        (vec!["assert"], false),
        (vec!["-q", "assert"], true),
        (vec!["assert", "-q"], true),
        (vec!["assert", "never", "-q"], true),
    ] {
        let mut args = args.clone();
        if !args.contains(&"never") {
            args.push("never");
        }
        args.extend(["--input", rec, "--where", "true", "--no-fence"]);
        let out = run_expecting(&args, 0);
        let err = stderr_of(&out);
        assert_eq!(
            !err.contains("assertion never passed"),
            quiet,
            "walwatch {args:?}, stderr:\n{err}"
        );
    }
    // Options of the default command still exclude subcommands.
    let out = run_expecting(&["--tables", "t", "slots"], 2);
    assert!(
        stderr_of(&out).contains("the subcommand 'slots' cannot be used with '--tables"),
        "{}",
        stderr_of(&out)
    );
}
