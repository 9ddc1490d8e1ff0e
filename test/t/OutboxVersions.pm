
# OutboxVersions.pm -- the extension's versions, for the upgrade tests
# (080_upgrade_messages.pl, 081_upgrade_catalog.pl).
#
# The versions come from the server (pg_available_extension_versions: every
# version the installed scripts can make, by a full script or a chain of
# update scripts), so a version added to sql/ is tested without editing a
# test.  When the source tree is known (OUTBOX_SRCDIR, set by test/run.sh),
# check_against_sources() also makes sure the installed scripts are the ones
# in sql/.

package OutboxVersions;

use strict;
use warnings;

use Carp;
use File::Basename qw(basename);
use JSON::PP;
use Test::More;

=pod

=head1 FUNCTIONS

=over

=item compare_versions($a, $b)

Compare two versions of the form 1.2.3 component by component (numbers
numerically); for sort.

=cut

sub compare_versions
{
	my ($v1, $v2) = @_;
	my @c1 = split /\./, $v1;
	my @c2 = split /\./, $v2;
	while (@c1 || @c2)
	{
		my $x = shift(@c1) // 0;
		my $y = shift(@c2) // 0;
		my $c = ($x =~ /^\d+$/ && $y =~ /^\d+$/) ? $x <=> $y : $x cmp $y;
		return $c if $c;
	}
	return 0;
}

=pod

=item installed($node)

A hash: default => the control file's default_version, all => every
installable version, oldest first, older => all but the default.

=cut

sub installed
{
	my ($node) = @_;
	my $default = $node->safe_psql('postgres',
		"SELECT default_version FROM pg_available_extensions WHERE name = 'outbox'");
	croak "the outbox extension is not installed" if $default eq '';
	my @all = sort { compare_versions($a, $b) } split /\n/,
	  $node->safe_psql('postgres',
		"SELECT version FROM pg_available_extension_versions WHERE name = 'outbox'");
	return {
		default => $default,
		all => \@all,
		older => [ grep { compare_versions($_, $default) < 0 } @all ],
	};
}

=pod

=item check_against_sources($node, $versions)

When OUTBOX_SRCDIR is set: ok() that the versions the server offers are the
ones sql/ has scripts for, that default_version in outbox.control is the
server's, and that META.json (when present) says the same version.

=cut

sub check_against_sources
{
	my ($node, $versions) = @_;
	my $srcdir = $ENV{OUTBOX_SRCDIR};
	unless (defined $srcdir && -d "$srcdir/sql")
	{
		note('OUTBOX_SRCDIR not set: the installed scripts are not compared with sql/');
		return;
	}
	my %in_sql;
	for my $f (glob("$srcdir/sql/outbox--*.sql"))
	{
		my $name = basename($f, '.sql');
		$name =~ s/^outbox--//;
		$in_sql{$_} = 1 for split /--/, $name;
	}
	is( join(' ', @{ $versions->{all} }),
		join(' ', sort { compare_versions($a, $b) } keys %in_sql),
		'the server offers exactly the versions that sql/ has scripts for');

	open(my $fh, '<', "$srcdir/outbox.control") or croak "outbox.control: $!";
	my ($control) = map { /^default_version\s*=\s*'([^']*)'/ ? $1 : () } <$fh>;
	close $fh;
	is($control, $versions->{default}, "the installed default version is outbox.control's");

	if (-f "$srcdir/META.json")
	{
		open(my $mf, '<', "$srcdir/META.json") or croak "META.json: $!";
		my $meta = JSON::PP->new->decode(do { local $/; <$mf> });
		close $mf;
		is($meta->{version}, $versions->{default}, 'META.json has the same version');
		is($meta->{provides}{outbox}{version},
			$versions->{default}, 'and so does its provides.outbox');
	}
	return;
}

=pod

=back

=cut

1;
