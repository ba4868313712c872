#!/bin/sh
# install.sh - install (or uninstall) Coreiix: binaries, systemd units, generator, config.
#
# Usage: systemd/install.sh [options]
#   --prefix P         installation prefix (default /usr/local)
#   --destdir D        staging root prepended to every path (default: none)
#   --bin-source DIR   where the built binaries are (default: <repo>/target/release)
#   --no-binaries      do not install bin/coreiix and bin/coreiix-plan (already there,
#                      e.g. installed by cargo in a package build)
#   --env-example F    example configuration to install (default: <repo>/.env.example)
#   --no-config        do not create /etc/coreiix/coreiix.env (e.g. package builds)
#   --uninstall        remove what an install with the same options put in place;
#                      /etc/coreiix/coreiix.env is kept unless --purge is given
#   --purge            with --uninstall: also remove /etc/coreiix/coreiix.env
#   -h, --help         show this help
#
# Installs, below DESTDIR + PREFIX:
#   bin/coreiix, bin/coreiix-plan
#   lib/systemd/system/{coreiix.socket,coreiix@.service,coreiix.target}  (@bindir@ = PREFIX/bin)
#   lib/systemd/system-generators/coreiix-generator -> ../../../bin/coreiix-plan
#   share/coreiix/coreiix.env.example
# and DESTDIR/etc/coreiix/coreiix.env (a copy of the example) unless it already exists.
# systemd (v252 and later) looks for units in /usr/local/lib/systemd/system and for
# generators in /usr/local/lib/systemd/system-generators, so the default prefix just works.
set -eu

prog=${0##*/}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")

prefix=/usr/local
destdir=
bin_source=$repo/target/release
env_example=$repo/.env.example
binaries=1
config=1
uninstall=0
purge=0

say() { printf '%s\n' "$*"; }
die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}
usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit "${1:-0}"
}
need_arg() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then die "option $1 needs a value"; fi
}

while [ $# -gt 0 ]; do
    case $1 in
    --prefix) need_arg "$@"; prefix=$2; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --destdir) need_arg "$@"; destdir=$2; shift 2 ;;
    --destdir=*) destdir=${1#*=}; shift ;;
    --bin-source) need_arg "$@"; bin_source=$2; shift 2 ;;
    --bin-source=*) bin_source=${1#*=}; shift ;;
    --env-example) need_arg "$@"; env_example=$2; shift 2 ;;
    --env-example=*) env_example=${1#*=}; shift ;;
    --no-binaries) binaries=0; shift ;;
    --no-config) config=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    -h | --help) usage 0 ;;
    *) printf '%s: unknown argument: %s\n\n' "$prog" "$1" >&2; usage 2 >&2 ;;
    esac
done

