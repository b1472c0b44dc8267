#!/usr/bin/env bash
# The training-set-size curve: BitFit and full fine-tuning on the first N training examples, for
# growing N (the paper draws it on SQuAD, which this tool does not train; a large GLUE task stands
# in), each size over the learning-rate grids. The full-training-set point is the table2_glue.sh run
# (trained here too when missing: FULL_SET=1). Then the report, whose data-size figure puts N on the
# x axis, one line per method, each point at its size's best learning rate.
#
#   scripts/data_size.sh MODEL DATA_DIR OUT_ROOT
#   GPUS="0 1 2 3" TASKS="sst2 qnli" scripts/data_size.sh bert-base-cased ../shared/glue_data runs
#
# Variables (defaults): TASKS (sst2), SIZES (100 200 500 1000 2000 5000 10000 20000), FULL_SET (1),
# SEEDS (0 1 2), BITFIT_LRS (1e-4 4e-4 7e-4 1e-3), FULL_LRS (1e-5 2e-5 3e-5 5e-5), BITFIT_EPOCHS
# (16), FULL_EPOCHS (3), BATCH_SIZE (8), GPUS (0), EXTRA_ARGS, DRY_RUN, RETRY_DIVERGED, REPORT, PYTHON.
# The report is OUT_ROOT/reports/data_size.

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
: "${TASKS:=sst2}"
: "${SIZES:=100 200 500 1000 2000 5000 10000 20000}"
: "${FULL_SET:=1}"
parse_args "$@"

sizes=($SIZES)
[[ $FULL_SET == 1 ]] && sizes+=("")
for size in "${sizes[@]}"; do
    grid full_ft "$FULL_LRS" "$FULL_EPOCHS" "$size" -f full_ft
    grid bitfit "$BITFIT_LRS" "$BITFIT_EPOCHS" "$size" -f bitfit
done

roots=()
for size in "${sizes[@]}"; do
    for task in $TASKS; do
        for method in full_ft bitfit; do
            roots+=("$(size_dir "$size")/$task/$method")
        done
    done
done
finish data_size "${roots[@]}"
