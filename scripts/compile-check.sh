#!/usr/bin/env bash
# scripts/compile-check.sh -- compile outbox, its broker plug-ins and the
# example publisher with -Werror against the headers of PostgreSQL versions
# that are not installed here: Debian's postgresql-server-dev-MAJOR and
# postgresql-client-MAJOR packages (headers, PGXS makefiles), downloaded from
# other Debian suites and unpacked with dpkg -x into the cache, never
# installed.  Compiles only: nothing is run against those versions.
#
#   bash scripts/compile-check.sh [MAJOR...]     (default: 17 18 19)
#
# Where each comes from (scripts/debian-apt.sh reads these suites through a
# private apt configuration): 17 from trixie, 18 from sid, 19 (previews)
# from experimental.  A version whose packages cannot be had is reported as
# skipped; the exit status is 1 when a compilation failed, 0 otherwise
# (OUTBOX_COMPILE_REQUIRE=1: also when one was skipped).
#
# The packages' pg_config is a binary for a newer C library than Debian 12's,
# so a small script stands in for it, answering with the unpacked
# directories.  The compiler flags are the ones the package was built with
# (its Makefile.global), without LLVM bitcode.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
srcdir=$(cd "$here/.." && pwd)
# shellcheck source=scripts/debian-apt.sh
source "$here/debian-apt.sh"

majors=("$@")
(( ${#majors[@]} )) || majors=(17 18 19)

suite_of() {
    case $1 in
        17) echo trixie ;;
        18) echo sid ;;
        19) echo experimental ;;
        *) echo "${OUTBOX_COMPILE_SUITE:-sid}" ;;
    esac
}

log() { printf 'compile-check: %s\n' "$*" >&2; }

cache=$(outbox_cache_dir)
offline=
outbox_apt_update || offline=1

