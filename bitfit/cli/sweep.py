"""``python -m bitfit sweep``: a grid of ordinary runs on Ray Tune, resumable; the paper's grids as presets.

    python -m bitfit sweep --tasks rte mrpc --methods bitfit full_ft --learning-rates 1e-4 1e-3 \\
        --seeds 0 1 -m minilm --data-dir ../shared/glue_data -o runs -e 3 --max-train-samples 1000
    python -m bitfit sweep --preset table2 -m bert-base-cased --data-dir glue -o runs --gpus-per-run 0.25
    python -m bitfit sweep --config sweep.yaml -o runs --dry-run        # every run, its state, what would happen

Precedence: a preset, then the YAML file, then flags. Every other ``run_glue.py`` flag passes through
to every trial. See docs/SWEEPS.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import RunConfig
from ..errors import UserError
from ..sweep.grid import PER_TRIAL, SETTINGS, Sweep, expand, method_items, parse_method
from ..sweep.plan import BUSY, SKIP, SKIP_DIVERGED, TO_RUN, plan, plan_lines
from ..sweep.presets import PRESETS, preset
from .args import add_dataclass_flags


class _NoPerTrial:
    """RunConfig's fields minus those a sweep sets per trial (for ``add_dataclass_flags``)."""

    __dataclass_fields__ = {k: v for k, v in RunConfig.__dataclass_fields__.items() if k not in PER_TRIAL}


def build_parser(p):
    g = p.add_argument_group("the grid (plural flags; they override --preset and --config)")
    g.add_argument("--preset", choices=tuple(PRESETS), help="the paper's grid: rates, epochs, seeds, tasks as the paper")
    g.add_argument("--config", metavar="YAML", help="a sweep file: tasks, methods, learning_rates, epochs, seeds, "
                   "sizes, settings (docs/SWEEPS.md)")
    g.add_argument("--tasks", nargs="+", metavar="TASK", help="GLUE tasks")
    g.add_argument("--methods", nargs="+", metavar="METHOD", help="fine-tune types, or bitfit:ROLE,ROLE for BitFit "
                   "on some bias roles (e.g. bitfit:query,intermediate)")
    g.add_argument("--learning-rates", nargs="+", metavar="LR", help="learning rates of every method")
    g.add_argument("--method-learning-rates", nargs="+", metavar="METHOD=LR,LR", default=[],
                   help="one method's own rates, e.g. full_ft=1e-5,2e-5")
    g.add_argument("--method-epochs", nargs="+", metavar="METHOD=N", default=[], help="one method's epochs, e.g. full_ft=3")
    g.add_argument("--seeds", nargs="+", metavar="S", help="seeds (default 0)")
    g.add_argument("--sizes", nargs="+", metavar="N", help="training-set sizes: 'full' or a number of first "
                   "examples (--max-train-samples); default full")
    s = p.add_argument_group("the sweep")
    s.add_argument("-o", "--output-root", required=True, metavar="OUT", help="root of the run-folder tree "
                   "OUT/<model>/<full|nSIZE>/<task>/<method>/lr<LR>_seed<S>")
    s.add_argument("--dry-run", action="store_true", help="list every run, its state and what would be done; run nothing")
    s.add_argument("--retry-diverged", action="store_true", help="train again the runs that diverged before")
    s.add_argument("--cpus-per-run", type=float, default=1.0, help="CPUs Ray reserves per trial")
    s.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs per trial; fractional packs runs (0.25: four per GPU)")
    s.add_argument("--max-concurrent", type=int, default=0, help="at most this many trials at once (0: as resources allow)")
    s.add_argument("--address", help="join a Ray cluster instead of starting Ray here: HOST:PORT, or 'auto' ($RAY_ADDRESS, "
                   "else the cluster `ray start` runs on this machine); without it the sweep always starts its own")
    s.add_argument("--early-stop", choices=("none", "asha"), default="none", help="stop hopeless runs early "
                   "(Tune's ASHA on the dev main metric); off by default: the paper's protocol is the full grid")
    s.add_argument("--report-dir", metavar="DIR", help="also write the report (python -m bitfit report) of the sweep's runs here")
    r = p.add_argument_group("run_glue.py flags, passed to every trial (defaults as run_glue.py)")
    add_dataclass_flags(r, _NoPerTrial)
    for action in p._actions:
        if action.dest in SETTINGS:
            action.default = argparse.SUPPRESS  # only the flags given override the preset/YAML settings
    return p


def _pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        method, eq, value = item.partition("=")
        if not eq or not value:
            raise UserError(f"bad {what} {item!r}; accepted: METHOD=VALUE, e.g. full_ft=3")
        out[parse_method(method).spec] = value
    return out


