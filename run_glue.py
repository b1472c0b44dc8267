#!/usr/bin/env python
"""Fine-tune a Hugging Face encoder on a GLUE task under a parameter-freezing policy.

    python run_glue.py -t rte -f bitfit -o runs/rte --data-dir ../shared/glue_data -e 3
    python run_glue.py -t cola -f bitfit --bias-terms query intermediate -o runs/cola -l 1e-3

Parses flags, builds a RunConfig, calls bitfit.train.run. Bad input exits 2 with one line.
"""

from __future__ import annotations

import argparse
import sys

from bitfit.config import FINE_TUNE_TYPES, OPTIMIZERS, PRECISIONS, SCHEDULERS, RunConfig
from bitfit.errors import OneLineErrors, RunStopped, UserError
from bitfit.policies import BIAS_ROLES


def build_parser() -> argparse.ArgumentParser:
    h, d = RunConfig.help, RunConfig.default
    p = OneLineErrors(prog="run_glue.py", description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--output-path", "-o", required=True, help=h("output_path"))
    p.add_argument("--task-name", "-t", required=True, help=h("task_name"))
    p.add_argument("--model-name", "-m", default=d("model_name"), help=h("model_name"))
    p.add_argument("--fine-tune-type", "-f", default=d("fine_tune_type"), choices=FINE_TUNE_TYPES, help=h("fine_tune_type"))
    p.add_argument("--bias-terms", nargs="+", default=None, metavar="ROLE",
                   help=h("bias_terms") + "; roles: " + ", ".join(BIAS_ROLES) + ". Each selects exactly that role: "
                   "'output' is the block's output projection only (not the attention output), 'output_layernorm' "
                   "the block's last LayerNorm only (not the attention LayerNorm)")
    p.add_argument("--layers", nargs="+", default=None, metavar="L", help=h("layers"))
    p.add_argument("--rand-budget", type=int, default=None, help=h("rand_budget"))
    p.add_argument("--mask-sparsity", type=float, default=d("mask_sparsity"), help=h("mask_sparsity"))
    p.add_argument("--gpu-device", "-d", type=int, default=None, help=h("gpu_device"))
    p.add_argument("--cpu", action="store_true", help=h("cpu"))
    p.add_argument("--seed", "-s", type=int, default=d("seed"), help=h("seed"))
    p.add_argument("--learning-rate", "-l", type=float, default=d("learning_rate"), help=h("learning_rate"))
    p.add_argument("--epochs", "-e", type=int, default=d("epochs"), help=h("epochs"))
    p.add_argument("--batch-size", "-b", type=int, default=d("batch_size"), help=h("batch_size"))
    p.add_argument("--eval-batch-size", type=int, default=d("eval_batch_size"), help=h("eval_batch_size"))
    p.add_argument("--optimizer", default=d("optimizer"), choices=OPTIMIZERS, help=h("optimizer"))
    p.add_argument("--weight-decay", type=float, default=d("weight_decay"), help=h("weight_decay"))
    p.add_argument("--scheduler", default=d("scheduler"), choices=SCHEDULERS, help=h("scheduler"))
    p.add_argument("--warmup-ratio", type=float, default=d("warmup_ratio"), help=h("warmup_ratio"))
    p.add_argument("--grad-accum", type=int, default=d("grad_accum"), help=h("grad_accum"))
    p.add_argument("--max-grad-norm", type=float, default=d("max_grad_norm"), help=h("max_grad_norm"))
    p.add_argument("--precision", default=d("precision"), choices=PRECISIONS, help=h("precision"))
    p.add_argument("--attention-dropout", type=float, default=None, help=h("attention_dropout"))
    p.add_argument("--gradient-checkpointing", action="store_true", help=h("gradient_checkpointing"))
    p.add_argument("--compile", action="store_true", help=h("compile"))
    p.add_argument("--fast-cpu-ops", action=argparse.BooleanOptionalAction, default=d("fast_cpu_ops"),
                   help=h("fast_cpu_ops"))
    p.add_argument("--max-seq-length", type=int, default=d("max_seq_length"), help=h("max_seq_length"))
    p.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=d("group_by_length"),
                   help=h("group_by_length"))
    p.add_argument("--max-train-samples", type=int, default=None, help=h("max_train_samples"))
    p.add_argument("--max-eval-samples", type=int, default=None, help=h("max_eval_samples"))
    p.add_argument("--max-predict-samples", type=int, default=None, help=h("max_predict_samples"))
    p.add_argument("--data-dir", default=None, help=h("data_dir"))
    p.add_argument("--eval-train", action="store_true", help=h("eval_train"))
    p.add_argument("--predict-test", action="store_true", help=h("predict_test"))
    p.add_argument("--save-evaluator", action="store_true", help=h("save_evaluator"))
    p.add_argument("--overwrite", action="store_true", help=h("overwrite"))
    p.add_argument("--resume", action="store_true", help=h("resume"))
    p.add_argument("--keep-checkpoint", action="store_true", help=h("keep_checkpoint"))
    p.add_argument("--trust-remote-code", action="store_true", help=h("trust_remote_code"))
    p.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=d("verbose"),
                   help=h("verbose") + " (--no-verbose: warnings and errors only)")
    return p




def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # -h, or a bad flag (already reported on one line)
        return int(e.code or 0)
    try:
        cfg = RunConfig(**vars(args))
        from bitfit.train import run

        run(cfg)
    except UserError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except RunStopped as e:
        print(f"{parser.prog}: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
