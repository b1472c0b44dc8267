"""Collect finished runs' test predictions into one GLUE submission zip, checked before it is written.

    python -m bitfit submit runs/cola runs/sst2 runs/mrpc runs/stsb runs/qqp runs/mnli runs/qnli \\
        runs/rte runs/wnli -o glue_submission.zip --data-dir ../shared/glue_data

    from bitfit.submit import collect, write_zip
    files, missing = collect(["runs/rte", "runs/stsb"], data_dir="../shared/glue_data")

Each run folder (made with ``--predict-test``) holds its best epoch's test predictions, named as
GLUE names them (``RTE.tsv``; ``MNLI-m.tsv``, ``MNLI-mm.tsv`` and ``AX.tsv`` from an MNLI run). The
zip gets exactly the GLUE file set, at its root: CoLA, SST-2, MRPC, STS-B, QQP, MNLI-m, MNLI-mm,
QNLI, RTE, WNLI, AX. Before anything is written, every file is checked: the ``index<TAB>prediction``
header; one row per test example (the row count, and the index column in order, of the test file
in the data folder when it is there; GLUE's known counts and index order 0..n-1 otherwise); every label one the server
accepts (label names; 0/1; STS-B scores in [0, 5]). A run that predicted only part of the test set
(``--max-predict-samples``), an unfinished run, two runs for one task, or a missing task is refused
with one line saying which; ``--allow-missing`` zips a partial set on purpose.
"""

from __future__ import annotations

import logging
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

from . import io, preflight, tsv
from .config import default_data_dir
from .data import read_tsv
from .errors import UserError
from .runstate import COMPLETE, read_state
from .tasks import PREDICTIONS_FILE, TASKS, GlueTask, Split, get_task

log = logging.getLogger("bitfit")

# The GLUE server's file set, in its leaderboard order (the diagnostic AX last), and its test sets' sizes.
KNOWN_ROWS = dict(sorted(((s.submission, s.rows) for t in TASKS.values() for s in t.test_splits),
                         key=lambda item: item[0] == "AX.tsv"))
HEADER = "index\tprediction"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed, so the same predictions always make the same zip


def glue_files() -> dict[str, tuple[GlueTask, Split]]:
    """Submission file name -> (task, test split), for every file the GLUE server expects."""
    found = {s.submission: (t, s) for t in TASKS.values() for s in t.test_splits}
    assert set(found) == set(KNOWN_ROWS), "tasks.py and KNOWN_ROWS disagree on the GLUE file set"
    return {name: found[name] for name in KNOWN_ROWS}


@dataclass
class Entry:
    """One checked submission file."""

    file: str
    run: Path
    rows: int
    expected_from: str  # the test file the rows were checked against, or "GLUE's known count and index order"


def _run_task(run: Path) -> tuple[GlueTask, dict]:
    if not run.is_dir():
        raise UserError(f"run folder {str(run)!r} not found; accepted: folders written by run_glue.py --predict-test")
    state = read_state(run)
    if state.status != COMPLETE:
        raise UserError(f"run {str(run)!r} is not complete ({state.reason}); its test predictions, if any, "
                        "are not the best epoch's")
    if (state.saved or {}).get("task_definition") is not None:
        raise UserError(f"run {str(run)!r} trained {state.config.get('task_name')!r}, a task of your own given as files; "
                        "a GLUE submission takes GLUE's tasks only (its test predictions are in "
                        f"{str(run / PREDICTIONS_FILE)!r})")
    return get_task(state.results.get("task") or state.config.get("task_name") or "?"), state.config


def _expected(split: Split, task: GlueTask, file: str, data_dirs: list[Path]) -> tuple[list[str] | None, int, str]:
    """(indices in order or None, row count, where that came from) for one submission file."""
    for root in data_dirs:
        path = root / (split.folder or task.glue_name) / split.tsv
        if path.is_file():
            indices = [e.index for e in read_tsv(path, task, test=True, text_columns=split.text_columns)]
            return indices, len(indices), str(path)
    count = KNOWN_ROWS[file]  # GLUE's test files number their rows 0 .. count-1, in order
    return [str(i) for i in range(count)], count, "GLUE's known count and index order"


def check_file(path: Path, task: GlueTask, indices: list[str] | None, count: int, source: str) -> int:
    """Header, row count, index order (when known) and label format of one prediction file."""
    rows = tsv.read_rows(path)
    header = "\t".join(rows[0][1]) if rows else ""
    if not rows or rows[0][0] != 1 or header != HEADER:
        raise UserError(f"{path}: first line is {header!r}; accepted: {HEADER!r}")
    rows = rows[1:]
    if len(rows) != count:
        raise UserError(f"{path}: {len(rows)} predictions, but the test set has {count} rows ({source}); "
                        "a complete test prediction is needed")
    seen = set()
    for k, (lineno, row) in enumerate(rows):
        if len(row) != 2:
            raise UserError(f"{path}:{lineno}: {len(row)} columns; accepted: index<TAB>prediction")
        index, pred = row
        if indices is not None and index != indices[k]:
            raise UserError(f"{path}:{lineno}: index {index!r}, but the test file has {indices[k]!r} there ({source})")
        if index in seen:
            raise UserError(f"{path}:{lineno}: index {index!r} appears twice")
        seen.add(index)
        if task.is_regression:
            try:
                ok = math.isfinite(float(pred)) and 0.0 <= float(pred) <= 5.0
            except ValueError:
                ok = False
            if not ok:
                raise UserError(f"{path}:{lineno}: prediction {pred!r}; accepted: a score from 0 to 5")
        elif pred not in task.labels:
            raise UserError(f"{path}:{lineno}: prediction {pred!r}; accepted: {', '.join(task.labels)}")
    return len(rows)


