#!/usr/bin/env bash
# scripts/test-deb.sh -- build outbox's Debian packages (debian/, built with
# pg_buildext) and test them: install the .debs on this machine, then on a
# throw-away cluster of the packaged PostgreSQL, with the libraries preloaded,
# CREATE EXTENSION outbox from them, publish a message, update from the
# oldest version, and run the packages' autopkgtest (debian/tests).
#
#   bash scripts/test-deb.sh            (as root: dpkg -i needs it)
#
# Steps:
#   1. Copies the tree (the files git knows, committed or not) to a scratch
#      directory and runs dpkg-buildpackage -us -uc there; the packages land
#      next to it.  postgresql-<v>-outbox-kafka, -nats, -amqp and -redis are
#      built when librdkafka-dev, libnats-dev, librabbitmq-dev and
#      libhiredis-dev are installed (else the build profiles
#      pkg.outbox.nokafka, nonats, noamqp, noredis leave them out).
#   2. Installs them with dpkg -i.  Files of an earlier make install that the
#      packages replace are saved first.
#   3. Tests them, as above.
#   4. Leaves the machine as it found it: removes the packages it installed
#      (a package that was installed before is reinstalled from the same
#      .deb, not removed) and puts the saved files back.
#
# Environment: OUTBOX_DEB_KEEP=1 keeps the packages installed and the
# scratch directory.  Needs the packages of group deb (scripts/packages.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
srcdir=$(cd "$here/.." && pwd)

