-- The golden recordings' workload (tests/golden/README.md), run after the slot is created, by
-- a role whose walsender streams transactions past 64 kB (logical_decoding_work_mem).
-- {gid} is replaced by a name unique to the run.
INSERT INTO "Order Items" (id, "unit price", qty, big, f8, f4, ok, label, note, c, b, u, j, jb,
                           d, t, tz, ts, tstz, iv, ip, mac, m, tags, grid)
VALUES
  (1, 9.99, 3, 12345678901234567890.1234567890123456789, 'NaN', 1.1, true,
   repeat(md5('label'), 100), 'héllo "q"', 'ab', '\xdeadbeef',
   'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{"a": [1, 2.50]}', '{"k": "v\"q\\", "n": null}',
   '2024-02-29', '12:34:56.789', '12:34:56+05:30', '1999-12-31 23:59:59.999999',
   '0044-03-15 12:00:00+00 BC', '1 year 2 mons 3 days 04:05:06.7', '192.168.0.1/24',
   '08:00:2b:01:02:03', 'häppy', '{"a b","c\"d",NULL,"{e}"}', '{{1,2},{3,4}}'),
  (2, 0, -32768, -0.000001, '-Infinity', 'Infinity', false,
   'short', NULL, NULL, '\x', NULL, 'null', '[]',
   'infinity', '24:00:00', '00:00:00-04', '-infinity', '10000-01-01 00:00:00+00',
   '-1 days -00:00:01', '::1', NULL, 'sad', '{}', NULL);
UPDATE "Order Items" SET qty = 4 WHERE id = 1;
DELETE FROM "Order Items" WHERE id = 2;

INSERT INTO meas VALUES (1, 'eu', '2024-05-01', 10), (2, 'eu', '2025-05-01', 20),
                        (3, 'us', '2024-05-01', 30);
CREATE TABLE meas_eu_2026 (LIKE meas INCLUDING ALL);
ALTER TABLE meas_eu ATTACH PARTITION meas_eu_2026 FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
INSERT INTO meas VALUES (4, 'eu', '2026-03-01', 40);
UPDATE meas SET v = v + 1 WHERE id = 1;
DELETE FROM meas WHERE id = 2;
ALTER TABLE meas DETACH PARTITION meas_other;
INSERT INTO meas_other VALUES (5, 'us', '2024-01-01', 50);

-- Streamed (past 64 kB) and committed; then streamed and rolled back.
INSERT INTO bulk SELECT g, repeat('y', 350) FROM generate_series(1, 200) g;
BEGIN;
INSERT INTO bulk SELECT g, repeat('z', 350) FROM generate_series(2001, 2200) g;
ROLLBACK;
-- Streamed and committed, with a streamed subtransaction rolled back inside (PostgreSQL 18
-- does not stream a top-level transaction already rolled back when it is decoded; it does
-- stream this one, and the subtransaction's Stream Abort).
BEGIN;
INSERT INTO bulk SELECT g, repeat('s', 350) FROM generate_series(4001, 4200) g;
SAVEPOINT big;
INSERT INTO bulk SELECT g, repeat('w', 350) FROM generate_series(5001, 5200) g;
ROLLBACK TO big;
INSERT INTO bulk VALUES (4201, 'after the savepoint');
COMMIT;
BEGIN;
INSERT INTO bulk VALUES (1001, 'a');
SAVEPOINT s;
INSERT INTO bulk VALUES (1002, 'rolled back');
ROLLBACK TO s;
INSERT INTO bulk VALUES (1003, 'c');
COMMIT;
UPDATE bulk SET v = 'updated' WHERE id = 1;
BEGIN;
INSERT INTO bulk VALUES (3001, 'prepared');
PREPARE TRANSACTION '{gid}';
COMMIT PREPARED '{gid}';

INSERT INTO nokey VALUES (1, 'no replica identity');
INSERT INTO full_ident VALUES (1, 'a');
UPDATE full_ident SET v = 'b' WHERE id = 1;
DELETE FROM full_ident WHERE id = 1;
SELECT pg_logical_emit_message(true, 'golden', 'transactional');
SELECT pg_logical_emit_message(false, 'golden', 'not transactional');
TRUNCATE bulk;