# The prefix ends up in ExecStart= and in a sed expression: keep it to plain path characters.
case $prefix in
/*) ;;
*) die "--prefix must be an absolute path (got '$prefix')" ;;
esac
case $prefix in
*[!A-Za-z0-9._/+-]*) die "--prefix may only contain letters, digits and . _ / + - (got '$prefix')" ;;
esac
[ "$purge" = 0 ] || [ "$uninstall" = 1 ] || die "--purge only makes sense with --uninstall"
while [ "$prefix" != / ] && [ "${prefix%/}" != "$prefix" ]; do prefix=${prefix%/}; done
while [ -n "$destdir" ] && [ "${destdir%/}" != "$destdir" ]; do destdir=${destdir%/}; done
[ "$prefix" != / ] || prefix=

bindir=$prefix/bin
unitdir=$prefix/lib/systemd/system
gendir=$prefix/lib/systemd/system-generators
sharedir=$prefix/share/coreiix
confdir=/etc/coreiix
units="coreiix.socket coreiix@.service coreiix.target"
bins="coreiix coreiix-plan"

# Acting on the live system (no DESTDIR) with systemd running as init?
live_systemd() {
    [ -z "$destdir" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

# install_file SRC DEST MODE: copy next to DEST, then rename over it, so a running
# binary or a unit being read is never seen half-written.
install_file() {
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2.coreiix-tmp"
    chmod "$3" "$2.coreiix-tmp"
    mv -f "$2.coreiix-tmp" "$2"
    say "installed $2"
}

remove() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -f "$1"
        say "removed $1"
    fi
}

remove_dir_if_empty() {
    if [ -d "$1" ] && rmdir "$1" 2>/dev/null; then say "removed $1/"; fi
}

do_install() {
    # Check everything before changing anything.
    if [ "$binaries" = 1 ]; then
        for b in $bins; do
            [ -x "$bin_source/$b" ] ||
                die "$bin_source/$b not found; build first (cargo build --release), pass --bin-source DIR, or --no-binaries"
        done
    fi
    for u in $units; do
        [ -f "$here/$u" ] || die "unit $here/$u is missing"
    done
    [ -f "$env_example" ] || die "example configuration $env_example not found (--env-example FILE)"

    if [ "$binaries" = 1 ]; then
        for b in $bins; do
            install_file "$bin_source/$b" "$destdir$bindir/$b" 0755
        done
    fi

    mkdir -p "$destdir$unitdir"
    for u in $units; do
        tmp=$destdir$unitdir/$u.coreiix-tmp
        sed "s|@bindir@|$bindir|g" "$here/$u" >"$tmp"
        if grep -q '@bindir@' "$tmp"; then
            rm -f "$tmp"
            die "could not substitute @bindir@ in $u"
        fi
        chmod 0644 "$tmp"
        mv -f "$tmp" "$destdir$unitdir/$u"
        say "installed $destdir$unitdir/$u"
    done

    # The generator is coreiix-plan under another name (it dispatches on argv[0]). A
    # relative link keeps working under DESTDIR and in relocated trees (e.g. Nix outputs).
    mkdir -p "$destdir$gendir"
    ln -sfn ../../../bin/coreiix-plan "$destdir$gendir/coreiix-generator"
    say "installed $destdir$gendir/coreiix-generator -> ../../../bin/coreiix-plan"

    install_file "$env_example" "$destdir$sharedir/coreiix.env.example" 0644

    if [ "$config" = 1 ]; then
        if [ -e "$destdir$confdir/coreiix.env" ]; then
            say "kept existing $destdir$confdir/coreiix.env"
        else
            mkdir -p "$destdir$confdir"
            chmod 0755 "$destdir$confdir"
            # World-readable on purpose: the workers run as a transient (DynamicUser) user.
            # Keep secrets out of this file.
            install_file "$env_example" "$destdir$confdir/coreiix.env" 0644
        fi
    fi

    say ""
    if [ -n "$destdir" ]; then
        say "Staged below $destdir. On the target system, run:"
    else
        say "Next steps:"
    fi
    say "  edit $confdir/coreiix.env        (DEPLOYMENT_PROFILE=dev|small|enterprise, WORKERS=N)"
    say "  $bindir/coreiix-plan check"
    say "  systemctl daemon-reload"
    say "  systemctl enable --now coreiix.socket coreiix.target"
}

do_uninstall() {
    # Stop and disable first: no worker keeps running from a deleted unit file, and no
    # dangling enablement links stay behind in /etc/systemd/system.
    if live_systemd && [ -e "$unitdir/coreiix.socket" ]; then
        say "stopping and disabling coreiix.socket, coreiix.target and coreiix@*.service"
        systemctl disable --now coreiix.socket coreiix.target || true
        systemctl stop 'coreiix@*.service' || true
        systemctl reset-failed 'coreiix@*.service' coreiix.socket coreiix.target 2>/dev/null || true
    fi
    for u in $units; do
        remove "$destdir$unitdir/$u"
    done
    remove "$destdir$gendir/coreiix-generator"
    if [ "$binaries" = 1 ]; then
        for b in $bins; do
            remove "$destdir$bindir/$b"
        done
    fi
    remove "$destdir$sharedir/coreiix.env.example"
    remove_dir_if_empty "$destdir$sharedir"
    if [ "$purge" = 1 ]; then
        remove "$destdir$confdir/coreiix.env"
        remove_dir_if_empty "$destdir$confdir"
    elif [ -e "$destdir$confdir/coreiix.env" ]; then
        say "kept $destdir$confdir/coreiix.env (remove it with --uninstall --purge)"
    fi
    if live_systemd; then
        systemctl daemon-reload
        say "ran systemctl daemon-reload"
    fi
}

if [ "$uninstall" = 1 ]; then
    do_uninstall
else
    do_install
fi
