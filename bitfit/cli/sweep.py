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
import os
import sys
from pathlib import Path

from ..config import RunConfig, default_data_dir
from ..errors import UnreadableFile, UserError
from ..io import read_regular_file
from ..sweep.grid import PER_TRIAL, SETTINGS, Sweep, expand, method_items, parse_method, settings_value
from ..sweep.plan import BUSY, SKIP, SKIP_DIVERGED, SKIP_STOPPED, TO_RUN, plan, plan_lines
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
    g.add_argument("--tasks", nargs="+", metavar="TASK", help="GLUE tasks (a task of your own, given as files, "
                   "goes in the YAML file's tasks:)")
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
    s.add_argument("--gpus-per-run", type=float, default=None, help="GPUs per trial (default: 1 where Ray finds GPUs, "
                   "else 0); a fraction packs runs (0.25: four per GPU); 0: train on the CPU")
    s.add_argument("--max-concurrent", type=int, default=0, help="at most this many trials at once (0: as resources allow)")
    s.add_argument("--address", help="join a Ray cluster instead of starting Ray here: HOST:PORT, or 'auto' ($RAY_ADDRESS, "
                   "else the cluster `ray start` runs on this machine); without it the sweep always starts its own")
    s.add_argument("--max-retries", type=int, default=2, help="run a trial again (it resumes from its folder) when its "
                   "worker or node was lost, at most this many times")
    s.add_argument("--early-stop", choices=("none", "asha"), default="none", help="stop hopeless runs early "
                   "(ASHA on the dev main metric, within each task and method); off by default: the paper's protocol "
                   "is the full grid")
    s.add_argument("--complete-stopped", action="store_true", help="with --early-stop: also train to the end the runs "
                   "an earlier ASHA sweep cut (a sweep without --early-stop always does)")
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


YAML_LIMIT = 1 << 20  # a sweep file is a few short lists (the largest preset, table3, is 662 bytes as YAML): 1 MiB
# is over a thousand times that, and bounds what PyYAML's safe_load (pure Python: a few seconds per MiB) parses


def _read_yaml(path: str) -> dict:
    import yaml

    try:  # a symlink to the file is the user's own choice: followed; a FIFO or a device is refused, never waited on
        text = read_regular_file(os.path.realpath(path), YAML_LIMIT).decode("utf-8")
        spec = yaml.safe_load(text)
    except OSError as e:
        raise UserError(f"cannot read sweep file {path!r}: {e.strerror}") from None
    except UnreadableFile as e:
        raise UserError(f"cannot read sweep file {path!r}: {e.why}; accepted: a YAML file of at most "
                        f"{YAML_LIMIT >> 20} MiB") from None
    except RecursionError:
        raise UserError(f"sweep file {path!r} is nested too deeply to read; accepted: a YAML file of a few lists "
                        "(docs/SWEEPS.md)") from None
    except UnicodeDecodeError as e:
        raise UserError(f"sweep file {path!r} is not UTF-8 text (byte {e.start}); accepted: a YAML file in UTF-8") from None
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
        settings = {**spec.get("settings", {}), **settings_value(given.get("settings"))}
        spec = {**spec, **given, "settings": settings}
    spec["methods"] = _methods(spec)
    if args.methods:
        spec["methods"] = {m: spec["methods"].get(m, {}) for m in (parse_method(x).spec for x in args.methods)}
    for key in ("tasks", "seeds", "sizes"):
        if getattr(args, key):
            spec[key] = getattr(args, key)
    settings = dict(spec.get("settings") or {}) | {k: v for k, v in vars(args).items() if k in SETTINGS}
    if settings.get("data_dir") is None and default_data_dir():  # resolved here, once: every trial gets the folder
        settings["data_dir"] = default_data_dir()
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
    if args.gpus_per_run is not None and not 0 <= args.gpus_per_run <= 64:
        raise UserError(f"--gpus-per-run {args.gpus_per_run:g} out of range; accepted: 0 to 64 (fractions pack runs)")
    if args.max_concurrent < 0:
        raise UserError(f"--max-concurrent {args.max_concurrent} out of range; accepted: 0 (no limit) or more")
    if args.max_retries < 0:
        raise UserError(f"--max-retries {args.max_retries} out of range; accepted: 0 or more")


def _check_placement(args, settings: dict) -> None:
    """Ray places a sweep's runs: -d is refused, and --cpu means no GPU per run."""
    if settings.get("gpu_device") is not None:
        raise UserError(f"-d/--gpu-device {settings['gpu_device']} picks a GPU for one run; in a sweep Ray gives each "
                        "run its GPU; accepted: leave -d out, and use --gpus-per-run (0: train on the CPU)")
    if settings.get("cpu") and args.gpus_per_run:
        raise UserError(f"--cpu contradicts --gpus-per-run {args.gpus_per_run:g}; accepted: one of them "
                        "(--gpus-per-run 0 trains on the CPU)")
    if settings.get("cpu"):
        args.gpus_per_run = 0.0


