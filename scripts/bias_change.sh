#!/usr/bin/env bash
# The bias-change analysis (the paper's Figure 1): BitFit runs whose deltas the report compares with
# the pretrained biases (mean |b_final - b_initial| per bias role and layer), and full fine-tuning
# runs for the per-layer distance from the pretrained weights. One learning rate each (runs of
# table2_glue.sh with the same rate and seed are reused). Then the report, with both figures.
#
#   scripts/bias_change.sh MODEL DATA_DIR OUT_ROOT
#   TASKS="rte mrpc sst2" scripts/bias_change.sh bert-base-cased ../shared/glue_data runs
#
# Variables (defaults): TASKS (rte), SEEDS (0), BITFIT_LR (1e-3), FULL_LR (2e-5), BITFIT_EPOCHS
# (16), FULL_EPOCHS (3), BATCH_SIZE (8), GPUS (0), EXTRA_ARGS, DRY_RUN, RETRY_DIVERGED, REPORT, PYTHON.
# The report is OUT_ROOT/reports/bias_change.

set -euo pipefail
: "${SEEDS:=0}"
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
: "${TASKS:=rte}"
: "${BITFIT_LR:=1e-3}"
: "${FULL_LR:=2e-5}"
parse_args "$@"

grid bitfit "$BITFIT_LR" "$BITFIT_EPOCHS" "" -f bitfit
grid full_ft "$FULL_LR" "$FULL_EPOCHS" "" -f full_ft

roots=()
for seed in $SEEDS; do
    for task in $TASKS; do
        roots+=("$(run_dir "$task" bitfit "$BITFIT_LR" "$seed")" "$(run_dir "$task" full_ft "$FULL_LR" "$seed")")
    done
done
finish bias_change "${roots[@]}"
