#!/usr/bin/env bash
# Issue 15's GPU measurement, prepared so that GPU minutes go to it: BitFit on a BERT-base-shaped model
# (random weights: speed only) on RTE, 8 runs (4 rates x 2 seeds) one at a time on one GPU, then the
# same 8 packed on that GPU (--gpus-per-run 0.125): the grid's wall time for each, their ratio, and the
# GPU's peak memory in use (nvidia-smi, sampled every 0.5 s). Paste the output into docs/SWEEPS.md.
#
#   bash scripts/gpu_packing.sh                         # from the repository root, on a machine with a GPU
#   EPOCHS=1 SIZE=2000 bash scripts/gpu_packing.sh
#   DEVICE=cpu SHAPE=tiny bash scripts/gpu_packing.sh   # the script's own check on a CPU: 2 trials at once, no GPU
set -uo pipefail
cd "$(dirname "$0")/.."
exec 2>&1
EPOCHS=${EPOCHS:-1}
SIZE=${SIZE:-2000}
DEVICE=${DEVICE:-gpu}
SHAPE=${SHAPE:-base}
WORK=$(mktemp -d)
trap 'kill "$SAMPLER" 2>/dev/null; rm -rf "$WORK"' EXIT
SAMPLER=

echo "== where: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
if [ "$DEVICE" = gpu ]; then
    nvidia-smi --query-gpu=index,name,memory.total --format=csv || { echo "nvidia-smi not found"; exit 1; }
    ONE=(--gpus-per-run 1 --max-concurrent 1)
    PACKED=(--gpus-per-run 0.125)
else
    ONE=(--cpus-per-run 1 --max-concurrent 1)
    PACKED=(--cpus-per-run 1 --max-concurrent 2)
fi

DATA=${GLUE_DIR:-../shared/glue_data}
python - "$WORK" "$DATA" "$SHAPE" <<'PY' || exit 1
import sys
from pathlib import Path

from transformers import AutoTokenizer, BertConfig, BertModel

from bitfit.models import resolve_model

work, data, shape = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
AutoTokenizer.from_pretrained(resolve_model("minilm")).save_pretrained(work / "model")
config = BertConfig() if shape == "base" else BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                         intermediate_size=64)
BertModel(config).save_pretrained(work / "model")  # BertConfig()'s defaults are bert-base's shape
if not (data / "RTE" / "train.tsv").is_file():
    sys.path.insert(0, "tests")
    from test_cli import make_glue_dir

    make_glue_dir(work / "glue", n_train=512, n_dev=64)
    print(f"no GLUE data at {data}: a synthetic RTE")
PY
[ -f "$DATA/RTE/train.tsv" ] || DATA=$WORK/glue

sample_memory() {  # the GPU's memory in use, MiB, every 0.5 s, to $1
    while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 >> "$1" 2>/dev/null; sleep 0.5; done
}

grid() {  # NAME FLAGS...: the 8 runs, timed
    local name=$1; shift
    [ "$DEVICE" = gpu ] && { sample_memory "$WORK/$name.mem" & SAMPLER=$!; }
    local t0; t0=$(date +%s.%N)
    python -m bitfit sweep --tasks rte --methods bitfit --learning-rates 1e-4 4e-4 7e-4 1e-3 --seeds 0 1 \
        -e "$EPOCHS" --sizes "$SIZE" -m "$WORK/model" --data-dir "$DATA" -o "$WORK/$name" \
        --no-verbose "$@" | tail -n 3 || { echo "the sweep failed"; exit 1; }
    local t1; t1=$(date +%s.%N)
    [ -n "$SAMPLER" ] && { kill "$SAMPLER"; SAMPLER=; }
    local peak=n/a; [ -s "$WORK/$name.mem" ] && peak="$(sort -n "$WORK/$name.mem" | tail -n 1) MiB"
    python -c "print('$name: %.1f s wall for 8 runs; peak GPU memory in use: $peak' % ($t1 - $t0))"
    python -c "print($t1 - $t0)" > "$WORK/$name.wall"
}

echo; echo "== 8 BitFit runs on RTE ($SHAPE shape, $SIZE examples, $EPOCHS epoch(s)), one at a time"
grid one "${ONE[@]}"
echo; echo "== the same 8, packed (${PACKED[*]})"
grid packed "${PACKED[@]}"
python -c "print('wall-time ratio, one at a time / packed: %.2fx' % ($(cat "$WORK/one.wall") / $(cat "$WORK/packed.wall")))"
