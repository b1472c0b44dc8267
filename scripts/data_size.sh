#!/usr/bin/env bash
# the training-set-size curve: BitFit and full fine-tuning on SST-2's first N examples (9 sizes incl. the full set x 2 methods x 4 rates x 3 seeds).
# The paper's grid is the sweep preset 'data-size' (bitfit/sweep/presets.py); the report goes to OUT_ROOT/reports/data_size.
#
#   scripts/data_size.sh MODEL DATA_DIR OUT_ROOT [sweep flags]
#   scripts/data_size.sh bert-base-cased ../shared/glue_data runs --gpus-per-run 0.25
#   scripts/data_size.sh roberta-base ../shared/glue_data runs --tasks rte --seeds 0 --dry-run
source "$(dirname "${BASH_SOURCE[0]}")/_sweep.sh" && sweep_preset data-size data_size "$@"
