#!/usr/bin/env bash
# scripts/packages.sh -- the Debian packages that outbox's build, demo, tests,
# benchmarks and CI need: the one list, shared by make demo (demo/demo.sh),
# make test (Makefile), bench/run.sh and .ci/run.
#
#   bash scripts/packages.sh ensure GROUP...   install what is missing
#   bash scripts/packages.sh check GROUP...    only say what is missing
#   bash scripts/packages.sh list GROUP...     print the packages, one a line
#
# or, from a bash script: source scripts/packages.sh; outbox_ensure_packages GROUP...
#
# Groups (each includes the ones it names):
#   build     compile and install the extension
#   demo      build + the PostgreSQL 15 server (make demo)
#   test      demo + what every suite of make test needs, the broker
#             plug-ins' client libraries and the brokers' servers included
#   bench     demo + PgQ and Python's PostgreSQL driver (bench/run.sh)
#   pgbuild   building PostgreSQL from Debian's source package
#             (scripts/build-postgres.sh)
#   deb       building outbox's Debian package (scripts/test-deb.sh)
#   ci        everything above (.ci/run)
#
# ensure, as root: installs the missing packages with apt-get (keeping the
# packages' scripts from starting services, such as the "main" cluster, while
# it runs).  As another user: prints the exact "sudo apt-get install" command
# and fails (exit 1).  OUTBOX_PACKAGES_DRY_RUN=1 makes ensure behave like check:
# it reports what it would install and installs nothing.  check exits 1 when
# something is missing.  Without dpkg (not Debian or Ubuntu) both say so and
# succeed: the packages are then the user's business.

# The one list.  test has the client libraries of the broker plug-ins (each
# is built when its library is installed), the servers their tests start,
# the Prometheus exporter that test/t/160_prometheus.pl runs, Patroni and
# etcd for test/t/170_patroni.pl and pgbouncer for test/t/171_pgbouncer.pl
# (the tests start their own; the packages' services are never started).
outbox_packages_build=(build-essential postgresql-server-dev-15 libcurl4-openssl-dev pkg-config)
outbox_packages_demo=(postgresql-15)
outbox_packages_test=(postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl libipc-run-perl
    python3 python3-psycopg2 openssl
    librdkafka-dev libnats-dev nats-server librabbitmq-dev rabbitmq-server libhiredis-dev redis-server
    prometheus-postgres-exporter patroni etcd-server pgbouncer)
outbox_packages_bench=(postgresql-15-pgq3 python3 python3-psycopg2)
outbox_packages_pgbuild=(build-essential dpkg-dev bison flex perl libipc-run-perl zlib1g-dev liblz4-dev
    bzip2 xz-utils patch debian-archive-keyring)
outbox_packages_deb=(dpkg-dev debhelper postgresql-server-dev-all fakeroot)

# outbox_packages GROUP...: print the packages of the groups, once each.
outbox_packages() {
    local group g names=() seen=" " p
    for group in "$@"; do
        case $group in
            build) names+=("${outbox_packages_build[@]}") ;;
            demo) names+=("${outbox_packages_build[@]}" "${outbox_packages_demo[@]}") ;;
            test) names+=("${outbox_packages_build[@]}" "${outbox_packages_demo[@]}"
                          "${outbox_packages_test[@]}") ;;
            bench) names+=("${outbox_packages_build[@]}" "${outbox_packages_demo[@]}"
                           "${outbox_packages_bench[@]}") ;;
            pgbuild) names+=("${outbox_packages_pgbuild[@]}") ;;
            deb) names+=("${outbox_packages_deb[@]}") ;;
            ci) for g in test bench pgbuild deb; do
                    mapfile -t -O "${#names[@]}" names < <(outbox_packages "$g")
                done ;;
            *) echo "scripts/packages.sh: unknown group \"$group\"" >&2; return 2 ;;
        esac
    done
    for p in "${names[@]}"; do
        [[ $seen == *" $p "* ]] && continue
        seen+="$p "
        echo "$p"
    done
}

# outbox_missing_packages GROUP...: print the packages of the groups that are
# not installed.
outbox_missing_packages() {
    local p list
    list=$(outbox_packages "$@") || return
    for p in $list; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' ||
            echo "$p"
    done
}

# outbox_apt_get ARGS...: apt-get as root, non-interactive, waiting for a
# dpkg lock that another apt-get holds instead of failing.
outbox_apt_get() {
    DEBIAN_FRONTEND=noninteractive apt-get -q -o Dpkg::Use-Pty=0 \
        -o DPkg::Lock::Timeout=600 "$@"
}

# outbox_ensure_packages GROUP...: install the missing packages (see above).
outbox_ensure_packages() {
    local missing policy=/usr/sbin/policy-rc.d made_policy= rc=0
    if ! command -v dpkg-query >/dev/null 2>&1; then
        echo "packages: no dpkg here: install the equivalents of $(outbox_packages "$@" | tr '\n' ' ')yourself"
        return 0
    fi
    missing=$(outbox_missing_packages "$@") || return 2
    missing=$(echo $missing)
    if [[ -z $missing ]]; then
        echo "packages: all installed ($*)"
        return 0
    fi
    if [[ -n ${OUTBOX_PACKAGES_DRY_RUN:-} ]]; then
        echo "packages: would install: $missing"
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "packages: missing: $missing" >&2
        echo "install them with:" >&2
        echo "  sudo apt-get install -y --no-install-recommends $missing" >&2
        return 1
    fi
    echo "packages: installing $missing"
    # Keep the packages' scripts from starting services (Debian's postgresql
    # starts a "main" cluster, rabbitmq-server and redis-server their
    # daemons); a policy-rc.d already in place is left as it is.
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# made by outbox scripts/packages.sh while it installs\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        made_policy=1
    fi
    # shellcheck disable=SC2086  # the names are one word each
    { outbox_apt_get update >/dev/null &&
        outbox_apt_get install -y --no-install-recommends $missing >/dev/null; } || rc=$?
    [[ -n $made_policy ]] && rm -f "$policy"
    if (( rc != 0 )); then
        echo "packages: apt-get install $missing failed (exit $rc)" >&2
        return 1
    fi
    return 0
}

# outbox_check_packages GROUP...: say what is missing; 1 when something is.
outbox_check_packages() {
    local missing
    command -v dpkg-query >/dev/null 2>&1 || { echo "packages: no dpkg here"; return 0; }
    missing=$(outbox_missing_packages "$@") || return 2
    missing=$(echo $missing)
    if [[ -z $missing ]]; then
        echo "packages: all installed ($*)"
        return 0
    fi
    echo "packages: missing: $missing"
    return 1
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    cmd=${1:-}
    shift || true
    (( $# > 0 )) || { echo "usage: bash scripts/packages.sh ensure|check|list GROUP..." >&2; exit 2; }
    case $cmd in
        ensure) outbox_ensure_packages "$@" ;;
        check) outbox_check_packages "$@" ;;
        list) outbox_packages "$@" ;;
        *) echo "usage: bash scripts/packages.sh ensure|check|list GROUP..." >&2; exit 2 ;;
    esac
fi
