-- outbox--0.1.0--0.2.0.sql: ALTER EXTENSION outbox UPDATE from 0.1.0 to 0.2.0.
-- Complain if the script is sourced in psql rather than via ALTER EXTENSION.
\echo Use "ALTER EXTENSION outbox UPDATE" to load this file. \quit

-- 0.2.0 has the objects of 0.1.0: nothing changes in the schema.  Its
-- library serves both (the C functions are the same).  Whatever 0.2.0 adds
-- to outbox--0.2.0.sql goes here too, so that an updated 0.1.0 install ends
-- up with what a fresh 0.2.0 install has (test/t/130_upgrade_catalog.pl
-- compares them).
