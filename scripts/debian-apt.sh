# scripts/debian-apt.sh -- sourced by build-postgres.sh and compile-check.sh:
# a private apt configuration that reads other Debian suites (sid, trixie,
# experimental) without adding them to the machine's sources.
#
# The suites are only ever used to download: source packages (apt-get source
# --download-only) and single .debs that are unpacked with dpkg -x, never
# installed.  The machine's own sources, lists and packages are not touched.
# Everything lives under $OUTBOX_CACHE/apt (see outbox_cache_dir).
#
#   outbox_cache_dir            print (and create) the cache directory:
#                               $OUTBOX_CACHE, else /var/cache/outbox as root,
#                               else ${XDG_CACHE_HOME:-~/.cache}/outbox
#   outbox_apt_update           refresh the private lists when older than
#                               OUTBOX_APT_MAX_AGE seconds (default 6 hours)
#   outbox_apt ARGS...          apt-get with the private configuration
#   outbox_apt_cache ARGS...    apt-cache with the private configuration
#   outbox_src_version PKG [SUITE]  the version of source package PKG that
#                               apt-get source would fetch (from SUITE)

# The suites read, and what for: sid serves PostgreSQL 18 (source and
# packages), trixie PostgreSQL 17 (its packages; its source package is
# listed, but its files were not served when tried), experimental the
# PostgreSQL 19 previews.
outbox_apt_suites=(sid trixie experimental)

outbox_cache_dir() {
    local dir
    if [[ -n ${OUTBOX_CACHE:-} ]]; then
        dir=$OUTBOX_CACHE
    elif [[ $(id -u) -eq 0 ]]; then
        dir=/var/cache/outbox
    else
        dir=${XDG_CACHE_HOME:-$HOME/.cache}/outbox
    fi
    mkdir -p "$dir" && echo "$dir"
}

# _outbox_apt_dir: the private apt directory, set up on first use.
_outbox_apt_dir() {
    local dir suite keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    dir=$(outbox_cache_dir)/apt || return
    mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/etc"
    [[ -f $keyring ]] || { echo "debian-apt: $keyring is missing (apt-get install debian-archive-keyring)" >&2; return 1; }
    {
        echo "# made by outbox scripts/debian-apt.sh; only used with its -o options"
        for suite in "${outbox_apt_suites[@]}"; do
            echo "deb [signed-by=$keyring] ${OUTBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian} $suite main"
            echo "deb-src [signed-by=$keyring] ${OUTBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian} $suite main"
        done
    } >"$dir/etc/sources.list.new"
    if ! cmp -s "$dir/etc/sources.list.new" "$dir/etc/sources.list" 2>/dev/null; then
        mv "$dir/etc/sources.list.new" "$dir/etc/sources.list"
        rm -f "$dir/lists/updated"   # new sources: the lists are stale
    else
        rm -f "$dir/etc/sources.list.new"
    fi
    echo "$dir"
}

# _outbox_apt_opts DIR: the options that make apt use DIR only.  The
# architecture is the machine's; the dpkg status is the machine's (read only).
# Downloads run as the caller (root included: the private directories are
# not the _apt user's).
_outbox_apt_opts() {
    local dir=$1
    printf '%s\n' -o "Dir::Etc::sourcelist=$dir/etc/sources.list" -o "Dir::Etc::sourceparts=-" \
        -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache" \
        -o "APT::Sandbox::User=$(id -un)" \
        -o "Acquire::Retries=3"
}

outbox_apt() {
    local dir opts
    dir=$(_outbox_apt_dir) || return
    mapfile -t opts < <(_outbox_apt_opts "$dir")
    apt-get -q "${opts[@]}" "$@"
}

outbox_apt_cache() {
    local dir opts
    dir=$(_outbox_apt_dir) || return
    mapfile -t opts < <(_outbox_apt_opts "$dir")
    apt-cache "${opts[@]}" "$@"
}

outbox_apt_update() {
    local dir stamp now age max=${OUTBOX_APT_MAX_AGE:-21600}
    dir=$(_outbox_apt_dir) || return
    stamp=$dir/lists/updated
    now=$(date +%s)
    if [[ -f $stamp ]]; then
        age=$(( now - $(stat -c %Y "$stamp") ))
        (( age < max )) && return 0
    fi
    echo "debian-apt: reading the package lists of ${outbox_apt_suites[*]}" >&2
    outbox_apt update >/dev/null || { echo "debian-apt: apt-get update failed" >&2; return 1; }
    : >"$stamp"
}

outbox_src_version() {
    # What apt-get source would fetch from that suite; its .dsc is named
    # PKG_VERSION.dsc (without the epoch, which these packages do not have).
    local target=$1${2:+/$2} dsc
    dsc=$(outbox_apt source --print-uris "$target" 2>/dev/null |
        sed -n "s/^'[^']*' \($1_[^ ]*\.dsc\) .*/\1/p" | head -n 1)
    [[ -n $dsc ]] || return 1
    dsc=${dsc#"$1"_}
    echo "${dsc%.dsc}"
}
