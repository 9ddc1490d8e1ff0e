
# 081_upgrade_catalog.pl -- an install updated from any older version has
# exactly the objects of a fresh install of the default version.
#
# For every version older than the default one (OutboxVersions: whatever
# the installed scripts offer, so a new version is covered without editing
# this test): CREATE EXTENSION outbox VERSION 'old' and ALTER EXTENSION
# outbox UPDATE in a database of its own, then compare with a database
# where CREATE EXTENSION outbox made the default version:
#
#  - the schema: pg_dump --schema-only of schema outbox, with the objects'
#    definitions, defaults, constraints, indexes, comments and privileges.
#    pg_dump leaves out the members of an extension (a dump restores them
#    with CREATE EXTENSION), so each side is dumped from a throw-away copy
#    of its database (CREATE DATABASE ... TEMPLATE) in which the objects
#    were released from the extension (ALTER EXTENSION outbox DROP ...);
#  - the membership: which objects belong to the extension (pg_depend), as
#    \dx+ outbox lists them, and the extension's own row (version,
#    configuration tables).
#
# Two tampered copies check that the comparison sees what it should: one
# with a changed column default (the schema dump differs), one with an
# object released from the extension (the membership differs).  And the
# installed scripts must be the ones in sql/, with META.json's version
# matching (OutboxVersions::check_against_sources).

use strict;
use warnings;

use File::Temp qw(tempfile);
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

use OutboxTest;
use OutboxVersions;

# The library is preloaded (CREATE EXTENSION needs it for nothing, but this
# is how it is installed); no database is relayed.
my $node = OutboxTest::new_node(
	'upgrade_catalog',
	databases => '',
	extension_in => [],
	wait_worker => 0);

my $versions = OutboxVersions::installed($node);
OutboxVersions::check_against_sources($node, $versions);
my $default = $versions->{default};
note("default version $default; older: @{ $versions->{older} }");

# Every older version can be updated to the default one.
for my $version (@{ $versions->{older} })
{
	is( $node->safe_psql(
			'postgres',
			"SELECT path IS NOT NULL FROM pg_extension_update_paths('outbox') "
			  . "WHERE source = '$version' AND target = '$default'"),
		't',
		"there is an update path from $version to $default");
}

# members($db): the extension's members, one description a line, sorted.
sub members
{
	my ($db) = @_;
	return $node->safe_psql(
		$db, q{
SELECT pg_describe_object(classid, objid, objsubid) AS member
FROM pg_depend
WHERE refclassid = 'pg_extension'::regclass
  AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'outbox')
  AND deptype = 'e'
ORDER BY 1});
}

# extension_row($db): what pg_extension says of outbox.
sub extension_row
{
	my ($db) = @_;
	return $node->safe_psql(
		$db, q{
SELECT extversion, extrelocatable, extnamespace::regnamespace,
       extconfig::regclass[], extcondition
FROM pg_extension WHERE extname = 'outbox'});
}

# dx_plus($db): psql's \dx+ outbox.
sub dx_plus
{
	my ($db) = @_;
	my ($stdout, $stderr);
	IPC::Run::run(
		[
			'psql', '-X', '-d', $node->connstr($db),
			'-v', 'ON_ERROR_STOP=1', '-c', '\dx+ outbox'
		],
		'>', \$stdout, '2>', \$stderr)
	  or die "psql \\dx+ outbox failed: $stderr";
	return $stdout;
}

# schema_dump($db): pg_dump --schema-only of schema outbox, taken from a
# throw-away copy of $db whose outbox objects are not extension members.
my $copies = 0;

