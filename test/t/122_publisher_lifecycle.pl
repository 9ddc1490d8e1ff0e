# 122_publisher_lifecycle.pl -- every broker publisher (nats, kafka, amqp,
# redis, http) taken through the steps that end or rebuild its connection,
# with a message waiting at that moment, and its server in two states:
#
#  - DOWN (nats-server, RabbitMQ, redis-server and the webhook receiver
#    stopped, the Kafka mock's brokers refusing connections), the worker
#    having tried and found it down;
#  - UP but not answering (its process stopped with SIGSTOP after the
#    destination connected), the message sent and its answer in flight.
#
# The steps: DROP EXTENSION outbox CASCADE (then CREATE EXTENSION and the
# destinations again), drop_destination(force), pause_destination (then
# resume_destination), alter_destination (options that rebuild the
# connection) and a fast shutdown (pg_ctl stop -m fast, then start).
#
# Checked: no backend ever crashes (the server log has no "terminated by
# signal" and the like, and pg_postmaster_start_time() moves only with the
# fast shutdown), each step completes promptly, and once the server is back
# every message that was waiting is received by the consumer (the stream,
# topic, queue, Redis stream or receiver) and marked processed; a
# destination created again delivers.
#
# A publisher whose plug-in, helper or server is missing is left out (a
# failure under OUTBOX_REQUIRE_BROKERS); the http publisher is always here.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxAmqp;
use OutboxDestinations;
use OutboxHttp;
use OutboxKafka;
use OutboxNats;
use OutboxRedis;
use OutboxTest;

# Attempts give up after this long: a step waits at most about that.
my $timeout_ms = 2000;

########################################################################
# The servers, each behind the same few operations:
#   options($variant)  the destination's options (JSON members); variants
#                      0 and 1 name the same server differently, so that
#                      altering from one to the other rebuilds the connection
#   down, up           stop the server / start it again (same port, data)
#   pid                its process, to stop with SIGSTOP
#   consumed           ids of the messages its consumer has received

my %srv;

