"""``python run_glue.py`` = ``python -m bitfit train``: flags -> RunConfig -> ``bitfit.run``.

    python run_glue.py -t rte -f bitfit -o runs/rte --data-dir ../shared/glue_data -e 3
    python run_glue.py -t cola -f bitfit --bias-terms query intermediate -o runs/cola -l 1e-3

Every flag is generated from ``bitfit.config.RunConfig``'s declarations.
"""

from __future__ import annotations

from ..config import RunConfig, environment_defaults
from ..preflight import check_inputs
from .args import add_dataclass_flags

DESCRIPTION = "Fine-tune a Hugging Face encoder on a GLUE task under a parameter-freezing method."


def build_parser(p):
    add_dataclass_flags(p, RunConfig, required=("output_path", "task_name"))
    return p


def cli(args) -> int:
    cfg = RunConfig(**environment_defaults(vars(args)))  # $GLUE_DIR, accelerate launch's precision
    check_inputs(cfg)  # paths, data files, model: in milliseconds, before torch and before any folder is made
    from ..training import run  # imports torch: only once the flags and paths are known good

    run(cfg)
    return 0
