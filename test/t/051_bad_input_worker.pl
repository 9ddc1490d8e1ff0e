# 051_bad_input_worker.pl -- what the relay worker does with hostile stored
# messages.
#
# Every message below is either delivered correctly to a LISTENing session
# or marked failed with a clear last_error; the worker never exits, and
# ordinary messages saved before and after keep flowing:
#  - topics with quotes, newlines, an SQL-injection string, multibyte
#    characters (63 bytes), and a 100-byte topic stored through the batch
#    path (which skips save()'s channel-length check);
#  - payloads of invalid UTF-8 and with NUL bytes (base64), text with
#    quotes, newlines, backslashes and control characters, JSON text with
#    \u0000, hostile keys and headers;
#  - envelopes of exactly 7999 bytes (delivered) and 8000 bytes (failed);
#  - a text payload of 10,000 nested arrays (too big for NOTIFY, and deep);
#  - in a database whose max_stack_depth is the minimum, a JSON payload
#    nested deep enough that the envelope's JSON check runs out of stack:
#    the ERROR becomes failed attempts of that message only.
# Finally the server log must show no crash, PANIC or assertion failure.

use strict;
use warnings;

use Encode ();
use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;

my $node = OutboxTest::new_node(
	'bad_input_worker',
	databases => 'postgres,shallow',
	create_databases => ['shallow'],
	extension_in => [ 'postgres', 'shallow' ],
	conf => qq{
outbox.poll_interval = '100ms'
outbox.max_retries = 2
outbox.retry_backoff = '10ms'
outbox.retry_backoff_max = '50ms'
});

# The worker of "shallow" gets the smallest stack PostgreSQL allows; it
# reads database settings when it connects, so restart.
$node->safe_psql('postgres',
	"ALTER DATABASE shallow SET max_stack_depth = '100kB'");
$node->restart;
my $pid_postgres = OutboxTest::wait_for_worker($node, 'postgres');
my $pid_shallow = OutboxTest::wait_for_worker($node, 'shallow');
ok($pid_postgres && $pid_shallow, 'both relay workers run');
is($node->safe_psql('shallow', 'SHOW max_stack_depth'),
	'100kB', 'sessions of database shallow run with max_stack_depth = 100kB');

########################################################################
# A listener that copes with any channel name: OutboxTest::Listener's
# parser assumes channels without double quotes.

