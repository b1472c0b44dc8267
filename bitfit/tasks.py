"""Facts about the GLUE tasks: one frozen row per task, nothing keyed by task name elsewhere.

    >>> from bitfit.tasks import get_task
    >>> get_task("STS-B").metrics
    ('pearson', 'spearmanr')

Column positions follow GLUE's own processors (google-research/bert ``run_classifier.py``,
transformers ``glue.py``): they are indices into tab-separated rows, and ``-1`` means "the last
column", which is how the RTE training row with an extra empty field still gets its label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import UserError


@dataclass(frozen=True)
class Split:
    """One file of a task: where it lives locally, on the hub, and (for test) where predictions go."""

    name: str  # our name, used in metrics.jsonl: "dev", "dev_matched", "test", "ax", ...
    tsv: str  # file inside the task's GLUE folder, e.g. "dev_matched.tsv"
    hub_split: str  # split of nyu-mll/glue, e.g. "validation_matched"
    submission: str | None = None  # GLUE submission file name for test splits, e.g. "MNLI-m.tsv"
    folder: str | None = None  # a different GLUE folder (the diagnostic set lives in "diagnostic")
    hub_config: str | None = None  # a different nyu-mll/glue config ("ax")
    text_columns: tuple[int, ...] | None = None  # TSV text columns, if not the task's (the diagnostic set's)
    rows: int | None = None  # test splits: the GLUE test set's size, which a submission must match


@dataclass(frozen=True)
class GlueTask:
    """Everything the pipeline needs to know about one GLUE task."""

    name: str  # canonical lower-case name: "sst2"
    glue_name: str  # GLUE's spelling and folder name: "SST-2"
    labels: tuple[str, ...] | None  # label names in GLUE's order, written as such to submissions; None: regression
    text_columns: tuple[int, ...]  # train/dev TSV columns holding the text(s)
    label_column: int  # train/dev TSV column holding the label
    test_text_columns: tuple[int, ...]  # test TSV columns holding the text(s); column 0 is the index
    hub_text_fields: tuple[str, ...]  # the same texts' field names in nyu-mll/glue
    metrics: tuple[str, ...]  # reported metrics, the first one picks the best epoch
    dev_splits: tuple[Split, ...]
    test_splits: tuple[Split, ...]
    header: bool = True  # train/dev files start with a header line (CoLA's do not)
    custom: bool = False  # a task of the user's, defined by its files (bitfit.userdata), not one of GLUE's

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def main_dev_split(self) -> str:
        return self.dev_splits[0].name

    @property
    def text_names(self) -> tuple[tuple[str, ...], ...]:
        """Names a header may give this task's text columns, in order: its nyu-mll/glue field names, then the
        generic ones (GLUE's MNLI files say sentence1, sentence2 where the hub says premise, hypothesis)."""
        generic = ("sentence",) if len(self.hub_text_fields) == 1 else ("sentence1", "sentence2")
        return (self.hub_text_fields,) + ((generic,) if generic != self.hub_text_fields else ())


_DEV = (Split("dev", "dev.tsv", "validation"),)


def _test(submission: str, rows: int) -> tuple[Split, ...]:
    return (Split("test", "test.tsv", "test", submission, rows=rows),)


TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask("cola", "CoLA", ("0", "1"), (3,), 1, (1,), ("sentence",), ("mcc", "accuracy"),
                 _DEV, _test("CoLA.tsv", 1063), header=False),
        GlueTask("sst2", "SST-2", ("0", "1"), (0,), 1, (1,), ("sentence",), ("accuracy",),
                 _DEV, _test("SST-2.tsv", 1821)),
        GlueTask("mrpc", "MRPC", ("0", "1"), (3, 4), 0, (3, 4), ("sentence1", "sentence2"),
                 ("f1", "accuracy"), _DEV, _test("MRPC.tsv", 1725)),
        GlueTask("stsb", "STS-B", None, (7, 8), -1, (7, 8), ("sentence1", "sentence2"),
                 ("pearson", "spearmanr"), _DEV, _test("STS-B.tsv", 1379)),
        GlueTask("qqp", "QQP", ("0", "1"), (3, 4), 5, (1, 2), ("question1", "question2"),
                 ("f1", "accuracy"), _DEV, _test("QQP.tsv", 390965)),
        GlueTask("mnli", "MNLI", ("contradiction", "entailment", "neutral"), (8, 9), -1, (8, 9),
                 ("premise", "hypothesis"), ("accuracy",),
                 (Split("dev_matched", "dev_matched.tsv", "validation_matched"),
                  Split("dev_mismatched", "dev_mismatched.tsv", "validation_mismatched")),
                 (Split("test_matched", "test_matched.tsv", "test_matched", "MNLI-m.tsv", rows=9796),
                  Split("test_mismatched", "test_mismatched.tsv", "test_mismatched", "MNLI-mm.tsv", rows=9847),
                  Split("ax", "diagnostic.tsv", "test", "AX.tsv", folder="diagnostic", hub_config="ax",
                        text_columns=(1, 2), rows=1104))),
        GlueTask("qnli", "QNLI", ("entailment", "not_entailment"), (1, 2), -1, (1, 2),
                 ("question", "sentence"), ("accuracy",), _DEV, _test("QNLI.tsv", 5463)),
        GlueTask("rte", "RTE", ("entailment", "not_entailment"), (1, 2), -1, (1, 2),
                 ("sentence1", "sentence2"), ("accuracy",), _DEV, _test("RTE.tsv", 3000)),
        GlueTask("wnli", "WNLI", ("0", "1"), (1, 2), -1, (1, 2), ("sentence1", "sentence2"),
                 ("accuracy",), _DEV, _test("WNLI.tsv", 146)),
    )
}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