if (OutboxDestinations::available('nats', OutboxNats::missing()))
{
	my $nats = OutboxNats->start('lc');
	$nats->js('add-stream', 'LC', 'lc.nats.>', 1);
	my $url = $nats->url;
	$srv{nats} = {
		options => sub {
			my $urls = $_[0] ? "$url, $url" : $url;
			return qq{"url": "$urls", "timeout": $timeout_ms};
		},
		down => sub { $nats->stop },
		up => sub { $nats->start_again },
		pid => sub { $nats->{pid} },
		consumed => sub { map { $_->{headers}{'Outbox-Id'} // '' } $nats->dump('LC') },
	};
}

if (OutboxDestinations::available('kafka', OutboxKafka::missing()))
{
	my $kafka = OutboxKafka->start('lc-kafka');
	my $boot = $kafka->bootstrap;
	my $reversed = join(',', reverse split /,/, $boot);
	$srv{kafka} = {
		options => sub {
			my $brokers = $_[0] ? $reversed : $boot;
			return qq{"brokers": "$brokers", "topic": "lc-kafka", }
			  . qq{"properties": "message.timeout.ms=$timeout_ms"};
		},
		down => sub { $kafka->command('down') eq 'ok' or die 'kafka_mock: down failed' },
		up => sub { $kafka->command('up') eq 'ok' or die 'kafka_mock: up failed' },
		pid => sub { $kafka->pid },
		consumed => sub { $kafka->drain; map { $_->{h}{'outbox-id'}[0] // '' } $kafka->records },
	};
}

if (OutboxDestinations::available('amqp', OutboxAmqp::missing()))
{
	my $mq = OutboxAmqp->start('lc');
	$mq->tool('declare-queue', 'lc');
	$mq->tool('bind', 'lc', 'amq.topic', 'lc.amqp.#');
	my $options = $mq->options;
	(my $other = $options) =~ s{("url": "[^"]+)"}{$1/%2f"};
	$srv{amqp} = {
		options => sub {
			return ($_[0] ? $other : $options) . qq{, "routing_key": "{topic}", "timeout": $timeout_ms};
		},
		down => sub { $mq->stop },
		up => sub { $mq->start_again },
		pid => sub { $mq->beam_pid },
		consumed => sub { map { $_->{message_id} // '' } $mq->dump('lc') },
	};
}

if (OutboxDestinations::available('redis', OutboxRedis::missing()))
{
	my $r = OutboxRedis->start('lc');
	my $options = $r->options;
	(my $other = $options) =~ s{("url": "[^"]+)"}{$1/0"};
	$srv{redis} = {
		options => sub {
			return ($_[0] ? $other : $options) . qq{, "stream": "lc-redis", "timeout": $timeout_ms};
		},
		down => sub { $r->stop },
		up => sub { $r->start_again },
		pid => sub { $r->{pid} },
		consumed => sub { map { $_->{fields}{id} // '' } $r->xrange('lc-redis') },
	};
}

{
	my $http = OutboxHttp->start;
	my $url = $http->url('/hook/{topic}');
	$srv{http} = {
		options => sub { return qq{"url": "$url", "timeout": } . ($timeout_ms + ($_[0] ? 1 : 0)) },
		down => sub { $http->stop },
		up => sub { $http->restart },
		pid => sub { $http->pid },
		consumed => sub {
			map { $_->{id} // '' } grep { $_->{status} >= 200 && $_->{status} < 300 } $http->requests;
		},
	};
}

my @pubs = grep { $srv{$_} } qw(nats kafka amqp redis http);
note('publishers tested: ' . join(', ', @pubs));
my $libraries = join('', map { ", outbox_$_" } grep { $_ ne 'http' } @pubs);

my $node = OutboxTest::new_node('lifecycle', conf => qq{
shared_preload_libraries = 'outbox$libraries'
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '300ms'
outbox.max_retries = 1000
log_statement = 'none'
});

sub q1 { return $node->safe_psql('postgres', $_[0]) }

# What each consumer has received so far (a consumer restarted with its
# server, as the webhook receiver, forgets: this does not).
my %seen;

sub refresh_seen
{
	for my $p (@pubs)
	{
		$seen{$p}{$_} = 1 for $srv{$p}{consumed}->();
	}
	return;
}

########################################################################
# Helpers.

my %variant = map { $_ => 0 } @pubs;

# Create the destination lc_<publisher> of each publisher, subscribed to
# lc.<publisher>.>.
sub create_destinations
{
	for my $p (@pubs)
	{
		my $options = $srv{$p}{options}->($variant{$p});
		q1(qq{SELECT outbox.create_destination('lc_$p', '$p', '{$options}');
			  SELECT outbox.subscribe('lc_$p', 'lc.$p.>')});
	}
	return;
}

# Save one message for each destination; returns publisher => id.
sub save_all
{
	my ($round) = @_;
	my %ids;
	$ids{$_} = q1(qq{SELECT outbox.save('lc.$_.$round', '{"round": "$round"}'::jsonb)}) for @pubs;
	return %ids;
}

# Wait until every destination's worker found its server down (failing),
# or is in the middle of a batch (the message in flight).
sub wait_attempted
{
	my ($state, $what) = @_;
	my $cond = $state eq 'down'
	  ? "s.state = 'failing'"
	  : "a.state = 'active' AND a.query = 'publishing outbox messages'";
	ok( OutboxTest::poll_until($node, 'postgres',
			"SELECT count(*) FROM outbox.worker_status() s JOIN pg_stat_activity a USING (pid) "
			  . "WHERE s.destination LIKE 'lc\\_%' AND $cond",
			scalar(@pubs)),
		"$what: every destination's worker is at its message");
	return;
}

# Wait until no destination has a worker.
sub wait_no_workers
{
	my ($what) = @_;
	my $ok = 1;
	$ok &&= OutboxDestinations::wait_no_worker($node, "lc_$_") for @pubs;
	ok($ok, "$what: the destination workers exited");
	return;
}

# No backend crashed since $offset (the server log), and the postmaster
# has not restarted since $started (pg_postmaster_start_time()).
my $crash = qr/terminated by signal|server process .* was terminated|all server processes terminated|terminated by exception/;

sub no_crash
{
	my ($offset, $started, $what) = @_;
	my @lines = grep { /$crash/ } split /\n/, OutboxTest::log_content($node, $offset);
	is(join("\n", @lines), '', "$what: no backend crashed");
	is(q1('SELECT pg_postmaster_start_time()'), $started, "$what: the postmaster did not restart")
	  if defined $started;
	return;
}

# Wait until the consumer of each message received it, and its delivery
# is processed.
sub wait_delivered
{
	my ($what, @sets) = @_;
	my @want = map { my $s = $_; map { [ $_, $s->{$_} ] } keys %$s } @sets;
	my $ok = OutboxTest::wait_until(
		$OutboxTest::TIMEOUT,
		sub {
			refresh_seen();
			return !grep { !$seen{ $_->[0] }{ $_->[1] } } @want;
		});
	diag('not received: ' . join(', ', map { "$_->[0] $_->[1]" } grep { !$seen{ $_->[0] }{ $_->[1] } } @want))
	  unless $ok;
	ok($ok, "$what: the consumers received every message");
	my $pairs = join(',', map { "('$_->[1]'::uuid, 'lc_$_->[0]')" } @want);
	ok( OutboxTest::poll_until($node, 'postgres',
			"SELECT count(*) FROM outbox.deliveries d JOIN (VALUES $pairs) w(id, dest) "
			  . "ON d.message_id = w.id AND d.destination = w.dest WHERE d.status = 'processed'",
			scalar(@want)),
		"$what: and they are processed");
	return;
}

sub freeze { kill 'STOP', $srv{$_}{pid}->() for @pubs; return }
sub thaw { kill 'CONT', $srv{$_}{pid}->() for @pubs; return }

# Bring every destination to $state: down (servers stopped; stays so for
# the whole phase) or frozen (connected, then its server stopped).
sub enter_state
{
	my ($state, $round) = @_;
	if ($state eq 'frozen')
	{
		# Connected first: a message goes through.
		my %probe = save_all("probe-$round");
		wait_delivered("before $round, connected", \%probe);
		freeze();
	}
	return;
}

sub leave_state
{
	my ($state) = @_;
	thaw() if $state eq 'frozen';
	return;
}

########################################################################
# The phases.

create_destinations();
my %first = save_all('first');
wait_delivered('the destinations deliver', \%first);

for my $state ('down', 'frozen')
{
	my $phase_offset = OutboxTest::log_position($node);
	my @waiting;    # messages that must arrive in the end
	my $started = q1('SELECT pg_postmaster_start_time()');

	if ($state eq 'down')
	{
		$srv{$_}{down}->() for @pubs;
	}

	# DROP EXTENSION outbox CASCADE under the workers.
	enter_state($state, 'drop-extension');
	my %ids = save_all("$state-drop-extension");
	wait_attempted($state, "$state, DROP EXTENSION");
	my $offset = OutboxTest::log_position($node);
	q1('DROP EXTENSION outbox CASCADE');
	wait_no_workers("$state, DROP EXTENSION");
	no_crash($offset, $started, "$state, DROP EXTENSION");
	leave_state($state);
	q1('CREATE EXTENSION outbox');
	create_destinations();

	# drop_destination(force).
	enter_state($state, 'drop');
	%ids = save_all("$state-drop");
	wait_attempted($state, "$state, drop_destination");
	$offset = OutboxTest::log_position($node);
	q1("SELECT outbox.drop_destination('lc_$_', force => true)") for @pubs;
	wait_no_workers("$state, drop_destination");
	no_crash($offset, $started, "$state, drop_destination");
	leave_state($state);
	create_destinations();

	# pause_destination, then resume_destination.
	enter_state($state, 'pause');
	%ids = save_all("$state-pause");
	push @waiting, {%ids};
	wait_attempted($state, "$state, pause_destination");
	$offset = OutboxTest::log_position($node);
	q1("SELECT outbox.pause_destination('lc_$_')") for @pubs;
	wait_no_workers("$state, pause_destination");
	no_crash($offset, $started, "$state, pause_destination");
	leave_state($state);
	q1("SELECT outbox.resume_destination('lc_$_')") for @pubs;

	# alter_destination: options that rebuild the connection.
	enter_state($state, 'alter');
	%ids = save_all("$state-alter");
	push @waiting, {%ids};
	wait_attempted($state, "$state, alter_destination");
	$offset = OutboxTest::log_position($node);
	for my $p (@pubs)
	{
		$variant{$p} = 1 - $variant{$p};
		my $options = $srv{$p}{options}->($variant{$p});
		q1(qq{SELECT outbox.alter_destination('lc_$p', '{$options}')});
	}
	# The workers apply it at the end of their batch, before the next.
	my $altered = q1('SELECT clock_timestamp()');
	ok( OutboxTest::poll_until($node, 'postgres',
			"SELECT count(*) FROM outbox.worker_status() s JOIN pg_stat_activity a USING (pid) "
			  . "WHERE s.destination LIKE 'lc\\_%' AND a.query_start > '$altered'",
			scalar(@pubs)),
		"$state, alter_destination: every worker went on to another batch");
	no_crash($offset, $started, "$state, alter_destination");
	leave_state($state);

	# A fast shutdown, then a start.
	enter_state($state, 'stop');
	%ids = save_all("$state-stop");
	push @waiting, {%ids};
	wait_attempted($state, "$state, fast shutdown");
	$offset = OutboxTest::log_position($node);
	is(system('pg_ctl', '-D', $node->data_dir, '-m', 'fast', '-w', '-t', '30', 'stop'),
		0, "$state, fast shutdown: completes");
	$node->_update_pid(0);
	no_crash($offset, undef, "$state, fast shutdown");
	$node->start;
	$started = q1('SELECT pg_postmaster_start_time()');
	leave_state($state);

	# Back: everything waiting arrives, and the destinations created again
	# deliver.
	if ($state eq 'down')
	{
		$srv{$_}{up}->() for @pubs;
	}
	my %after = save_all("$state-after");
	wait_delivered("$state, the server back", @waiting, \%after);
	no_crash($phase_offset, $started, "$state, the whole phase");
}

done_testing();
