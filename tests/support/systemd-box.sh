#!/usr/bin/env bash
# systemd-box.sh - boot a real systemd as PID 1 of its own namespaces ("systemd in a box")
# so integration tests can exercise the Coreiix units without touching the host's init.
#
#   systemd-box.sh start [DIR...]    boot a box; print its PID 1 (as seen from the host);
#                                    each DIR (e.g. a checkout under /tmp) is shown inside
#                                    at the same path
#   systemd-box.sh exec PID CMD...   run CMD inside the box (nsenter, clean environment)
#   systemd-box.sh stop PID          power the box off, then remove its temporary files
#
# How it works: `unshare` gives the box new PID, mount, UTS and cgroup namespaces. Inside,
# the root is an overlay of the host's / with a tmpfs upper layer, so the host's files
# (e.g. cargo build output) are visible and everything written inside is thrown away.
# /proc is the box's own, /sys comes read-only from the host; /dev, /run, /tmp and the
# cgroup2 tree are private, and the cgroup tree is rooted at a per-box cgroup, so several
# boxes can run at the same time and nothing the box does lands in the host's /dev or /run.
# The box shares the host's network: a socket bound inside is reachable on the host's
# loopback, and vice versa. Host /tmp is NOT visible inside (the box has its own /tmp).
#
# Requirements: root, systemd, util-linux, coreutils (Debian 12 base). There is no
# "skip" mode: if the box cannot be booted this script says why and exits non-zero.
#
# Environment: SYSTEMD_BOX_TIMEOUT  seconds to wait for boot and for power-off (default 60)
#              TMPDIR               where the per-box temporary directory is created
set -euo pipefail

readonly MARKER=.coreiix-box
readonly BOX_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
TIMEOUT=${SYSTEMD_BOX_TIMEOUT:-60}
[[ $TIMEOUT =~ ^[0-9]+$ ]] || { echo "systemd-box: error: SYSTEMD_BOX_TIMEOUT must be whole seconds" >&2; exit 1; }
SELF=$(readlink -f -- "${BASH_SOURCE[0]}")

