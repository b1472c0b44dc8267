#!/usr/bin/env bash
# Table 3 of the paper: bias subsets, frozen, rand_uniform, rand_row_col, with full_ft and BitFit (8 tasks x 8 methods x 4 rates x 3 seeds).
# The paper's grid is the sweep preset 'table3' (bitfit/sweep/presets.py); the report goes to OUT_ROOT/reports/table3.
#
#   scripts/table3_bias_subsets.sh MODEL DATA_DIR OUT_ROOT [sweep flags]
#   scripts/table3_bias_subsets.sh bert-base-cased ../shared/glue_data runs --gpus-per-run 0.25
#   scripts/table3_bias_subsets.sh roberta-base ../shared/glue_data runs --tasks rte --seeds 0 --dry-run
source "$(dirname "${BASH_SOURCE[0]}")/_sweep.sh" && sweep_preset table3 table3 "$@"
