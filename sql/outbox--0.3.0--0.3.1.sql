-- outbox--0.3.0--0.3.1.sql: ALTER EXTENSION outbox UPDATE from 0.3.0 to 0.3.1:
-- the security release (see README, "Security").
-- Complain if the script is sourced in psql rather than via ALTER EXTENSION.
\echo Use "ALTER EXTENSION outbox UPDATE" to load this file. \quit