say() { printf 'systemd-box: %s\n' "$*" >&2; }
die() { printf 'systemd-box: error: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '2,8p' "$SELF" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

find_systemd() {
    local p
    for p in /lib/systemd/systemd /usr/lib/systemd/systemd; do
        if [ -x "$p" ]; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    return 1
}

preflight() {
    [ "$(id -u)" = 0 ] ||
        die "must run as root (needs unshare, mount and pivot_root); not skipping"
    find_systemd >/dev/null ||
        die "systemd is not installed (no /lib/systemd/systemd); not skipping"
    local t
    for t in unshare nsenter mount umount pivot_root setsid timeout systemctl; do
        command -v "$t" >/dev/null 2>&1 || die "required tool '$t' not found in PATH"
    done
    [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || [ -d /sys/fs/cgroup/unified ] ||
        die "no cgroup2 hierarchy (/sys/fs/cgroup or /sys/fs/cgroup/unified) on this host"
}

# The host's cgroup2 mount point (pure cgroup2 hosts and "hybrid" hosts differ).
cgroup2_root() {
    if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
        printf '/sys/fs/cgroup\n'
    elif [ "$(stat -fc %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
        printf '/sys/fs/cgroup/unified\n'
    else
        return 1
    fi
}

# "alive" = exists and is not a zombie.
alive() {
    local state
    [ -r "/proc/$1/stat" ] || return 1
    state=$(sed 's/^.*) \(.\).*$/\1/' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

ppid_of() { sed -n 's/^PPid:[[:space:]]*//p' "/proc/$1/status" 2>/dev/null; }

# Prints the box directory of box PID 1 $1, or fails if $1 is not a box made by this script:
# its parent must be the `unshare` we started, whose last two arguments are `__inner DIR`.
box_dir_of() {
    local pid=$1 parent
    local -a args
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    parent=$(ppid_of "$pid") || return 1
    [ -n "$parent" ] || return 1
    mapfile -d '' -t args 2>/dev/null <"/proc/$parent/cmdline" || return 1
    [ "${#args[@]}" -ge 3 ] || return 1
    [ "${args[0]##*/}" = unshare ] || return 1
    [ "${args[-2]}" = __inner ] || return 1
    [ -f "${args[-1]}/$MARKER" ] || return 1
    printf '%s\n' "${args[-1]}"
}

# Sets BOX to the command prefix that runs a command inside box $1. A clean environment:
# nothing from the caller (LISTEN_FDS, NOTIFY_SOCKET, ...) leaks into the box.
box_cmd() {
    BOX=(nsenter -t "$1" -m -p -u --
        env -i PATH="$BOX_PATH" HOME=/root LANG=C.UTF-8 SYSTEMD_PAGER= SYSTEMD_COLORS=0)
}

# Removes the box's cgroup subtree (bottom-up; cgroups can only be rmdir'ed) and its directory.
cleanup_dir() {
    local dir=$1 cg
    if [ -f "$dir/cgroup" ]; then
        cg=$(cat "$dir/cgroup")
        case $cg in
        /sys/fs/cgroup/*coreiix-box.*)
            if [ -d "$cg" ]; then
                find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true
                [ ! -d "$cg" ] || say "warning: could not remove cgroup $cg"
            fi
            ;;
        esac
    fi
    rm -rf -- "$dir"
}

# SIGKILLs the launcher/unshare process $2 and every process in the box's cgroup (all of
# the box's processes, and only those, are in it), until nothing is left (bounded).
kill_box() {
    local dir=$1 upid=$2 cg="" deadline=$((SECONDS + 10)) procs p
    [ -f "$dir/cgroup" ] && cg=$(cat "$dir/cgroup")
    while :; do
        if alive "$upid"; then kill -KILL "$upid" 2>/dev/null || true; fi
        procs=""
        if [ -n "$cg" ] && [ -d "$cg" ]; then
            if [ -e "$cg/cgroup.kill" ]; then
                echo 1 >"$cg/cgroup.kill" 2>/dev/null || true
            fi
            procs=$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null || true)
            for p in $procs; do kill -KILL "$p" 2>/dev/null || true; done
        fi
        if [ -z "$procs" ] && ! alive "$upid"; then return 0; fi
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

# Waits until neither the box PID 1 ($1, may be empty) nor its unshare parent ($2) is alive.
wait_gone() {
    local pid=$1 upid=$2 deadline=$((SECONDS + $3))
    while { [ -n "$pid" ] && alive "$pid"; } || alive "$upid"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.1
    done
}

dump_diagnostics() {
    local pid=$1 log=$2
    {
        echo "----- box log (last 60 lines of $log) -----"
        tail -n 60 "$log" 2>/dev/null || true
        if [ -n "$pid" ] && alive "$pid"; then
            box_cmd "$pid"
            echo "----- systemctl --failed; systemctl list-jobs -----"
            timeout 10 "${BOX[@]}" systemctl --no-pager --failed 2>&1 || true
            timeout 10 "${BOX[@]}" systemctl --no-pager list-jobs 2>&1 || true
            echo "----- journal (last 60 lines) -----"
            timeout 10 "${BOX[@]}" journalctl --no-pager -b -n 60 2>&1 || true
        fi
        echo "-----"
    } >&2
}

# Globals of cmd_start, read by its EXIT trap.
S_DIR="" S_UPID="" S_PID="" S_OK=0 S_WHY="unexpected error"

start_exit() {
    [ "$S_OK" = 1 ] && return 0
    say "box failed to start: $S_WHY"
    [ -z "$S_DIR" ] || dump_diagnostics "$S_PID" "$S_DIR/box.log"
    if [ -n "$S_UPID" ]; then
        kill_box "$S_DIR" "$S_UPID" || say "warning: some processes of the box did not exit"
    fi
    [ -z "$S_DIR" ] || cleanup_dir "$S_DIR"
}

fail() {
    S_WHY=$*
    exit 1
}

cmd_start() {
    preflight
    local log cgroot own cg deadline state kids
    trap start_exit EXIT
    S_DIR=$(mktemp -d "${TMPDIR:-/tmp}/coreiix-box.XXXXXX")
    log=$S_DIR/box.log
    : >"$S_DIR/$MARKER"
    : >"$log"
    # Host directories to show inside the box at the same path: the box has its own /tmp and
    # /run, so a checkout or build output there would otherwise be invisible.
    local d
    : >"$S_DIR/binds"
    for d in "$@"; do
        [ -d "$d" ] || fail "not a directory: $d"
        readlink -f -- "$d" >>"$S_DIR/binds"
    done

    # A cgroup for the whole box, below our own: the box's cgroup namespace is rooted there,
    # and it lets us find (and if need be kill) every process of the box.
    cgroot=$(cgroup2_root) || fail "no cgroup2 hierarchy"
    own=$(sed -n 's/^0:://p' /proc/self/cgroup)
    cg=${cgroot}${own%/}/${S_DIR##*/}
    mkdir "$cg" || fail "cannot create cgroup $cg"
    printf '%s\n' "$cg" >"$S_DIR/cgroup"

    # setsid: the box must not share the caller's session or get its terminal's signals.
    # In a non-interactive shell the background job is not a group leader, so setsid execs
    # in place and $! is the PID of the launcher, which then execs unshare.
    setsid bash "$SELF" __launch "$S_DIR" </dev/null >>"$log" 2>&1 &
    S_UPID=$!
    disown "$S_UPID" 2>/dev/null || true

    # 1. Find the box's PID 1 (the child of unshare) and wait until it has become systemd.
    deadline=$((SECONDS + TIMEOUT))
    while :; do
        alive "$S_UPID" || fail "unshare exited early"
        # Re-read every time: before it execs unshare the launcher has short-lived children.
        kids=$(cat "/proc/$S_UPID/task/$S_UPID/children" 2>/dev/null || true)
        S_PID=${kids%% *}
        if [ -n "$S_PID" ] && [ "$(cat "/proc/$S_PID/comm" 2>/dev/null)" = systemd ] &&
            [ "$(ppid_of "$S_PID")" = "$S_UPID" ]; then
            break
        fi
        [ "$SECONDS" -lt "$deadline" ] || fail "PID 1 did not exec systemd within ${TIMEOUT}s"
        sleep 0.05
    done

    # 2. Wait for the boot to finish. Until PID 1 listens on its private socket systemctl
    #    fails; retry. "degraded" (some unit failed) still counts as booted.
    while :; do
        alive "$S_PID" || fail "systemd (PID $S_PID) exited during boot"
        box_cmd "$S_PID"
        state=$(timeout 10 "${BOX[@]}" systemctl is-system-running --wait 2>/dev/null || true)
        case $state in
        running | degraded) break ;;
        esac
        [ "$SECONDS" -lt "$deadline" ] || fail "not booted within ${TIMEOUT}s (state: '${state:-unknown}')"
        sleep 0.1
    done

    S_OK=1
    trap - EXIT
    say "box up: PID 1 = $S_PID (host PID), state $state, files in $S_DIR"
    printf '%s\n' "$S_PID"
}

cmd_exec() {
    [ $# -ge 2 ] || usage
    local pid=$1
    shift
    [ "$(id -u)" = 0 ] || die "must run as root"
    box_dir_of "$pid" >/dev/null || die "PID '$pid' is not a running box started by $0"
    box_cmd "$pid"
    exec "${BOX[@]}" "$@"
}

cmd_stop() {
    [ $# -eq 1 ] || usage
    local pid=$1 dir upid
    [ "$(id -u)" = 0 ] || die "must run as root"
    dir=$(box_dir_of "$pid") || die "PID '$pid' is not a running box started by $0"
    upid=$(ppid_of "$pid")
    # SIGRTMIN+4 asks systemd to power off: units are stopped in order, then PID 1 exits,
    # the PID namespace dies, and with it every mount made inside the box.
    kill -s RTMIN+4 "$pid"
    if ! wait_gone "$pid" "$upid" "$TIMEOUT"; then
        say "box $pid did not power off within ${TIMEOUT}s; killing it"
        tail -n 30 "$dir/box.log" >&2 || true
        kill_box "$dir" "$upid" || die "box $pid survived SIGKILL; left $dir in place"
    fi
    cleanup_dir "$dir"
    say "box $pid stopped"
}

# Runs as the background job: join the box's cgroup, then become unshare (same PID).
cmd_launch() {
    local dir=$1
    echo $$ >"$(cat "$dir/cgroup")/cgroup.procs"
    exec unshare --pid --fork --mount --mount-proc --uts --cgroup --propagation private \
        -- bash "$SELF" __inner "$dir"
}

# Runs as PID 1 of the new namespaces: build the root file system, then exec systemd.
cmd_inner() {
    local dir=$1 R sd u m
    R=$dir/root
    sd=$(find_systemd)
    mount --make-rprivate /
    mkdir -p "$dir/rw" "$R"
    mount -t tmpfs -o mode=0755 coreiix-box "$dir/rw"
    mkdir -p "$dir/rw/upper" "$dir/rw/work"
    mount -t overlay coreiix-box \
        -o "lowerdir=/,upperdir=$dir/rw/upper,workdir=$dir/rw/work" "$R"
    # /proc is the box's own (unshare --mount-proc); kernel tunables stay read-only.
    mount --rbind /proc "$R/proc"
    mount --bind "$R/proc/sys" "$R/proc/sys"
    mount -o remount,bind,ro "$R/proc/sys"
    # /sys read-only, with a cgroup2 tree rooted at the box's own cgroup (see __launch).
    mount --rbind /sys "$R/sys"
    umount -R "$R/sys/fs/cgroup" 2>/dev/null || true
    mount -o remount,bind,ro "$R/sys"
    mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
    # A private /dev: systemd creates files there (/dev/log, mount points) that must not
    # end up in the host's /dev. "console" is a null device, so PID 1 never writes to the
    # host console (read the box's journal instead).
    mount -t tmpfs -o mode=0755,nosuid,size=1m coreiix-box-dev "$R/dev"
    mknod -m 666 "$R/dev/null" c 1 3
    mknod -m 666 "$R/dev/zero" c 1 5
    mknod -m 666 "$R/dev/full" c 1 7
    mknod -m 666 "$R/dev/random" c 1 8
    mknod -m 666 "$R/dev/urandom" c 1 9
    mknod -m 666 "$R/dev/tty" c 5 0
    mknod -m 600 "$R/dev/console" c 1 3
    mkdir -m 0755 "$R/dev/pts"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$R/dev/pts"
    ln -s pts/ptmx "$R/dev/ptmx"
    mkdir -m 1777 "$R/dev/shm"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/dev/shm"
    ln -s /proc/self/fd "$R/dev/fd"
    ln -s /proc/self/fd/0 "$R/dev/stdin"
    ln -s /proc/self/fd/1 "$R/dev/stdout"
    ln -s /proc/self/fd/2 "$R/dev/stderr"
    mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs "$R/run"
    mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$R/tmp"
    local b
    while IFS= read -r b; do
        mkdir -p "$R$b"
        mount --bind "$b" "$R$b"
        # Read-only: nothing done inside the box may reach the host.
        mount -o remount,bind,ro "$R$b"
    done <"$dir/binds"

    u=$R/etc/systemd/system
    mkdir -p "$u"
    # The boot target: nothing but the journal (so tests can read their services' logs).
    cat >"$u/idle.target" <<'EOF'
[Unit]
Description=Idle target of a systemd box
Wants=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service
After=systemd-journald.socket systemd-journald-dev-log.socket systemd-journald.service
EOF
    # No hardware, no consoles, no kernel tuning: the host owns those.
    for m in systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
        systemd-modules-load.service systemd-sysctl.service getty.target \
        serial-getty@.service console-getty.service; do
        ln -sfn /dev/null "$u/$m"
    done

    mkdir -p "$R/.box-oldroot"
    cd "$R"
    pivot_root . .box-oldroot
    cd /
    umount -l /.box-oldroot
    rmdir /.box-oldroot
    exec env -i PATH="$BOX_PATH" container=coreiix-box "$sd" --system --unit=idle.target
}

main() {
    [ $# -ge 1 ] || usage
    local sub=$1
    shift
    case $sub in
    start) cmd_start "$@" ;;
    exec) cmd_exec "$@" ;;
    stop) cmd_stop "$@" ;;
    __launch) cmd_launch "$@" ;;
    __inner) cmd_inner "$@" ;;
    -h | --help | help) usage ;;
    *) usage ;;
    esac
}

main "$@"
