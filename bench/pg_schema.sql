-- bench/pg_schema.sql — the PostgreSQL tables of `make bench` (bench/run.sh, bench/profile.sh).
-- t0: when the row was written, microseconds since the epoch; 0 and -1 are protocol rows
-- (end of a run, stop) that the bench inserts explicitly.
SET client_min_messages = warning;
DROP SCHEMA IF EXISTS sqlnotify_bench CASCADE;
CREATE SCHEMA sqlnotify_bench;
CREATE TABLE sqlnotify_bench.lat (
  id bigserial PRIMARY KEY,
  t0 bigint NOT NULL DEFAULT (extract(epoch FROM clock_timestamp()) * 1e6)::bigint,
  note text NOT NULL DEFAULT 'row');
CREATE TABLE sqlnotify_bench.bulk (LIKE sqlnotify_bench.lat INCLUDING ALL);
