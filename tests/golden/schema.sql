-- The golden recordings' schema (tests/golden/README.md), created in the recording role's own
-- schema before the slot: every type walwatch maps, a partitioned table with a sub-partition
-- and a default partition, a stored generated column, a TOASTed column, a table without a
-- replica identity and one under REPLICA IDENTITY FULL.
CREATE TYPE mood AS ENUM ('sad', 'ok', 'häppy');
CREATE DOMAIN price AS numeric(12, 2) CHECK (VALUE >= 0);
CREATE TABLE "Order Items" (
    id int PRIMARY KEY,
    "unit price" price,
    qty int2,
    big numeric,
    f8 float8,
    f4 real,
    ok bool,
    label text,
    note varchar(20),
    c char(3),
    b bytea,
    u uuid,
    j json,
    jb jsonb,
    d date,
    t time,
    tz timetz,
    ts timestamp,
    tstz timestamptz,
    iv interval,
    ip inet,
    mac macaddr,
    m mood,
    tags text[],
    grid int4[][],
    total numeric GENERATED ALWAYS AS ("unit price" * qty) STORED
);
-- Out of line and uncompressed: an UPDATE that leaves it alone sends it as unchanged TOAST.
ALTER TABLE "Order Items" ALTER COLUMN label SET STORAGE EXTERNAL;

CREATE TABLE meas (id int, region text, at date, v int, PRIMARY KEY (id, region, at))
    PARTITION BY LIST (region);
CREATE TABLE meas_eu PARTITION OF meas FOR VALUES IN ('eu') PARTITION BY RANGE (at);
CREATE TABLE meas_eu_2024 PARTITION OF meas_eu FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE meas_eu_2025 PARTITION OF meas_eu FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE meas_other PARTITION OF meas DEFAULT;

CREATE TABLE bulk (id int PRIMARY KEY, v text);
CREATE TABLE nokey (a int, b text);
CREATE TABLE full_ident (id int PRIMARY KEY, v text);
ALTER TABLE full_ident REPLICA IDENTITY FULL;
