"""A sweep's grid: tasks x methods (with their rates and epochs) x seeds x training-set sizes -> trials.

    from bitfit.sweep.grid import Sweep, expand
    sweep = Sweep.from_dict({"tasks": ["rte"], "methods": ["bitfit", "bitfit:query,intermediate"],
                             "learning_rates": ["1e-4", "1e-3"], "seeds": [0, 1],
                             "settings": {"model_name": "minilm", "data_dir": "glue"}}, out="runs")
    trials = expand(sweep)      # 8 trials; trials[0].path == runs/minilm/full/rte/bitfit/lr1e-4_seed0

The run-folder tree is ``OUT/<model>/<full|nSIZE>/<task>/<method folder>/lr<LR>_seed<S>`` (the same as
the old scripts'), so a run two sweeps share is trained once. A task is a GLUE name, or (in the YAML form) a
mapping describing a task of the user's given as files, ``{name: reviews, train_file: ..., validation_file: ...}``,
whose folder is its name. A method is a fine-tune type, or
``bitfit:ROLE,ROLE`` for BitFit on some bias roles (folder ``bitfit_ROLE_ROLE``). Every trial's
settings are checked by building its ``RunConfig`` before anything runs. Torch-free.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..config import FILE_OPTIONS, MAIN_METRICS, RunConfig
from ..errors import UserError
from ..methods import METHODS, check_bias_terms
from ..tasks import CLASSIFICATION_METRICS, REGRESSION_METRICS, TASKS, check_user_task_name, get_task

# RunConfig fields a sweep sets per trial (plural on its command line, or decided from the run's state)
PER_TRIAL = ("task_name", "fine_tune_type", "bias_terms", "learning_rate", "seed", "max_train_samples",
             "output_path", "resume", "overwrite")
GRID_KEYS = ("tasks", "methods", "learning_rates", "epochs", "seeds", "sizes", "settings")
SETTINGS = {f.name for f in dataclasses.fields(RunConfig)} - set(PER_TRIAL)
# A task of the user's in the YAML's tasks: (a mapping): its name, and the RunConfig settings of its files
FILE_KEYS = ("train_file", "validation_file", "test_file")
TASK_KEYS = ("name",) + FILE_KEYS + FILE_OPTIONS
TASK_FORM = "{name: reviews, train_file: train.csv, validation_file: dev.csv}"


def lr_text(value) -> str:
    """A learning rate as its folder names it: ``1e-3``, ``2e-5``, ``7e-4``, ``1.5e-3`` (the scripts' spelling)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"learning rate {value!r} is not a number; accepted: numbers such as 1e-3") from None
    if not (math.isfinite(x) and 0 < x <= 1):
        raise UserError(f"learning rate {value!r} is out of range; accepted: 0 < lr <= 1")
    mantissa, exponent = f"{x:.12e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def size_value(value) -> int | None:
    """``full`` (or None) -> None; a whole number of examples >= 1 -> int."""
    if value is None or str(value).strip().lower() == "full":
        return None
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"training-set size {value!r} is not accepted: give 'full' or a whole number of examples >= 1")
    return int(text)


def seed_value(value) -> int:
    if isinstance(value, bool) or not str(value).strip().isdigit():
        raise UserError(f"seed {value!r} is not accepted: give whole numbers >= 0")
    return int(str(value).strip())


@dataclass(frozen=True)
class Method:
    """One method of the grid: ``bitfit``, ``full_ft``, ``bitfit:query,intermediate``, ..."""

    spec: str
    fine_tune_type: str
    bias_terms: tuple[str, ...] | None = None

    @property
    def folder(self) -> str:
        return "_".join((self.fine_tune_type,) + (self.bias_terms or ()))


def parse_method(spec: str) -> Method:
    """``NAME`` (a fine-tune type) or ``bitfit:ROLE,ROLE`` (BitFit on those bias roles)."""
    name, _, options = str(spec).strip().partition(":")
    if name not in METHODS:
        raise UserError(f"unknown method {spec!r}; accepted: {', '.join(METHODS)}, or bitfit:ROLE,ROLE "
                        "(e.g. bitfit:query,intermediate)")
    if not options:
        return Method(str(spec).strip(), name)
    if name != "bitfit":
        raise UserError(f"method {spec!r}: only bitfit takes options after ':' (bias roles); for other methods' "
                        "options pass their run_glue.py flag (e.g. --rand-budget)")
    terms = [t for t in options.replace(" ", ",").split(",") if t]
    return Method(f"bitfit:{','.join(terms)}", name, tuple(check_bias_terms(terms)))


