#!/bin/sh
# repx's helper on an SSH target: starts job processes detached and reports on them.
# POSIX sh and coreutils only (no repx, no Python remotely). Deployed content-addressed under
# <remote base>/bin/ by the SSH target; repx calls it as `sh HELPER start|status|stop ...`.
#
# A process's files are `<guard>.pid` ("TOKEN PID STARTTIME") and `<guard>.exit` (its status),
# written by renaming, so a reader never sees half a record. Every start has a token; the process
# claims the guard for it under `flock` before it runs anything (see child), and `resolve` answers
# for a token whose start repx did not see the end of. Needs sh, coreutils and util-linux (setsid, flock).

starttime() {  # field 22 of /proc/PID/stat (after the command name, which may hold spaces)
    s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    s=${s##*) }
    # shellcheck disable=SC2086
    set -- $s
    echo "${20}"
}

put() {  # write a file by renaming, so that it is whole or absent
    printf '%s\n' "$2" > "$1.$$.tmp" && mv -f "$1.$$.tmp" "$1"
}

receive() {  # files from stdin: lines "PATH" and "BASE64", until a line "."
    while IFS= read -r path; do
        [ "$path" = "." ] && return 0
        IFS= read -r data || return 1
        mkdir -p "$(dirname "$path")" || return 1
        printf '%s' "$data" | base64 -d > "$path.$$.tmp" && mv -f "$path.$$.tmp" "$path" || return 1
    done
    return 1
}

owner() {  # GUARD TOKEN: the handle ("PID STARTTIME") of the process started for TOKEN, if any
    [ -f "$1.pid" ] || return 1
    read -r held pid started < "$1.pid" || return 1
    [ "$held" = "$2" ] || return 1
    echo "$pid $started"
}

claim_lock() {  # fd 9: the guard's claim lock (flock releases it when its holder dies)
    mkdir -p "$(dirname "$1")" && exec 9>> "$1.claim-lock" && flock 9
}

start() {  # TOKEN GUARD CWD REPX LIMIT PATH_PREFIX ARGV...
    token=$1 guard=$2 cwd=$3 repx=$4 limit=$5 prefix=$6
    shift 6
    trap '' HUP  # a dropped connection must not stop a start half-way
    if owner "$guard" "$token"; then  # started already: an earlier attempt's answer was lost
        cat > /dev/null
        return 0
    fi
    receive || { echo "repx: could not write the job's input files under $(dirname "$repx")" >&2; exit 3; }
    mkdir -p "$repx" "$(dirname "$guard")" || exit 3
    # A block held for the status, so that it can be written even after the job filled the disk;
    # named by this start, so that a twin start of the same token cannot take it.
    reserved="$guard.exit.$token.$$"
    echo - > "$reserved" || exit 3
    [ -n "$prefix" ] && PATH="$prefix:$PATH" && export PATH
    helper=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
    setsid nohup sh "$helper" child "$token" "$guard" "$cwd" "$repx" "$limit" "$reserved" "$@" \
        < /dev/null > /dev/null 2>&1 &
    # The answer is the handle of whichever process claimed the guard for this token: this start's
    # child, or a twin's (a start sent again after a lost answer); nothing if the token was revoked.
    tries=0
    while [ "$tries" -lt 1200 ]; do
        owner "$guard" "$token" && return 0
        [ -f "$reserved" ] || break  # the child gave up its claim
        sleep 0.05
        tries=$((tries + 1))
    done
    owner "$guard" "$token" && return 0
    rm -f "$reserved"
    echo "repx: the start of $repx was withdrawn (a later repx found it not started, and started it itself)" >&2
    exit 4
}

child() {  # TOKEN GUARD CWD REPX LIMIT RESERVED ARGV...: the detached process itself
    token=$1 guard=$2 cwd=$3 repx=$4 limit=$5 reserved=$6
    shift 6
    # The claim: under the guard's lock, the pid file names this process, unless the token was
    # revoked (a restarted repx asked for it first and found nothing) or a twin got there first.
    # Only a claimant runs the job, so no moment repx dies in can make it run twice.
    claim_lock "$guard" || exit 3
    if [ -f "$guard.revoked-$token" ] || owner "$guard" "$token" > /dev/null; then
        rm -f "$reserved"
        exit 0
    fi
    rm -f "$guard.exit"  # a new attempt: no outcome yet
    put "$guard.pid" "$token $$ $(starttime $$)" || { rm -f "$reserved"; exit 3; }
    exec 9>&-
    rm -f "$repx/SUCCESS" "$repx/FAIL"
    rm -rf "$cwd"
    mkdir -p "$cwd" && cd "$cwd" && limited "$limit" "$@" > "$repx/stdout.log" 2> "$repx/stderr.log"
    echo "$?" > "$reserved" && mv -f "$reserved" "$guard.exit"
}

limited() {  # LIMIT ARGV...: the job, under `timeout` when it has a time limit
    limit=$1
    shift
    if [ "$limit" -gt 0 ]; then
        timeout -k 10 "$limit" "$@"
    else
        "$@"
    fi
}

resolve() {  # TOKEN GUARD: the handle of the process started for TOKEN; if there is none, the token
    # is revoked, so that a start still on its way can never run the job after this answer.
    claim_lock "$2" || exit 3
    owner "$2" "$1" || : > "$2.revoked-$1"
}

avail() {  # free bytes on the filesystem of a path
    df -P -k "$1" 2>/dev/null | tail -n 1 | { read -r _ _ _ free _; echo "$((free * 1024))"; }
}

send() {  # a file back to repx: "F PATH" and its content in base64 (the last 16 MiB)
    [ -f "$1" ] || return 0
    echo "F $1"
    tail -c 16777216 "$1" | base64 -w 0
    echo
}

mark() {  # REPX MARKER COMPLETIONS LINE: a marker repx wrote in its mirror, and a job's completion line
    mkdir -p "$1" && rm -f "$1/SUCCESS" "$1/FAIL" && : > "$1/$2" || return 1
    [ -z "$4" ] || printf '%s\n' "$4" >> "$3"
}

apply_layer() {  # LAYER DEST: one image layer extracted, honouring OCI whiteouts (.wh.NAME, .wh..wh..opq)
    root=$(cd "$2" && pwd -P) || return 1
    tar -tf "$1" | while IFS= read -r name; do
        name=${name%/}
        dir=$(dirname "$name") file=$(basename "$name")
        # Only inside the root filesystem: a symlinked directory of the image may point anywhere.
        case "$(cd "$2/$dir" 2>/dev/null && pwd -P)" in "$root"|"$root"/*) ;; *) continue ;; esac
        case "$file" in
            .wh..wh..opq) [ -d "$2/$dir" ] && find "$2/$dir" -mindepth 1 -maxdepth 1 -exec rm -rf {} + ;;
            .wh.*) rm -rf "${2:?}/$dir/${file#.wh.}" ;;
        esac
    done
    tar -xf "$1" -C "$2" --no-same-owner --exclude='.wh.*'
}

image() {  # ROOTFS IMAGE BASE LAYER... -- ARGV...: the image's root filesystem extracted once
    # (by the first job's process; the others wait on its lock), then ARGV (bwrap) run.
    rootfs=$1 image=$2 base=$3
    shift 3
    top=$(dirname "$rootfs")
    mkdir -p "$top" && exec 8>> "$top/lock" && flock 8 || { echo "repx: cannot lock $top/lock" >&2; exit 3; }
    if [ ! -e "$top/complete" ]; then
        rm -rf "$top/rootfs.partial"
        mkdir -p "$top/rootfs.partial" || exit 3
        while [ "$#" -gt 0 ] && [ "$1" != -- ]; do
            apply_layer "$image/$1" "$top/rootfs.partial" \
                || { echo "repx: image layer $image/$1 could not be extracted into $top" >&2; exit 3; }
            shift
        done
        rm -rf "$rootfs" && mv "$top/rootfs.partial" "$rootfs" && : > "$top/complete" || exit 3
    else
        while [ "$#" -gt 0 ] && [ "$1" != -- ]; do shift; done
    fi
    shift
    # Mount points for bwrap's binds: the rootfs itself is mounted read-only.
    mkdir -p "$rootfs/tmp" "$rootfs/dev" "$rootfs/proc" "$rootfs/${base#/}" || exit 3
    exec 8>&-
    exec "$@"
}

reconcile() {  # COMPLETIONS; stdin: "REPX<tab>MARKER" per marker in repx's mirror, a line ".", then
    # the mirror's completion lines. Fills in what a repx that stopped before sending them left out:
    # a marker where the remote has none (for a process that ran there: its out/ exists), and the
    # completion lines the remote lacks (as a multiset, in the mirror's order: a line may repeat).
    tab=$(printf '\t')
    while IFS=$tab read -r repx marker; do
        [ "$repx" = . ] && break
        [ -d "${repx%/repx}/out" ] || continue
        [ -e "$repx/SUCCESS" ] || [ -e "$repx/FAIL" ] || : > "$repx/$marker" \
            || echo "repx: could not write the marker $repx/$marker" >&2
    done
    mkdir -p "$(dirname "$1")" && touch "$1" || exit 3
    awk -v held="$1" 'BEGIN { while ((getline line < held) > 0) count[line]++ }
        count[$0] > 0 { count[$0]--; next } { print }' > "$1.missing.$$" \
        && cat "$1.missing.$$" >> "$1"
    status=$?
    rm -f "$1.missing.$$"
    return "$status"
}

status() {  # stdin: first a line "M<tab>REPX<tab>MARKER<tab>COMPLETIONS<tab>LINE" per marker to write,
    # then a line "GUARD<tab>PID<tab>STARTTIME<tab>REPX<tab>OUT" per process (any number: a command
    # line would be bounded). Prints a line per process, and the files of ended ones.
    i=0
    tab=$(printf '\t')
    while IFS=$tab read -r guard pid started repx out; do
        if [ "$guard" = M ]; then  # the fields are those of a marker line
            # Not fatal: the processes' status must still come back (the mirror holds the marker).
            mark "$pid" "$started" "$repx" "$out" || echo "repx: could not write the marker $pid/$started" >&2
            continue
        fi
        if [ ! -f "$guard.exit" ] && [ "$started" != 0 ] && [ "$(starttime "$pid")" = "$started" ]; then
            echo "P $i running"
        elif [ -f "$guard.exit" ]; then
            echo "P $i exit $(cat "$guard.exit") $(avail "$repx")"
            send "$repx/stdout.log"
            send "$repx/stderr.log"
            send "$out/work_items.json"
        else
            echo "P $i gone"
        fi
        i=$((i + 1))
    done
    echo "E"
}

stop() {  # PID STARTTIME...: TERM to each process's group, if it is still that process
    while [ "$#" -ge 2 ]; do
        [ "$(starttime "$1")" = "$2" ] && kill -TERM "-$1" 2>/dev/null
        shift 2
    done
    return 0
}

command=$1
shift
case "$command" in
    start|child|resolve|reconcile|image|status|stop) "$command" "$@" ;;
    *) echo "repx helper: unknown command $command" >&2; exit 2 ;;
esac
