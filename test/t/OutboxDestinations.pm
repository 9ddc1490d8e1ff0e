# OutboxDestinations.pm -- helpers for the TAP tests of destinations.
#
# Checks that the broker publishers' tests share (110_kafka.pl, 120_nats.pl,
# 133_amqp_destinations.pl, 143_redis_destinations.pl): CloudEvents in
# both content modes, and a destination with a wrong password.
#
#   my %id = OutboxDestinations::cloudevents($node, 'amqp',
#       binary => '"routing_key": "cebin.{topic}"', structured => '...',
#       topic => 'ce', reserved => 'ce-type');
#   # destinations ce_bin (cloudevents-binary) and ce_str
#   # (cloudevents-structured, source urn:shop:amqp) subscribed to "ce.>";
#   # $id{json} (JSON, key k1, header x-trace), $id{bytes} (no key),
#   # $id{reserved} (a header binary mode sets itself) delivered or failed
#   OutboxDestinations::is_attributes(\%headers, $node, $id{json}, 'ce-', 'ce.created', 'k1', $name);
#   OutboxDestinations::is_event($json_text, $id{json}, 'amqp', 'ce.created', $name);
#
# And for 090-097: destination workers, webhook signatures, a destination's
# state, and an HTTP receiver as an OutboxChecker source.
#
#   my %pid = OutboxDestinations::worker_pids($node);        # name => pid
#   my $pid = OutboxDestinations::wait_worker($node, 'hooks');
#   ok(OutboxDestinations::signature_ok($request, $key));
#   my $source = OutboxDestinations::HttpSource->new($srv, name => 'receiver A');
#
# Every wait polls a condition with a timeout; nothing sleeps and hopes.

package OutboxDestinations;

use strict;
use warnings;

use Carp;
use Digest::SHA qw(hmac_sha256);
use JSON::PP;
use MIME::Base64;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;

=pod

=head1 FUNCTIONS

=over

=item node($name, $publisher, $settings, $conf)

A node whose default destination is $publisher (the library
outbox_$publisher preloaded) with the postgresql.conf lines $settings and
$conf, and quick retries.

=cut

sub node
{
	my ($name, $publisher, $settings, $conf) = @_;
	return OutboxTest::new_node($name, conf => qq{
shared_preload_libraries = 'outbox, outbox_$publisher'
outbox.publisher = '$publisher'
$settings
$conf
outbox.poll_interval = '100ms'
outbox.retry_backoff = '100ms'
outbox.retry_backoff_max = '300ms'
outbox.max_retries = 1000
});
}

=item bad_options($node, $publisher, $unknown, @cases)

ok() when create_destination of $publisher refuses each case, [JSON
members without braces, the option at fault, a regexp of the detail], with
22023 (and never quotes "hunter2", a password put in a URL), refuses the
unknown option $unknown, and created nothing.

=cut

sub bad_options
{
	my ($node, $publisher, $unknown, @cases) = @_;
	for my $case (@cases)
	{
		my ($members, $option, $detail) = @$case;
		my $err = OutboxTest::error_of($node,
			"SELECT outbox.create_destination('bad', '$publisher', '{$members}')");
		like($err, qr/^22023: invalid value for option "$option" of publisher "$publisher"/,
			"create_destination refuses $option in {" . substr($members, 0, 60) . '}');
		like($err, qr/DETAIL:.*$detail/s, '... saying why');
		unlike($err, qr/hunter2/, '... without quoting a password put in a URL') if $members =~ /hunter2/;
	}
	like(OutboxTest::error_of($node, qq{SELECT outbox.create_destination('bad', '$publisher', '{"$unknown": "x"}')}),
		qr/^22023: unknown option "$unknown" for publisher "$publisher"/, 'an unknown option is refused');
	is($node->safe_psql('postgres', "SELECT count(*) FROM outbox.destination WHERE name = 'bad'"),
		'0', 'nothing was created');
	return;
}

=item routed($node, $name, $publisher, $options)