@dataclass(frozen=True)
class MethodGrid:
    """A method with its learning rates and epoch count (None: the sweep's, else run_glue.py's default)."""

    method: Method
    learning_rates: tuple[str, ...]
    epochs: int | None = None


@dataclass
class Sweep:
    tasks: list[str]
    methods: list[MethodGrid]
    seeds: list[int]
    sizes: list[int | None]
    settings: dict  # RunConfig fields shared by every trial (any run_glue.py flag)
    out: Path
    task_files: dict[str, dict] = field(default_factory=dict)  # a task of the user's -> its files' RunConfig settings

    @classmethod
    def from_dict(cls, spec: dict, out: str | os.PathLike) -> Sweep:
        """The YAML/preset form: tasks, methods (names, or name -> {learning_rates, epochs}), learning_rates,
        epochs, seeds, sizes, settings. A value of the wrong type is one line naming its key."""
        unknown = sorted(set(spec) - set(GRID_KEYS), key=str)
        if unknown:
            raise UserError(f"unknown sweep key {unknown[0]!r}; accepted: {', '.join(GRID_KEYS)}")
        lrs = spec.get("learning_rates")
        epochs = epochs_value(spec["epochs"], "epochs") if spec.get("epochs") is not None else None
        methods = [_method_grid(name, opts, lrs, epochs) for name, opts in method_items(spec.get("methods"))]
        settings = settings_value(spec.get("settings"))
        per_task = sorted(set(settings) & set(TASK_KEYS), key=TASK_KEYS.index)
        if per_task:
            raise UserError(f"setting {per_task[0]!r} (--{per_task[0].replace('_', '-')}) belongs to one task of the "
                            f"sweep; accepted: a task of your own as a mapping in the sweep file's tasks:, e.g. "
                            f"tasks: [rte, {TASK_FORM}] (docs/SWEEPS.md)")
        bad = sorted(set(settings) - SETTINGS, key=str)
        if bad:
            raise UserError(f"unknown or per-trial setting {bad[0]!r} in the sweep's settings; accepted: "
                            f"{', '.join(sorted(SETTINGS - set(TASK_KEYS)))} (tasks, methods, rates, seeds and sizes "
                            "are grid keys)")
        tasks, task_files = task_entries(_listed(spec, "tasks"))
        return cls(tasks=tasks, methods=methods,
                   seeds=[seed_value(s) for s in as_list(spec.get("seeds", [0]), "seeds")],
                   sizes=[size_value(s) for s in as_list(spec.get("sizes", [None]), "sizes")], settings=dict(settings),
                   out=Path(out), task_files=task_files)


def settings_value(value) -> dict:
    """The sweep's ``settings:``: a mapping (or nothing), else one line."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"sweep key 'settings' is a {type(value).__name__}; accepted: a mapping of run_glue.py "
                        "settings, e.g. settings: {batch_size: 8, max_seq_length: 128}")
    return value


def as_list(value, key: str) -> list:
    """A list as given, a single value as a list of one; a mapping is refused naming ``key``."""
    if isinstance(value, dict):
        raise UserError(f"sweep key {key!r} is a mapping; accepted: a list (e.g. {key}: [a, b]) or a single value")
    return list(value) if isinstance(value, (list, tuple)) else [value]


def task_entries(entries: list) -> tuple[list[str], dict[str, dict]]:
    """The sweep's tasks: GLUE names, and tasks of the user's given as files (mappings); returns the task names in
    order (a GLUE task listed twice is one) and, per task of the user's, the RunConfig settings of its files."""
    names: list[str] = []
    files: dict[str, dict] = {}
    for entry in entries:
        if isinstance(entry, dict):
            name, settings = task_entry(entry)
            if name in files:
                raise UserError(f"sweep key 'tasks' has two tasks named {name!r}; accepted: one entry per name "
                                "(give each task of your own a name of its own)")
            files[name] = settings
            names.append(name)
        elif isinstance(entry, str):
            name = glue_task_name(entry)
            if name not in names:
                names.append(name)
        else:
            raise UserError(f"sweep key 'tasks' has {entry!r}; accepted: GLUE task names, or a task of your own as a "
                            f"mapping, e.g. {TASK_FORM}")
    return names, files


