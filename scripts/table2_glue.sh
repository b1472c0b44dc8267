#!/usr/bin/env bash
# Table 2 of the paper: full fine-tuning vs BitFit on every GLUE task, over the paper's
# learning-rate grids and several seeds; then the report (best rate per task chosen on dev).
#
#   scripts/table2_glue.sh MODEL DATA_DIR OUT_ROOT
#   GPUS="0 1 2 3" scripts/table2_glue.sh bert-base-cased ../shared/glue_data runs
#   DRY_RUN=1 TASKS="rte mrpc" SEEDS=0 scripts/table2_glue.sh roberta-base ../shared/glue_data runs
#
# Variables (defaults): TASKS (cola sst2 mrpc stsb qqp mnli qnli rte), SEEDS (0 1 2),
# BITFIT_LRS (1e-4 4e-4 7e-4 1e-3), FULL_LRS (1e-5 2e-5 3e-5 5e-5), BITFIT_EPOCHS (16),
# FULL_EPOCHS (3), BATCH_SIZE (8), GPUS (0), SIZE (empty: the full training sets; N: the first N
# examples of each task, in OUT_ROOT/MODEL/nN, where data_size.sh puts its size N too), EXTRA_ARGS,
# DRY_RUN, RETRY_DIVERGED, REPORT, PYTHON.
# Complete runs are skipped, runs with a checkpoint resumed; the report is OUT_ROOT/reports/table2.

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
: "${TASKS:=$GLUE_TASKS}"
parse_args "$@"

grid full_ft "$FULL_LRS" "$FULL_EPOCHS" "$SIZE" -f full_ft
grid bitfit "$BITFIT_LRS" "$BITFIT_EPOCHS" "$SIZE" -f bitfit

roots=() size_root=$(size_dir "$SIZE")
for task in $TASKS; do
    roots+=("$size_root/$task/full_ft" "$size_root/$task/bitfit")
done
finish table2 "${roots[@]}"