def collect(runs, data_dir: str | None = None) -> tuple[dict[str, tuple[Path, Entry]], list[str]]:
    """Check every run's submission files; returns ({file: (path, entry)}, [missing files]).

    Rows are checked against the test files of ``data_dir`` (default ``$GLUE_DIR``), then of the
    folder each run was trained from, and GLUE's known counts for tasks none of them has.
    """
    expected = glue_files()
    found: dict[str, tuple[Path, Entry]] = {}
    owner: dict[str, Path] = {}
    for run in map(Path, runs):
        task, config = _run_task(run)
        if config.get("max_predict_samples"):
            raise UserError(f"run {str(run)!r} predicted only the first {config['max_predict_samples']} test rows "
                            "(--max-predict-samples): not a valid submission")
        if task.name in owner:
            raise UserError(f"two runs for {task.glue_name}: {str(owner[task.name])!r} and {str(run)!r}; accepted: one run per task")
        owner[task.name] = run
        roots = [Path(p) for p in (data_dir or default_data_dir(), config.get("data_dir")) if p]
        for split in task.test_splits:
            path = run / split.submission
            if not path.is_file():
                if split.folder:  # the diagnostic set is optional for a run; AX is then missing
                    log.warning("run %s has no %s (it was trained without the diagnostic set)", run, split.submission)
                    continue
                raise UserError(f"run {str(run)!r} has no {split.submission}: train it with --predict-test")
            indices, count, source = _expected(split, task, split.submission, roots)
            rows = check_file(path, task, indices, count, source)
            found[split.submission] = (path, Entry(split.submission, run, rows, source))
    missing = [f for f in expected if f not in found]
    return {f: found[f] for f in expected if f in found}, missing


def write_zip(out: Path, files: dict[str, tuple[Path, Entry]]) -> None:
    """The files at the zip's root, in GLUE's order, with fixed timestamps; written whole."""

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            for name, (path, _) in files.items():
                info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                z.writestr(info, path.read_bytes())

    io.atomic_write(out, write)


def submit(runs, out: str | os.PathLike, data_dir: str | None = None, allow_missing: bool = False,
           overwrite: bool = False) -> tuple[dict[str, tuple[Path, Entry]], list[str]]:
    """Check, then zip; refuses a partial set unless ``allow_missing``. Returns what ``collect`` did."""
    out = Path(out)
    preflight.check_not_under_a_file(str(out), "output")
    if out.exists() and (out.is_dir() or not overwrite):
        raise UserError(f"output {str(out)!r} exists; accepted: a new .zip path (or --overwrite to replace a file)")
    if not runs:
        raise UserError("no run folders given; accepted: folders written by run_glue.py --predict-test")
    files, missing = collect(runs, data_dir)
    if missing and not allow_missing:
        raise UserError(f"missing {len(missing)} of {len(KNOWN_ROWS)} GLUE files: {', '.join(missing)} "
                        f"(no run given for {', '.join(_tasks_of(missing))}); pass those runs, or --allow-missing to "
                        "zip a partial set on purpose")
    if not files:
        raise UserError("none of the runs has test predictions to zip")
    write_zip(out, files)
    return files, missing


def _tasks_of(files: list[str]) -> list[str]:
    table = glue_files()
    return list(dict.fromkeys(table[f][0].glue_name + (" (diagnostic)" if table[f][1].folder else "") for f in files))


# ---------------------------------------------------------------------------------------------
# A run's own submission files


def format_prediction(task: GlueTask, pred) -> str:
    """A label name as GLUE takes it, or the STS-B score with three decimals clipped to [0, 5]; a task of the user's:
    its class name, or the score as predicted (six significant digits)."""
    if task.is_regression and task.custom:
        return f"{float(pred):.6g}"
    if task.is_regression:
        return f"{min(5.0, max(0.0, float(pred))):.3f}"
    return task.labels[int(pred)]


def write_submission(path: Path, task: GlueTask, examples, preds) -> None:
    """``index<TAB>prediction`` rows in the label format the GLUE server accepts."""
    if len(examples) != len(preds):
        raise RuntimeError(f"{path.name}: {len(preds)} predictions for {len(examples)} test rows")
    lines = [HEADER] + [f"{e.index}\t{format_prediction(task, p)}" for e, p in zip(examples, preds)]
    io.write_text(path, "\n".join(lines) + "\n")
