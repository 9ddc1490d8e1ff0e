#!/usr/bin/env bash
# scripts/build-postgres.sh -- build a PostgreSQL that Debian 12 does not
# package (18, from Debian's own source package in sid) into a private
# prefix, with what outbox's test suites need, and pgTAP in it.
#
#   bash scripts/build-postgres.sh [MAJOR]      (default 18)
#
# The last line of the output is the pg_config of the build, for
#   make test PG_CONFIG=$(bash scripts/build-postgres.sh | tail -n 1)
#
# What it does:
#   1. Reads the newest postgresql-MAJOR source package of Debian sid through
#      a private apt configuration (scripts/debian-apt.sh: the machine's
#      sources stay as they are).
#   2. Reuses the build in the cache when it is of that version and was made
#      with these flags (the stamp file .outbox-build says so); otherwise
#      downloads the source package (apt-get source --download-only), applies
#      Debian's patches except the ones that move files to Debian's
#      multi-version layout, configures with the flags below, builds and
#      installs into $cache/pg-<version> (e.g. /var/cache/outbox/pg-18.6).
#   3. Installs pgTAP into it: the files of sid's postgresql-MAJOR-pgtap
#      (pgTAP is SQL and PL/pgSQL only); else pgtap's source package built
#      with PGXS; else the SQL files of the installed postgresql-15-pgtap.
#   4. Points $cache/pg-MAJOR at it and removes older builds of MAJOR.
#   Without network it reuses the newest build of MAJOR that has these flags.
#
# The flags (one place, used by CI and developers alike):
#   --enable-tap-tests    PostgreSQL::Test::Cluster and friends (TAP suite)
#   --enable-cassert --enable-debug
#                         assertions and memory-context checks in the server:
#                         the test server catches what a production build
#                         lets slip
#   --without-icu --without-readline
#                         lean: the suites use the C locale and psql only
#                         non-interactively
#   --with-lz4            lz4 TOAST compression, as Debian's packages have
#                         (test/pgtap/bad_input.sql stores lz4-compressed payloads)
#   zlib (the default)    pg_dump's compressed formats
#   contrib_modules       the contrib modules the suites load (auto_explain,
#                         pg_stat_statements)
# pg_isolation_regress, pg_regress, pg_dump, pgbench and psql come with the
# core build.
#
# Environment:
#   OUTBOX_CACHE        cache directory (default /var/cache/outbox as root,
#                       else ~/.cache/outbox)
#   OUTBOX_PG_SUITE     Debian suite of the source package (default sid)
#   OUTBOX_PG_JOBS      parallel make jobs (default: the number of CPUs)
#   OUTBOX_PG_OFFLINE   if set, never read the Debian archive: reuse a build
#   OUTBOX_PG_FORCE     if set, rebuild even when a matching build exists
#
# Needs the packages of group pgbuild (bash scripts/packages.sh ensure pgbuild).
set -euo pipefail
# The build is root's, and the suites run it as the postgres user.
umask 022

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/debian-apt.sh
source "$here/debian-apt.sh"

major=${1:-18}
[[ $major =~ ^[0-9]+$ ]] || { echo "usage: $0 [MAJOR]" >&2; exit 2; }
jobs=${OUTBOX_PG_JOBS:-$(nproc 2>/dev/null || echo 2)}
suite=${OUTBOX_PG_SUITE:-sid}

configure_flags=(--enable-tap-tests --enable-cassert --enable-debug --with-lz4 --without-icu --without-readline)
# The contrib modules the suites load (066_stale_statistics: auto_explain;
# 098_destinations_secret_paths: auto_explain and pg_stat_statements).
contrib_modules=(auto_explain pg_stat_statements)
# Debian's patches that are not applied: they move files into Debian's
# per-version directories and sockets into /var/run/postgresql, which a
# private prefix must not do.
skip_patches=(50-per-version-dirs.patch 51-default-sockets-in-var.patch libpgport-pkglibdir)
# Bump when the build changes in a way the flags do not show.
build_revision=1