def _check_inputs(trials) -> None:
    """Before Ray starts: a local model exists, the data folder has each GLUE task's training file, and each task
    given as files has its files (``userdata.check_files``)."""
    from ..models import resolve_model
    from ..sweep.grid import FILE_KEYS
    from ..userdata import check_files

    settings = trials[0].settings
    resolve_model(settings.get("model_name") or RunConfig.__dataclass_fields__["model_name"].default)
    first: dict = {}  # task -> its first trial
    for t in trials:
        first.setdefault(t.settings["task_name"], t)
    for name, t in first.items():
        if t.settings.get("train_file") is not None:
            try:
                check_files(t.config(), {k: k for k in FILE_KEYS})  # named as the sweep file's keys
            except UserError as e:
                raise UserError(f"task {name!r} of the sweep: {e}") from None
    glue = [t for t in first.values() if t.settings.get("train_file") is None]
    if glue:
        _check_glue_data(glue)


def _check_glue_data(trials) -> None:
    """The data folder (if any: else the datasets hub) has the training file of each GLUE task (one trial each)."""
    from ..preflight import split_path
    from ..tasks import get_task

    data = trials[0].config().data_dir
    if data is None:
        return  # the datasets hub
    if not Path(data).is_dir():
        raise UserError(f"data dir {data!r} is not a folder; accepted: a folder in the GLUE TSV layout "
                        "(e.g. glue_data/RTE/train.tsv)")
    tasks = [get_task(t.settings["task_name"]) for t in trials]
    missing = [t for t in tasks if not split_path(Path(data), t, None).is_file()]
    if missing:
        names = ", ".join(t.glue_name for t in missing)
        here = [t.name for t in tasks if t not in missing]
        raise UserError(f"data dir {data!r} has no training file for {len(missing)} of the sweep's {len(tasks)} tasks: "
                        f"{names} (looked for {missing[0].glue_name}/train.tsv ...); accepted: the GLUE TSV layout, or "
                        + (f"--tasks {' '.join(here)}" if here else "a data dir holding them"))


def _check_output_root(out: Path) -> None:
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == out and not out.is_dir():
        raise UserError(f"-o {str(out)!r} is a file; accepted: a folder (new or holding run folders)")
    if not existing.is_dir():
        raise UserError(f"-o {str(out)!r} is under {str(existing)!r}, which is a file; accepted: a folder path")
    if not os.access(existing, os.W_OK | os.X_OK) or os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise UserError(f"-o {str(out)!r}: cannot write in {str(existing)!r} (not writable); accepted: a folder you "
                        "can write in")


def cli(args) -> int:
    _check_resources(args)
    trials = expand(Sweep.from_dict(grid_spec(args), out=args.output_root))
    _check_placement(args, trials[0].settings)
    _check_output_root(Path(args.output_root))
    refused = None
    try:
        _check_inputs(trials)
    except UserError as e:
        if not args.dry_run:
            raise
        refused = str(e)  # a plan may be drawn up for data or a model not here yet; say what a real run would do
    early = args.early_stop != "none"
    planned = plan(trials, retry_diverged=args.retry_diverged, complete_stopped=not early or args.complete_stopped)
    if args.dry_run:
        print("\n".join(plan_lines(planned)))
        if refused:
            print(f"note: without --dry-run this sweep would stop here: {refused}", file=sys.stderr)
        return 0
    print(plan_lines(planned)[-1], file=sys.stderr)
    return _run(args, planned)


def _run(args, planned) -> int:
    from ..sweep.driver import Resources, SweepResult, outcomes, run_sweep
    from ..sweep.progress import Progress
    from ..sweep.summary import best_rate_lines, outcome_lines
    from .sweep_trial import trial

    to_run = [p for p in planned if p.action in TO_RUN]
    result = SweepResult()
    early = None if args.early_stop == "none" else args.early_stop
    progress = None
    if to_run:
        res = Resources(args.cpus_per_run, args.gpus_per_run, args.address, early, args.max_concurrent, args.max_retries)
        progress = Progress({str(p.trial.path): p.trial.config().epochs for p in to_run})
        result = run_sweep(to_run, trial, res, Path(args.output_root), callbacks=[progress])
    outs = outcomes(to_run, result)
    count = {a: sum(p.action == a for p in planned) for a in (SKIP, SKIP_DIVERGED, SKIP_STOPPED, BUSY)}
    lines = outcome_lines(outs, count[SKIP], count[SKIP_DIVERGED], count[SKIP_STOPPED], count[BUSY])
    lines += progress.warning_lines() if progress is not None else []
    lines += best_rate_lines([p.trial.path for p in planned])
    if args.report_dir:
        from ..report import write_report

        roots = sorted({str(p.trial.path.parent) for p in planned if p.trial.path.is_dir()})  # method folders
        readme = write_report(roots, args.report_dir, overwrite=True)
        lines.append(f"report: {readme}")
    print("\n".join(lines))
    if result.signum is not None:
        return 128 + result.signum
    return 0 if all(o.status in ("done", "stopped", "left alone") for o in outs) else 1