Create the destination $name of $publisher with $options (JSON members
without braces), subscribed to "orders.>", save 20 messages of topic
orders.created (keys customer-0 to -2, header x-n) and 5 of
invoices.created (no subscription: the default destination), and wait
until all are processed.  Returns the lists of their ids.

=cut

sub routed
{
	my ($node, $name, $publisher, $options) = @_;
	$node->safe_psql('postgres', qq{
SELECT outbox.create_destination('$name', '$publisher', '{$options}');
SELECT outbox.subscribe('$name', 'orders.>');
});
	my @routed = split /\n/, $node->safe_psql('postgres', q{
		SELECT outbox.save('orders.created', jsonb_build_object('n', i), 'customer-' || (i % 3),
		                   jsonb_build_object('x-n', i::text))
		FROM generate_series(1, 20) i});
	my @unrouted = split /\n/, $node->safe_psql('postgres', q{
		SELECT outbox.save('invoices.created', jsonb_build_object('inv', i)) FROM generate_series(1, 5) i});
	ok(OutboxTest::wait_all_processed($node, 'postgres'), '25 messages processed');
	return (\@routed, \@unrouted);
}

=item not_logged($node, %secrets)

ok() for each secret (description => text) that the server log lacks.

=cut

sub not_logged
{
	my ($node, %secrets) = @_;
	my $log = slurp_file($node->logfile);
	is(index($log, $secrets{$_}), -1, "$_ never reaches the server log") for sort keys %secrets;
	return;
}

=item secrets_not_logged($node, $offset, @secrets)

Mark the end of the test with a statement, wait until the server log has
it, and ok() when none of @secrets is in the log since $offset (else
diag() the lines that hold one).  Returns that part of the log.

=cut

sub secrets_not_logged
{
	my ($node, $offset, @secrets) = @_;
	$node->safe_psql('postgres', q{SELECT 'end of the secrets test'});
	OutboxTest::wait_for_log_line($node, qr/end of the secrets test/, $offset);
	my $log = OutboxTest::log_content($node, $offset);
	my @leaked = grep { index($log, $_) >= 0 } @secrets;
	is(scalar @leaked, 0, sprintf('none of the %d secrets is in the server log', scalar @secrets))
	  or diag("leaked: @leaked\n" . join("\n", grep { my $l = $_; grep { index($l, $_) >= 0 } @leaked } split /\n/, $log));
	return $log;
}

=item cloudevents($node, $publisher, %options)

Create the destinations ce_bin and ce_str of $publisher (their options:
binary => and structured => JSON members, without braces), subscribe both
to "$topic.>", save the messages below and wait until each destination is
done with them: ok() when the binary destination failed the one with the
header reserved => (a name binary mode sets; none when undef), and
delivered the rest.  Returns their ids: json ($topic.created, '{"n": 1}',
key k1, header x-trace: ce-1), bytes ($topic.bytes, '\x00ff41', no key)
and reserved.

=cut

