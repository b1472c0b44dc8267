#!/usr/bin/env bash
# Table 3 of the paper: which parameters matter. BitFit on subsets of the biases (query;
# intermediate; query + intermediate), the head alone (frozen), and as many random entries
# (rand_uniform) or one random row/column per weight matrix (rand_row_col), over the BitFit
# learning-rate grid; with full fine-tuning and BitFit as references (the very runs of table2_glue.sh
# when OUT_ROOT is the same: they are not trained twice). Then the report.
#
#   scripts/table3_bias_subsets.sh MODEL DATA_DIR OUT_ROOT
#   GPUS="0 1" scripts/table3_bias_subsets.sh bert-base-cased ../shared/glue_data runs
#
# Variables (defaults): TASKS (cola sst2 mrpc stsb qqp mnli qnli rte), SEEDS (0 1 2),
# BITFIT_LRS (1e-4 4e-4 7e-4 1e-3; used by every method but full fine-tuning), FULL_LRS
# (1e-5 2e-5 3e-5 5e-5), BITFIT_EPOCHS (16), FULL_EPOCHS (3), REFERENCES (1: also full_ft and
# bitfit), BATCH_SIZE (8), GPUS (0), SIZE (empty: the full training sets; N: the first N examples
# of each task, in OUT_ROOT/MODEL/nN, e.g. SST-2 when a full epoch is too long), EXTRA_ARGS, DRY_RUN,
# RETRY_DIVERGED, REPORT, PYTHON.
# The report is OUT_ROOT/reports/table3.

set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
: "${TASKS:=$GLUE_TASKS}"
: "${REFERENCES:=1}"
parse_args "$@"

methods=(bitfit_query bitfit_intermediate bitfit_query_intermediate frozen rand_uniform rand_row_col)
grid bitfit_query "$BITFIT_LRS" "$BITFIT_EPOCHS" "$SIZE" -f bitfit --bias-terms query
grid bitfit_intermediate "$BITFIT_LRS" "$BITFIT_EPOCHS" "$SIZE" -f bitfit --bias-terms intermediate
grid bitfit_query_intermediate "$BITFIT_LRS" "$BITFIT_EPOCHS" "$SIZE" -f bitfit --bias-terms query intermediate
grid frozen "$BITFIT_LRS" "$BITFIT_EPOCHS" "$SIZE" -f frozen
grid rand_uniform "$BITFIT_LRS" "$BITFIT_EPOCHS" "$SIZE" -f rand_uniform
grid rand_row_col "$BITFIT_LRS" "$BITFIT_EPOCHS" "$SIZE" -f rand_row_col
if [[ $REFERENCES == 1 ]]; then
    methods+=(full_ft bitfit)
    grid full_ft "$FULL_LRS" "$FULL_EPOCHS" "$SIZE" -f full_ft
    grid bitfit "$BITFIT_LRS" "$BITFIT_EPOCHS" "$SIZE" -f bitfit
fi

roots=() size_root=$(size_dir "$SIZE")
for task in $TASKS; do
    for method in "${methods[@]}"; do roots+=("$size_root/$task/$method"); done
done
finish table3 "${roots[@]}"
