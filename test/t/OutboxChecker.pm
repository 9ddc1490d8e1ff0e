# OutboxChecker.pm -- an end-to-end checker for the outbox: what was
# committed against what consumers received.
#
#   my $checker = OutboxChecker->new($node, dbname => 'postgres', topic => 'chk');
#   $checker->install;
#   my $listener = $checker->listener;          # a reconnecting LISTEN session
#   $checker->start_savers(clients => 4, rate => 100);
#   ... faults ...
#   $checker->stop_savers;
#   $checker->wait_drained(60);
#   $checker->check('after the faults', sources => [$listener], duplicates => 'crash');
#
# The ledger.  Savers save messages through checker.save_one(), which in the
# saving transaction
#   1. locks the key's row in checker.keys and takes the key's next sequence
#      number (so transactions saving one key are serialized, as an
#      application's row lock on an aggregate would: for each key, commit
#      order is id order is sequence order);
#   2. takes a token from the sequence checker.tokens (nextval is never rolled
#      back, so every attempted message has a distinct token);
#   3. saves the message, its payload {"t": token, "k": key, "s": seq}, by
#      outbox.save() or by INSERT INTO outbox.messages;
#   4. records (token, id, key, seq) in checker.ledger.
# (The count of rolled-back messages reported is tokens handed out minus
# ledger rows: after a crash the sequence skips its cached values, so it is
# an upper bound.)
# A rollback removes the message and its ledger row together, so the ledger
# lists exactly the committed messages; any token seen that is not in the
# ledger belongs to a rolled-back transaction.
#
# Savers are pgbench clients running a script that, at random, saves one to
# four messages per transaction through save(), through the batch path
# (INSERT), or from an AFTER INSERT trigger on checker.orders, or mixes two
# of them, and commits or rolls back.  Keys are locked in ascending order, so
# savers never deadlock.  pgbench's clients end when their connection is
# lost (crash, immediate shutdown): start_savers again afterwards.
#
# Consumer sources are pluggable; check() takes a list of them.  A source has
# name(), deliveries() (received messages in delivery order, each a hash of
# id, key, seq, token, epoch) and completeness rules:
#   OutboxChecker::Listener   a LISTEN session (psql) that reconnects after a
#                             crash; each connection is an "epoch".
#   OutboxChecker::SqlSource  a query returning (id, key, seq) rows in
#                             delivery order, e.g. a consumer's table;
#                             $checker->consumer is one over checker.consumed,
#                             which external relays (start_relays: pgbench
#                             clients claiming with outbox.fetch_pending())
#                             fill in the transaction that marks processed;
#                             $checker->function_consumer($name) one over
#                             checker.received, which a `function` publisher
#                             or destination fills in the worker's
#                             transaction that marks processed.
#
# check() asserts (one TAP test each):
#  - savers committed messages and rolled some back;
#  - no message of the topic in outbox.messages is outside the ledger
#    (nothing rolled back was stored), and every ledger message is there,
#    processed, with the payload it was saved with;
#  - for each source: nothing outside the ledger was delivered; what was
#    delivered matches the ledger; the source is complete (below); within an
#    epoch no message arrived twice and each key's messages arrived in
#    increasing sequence; duplicates across epochs (a crash can make the
#    worker publish again what it published just before) are allowed only
#    with duplicates => 'crash', and counted in the report;
#  - separately, for each source that must receive every committed message
#    (check_status): no message is marked processed that it did not receive.
# A message counts as delivered only when a source received it: the status
# column is written by the code under test, so it proves nothing by itself.
# Completeness of a listener: every ledger message whose final publication
# (processed_at) came after the live epoch's LISTEN was received in that
# epoch; after $listener->complete_all(1) (a listener connected before the
# first save that never lost its connection), every ledger message.  NOTIFY
# is not durable: what a listener had not read when the server crashed is
# lost to it, so a test that crashes the server needs a source that
# survives the crash: a function consumer (its record commits with the mark)
# or a receiver outside the server (HTTP, a broker).

package OutboxChecker;

use strict;
use warnings;

use Carp;
use IPC::Run;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use OutboxTest;

=pod

=head1 OutboxChecker

=over

=item OutboxChecker->new($node, %options)

Options: dbname ('postgres'), topic ('chk'), nkeys (16).

=cut

sub new
{
	my ($class, $node, %opt) = @_;
	my $self = bless {
		node => $node,
		dbname => $opt{dbname} // 'postgres',
		topic => $opt{topic} // 'chk',
		nkeys => $opt{nkeys} // 16,
		pgbench => {},
		pgbench_runs => 0,
	}, $class;
	croak "topic must be a plain identifier" unless $self->{topic} =~ /^\w+$/;
	return $self;
}

sub node { return $_[0]->{node} }
sub dbname { return $_[0]->{dbname} }
sub topic { return $_[0]->{topic} }

sub sql
{
	my ($self, $sql) = @_;
	return $self->{node}->safe_psql($self->{dbname}, $sql);
}

=pod

=item $checker->install

Create schema "checker" with the ledger, the keys, the token sequence, the
saving functions and the trigger table.  The schema does not depend on the
outbox extension (the functions resolve outbox.* when they run), so it
survives DROP EXTENSION outbox.

=cut