def glue_task_name(name: str) -> str:
    """A GLUE task's name (any of its spellings); anything else is one line saying where a task of one's own goes."""
    accepted = (f"accepted: {', '.join(TASKS)} (GLUE spellings such as SST-2, STS-B also work); a task of your own "
                f"given as files goes in the sweep file's tasks: as a mapping, e.g. {TASK_FORM} (docs/SWEEPS.md)")
    try:
        task = get_task(name)
    except UserError:
        task = None
    if task is None or task.custom:  # one known in this process from a run's files still needs its files here
        raise UserError(f"task {name!r} is not a GLUE task; {accepted}")
    return task.name


def task_entry(entry: dict) -> tuple[str, dict]:
    """A task of the user's, ``{name, train_file, validation_file, [test_file, text_columns, label_column, id_column,
    task_type, main_metric]}``: its name and its trials' RunConfig settings (checked again by ``RunConfig``)."""
    unknown = sorted((k for k in entry if k not in TASK_KEYS), key=str)
    if unknown:
        raise UserError(f"sweep key 'tasks' has a task with unknown key {unknown[0]!r}; accepted: "
                        f"{', '.join(TASK_KEYS)} (name, train_file and validation_file required)")
    name = entry.get("name")
    if name is None:
        raise UserError(f"sweep key 'tasks' has a task without a name: {entry!r}; accepted: a mapping with name, "
                        f"train_file and validation_file, e.g. {TASK_FORM}")
    if not isinstance(name, str):
        raise UserError(f"sweep key 'tasks' has a task named {name!r}; accepted: a name (text) of 1 to 64 letters, "
                        "digits, '_', '.' or '-'")
    try:
        glue = get_task(name)
    except UserError:
        glue = None
    if glue is not None and not glue.custom:
        raise UserError(f"sweep key 'tasks' has task {name!r} with files, but {name!r} is GLUE's {glue.glue_name}; "
                        f"accepted: the name alone (- {glue.name}) for GLUE's data, or a name of your own for your "
                        f"files (e.g. {name}_files)")
    check_user_task_name(name)
    missing = [k for k in ("train_file", "validation_file") if entry.get(k) is None]
    if missing:
        raise UserError(f"task {name!r} in the sweep's tasks has no {missing[0]}; accepted: a task given as files "
                        f"needs train_file and validation_file, e.g. {TASK_FORM}")
    settings = {}
    for key in TASK_KEYS[1:]:
        value = entry.get(key)
        if value is None:
            continue
        if key == "text_columns":
            value = as_list(value, f"tasks.{name}.text_columns")
            if not 1 <= len(value) <= 2 or not all(isinstance(v, str) and v for v in value):
                raise UserError(f"task {name!r} in the sweep's tasks has text_columns {entry[key]!r}; accepted: one "
                                "column name, or a list of two (a pair)")
        elif not isinstance(value, str) or not value.strip():
            what = "a file path" if key in FILE_KEYS else "a column name" if key.endswith("_column") else "a name"
            raise UserError(f"task {name!r} in the sweep's tasks has {key} {value!r}; accepted: {what} (text)")
        settings[key] = value
    task_type = RunConfig.__dataclass_fields__["task_type"].metadata["choices"]
    if settings.get("task_type") not in (None, *task_type):
        raise UserError(f"task {name!r} in the sweep's tasks has task_type {settings['task_type']!r}; accepted: "
                        f"{' or '.join(task_type)}")
    if settings.get("main_metric") not in (None, *MAIN_METRICS):
        raise UserError(f"task {name!r} in the sweep's tasks has main_metric {settings['main_metric']!r}; accepted: "
                        f"{', '.join(CLASSIFICATION_METRICS[:-1])} or {CLASSIFICATION_METRICS[-1]} (classification), "
                        f"{' or '.join(m for m in REGRESSION_METRICS if m in MAIN_METRICS)} (regression)")
    # its test file is predicted: --predict-test on the runs that have one, and only on those
    settings["predict_test"] = settings.get("test_file") is not None
    settings["data_dir"] = None  # GLUE's folder is for the GLUE tasks of the sweep
    return name, settings


