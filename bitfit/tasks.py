"""Facts about the GLUE tasks: one frozen row per task, nothing keyed by task name elsewhere.

    >>> from bitfit.tasks import get_task
    >>> get_task("STS-B").metrics
    ('pearson', 'spearmanr')

Column positions follow GLUE's own processors (google-research/bert ``run_classifier.py``,
transformers ``glue.py``): they are indices into tab-separated rows, and ``-1`` means "the last
column", which is how the RTE training row with an extra empty field still gets its label.
"""

from __future__ import annotations

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
    """Look a task up by our name or GLUE's spelling (``sst2``, ``SST-2``, ``STS-B``, ``MNLI``...)."""
    canonical = _ALIASES.get(_key(name))
    if canonical is None:
        accepted = ", ".join(TASKS)
        raise UserError(f"unknown task {name!r}; accepted: {accepted} (GLUE spellings such as SST-2, STS-B also work)")
    return TASKS[canonical]


def dev_main(task: GlueTask, rows: list[dict]) -> float:
    """An epoch's main metric on the main dev split (what picks the best epoch), from its metrics rows."""
    return next(r for r in rows if r["split"] == task.main_dev_split)[task.main_metric]