def _read_yaml(path: str) -> dict:
    import yaml

    try:
        spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"cannot read sweep file {path!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"sweep file {path!r} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise UserError(f"sweep file {path!r} is not a mapping; accepted: tasks:, methods:, learning_rates:, ...")
    return spec


def _methods(spec: dict) -> dict[str, dict]:
    if not spec.get("methods"):
        return {}
    return {parse_method(name).spec: dict(opts) for name, opts in method_items(spec["methods"])}


def grid_spec(args) -> dict:
    """The sweep's YAML form after preset < YAML file < flags."""
    spec = preset(args.preset) if args.preset else {}
    if args.config:
        given = _read_yaml(args.config)
        settings = {**spec.get("settings", {}), **(given.get("settings") or {})}
        spec = {**spec, **given, "settings": settings}
    spec["methods"] = _methods(spec)
    if args.methods:
        spec["methods"] = {m: spec["methods"].get(m, {}) for m in (parse_method(x).spec for x in args.methods)}
    for key in ("tasks", "seeds", "sizes"):
        if getattr(args, key):
            spec[key] = getattr(args, key)
    settings = dict(spec.get("settings") or {}) | {k: v for k, v in vars(args).items() if k in SETTINGS}
    for key, flag in (("learning_rates", args.learning_rates), ("epochs", settings.pop("epochs", None))):
        if flag is not None:  # a flag applies to every method
            spec[key] = flag
            spec["methods"] = {m: {k: v for k, v in o.items() if k != key} for m, o in spec["methods"].items()}
    _per_method(spec, "learning_rates", {m: v.split(",") for m, v in _pairs(args.method_learning_rates, "rates").items()})
    _per_method(spec, "epochs", {m: _int(v) for m, v in _pairs(args.method_epochs, "epochs").items()})
    return spec | {"settings": settings}


def _int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"epochs {text!r} out of range; accepted: a whole number >= 1")
    return int(text)


def _per_method(spec: dict, key: str, values: dict) -> None:
    for method, value in values.items():
        if method not in spec["methods"]:
            raise UserError(f"{key.replace('_', ' ')} given for method {method!r}, which the sweep does not have; "
                            f"its methods: {', '.join(spec['methods']) or 'none'}")
        spec["methods"][method][key] = value


def _check_resources(args) -> None:
    if not args.cpus_per_run > 0:
        raise UserError(f"--cpus-per-run {args.cpus_per_run:g} out of range; accepted: > 0")
    if not 0 <= args.gpus_per_run <= 64:
        raise UserError(f"--gpus-per-run {args.gpus_per_run:g} out of range; accepted: 0 to 64 (fractions pack runs)")
    if args.max_concurrent < 0:
        raise UserError(f"--max-concurrent {args.max_concurrent} out of range; accepted: 0 (no limit) or more")


def cli(args) -> int:
    _check_resources(args)
    trials = expand(Sweep.from_dict(grid_spec(args), out=args.output_root))
    planned = plan(trials, retry_diverged=args.retry_diverged)
    if args.dry_run:
        print("\n".join(plan_lines(planned)))
        return 0
    print(plan_lines(planned)[-1], file=sys.stderr)
    return _run(args, planned)


def _run(args, planned) -> int:
    from ..sweep.driver import Resources, outcomes, run_sweep
    from ..sweep.progress import Progress
    from ..sweep.summary import best_rate_lines, outcome_lines
    from .sweep_trial import make_trainable

    to_run = [p for p in planned if p.action in TO_RUN]
    errors = {}
    early = None if args.early_stop == "none" else args.early_stop
    if to_run:
        res = Resources(args.cpus_per_run, args.gpus_per_run, args.address, early, args.max_concurrent)
        progress = Progress({str(p.trial.path): p.trial.config().epochs for p in to_run})
        errors = run_sweep(to_run, make_trainable(bool(early)), res, Path(args.output_root), callbacks=[progress])
    outs = outcomes(to_run, errors)
    count = {a: sum(p.action == a for p in planned) for a in (SKIP, SKIP_DIVERGED, BUSY)}
    lines = outcome_lines(outs, count[SKIP], count[SKIP_DIVERGED], count[BUSY])
    lines += best_rate_lines([p.trial.path for p in planned])
    if args.report_dir:
        from ..report import write_report

        roots = sorted({str(p.trial.path.parent) for p in planned if p.trial.path.is_dir()})  # method folders
        readme = write_report(roots, args.report_dir, overwrite=True)
        lines.append(f"report: {readme}")
    print("\n".join(lines))
    return 0 if all(o.status in ("done", "stopped") for o in outs) else 1