def epochs_value(value, key: str) -> int:
    """A whole number of epochs >= 1 (``2.5``, ``two``, ``true`` are refused, naming ``key``)."""
    text = str(value).strip()
    if isinstance(value, bool) or isinstance(value, float) or not text.isdigit() or int(text) < 1:
        raise UserError(f"sweep key {key!r} has {value!r}; accepted: a whole number of epochs >= 1")
    return int(text)


def _listed(spec: dict, key: str) -> list:
    values = spec.get(key)
    if not values:
        raise UserError(f"the sweep needs {key}: give --{key.replace('_', '-')} (or {key}: in the YAML file, or a --preset)")
    return as_list(values, key)


def method_items(methods) -> list[tuple[str, dict]]:
    if not methods:
        raise UserError("the sweep needs methods: give --methods (or methods: in the YAML file, or a --preset)")
    if isinstance(methods, dict):
        items = list(methods.items())
    else:
        items = []
        for m in methods if isinstance(methods, (list, tuple)) else [methods]:
            items += list(m.items()) if isinstance(m, dict) else [(m, {})]
    for name, opts in items:
        if not isinstance(name, str):
            raise UserError(f"sweep key 'methods' has {name!r}; accepted: method names such as bitfit, full_ft, "
                            "bitfit:query,intermediate")
        if opts is not None and not isinstance(opts, dict):
            raise UserError(f"sweep key 'methods.{name}' has {opts!r}; accepted: nothing, or a mapping with "
                            "learning_rates and epochs (e.g. {learning_rates: [1e-4, 1e-3], epochs: 16})")
    return [(name, opts or {}) for name, opts in items]


def _method_grid(name: str, opts: dict, lrs, epochs) -> MethodGrid:
    bad = sorted(set(opts) - {"learning_rates", "epochs"})
    if bad:
        raise UserError(f"method {name!r}: unknown key {bad[0]!r}; accepted: learning_rates, epochs")
    rates = opts.get("learning_rates", lrs)
    if not rates:
        raise UserError(f"method {name!r} has no learning rates: give --learning-rates (or learning_rates:)")
    rates = as_list(rates, f"methods.{name}.learning_rates" if "learning_rates" in opts else "learning_rates")
    own = opts.get("epochs")
    epochs = epochs_value(own, f"methods.{name}.epochs") if own is not None else epochs
    return MethodGrid(parse_method(name), tuple(dict.fromkeys(lr_text(r) for r in rates)), epochs)


def model_slug(model: str) -> str:
    """The model's folder in the tree: a local folder's name, or the hub id with '/' -> '_'."""
    return Path(model).name if os.path.isdir(model) else model.replace("/", "_")


@dataclass(frozen=True)
class Trial:
    """One run of the grid: where it goes and its settings (RunConfig keyword arguments, without resume/overwrite)."""

    path: Path
    settings: dict = field(hash=False)

    def config(self, resume: bool = False, overwrite: bool = False) -> RunConfig:
        return RunConfig(**self.settings, resume=resume, overwrite=overwrite)


def expand(sweep: Sweep) -> list[Trial]:
    """Every trial, seeds outermost (a first seed of the whole grid finishes first), each checked."""
    model = sweep.settings.get("model_name") or RunConfig.__dataclass_fields__["model_name"].default
    trials = []
    for seed in sweep.seeds:
        for size in sweep.sizes:
            for task in sweep.tasks:
                for mg in sweep.methods:
                    for lr in mg.learning_rates:
                        path = (sweep.out / model_slug(model) / ("full" if size is None else f"n{size}") / task
                                / mg.method.folder / f"lr{lr}_seed{seed}")
                        trials.append(_trial(sweep, mg, task, lr, seed, size, path))
    return list(dict.fromkeys(trials))  # a method listed twice is one run


def _trial(sweep: Sweep, mg: MethodGrid, task: str, lr: str, seed: int, size: int | None, path: Path) -> Trial:
    settings = dict(sweep.settings, **sweep.task_files.get(task, {}), task_name=task,
                    fine_tune_type=mg.method.fine_tune_type,
                    bias_terms=list(mg.method.bias_terms) if mg.method.bias_terms else None,
                    learning_rate=float(lr), seed=seed, max_train_samples=size, output_path=str(path))
    if mg.epochs is not None:
        settings["epochs"] = int(mg.epochs)
    trial = Trial(path, settings)
    trial.config()  # every setting checked now, before anything runs (UserError names the bad value)
    return trial