{

	package HostileListener;

	sub new
	{
		my ($class, $node, $dbname) = @_;
		my $self = bless { received => [] }, $class;
		$self->{psql} = $node->background_psql($dbname);
		return $self;
	}

	sub quote_ident
	{
		my ($name) = @_;
		$name =~ s/"/""/g;
		return qq{"$name"};
	}

	sub listen
	{
		my ($self, @channels) = @_;
		$self->{psql}->query_safe('LISTEN ' . quote_ident($_)) for @channels;
		return;
	}

	# psql prints: Asynchronous notification "<channel>" with payload
	# "<payload>" received from server process with PID <pid>.  Channels
	# may hold anything; envelopes start with {"id": and end with }.
	sub poll
	{
		my ($self) = @_;
		my $out = $self->{psql}->query_safe('SELECT 1 WHERE false');
		while ($out =~
			/Asynchronous notification "(.*?)" with payload "(\{"id": .*?\})" received from server process with PID (\d+)\./gs
		  )
		{
			my ($channel, $payload) = ($1, $2);
			my $envelope = eval {
				JSON::PP->new->utf8->max_depth(100000)->decode($payload);
			};
			push @{ $self->{received} },
			  {
				channel => $channel,
				payload => $payload,
				envelope => $envelope
			  };
		}
		return;
	}

	# The notification of message $id, waiting up to $timeout seconds.
	sub wait_for_id
	{
		my ($self, $id, $timeout) = @_;
		my $found;
		OutboxTest::wait_until(
			$timeout,
			sub {
				$self->poll;
				($found) = grep {
					$_->{envelope} && ($_->{envelope}{id} // '') eq $id
					  || index($_->{payload}, '{"id": "' . $id . '"') == 0
				} @{ $self->{received} };
				return $found;
			});
		return $found;
	}

	sub count_id
	{
		my ($self, $id) = @_;
		$self->poll;
		return scalar grep { index($_->{payload}, '{"id": "' . $id . '"') == 0 }
		  @{ $self->{received} };
	}
}

# Topics (as UTF-8 bytes: this file does not "use utf8").
my %topic = (
	inject => '"; DROP TABLE outbox.messages; --',
	quotes => q{it's "quoted" \\ too},
	newline => "line1\nline2\ttab",
	unicode => "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80 \xd0\xba\xd0\xbb\xd1\x8e\xd1\x87",
	euro63 => "\xe2\x82\xac" x 21,
	plain => 'plain',
	edge => 'edge');

my $listener = HostileListener->new($node, 'postgres');
$listener->listen(values %topic);
my $shallow_listener = HostileListener->new($node, 'shallow');
$shallow_listener->listen('deep', 'plain');

# SQL literal of a byte string.
sub lit
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

# Run a save (or INSERT ... RETURNING id) and return the id.
sub save_id
{
	my ($db, $sql) = @_;
	my $id = $node->safe_psql($db, $sql);
	like($id, qr/^[0-9a-f-]{36}$/, "saved: " . substr($sql =~ s/\s+/ /gr, 0, 90));
	return $id;
}

# Wait until message $id is no longer pending or processing, and return
# "status|retries|last_error".
sub final_state
{
	my ($db, $id) = @_;
	OutboxTest::poll_until($node, $db,
		"SELECT status IN ('processed', 'failed') FROM outbox.messages WHERE id = '$id'",
		't');
	return $node->safe_psql($db,
		"SELECT status || '|' || retries || '|' || coalesce(last_error, '') FROM outbox.messages WHERE id = '$id'"
	);
}

my $first_plain =
  save_id('postgres', q{SELECT outbox.save('plain', 'before'::text)});

########################################################################
# Hostile topics.

my %topic_id;
for my $name (qw(inject quotes newline unicode euro63))
{
	$topic_id{$name} = save_id('postgres',
		'SELECT outbox.save(' . lit($topic{$name}) . q{, '{"kind": "topic"}'::jsonb)});
}
for my $name (qw(inject quotes newline unicode euro63))
{
	my $n = $listener->wait_for_id($topic_id{$name}, $OutboxTest::TIMEOUT);
	ok($n, "message with the $name topic delivered");
  SKIP:
	{
		skip "no notification for the $name topic", 3 unless $n;
		is($n->{channel}, $topic{$name}, "channel is the $name topic, byte for byte");
		ok($n->{envelope}, "the envelope of the $name topic is valid JSON");
		is( Encode::encode('UTF-8', $n->{envelope}{topic} // ''),
			$topic{$name}, "envelope topic is the $name topic");
	}
}
is($node->safe_psql('postgres', q{SELECT to_regclass('outbox.messages') IS NOT NULL}),
	't', 'outbox.messages still exists after the injection-looking topic went through');

# The batch path skips save()'s check of the channel length.
my $long_topic_id = save_id('postgres',
	q{INSERT INTO outbox.messages (topic, payload) VALUES (repeat('t', 100), 'x') RETURNING id});
like(
	final_state('postgres', $long_topic_id),
	qr/^failed\|1\|channel name "t{100}" is too long for NOTIFY$/,
	'a 100-byte topic from the batch path fails at once with a clear last_error');

########################################################################
# Hostile payloads, keys and headers.

my $bad_utf8 = save_id('postgres', q{SELECT outbox.save('plain', '\xfffec32880'::bytea)});
my $nul = save_id('postgres', q{SELECT outbox.save('plain', '\x00410042'::bytea)});
my $text_payload = "quote\" backslash\\ newline\n cr\r tab\t bell\x07 \xe2\x82\xac";
my $text = save_id('postgres', 'SELECT outbox.save(' . lit('plain') . ', ' . lit($text_payload) . '::text)');
my $u0000 = save_id('postgres', q{SELECT outbox.save('plain', '["\u0000", "x"]'::text)});
my $hostile_key = "k'\"\n\\\xe2\x82\xac";
my %hostile_headers = ("x'); DROP TABLE outbox.messages; --" => "v\"\n\\", "\xd0\xba" => '');
# JSON text of those byte strings, as bytes again (JSON::PP's result is a
# character string, which would be written to psql in Perl's internal form).
my $headers_json = JSON::PP->new->canonical->encode(\%hostile_headers);
utf8::downgrade($headers_json);
my $kh = save_id('postgres',
	'SELECT outbox.save(' . lit('plain') . q{, 'x'::text, }
	  . lit($hostile_key) . ', ' . lit($headers_json) . '::jsonb)');

my $n = $listener->wait_for_id($bad_utf8, $OutboxTest::TIMEOUT);
ok($n, 'invalid UTF-8 payload delivered');
is($n && $n->{envelope}{payload_encoding}, 'base64', 'invalid UTF-8 goes as base64');
is($n && decode_base64($n->{envelope}{payload}), "\xff\xfe\xc3\x28\x80",
	'the base64 payload decodes to the stored bytes');

$n = $listener->wait_for_id($nul, $OutboxTest::TIMEOUT);
ok($n, 'payload with NUL bytes delivered');
is($n && $n->{envelope}{payload_encoding}, 'base64', 'a payload with NUL bytes goes as base64');
is($n && decode_base64($n->{envelope}{payload}), "\x00A\x00B",
	'the NUL-byte payload decodes to the stored bytes');

$n = $listener->wait_for_id($text, $OutboxTest::TIMEOUT);
ok($n, 'text payload with quotes, newlines and control characters delivered');
is($n && Encode::encode('UTF-8', $n->{envelope}{payload}),
	$text_payload, 'that text arrives as a JSON string, unchanged');
ok($n && $n->{payload} !~ /\n/, 'the envelope itself has no raw newline');

$n = $listener->wait_for_id($u0000, $OutboxTest::TIMEOUT);
ok($n, 'JSON text payload with \u0000 delivered');
is_deeply($n && $n->{envelope}{payload}, [ "\0", 'x' ],
	'it is embedded as JSON (\u0000 stays an escape)');

$n = $listener->wait_for_id($kh, $OutboxTest::TIMEOUT);
ok($n, 'message with a hostile key and headers delivered');
is($n && Encode::encode('UTF-8', $n->{envelope}{key}), $hostile_key, 'the key arrives unchanged');
is_deeply(
	$n && { map { Encode::encode('UTF-8', $_) => Encode::encode('UTF-8', $n->{envelope}{headers}{$_}) }
		  keys %{ $n->{envelope}{headers} } },
	\%hostile_headers,
	'the headers arrive unchanged');

########################################################################
# Envelopes of 7999 and 8000 bytes.  created_at is fixed (with six
# fractional digits) so that every envelope of topic "edge" has the same
# length apart from the payload; a one-byte payload measures the rest.

sub save_edge
{
	my ($len) = @_;
	return save_id('postgres',
		"INSERT INTO outbox.messages (topic, payload, created_at)
		 VALUES ('edge', convert_to(repeat('x', $len), 'UTF8'), '2026-01-02 03:04:05.123456+00') RETURNING id");
}
my $probe = save_edge(1);
$n = $listener->wait_for_id($probe, $OutboxTest::TIMEOUT);
ok($n, 'the envelope-size probe was delivered');
my $overhead = $n ? length($n->{payload}) - 1 : 0;
note("an envelope of topic edge is $overhead bytes plus the payload");

my $just_under = save_edge(7999 - $overhead);
my $just_over = save_edge(8000 - $overhead);
$n = $listener->wait_for_id($just_under, $OutboxTest::TIMEOUT);
ok($n, 'the 7999-byte envelope was delivered');
is($n && length($n->{payload}), 7999, 'it arrived whole (7999 bytes)');
is(final_state('postgres', $just_under), 'processed|0|', 'the 7999-byte message is processed');
is( final_state('postgres', $just_over),
	"failed|1|notification payload of 8000 bytes exceeds NOTIFY's limit of 7999 bytes",
	'the 8000-byte envelope fails at once, saying why');
is($listener->count_id($just_over), 0, 'and was not delivered');

########################################################################
# 10,000 nested arrays as a text payload.

my $nested = save_id('postgres',
	q{SELECT outbox.save('plain', repeat('[', 10000) || repeat(']', 10000))});
like(
	final_state('postgres', $nested),
	qr/^failed\|\d+\|(notification payload of (over )?\d+ bytes exceeds NOTIFY's limit|stack depth limit exceeded)/,
	'a payload of 10,000 nested arrays fails with a clear last_error');

my $last_plain = save_id('postgres', q{SELECT outbox.save('plain', 'after'::text)});
ok($listener->wait_for_id($first_plain, $OutboxTest::TIMEOUT), 'the plain message saved first was delivered');
ok($listener->wait_for_id($last_plain, $OutboxTest::TIMEOUT), 'the plain message saved last was delivered');

########################################################################
# Running out of stack while building an envelope (database shallow).
# 3,900 nested arrays make an envelope under 8000 bytes, but checking that
# the payload is JSON recurses deeper than 100 kB of stack allows.  The
# ERROR costs the batch; the worker then publishes one message at a time,
# so the plain messages of the same transaction still go out.

my $deep_ids = $node->safe_psql(
	'shallow', q{
BEGIN;
SELECT outbox.save('plain', 'shallow before'::text);
SELECT outbox.save('deep', repeat('[', 3900) || repeat(']', 3900));
SELECT outbox.save('plain', 'shallow after'::text);
COMMIT;
});
my ($shallow_before, $deep, $shallow_after) = split /\n/, $deep_ids;
ok($shallow_listener->wait_for_id($shallow_before, $OutboxTest::TIMEOUT),
	'shallow: the message saved before the deep one was delivered');
ok($shallow_listener->wait_for_id($shallow_after, $OutboxTest::TIMEOUT),
	'shallow: the message saved after the deep one was delivered');
like(
	final_state('shallow', $deep),
	qr/^failed\|2\|stack depth limit exceeded$/,
	'shallow: the deep message failed after outbox.max_retries attempts, with the error as last_error');
is($shallow_listener->count_id($deep), 0, 'shallow: the deep message was not delivered');
my $shallow_later = save_id('shallow', q{SELECT outbox.save('plain', 'later'::text)});
ok($shallow_listener->wait_for_id($shallow_later, $OutboxTest::TIMEOUT),
	'shallow: messages saved afterwards are delivered');

########################################################################
# Nobody crashed.

is(OutboxTest::worker_pid($node, 'postgres'), $pid_postgres,
	'the worker of postgres is the one that started (it never exited)');
is(OutboxTest::worker_pid($node, 'shallow'), $pid_shallow,
	'the worker of shallow is the one that started (it never exited)');
is($node->safe_psql('postgres', "SELECT count(*) FROM outbox.messages WHERE status IN ('pending', 'processing')"),
	'0', 'postgres: nothing is left pending or processing');

$listener->{psql}->quit;
$shallow_listener->{psql}->quit;
$node->stop;
my $log = slurp_file($node->logfile);
unlike($log, qr/PANIC/, 'no PANIC in the server log');
unlike($log, qr/terminated by signal|was terminated by exception/, 'no process was killed by a signal');
unlike($log, qr/TRAP:|FailedAssertion|Assert/, 'no assertion failure');
unlike($log, qr/server process .* exited with exit code [^01]/, 'no backend died with an odd exit code');

done_testing();