sub install
{
	my ($self) = @_;
	my $topic = $self->{topic};
	my $nkeys = $self->{nkeys};

	$self->sql(
		qq{
CREATE SCHEMA checker;
CREATE SEQUENCE checker.tokens;
CREATE TABLE checker.keys (k int PRIMARY KEY, seq bigint NOT NULL DEFAULT 0);
INSERT INTO checker.keys (k) SELECT generate_series(1, $nkeys);
CREATE TABLE checker.ledger (
	token	bigint PRIMARY KEY,
	id		uuid NOT NULL UNIQUE,
	key		text NOT NULL,
	seq		bigint,
	via		text NOT NULL
);
CREATE TABLE checker.orders (order_id bigserial PRIMARY KEY, k int NOT NULL, n int NOT NULL);

-- Save one message of key number p_k (0: no key) in this transaction.
CREATE FUNCTION checker.save_one(p_k int, p_via text) RETURNS uuid
LANGUAGE plpgsql AS \$\$
DECLARE
	v_key text := '';
	v_seq bigint;
	v_token bigint;
	v_id uuid;
	v_payload jsonb;
BEGIN
	IF p_k > 0 THEN
		v_key := 'k' || p_k;
		-- the row lock serializes the savers of this key
		UPDATE checker.keys SET seq = seq + 1 WHERE k = p_k RETURNING seq INTO v_seq;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'no key %', p_k;
		END IF;
	END IF;
	v_token := nextval('checker.tokens');
	v_payload := jsonb_build_object('t', v_token, 'k', v_key, 's', v_seq);
	IF p_via = 'insert' THEN
		INSERT INTO outbox.messages (topic, key, payload)
		VALUES ('$topic', v_key, convert_to(v_payload::text, 'UTF8'))
		RETURNING id INTO v_id;
	ELSE
		v_id := outbox.save('$topic', v_payload, v_key);
	END IF;
	INSERT INTO checker.ledger VALUES (v_token, v_id, v_key, v_seq, p_via);
	RETURN v_id;
END
\$\$;

-- p_n messages: two per key from key p_k up (keys in ascending order, so
-- savers never deadlock), or all without a key when p_k is 0.
CREATE FUNCTION checker.save_many(p_k int, p_n int, p_via text) RETURNS int
LANGUAGE plpgsql AS \$\$
BEGIN
	FOR i IN 0 .. p_n - 1 LOOP
		PERFORM checker.save_one(CASE WHEN p_k = 0 THEN 0 ELSE least(p_k + i / 2, $nkeys) END, p_via);
	END LOOP;
	RETURN p_n;
END
\$\$;

-- A backlog in one transaction: round robin over the keys (so it locks
-- them in ascending order, like the savers), and every tenth message
-- without a key.
CREATE FUNCTION checker.save_burst(p_n int) RETURNS int
LANGUAGE plpgsql AS \$\$
DECLARE
	v_keyed int := 0;
BEGIN
	FOR i IN 0 .. p_n - 1 LOOP
		IF i % 10 = 9 THEN
			PERFORM checker.save_one(0, 'burst');
		ELSE
			PERFORM checker.save_one(1 + v_keyed % $nkeys, 'burst');
			v_keyed := v_keyed + 1;
		END IF;
	END LOOP;
	RETURN p_n;
END
\$\$;

-- What function consumers received (see function_consumer), in call order,
-- and the messages at which a consumer waits for the gate (hold_gate).
CREATE TABLE checker.received (
	ord		bigserial PRIMARY KEY,
	consumer text NOT NULL,
	id		uuid NOT NULL,
	key		text NOT NULL,
	seq		bigint,
	token	bigint
);
CREATE TABLE checker.gates (consumer text NOT NULL, id uuid NOT NULL, PRIMARY KEY (consumer, id));

-- A durable consumer fed by an external relay (the store API).
CREATE TABLE checker.consumed (ord bigserial PRIMARY KEY, id uuid NOT NULL, key text NOT NULL, seq bigint);
CREATE FUNCTION checker.relay_batch(p_n int) RETURNS int
LANGUAGE plpgsql AS \$\$
DECLARE
	r record;
	v_ids uuid[] := '{}';
BEGIN
	FOR r IN SELECT * FROM outbox.fetch_pending(p_n) ORDER BY id LOOP
		IF r.topic = '$topic' THEN
			INSERT INTO checker.consumed (id, key, seq)
			VALUES (r.id, r.key, (convert_from(r.payload, 'UTF8')::jsonb->>'s')::bigint);
		END IF;
		v_ids := v_ids || r.id;
	END LOOP;
	IF cardinality(v_ids) > 0 THEN
		PERFORM outbox.mark_processed(VARIADIC v_ids);
	END IF;
	RETURN cardinality(v_ids);
END
\$\$;

CREATE FUNCTION checker.orders_saved() RETURNS trigger
LANGUAGE plpgsql AS \$\$
BEGIN
	PERFORM checker.save_many(NEW.k, NEW.n, 'trigger');
	RETURN NULL;
END
\$\$;
CREATE TRIGGER orders_saved AFTER INSERT ON checker.orders
	FOR EACH ROW EXECUTE FUNCTION checker.orders_saved();
});
	return;
}

=pod

=item $checker->reset

Forget the ledger (after the messages themselves were dropped with the
extension): empty the ledger and restart the keys' sequences.  Tokens go on
increasing.

=cut

sub reset
{
	my ($self) = @_;
	$self->sql(
		'TRUNCATE checker.ledger, checker.orders, checker.consumed, checker.received, checker.gates; '
		  . 'UPDATE checker.keys SET seq = 0');
	$self->{rolled_back_base} = $self->tokens_used;
	return;
}

=pod

=item $checker->save_burst($n)

Save a backlog of $n messages in one transaction (committed, in the
ledger).

=cut

sub save_burst
{
	my ($self, $n) = @_;
	$self->sql("SELECT checker.save_burst($n)");
	return;
}

=pod

=item $checker->listener(%options)

A new OutboxChecker::Listener on the checker's topic.  Options: channel
(another channel, for a notify destination with a channel of its own),
destination (the destination it listens for: completeness then follows that
destination's deliveries, not the messages' status), name.

=cut

