-- outbox--0.3.0--0.3.1.sql: ALTER EXTENSION outbox UPDATE from 0.3.0 to 0.3.1:
-- the security release (see README, "Security").
-- Complain if the script is sourced in psql rather than via ALTER EXTENSION.
\echo Use "ALTER EXTENSION outbox UPDATE" to load this file. \quit

-- Issue 22, findings 7 and 8: destination secrets set without statement
-- text (outbox.set_destination_secret), like create_destination for
-- superusers only.
CREATE FUNCTION outbox.set_destination_secret(name text, option text, value text) RETURNS void
	AS 'MODULE_PATHNAME', 'outbox_set_destination_secret'
	LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE ALL ON FUNCTION outbox.set_destination_secret(text, text, text) FROM PUBLIC;
