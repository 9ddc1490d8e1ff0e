
# 080_upgrade_messages.pl -- ALTER EXTENSION outbox UPDATE keeps every
# message, whatever its state, and the updated extension delivers each as
# it should.
#
# For every version older than the default one (OutboxVersions: whatever
# the installed scripts offer, so a new version is covered without editing
# this test), in a database of its own, with the current library preloaded:
#
#  1. CREATE EXTENSION outbox VERSION 'old'; the current library serves it:
#     a message saved now is published; then, with the relay worker paused
#     (outbox.enabled = off), messages in every state: processed;
#     claimed by fetch_pending() in a session that stays and in one that
#     will go away; failed (max_retries reached); pending in backoff (one
#     failed attempt, the next due in 5 - 10 minutes); pending, two of them
#     in order under one key, one without a key;
#  2. ALTER EXTENSION outbox UPDATE: the default version is installed and
#     every message row is as it was, column by column;
#  3. the worker resumes, and then: the pending messages are published, once
#     each, in order per key; the abandoned claim returns to pending when its
#     session ends and is published; the claim of the session that stays is
#     left alone until that session marks it processed; the message in
#     backoff waits for its time (made to come by setting next_attempt_at)
#     and is then published; the failed one stays failed until
#     retry_failed(); the processed one is never published again.  A last
#     message, saved after all of that, arrives after everything else: no
#     message arrives twice, and none arrives that should not.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;
use OutboxVersions;

my $node = OutboxTest::new_node(
	'upgrade_messages',
	databases => '',
	extension_in => [],
	wait_worker => 0,
	conf => qq{
outbox.poll_interval = '100ms'
outbox.max_retries = 2
outbox.retry_backoff = '10min'
outbox.retry_backoff_max = '10min'
outbox.processing_timeout = '1h'
});

my $versions = OutboxVersions::installed($node);
my @from = @{ $versions->{older} };
plan skip_all => "no version older than $versions->{default} to update from"
  unless @from;
note("updating to $versions->{default} from: @from");

# One database per old version, each relayed by its worker.
my %dbname = map { my $v = $_; $v =~ s/\W/_/g; ($_ => "from_$v") } @from;
$node->safe_psql('postgres', qq{CREATE DATABASE "$dbname{$_}"}) for @from;
$node->append_conf('postgresql.conf',
	"outbox.databases = '" . join(',', map { $dbname{$_} } @from) . "'\n");
$node->restart;

# The columns every version has had since 0.1.0; an update keeps them.
my $row_columns = 'id, topic, key, payload, headers, status, retries, last_error, '
  . 'created_at, processed_at, next_attempt_at, claimed_at, claimed_by';