sub schema_dump
{
	my ($db) = @_;
	my $copy = 'dump_copy_' . ++$copies;
	$node->safe_psql('postgres', qq{CREATE DATABASE "$copy" TEMPLATE "$db"});
	# Array types and the row types of tables and views go with their
	# owner (PostgreSQL 18 lists them as members too).
	my $release = $node->safe_psql(
		$copy, q{
SELECT string_agg(format('ALTER EXTENSION outbox DROP %s %s;', o.type, o.identity), E'\n')
FROM pg_depend d, pg_identify_object(d.classid, d.objid, d.objsubid) o
WHERE d.refclassid = 'pg_extension'::regclass
  AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'outbox')
  AND d.deptype = 'e'
  AND NOT (d.classid = 'pg_type'::regclass
           AND EXISTS (SELECT 1 FROM pg_type t
                       WHERE t.oid = d.objid
                         AND (t.typrelid <> 0
                              OR EXISTS (SELECT 1 FROM pg_type b WHERE b.typarray = t.oid))))});
	$node->safe_psql($copy, $release) if $release ne '';
	my ($stdout, $stderr);
	IPC::Run::run(
		[
			'pg_dump', '--schema-only', '--schema=outbox', '--no-tablespaces',
			'-d', $node->connstr($copy)
		],
		'>', \$stdout, '2>', \$stderr)
	  or die "pg_dump of $copy failed: $stderr";
	$node->safe_psql('postgres', qq{DROP DATABASE "$copy"});
	# \restrict and \unrestrict carry a random key in each dump.
	return join('', grep { !/^\\(un)?restrict / } split /^/m, $stdout);
}

# same($got, $expected, $name): is(), with a diff when they differ.
sub same
{
	my ($got, $expected, $name) = @_;
	return pass($name) if $got eq $expected;
	my ($fh1, $f1) = tempfile(DIR => $PostgreSQL::Test::Utils::tmp_check);
	my ($fh2, $f2) = tempfile(DIR => $PostgreSQL::Test::Utils::tmp_check);
	print $fh1 $expected;
	print $fh2 $got;
	close $fh1;
	close $fh2;
	my $diff = `diff -u '$f1' '$f2'`;
	fail($name);
	diag("--- fresh install, +++ updated install:\n$diff");
	return 0;
}

# The fresh install of the default version.
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION outbox');
my %fresh = (
	dump => schema_dump('fresh'),
	members => members('fresh'),
	dx => dx_plus('fresh'),
	row => extension_row('fresh'));
like($fresh{dump}, qr/CREATE TABLE outbox\.messages/,
	'the dump of a fresh install has the objects (they were released from the extension)');
like($fresh{members}, qr/^table outbox\.messages$/m,
	'the members of a fresh install include the messages table');

for my $version (@{ $versions->{older} })
{
	(my $db = "updated_from_$version") =~ s/\W/_/g;
	$node->safe_psql('postgres', qq{CREATE DATABASE "$db"});
	$node->safe_psql($db, "CREATE EXTENSION outbox VERSION '$version'");
	$node->safe_psql($db, 'ALTER EXTENSION outbox UPDATE');
	same(extension_row($db), $fresh{row},
		"$version updated: the extension's row (version $default, configuration tables)");
	same(schema_dump($db), $fresh{dump},
		"$version updated: pg_dump --schema-only of schema outbox is the fresh install's");
	same(members($db), $fresh{members},
		"$version updated: the extension has the same members");
	same(dx_plus($db), $fresh{dx}, "$version updated: \\dx+ outbox is the same");
}

# The comparison sees a difference in the schema ...
$node->safe_psql('postgres', 'CREATE DATABASE tampered_schema TEMPLATE fresh');
$node->safe_psql('tampered_schema',
	'ALTER TABLE outbox.messages ALTER COLUMN retries SET DEFAULT 1');
isnt(schema_dump('tampered_schema'), $fresh{dump},
	'control: a changed column default changes the schema dump');
is(members('tampered_schema'), $fresh{members}, 'control: (but not the members)');

# ... and in the membership.
$node->safe_psql('postgres', 'CREATE DATABASE tampered_members TEMPLATE fresh');
$node->safe_psql('tampered_members', 'ALTER EXTENSION outbox DROP VIEW outbox.stats');
isnt(members('tampered_members'), $fresh{members},
	'control: an object released from the extension changes the members');
isnt(dx_plus('tampered_members'), $fresh{dx}, 'control: and \dx+ outbox');
is(schema_dump('tampered_members'), $fresh{dump}, 'control: (but not the schema dump)');

$node->stop;
done_testing();