log() { printf 'build-postgres: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

cache=$(outbox_cache_dir)
flags_id="rev=$build_revision flags=${configure_flags[*]} contrib=${contrib_modules[*]} skip=${skip_patches[*]}"
stamp_name=.outbox-build

# stamp_ok PREFIX [DEBVERSION]: the build in PREFIX is complete, made with
# these flags (and of that Debian version).
stamp_ok() {
    local stamp=$1/$stamp_name
    [[ -f $stamp && -x $1/bin/pg_config ]] || return 1
    grep -qxF "flags: $flags_id" "$stamp" || return 1
    [[ -z ${2:-} ]] || grep -qxF "version: $2" "$stamp"
}

# newest_build: the newest complete build of $major with these flags.
newest_build() {
    local d best= bestv= v
    for d in "$cache"/pg-"$major".*; do
        [[ -d $d ]] && stamp_ok "$d" || continue
        v=$(sed -n 's/^version: //p' "$d/$stamp_name")
        if [[ -z $best ]] || dpkg --compare-versions "$v" gt "$bestv"; then
            best=$d bestv=$v
        fi
    done
    [[ -n $best ]] && echo "$best"
}

# link_and_prune PREFIX: $cache/pg-MAJOR -> PREFIX; drop other builds of MAJOR.
link_and_prune() {
    local keep=$1 d
    ln -sfn "$(basename "$keep")" "$cache/pg-$major.tmp"
    mv -T "$cache/pg-$major.tmp" "$cache/pg-$major"
    for d in "$cache"/pg-"$major".*; do
        [[ -d $d && ! -L $d && $d != "$keep" && -f $d/$stamp_name ]] || continue
        log "removing the older build $d"
        rm -rf -- "$d"
    done
}

finish() {
    link_and_prune "$1"
    log "PostgreSQL $("$1/bin/pg_config" --version | sed 's/^PostgreSQL //') in $1"
    echo "$1/bin/pg_config"
    exit 0
}

# One build at a time per cache (CI and a developer may race).
exec 9>"$cache/build-postgres-$major.lock"
flock 9

# ---------------------------------------------------------------- 1. which version

debversion=
if [[ -z ${OUTBOX_PG_OFFLINE:-} ]]; then
    if outbox_apt_update; then
        debversion=$(outbox_src_version "postgresql-$major" "$suite") || true
    fi
    [[ -n $debversion ]] || log "could not read the version of postgresql-$major in the Debian archive"
fi
if [[ -z $debversion ]]; then
    prev=$(newest_build) || die "no postgresql-$major source package can be read, and there is no earlier build in $cache to reuse"
    log "reusing $prev (offline)"
    finish "$prev"
fi

upstream=${debversion#*:}
upstream=${upstream%-*}          # 18.6-3 -> 18.6
prefix=$cache/pg-$upstream

# ---------------------------------------------------------------- 2. reuse or build

if [[ -z ${OUTBOX_PG_FORCE:-} ]] && stamp_ok "$prefix" "$debversion"; then
    log "reusing $prefix (postgresql-$major $debversion, same flags)"
    finish "$prefix"
fi

start=$SECONDS
work=$cache/build-$major
rm -rf -- "$work"
mkdir -p "$work/src"
log "building postgresql-$major $debversion into $prefix (jobs: $jobs)"

cd "$work/src"
outbox_apt source --download-only "postgresql-$major=$debversion" >"$work/download.log" 2>&1 ||
    { cat "$work/download.log" >&2; die "could not download the source package postgresql-$major $debversion"; }
dsc=$(ls ./*.dsc)
# The archive's signed index vouches for the files' checksums, which apt
# checked; dpkg-source checks them against the .dsc again.
dpkg-source --skip-patches -x "$dsc" tree >"$work/extract.log" 2>&1 ||
    { cat "$work/extract.log" >&2; die "dpkg-source -x failed"; }
cd tree
applied=()
while read -r patch _; do
    [[ -z $patch || $patch == \#* ]] && continue
    skip=
    for s in "${skip_patches[@]}"; do [[ $patch == "$s" ]] && skip=1; done
    [[ -n $skip ]] && continue
    patch -p1 --quiet --forward <"debian/patches/$patch" >>"$work/patch.log" 2>&1 ||
        { cat "$work/patch.log" >&2; die "Debian's patch $patch does not apply"; }
    applied+=("$patch")
done <debian/patches/series
log "applied Debian's patches: ${applied[*]}"

log "configure ${configure_flags[*]}"
./configure --prefix="$prefix" "${configure_flags[@]}" >"$work/configure.log" 2>&1 ||
    { tail -n 40 "$work/configure.log" >&2; die "configure failed (log: $work/configure.log)"; }
make -s -j"$jobs" >"$work/make.log" 2>&1 ||
    { tail -n 60 "$work/make.log" >&2; die "make failed (log: $work/make.log)"; }
stage=$work/stage
make -s install DESTDIR="$stage" >"$work/install.log" 2>&1 ||
    { tail -n 40 "$work/install.log" >&2; die "make install failed (log: $work/install.log)"; }
for m in "${contrib_modules[@]}"; do
    make -s -C "contrib/$m" -j"$jobs" install DESTDIR="$stage" >>"$work/install.log" 2>&1 ||
        { tail -n 40 "$work/install.log" >&2; die "contrib/$m failed (log: $work/install.log)"; }
done
log "PostgreSQL built in $(( SECONDS - start ))s"

# Move the staged installation into place; PostgreSQL finds its directories
# relative to its binaries, so the staged copy already works where it is.
rm -rf -- "$prefix"
mv -- "$stage$prefix" "$prefix"
pg_config=$prefix/bin/pg_config
pgxs_test=$("$pg_config" --pkglibdir)/pgxs/src/test
for f in "$prefix"/bin/{postgres,initdb,psql,pg_dump,pgbench} "$pgxs_test"/isolation/pg_isolation_regress \
         "$pgxs_test"/regress/pg_regress "$pgxs_test"/perl/PostgreSQL/Test/Cluster.pm; do
    [[ -e $f ]] || die "the build has no $f"
done
for m in "${contrib_modules[@]}"; do
    [[ -e $("$pg_config" --pkglibdir)/$m.so ]] || die "the build has no contrib module $m"
done

# ---------------------------------------------------------------- 3. pgTAP

pgtap_from=
extdir=$("$pg_config" --sharedir)/extension
mkdir -p "$work/pgtap"
cd "$work/pgtap"
# pgTAP is SQL and PL/pgSQL only: Debian's package of it for this major
# (architecture "all") holds the files as they go into the extension
# directory.
if outbox_apt download "postgresql-$major-pgtap/$suite" >"$work/pgtap.log" 2>&1 &&
    dpkg -x ./postgresql-"$major"-pgtap_*.deb unpacked &&
    compgen -G "unpacked/usr/share/postgresql/$major/extension/pgtap*" >/dev/null; then
    cp -- unpacked/usr/share/postgresql/"$major"/extension/pgtap* "$extdir/"
    pgtap_from=$(basename ./postgresql-"$major"-pgtap_*.deb)
# Else its source package, built with PGXS.
elif outbox_apt source --download-only "pgtap/$suite" >>"$work/pgtap.log" 2>&1 &&
    dpkg-source -x ./pgtap_*.dsc tree >>"$work/pgtap.log" 2>&1 &&
    make -s -C tree PG_CONFIG="$pg_config" >>"$work/pgtap.log" 2>&1 &&
    make -s -C tree PG_CONFIG="$pg_config" install >>"$work/pgtap.log" 2>&1; then
    pgtap_from="source package $(basename ./pgtap_*.dsc)"
else
    log "neither postgresql-$major-pgtap nor pgtap's source package could be had (log: $work/pgtap.log)"
fi
if [[ -z $pgtap_from ]]; then
    sys_ext=/usr/share/postgresql/15/extension
    compgen -G "$sys_ext/pgtap*" >/dev/null ||
        die "no pgTAP: neither its source package nor postgresql-15-pgtap's files"
    cp -- "$sys_ext"/pgtap* "$extdir/"
    pgtap_from="the SQL files of postgresql-15-pgtap"
fi
[[ -f $extdir/pgtap.control ]] || die "pgTAP did not install"
log "pgTAP from $pgtap_from"

# ---------------------------------------------------------------- 4. done

cat >"$prefix/$stamp_name" <<EOF
# made by outbox scripts/build-postgres.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ) in $(( SECONDS - start ))s
version: $debversion
flags: $flags_id
patches: ${applied[*]}
pgtap: $pgtap_from
EOF
rm -rf -- "$work"
log "done in $(( SECONDS - start ))s"
finish "$prefix"