log() { printf 'test-deb: %s\n' "$*"; }
die() { printf 'test-deb: error: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root: the test installs the packages with dpkg -i"
for tool in dpkg-buildpackage pg_buildext dh; do
    command -v "$tool" >/dev/null || die "$tool is missing: bash scripts/packages.sh ensure deb"
done

version=$(sed -n "s/^default_version *= *'\\(.*\\)'/\\1/p" "$srcdir/outbox.control")
debversion=$(dpkg-parsechangelog -l "$srcdir/debian/changelog" -S Version)
[[ ${debversion%%-*} == "$version" ]] ||
    die "debian/changelog is at $debversion, outbox.control's default_version at $version: add a changelog entry (dch -v $version)"

work=$(mktemp -d /tmp/outbox-deb.XXXXXX)
backup=$work/replaced
installed_here=()
reinstall=()
cluster=
cleanup() {
    local rc=$? p
    set +e
    if [[ -n $cluster && -f $cluster/data/postmaster.pid ]]; then
        runuser -u postgres -- "$pg_bin/pg_ctl" -D "$cluster/data" -m immediate -w stop >/dev/null 2>&1
    fi
    if [[ -z ${OUTBOX_DEB_KEEP:-} ]]; then
        if (( ${#installed_here[@]} )); then
            log "removing ${installed_here[*]}"
            dpkg -r "${installed_here[@]}" >>"$work/remove.log" 2>&1
        fi
        if (( ${#reinstall[@]} )); then
            dpkg -i "${reinstall[@]}" >>"$work/remove.log" 2>&1
        fi
        if [[ -d $backup ]] && [[ -n $(ls -A "$backup") ]]; then
            log "putting back the files of the earlier make install"
            cp -a "$backup"/. /
        fi
        rm -rf -- "$work"
    else
        log "kept: $work and the installed packages"
    fi
    exit "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------- 1. build

tree=$work/outbox-$version
mkdir -p "$tree"
if git -C "$srcdir" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$srcdir" && git ls-files -z -co --exclude-standard | xargs -0 -r tar cf - --no-recursion) |
        (cd "$tree" && tar xf -)
else
    (cd "$srcdir" && tar cf - --exclude='*.o' --exclude='*.so' --exclude='*.bc' --exclude=.git .) |
        (cd "$tree" && tar xf -)
fi
profiles=()
pkg-config --exists rdkafka 2>/dev/null || profiles+=(pkg.outbox.nokafka)
pkg-config --exists libnats 2>/dev/null || profiles+=(pkg.outbox.nonats)
pkg-config --exists librabbitmq 2>/dev/null || profiles+=(pkg.outbox.noamqp)
pkg-config --exists hiredis 2>/dev/null || profiles+=(pkg.outbox.noredis)
log "dpkg-buildpackage -us -uc${profiles:+ -P$(IFS=,; echo "${profiles[*]}")} in $tree"
start=$SECONDS
(cd "$tree" && dpkg-buildpackage -us -uc ${profiles:+-P"$(IFS=,; echo "${profiles[*]}")"}) >"$work/build.log" 2>&1 ||
    { tail -n 60 "$work/build.log" >&2; die "dpkg-buildpackage failed (log: $work/build.log)"; }
build_secs=$(( SECONDS - start ))
mapfile -t debs < <(ls "$work"/postgresql-*-outbox*_"$debversion"_*.deb | grep -v -- '-dbgsym_')
(( ${#debs[@]} )) || die "dpkg-buildpackage made no packages"
log "built in ${build_secs}s: $(for d in "${debs[@]}"; do basename "$d"; done | tr '\n' ' ')"

# ---------------------------------------------------------------- 2. install

mkdir -p "$backup"
for deb in "${debs[@]}"; do
    pkg=$(dpkg-deb -f "$deb" Package)
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        reinstall+=("$deb")      # not ours to remove; dpkg -i again at the end
    else
        installed_here+=("$pkg")
    fi
    # files a make install put there, owned by no package
    while read -r f; do
        f=${f#.}
        [[ -f $f ]] || continue
        dpkg -S "$f" >/dev/null 2>&1 && continue
        mkdir -p "$backup$(dirname "$f")"
        cp -a "$f" "$backup$f"
    done < <(dpkg-deb --fsys-tarfile "$deb" | tar tf - | grep -v '/$')
done
dpkg -i "${debs[@]}" >"$work/install.log" 2>&1 ||
    { cat "$work/install.log" >&2; die "dpkg -i failed"; }
log "installed: $(for d in "${debs[@]}"; do dpkg-deb -f "$d" Package; done | tr '\n' ' ')"

# ---------------------------------------------------------------- 3. test

pg_major() { dpkg-deb -f "$1" Package | sed -n 's/^postgresql-\([0-9]*\)-outbox$/\1/p'; }
tested=0
for deb in "${debs[@]}"; do
    major=$(pg_major "$deb")
    [[ -n $major ]] || continue
    pg_bin=/usr/lib/postgresql/$major/bin
    libs=outbox
    for plugin in kafka nats amqp redis; do
        dpkg-query -W -f='${Status}' "postgresql-$major-outbox-$plugin" 2>/dev/null |
            grep -q 'install ok installed' && libs+=", outbox_$plugin"
    done
    owner=$(dpkg -S "/usr/lib/postgresql/$major/lib/outbox.so" | cut -d: -f1)
    [[ $owner == "postgresql-$major-outbox" ]] || die "outbox.so belongs to $owner"

    cluster=$work/cluster-$major
    mkdir -p "$cluster/sock"
    chown -R postgres: "$cluster"
    chmod 0755 "$work"
    runuser -u postgres -- "$pg_bin/initdb" -D "$cluster/data" -A trust -E UTF8 --locale=C --no-sync \
        >"$cluster/initdb.log" 2>&1 || { cat "$cluster/initdb.log" >&2; die "initdb failed"; }
    cat >>"$cluster/data/postgresql.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$cluster/sock'
shared_preload_libraries = '$libs'
outbox.databases = 'postgres'
fsync = off
EOF
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$cluster/data" -l "$cluster/server.log" -w -t 60 start >/dev/null ||
        { tail -n 30 "$cluster/server.log" >&2; die "the server did not start with $libs"; }
    psql_() { runuser -u postgres -- "$pg_bin/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$cluster/sock" "$@"; }

    psql_ -d postgres -c 'CREATE EXTENSION outbox'
    got=$(psql_ -d postgres -c "SELECT extversion FROM pg_extension WHERE extname = 'outbox'")
    [[ $got == "$version" ]] || die "PostgreSQL $major: CREATE EXTENSION outbox made $got, not $version"
    psql_ -d postgres -c "SELECT outbox.save('deb', '{\"from\": \"the package\"}'::jsonb)" >/dev/null
    for (( i = 0; i < 300; i++ )); do
        [[ $(psql_ -d postgres -c "SELECT count(*) FROM outbox.messages WHERE status = 'processed'") == 1 ]] && break
        sleep 0.1
    done
    (( i < 300 )) || die "PostgreSQL $major: the worker did not publish the message within 30 s"
    for plugin in kafka nats amqp redis; do
        [[ $libs == *outbox_$plugin* ]] || continue
        case $plugin in
            kafka) guc=outbox.kafka_topic ;;
            nats) guc=outbox.nats_subject ;;
            amqp) guc=outbox.amqp_exchange ;;
            redis) guc=outbox.redis_stream ;;
        esac
        psql_ -d postgres -c "SHOW $guc" >/dev/null ||
            die "PostgreSQL $major: outbox_$plugin did not load ($guc is unknown)"
    done
    oldest=$(psql_ -d postgres -c "SELECT version FROM pg_available_extension_versions WHERE name = 'outbox' ORDER BY string_to_array(version, '.')::int[] LIMIT 1")
    psql_ -d postgres -c 'CREATE DATABASE updated'
    psql_ -d updated -c "CREATE EXTENSION outbox VERSION '$oldest'" -c 'ALTER EXTENSION outbox UPDATE'
    got=$(psql_ -d updated -c "SELECT extversion FROM pg_extension WHERE extname = 'outbox'")
    [[ $got == "$version" ]] || die "PostgreSQL $major: ALTER EXTENSION outbox UPDATE from $oldest made $got"
    runuser -u postgres -- "$pg_bin/pg_ctl" -D "$cluster/data" -m fast -w stop >/dev/null
    log "PostgreSQL $major: CREATE EXTENSION outbox ($version) from the package, a message published, libraries '$libs' loaded, updated from $oldest"
    tested=$(( tested + 1 ))
done
(( tested > 0 )) || die "no postgresql-<v>-outbox package was built"

log "the packages' autopkgtest (debian/tests/create-extension, pg_virtualenv)"
(cd "$work" && AUTOPKGTEST_TMP=$work bash "$tree/debian/tests/create-extension") >"$work/autopkgtest.log" 2>&1 ||
    { cat "$work/autopkgtest.log" >&2; die "debian/tests/create-extension failed"; }
grep 'CREATE EXTENSION and publishing work' "$work/autopkgtest.log" | sed 's/^/test-deb:   /'
log "PASSED (build ${build_secs}s, all $(( SECONDS - start ))s)"
