//! The golden recordings of tests/golden/ (issue 13): raw recordings of one fixed workload on
//! each server of the matrix, replayed offline. No server is involved here: the recordings
//! are checked in, and `real_world::a_raw_recording_replays_to_exactly_the_live_output` makes
//! them (and checks a fresh recording against its live output on the server it runs on).

mod support;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use base64::Engine;
use serde_json::Value;

use walwatch::config::{ReplayConfig, SinkSpec};
use walwatch::event_read::Envelope;
use walwatch::filter::OpSet;

use support::assert_same_lines as assert_same;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The recordings, one per server: `pg15`, `pg17`, `pg18`.
fn recordings() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["pg15", "pg17", "pg18"], "one recording per server");
    dirs
}

fn replay_bin(args: &[&str]) -> std::process::Output {
    Command::cargo_bin("walwatch")
        .unwrap()
        .arg("replay")
        .args(args)
        .env("WALWATCH_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn every_golden_recording_replays_to_its_expected_output() {
    for dir in recordings() {
        let rec = dir.join("recording.jsonl");
        let expected = std::fs::read(dir.join("expected.jsonl")).unwrap();
        assert!(
            expected.len() > 100_000,
            "{}: a real workload",
            dir.display()
        );
        let out = replay_bin(&[rec.to_str().unwrap(), "--format", "json"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_same(&dir.display().to_string(), &expected, &out.stdout);
        // Into a file sink too, the same bytes.
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("out.jsonl");
        let sink = format!("jsonl:{}", file.display());
        let out = replay_bin(&[rec.to_str().unwrap(), "--sink", &sink]);
        assert_eq!(out.status.code(), Some(0));
        assert!(out.stdout.is_empty(), "events on stdout with a file sink");
        assert_same(
            &format!("{} to a file", dir.display()),
            &expected,
            &std::fs::read(&file).unwrap(),
        );
    }
}

#[test]
fn a_replay_filters_like_a_live_run() {
    let dir = &recordings()[0];
    let rec = dir.join("recording.jsonl");
    let out = replay_bin(&[
        rec.to_str().unwrap(),
        "--format",
        "json",
        "--ops",
        "delete",
        "--where",
        "table == \"meas\"",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let expected: Vec<Value> = std::fs::read_to_string(dir.join("expected.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["op"] == "DELETE" && e["table"] == "meas")
        .collect();
    assert!(!expected.is_empty());
    let changes: Vec<&Value> = events.iter().filter(|e| e["op"] == "DELETE").collect();
    assert_eq!(changes, expected.iter().collect::<Vec<_>>());
}

/// Replays `text` (a recording's content) in-process into a JSONL file; the error's message,
/// and whether the output file was created.
fn replay_text(text: &[u8]) -> (Result<(), String>, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let rec = tmp.path().join("cut.jsonl");
    std::fs::write(&rec, text).unwrap();
    let out = tmp.path().join("out.jsonl");
    let config = ReplayConfig {
        input: rec,
        sinks: vec![SinkSpec::Jsonl(out.clone())],
        envelope: Envelope::Native,
        ops: OpSet::all(),
        filter: None,
        kafka_props: Vec::new(),
    };
    let res = std::panic::catch_unwind(|| walwatch::replay::run(&config))
        .unwrap_or_else(|_| panic!("replay panicked on a recording of {} bytes", text.len()));
    (res.map(|_| ()).map_err(|e| e.to_string()), out.exists())
}

/// Every cut short of the end line's last byte: after each whole line and in the middle of
/// each, plus the edges (nothing, one byte, inside the header, inside the end line). Only the
/// final newline may go: without it, the end line is still whole.
fn cut_points(text: &[u8]) -> Vec<usize> {
    let ends: Vec<usize> = text
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    let mut cuts = vec![0, 1, ends[0] - 1, text.len() - 2];
    let mut start = 0;
    for end in &ends {
        cuts.push(*end); // after a whole line
        cuts.push(start + (end - start) / 2); // inside one
        start = *end;
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts.retain(|c| *c < text.len() - 1);
    cuts
}

#[test]
fn a_recording_cut_anywhere_is_a_clean_error_before_any_output() {
    let rec = recordings()[0].join("recording.jsonl");
    let text = std::fs::read(&rec).unwrap();
    let (whole, _) = replay_text(&text);
    assert_eq!(whole, Ok(()), "the whole recording replays");
    let cuts = cut_points(&text);
    assert!(cuts.len() > 1000, "{} cuts", cuts.len());
    for cut in cuts {
        let (res, wrote) = replay_text(&text[..cut]);
        let err = res.expect_err(&format!("a recording cut at byte {cut} replayed"));
        assert!(
            err.contains("not a usable walwatch recording"),
            "cut at {cut}: {err}"
        );
        assert!(
            !wrote,
            "cut at {cut}: the output was created before the error"
        );
    }
    // From the command line: exit 2, the reason on stderr, nothing on stdout.
    let tmp = tempfile::tempdir().unwrap();
    let cut = tmp.path().join("cut.jsonl");
    let last_line = text[..text.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap();
    std::fs::write(&cut, &text[..=last_line]).unwrap();
    let out = replay_bin(&[cut.to_str().unwrap(), "--format", "json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("without its end line: the recording is truncated"),
        "{stderr}"
    );
}

/// The recording's lines, one edited by `edit` (given its parsed JSON).
fn edited(text: &str, mut edit: impl FnMut(usize, &mut Value) -> bool) -> Vec<u8> {
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        let mut v: Value = serde_json::from_str(line).unwrap();
        if edit(i, &mut v) {
            out.push_str(&v.to_string());
            out.push('\n');
        }
    }
    out.into_bytes()
}

#[test]
fn a_damaged_recording_names_what_is_wrong() {
    let rec = recordings()[0].join("recording.jsonl");
    let text = std::fs::read_to_string(&rec).unwrap();
    let expect_err = |bytes: Vec<u8>, want: &str| {
        let (res, wrote) = replay_text(&bytes);
        let err = res.expect_err(want);
        assert!(err.contains(want), "want {want:?}, got: {err}");
        assert!(!wrote);
    };
    // A frame line dropped.
    expect_err(
        edited(&text, |_, v| v["n"] != 10),
        "holds frame 11 where frame 10 belongs",
    );
    // A payload that is not base64, and one that is not a replication message.
    expect_err(
        edited(&text, |_, v| {
            if v["n"] == 5 {
                v["data"] = Value::from("%%%");
            }
            true
        }),
        "the payload is not base64",
    );
    expect_err(
        edited(&text, |_, v| {
            if v["n"] == 5 {
                v["data"] = Value::from(base64::engine::general_purpose::STANDARD.encode(b"q"));
            }
            true
        }),
        "the payload is not a replication message",
    );
    // Another format version.
    expect_err(
        edited(&text, |i, v| {
            if i == 0 {
                v["walwatch_recording"] = Value::from(2);
            }
            true
        }),
        "recording format 2",
    );
    // Bytes that are not text.
    let mut binary = text.as_bytes().to_vec();
    let second = binary.iter().position(|b| *b == b'\n').unwrap() + 3;
    binary[second] = 0xff;
    expect_err(binary, "line 2 is not UTF-8 text");
    // Not a recording at all: the event output.
    let events = std::fs::read(recordings()[0].join("expected.jsonl")).unwrap();
    expect_err(events, "line 1 is not a recording line");
}

/// What a bug report is for: a recording of a stream walwatch cannot decode fails the replay
/// the same way, with the decoder's error.
#[test]
fn a_recorded_decoding_failure_is_reproduced() {
    let rec = recordings()[0].join("recording.jsonl");
    let text = std::fs::read_to_string(&rec).unwrap();
    let bad = edited(&text, |_, v| {
        if v["n"] == 3 {
            let data = v["data"].as_str().unwrap();
            let mut bytes = base64::engine::general_purpose::STANDARD
                .decode(data)
                .unwrap();
            bytes.truncate(25); // the XLogData header
            bytes.push(b'?'); // a pgoutput message type that does not exist
            v["data"] = Value::from(base64::engine::general_purpose::STANDARD.encode(&bytes));
        }
        true
    });
    let (res, _) = replay_text(&bad);
    let err = res.expect_err("an undecodable message replayed");
    assert!(
        err.contains("cannot decode the replication stream"),
        "{err}"
    );
}
