# Shared by the experiment scripts (sourced, never run): arguments, the run-folder layout, the
# skip/resume rule and a job queue with one worker per entry of $GPUS.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
#   parse_args "$@"                                  # MODEL DATA_DIR OUT_ROOT
#   grid bitfit "$BITFIT_LRS" "$BITFIT_EPOCHS" "" -f bitfit
#   run_queue table2 && make_report table2 "$OUT_ROOT/$MODEL_SLUG/full"
#
# Every run folder is $OUT_ROOT/<model>/<full|nSIZE>/<task>/<method>/lr<LR>_seed<SEED>, the same for
# every script, so a run one experiment needs and another already made is never trained twice.
# Its log is <run folder>.log beside it (appended to; also the lock that keeps two workers off one run).

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${PYTHON:=python}"            # the interpreter that runs run_glue.py and the report
: "${GPUS:=0}"                   # one worker per entry; "0 0 1 1" runs two at a time on each of two GPUs;
                                 # "cpu cpu" two on the CPU, each with half the cores' threads
: "${SEEDS:=0 1 2}"
: "${BATCH_SIZE:=8}"
: "${EXTRA_ARGS:=}"              # appended to every run_glue.py command, e.g. "--precision bf16"
: "${BITFIT_LRS:=1e-4 4e-4 7e-4 1e-3}"    # the paper's learning-rate grid for BitFit-like methods
: "${FULL_LRS:=1e-5 2e-5 3e-5 5e-5}"      # ... and for full fine-tuning
: "${BITFIT_EPOCHS:=16}"
: "${FULL_EPOCHS:=3}"
: "${DRY_RUN:=0}"                # 1: print the commands, run nothing, write nothing
: "${RETRY_DIVERGED:=0}"         # 1: run again the runs whose results.json says diverged
: "${REPORT:=1}"                 # 0: do not write the report at the end
: "${SIZE:=}"                    # tables 2 and 3: train on the first SIZE examples of each task
                                 # (--max-train-samples), in OUT_ROOT/<model>/nSIZE; empty: full sets
GLUE_TASKS="cola sst2 mrpc stsb qqp mnli qnli rte"   # the paper's GLUE tasks (it leaves WNLI out)

JOBS=()
N_DONE=0 N_DIVERGED=0 N_RESUME=0 N_NEW=0

parse_args() {
    if [[ $# -ne 3 || $1 == -h || $1 == --help ]]; then
        sed -n '2,/^$/s/^# \{0,1\}//p' "$0" >&2   # the script's header comment
        [[ ${1:-} == -h || ${1:-} == --help ]] && exit 0
        echo "usage: $0 MODEL DATA_DIR OUT_ROOT (got $# argument(s))" >&2
        exit 2
    fi
    local n
    for n in $SIZE ${SIZES:-}; do
        if ! [[ $n =~ ^[1-9][0-9]*$ ]]; then
            echo "$0: training-set size '$n' (SIZE or SIZES) is not accepted: give a whole number of examples >= 1" >&2
            exit 2
        fi
    done
    MODEL=$1 DATA_DIR=$2 OUT_ROOT=$3
    if [[ -d $MODEL ]]; then MODEL_SLUG=$(basename "$MODEL"); else MODEL_SLUG=${MODEL//\//_}; fi
}

# size_dir [SIZE]: the folder of one training-set size, "full" when SIZE is empty
size_dir() {
    if [[ -n ${1:-} ]]; then echo "$OUT_ROOT/$MODEL_SLUG/n$1"; else echo "$OUT_ROOT/$MODEL_SLUG/full"; fi
}

# run_dir TASK METHOD LR SEED [SIZE]
run_dir() {
    echo "$(size_dir "${5:-}")/$1/$2/lr$3_seed$4"
}

# run_state DIR: complete | diverged | resume | stale (something there, not resumable) | new, from the
# one reader of a run folder's state (bitfit.runstate: python -m bitfit state)
run_state() {
    local status
    status=$(PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m bitfit state --status-only "$1")
    [[ -n $status ]] || { echo "cannot read the state of run folder $1 (python -m bitfit state failed)" >&2; return 1; }
    case $status in
        interrupted) echo resume ;;
        broken) echo stale ;;
        *) echo "$status" ;;
    esac
}

# state_flags STATE: what run_glue.py needs for a run in that state ("skip": nothing to do)
state_flags() {
    case $1 in
        complete) echo skip ;;
        diverged) if [[ $RETRY_DIVERGED == 1 ]]; then echo --overwrite; else echo skip; fi ;;
        resume) echo --resume ;;
        stale) echo --overwrite ;;
        new) echo ;;
    esac
}

# add_run DIR RUN_GLUE_ARGS...: queue the run unless it is complete (or diverged). Whether it resumes
# is decided again when a worker takes it, so a run finished meanwhile by someone else is not redone.
add_run() {
    local dir=$1 state
    shift
    state=$(run_state "$dir")
    case $state in
        complete) N_DONE=$((N_DONE + 1)) ;;
        resume) N_RESUME=$((N_RESUME + 1)) ;;
        diverged) if [[ $RETRY_DIVERGED == 1 ]]; then N_NEW=$((N_NEW + 1)); else N_DIVERGED=$((N_DIVERGED + 1)); fi ;;
        *) N_NEW=$((N_NEW + 1)) ;;
    esac
    if [[ $(state_flags "$state") == skip ]]; then
        [[ $state == complete ]] || echo "skipped, diverged before (RETRY_DIVERGED=1 runs it again): $dir" >&2
        return 0
    fi
    # shellcheck disable=SC2086  # EXTRA_ARGS is split into flags on purpose
    JOBS+=("$(printf '%q ' "$dir" "$@" $EXTRA_ARGS)")
}

