# 152_backpressure.pl -- outbox.max_backlog: once that many messages are
# unfinished, save() and the batch path refuse more (53400, the backlog in
# the DETAIL), checked against a counter in shared memory.
#
#  - with the worker paused, the save that would make the 11th pending
#    message of max_backlog 10 fails, through save() and INSERT alike, and
#    so does a transaction whose own messages would pass the limit;
#  - published messages leave the counter: saving works again;
#  - the main worker corrects the counter from the table (rows deleted by
#    hand stop counting within its maintenance interval);
#  - messages routed to a paused destination count, and leave the counter
#    once delivered after resume_destination();
#  - worker_status() shows the counter (NULL while max_backlog is 0);
#  - max_backlog = 0 refuses nothing.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest qw(poll_until wait_until set_conf wait_worker_sleeping wait_all_processed);

my $node = OutboxTest::new_node(
	'backpressure',
	conf => "outbox.poll_interval = '200ms'\noutbox.max_backlog = 10\noutbox.enabled = off");

# The worker counted the backlog in its first round, before it slept.
ok(wait_worker_sleeping($node, 'postgres'), 'the worker is up (and counted the backlog)');

# Save one message; returns '' on success, else "SQLSTATE: message / DETAIL".
sub try_save
{
	my ($sql) = @_;
	$sql //= "SELECT outbox.save('bp.a', '{}'::jsonb)";
	my ($rc, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\n$sql", on_error_stop => 1);
	return '' if $rc == 0;
	my ($state) = $err =~ /ERROR:\s+(\w{5}):/;
	my ($detail) = $err =~ /DETAIL:\s+(.*)/;
	return ($state // '?') . ': ' . ($detail // $err);
}

my $saved = 0;
$saved++ while $saved < 30 && try_save() eq '';
is($saved, 10, 'ten messages saved, then the next one is refused');
is(try_save(), '53400: 10 messages are waiting to be published; outbox.max_backlog is 10.',
	'53400 configuration_limit_exceeded, with the backlog in the DETAIL');
like(try_save("INSERT INTO outbox.messages (topic, payload) VALUES ('bp.a', '\\x00')"),
	qr/^53400: /, 'the batch path is refused too');
is($node->safe_psql('postgres', "SELECT count(*) FROM outbox.messages"),
	10, 'nothing more was stored');

# Published messages leave the counter.
set_conf($node, 'outbox.enabled' => 'on');
ok(wait_all_processed($node, 'postgres', 30), 'the worker publishes the ten');
ok(wait_until(10, sub { try_save() eq '' }), 'saving works again');
ok(wait_all_processed($node, 'postgres', 30), 'that one is published too');

# A transaction's own messages count: 11 in one transaction are refused.
like(
	try_save("SELECT outbox.save('bp.b', '{}'::jsonb) FROM generate_series(1, 11)"),
	qr/^53400: 10 messages are waiting/,
	'a transaction that would save 11 at once is refused at its 11th');
is(try_save("INSERT INTO outbox.messages (topic, payload) SELECT 'bp.b', '\\x00' FROM generate_series(1, 10)"),
	'', 'ten at once are saved');
ok(wait_all_processed($node, 'postgres', 30), 'and published');

# The counter follows the table: rows deleted by hand stop counting.
set_conf($node, 'outbox.enabled' => 'off');
is(try_save("INSERT INTO outbox.messages (topic, payload) SELECT 'bp.c', '\\x00' FROM generate_series(1, 10)"),
	'', 'ten saved while the worker is paused');
like(try_save(), qr/^53400: /, 'the outbox is full');
$node->safe_psql('postgres', "DELETE FROM outbox.messages WHERE topic = 'bp.c'");
ok(wait_until(30, sub { try_save() eq '' }),
	'after a DELETE by hand, the main worker\'s count lets saves in again');

# Routed messages count, while a paused destination keeps them.
$node->safe_psql('postgres', 'DELETE FROM outbox.messages');
$node->safe_psql('postgres',
	    q{SELECT outbox.create_destination('slow', 'notify', '{"channel": "slow"}'); }
	  . q{SELECT outbox.subscribe('slow', 'routed.*'); }
	  . q{SELECT outbox.pause_destination('slow')});
set_conf($node, 'outbox.enabled' => 'on');
ok(wait_all_processed($node, 'postgres', 30), 'the default destination is empty');
ok(poll_until($node, 'postgres',
		"SELECT backlog FROM outbox.worker_status() WHERE database = 'postgres' AND destination = 'default'", '0', 30),
	'worker_status() shows the counter: 0 once the main worker counted again');
$saved = 0;
$saved++
  while $saved < 30 && try_save("SELECT outbox.save('routed.x', '{}'::jsonb)") eq '';
is($saved, 10, 'ten messages routed to the paused destination, then the outbox is full');
$node->safe_psql('postgres', "SELECT outbox.resume_destination('slow')");
ok(wait_all_processed($node, 'postgres', 60), 'resumed, the destination delivers them');
ok(wait_until(10, sub { try_save("SELECT outbox.save('routed.x', '{}'::jsonb)") eq '' }),
	'and saving works again');

# 0 refuses nothing.
set_conf($node, 'outbox.enabled' => 'off', 'outbox.max_backlog' => '0');
is(try_save("INSERT INTO outbox.messages (topic, payload) SELECT 'bp.e', '\\x00' FROM generate_series(1, 50)"),
	'', 'outbox.max_backlog = 0: fifty saved at once');
ok(poll_until($node, 'postgres',
		"SELECT backlog IS NULL FROM outbox.worker_status() WHERE database = 'postgres' AND destination = 'default'", 't', 30),
	'and the counter is not shown');

$node->stop;
done_testing();
