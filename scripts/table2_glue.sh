#!/usr/bin/env bash
# Table 2 of the paper: full fine-tuning vs BitFit on every GLUE task (8 tasks x (4 + 4 rates) x 3 seeds).
# The paper's grid is the sweep preset 'table2' (bitfit/sweep/presets.py); the report goes to OUT_ROOT/reports/table2.
#
#   scripts/table2_glue.sh MODEL DATA_DIR OUT_ROOT [sweep flags]
#   scripts/table2_glue.sh bert-base-cased ../shared/glue_data runs --gpus-per-run 0.25
#   scripts/table2_glue.sh roberta-base ../shared/glue_data runs --tasks rte --seeds 0 --dry-run
source "$(dirname "${BASH_SOURCE[0]}")/_sweep.sh" && sweep_preset table2 table2 "$@"