# grid METHOD "LRS" EPOCHS SIZE POLICY_ARGS...: every task of $TASKS x learning rate x seed of $SEEDS
# (seeds outermost, so a first seed of the whole grid finishes early). SIZE "" = the full training set.
grid() {
    local method=$1 lrs=$2 epochs=$3 size=$4 task lr seed
    shift 4
    for seed in $SEEDS; do
        for task in $TASKS; do
            for lr in $lrs; do
                add_run "$(run_dir "$task" "$method" "$lr" "$seed" "$size")" -t "$task" -m "$MODEL" \
                    --data-dir "$DATA_DIR" -l "$lr" -e "$epochs" -s "$seed" -b "$BATCH_SIZE" \
                    ${size:+--max-train-samples "$size"} "$@"
            done
        done
    done
}

# run_job "QUOTED DIR AND ARGS": one run on the GPU of this worker's slot (xargs --process-slot-var).
run_job() {
    local gpus gpu dir fd rc flags
    eval "set -- $1"
    dir=$1
    shift
    read -ra gpus <<<"$GPUS"
    gpu=${gpus[${BITFIT_SLOT:-0}]}
    if [[ $DRY_RUN != 1 ]]; then
        mkdir -p "$(dirname "$dir")"
        exec {fd}>>"$dir.log"
        if command -v flock >/dev/null && ! flock -n "$fd"; then
            echo "busy, another worker is running it: $dir"
            exec {fd}>&-
            return 0
        fi
    fi
    flags=$(state_flags "$(run_state "$dir")")  # under the lock: the state now, not at queueing time
    if [[ $flags == skip ]]; then
        echo "nothing left to do (finished meanwhile): $dir"
        [[ $DRY_RUN == 1 ]] || exec {fd}>&-
        return 0
    fi
    local device=(-d "$gpu") where="gpu $gpu"
    if [[ $gpu == cpu ]]; then
        device=(--cpu)
        # CPU workers share the cores: each gets its share of threads unless OMP_NUM_THREADS says otherwise
        local n_cpu=0 g
        for g in "${gpus[@]}"; do [[ $g == cpu ]] && n_cpu=$((n_cpu + 1)); done
        local threads=$(($(nproc 2>/dev/null || echo 1) / n_cpu))
        export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((threads > 0 ? threads : 1))}
        where="cpu, $OMP_NUM_THREADS threads"
    fi
    # shellcheck disable=SC2206  # flags is empty or one flag
    local cmd=("$PYTHON" "$REPO/run_glue.py" -o "$dir" "${device[@]}" --no-verbose "$@" $flags)
    if [[ $DRY_RUN == 1 ]]; then
        echo "[$where] $(printf '%q ' "${cmd[@]}")"
        return 0
    fi
    echo "=== $(date '+%F %T') [$where]: ${cmd[*]}" >&"$fd"
    "${cmd[@]}" >&"$fd" 2>&1 && rc=0 || rc=$?
    exec {fd}>&-
    if [[ $rc == 0 ]]; then
        echo "done [$where] $dir"
    else
        echo "FAILED [$where] $dir (exit $rc; log: $dir.log)"
        return 1
    fi
}

# run_queue NAME: run the queued jobs, one worker per entry of $GPUS; fails if any run failed.
run_queue() {
    local gpus
    read -ra gpus <<<"$GPUS"
    echo "$1: $((N_DONE + N_DIVERGED + ${#JOBS[@]})) runs: $N_DONE complete and $N_DIVERGED diverged (skipped)," \
         "$N_RESUME to resume, $N_NEW to start; ${#gpus[@]} worker(s) on GPU(s) $GPUS" >&2
    ((${#JOBS[@]})) || return 0
    export REPO PYTHON GPUS DRY_RUN RETRY_DIVERGED
    export -f run_job run_state state_flags
    printf '%s\0' "${JOBS[@]}" | xargs -0 -n 1 -P "${#gpus[@]}" --process-slot-var=BITFIT_SLOT \
        bash -c 'run_job "$1"' run_job
}

# make_report NAME ROOTS...: python -m bitfit report over the roots that exist -> $OUT_ROOT/reports/NAME
make_report() {
    local name=$1 roots=() root
    shift
    [[ $REPORT == 1 ]] || return 0
    for root in "$@"; do [[ -d $root || $DRY_RUN == 1 ]] && roots+=("$root"); done
    if ((${#roots[@]} == 0)); then
        echo "$name: no run folders yet, no report" >&2
        return 0
    fi
    local cmd=("$PYTHON" -m bitfit report "${roots[@]}" -o "$OUT_ROOT/reports/$name" --overwrite --no-verbose)
    if [[ $DRY_RUN == 1 ]]; then
        echo "[report] $(printf '%q ' "${cmd[@]}")"
    else
        PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" "${cmd[@]}"
    fi
}

# finish NAME ROOTS...: run the queue, then the report (also after failures), then say how it went.
finish() {
    local name=$1 failed=0
    shift
    run_queue "$name" || failed=1
    make_report "$name" "$@"
    if ((failed)); then
        echo "$name: some runs failed (see the FAILED lines and their logs); run the script again to retry them" >&2
        return 1
    fi
}