# deb_version PKG SUITE: the version apt-get download would fetch.
deb_version() {
    local f
    f=$(outbox_apt download --print-uris "$1/$2" 2>/dev/null | sed -n "s/^'[^']*' \\($1_[^ ]*\\.deb\\) .*/\\1/p" | head -n 1)
    [[ -n $f ]] || return 1
    f=${f#"$1"_}
    f=${f%_*.deb}
    echo "${f//%3a/:}"
}

# unpacked MAJOR: print the directory with MAJOR's headers unpacked,
# downloading them when the cache has not this version yet.
unpacked() {
    local major=$1 suite ver dir p tmp
    suite=$(suite_of "$major")
    if [[ -z $offline ]] && ver=$(deb_version "postgresql-server-dev-$major" "$suite"); then
        dir=$cache/headers/$major-${ver//[:~]/_}
        if [[ ! -f $dir/.complete ]]; then
            log "downloading postgresql-server-dev-$major and postgresql-client-$major $ver ($suite)"
            rm -rf -- "$dir"
            tmp=$(mktemp -d "$cache/headers-dl.XXXXXX")
            for p in postgresql-server-dev-"$major" postgresql-client-"$major"; do
                (cd "$tmp" && outbox_apt download "$p/$suite" >/dev/null 2>&1) ||
                    { rm -rf -- "$tmp"; log "could not download $p/$suite"; return 1; }
            done
            mkdir -p "$dir/root"
            for p in "$tmp"/*.deb; do dpkg -x "$p" "$dir/root"; done
            rm -rf -- "$tmp"
            echo "$ver" >"$dir/.complete"
            # older unpacked versions of this major are no longer needed
            for p in "$cache/headers/$major"-*; do
                [[ $p != "$dir" ]] && rm -rf -- "$p"
            done
        fi
    else
        # offline: whatever was unpacked before
        dir=$(ls -d "$cache/headers/$major"-* 2>/dev/null | tail -n 1) || true
        [[ -n $dir && -f $dir/.complete ]] || return 1
        log "offline: using $(cat "$dir/.complete") unpacked before"
    fi
    echo "$dir"
}

# make_pg_config DIR MAJOR: write DIR/pg_config, answering for the tree.
make_pg_config() {
    local dir=$1 major=$2 root=$1/root version
    version=$(sed -n 's/^#define PG_VERSION "\(.*\)"$/\1/p' "$root/usr/include/postgresql/$major/server/pg_config.h")
    cat >"$dir/pg_config" <<EOF
#!/bin/sh
# made by outbox scripts/compile-check.sh: pg_config of the unpacked $major
r='$root'
for a in "\$@"; do
    case \$a in
        --bindir) echo "\$r/usr/lib/postgresql/$major/bin" ;;
        --libdir) echo "\$r/usr/lib/x86_64-linux-gnu" ;;
        --pkglibdir) echo "\$r/usr/lib/postgresql/$major/lib" ;;
        --includedir|--pkgincludedir) echo "\$r/usr/include/postgresql" ;;
        --includedir-server) echo "\$r/usr/include/postgresql/$major/server" ;;
        --sharedir) echo "\$r/usr/share/postgresql/$major" ;;
        --sysconfdir) echo "\$r/etc/postgresql-common" ;;
        --docdir|--htmldir) echo "\$r/usr/share/doc/postgresql-doc-$major" ;;
        --mandir) echo "\$r/usr/share/postgresql/$major/man" ;;
        --localedir) echo "\$r/usr/share/locale" ;;
        --pgxs) echo "\$r/usr/lib/postgresql/$major/lib/pgxs/src/makefiles/pgxs.mk" ;;
        --version) echo "PostgreSQL $version" ;;
        *) echo "pg_config (outbox compile-check stand-in): \$a is not supported" >&2; exit 1 ;;
    esac
done
EOF
    chmod 0755 "$dir/pg_config"
}

# adapt_to_libc DIR MAJOR: the packages were configured against a newer C
# library, whose <string.h> has strlcpy and strlcat (glibc 2.38); Debian
# 12's has not, so PostgreSQL's port.h must declare them, as it does in a
# build for this C library.  Only the unpacked copy's pg_config.h changes.
adapt_to_libc() {
    local h=$1/root/usr/include/postgresql/$2/server/pg_config.h
    printf '#include <string.h>\nint main(void) { char b[2]; return (int) strlcpy(b, "x", 2); }\n' |
        cc -x c -Werror=implicit-function-declaration -o /dev/null - 2>/dev/null && return 0
    sed -i -e 's/^#define HAVE_DECL_STRLCPY 1$/#define HAVE_DECL_STRLCPY 0/' \
           -e 's/^#define HAVE_DECL_STRLCAT 1$/#define HAVE_DECL_STRLCAT 0/' \
           -e 's/^#define HAVE_STRLCPY 1$/\/* #undef HAVE_STRLCPY: outbox compile-check *\//' \
           -e 's/^#define HAVE_STRLCAT 1$/\/* #undef HAVE_STRLCAT: outbox compile-check *\//' "$h"
}

# adapt_to_compiler DIR MAJOR: the packages were built with a newer gcc;
# drop from the unpacked Makefile.global's CFLAGS the warning options this
# compiler does not know (gcc 12 has no -Wmissing-variable-declarations).
adapt_to_compiler() {
    local mk=$1/root/usr/lib/postgresql/$2/lib/pgxs/src/Makefile.global flag
    for flag in $(sed -n 's/^CFLAGS = //p' "$mk"); do
        [[ $flag == -W* ]] || continue
        cc -Wall -Werror "$flag" -x c -c -o /dev/null /dev/null 2>/dev/null && continue
        sed -i "/^CFLAGS = /s/ $flag\b//" "$mk"
        log "PostgreSQL $2: this compiler lacks $flag; compiling without it"
    done
}

# compile MAJOR DIR: build everything in a copy of the sources.
compile() {
    local major=$1 dir=$2 build inc rc=0
    build=$(mktemp -d "${TMPDIR:-/tmp}/outbox-compile-$major.XXXXXX")
    (cd "$srcdir" && tar cf - Makefile pg-build.mk outbox.control sql src test/modules) | (cd "$build" && tar xf -)
    inc=$build/staged-include/extension/outbox
    mkdir -p "$inc"
    cp -- "$srcdir/src/outbox_publisher.h" "$inc/"
    {
        make -k -C "$build" PG_CONFIG="$dir/pg_config" with_llvm=no COPT=-Werror all &&
        make -C "$build/test/modules/outbox_flaky" PG_CONFIG="$dir/pg_config" with_llvm=no \
            COPT=-Werror PG_CPPFLAGS="-I$build/staged-include"
    } >"$build/make.log" 2>&1 || rc=$?
    if (( rc != 0 )); then
        grep -E '(error|warning):' "$build/make.log" | head -n 40 >&2 || tail -n 40 "$build/make.log" >&2
        log "PostgreSQL $major: FAILED (full log: $build/make.log)"
        return 1
    fi
    log "PostgreSQL $major ($(cat "$dir/.complete")): compiled warning-free with -Werror: $(find "$build" -name "*.so" -printf "%f " | sort)"
    rm -rf -- "$build"
}

failed=0 skipped=0
for major in "${majors[@]}"; do
    if ! dir=$(unpacked "$major"); then
        log "PostgreSQL $major: SKIPPED (no postgresql-server-dev-$major in $(suite_of "$major") can be had)"
        skipped=$(( skipped + 1 ))
        continue
    fi
    make_pg_config "$dir" "$major"
    adapt_to_libc "$dir" "$major"
    adapt_to_compiler "$dir" "$major"
    compile "$major" "$dir" || failed=$(( failed + 1 ))
done
(( failed == 0 )) || exit 1
(( skipped == 0 || ${OUTBOX_COMPILE_REQUIRE:-0} == 0 )) || exit 1
exit 0
