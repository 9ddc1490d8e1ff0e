#!/usr/bin/perl
# summarize.pl SRCDIR LOGDIR -- report the errors in valgrind's per-process
# logs (written with --error-markers=VALGRINDERROR-BEGIN,VALGRINDERROR-END).
#
# An error is the extension's when one of its stack frames is in outbox.so
# or in a source file under SRCDIR/src (the logs have full source paths:
# --fullpath-after=).  Each distinct error (its kind and top frames) is
# printed once with the number of processes that hit it; the extension's
# first, in full.  Exit status: 1 when the extension has errors, else 0.

use strict;
use warnings;

my ($srcdir, $logdir) = @ARGV;
die "usage: summarize.pl SRCDIR LOGDIR\n" unless defined $logdir && -d $logdir;

my @logs = sort glob("$logdir/*.log");
my %errors;    # signature -> { text, count, ours, pids }
my $other_lines = 0;
my @other_samples;

for my $log (@logs)
{
	my ($pid) = $log =~ m{/(\d+)\.log$};
	open(my $fh, '<', $log) or die "could not read $log: $!\n";
	my $in = 0;
	my $in_supp = 0;
	my @block;
	my $last;
	while (my $line = <$fh>)
	{
		$line =~ s/^==\d+== ?//;
		if ($line =~ /^VALGRINDERROR-BEGIN/)
		{
			$in = 1;
			@block = ();
			next;
		}
		if ($line =~ /^VALGRINDERROR-END/)
		{
			$in = 0;
			$last = record(\@block, $pid);
			next;
		}
		if ($in)
		{
			push @block, $line;
		}
		elsif ($line =~ /^\{\s*$/ || $in_supp)
		{
			# the suppression --gen-suppressions=all printed for the error
			$in_supp = $line !~ /^\}\s*$/;
			$last->{supp} .= $line if $last && !$last->{supp_done};
			$last->{supp_done} = 1 if $last && !$in_supp;
		}
		elsif ($line =~ /\S/)
		{
			$other_lines++;
			push @other_samples, "$pid: $line" if @other_samples < 10;
		}
	}
	close $fh;
}

sub record
{
	my ($block, $pid) = @_;
	my @lines = grep { /\S/ } @$block;
	return unless @lines;
	# The suppression valgrind generated (--gen-suppressions=all) is part of
	# the block; keep it for the report but not in the signature.
	my @frames = grep { /^\s+(at|by) 0x/ } @lines;
	my @top = map { (my $f = $_) =~ s/0x[0-9A-F]+//gi; $f =~ s/\s+/ /g; $f } @frames[0 .. ($#frames < 7 ? $#frames : 7)];
	my $signature = join('|', $lines[0] =~ s/\s+/ /gr, @top);
	my $ours = grep { m{\Q$srcdir\E/src/|/outbox\.so\b} } @frames;
	my $e = $errors{$signature} //= { text => join('', @lines), count => 0, ours => $ours, pids => [] };
	$e->{count}++;
	push @{ $e->{pids} }, $pid if @{ $e->{pids} } < 5;
	return $e;
}

my @ours = grep { $errors{$_}{ours} } sort keys %errors;
my @theirs = grep { !$errors{$_}{ours} } sort keys %errors;

printf "== valgrind: %d process logs, %d distinct errors in the extension, %d only in PostgreSQL\n",
  scalar(@logs), scalar(@ours), scalar(@theirs);
for my $sig (@ours)
{
	my $e = $errors{$sig};
	printf "\n-- error in the extension (%d times; pids %s):\n%s", $e->{count},
	  join(', ', @{ $e->{pids} }), $e->{text};
}
for my $sig (@theirs)
{
	my $e = $errors{$sig};
	my @lines = split /\n/, $e->{text};
	my $end = $#lines < 12 ? $#lines : 12;
	printf "\n-- error only in PostgreSQL (%d times; pids %s; not fatal; first lines):\n%s\n",
	  $e->{count}, join(', ', @{ $e->{pids} }), join("\n", @lines[0 .. $end]);
	print "   suppression (for test/valgrind/postgres.supp, after review):\n$e->{supp}"
	  if $e->{supp};
}
if ($other_lines)
{
	print "\n== $other_lines other lines in the logs, for example:\n", @other_samples;
}
exit(@ours ? 1 : 0);
