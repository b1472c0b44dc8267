#!/usr/bin/env bash
# Figure 1 (bias change per role and layer; per-layer distance): BitFit at 1e-3 and full_ft at 2e-5 on RTE, seed 0.
# The paper's grid is the sweep preset 'bias-change' (bitfit/sweep/presets.py); the report goes to OUT_ROOT/reports/bias_change.
#
#   scripts/bias_change.sh MODEL DATA_DIR OUT_ROOT [sweep flags]
#   scripts/bias_change.sh bert-base-cased ../shared/glue_data runs --gpus-per-run 0.25
#   scripts/bias_change.sh roberta-base ../shared/glue_data runs --tasks rte --seeds 0 --dry-run
source "$(dirname "${BASH_SOURCE[0]}")/_sweep.sh" && sweep_preset bias-change bias_change "$@"