sub listener
{
	my ($self, %opt) = @_;
	return OutboxChecker::Listener->new($self->{node}, $self->{dbname},
		$opt{channel} // $self->{topic}, %opt);
}

=pod

=item $checker->start_savers(%options)

Start the savers: pgbench in the background.  Options: clients (4), rate
(transactions per second for all clients together, 100), rollback
(percentage of transactions rolled back, 25), duration (seconds, 3600;
stop_savers ends it earlier).  Does nothing if savers are running.
Returns true once all clients are connected.

=item $checker->savers_running, $checker->stop_savers

Whether pgbench still runs (it ends when all its clients lost their
connections); stop it and wait until its sessions are gone (a session cut
off in the middle of a transaction rolls it back; one that was committing
commits).

=cut

my $saver_script = <<'EOF';
\set k random(0, :nkeys)
\set k2 least(:k + 1, :nkeys)
\set n random(1, 4)
\set shape random(1, 10)
\set r random(1, 100)
BEGIN;
\if :shape <= 4
SELECT checker.save_many(:k, :n, 'save');
\elif :shape <= 6
SELECT checker.save_many(:k, :n, 'insert');
\elif :shape <= 8
INSERT INTO checker.orders (k, n) VALUES (:k, :n);
\else
SELECT checker.save_one(:k, 'save');
INSERT INTO checker.orders (k, n) VALUES (:k2, 1);
\endif
\if :r <= :rollback
ROLLBACK;
\else
COMMIT;
\endif
EOF

sub start_savers
{
	my ($self, %opt) = @_;
	return $self->start_pgbench(
		'outbox_saver', $saver_script,
		clients => $opt{clients} // 4,
		rate => $opt{rate} // 100,
		duration => $opt{duration},
		vars => {
			nkeys => $self->{nkeys},
			rollback => $opt{rollback} // 25,
		});
}

sub savers_running { return $_[0]->pgbench_running('outbox_saver') }
sub stop_savers { return $_[0]->stop_pgbench('outbox_saver') }

=pod

=item $checker->start_relays(%options), relays_running, stop_relays

External relays through the store API, as pgbench clients: each
transaction claims up to batch (20) messages with outbox.fetch_pending(),
records those of the topic in checker.consumed (a durable consumer: its
serial column is the delivery order) and marks them processed, all in one
transaction.  Options: clients (2), batch.  Run them with
outbox.enabled = off, or the worker competes for the messages (which is
allowed, but then the consumer table does not see everything).

=item $checker->consumer

An OutboxChecker::SqlSource over checker.consumed, in delivery order.

=cut

my $relay_script = <<'EOF';
SELECT checker.relay_batch(:batch);
EOF

sub start_relays
{
	my ($self, %opt) = @_;
	return $self->start_pgbench(
		'outbox_relay', $relay_script,
		clients => $opt{clients} // 2,
		duration => $opt{duration},
		vars => { batch => $opt{batch} // 20 });
}

sub relays_running { return $_[0]->pgbench_running('outbox_relay') }
sub stop_relays { return $_[0]->stop_pgbench('outbox_relay') }

sub consumer
{
	my ($self) = @_;
	return OutboxChecker::SqlSource->new(
		$self->{node}, $self->{dbname},
		'SELECT id, key, seq FROM checker.consumed ORDER BY ord',
		name => 'consumer table');
}

=pod

=item $checker->function_consumer($name, %options)

A consumer that a C<function> publisher or destination calls: creates
checker.receive_$name(m outbox.messages), which records the message in
checker.received (consumer $name, in call order).  It runs in the worker's
transaction, so its record commits together with the mark, or is lost
with it: the record, not the message's status, says what was delivered,
and it survives crashes and restarts.  Returns an OutboxChecker::SqlSource
over it (in delivery order).  Options: destination (the destination that
calls it, for check_status; default: the default destination).

=cut

sub function_consumer
{
	my ($self, $name, %opt) = @_;
	croak "consumer name must be a plain identifier" unless $name =~ /^\w+$/;
	my $topic = $self->{topic};
	# search_path is pinned to pg_catalog in the call: everything is
	# schema-qualified.
	$self->sql(
		qq{
CREATE FUNCTION checker.receive_$name(m outbox.messages) RETURNS void
LANGUAGE plpgsql AS \$\$
DECLARE
	p jsonb;
BEGIN
	IF EXISTS (SELECT 1 FROM checker.gates g WHERE g.consumer = '$name' AND g.id = m.id) THEN
		PERFORM pg_advisory_xact_lock_shared($OutboxChecker::gate_key);
	END IF;
	IF m.topic = '$topic' THEN
		p := convert_from(m.payload, 'UTF8')::jsonb;
	END IF;
	INSERT INTO checker.received (consumer, id, key, seq, token)
	VALUES ('$name', m.id, m.key, (p->>'s')::bigint, (p->>'t')::bigint);
END
\$\$;
});
	return OutboxChecker::SqlSource->new(
		$self->{node}, $self->{dbname},
		"SELECT id, key, seq FROM checker.received WHERE consumer = '$name' ORDER BY ord",
		name => "function consumer $name",
		destination => $opt{destination});
}

=pod

=item $checker->save_burst_gated($n, $consumer, $k)

save_burst($n), and in the same transaction set a gate at the burst's
message number $k (from 0, in id order) for function consumer $consumer:
while the gate is held (hold_gate), the worker that calls the consumer for
that message waits there, inside its batch's transaction.

=item $checker->hold_gate, $checker->wait_at_gate($timeout), $checker->release_gate

Take the gate's lock in a session of its own; wait until a backend waits
for it (returns that backend's pid: a worker provably in the middle of a
batch), or undef after $timeout seconds; end the holding session (if a
crash or stop has not ended it already) and remove the gates.

=cut

our $gate_key = 736_736;

sub save_burst_gated
{
	my ($self, $n, $consumer, $k) = @_;
	croak "gate position $k outside a burst of $n" unless $k >= 0 && $k < $n;
	$self->sql(
		qq{
BEGIN;
SELECT checker.save_burst($n);
INSERT INTO checker.gates (consumer, id)
SELECT '$consumer', id FROM
	(SELECT id, token FROM checker.ledger WHERE via = 'burst' ORDER BY token DESC LIMIT $n) b
ORDER BY token OFFSET $k LIMIT 1;
COMMIT;
});
	return;
}

sub hold_gate
{
	my ($self) = @_;
	croak "the gate is held already" if $self->{gate};
	my $h = $self->{node}->background_psql($self->{dbname});
	$h->query_safe("SELECT pg_advisory_lock($gate_key)");
	$self->{gate} = $h;
	return;
}

sub wait_at_gate
{
	my ($self, $timeout) = @_;
	my $pid;
	OutboxTest::wait_until(
		$timeout // $OutboxTest::TIMEOUT,
		sub {
			$pid = OutboxTest::query_value($self->{node}, $self->{dbname},
				"SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
				  . "AND classid = 0 AND objid = $gate_key AND objsubid = 1 LIMIT 1");
			return defined $pid && $pid ne '';
		});
	return (defined $pid && $pid ne '') ? $pid : undef;
}

sub release_gate
{
	my ($self) = @_;
	my $h = delete $self->{gate};
	if ($h)
	{
		# After a crash or stop, the session is gone already.
		eval { $h->quit };
	}
	$self->sql('DELETE FROM checker.gates');
	return;
}

=pod

=item $checker->check_status($name, $source, %options)

One TAP test: no message of the topic is marked processed (for a source
with a destination: no delivery of that destination is processed) that
$source did not receive.  The status is what the code under test says; the
source is what a consumer got.  For sources that receive every committed
message (not a listener that lost its connection); callable at any time,
for example right after a crash.  Options: wait (seconds to wait for a
receiver to record what it answered, 30).

=cut

sub check_status
{
	my ($self, $name, $source, %opt) = @_;
	local $Test::Builder::Level = $Test::Builder::Level + 1;
	my $dest = $source->can('destination') ? $source->destination : undef;
	my $sql = defined $dest
	  ? "SELECT d.message_id FROM outbox.deliveries d JOIN outbox.messages m ON m.id = d.message_id "
	  . "WHERE d.destination = '$dest' AND d.status = 'processed' AND m.topic = '$self->{topic}'"
	  : "SELECT id FROM outbox.messages WHERE topic = '$self->{topic}' AND status = 'processed'";
	# The status first, then what the source received (a receiver records
	# a request once it answered it, maybe after the mark).
	my @processed = split /\n/, $self->sql($sql);
	my @unreceived;
	OutboxTest::wait_until(
		$opt{wait} // 30,
		sub {
			$source->poll if $source->can('poll');
			my %got = map { ($_->{id} // '') => 1 } @{ $source->deliveries };
			@unreceived = grep { !$got{$_} } @processed;
			return !@unreceived;
		});
	return is(scalar @unreceived, 0,
		sprintf('%s: %s: no message is marked processed%s that it did not receive (%d processed)',
			$name, $source->name, (defined $dest ? " for $dest" : ''), scalar @processed))
	  || diag("processed, never received: @unreceived[0 .. min(9, $#unreceived)]");
}

# pgbench as application $app running $script_text; options clients, rate
# (none: as fast as it goes), duration, vars.
sub start_pgbench
{
	my ($self, $app, $script_text, %opt) = @_;
	return 1 if $self->pgbench_running($app);

	my $clients = $opt{clients};
	my $node = $self->{node};
	my $run = ++$self->{pgbench_runs};
	my $dir = $PostgreSQL::Test::Utils::tmp_check;
	my $name = $node->name . "_${app}_$run";
	my $script = "$dir/$name.sql";

	open my $fh, '>', $script or die "cannot write $script: $!";
	print $fh $script_text;
	close $fh;

	my @cmd = (
		'pgbench', '-n',
		'-h', $node->host,
		'-p', $node->port,
		'-c', $clients,
		'-j', ($clients > 1 ? 2 : 1),
		'-T', $opt{duration} // 3600);
	push @cmd, '-R', $opt{rate} if $opt{rate};
	push @cmd, '-D', "$_=$opt{vars}{$_}" for sort keys %{ $opt{vars} // {} };
	push @cmd, '-f', $script, $self->{dbname};

	my $log = "$dir/$name.log";
	local $ENV{PGAPPNAME} = $app;
	$self->{pgbench}{$app} = IPC::Run::start(\@cmd, '<', '/dev/null',
		'>', $log, '2>&1');
	# pgbench connects all its clients before it starts.
	my $ok = OutboxTest::wait_until(
		$OutboxTest::TIMEOUT,
		sub {
			return 0 unless $self->pgbench_running($app);
			my $n = OutboxTest::query_value($node, $self->{dbname},
				"SELECT count(*) FROM pg_stat_activity WHERE application_name = '$app'"
			);
			return defined $n && $n >= $clients;
		});
	diag("$app: pgbench did not start: " . slurp_file($log)) unless $ok;
	return $ok;
}

sub pgbench_running
{
	my ($self, $app) = @_;
	my $h = $self->{pgbench}{$app};
	return 0 unless $h;
	return 1 if eval { $h->pumpable };
	# reap a pgbench that ended
	eval { $h->finish };
	delete $self->{pgbench}{$app};
	return 0;
}

sub stop_pgbench
{
	my ($self, $app) = @_;
	my $h = delete $self->{pgbench}{$app};
	if ($h)
	{
		eval { $h->kill_kill(grace => 5) };
		eval { $h->finish };
	}
	OutboxTest::poll_until($self->{node}, $self->{dbname},
		"SELECT count(*) FROM pg_stat_activity WHERE application_name = '$app'",
		'0')
	  or diag("$app: pgbench sessions did not end");
	return;
}

=pod

=item $checker->counts

A hash of how many ledger messages there are (committed) and how many of
the topic's stored messages are in each status.

=cut

sub counts
{
	my ($self) = @_;
	my $row = OutboxTest::query_value(
		$self->{node}, $self->{dbname}, qq{
SELECT (SELECT count(*) FROM checker.ledger),
       count(*) FILTER (WHERE status = 'pending'),
       count(*) FILTER (WHERE status = 'processing'),
       count(*) FILTER (WHERE status = 'processed'),
       count(*) FILTER (WHERE status = 'failed')
FROM outbox.messages WHERE topic = '$self->{topic}'});
	return undef unless defined $row;
	my %c;
	@c{qw(committed pending processing processed failed)} = split /\|/, $row;
	return \%c;
}

=pod

=item $checker->wait_drained($timeout, @sources)

Wait until no message of the topic is pending or processing, polling the
given listeners meanwhile.

=cut

sub wait_drained
{
	my ($self, $timeout, @sources) = @_;
	my $last;
	my $ok = OutboxTest::wait_until(
		$timeout // $OutboxTest::TIMEOUT,
		sub {
			$_->poll for grep { $_->can('poll') } @sources;
			$last = OutboxTest::query_value($self->{node}, $self->{dbname},
				"SELECT count(*) FROM outbox.messages WHERE topic = '$self->{topic}' "
				  . "AND status IN ('pending', 'processing')");
			return defined $last && $last eq '0';
		});
	diag("messages still unfinished: " . ($last // '(error)')) unless $ok;
	return $ok;
}

=pod

=item $checker->tokens_used

How many tokens were handed out so far (committed or not).

=cut

sub tokens_used
{
	my ($self) = @_;
	my $v = $self->sql(
		'SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM checker.tokens');
	return $v;
}

# The ledger: { by_id => { id => row }, by_token => { token => row } }, each
# row { token, id, key, seq, via }.
sub read_ledger
{
	my ($self) = @_;
	my (%by_id, %by_token, %via);
	my $out = $self->sql(
		"SELECT token, id, key, coalesce(seq::text, ''), via FROM checker.ledger");
	for my $line (split /\n/, $out)
	{
		my ($token, $id, $key, $seq, $via) = split /\|/, $line, 5;
		my $row = {
			token => $token,
			id => $id,
			key => $key,
			seq => ($seq eq '' ? undef : $seq),
			via => $via,
		};
		$by_id{$id} = $row;
		$by_token{$token} = $row;
		$via{$via}++;
	}
	return { by_id => \%by_id, by_token => \%by_token, via => \%via };
}

=pod

=item $checker->check($name, %options)

Run the checks described at the top against the given sources; returns a
report hash (also printed with note()).  Options:

=over

=item sources => [ ... ]

Consumer sources.

=item duplicates => 'none' | 'crash'

'none' (default): no message may be delivered twice.  'crash': a message
may arrive again in a later epoch of a listener (after a crash), never
twice in one epoch.

=item statuses => { id => 'failed', ... }

Ledger messages expected in another status than processed (and then not
required from the sources).

=item unordered => { id => 1, ... }

Ledger messages exempt from the per-key order check (for example failed
messages requeued later by retry_failed).

=item destinations => [ 'name', ... ]

Destinations every committed message is routed to: each must have its
delivery processed (outbox.deliveries), or as statuses says.

=item min_committed => 1, rollbacks => 1

Require at least this many committed messages, and some rolled back.

=back

=cut

sub check
{
	my ($self, $name, %opt) = @_;
	my $node = $self->{node};
	my $topic = $self->{topic};
	my $sources = $opt{sources} // [];
	my $dup_mode = $opt{duplicates} // 'none';
	my $statuses = $opt{statuses} // {};
	my $unordered = $opt{unordered} // {};
	my %report = (name => $name);

	local $Test::Builder::Level = $Test::Builder::Level + 1;

	$_->poll for grep { $_->can('poll') } @$sources;

	my $ledger = $self->read_ledger;
	my $committed = scalar keys %{ $ledger->{by_id} };
	my $rolled_back =
	  $self->tokens_used - ($self->{rolled_back_base} // 0) - $committed;
	$report{committed} = $committed;
	$report{rolled_back} = $rolled_back;
	$report{via} = join(', ',
		map { "$_ $ledger->{via}{$_}" } sort keys %{ $ledger->{via} });

	cmp_ok($committed, '>=', $opt{min_committed} // 1,
		"$name: savers committed messages");
	cmp_ok($rolled_back, '>', 0, "$name: savers rolled back messages")
	  if $opt{rollbacks} // 1;

	# The table.
	my (@unknown, @mismatch, %status_of);
	my $out = $self->sql(
		qq{SELECT id, key, status, coalesce(convert_from(payload, 'UTF8')::jsonb->>'t', '?')
		   FROM outbox.messages WHERE topic = '$topic'});
	for my $line (split /\n/, $out)
	{
		my ($id, $key, $status, $token) = split /\|/, $line;
		$status_of{$id} = $status;
		my $row = $ledger->{by_token}{$token};
		if (!$row)
		{
			push @unknown, "$id (token $token, $status)";
		}
		elsif ($row->{id} ne $id || $row->{key} ne $key)
		{
			push @mismatch, "$id: ledger has $row->{id} key $row->{key}";
		}
	}
	is(scalar @unknown, 0,
		"$name: outbox.messages holds no message outside the ledger (none rolled back)")
	  or diag("not in the ledger: @unknown[0 .. min(9, $#unknown)]");
	is(scalar @mismatch, 0, "$name: stored messages match the ledger")
	  or diag("mismatches: @mismatch[0 .. min(9, $#mismatch)]");

	my (@missing, @wrong_status);
	for my $id (keys %{ $ledger->{by_id} })
	{
		my $want = $statuses->{$id} // 'processed';
		if (!defined $status_of{$id})
		{
			push @missing, $id;
		}
		elsif ($status_of{$id} ne $want)
		{
			push @wrong_status, "$id is $status_of{$id}, not $want";
		}
	}
	is(scalar @missing, 0, "$name: every committed message is stored")
	  or diag("missing: @missing[0 .. min(9, $#missing)]");
	is(scalar @wrong_status, 0,
		"$name: every committed message is processed (or as expected)")
	  or diag("@wrong_status[0 .. min(9, $#wrong_status)]");

	# Per destination: every committed message routed there and delivered.
	for my $dest (@{ $opt{destinations} // [] })
	{
		my %delivery = map { split /\|/, $_, 2 } split /\n/,
		  $self->sql(
			"SELECT d.message_id, d.status FROM outbox.deliveries d JOIN checker.ledger l ON l.id = d.message_id "
			  . "WHERE d.destination = '$dest'");
		my @undelivered = grep { ($delivery{$_} // 'not routed there') ne ($statuses->{$_} // 'processed') }
		  keys %{ $ledger->{by_id} };
		is(scalar @undelivered, 0,
			"$name: destination $dest: every committed message was routed there and delivered")
		  or diag(join(', ', map { "$_: " . ($delivery{$_} // 'not routed there') }
				  @undelivered[0 .. min(9, $#undelivered)]));
	}

	# The sources.
	for my $source (@$sources)
	{
		my $sname = "$name: " . $source->name;

		# What it must have received; a listener may still be reading
		# notifications of the last commits.
		my @required = $source->required_ids($self, $ledger, $statuses);
		my @absent = absent(\@required, $source->deliveries);
		if (@absent && $source->can('poll'))
		{
			OutboxTest::wait_until(
				$opt{wait} // $OutboxTest::TIMEOUT,
				sub {
					$source->poll;
					@absent = absent(\@required, $source->deliveries);
					return !@absent;
				});
		}
		my $deliveries = $source->deliveries;
		my (@foreign, @bad, %times, %epoch_times, $in_epoch_dups, %last_seq,
			@order);
		$in_epoch_dups = 0;

		for my $d (@$deliveries)
		{
			my $row =
			  defined $d->{token}
			  ? $ledger->{by_token}{ $d->{token} }
			  : $ledger->{by_id}{ $d->{id} // '' };
			if (!$row)
			{
				push @foreign, ($d->{id} // '?') . ' (token ' . ($d->{token} // '?') . ')';
				next;
			}
			if (   ($d->{id} // '') ne $row->{id}
				|| (defined $d->{key} && $d->{key} ne $row->{key})
				|| (($d->{seq} // '') ne ($row->{seq} // '')))
			{
				push @bad,
				  sprintf('%s: delivered key %s seq %s, ledger %s key %s seq %s',
					$d->{id} // '?', $d->{key} // '?', $d->{seq} // '-',
					$row->{id}, $row->{key}, $row->{seq} // '-');
			}
			my $id = $row->{id};
			my $epoch = $d->{epoch} // 1;
			$times{$id}++;
			$in_epoch_dups++ if $epoch_times{$epoch}{$id}++;

			next if $row->{key} eq '' || $unordered->{$id} || !$source->ordered;
			my $last = $last_seq{$epoch}{ $row->{key} };
			if (defined $last && $row->{seq} <= $last)
			{
				push @order,
				  "epoch $epoch key $row->{key}: seq $row->{seq} after $last";
			}
			else
			{
				$last_seq{$epoch}{ $row->{key} } = $row->{seq};
			}
		}

		my $dups = grep { $times{$_} > 1 } keys %times;
		my $extra = 0;
		$extra += $times{$_} - 1 for keys %times;
		$report{sources}{ $source->name } = {
			deliveries => scalar @$deliveries,
			distinct => scalar keys %times,
			duplicated_messages => $dups,
			extra_deliveries => $extra,
			epochs => $source->epochs,
		};

		is(scalar @foreign, 0,
			"$sname: nothing outside the ledger was delivered (no rolled-back message)")
		  or diag("foreign: @foreign[0 .. min(9, $#foreign)]");
		is(scalar @bad, 0, "$sname: deliveries match the ledger")
		  or diag("@bad[0 .. min(9, $#bad)]");
		is($in_epoch_dups, 0,
			"$sname: no message delivered twice within one connection (epoch)");
		if ($dup_mode eq 'none')
		{
			is($dups, 0, "$sname: no message delivered twice");
		}
		is(scalar @order, 0,
			"$sname: per key, messages arrived in sequence order")
		  or diag("@order[0 .. min(9, $#order)]");

		# Completeness.
		$report{sources}{ $source->name }{required} = scalar @required;
		cmp_ok(scalar @required, '>', 0,
			"$sname: some messages must have been received");
		is(scalar @absent, 0,
			sprintf('%s: all %d messages it must have received arrived (%s)',
				$sname, scalar @required, $source->completeness))
		  or diag("absent: @absent[0 .. min(9, $#absent)]");

		# Separately: the status never claims more than the consumer got.
		$self->check_status($name, $source, wait => $opt{wait})
		  if $source->completeness eq 'every committed message';
	}

	note("checker report: " . JSON::PP->new->canonical->encode(\%report));
	return \%report;
}

sub min { return $_[0] < $_[1] ? $_[0] : $_[1] }

# The required [id, epoch or undef] pairs missing from the deliveries.
sub absent
{
	my ($required, $deliveries) = @_;
	my (%any, %in_epoch);
	for my $d (@$deliveries)
	{
		next unless defined $d->{id};
		$any{ $d->{id} } = 1;
		$in_epoch{ $d->{epoch} // 1 }{ $d->{id} } = 1;
	}
	return map { $_->[0] }
	  grep { defined $_->[1] ? !$in_epoch{ $_->[1] }{ $_->[0] } : !$any{ $_->[0] } }
	  @$required;
}

=pod

=back

=cut

##########################################################################

package OutboxChecker::SqlSource;

=pod

=head1 OutboxChecker::SqlSource

A consumer that keeps what it received in a table: a query returns (id,
key, seq) rows in delivery order.  Every committed message expected as
processed must be among them.

  OutboxChecker::SqlSource->new($node, $dbname, $sql, name => 'consumer table', ordered => 1,
      destination => 'name')

With ordered => 0 the rows' order means nothing (no order check).  With a
destination, check_status compares with that destination's deliveries.

=cut

use strict;
use warnings;

sub new
{
	my ($class, $node, $dbname, $sql, %opt) = @_;
	return bless {
		node => $node,
		dbname => $dbname,
		sql => $sql,
		name => $opt{name} // 'sql source',
		ordered => $opt{ordered} // 1,
		destination => $opt{destination},
	}, $class;
}

sub name { return $_[0]->{name} }
sub ordered { return $_[0]->{ordered} }
sub destination { return $_[0]->{destination} }
sub epochs { return 1 }
sub completeness { return 'every committed message' }

sub deliveries
{
	my ($self) = @_;
	my @d;
	my $out = $self->{node}->safe_psql($self->{dbname}, $self->{sql});
	for my $line (split /\n/, $out)
	{
		my ($id, $key, $seq) = split /\|/, $line, 3;
		push @d,
		  {
			id => $id,
			key => $key,
			seq => (defined $seq && $seq ne '' ? $seq : undef),
			epoch => 1,
		  };
	}
	return \@d;
}

sub required_ids
{
	my ($self, $checker, $ledger, $statuses) = @_;
	return map { [ $_, undef ] }
	  grep { ($statuses->{$_} // 'processed') eq 'processed' }
	  keys %{ $ledger->{by_id} };
}

##########################################################################

package OutboxChecker::Listener;

=pod

=head1 OutboxChecker::Listener

A psql session that LISTENs on a channel and collects the envelopes it
receives, and that connects again when its connection is lost (the server
crashed or restarted).  Each connection is an epoch, with the server time
right after its LISTEN took effect.

  my $l = OutboxChecker::Listener->new($node, $dbname, $channel);
  $l->poll;                   # collect; reconnect if needed
  $l->deliveries;             # [{ id, key, seq, token, epoch, envelope }]
  $l->wait_connected($timeout);

=cut

use strict;
use warnings;

use Carp;
use IPC::Run;
use JSON::PP;
use Test::More;
use Time::HiRes qw(time usleep);

sub new
{
	my ($class, $node, $dbname, $channel, %opt) = @_;
	my $self = bless {
		node => $node,
		dbname => $dbname,
		channel => $channel,
		name => $opt{name} // "listener on $channel",
		destination => $opt{destination},
		json => JSON::PP->new->utf8,
		deliveries => [],
		epochs => [],
		h => undef,
		poll_count => 0,
		complete_all => 0,
	}, $class;
	$self->wait_connected($OutboxTest::TIMEOUT)
	  or croak "listener could not connect";
	return $self;
}

sub name { return $_[0]->{name} }
sub ordered { return 1 }
sub epochs { return scalar @{ $_[0]->{epochs} } }

=pod

=item $l->complete_all($bool)

Require every committed message (not only those published during the live
epoch): for a listener that never lost its connection since before the
first save.

=cut

sub complete_all
{
	my ($self, $v) = @_;
	$self->{complete_all} = $v;
	return;
}

sub completeness
{
	my ($self) = @_;
	return $self->{complete_all}
	  ? 'every committed message'
	  : 'those published after the live connection\'s LISTEN';
}

sub connected { return defined $_[0]->{h} }

# Start psql and LISTEN; returns 1 when listening.
sub connect
{
	my ($self) = @_;
	my $node = $self->{node};
	my ($in, $out, $err) = ('', '', '');
	local %ENV = %ENV;
	$ENV{PGCONNECT_TIMEOUT} = 5;
	my $h = eval {
		IPC::Run::start(
			[
				'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1',
				'-d', $node->connstr($self->{dbname}), '-f', '-'
			],
			'<', \$in, '>', \$out, '2>', \$err);
	};
	return 0 unless $h;
	$self->{in} = \$in;
	$self->{out} = \$out;
	$self->{err} = \$err;
	$self->{h} = $h;
	my $ready = $self->command(
		qq{LISTEN "$self->{channel}";\nSELECT 'OUTBOX_READY ' || clock_timestamp();},
		qr/^OUTBOX_READY (.*)$/m, 15);
	if (!defined $ready)
	{
		$self->drop_connection;
		return 0;
	}
	push @{ $self->{epochs} },
	  { number => scalar(@{ $self->{epochs} }) + 1, listen_ts => $ready, live => 1 };
	return 1;
}

# Send $sql, pump until $marker matches psql's stdout (returns the first
# capture group), the process ends, or $timeout passes (undef).
# Notifications printed meanwhile are collected.
sub command
{
	my ($self, $sql, $marker, $timeout) = @_;
	my $h = $self->{h};
	my $deadline = time() + ($timeout // 30);
	${ $self->{in} } .= "$sql\n";
	my $result;
	while (1)
	{
		my $alive = eval { $h->pumpable } // 0;
		if ($alive)
		{
			eval { $h->pump_nb };
		}
		if (${ $self->{out} } =~ $marker)
		{
			$result = $1 // 1;
			last;
		}
		last if !$alive;
		last if time() > $deadline;
		usleep(5_000);
	}
	$self->collect;
	${ $self->{out} } =~ s/^OUTBOX_(?:READY|POLL) .*\n//mg;
	$self->drop_connection unless defined $result;
	return $result;
}

# Move the notification lines of psql's output into deliveries (one pass:
# the output may hold thousands of them).
sub collect
{
	my ($self) = @_;
	my $out = $self->{out};
	my $epoch = scalar @{ $self->{epochs} };
	my $consumed = 0;
	while ($$out =~
		/\G(?:[^\n]*\n)*?Asynchronous notification "([^"]*)" with payload "(.*?)" received from server process with PID (\d+)\.\n/gc
	  )
	{
		my ($channel, $payload) = ($1, $2);
		$consumed = pos($$out);
		my $e = eval { $self->{json}->decode($payload) };
		my $p = $e && ref $e->{payload} eq 'HASH' ? $e->{payload} : {};
		push @{ $self->{deliveries} },
		  {
			channel => $channel,
			id => $e ? $e->{id} : undef,
			key => $e ? $e->{key} : undef,
			token => $p->{t},
			seq => $p->{s},
			epoch => $epoch,
			envelope => $e,
			raw => $payload,
		  };
	}
	substr($$out, 0, $consumed, '') if $consumed;
	return;
}

sub drop_connection
{
	my ($self) = @_;
	return unless $self->{h};
	my $h = $self->{h};
	$self->collect;
	eval { $h->kill_kill(grace => 2) };
	eval { $h->finish };
	$self->{h} = undef;
	$self->{epochs}[-1]{live} = 0 if @{ $self->{epochs} };
	return;
}

=pod

=item $l->poll

Collect what arrived; when the connection was lost, try once to connect
again.  Returns how many notifications arrived with this call.

=cut

sub poll
{
	my ($self) = @_;
	my $before = scalar @{ $self->{deliveries} };
	if ($self->{h})
	{
		my $n = ++$self->{poll_count};
		$self->command("SELECT 'OUTBOX_POLL $n';", qr/^OUTBOX_POLL $n$/m, 30);
	}
	$self->connect unless $self->{h};
	return scalar(@{ $self->{deliveries} }) - $before;
}

=pod

=item $l->wait_connected($timeout)

Poll until connected (after a crash: until the server accepts connections
again).

=cut

sub wait_connected
{
	my ($self, $timeout) = @_;
	return OutboxTest::wait_until($timeout,
		sub { $self->poll; $self->connected });
}

=pod

=item $l->wait_for($timeout, $condition)

Poll until $condition->($deliveries) holds.

=cut

sub wait_for
{
	my ($self, $timeout, $condition) = @_;
	return OutboxTest::wait_until(
		$timeout,
		sub {
			$self->poll;
			return $condition->($self->{deliveries});
		});
}

sub deliveries { return $_[0]->{deliveries} }

=pod

=item $l->barrier

NOTIFY a marker on the channel from another session and poll until it
arrives: notifications arrive in commit order, so everything committed
before has arrived too.  The marker is not kept.  Returns 1, or 0 on
timeout.

=item $l->clear

Forget what was received so far (the connection stays; its epoch then
counts only what arrives from now on).

=cut

sub barrier
{
	my ($self) = @_;
	my $marker = 'OUTBOX_BARRIER ' . ++$self->{barriers};
	$self->{node}->safe_psql($self->{dbname},
		qq{NOTIFY "$self->{channel}", '$marker'});
	my $seen = $self->wait_for(
		$OutboxTest::TIMEOUT,
		sub { grep { $_->{raw} eq $marker } @{ $_[0] } });
	@{ $self->{deliveries} } =
	  grep { $_->{raw} !~ /^OUTBOX_BARRIER / } @{ $self->{deliveries} };
	diag("listener: barrier $marker did not arrive") unless $seen;
	return $seen ? 1 : 0;
}

sub clear
{
	my ($self) = @_;
	$self->{deliveries} = [];
	return;
}

# Per message: the id and the epoch it must have arrived in (undef: any).
sub required_ids
{
	my ($self, $checker, $ledger, $statuses) = @_;
	my @ids = grep { ($statuses->{$_} // 'processed') eq 'processed' }
	  keys %{ $ledger->{by_id} };
	return map { [ $_, undef ] } @ids if $self->{complete_all};

	my $live = $self->{epochs}[-1];
	return () unless $live && $live->{live};
	# A destination's listener: the time that destination delivered it.
	my $sql = defined $self->{destination}
	  ? "SELECT l.id FROM checker.ledger l JOIN outbox.deliveries d ON d.message_id = l.id "
	  . "WHERE d.destination = '$self->{destination}' AND d.status = 'processed' "
	  . "AND d.processed_at > '$live->{listen_ts}'"
	  : "SELECT l.id FROM checker.ledger l JOIN outbox.messages m USING (id) "
	  . "WHERE m.status = 'processed' AND m.processed_at > '$live->{listen_ts}'";
	my %after = map { $_ => 1 } split /\n/, $checker->sql($sql);
	return map { [ $_, $live->{number} ] } grep { $after{$_} } @ids;
}

=pod

=item $l->quit

=back

=cut

sub quit
{
	my ($self) = @_;
	if ($self->{h})
	{
		${ $self->{in} } .= "\\q\n";
		eval { $self->{h}->finish };
		$self->{h} = undef;
	}
	return;
}

1;
