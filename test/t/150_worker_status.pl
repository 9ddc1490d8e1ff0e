# 150_worker_status.pl -- outbox.worker_status(): what each worker is doing,
# from shared memory.
#
#  - one row per relayed database: its main worker (destination "default")
#    idle, with its publisher; a relayed database without the extension
#    "stopped", with no pid;
#  - totals since the worker started move with each batch (published,
#    batches, last_batch_at), and start again at 0 in a new worker;
#  - states: paused (outbox.enabled off), publishing (a batch in progress),
#    failing (the last attempts all failed, last_error the publisher's),
#    backoff (an error of the worker's own), failing for an unknown
#    publisher and for one that reports a problem (not configured);
#  - a destination's worker has a row of its own, with its counts;
#  - it reads no table: it answers while outbox.messages is locked;
#  - another database's last_error is shown to pg_read_all_stats only.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest qw(poll_until wait_until query_value set_conf wait_for_worker worker_pid);

my $node = OutboxTest::new_node(
	'status',
	databases => 'postgres,third',
	create_databases => [ 'other', 'third' ],
	extension_in => [ 'postgres', 'other' ],
	conf => "outbox.poll_interval = '200ms'\noutbox.retry_backoff = '100ms'\noutbox.max_retries = 1000");

my $pid = worker_pid($node, 'postgres');

