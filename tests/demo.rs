//! `walwatch demo`: starts its own throwaway PostgreSQL, writes traffic, shows it, and removes
//! everything when it stops.

mod harness;
mod support;

use std::time::Duration;

#[test]
fn demo_shows_live_changes_and_cleans_up() {
    let started = std::time::Instant::now();
    let out = harness::walwatch()
        .args(["demo", "--seconds", "8", "--format", "json"])
        .output()
        .expect("spawn walwatch demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "demo failed; stderr:\n{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "demo took {:?}",
        started.elapsed()
    );
    let events = harness::parse_jsonl(&out.stdout);
    let seen = |op: &str, table: &str| events.iter().any(|e| e["op"] == op && e["table"] == table);
    assert!(
        seen("INSERT", "users"),
        "no INSERT into users in {events:#?}\nstderr:\n{stderr}"
    );
    assert!(
        seen("INSERT", "orders"),
        "no INSERT into orders in {events:#?}\nstderr:\n{stderr}"
    );
    assert!(
        seen("UPDATE", "orders"),
        "no UPDATE of orders in {events:#?}\nstderr:\n{stderr}"
    );
    // The cluster's directory is gone: the log names it.
    let dir = stderr
        .lines()
        .find_map(|l| l.split("data directory ").nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("the demo does not say where its cluster lives:\n{stderr}"));
    assert!(
        !std::path::Path::new(&dir).exists(),
        "{dir} was left behind"
    );
}
