#!/usr/bin/env bash
# The GPU check of issue 18, in a few minutes, for the first GPU: the `gpu` tests, then a short bench of
# BitFit vs full fine-tuning, and BitFit waiting for the GPU every step (bitfit_synced), on a BERT-base-shaped
# model (random weights: speed only) in fp32, TF32 and bf16. Everything goes to stdout; paste it into docs/PERFORMANCE.md ("GPU").
#
#   bash scripts/gpu_check.sh            # from the repository root; GLUE_DIR optional (else a synthetic RTE)
#   STEPS=20 REPS=2 PRECISIONS="fp32 bf16" KEEP=dir bash scripts/gpu_check.sh   # KEEP: the benches' JSON there
set -uo pipefail
cd "$(dirname "$0")/.."
exec 2>&1
STEPS=${STEPS:-20}
REPS=${REPS:-2}
BATCH=${BATCH:-32}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
status=0

echo "== where: $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv || echo "nvidia-smi not found"
python -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| GPUs', torch.cuda.device_count(), \
'| native bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))"
if ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "no CUDA GPU here: nothing to check"; exit 1
fi

echo; echo "== the gpu tests"
python -m pytest -m gpu -rs -q tests/test_gpu.py || status=1

echo; echo "== a BERT-base-shaped model (random weights, bert-base-uncased vocabulary from the bundled MiniLM)"
DATA=${GLUE_DIR:-../shared/glue_data}
python - "$WORK" "$DATA" <<'PY' || exit 1
import sys
from pathlib import Path

from transformers import AutoTokenizer, BertConfig, BertModel

from bitfit.models import resolve_model

work, data = Path(sys.argv[1]), Path(sys.argv[2])
AutoTokenizer.from_pretrained(resolve_model("minilm")).save_pretrained(work / "bert-base")
BertModel(BertConfig()).save_pretrained(work / "bert-base")  # BertConfig()'s defaults are bert-base's shape
if not (data / "RTE" / "train.tsv").is_file():  # speed only: a synthetic RTE, every batch padded to 128
    sys.path.insert(0, "tests")
    from test_cli import make_glue_dir

    make_glue_dir(work / "glue", n_train=512, n_dev=64)
    print(f"no GLUE data at {data}: a synthetic RTE (every batch is padded to 128 tokens, so speed is the same)")
PY
[ -f "$DATA/RTE/train.tsv" ] || DATA=$WORK/glue

bench() {
    echo; echo "== bench: $*"
    python -m bitfit bench --task rte --model "$WORK/bert-base" --random-init --data-dir "$DATA" --device cuda:0 \
        --batch-size "$BATCH" --steps "$STEPS" --reps "$REPS" --max-seq-length 128 --pad-all \
        --regimes full_ft bitfit bitfit_synced --out "$WORK/bench" "$@" || status=1
    [ -n "${KEEP:-}" ] && cp "$WORK"/bench/*.json "$KEEP"/ 2>/dev/null
}
for precision in ${PRECISIONS:-fp32 tf32 bf16}; do
    case $precision in
        fp32) bench ;;                      # fp32, the paper's arithmetic (the tool's default)
        tf32) bench --tf32 ;;               # fp32 weights, TF32 matmuls
        *) bench --precision "$precision" ;;  # bf16/fp16 autocast, fp32 weights
    esac
done

echo; echo "== done (status $status)"
exit $status
