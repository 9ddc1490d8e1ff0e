# shellcheck shell=bash
# bench/pg.sh -- sourced by the bench scripts: find PostgreSQL and check
# that the outbox extension is installed into it.
#
#   find_outbox_install NAME
# sets pg_config_bin, bindir, sharedir and pkglibdir (PG_CONFIG, else
# PostgreSQL 15's pg_config, else the one in PATH), and exits with a message
# prefixed by NAME when the extension is not installed there.
# shellcheck disable=SC2034  # the variables are for the sourcing script
find_outbox_install() {
    local name=$1
    if [[ -n ${PG_CONFIG:-} ]]; then
        pg_config_bin=$PG_CONFIG
    elif [[ -x /usr/lib/postgresql/15/bin/pg_config ]]; then
        pg_config_bin=/usr/lib/postgresql/15/bin/pg_config
    else
        pg_config_bin=$(command -v pg_config)
    fi
    bindir=$("$pg_config_bin" --bindir)
    sharedir=$("$pg_config_bin" --sharedir)
    pkglibdir=$("$pg_config_bin" --pkglibdir)
    if [[ ! -f $sharedir/extension/outbox.control || ! -f $pkglibdir/outbox.so ]]; then
        echo "$name: the outbox extension is not installed; run 'make install' first" >&2
        exit 1
    fi
}
