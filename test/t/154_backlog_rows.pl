# 154_backlog_rows.pl -- outbox.max_backlog counts rows, not ids: an
# application role that can call outbox.next_id() cannot make save()
# refuse everyone.
#
#  - ids taken without a row (a loop of next_id(), in a transaction of its
#    own or in the saving one) count nothing: saves go on;
#  - rows of a subtransaction that rolled back stop counting (a loop of
#    INSERTs each undone by an exception block), at any depth; a released
#    savepoint's rows count;
#  - an INSERT ... ON CONFLICT DO NOTHING that inserts nothing counts
#    nothing;
#  - the counter (worker_status().backlog) equals the rows the table holds.
#
# The relay is paused (outbox.enabled = off): nothing is published, so the
# counter moves only by what the sessions save.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest qw(poll_until wait_worker_sleeping);

my $node = OutboxTest::new_node(
	'backlog_rows',
	conf => "outbox.poll_interval = '200ms'\noutbox.max_backlog = 10\noutbox.enabled = off");
ok(wait_worker_sleeping($node, 'postgres'), 'the worker is up (and counted the backlog)');

$node->safe_psql('postgres', q{
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA outbox TO app;
GRANT EXECUTE ON FUNCTION outbox.save(text, jsonb, text, jsonb), outbox.next_id(),
    outbox.valid_headers(jsonb) TO app;
GRANT INSERT (id, topic, key, payload, headers) ON outbox.messages TO app;
});

# Run sql as the application role; '' on success, else the SQLSTATE.
sub as_app
{
	my ($sql) = @_;
	my ($rc, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql",
		on_error_stop => 1, extra_params => [ '-U', 'app' ]);
	return '' if $rc == 0;
	my ($state) = $err =~ /ERROR:\s+(\w{5}):/;
	return $state // $err;
}

# The counter, and the rows it should count.
sub counter
{
	return $node->safe_psql('postgres',
		"SELECT backlog FROM outbox.worker_status() WHERE database = 'postgres' AND destination = 'default'");
}
sub rows { return $node->safe_psql('postgres', "SELECT count(*) FROM outbox.messages WHERE status = 'pending'") }

my $save = "SELECT outbox.save('rows.a', '{}'::jsonb)";

is(as_app("SELECT count(outbox.next_id()) FROM generate_series(1, 100)"), '', 'the app takes 100 ids without a row');
is(as_app($save), '', 'another session still saves (the ids counted nothing)');
is(as_app("SELECT count(outbox.next_id()) FROM generate_series(1, 100); $save"), '',
	'a transaction that took 100 ids saves its message');
is(counter(), 2, 'the counter holds the two rows');

# Rows undone by an exception block: a subtransaction each.
is( as_app(q{
DO $$
BEGIN
	FOR i IN 1 .. 30 LOOP
		BEGIN
			INSERT INTO outbox.messages (topic, payload) VALUES ('rows.undone', '\x00');
			PERFORM outbox.save('rows.undone', '{}'::jsonb);
			RAISE EXCEPTION 'undo';
		EXCEPTION WHEN raise_exception THEN
			NULL;
		END;
	END LOOP;
	PERFORM outbox.save('rows.kept', '{}'::jsonb);
END $$;
}), '', 'sixty rows rolled back with their subtransactions count nothing: the transaction saves its one');
is(counter(), 3, 'the counter holds three');

# Savepoints: released ones count, rolled back ones (with what they
# released inside) do not.
is( as_app(qq{
BEGIN;
SAVEPOINT a; $save; $save; RELEASE a;
SAVEPOINT b; SAVEPOINT c; $save; $save; $save; RELEASE c; ROLLBACK TO b;
SAVEPOINT d; SELECT outbox.save('rows.a', '{}'::jsonb) FROM generate_series(1, 4); ROLLBACK TO d;
COMMIT;
}), '', 'savepoints: two released rows, three rolled back, four rolled back');
is(counter(), 5, 'the counter holds five');
is(rows(), 5, 'as does the table');

# ON CONFLICT DO NOTHING with an id the app knows: no row, no count.
my $known = $node->safe_psql('postgres', 'SELECT id FROM outbox.messages ORDER BY id LIMIT 1');
is( as_app(qq{
DO \$\$
BEGIN
	FOR i IN 1 .. 30 LOOP
		INSERT INTO outbox.messages (id, topic, payload) VALUES ('$known', 'rows.dup', '\\x00')
			ON CONFLICT DO NOTHING;
	END LOOP;
END \$\$;
}), '', 'thirty inserts of an existing id that insert nothing');
is(counter(), 5, 'count nothing');

# The limit still holds for rows.
my $saved = 0;
$saved++ while $saved < 20 && as_app($save) eq '';
is($saved, 5, 'five more rows fill the outbox');
is(as_app($save), '53400', 'then save() is refused');
is(as_app(q{INSERT INTO outbox.messages (topic, payload) VALUES ('rows.b', '\x00')}), '53400',
	'and so is the batch path');
is(rows(), 10, 'ten rows');

$node->stop;
done_testing();
