//! Every catalog query walwatch runs on its metadata connection (src/pg/catalog.rs, the
//! assertion diagnostics in src/assert/diagnose.rs, the marker in src/marker.rs) against the test
//! cluster, each on a schema that exercises it, asserting what it returns.
//!
//! Catalog column types change between server versions (`pg_attribute.attndims` is `int4` up to
//! PostgreSQL 16 and `int2` since 17), so each query casts what it selects to the type walwatch
//! reads it as; this binary runs on every server of the matrix (tests/run.sh: 15, 17, 18) to show
//! that the answers are the same on all of them.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use tokio_postgres::{Client, NoTls};
use walwatch::decode::TypeKind;
use walwatch::filter::{OpSet, TablePattern};
use walwatch::pg::catalog::{self, SlotRow};
use walwatch::scratch::{TEST_DATABASE, TEST_USER, quote_ident};
use walwatch::{Error, Lsn};

/// `walwatch` (LOGIN REPLICATION, not a superuser) over TCP with SCRAM: the role walwatch runs
/// as in the tests, as a user would.
async fn user_client() -> Client {
    let c = tokio::task::spawn_blocking(support::cluster).await.unwrap();
    let (client, conn) = tokio_postgres::connect(&c.dsn(TEST_DATABASE), NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect as {TEST_USER}: {e}"));
    tokio::spawn(conn);
    client
}

async fn admin() -> Client {
    support::admin_client(TEST_DATABASE).await
}

/// A fresh schema owned by `walwatch`, so that what the tests of other processes create does not
/// get in the way; returns its name.
async fn schema(admin: &Client, prefix: &str) -> String {
    let s = support::unique_name(prefix);
    admin
        .batch_execute(&format!(
            "CREATE SCHEMA {} AUTHORIZATION {}",
            quote_ident(&s),
            quote_ident(TEST_USER)
        ))
        .await
        .unwrap();
    s
}

/// Runs `sql` as `walwatch` on the admin connection (so that it owns what the script creates),
/// with `{s}` replaced by the quoted schema name.
async fn as_user(admin: &Client, s: &str, sql: &str) {
    let sql = format!(
        "SET ROLE {}; {}; RESET ROLE;",
        quote_ident(TEST_USER),
        sql.replace("{s}", &quote_ident(s))
    );
    admin
        .batch_execute(&sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

fn pair(s: &str, t: &str) -> (String, String) {
    (s.to_owned(), t.to_owned())
}

fn setup_message(r: walwatch::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::Setup(m)) => m,
        other => panic!("expected a setup error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_server_reads_the_server_and_the_role() {
    let user = user_client().await;
    let info = catalog::check_server(&user).await.unwrap();
    let admin = admin().await;
    let num: i32 = admin
        .query_one("SELECT current_setting('server_version_num')::int4", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(info.version_num, num as u32);
    // The server the matrix run asked for (WALWATCH_PG_BIN), not some other one.
    let bin = support::server_bin_dir().unwrap();
    let major = support::server_major_version(bin).unwrap();
    assert_eq!(info.version_num / 10_000, major, "{}", bin.display());
    assert_eq!(info.database, TEST_DATABASE);
    assert_eq!(info.user, TEST_USER);
    assert!(!info.is_superuser);
    // The default search_path is "$user", public; there is no schema `walwatch`.
    assert_eq!(info.search_path, vec!["public".to_owned()]);

    let info = catalog::check_server(&admin).await.unwrap();
    assert_eq!(info.user, "postgres");
    assert!(info.is_superuser);
    admin
        .batch_execute("SET search_path = pg_catalog, public")
        .await
        .unwrap();
    let info = catalog::check_server(&admin).await.unwrap();
    assert_eq!(info.search_path, vec!["pg_catalog", "public"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_tables_expands_names_and_globs_to_tables_only() {
    let admin = admin().await;
    let s = schema(&admin, "cat_res").await;
    as_user(
        &admin,
        &s,
        "CREATE TABLE {s}.a_one (id int); CREATE TABLE {s}.a_two (id int);
         CREATE TABLE {s}.b (id int); CREATE TABLE {s}.\"Mixed\" (id int);
         CREATE TABLE {s}.p (id int) PARTITION BY RANGE (id);
         CREATE TABLE {s}.p1 PARTITION OF {s}.p FOR VALUES FROM (0) TO (10);
         CREATE VIEW {s}.a_view AS SELECT 1 AS x; CREATE SEQUENCE {s}.a_seq",
    )
    .await;
    let user = user_client().await;
    let pat = |p: &str| TablePattern::parse(p).unwrap();
    let got = catalog::resolve_tables(
        &user,
        &[
            pat(&format!("{s}.a_*")),
            pat(&format!("{s}.b")),
            pat(&format!("{s}.a_one")),
        ],
        &[],
    )
    .await
    .unwrap();
    // Views and sequences are not tables; a table matched twice is listed once.
    assert_eq!(
        got,
        vec![pair(&s, "a_one"), pair(&s, "a_two"), pair(&s, "b")]
    );
    // A partitioned table is watched through its parent, never its partitions.
    let got = catalog::resolve_tables(&user, &[pat(&format!("{s}.p*"))], &[])
        .await
        .unwrap();
    assert_eq!(got, vec![pair(&s, "p")]);
    // Quoted names keep their case; unqualified names are looked up on the search path.
    let got = catalog::resolve_tables(
        &user,
        &[pat(&format!("{s}.\"Mixed\"")), pat("b")],
        std::slice::from_ref(&s),
    )
    .await
    .unwrap();
    assert_eq!(got, vec![pair(&s, "Mixed"), pair(&s, "b")]);
    match catalog::resolve_tables(&user, &[pat("a_two")], &["public".to_owned()]).await {
        Err(Error::NoSuchTable(m)) => {
            assert!(m.contains("no table matches `a_two`"), "{m}");
            assert!(m.contains(&format!("did you mean {s}.a_two?")), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_ensure_creates_retargets_and_drops_them() {
    use walwatch::pg::publication::{self, Want};
    let admin = admin().await;
    let s = schema(&admin, "cat_pub").await;
    as_user(
        &admin,
        &s,
        "CREATE TABLE {s}.t1 (id int PRIMARY KEY); CREATE TABLE {s}.t2 (id int PRIMARY KEY); \
         CREATE TABLE {s}.n (v text)",
    )
    .await;
    let user = user_client().await;
    let info = catalog::check_server(&user).await.unwrap();
    let slot = support::unique_name("cat_pub");
    let main = publication::main_name(&slot);
    let companion = publication::companion_name(&main);
    let mut ops = OpSet::empty();
    ops.insert(walwatch::Op::Insert);
    ops.insert(walwatch::Op::Delete);
    let flags = async |name: &str| -> Vec<bool> {
        let row = admin
            .query_one(
                "SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication \
                 WHERE pubname = $1",
                &[&name],
            )
            .await
            .unwrap();
        (0..4).map(|i| row.get(i)).collect()
    };
    let one = [pair(&s, "t1"), pair(&s, "n")];
    let want = |tables, ops| Want {
        main: &main,
        slot: &slot,
        temporary: false,
        tables,
        ops,
        via_root: true,
        server_version: info.version_num,
    };
    let made = publication::ensure(&user, &info, &want(Some(&one), ops))
        .await
        .unwrap();
    assert_eq!(made.names, [main.clone(), companion.clone()]);
    assert!(made.created.is_empty(), "a permanent slot's are kept");
    assert_eq!(made.record.as_ref().unwrap().slot, slot);
    // The keyed table in the main one, the keyless one in the companion, for INSERT only.
    assert_eq!(
        catalog::publication_tables(&user, &main).await.unwrap(),
        [pair(&s, "t1")]
    );
    assert_eq!(
        catalog::publication_tables(&user, &companion)
            .await
            .unwrap(),
        [pair(&s, "n")]
    );
    assert_eq!(flags(&main).await, [true, false, true, false]);
    assert_eq!(flags(&companion).await, [true, false, false, false]);

    // The same slot for another table set re-targets them, and creates nothing.
    let both = [pair(&s, "t2"), pair(&s, "t1")];
    publication::ensure(&user, &info, &want(Some(&both), OpSet::all()))
        .await
        .unwrap();
    assert_eq!(
        catalog::publication_tables(&user, &main).await.unwrap(),
        vec![pair(&s, "t1"), pair(&s, "t2")]
    );
    assert!(
        catalog::publication_tables(&user, &companion)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(flags(&main).await, [true; 4]);
    assert_eq!(flags(&companion).await, [true, false, false, true]);
    // FOR ALL TABLES needs a superuser; walwatch is not one.
    let m = setup_message(publication::ensure(&user, &info, &want(None, ops)).await);
    assert!(m.contains("only a superuser"), "{m}");

    for name in [&main, &companion] {
        catalog::drop_publication(&user, name).await.unwrap();
        let left = admin
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[name])
            .await
            .unwrap();
        assert!(left.is_none(), "{name} dropped");
        // Dropping what is not there is not an error.
        catalog::drop_publication(&user, name).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_publication_names_what_it_lacks() {
    let admin = admin().await;
    let s = schema(&admin, "cat_chk").await;
    let only_t1 = support::unique_name("cat_chk1");
    let all = support::unique_name("cat_chka");
    as_user(
        &admin,
        &s,
        &format!(
            "CREATE TABLE {{s}}.t1 (id int); CREATE TABLE {{s}}.t2 (id int);
             CREATE PUBLICATION {} FOR TABLE {{s}}.t1",
            quote_ident(&only_t1)
        ),
    )
    .await;
    admin
        .batch_execute(&format!(
            "CREATE PUBLICATION {} FOR ALL TABLES",
            quote_ident(&all)
        ))
        .await
        .unwrap();
    let user = user_client().await;
    let info = catalog::check_server(&user).await.unwrap();
    let both = [pair(&s, "t1"), pair(&s, "t2")];

    let m = setup_message(catalog::check_publication(&user, &info, "cat_no_such_pub", None).await);
    assert!(
        m.contains("publication `cat_no_such_pub` does not exist in database `walwatch`"),
        "{m}"
    );
    let m = setup_message(catalog::check_publication(&user, &info, &only_t1, Some(&both)).await);
    assert!(m.contains(&format!("does not publish {s}.t2:")), "{m}");
    assert!(!m.contains(&format!("{s}.t1")), "{m}");
    catalog::check_publication(&user, &info, &only_t1, Some(&both[..1]))
        .await
        .unwrap();
    // FOR ALL TABLES publishes every table (pg_publication.puballtables).
    catalog::check_publication(&user, &info, &all, Some(&both))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("DROP PUBLICATION {}", quote_ident(&all)))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_select_names_the_missing_grant() {
    let admin = admin().await;
    let s = schema(&admin, "cat_sel").await;
    as_user(&admin, &s, "CREATE TABLE {s}.mine (id int)").await;
    // Owned by the superuser: walwatch may not read it until granted.
    admin
        .batch_execute(&format!("CREATE TABLE {}.theirs (id int)", quote_ident(&s)))
        .await
        .unwrap();
    let user = user_client().await;
    let info = catalog::check_server(&user).await.unwrap();
    let tables = [pair(&s, "mine"), pair(&s, "theirs")];
    let m = setup_message(catalog::check_select(&user, &info, &tables).await);
    assert!(
        m.contains(&format!("GRANT SELECT ON {s}.theirs TO \"walwatch\";")),
        "{m}"
    );
    assert!(!m.contains(&format!("{s}.mine")), "{m}");
    admin
        .batch_execute(&format!(
            "GRANT SELECT ON {}.theirs TO {}",
            quote_ident(&s),
            quote_ident(TEST_USER)
        ))
        .await
        .unwrap();
    catalog::check_select(&user, &info, &tables).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_types_reads_domains_enums_and_their_arrays() {
    let admin = admin().await;
    let s = schema(&admin, "cat_typ").await;
    as_user(
        &admin,
        &s,
        "CREATE TYPE {s}.mood AS ENUM ('happy', 'so sad');
         CREATE DOMAIN {s}.pos AS int4 CHECK (VALUE > 0);
         CREATE DOMAIN {s}.pos2 AS {s}.pos;
         CREATE DOMAIN {s}.ints AS int4[];
         CREATE TYPE {s}.pair AS (a int, b text)",
    )
    .await;
    let user = user_client().await;
    let reg = catalog::load_types(&user).await.unwrap();
    let oid = async |name: String| -> u32 {
        admin
            .query_one("SELECT $1::text::regtype::oid", &[&name])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .get(0)
    };
    let q = |t: &str| format!("{}.{t}", quote_ident(&s));
    let mood = oid(q("mood")).await;
    let pos = oid(q("pos")).await;
    assert_eq!(reg.get(mood), Some(&TypeKind::Enum));
    assert_eq!(reg.get(pos), Some(&TypeKind::Domain { base: 23 }));
    assert_eq!(
        reg.get(oid(q("pos2")).await),
        Some(&TypeKind::Domain { base: pos })
    );
    assert_eq!(
        reg.get(oid(q("ints")).await),
        Some(&TypeKind::Domain { base: 1007 })
    );
    // Arrays of the user types are arrays of them, whatever their dimensions.
    for (array, elem) in [(q("mood[]"), mood), (q("pos[]"), pos)] {
        assert_eq!(
            reg.get(oid(array).await),
            Some(&TypeKind::Array { elem, delim: b',' })
        );
    }
    assert_eq!(reg.get(oid(q("pair")).await), Some(&TypeKind::Other));
    // Arrays of built-ins are listed with their element's delimiter (box's is `;`, pg_type).
    assert_eq!(
        reg.get(1020),
        Some(&TypeKind::Array {
            elem: 603,
            delim: b';'
        })
    );
    // int2vector has an element type but is not an array type.
    assert_eq!(reg.get(22), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_wal_lsn_is_the_insert_position() {
    let user = user_client().await;
    let admin = admin().await;
    let before = catalog::current_wal_lsn(&user).await.unwrap();
    let s = schema(&admin, "cat_lsn").await;
    as_user(
        &admin,
        &s,
        "CREATE TABLE {s}.t (id int); INSERT INTO {s}.t VALUES (1)",
    )
    .await;
    let server: String = admin
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let server: Lsn = server.parse().unwrap();
    let after = catalog::current_wal_lsn(&user).await.unwrap();
    assert!(before < server, "{before} < {server}");
    assert!(server <= after, "{server} <= {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_key_lists_the_key_in_key_order() {
    let admin = admin().await;
    let s = schema(&admin, "cat_pk").await;
    as_user(
        &admin,
        &s,
        "CREATE TABLE {s}.k (gone int, a int, b text, c date, \"D d\" int, x int,
                             PRIMARY KEY (c, \"D d\", a));
         ALTER TABLE {s}.k DROP COLUMN gone;
         CREATE UNIQUE INDEX ON {s}.k (x);
         CREATE TABLE {s}.nokey (a int UNIQUE)",
    )
    .await;
    let user = user_client().await;
    // Key order, not table order (pg_index.indkey lists the key's columns in order).
    assert_eq!(
        catalog::primary_key(&user, &s, "k").await.unwrap(),
        ["c", "D d", "a"]
    );
    // A unique index is no primary key.
    assert!(
        catalog::primary_key(&user, &s, "nokey")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        catalog::primary_key(&user, &s, "missing")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn array_dims_reads_the_declared_dimensions() {
    let admin = admin().await;
    let s = schema(&admin, "cat_dims").await;
    as_user(
        &admin,
        &s,
        "CREATE TYPE {s}.mood AS ENUM ('happy', 'sad');
         CREATE TABLE {s}.a (id int, one int4[], two int4[][], three text[][][],
                             moods {s}.mood[][], gone int4[][], plain text, sized int4[3][3]);
         ALTER TABLE {s}.a DROP COLUMN gone",
    )
    .await;
    let user = user_client().await;
    // pg_attribute.attndims: the dimensions a column was declared with (more than one only).
    let want: HashMap<String, usize> = [("two", 2), ("three", 3), ("moods", 2), ("sized", 2)]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    assert_eq!(catalog::array_dims(&user, &s, "a").await.unwrap(), want);
    assert!(
        catalog::array_dims(&user, &s, "missing")
            .await
            .unwrap()
            .is_empty()
    );
}

/// A slot's row, waiting (with a deadline) until `ready` holds for it.
async fn slot_when(client: &Client, name: &str, ready: impl Fn(&SlotRow) -> bool) -> SlotRow {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row = catalog::slot_row(client, name).await.unwrap();
        match row {
            Some(r) if ready(&r) => return r,
            _ if std::time::Instant::now() > deadline => {
                panic!("timed out waiting for slot {name}: {row:?}")
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_are_listed_read_and_dropped() {
    let admin = admin().await;
    let logical = support::unique_name("cat_slot_l");
    let physical = support::unique_name("cat_slot_p");
    admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&logical],
        )
        .await
        .unwrap();
    admin
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true)",
            &[&physical],
        )
        .await
        .unwrap();
    let user = user_client().await;

    let all = catalog::list_slots(&user).await.unwrap();
    // Largest retained WAL first (slots without a restart_lsn last).
    let retained: Vec<i64> = all.iter().map(|r| r.retained_bytes.unwrap_or(-1)).collect();
    assert!(retained.is_sorted_by(|a, b| a >= b), "{all:?}");
    let l = all
        .iter()
        .find(|r| r.name == logical)
        .expect("logical slot listed");
    assert_eq!(l.kind, "logical");
    assert_eq!(l.plugin.as_deref(), Some("pgoutput"));
    assert_eq!(l.database.as_deref(), Some(TEST_DATABASE));
    assert!(!l.temporary);
    assert_eq!(l.active_pid, None);
    assert!(
        l.restart_lsn.is_some() && l.confirmed_flush_lsn.is_some(),
        "{l:?}"
    );
    assert_eq!(l.wal_status.as_deref(), Some("reserved"));
    assert!(l.retained_bytes.is_some_and(|b| b >= 0), "{l:?}");
    assert!(l.lag_bytes.is_some_and(|b| b >= 0), "{l:?}");
    let p = catalog::slot_row(&user, &physical).await.unwrap().unwrap();
    assert_eq!(p.kind, "physical");
    assert_eq!((p.plugin.as_deref(), p.database.as_deref()), (None, None));
    assert!(p.restart_lsn.is_some(), "reserved at creation: {p:?}");
    assert_eq!((p.confirmed_flush_lsn, p.lag_bytes), (None, None));
    assert!(
        catalog::slot_row(&user, "cat_no_such_slot")
            .await
            .unwrap()
            .is_none()
    );

    catalog::drop_slot(&user, &logical, false).await.unwrap();
    assert!(catalog::slot_row(&user, &logical).await.unwrap().is_none());
    match catalog::drop_slot(&user, &logical, false).await {
        Err(Error::Config(m)) => assert!(m.contains("no replication slot named"), "{m}"),
        other => panic!("{other:?}"),
    }
    catalog::drop_slot(&user, &physical, false).await.unwrap();

    // A slot in use: a temporary slot stays acquired by the session that created it
    // (slotfuncs.c: ReplicationSlotRelease keeps active_pid for a temporary slot).
    let holder = support::admin_client(TEST_DATABASE).await;
    let holder_pid: i32 = holder
        .query_one(
            "SELECT pg_backend_pid() FROM pg_create_logical_replication_slot($1, 'pgoutput', true)",
            &[&logical],
        )
        .await
        .unwrap()
        .get(0);
    let t = slot_when(&user, &logical, |r| r.active_pid.is_some()).await;
    assert!(t.temporary);
    assert_eq!(t.active_pid, Some(holder_pid));
    match catalog::drop_slot(&user, &logical, false).await {
        Err(Error::SlotInUse(m)) => assert!(m.contains(&holder_pid.to_string()), "{m}"),
        other => panic!("{other:?}"),
    }
    // walwatch is not a superuser, and may not terminate the postgres session: --force by the
    // superuser.
    catalog::drop_slot(&admin, &logical, true).await.unwrap();
    assert!(catalog::slot_row(&user, &logical).await.unwrap().is_none());
    assert!(holder.is_closed() || holder.simple_query("SELECT 1").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_writers_lists_sessions_that_hold_a_written_transaction() {
    let admin = admin().await;
    let s = schema(&admin, "cat_wr").await;
    as_user(&admin, &s, "CREATE TABLE {s}.t (id int)").await;
    let writer = user_client().await;
    let pid: i32 = writer
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    writer
        .batch_execute(&format!(
            "BEGIN; INSERT INTO {}.t VALUES (1)",
            quote_ident(&s)
        ))
        .await
        .unwrap();
    let user = user_client().await;
    let found = catalog::open_writers(&user).await.unwrap();
    let line = found
        .iter()
        .find(|l| l.starts_with(&format!("pid {pid} ")))
        .unwrap_or_else(|| panic!("pid {pid} in {found:?}"));
    assert!(line.contains("(user walwatch, "), "{line}");
    assert!(line.contains("idle in transaction"), "{line}");
    assert!(line.contains("INSERT INTO"), "{line}");
    writer.batch_execute("COMMIT").await.unwrap();
    let found = catalog::open_writers(&user).await.unwrap();
    assert!(
        !found.iter().any(|l| l.starts_with(&format!("pid {pid} "))),
        "{found:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diagnose_reads_publications_replica_identity_sessions_and_slots() {
    let admin = admin().await;
    let s = schema(&admin, "cat_diag").await;
    let publication = support::unique_name("cat_diag");
    let slot = support::unique_name("cat_diag");
    as_user(
        &admin,
        &s,
        &format!(
            "CREATE TABLE {{s}}.watched (id int PRIMARY KEY, v text);
             CREATE TABLE {{s}}.other (id int PRIMARY KEY, v text);
             CREATE TABLE {{s}}.keyed (id int NOT NULL, k int NOT NULL, v text);
             CREATE UNIQUE INDEX keyed_k ON {{s}}.keyed (k);
             ALTER TABLE {{s}}.keyed REPLICA IDENTITY USING INDEX keyed_k;
             CREATE PUBLICATION {} FOR TABLE {{s}}.watched, {{s}}.keyed
                 WITH (publish = 'insert, update')",
            quote_ident(&publication)
        ),
    )
    .await;
    admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    let user = user_client().await;
    let scope = walwatch::assert::diagnose::Scope {
        publications: vec![publication.clone()],
        slot: Some(slot.clone()),
    };
    let diagnose = async |expr: &str| {
        let e = walwatch::Expr::compile(expr).unwrap();
        walwatch::assert::diagnose::diagnose(&user, &e, &scope).await
    };
    let has = |found: &[String], words: &[&str]| {
        assert!(
            found.iter().any(|d| words.iter().all(|w| d.contains(w))),
            "no finding with {words:?} in {found:?}"
        );
    };

    // A table outside the publication, an operation it does not publish, a slot nobody reads.
    let found = diagnose(&format!(
        r#"schema == "{s}" && table == "other" && op == "DELETE""#
    ))
    .await;
    has(
        &found,
        &[&format!("table {s}.other is not in the publication")],
    );
    has(&found, &[&format!("slot `{slot}` has no active consumer")]);
    let found = diagnose(&format!(
        r#"schema == "{s}" && table == "watched" && op == "DELETE""#
    ))
    .await;
    has(
        &found,
        &[&format!("does not publish DELETE of {s}.watched")],
    );

    // Replica identity: DEFAULT sends the primary key only, USING INDEX that index's columns
    // (pg_index.indisprimary / indisreplident).
    let found = diagnose(&format!(
        r#"schema == "{s}" && table == "watched" && op == "UPDATE" && old.v == "x""#
    ))
    .await;
    has(
        &found,
        &["REPLICA IDENTITY DEFAULT (key columns: id)", "old.v"],
    );
    assert!(
        !found.iter().any(|d| d.contains("not in the publication")),
        "{found:?}"
    );
    let found = diagnose(&format!(
        r#"schema == "{s}" && table == "keyed" && op == "DELETE" && data.v == "x""#
    ))
    .await;
    has(
        &found,
        &["REPLICA IDENTITY USING INDEX (key columns: k)", "data.v"],
    );

    // A session holding a written transaction.
    let writer = user_client().await;
    let pid: i32 = writer
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    writer
        .batch_execute(&format!(
            "SET application_name = 'cat-writer'; BEGIN; INSERT INTO {}.watched VALUES (1, 'x')",
            quote_ident(&s)
        ))
        .await
        .unwrap();
    let found = diagnose(&format!(r#"schema == "{s}" && table == "watched""#)).await;
    has(
        &found,
        &[
            &format!("a transaction is still open in session {pid} of `cat-writer`"),
            "idle in transaction since 2",
            "INSERT INTO",
        ],
    );
    writer.batch_execute("ROLLBACK").await.unwrap();

    // No such table in this database.
    let found = diagnose(r#"table == "cat_no_such_table""#).await;
    has(
        &found,
        &["there is no table `cat_no_such_table` in database `walwatch`"],
    );
    admin
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn marker_emit_returns_the_position_of_its_message() {
    let user = user_client().await;
    let before = catalog::current_wal_lsn(&user).await.unwrap();
    let at = walwatch::marker::emit(&user, "walwatch-cat-test", "hello")
        .await
        .unwrap();
    let after = catalog::current_wal_lsn(&user).await.unwrap();
    assert!(before <= at && at <= after, "{before} <= {at} <= {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_of_another_type_is_an_error_naming_the_query_not_a_panic() {
    let user = user_client().await;
    // What array_dims met on PostgreSQL 17: an int2 read as i32 (it panicked in Row::get).
    let row = user.query_one("SELECT 2::int2", &[]).await.unwrap();
    let e = catalog::column::<i32>(&row, "array_dims", 0).unwrap_err();
    assert!(
        matches!(
            e,
            Error::CatalogType {
                query: "array_dims",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(!e.is_transient());
    let m = e.to_string();
    assert!(
        m.starts_with("catalog query `array_dims` returned an unexpected column type: "),
        "{m}"
    );
    assert!(m.contains("int2") && m.contains("i32"), "{m}");
    assert!(
        m.contains("this is a walwatch bug, please report it"),
        "{m}"
    );
    assert_eq!(catalog::column::<i16>(&row, "array_dims", 0).unwrap(), 2);
    // A column that is not there is the same kind of bug.
    let e = catalog::column::<i16>(&row, "array_dims", 1).unwrap_err();
    assert!(matches!(e, Error::CatalogType { .. }), "{e:?}");
}

/// The OID of `schema.table`.
async fn oid_of(client: &Client, schema: &str, table: &str) -> u32 {
    client
        .query_one(
            "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_key_of_reads_the_key_by_oid_in_key_order() {
    let admin = admin().await;
    let s = schema(&admin, "cat_pko").await;
    as_user(
        &admin,
        &s,
        "CREATE TABLE {s}.k (gone int, a int, b text, \"D d\" int, PRIMARY KEY (\"D d\", a));
         ALTER TABLE {s}.k DROP COLUMN gone;
         CREATE TABLE {s}.nokey (a int UNIQUE)",
    )
    .await;
    let user = user_client().await;
    let k = oid_of(&user, &s, "k").await;
    assert_eq!(
        catalog::primary_key_of(&user, k).await.unwrap(),
        ["D d", "a"]
    );
    let nokey = oid_of(&user, &s, "nokey").await;
    assert!(
        catalog::primary_key_of(&user, nokey)
            .await
            .unwrap()
            .is_empty()
    );
    // An OID that names no table (dropped since): no key, not an error.
    assert!(catalog::primary_key_of(&user, 1).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_ancestors_lists_the_parents_nearest_first() {
    let admin = admin().await;
    let s = schema(&admin, "cat_part").await;
    as_user(
        &admin,
        &s,
        "CREATE TABLE {s}.m (k int) PARTITION BY RANGE (k);
         CREATE TABLE {s}.m_a PARTITION OF {s}.m FOR VALUES FROM (0) TO (10)
             PARTITION BY RANGE (k);
         CREATE TABLE {s}.m_a_1 PARTITION OF {s}.m_a FOR VALUES FROM (0) TO (5);
         CREATE TABLE {s}.plain (k int)",
    )
    .await;
    let user = user_client().await;
    let names = async |table: &str| -> Vec<String> {
        let oid = oid_of(&user, &s, table).await;
        catalog::partition_ancestors(&user, oid)
            .await
            .unwrap()
            .iter()
            .map(|t| format!("{}.{}", t.schema, t.table))
            .collect()
    };
    assert_eq!(names("m_a_1").await, [format!("{s}.m_a"), format!("{s}.m")]);
    assert_eq!(names("m_a").await, [format!("{s}.m")]);
    assert!(names("m").await.is_empty(), "the root is no partition");
    assert!(names("plain").await.is_empty());
    assert!(
        catalog::partition_ancestors(&user, 1)
            .await
            .unwrap()
            .is_empty()
    );
}