# One row of worker_status() as a hash (in database $db, as $role).
sub status_of
{
	my ($destination, %opt) = @_;
	my $db = $opt{db} // 'postgres';
	my $cols =
	  'database, destination, pid, state, publisher, started_at IS NOT NULL, '
	  . 'last_batch_at IS NOT NULL, messages_published, attempts_failed, batches, '
	  . "coalesce(last_error, '<null>'), last_error_at IS NOT NULL";
	my $sql = "SELECT $cols FROM outbox.worker_status() WHERE destination = '$destination' "
	  . "AND database = '" . ($opt{database} // 'postgres') . "'";
	$sql = "SET ROLE $opt{role}; $sql" if $opt{role};
	my $row = query_value($node, $db, $sql);
	return undef unless defined $row && $row ne '';
	my @f = split /\|/, $row, -1;
	return {
		database => $f[0], destination => $f[1], pid => $f[2], state => $f[3],
		publisher => $f[4], started => $f[5], batched => $f[6], published => $f[7],
		failed => $f[8], batches => $f[9], error => $f[10], error_at => $f[11] };
}

# Wait until the row of $destination satisfies $check; returns the row.
sub wait_status
{
	my ($destination, $check, $what) = @_;
	my $row;
	my $ok = wait_until($OutboxTest::TIMEOUT,
		sub { $row = status_of($destination); return $row && $check->($row); });
	ok($ok, $what)
	  or diag('last row: '
		  . join(', ', map { "$_=" . ($row->{$_} // '') } sort keys %{ $row // {} }));
	return $row;
}

########################################################################
# The rows of an idle server.

my $s = wait_status('default', sub { $_[0]{state} eq 'idle' }, 'the main worker is idle');
is($s->{pid}, $pid, 'its pid is the worker\'s');
is($s->{publisher}, 'notify', 'its publisher is outbox.publisher');
is($s->{started}, 't', 'started_at is set');
is($s->{published}, 0, 'nothing published yet');

my $third = query_value($node, 'postgres',
	"SELECT state, pid IS NULL FROM outbox.worker_status() WHERE database = 'third'");
is($third, 'stopped|t', 'a relayed database without the extension is stopped, with no pid');

########################################################################
# Totals.

$node->safe_psql('postgres',
	"SELECT outbox.save('status.a', '{}'::jsonb) FROM generate_series(1, 5)");
$s = wait_status('default', sub { $_[0]{published} == 5 },
	'five messages published are counted');
cmp_ok($s->{batches}, '>=', 1, 'and at least one batch');
is($s->{batched}, 't', 'last_batch_at is set');
is($s->{failed}, 0, 'no failed attempt');

# It reads no table: it answers while outbox.messages is locked.
my $locker = $node->background_psql('postgres');
$locker->query_safe('BEGIN');
$locker->query_safe('LOCK TABLE outbox.messages IN ACCESS EXCLUSIVE MODE');
my ($rc, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '2s'; SELECT count(*) FROM outbox.worker_status()");
is($rc, 0, 'worker_status() answers while outbox.messages is locked') or diag($err);
($rc, $out, $err) = $node->psql('postgres',
	"SET lock_timeout = '200ms'; SELECT count(*) FROM outbox.stats");
isnt($rc, 0, '(while reading outbox.stats waits for the lock)');
$locker->query_safe('ROLLBACK');
$locker->quit;

########################################################################
# Paused.

set_conf($node, 'outbox.enabled' => 'off');
wait_status('default', sub { $_[0]{state} eq 'paused' }, 'outbox.enabled = off: paused');
set_conf($node, 'outbox.enabled' => 'on');
wait_status('default', sub { $_[0]{state} eq 'idle' }, 'on again: idle');

########################################################################
# Publishing and failing, through the function publisher.

$node->safe_psql(
	'postgres', q{
CREATE TABLE deliver_mode (mode text);
INSERT INTO deliver_mode VALUES ('fail');
CREATE FUNCTION public.deliver(m outbox.messages) RETURNS void LANGUAGE plpgsql
    SET search_path = public AS $$
BEGIN
    IF (SELECT mode FROM deliver_mode) = 'fail' THEN
        RAISE EXCEPTION 'deliver refused %', m.topic;
    ELSIF (SELECT mode FROM deliver_mode) = 'slow' THEN
        PERFORM pg_sleep(0.05) FROM generate_series(1, 40);
    END IF;
END $$;
});
set_conf($node,
	'outbox.publisher' => 'function',
	'outbox.publisher_function' => 'public.deliver');
$node->safe_psql('postgres', "SELECT outbox.save('status.fail', '{}'::jsonb)");
$s = wait_status('default', sub { $_[0]{state} eq 'failing' && $_[0]{failed} >= 1 },
	'a batch whose attempts all failed: failing');
is($s->{publisher}, 'function', 'the publisher is the function publisher now');
like($s->{error}, qr/deliver refused status\.fail/, 'last_error is the publisher\'s error');
is($s->{error_at}, 't', 'last_error_at is set');

$node->safe_psql('postgres', "UPDATE deliver_mode SET mode = 'ok'");
$s = wait_status('default', sub { $_[0]{state} eq 'idle' && $_[0]{published} == 6 },
	'the retried message delivered: idle again, six published');

# Slow deliveries: publishing while a batch is in progress.
$node->safe_psql('postgres', "UPDATE deliver_mode SET mode = 'slow'");
$node->safe_psql('postgres', "SELECT outbox.save('status.slow', '{}'::jsonb)");
wait_status('default', sub { $_[0]{state} eq 'publishing' }, 'a batch in progress: publishing');
wait_status('default', sub { $_[0]{state} eq 'idle' && $_[0]{published} == 7 },
	'done: idle, seven published');
$node->safe_psql('postgres', "UPDATE deliver_mode SET mode = 'ok'");

########################################################################
# Backoff: an error of the worker's own (its statements fail).

$node->safe_psql('postgres', 'ALTER TABLE outbox.messages RENAME COLUMN key TO key_renamed');
$s = wait_status('default', sub { $_[0]{state} eq 'backoff' },
	'the worker\'s statements fail: backoff');
like($s->{error}, qr/key/, 'last_error says why');
$node->safe_psql('postgres', 'ALTER TABLE outbox.messages RENAME COLUMN key_renamed TO key');
wait_status('default', sub { $_[0]{state} eq 'idle' }, 'fixed: idle again');

########################################################################
# An unknown publisher.

set_conf($node, 'outbox.publisher' => 'nonexistent');
$s = wait_status('default', sub { $_[0]{state} eq 'failing' && $_[0]{publisher} eq 'nonexistent' },
	'an unknown publisher: failing');
is($s->{error}, 'outbox publisher "nonexistent" does not exist', 'with the reason');

# Another database's last error: for pg_read_all_stats only.
$node->safe_psql('postgres', 'CREATE ROLE watcher; CREATE ROLE watcher_all IN ROLE pg_read_all_stats');
$node->safe_psql('other',
	    'GRANT USAGE ON SCHEMA outbox TO watcher, watcher_all; '
	  . 'GRANT EXECUTE ON FUNCTION outbox.worker_status() TO watcher, watcher_all');
$node->safe_psql('postgres',
	    'GRANT USAGE ON SCHEMA outbox TO watcher; '
	  . 'GRANT EXECUTE ON FUNCTION outbox.worker_status() TO watcher');
is(status_of('default', db => 'other', role => 'watcher')->{error},
	'<null>', 'seen from another database, last_error is hidden');
is(status_of('default', db => 'other', role => 'watcher_all')->{error},
	'outbox publisher "nonexistent" does not exist',
	'but not from a member of pg_read_all_stats');
is(status_of('default', role => 'watcher')->{error},
	'outbox publisher "nonexistent" does not exist',
	'nor in the worker\'s own database');
# A publisher that cannot publish (not configured): failing, with its problem.
set_conf($node, 'outbox.publisher' => 'http');
$node->safe_psql('postgres', "SELECT outbox.save('status.http', '{}'::jsonb)");
$s = wait_status('default', sub { $_[0]{state} eq 'failing' && $_[0]{publisher} eq 'http' },
	'a publisher that is not configured: failing');
like($s->{error}, qr/^outbox http publisher: outbox.http_url is not set/,
	'with the problem it logged as last_error');
set_conf($node, 'outbox.publisher' => 'notify');
wait_status('default', sub { $_[0]{state} eq 'idle' && $_[0]{publisher} eq 'notify' },
	'a working publisher again: idle');

########################################################################
# A destination worker.

$node->safe_psql('postgres',
	    q{SELECT outbox.create_destination('audit', 'notify', '{"channel": "audit_ch"}'); }
	  . q{SELECT outbox.subscribe('audit', 'audit.*')});
$s = wait_status('audit', sub { $_[0]{state} eq 'idle' && $_[0]{pid} ne '' },
	'a destination\'s worker has a row of its own');
is($s->{publisher}, 'notify', 'with its publisher');
my $default_published = status_of('default')->{published};
$node->safe_psql('postgres',
	"SELECT outbox.save('audit.x', '{}'::jsonb) FROM generate_series(1, 3)");
wait_status('audit', sub { $_[0]{published} == 3 }, 'its messages are counted in its row');
is(status_of('default')->{published}, $default_published,
	'and not in the main worker\'s');

########################################################################
# A new worker starts its totals afresh.

$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
my $new_pid = wait_for_worker($node, 'postgres', not_pid => $pid);
$s = wait_status('default', sub { $_[0]{pid} eq $new_pid },
	'a new main worker is in the row');
is($s->{published}, 0, 'its totals start at 0');
is($s->{error}, '<null>', 'with no last_error');

$node->stop;
done_testing();
