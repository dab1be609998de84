//! Least privilege: the role of the README's "Least privilege" section (LOGIN REPLICATION,
//! SELECT on the watched tables, a publication its owner created) captures changes end to end,
//! and taking away each grant gives an error that names it.

mod harness;
mod support;

use harness::{drop_slot, parse_jsonl, sql, walwatch};
use support::unique_name;
use walwatch::scratch::TEST_PASSWORD;

/// Runs walwatch; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = walwatch().args(args).output().expect("spawn walwatch");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn admin(statements: &str) {
    support::cluster()
        .psql("walwatch", statements)
        .unwrap_or_else(|e| panic!("admin SQL failed: {e}\n{statements}"));
}

#[test]
fn the_least_privileged_role_works_and_each_missing_grant_is_named() {
    let cluster = support::cluster();
    let role = unique_name("least");
    let table = unique_name("priv_orders");
    let publication = unique_name("priv_pub");
    let slot = unique_name("priv_slot");
    // The tables' owner (here the role `walwatch`) creates the publication; an administrator
    // creates the capture role with exactly the README's grants.
    sql(&format!(
        "CREATE TABLE {table} (id int PRIMARY KEY, item text);
         CREATE PUBLICATION {publication} FOR TABLE {table};"
    ));
    admin(&format!(
        "CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{TEST_PASSWORD}';
         GRANT SELECT ON {table} TO {role};"
    ));
    let dsn = cluster.dsn_for(&role, "walwatch");
    let base = [
        "--dsn",
        dsn.as_str(),
        "--tables",
        table.as_str(),
        "--publication",
        publication.as_str(),
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    let run_with = |extra: &[&str]| {
        let args = with(extra);
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // End to end: a permanent slot created by the role, a change, the change captured.
    let (code, _, err) = run_with(&["--slot", &slot, "--endpos", "now"]);
    assert_eq!(code, 0, "creating the slot as {role}: {err}");
    sql(&format!(
        "INSERT INTO {table} VALUES (1, 'least privilege');"
    ));
    let (code, out, err) = run_with(&["--slot", &slot, "--endpos", "now", "--format", "json"]);
    assert_eq!(code, 0, "draining as {role}: {err}");
    let events = parse_jsonl(out.as_bytes());
    assert!(
        events
            .iter()
            .any(|e| e["op"] == "INSERT" && e["data"]["item"] == "least privilege"),
        "the INSERT was not captured: {out}"
    );

    // Without SELECT on the table.
    admin(&format!("REVOKE SELECT ON {table} FROM {role};"));
    let (code, _, err) = run_with(&["--slot", &slot, "--endpos", "now"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("GRANT SELECT ON public.{table} TO \"{role}\";")),
        "the error should name the missing SELECT grant: {err}"
    );
    // Nor a snapshot of it: refused before a slot is made.
    let snap_slot = unique_name("priv_snap");
    let (code, _, err) = run_with(&["--slot", &snap_slot, "--snapshot", "only"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("GRANT SELECT ON"), "{err}");
    assert_eq!(
        sql(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{snap_slot}';"
        ))
        .trim(),
        "0",
        "no slot was made"
    );
    admin(&format!("GRANT SELECT ON {table} TO {role};"));

    // Without REPLICATION.
    admin(&format!("ALTER ROLE {role} NOREPLICATION;"));
    let (code, _, err) = run_with(&["--slot", &slot, "--endpos", "now"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("REPLICATION"),
        "the error should name the REPLICATION attribute: {err}"
    );
    admin(&format!("ALTER ROLE {role} REPLICATION;"));

    // Without a publication of the owner's, the role may not create one for tables it does
    // not own.
    let own_slot = unique_name("priv_own");
    let args: Vec<&str> = vec![
        "--dsn", &dsn, "--tables", &table, "--slot", &own_slot, "--endpos", "now",
    ];
    let (code, _, err) = run(&args);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("must own the watched tables") && err.contains("--publication"),
        "the error should say who may create the publication: {err}"
    );

    // And the password appears nowhere in what walwatch printed.
    assert!(!err.contains(TEST_PASSWORD), "{err}");

    drop_slot(&slot);
    admin(&format!(
        "DROP PUBLICATION IF EXISTS {publication}; REVOKE ALL ON {table} FROM {role}; DROP ROLE {role};"
    ));
}
