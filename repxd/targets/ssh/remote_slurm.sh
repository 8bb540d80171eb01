#!/bin/sh
# repx's helper for an SSH target whose host submits to its SLURM: stages the files of the jobs
# an sbatch submits, then runs that sbatch; reads back what ended jobs left. POSIX sh and
# coreutils only. Deployed content-addressed under <remote base>/bin/ by the SSH target; repx
# calls it as `sh HELPER submit ANSWERS TOKEN SBATCH_ARGV... | fetch`.

stage() {  # stdin until a line ".": one line per thing to prepare (fields separated by tabs)
    #   R CWD REPX EXIT   a new attempt: no outcome yet, empty out/ and logs
    #   D DIR             a directory that must exist (where SLURM writes batch output)
    #   F PATH            a file, its content in base64 on the next line
    tab=$(printf '\t')
    while IFS=$tab read -r kind a b c; do
        case "$kind" in
            .) return 0 ;;
            R) rm -f "$c" "$b/SUCCESS" "$b/FAIL" && rm -rf "$a" &&
                   mkdir -p "$a" "$b" "$(dirname "$c")" && : > "$b/stdout.log" && : > "$b/stderr.log" || return 1 ;;
            D) mkdir -p "$a" || return 1 ;;
            F) IFS= read -r data && mkdir -p "$(dirname "$a")" &&
                   printf '%s' "$data" | base64 -d > "$a.$$.tmp" && mv -f "$a.$$.tmp" "$a" || return 1 ;;
            *) return 1 ;;
        esac
    done
    return 1
}

submit() {  # ANSWERS TOKEN SBATCH_ARGV...; stdin: the staging lines, ".", then the batch script
    # A submission whose answer the link lost is sent again with the same TOKEN: it gets the
    # answer sbatch gave the first time, kept under ANSWERS, instead of a second submission.
    answers=$1 token=$2
    shift 2
    trap '' HUP  # a dropped connection must not stop a submission half-way
    mkdir -p "$answers" || exit 3
    find "$answers" -mindepth 1 -maxdepth 1 -mtime +1 -exec rm -rf {} + 2>/dev/null  # nobody came back for these
    answer=$answers/$token
    if ! mkdir "$answer.lock" 2>/dev/null; then  # sent before: wait for that submission's answer
        cat > /dev/null
        tries=0
        while [ ! -f "$answer" ]; do
            tries=$((tries + 1))
            [ "$tries" -le 120 ] || { echo "repx: an earlier try of this submission never finished" >&2; exit 3; }
            sleep 1
        done
    else
        stage || { echo "repx: could not stage the jobs' files on the remote host" >&2; exit 3; }
        "$@" > "$answer.out" 2> "$answer.err"  # sbatch reads the rest of stdin: the script
        echo "$?" > "$answer.tmp" && mv -f "$answer.tmp" "$answer"
    fi
    cat "$answer.out"
    cat "$answer.err" >&2
    exit "$(cat "$answer")"
}

send() {  # a file back to repx: "F PATH" and its content in base64 (the last 16 MiB)
    [ -f "$1" ] || return 0
    echo "F $1"
    tail -c 16777216 "$1" | base64 -w 0
    echo
}

fetch() {  # stdin: "EXIT<tab>REPX<tab>OUT<tab>BATCH_DIR<tab>SLURM_ID" per ended job; prints its files, then "E"
    tab=$(printf '\t')
    while IFS=$tab read -r exit repx out batch id; do
        send "$exit"
        send "$repx/stdout.log"
        send "$repx/stderr.log"
        send "$out/work_items.json"
        for output in "$batch/$id.out" "$batch"/*/"$id.out"; do
            send "$output"
        done
    done
    echo "E"
}

command=$1
shift
case "$command" in
    submit|fetch) "$command" "$@" ;;
    *) echo "repx slurm helper: unknown command $command" >&2; exit 2 ;;
esac