_ALIASES = {_key(t.name): t.name for t in TASKS.values()} | {_key(t.glue_name): t.name for t in TASKS.values()}


def get_task(name: str) -> GlueTask:
    """Look a task up by our name or GLUE's spelling (``sst2``, ``SST-2``, ``STS-B``, ``MNLI``...), or a task of the
    user's that this process has been told about (``define``: by a run's files, config.json or delta)."""
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        if name in _DEFINED:
            return _DEFINED[name]
        accepted = ", ".join(TASKS)
        raise UserError(f"unknown task {name!r}; accepted: {accepted} (GLUE spellings such as SST-2, STS-B also work), "
                        "or a task of your own given as files (--train-file, --validation-file)")
    return TASKS[canonical]


# ----------------------------------------------------------------------------- tasks of the user's

# The metrics of a task given as files: the first is the main one unless --main-metric picks another. MSE is reported
# for regression but cannot pick the best epoch (everything that ranks epochs, rates and runs takes higher as better).
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearmanr", "mse")
LOWER_IS_BETTER = frozenset({"mse"})
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PREDICTIONS_FILE = "test_predictions.tsv"  # a task of the user's: the test file's predictions (index<TAB>prediction)

_DEFINED: dict[str, GlueTask] = {}


def check_user_task_name(name: str) -> str:
    """A name for a task given as files: letters, digits, ``_.-`` (it names run folders and report rows), and not
    one of GLUE's (whose data, metrics and submission files are GLUE's)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UserError(f"task name {name!r} for your files is not a plain name; accepted: 1 to 64 letters, digits, "
                        "'_', '.' or '-', starting with a letter or digit")
    if _key(name) in _ALIASES:
        raise UserError(f"task name {name!r} is GLUE's {TASKS[_ALIASES[_key(name)]].glue_name}; with --train-file give "
                        f"your task a name of its own (e.g. {name}_files), or leave the files out to train on GLUE's")
    return name


def user_task(name: str, labels: tuple[str, ...] | None, text_fields: tuple[str, ...],
              main_metric: str | None = None) -> GlueTask:
    """The GlueTask of a task given as files: ``labels`` (class names in id order; None: regression), the names of
    its text columns (one, or a pair), its metrics with ``main_metric`` first."""
    check_user_task_name(name)
    metrics = REGRESSION_METRICS if labels is None else CLASSIFICATION_METRICS
    if main_metric is not None:
        kind = "regression" if labels is None else "classification"
        pick = ", ".join(m for m in metrics if m not in LOWER_IS_BETTER)
        if main_metric in LOWER_IS_BETTER:
            raise UserError(f"main metric {main_metric!r} cannot pick the best epoch (lower is better; it is reported "
                            f"beside the others); accepted for a {kind} task: {pick}")
        if main_metric not in metrics:
            raise UserError(f"main metric {main_metric!r} is not a metric of a {kind} task; accepted: {pick}")
        metrics = (main_metric,) + tuple(m for m in metrics if m != main_metric)
    if not 1 <= len(text_fields) <= 2:
        raise UserError(f"task {name!r}: {len(text_fields)} text columns; accepted: one, or a pair")
    texts = tuple(range(1, len(text_fields) + 1))  # predict's header-less TSV input: an index, then the texts
    return GlueTask(name, name, labels, texts, -1, texts, tuple(text_fields), metrics, _DEV,
                    (Split("test", "", "", PREDICTIONS_FILE),), custom=True)


def task_definition(task: GlueTask) -> dict | None:
    """What a run's config.json and its delta record of a task given as files, so that every later command (predict,
    serve, merge, report, resume, sweep) knows it without the files; None for a GLUE task (its name says it all)."""
    if not task.custom:
        return None
    return {"name": task.name, "labels": list(task.labels) if task.labels is not None else None,
            "text_fields": list(task.hub_text_fields), "metrics": list(task.metrics)}


def define(definition: dict, where: str = "", replace: bool = False) -> GlueTask:
    """The task a ``task_definition`` describes, made known to ``get_task`` in this process; one line if it is not
    a definition, or if the name is already known with other labels, texts or metrics (unless ``replace``: a run's
    own files redefine its name)."""
    task = from_definition(definition, where)
    known = _DEFINED.get(task.name)
    if known is not None and known != task and not replace:
        prefix = f"{where}: " if where else ""
        raise UserError(f"{prefix}task {task.name!r} is defined twice, differently: {task_definition(known)} and "
                        f"{task_definition(task)}; give the two tasks different names (-t)")
    _DEFINED[task.name] = task
    return task


def from_definition(definition: dict, where: str = "") -> GlueTask:
    """The task a ``task_definition`` describes (checked; one line if it is not one), not made known to
    ``get_task``: a delta's task is its own, and two deltas may name different tasks alike."""
    prefix = f"{where}: " if where else ""
    try:
        name, labels, fields, metrics = (definition[k] for k in ("name", "labels", "text_fields", "metrics"))
        ok = (labels is None or (isinstance(labels, list) and len(labels) >= 2
                                 and all(isinstance(x, str) for x in labels) and len(set(labels)) == len(labels))) \
            and isinstance(fields, list) and all(isinstance(x, str) for x in fields) and isinstance(metrics, list)
    except (KeyError, TypeError):
        ok = False
    if not isinstance(definition, dict) or not ok:
        raise UserError(f"{prefix}the task definition {definition!r} is not one; accepted: name, labels (two or more "
                        "class names, or null for regression), text_fields and metrics, as run_glue.py writes them")
    task = user_task(name, tuple(labels) if labels is not None else None, tuple(fields), metrics[0] if metrics else None)
    if list(task.metrics) != metrics:
        raise UserError(f"{prefix}task {name!r}: metrics {metrics} are not a task's of this kind; accepted: "
                        f"{list(task.metrics)} in any order with a main metric first")
    return task


def task_of(definition: dict | None, name: str, where: str = "") -> GlueTask:
    """The task a run or delta records: its definition if it has one (a task of the user's), else GLUE's ``name``."""
    return define(definition, where) if definition is not None else get_task(name)


def dev_main(task: GlueTask, rows: list[dict]) -> float:
    """An epoch's main metric on the main dev split (what picks the best epoch), from its metrics rows."""
    return next(r for r in rows if r["split"] == task.main_dev_split)[task.main_metric]