for my $version (@from)
{
	my $db = $dbname{$version};
	my $sql = sub { return $node->safe_psql($db, $_[0]) };
	my $save = sub {
		my ($key, $state) = @_;
		my $k = defined $key ? "'$key'" : 'NULL';
		return $sql->("SELECT outbox.save('upg', '{\"state\": \"$state\"}'::jsonb, key => $k)");
	};
	my $status = sub {
		return $sql->("SELECT status || '/' || retries FROM outbox.messages WHERE id = '$_[0]'");
	};

	# ---------------------------------------------------------------- 1. the old version
	$sql->("CREATE EXTENSION outbox VERSION '$version'");
	is($sql->("SELECT extversion FROM pg_extension WHERE extname = 'outbox'"),
		$version, "$version: installed");
	my $listener = OutboxTest::Listener->new($node, $db, 'upg');
	my %id;

	# The current library with the old version's objects: it publishes.
	$id{old_schema} = $save->('k-old', 'saved before the update');
	ok(OutboxTest::poll_until($node, $db, "SELECT status FROM outbox.messages WHERE id = '$id{old_schema}'", 'processed'),
		"$version: the current library publishes a message saved under $version");
	ok($listener->wait_for_id($id{old_schema}), "$version: its notification arrives");
	# Paused from here on.  A restart, not a reload: once the server is back,
	# no worker can still be publishing under the old setting.
	$listener->quit;
	$node->safe_psql('postgres', 'ALTER SYSTEM SET outbox.enabled = off');
	$node->restart;
	$listener = OutboxTest::Listener->new($node, $db, 'upg');

	$id{processed} = $save->('k-processed', 'processed');
	is($sql->('SELECT id FROM outbox.fetch_pending(1)'), $id{processed},
		"$version: fetch_pending claims the first message");
	is($sql->("SELECT outbox.mark_processed('$id{processed}')"), '1',
		"$version: and mark_processed marks it");

	# Claims held by sessions of external relays: one stays connected, the
	# other goes away after the update.
	my $relay_stays = $node->background_psql($db);
	my $relay_goes = $node->background_psql($db);
	$id{claim_kept} = $save->('k-claim-kept', 'claim kept');
	is($relay_stays->query_safe('SELECT id FROM outbox.fetch_pending(1)'),
		$id{claim_kept}, "$version: a relay session claims a message");
	$id{claim_abandoned} = $save->('k-claim-abandoned', 'claim abandoned');
	is($relay_goes->query_safe('SELECT id FROM outbox.fetch_pending(1)'),
		$id{claim_abandoned}, "$version: another relay session claims another");

	$id{failed} = $save->('k-failed', 'failed');
	$sql->("SELECT outbox.mark_failed('$id{failed}', 'attempt 1 failed')");
	is($sql->("SELECT outbox.mark_failed('$id{failed}', 'attempt 2 failed')"),
		'failed', "$version: a message fails for good after max_retries attempts");

	$id{backoff} = $save->('k-backoff', 'backoff');
	is($sql->("SELECT outbox.mark_failed('$id{backoff}', 'attempt 1 failed')"),
		'pending', "$version: a message with one failed attempt is pending again");
	is( $sql->(
			"SELECT next_attempt_at > now() + interval '4 min' FROM outbox.messages WHERE id = '$id{backoff}'"
		),
		't',
		"$version: and waits in backoff");

	$id{pending_1} = $save->('k-order', 'pending 1');
	$id{pending_2} = $save->('k-order', 'pending 2');
	$id{pending_other} = $save->('k-other', 'pending other key');
	$id{pending_nokey} = $save->(undef, 'pending without key');

	is( $sql->("SELECT string_agg(status || '/' || retries, ' ' ORDER BY id) FROM outbox.messages"),
		'processed/0 processed/0 processing/0 processing/0 failed/2 pending/1 pending/0 pending/0 pending/0 pending/0',
		"$version: a message in every state");
	my $before = $sql->("SELECT $row_columns FROM outbox.messages ORDER BY id");

	# ---------------------------------------------------------------- 2. the update
	$sql->('ALTER EXTENSION outbox UPDATE');
	is($sql->("SELECT extversion FROM pg_extension WHERE extname = 'outbox'"),
		$versions->{default}, "$version: ALTER EXTENSION outbox UPDATE installs $versions->{default}");
	is($sql->("SELECT $row_columns FROM outbox.messages ORDER BY id"),
		$before, "$version: every message row is as it was");

	# ---------------------------------------------------------------- 3. after the update
	OutboxTest::set_conf($node, 'outbox.enabled' => 'on');
	my @pending = @id{qw(pending_1 pending_2 pending_other pending_nokey)};
	ok( OutboxTest::poll_until(
			$node, $db,
			"SELECT count(*) FROM outbox.messages WHERE status = 'processed' AND id IN ("
			  . join(',', map { "'$_'" } @pending) . ')',
			scalar(@pending)),
		"$version: the pending messages are published");
	ok($listener->wait_for_id($_), "$version: and their notifications arrive") for @pending;

	$relay_goes->quit;
	ok(OutboxTest::poll_until($node, $db, "SELECT status FROM outbox.messages WHERE id = '$id{claim_abandoned}'", 'processed'),
		"$version: the claim of the relay session that ended returns, and is published");
	ok($listener->wait_for_id($id{claim_abandoned}), "$version: its notification arrives");

	is($status->($id{claim_kept}), 'processing/0',
		"$version: the claim of the relay session that stays is left alone");
	is($relay_stays->query_safe("SELECT outbox.mark_processed('$id{claim_kept}')"),
		'1', "$version: that session marks it processed");
	$relay_stays->quit;

	is($status->($id{backoff}), 'pending/1', "$version: the message in backoff still waits");
	$sql->("UPDATE outbox.messages SET next_attempt_at = now() WHERE id = '$id{backoff}'");
	ok(OutboxTest::poll_until($node, $db, "SELECT status FROM outbox.messages WHERE id = '$id{backoff}'", 'processed'),
		"$version: once its time has come it is published");
	ok($listener->wait_for_id($id{backoff}), "$version: its notification arrives");

	is($status->($id{failed}), 'failed/2', "$version: the failed message stays failed");
	is($sql->("SELECT outbox.retry_failed(ARRAY['$id{failed}'::uuid])"), '1',
		"$version: retry_failed requeues it");
	ok(OutboxTest::poll_until($node, $db, "SELECT status FROM outbox.messages WHERE id = '$id{failed}'", 'processed'),
		"$version: and it is published");

	is($status->($id{processed}), 'processed/0', "$version: the processed message stays processed");

	# The last message: when it has arrived, so has everything before it.
	$id{last} = $save->('k-last', 'last');
	ok($listener->wait_for_id($id{last}), "$version: a message saved last arrives");
	my %arrived;
	$arrived{ $_->{envelope}{id} // '' }++ for @{ $listener->received };
	my @expected = (@pending, @id{qw(claim_abandoned backoff failed last)});
	is( join(' ', map { $arrived{$_} // 0 } @expected),
		join(' ', (1) x @expected),
		"$version: every message that should arrive arrived once");
	is(scalar(keys %arrived), scalar(@expected), "$version: and nothing else arrived");
	ok(!$arrived{ $id{processed} } && !$arrived{ $id{claim_kept} },
		"$version: neither the processed message nor the one its relay marked");
	my @order = map { $_->{envelope}{id} } @{ $listener->received };
	my ($first) = grep { $order[$_] eq $id{pending_1} } 0 .. $#order;
	my ($second) = grep { $order[$_] eq $id{pending_2} } 0 .. $#order;
	ok($first < $second, "$version: the two messages of one key arrive in order");
	$listener->quit;
}

$node->stop;
done_testing();