sub cloudevents
{
	my ($node, $publisher, %opt) = @_;
	my $topic = $opt{topic};
	$node->safe_psql('postgres', qq{
SELECT outbox.create_destination('ce_bin', '$publisher', '{$opt{binary}, "format": "cloudevents-binary"}');
SELECT outbox.create_destination('ce_str', '$publisher',
  '{$opt{structured}, "format": "cloudevents-structured", "cloudevents_source": "urn:shop:$publisher"}');
SELECT outbox.subscribe('ce_bin', '$topic.>');
SELECT outbox.subscribe('ce_str', '$topic.>');
});
	my %id;
	$id{json} = $node->safe_psql('postgres',
		qq{SELECT outbox.save('$topic.created', '{"n": 1}'::jsonb, 'k1', '{"x-trace": "ce-1"}')});
	$id{bytes} = $node->safe_psql('postgres', qq{SELECT outbox.save('$topic.bytes', '\\x00ff41'::bytea)});
	my $done = 'ce_bin:processed ce_str:processed ce_bin:processed ce_str:processed';
	my $deliveries = q{SELECT string_agg(destination || ':' || status, ' ' ORDER BY message_id, destination)
		FROM outbox.deliveries WHERE destination LIKE 'ce\_%'};
	if (!defined $opt{reserved})
	{
		ok(OutboxTest::poll_until($node, 'postgres', $deliveries, $done), 'CloudEvents delivered');
		return %id;
	}
	$id{reserved} = $node->safe_psql('postgres',
		qq{SELECT outbox.save('$topic.created', '{"n": 2}'::jsonb, NULL, '{"$opt{reserved}": "mine"}')});
	ok(OutboxTest::poll_until($node, 'postgres', $deliveries, "$done ce_bin:failed ce_str:processed"),
		"CloudEvents delivered; a $opt{reserved} message header fails in binary mode only");
	like(
		$node->safe_psql('postgres',
			"SELECT last_error FROM outbox.deliveries WHERE message_id = '$id{reserved}' AND destination = 'ce_bin'"),
		qr/message header "\Q$opt{reserved}\E" cannot be sent: with format cloudevents-binary the $publisher publisher sets it itself/,
		'with the reason');
	return %id;
}

=pod

=item is_attributes(\%headers, $node, $id, $prefix, $type, $subject, $name)

Check the binary mode attributes among %headers (name => value): prefix +
specversion, id, source (the default, "/outbox/postgres"), type, time (RFC
3339 in UTC, created_at to the microsecond) and subject (absent when
$subject is undef).

=cut

