# OutboxValgrind.pm -- loaded into every Perl process of a valgrind run
# through PERL5OPT (see test/valgrind/run.sh).
#
# A server under valgrind is many times slower, so the tests' "soon" must
# be longer: once the test script has loaded OutboxTest.pm (its "use" lines
# run at compile time, before INIT blocks), raise OutboxTest::TIMEOUT to
# $OUTBOX_TEST_TIMEOUT.  In processes that never load OutboxTest (prove
# itself) this does nothing.

package OutboxValgrind;

use strict;
use warnings;

INIT
{
	no warnings 'once';
	if ($ENV{OUTBOX_TEST_TIMEOUT} && defined $OutboxTest::TIMEOUT)
	{
		$OutboxTest::TIMEOUT = $ENV{OUTBOX_TEST_TIMEOUT};
	}
}

1;
