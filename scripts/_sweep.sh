#!/usr/bin/env bash
# Shared by the experiment scripts: MODEL DATA_DIR OUT_ROOT [sweep flags...] -> python -m bitfit sweep
# with the script's preset, the report in OUT_ROOT/reports/NAME. Every decision (grid, skip/resume,
# placement on GPUs, the report) is the sweep's: python -m bitfit sweep -h, docs/SWEEPS.md.
#   usage (from a script): sweep_preset PRESET REPORT_NAME "$@"
sweep_preset() {
    local preset=$1 name=$2
    shift 2
    if [[ $# -lt 3 || $1 == -* ]]; then
        echo "usage: $0 MODEL DATA_DIR OUT_ROOT [python -m bitfit sweep flags, e.g. --tasks rte --seeds 0 --dry-run]" >&2
        [[ ${1:-} == -h || ${1:-} == --help ]] && exit 0 || exit 2
    fi
    local repo
    repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
    PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python}" -m bitfit sweep --preset "$preset" \
        -m "$1" --data-dir "$2" -o "$3" --report-dir "$3/reports/$name" "${@:4}"
}