sub is_attributes
{
	my ($headers, $node, $id, $prefix, $type, $subject, $name) = @_;
	my %want = (
		specversion => '1.0',
		id => $id,
		source => '/outbox/postgres',
		type => $type,
		subject => $subject);
	my %got = map { $_ => $headers->{"$prefix$_"} } keys %want;
	is_deeply(\%got, \%want, "$name: the attributes ${prefix}specversion, ${prefix}id, ...");
	my $seconds = $node->safe_psql('postgres',
		qq{SELECT to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS') FROM outbox.messages WHERE id = '$id'});
	like($headers->{"${prefix}time"} // '', qr/^\Q$seconds\E(\.\d{1,6})?Z$/,
		"$name: ${prefix}time is created_at, RFC 3339 in UTC");
	return;
}

=pod

=item is_event($json, $id, $publisher, $type, $name)

Check a structured mode event (JSON text) of the message cloudevents() saved
as json: its attributes (source urn:shop:$publisher, subject k1) and data.

=cut

sub is_event
{
	my ($json, $id, $publisher, $type, $name) = @_;
	my $event = eval { JSON::PP->new->decode($json // '') } // {};
	is_deeply(
		[ @$event{qw(specversion id source type subject datacontenttype)}, $event->{data} ],
		[ '1.0', $id, "urn:shop:$publisher", $type, 'k1', 'application/json', { n => 1 } ],
		"$name: the JSON event");
	return;
}

=pod

=item wrong_password($node, $publisher, %options)

Create the destination name => of $publisher with the options options =>
(JSON members, without braces) and the password wrong =>, subscribed to
"wrong.>", and save a message for it: ok() when the broker's refusal
(refusal => a regexp) is logged with the hint hint => (a regexp), a
message of topic other => is delivered meanwhile, the waiting one stays
pending and untouched, outbox.destinations leaves the password out, and
alter_destination with the password right => delivers it.  Returns the
waiting message's id.

=cut

sub wrong_password
{
	my ($node, $publisher, %opt) = @_;
	my $offset = OutboxTest::log_position($node);
	$node->safe_psql('postgres', qq{
SELECT outbox.create_destination('$opt{name}', '$publisher', '{$opt{options}, "password": "$opt{wrong}"}');
SELECT outbox.subscribe('$opt{name}', 'wrong.>');
});
	my $waiting = $node->safe_psql('postgres', q{SELECT outbox.save('wrong.created', '{"w": 1}'::jsonb)});
	ok(OutboxTest::wait_for_log_line($node, $opt{refusal}, $offset), 'a wrong password: the refusal is logged');
	ok(OutboxTest::wait_for_log_line($node, $opt{hint}, $offset), 'with a hint naming the destination\'s options');
	my $other = $node->safe_psql('postgres', qq{SELECT outbox.save('$opt{other}', '{}'::jsonb)});
	ok(OutboxTest::wait_processed($node, $other), 'another destination goes on meanwhile');
	is( $node->safe_psql('postgres',
			"SELECT status || '/' || retries FROM outbox.deliveries WHERE message_id = '$waiting'"),
		'pending/0', 'the message waits, untouched');
	is( $node->safe_psql('postgres',
			"SELECT options ? 'password' FROM outbox.destinations WHERE name = '$opt{name}'"),
		'f', 'outbox.destinations leaves the password out');
	$node->safe_psql('postgres',
		qq{SELECT outbox.alter_destination('$opt{name}', '{"password": "$opt{right}"}')});
	ok( OutboxTest::poll_until($node, 'postgres',
			"SELECT status FROM outbox.deliveries WHERE message_id = '$waiting'", 'processed'),
		'the right password (alter_destination) delivers it');
	return $waiting;
}

=pod

=item data_base64($json)

The data_base64 member of an event (JSON text).

=cut

sub data_base64
{
	my ($json) = @_;
	my $event = eval { JSON::PP->new->decode($json // '') } // {};
	return $event->{data_base64};
}

=pod

=item worker_pids($node, $dbname)

The running destination workers of $dbname ('postgres'): a hash of
destination name => pid.  pg_stat_activity shows them as backend_type
"outbox destination worker"; the process title names the destination
("outbox worker for destination NAME of database DB").

=cut

sub worker_pids
{
	my ($node, $dbname) = @_;
	$dbname //= 'postgres';
	my $out = OutboxTest::query_value($node, 'postgres',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'outbox destination worker' "
		  . "AND datname = '$dbname'");
	return () unless defined $out;
	my %pids;
	for my $pid (grep { /^\d+$/ } split /\n/, $out)
	{
		open(my $fh, '<', "/proc/$pid/cmdline") or next;
		my $title = do { local $/; <$fh> } // '';
		close $fh;
		$pids{$1} = $pid if $title =~ /outbox worker for destination (\S+) of database/;
	}
	return %pids;
}

=pod

=item wait_worker($node, $name, %options)

Wait until destination $name has a worker and return its pid (0 on
timeout).  Options: not_pid => a pid it must not have (a restarted
worker), timeout, dbname.

=item wait_no_worker($node, $name, $timeout)

Wait until destination $name has no worker (paused, disabled, dropped).

=cut

sub wait_worker
{
	my ($node, $name, %opt) = @_;
	my $not_pid = $opt{not_pid} // -1;
	my $pid = OutboxTest::wait_until(
		$opt{timeout} // $OutboxTest::TIMEOUT,
		sub {
			my %p = worker_pids($node, $opt{dbname});
			return (defined $p{$name} && $p{$name} != $not_pid) ? $p{$name} : 0;
		});
	diag("no worker for destination $name") unless $pid;
	return $pid;
}

sub wait_no_worker
{
	my ($node, $name, $timeout) = @_;
	my $ok = OutboxTest::wait_until($timeout // $OutboxTest::TIMEOUT,
		sub { my %p = worker_pids($node); !defined $p{$name} });
	diag("destination $name still has a worker") unless $ok;
	return $ok;
}

=pod

=item signature_ok($request, $key)

Whether a request of OutboxHttp carries a Standard Webhooks signature
made with $key (the raw key bytes).

=cut

sub signature_ok
{
	my ($req, $key) = @_;
	my $h = $req->{headers};
	return 0 unless defined $h->{'webhook-id'} && defined $h->{'webhook-timestamp'};
	my $signed = "$h->{'webhook-id'}.$h->{'webhook-timestamp'}.$req->{body}";
	my $expected = 'v1,' . encode_base64(hmac_sha256($signed, $key), '');
	return scalar grep { $_ eq $expected } split ' ', ($h->{'webhook-signature'} // '');
}

=pod

=item state($node, $name)

A destination's row of outbox.destinations as a hash (state, paused,
last_error, disabled_reason, options), or undef.

=cut

sub state
{
	my ($node, $name) = @_;
	my $row = OutboxTest::query_value($node, 'postgres',
		"SELECT state, paused, coalesce(last_error, ''), coalesce(disabled_reason, ''), options "
		  . "FROM outbox.destinations WHERE name = '$name'");
	return undef unless defined $row && $row ne '';
	my %s;
	@s{qw(state paused last_error disabled_reason options)} = split /\|/, $row, 5;
	return \%s;
}

=pod

=item nats_available()

Whether the nats publisher can be tested here (available('nats', ...)).

=item available($publisher, @missing)

Whether $publisher can be tested here, given what is missing (the
module's missing(): OutboxNats::missing() and the like).  With
OUTBOX_REQUIRE_BROKERS set, a missing piece is a failure (BAIL_OUT)
instead.

=cut

sub nats_available
{
	require OutboxNats;
	return available('nats', OutboxNats::missing());
}

sub available
{
	my ($publisher, @missing) = @_;
	return 1 unless @missing;
	BAIL_OUT('OUTBOX_REQUIRE_BROKERS is set, but missing: ' . join('; ', @missing))
	  if $ENV{OUTBOX_REQUIRE_BROKERS};
	note("$publisher not tested here; missing: " . join('; ', @missing));
	return 0;
}

=pod

=back

=cut

##########################################################################

package OutboxDestinations::HttpSource;

=pod

=head1 OutboxDestinations::HttpSource

A consumer source for OutboxChecker: what an OutboxHttp receiver answered
with 2xx, in the order the requests started.  The receiver outlives server
crashes, so epochs are given by the test: the times at which it killed
something.  A worker's connections die with it and its successor opens new
ones, so a request's epoch is that of its connection: 1 + the number of
kills before the connection's first request (a request the dead worker had
sent may still be read by the receiver after the kill, on its old
connection).  A message may arrive again in a later epoch (duplicates =>
'crash'), never twice in one.

  my $source = OutboxDestinations::HttpSource->new($srv, name => 'receiver A', topic => 'chk',
      destination => 'hook_a');    # for OutboxChecker::check_status
  $source->crashed_at(time());     # at each kill -9

=cut

use strict;
use warnings;

use JSON::PP;

sub new
{
	my ($class, $srv, %opt) = @_;
	return bless {
		srv => $srv,
		name => $opt{name} // 'http receiver',
		topic => $opt{topic},
		destination => $opt{destination},
		crashes => [],
	}, $class;
}

sub name { return $_[0]->{name} }
sub destination { return $_[0]->{destination} }
sub ordered { return 1 }
sub epochs { return 1 + scalar @{ $_[0]->{crashes} } }
sub completeness { return 'every committed message' }

sub crashed_at
{
	my ($self, $t) = @_;
	push @{ $self->{crashes} }, $t;
	return;
}

sub deliveries
{
	my ($self) = @_;
	my $json = JSON::PP->new;
	my @d;
	my @filter = defined $self->{topic} ? (topic => $self->{topic}) : ();
	my @requests = $self->{srv}->requests(@filter);
	my %opened;
	for my $r (@requests)
	{
		$opened{ $r->{conn} } = $r->{start}
		  if !defined $opened{ $r->{conn} } || $r->{start} < $opened{ $r->{conn} };
	}
	for my $r (@requests)
	{
		next unless $r->{status} >= 200 && $r->{status} < 300;
		my $body = eval { $json->decode($r->{body}) } // {};
		my $epoch = 1 + scalar grep { $_ <= $opened{ $r->{conn} } } @{ $self->{crashes} };
		push @d,
		  {
			id => $r->{id},
			key => $r->{key},
			seq => $body->{s},
			token => $body->{t},
			epoch => $epoch,
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

1;
