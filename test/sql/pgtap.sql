\unset ECHO
-- test/sql/pgtap.sql: the pgTAP tests of test/pgtap/ for make installcheck
-- (PGXS's REGRESS runs this file with pg_regress, in a database where
-- pg_regress created the extensions pgtap and outbox).
--
-- Each file runs as pg_prove would run it (quiet, unaligned, tuples only,
-- stop at the first error), and the TAP stream goes through a filter that
-- drops what passes: the plan lines and every "ok" line.  What is left is
-- what went wrong ("not ok" lines and pgTAP's diagnostics, each preceded by
-- the name of its file), so the expected output (test/expected/pgtap.out)
-- stays the first line of this file whatever tests are added.
\set QUIET 1
\set ON_ERROR_STOP 1
\pset format unaligned
\pset tuples_only true
\pset pager off
-- pg_regress gives its sessions other date and interval styles; the tests
-- are written for PostgreSQL's defaults.
SET client_min_messages = warning;
SET datestyle = 'ISO, MDY';
SET intervalstyle = 'postgres';
-- The list of files: psql has no loop, so the shell writes an include file.
\getenv abs_builddir PG_ABS_BUILDDIR
\set pgtap_list :abs_builddir '/results/pgtap_files.sql'
\setenv OUTBOX_PGTAP_LIST :pgtap_list
\! for f in "$PG_ABS_SRCDIR"/pgtap/*.sql; do printf '\\qecho # file %s\n\\i %s\n' "${f##*/}" "$f"; done >"$OUTBOX_PGTAP_LIST"
\o | awk '/^# file / { file = $0; next } /^ok [0-9]+/ || /^1\.\.[0-9]+$/ { next } { if (file != "") { print file; file = "" } print }'
\i :pgtap_list
\o
