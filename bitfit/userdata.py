"""A task of the user's, given as files: CSV, TSV or JSON Lines, classification or regression.

    python run_glue.py -t tickets --train-file train.csv --validation-file dev.csv --test-file test.csv --predict-test

``load_files(cfg)`` reads the three files once and returns the task (``tasks.user_task``: its labels from the training
file, classification or regression from the labels, its text columns by name) and its splits as ``data.Example``
lists, exactly as ``data.load_glue`` returns GLUE's; everything after that is the same code for both.

Files are read here rather than with ``datasets.load_dataset("csv")``: its pandas reader infers each column's type
(``"01"`` becomes 1, ``"1.0"`` a float), which is what the label inference below must see as written, and it keeps
no line numbers, which every error about a row names. The formats, by extension:

- ``.csv``: RFC 4180 (quoted fields may hold commas, quotes and newlines), a header line first;
- ``.tsv``: tab-separated with a header line, nothing quoted (GLUE's convention; ``bitfit.tsv`` reads it);
- ``.jsonl`` / ``.json``: one JSON object per line (what ``datasets``' ``to_json`` writes).

Labels: all numbers, at least one with a fractional part (``3.8``): regression; otherwise classes (names or integers),
ids given in sorted order (integers numerically). ``--task-type`` overrides. Class names are the label values as
written (an integer from JSON as its digits).
"""

from __future__ import annotations

import csv
import io as _io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from . import tsv
from .errors import UserError
from .preflight import check_files, file_format
from .tasks import GlueTask, user_task

log = logging.getLogger("bitfit")

NO_LABEL = ("", "-1")  # a test row's label column may say "no label" so (datasets writes test splits with -1), or null
TASK_TYPES = ("classification", "regression")
ID_COLUMNS = ("id", "idx", "index")  # a test file's id column, the first of these it has (or --id-column)
# Text columns by name, GLUE's first (as Hugging Face's run_glue.py looks for them), then "text"; else the first one
# or two columns holding text.
TEXT_NAMES = (("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"), ("premise", "hypothesis"),
              ("sentence",), ("text",))


@dataclass
class Table:
    """One file: its column names (in order) and its rows as (line number, {column: value})."""

    path: Path
    columns: list[str]
    rows: list[tuple[int, dict]]


def read_table(path: str | Path) -> Table:
    """Every non-blank row of a CSV, TSV or JSON Lines file; one line naming file:line for anything malformed, and
    for a file that is not what its extension says."""
    path = Path(path)
    kind = file_format(path)
    text = tsv.read_text(path)  # UTF-8 (a BOM dropped), else one line naming the byte
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not first:
        raise UserError(f"{path} is empty; accepted: {_layout(kind)}")
    if kind == "jsonl":
        return _read_jsonl(path, text, first)
    if first.startswith("{"):
        raise UserError(f"{path}: its first line is a JSON object, not a {kind.upper()} header: is it JSON Lines? "
                        "Name it .jsonl")
    if kind == "tsv":
        rows = tsv.parse_rows(text)
    else:
        rows = _csv_rows(path, text)
    (_, header), body = rows[0], rows[1:]
    columns = [h.strip() for h in header]
    if kind == "csv" and len(columns) == 1 and "\t" in columns[0]:
        raise UserError(f"{path}:{rows[0][0]}: the header is one column holding tabs: is it tab-separated? Name it .tsv")
    if kind == "tsv" and len(columns) == 1 and "," in columns[0]:
        raise UserError(f"{path}:{rows[0][0]}: the header is one column holding commas: is it comma-separated? "
                        "Name it .csv")
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes or "" in columns:
        raise UserError(f"{path}:{rows[0][0]}: the header {'names ' + repr(dupes[0]) + ' twice' if dupes else 'has an empty column name'}"
                        f"; accepted: a header line naming each column once")
    out = []
    for lineno, row in body:
        if len(row) != len(columns):
            raise UserError(f"{path}:{lineno}: {len(row)} columns, but the header names {len(columns)} "
                            f"({', '.join(columns)})")
        out.append((lineno, dict(zip(columns, row))))
    return Table(path, columns, out)


def _layout(kind: str) -> str:
    return {"csv": "a header line, then one row per example", "tsv": "a header line, then one row per example",
            "jsonl": "one JSON object per line"}[kind]


def _csv_rows(path: Path, text: str) -> list[tuple[int, list[str]]]:
    """(first line number, fields) of each non-blank CSV record (a quoted field may span lines)."""
    reader = csv.reader(_io.StringIO(text, newline=""), strict=True)
    out, start = [], 1
    try:
        for row in reader:
            if any(c.strip() for c in row):
                out.append((start, row))
            start = reader.line_num + 1
    except csv.Error as e:
        raise UserError(f"{path}:{start}: not valid CSV ({e}); accepted: comma-separated fields, quoted with \" "
                        "where they hold commas, quotes or line breaks") from None
    return out


def _read_jsonl(path: Path, text: str, first: str) -> Table:
    if first.startswith("["):
        raise UserError(f"{path}: a JSON array, not JSON Lines; accepted: one JSON object per line (e.g. datasets' "
                        "Dataset.to_json, or pandas' to_json(orient='records', lines=True))")
    columns: dict[str, None] = {}
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except RecursionError:
            raise UserError(f"{path}:{lineno}: JSON nested too deeply; accepted: one flat JSON object per line") from None
        except ValueError as e:
            hint = " (is it CSV? Name it .csv)" if not rows else ""
            raise UserError(f"{path}:{lineno}: not JSON ({str(e).split(':')[0]}){hint}; accepted: one JSON object "
                            "per line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}:{lineno}: a JSON {type(obj).__name__}, not an object; accepted: one JSON object "
                            "per line")
        columns.update(dict.fromkeys(obj))
        rows.append((lineno, obj))
    return Table(path, list(columns), rows)


# ----------------------------------------------------------------------------- columns


def _is_number(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    if isinstance(value, str):
        try:
            return math.isfinite(float(value))
        except ValueError:
            return False
    return False


def text_columns(table: Table, given: list[str] | None, label: str, ident: str | None) -> tuple[str, ...]:
    """The text columns: ``given`` (checked), else GLUE's names (``TEXT_NAMES``), else the first one or two columns
    holding text (other than the label and id columns)."""
    if given:
        if not 1 <= len(given) <= 2:
            raise UserError(f"--text-columns {' '.join(given)}: {len(given)} columns; accepted: one column, or two "
                            "(a pair)")
        for c in given:
            _need_column(table, c, "--text-columns")
        if label in given:
            raise UserError(f"--text-columns names the label column {label!r}; accepted: the columns holding the text")
        return tuple(given)
    for names in TEXT_NAMES:
        if all(n in table.columns for n in names):
            return names
    rows = [r for _, r in table.rows[:1000]]
    texty = [c for c in table.columns if c not in (label, ident)
             and any(isinstance(r.get(c), str) and r.get(c).strip() and not _is_number(r.get(c)) for r in rows)]
    if not texty:
        raise UserError(f"{table.path}: no column holding text (columns: {', '.join(table.columns)}); pass "
                        "--text-columns COLUMN [COLUMN]")
    return tuple(texty[:2])


def _need_column(table: Table, column: str, flag: str) -> None:
    if column not in table.columns:
        raise UserError(f"{table.path}: no column {column!r} ({flag}); its columns: {', '.join(table.columns)}")


def _value(table: Table, lineno: int, row: dict, column: str, what: str):
    if column not in row or row[column] is None:
        raise UserError(f"{table.path}:{lineno}: no {what} (column {column!r} is missing or null)")
    return row[column]


def _texts(table: Table, lineno: int, row: dict, columns: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for c in columns:
        v = _value(table, lineno, row, c, f"text {c!r}")
        if isinstance(v, (dict, list)):
            raise UserError(f"{table.path}:{lineno}: text {c!r} is a JSON {type(v).__name__}; accepted: a string")
        out.append(v if isinstance(v, str) else json.dumps(v))
    return tuple(out)


# ----------------------------------------------------------------------------- labels


def _label_kind(value) -> str:
    """'float' (a number with a fractional part), 'int' (a whole number), 'name', or 'empty'."""
    if isinstance(value, bool) or isinstance(value, (dict, list)):
        return "name"
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return "empty"
        try:
            x = float(text)
        except ValueError:
            return "name"
        if not math.isfinite(x):
            return "name"
        return "int" if x == int(x) and not any(ch in text for ch in ".eE") else "float"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float" if math.isfinite(value) and value != int(value) else ("int" if math.isfinite(value) else "name")
    return "name"


def _class_name(value) -> str:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return str(int(value))
    return json.dumps(value)


def infer_labels(table: Table, column: str, task_type: str | None) -> tuple[str, ...] | None:
    """The training file's class names in id order, or None for regression (see the module's doc)."""
    kinds: dict[str, int] = {}  # kind -> first line with it
    for lineno, row in table.rows:
        kind = _label_kind(_value(table, lineno, row, column, "label"))
        if kind == "empty":
            raise UserError(f"{table.path}:{lineno}: empty label (column {column!r}); every training row needs one")
        kinds.setdefault(kind, lineno)
    numbers = {"int", "float"} & set(kinds)
    if task_type is None and "name" in kinds and numbers:
        n = min(numbers, key=kinds.get)
        raise UserError(f"{table.path}: mixed label types in column {column!r}: a name at line {kinds['name']}, a "
                        f"number at line {kinds[n]}; accepted: all numbers or all names, or --task-type "
                        "classification to read them all as class names")
    regression = task_type == "regression" or (task_type is None and "float" in kinds)  # names + numbers: refused
    if regression:
        if "name" in kinds:
            raise UserError(f"{table.path}:{kinds['name']}: label {_class_name(_label_at(table, kinds['name'], column))!r} "
                            "is not a number; accepted: numbers, for --task-type regression")
        return None
    names = sorted({_class_name(r[column]) for _, r in table.rows},
                   key=lambda n: (0, float(n), n) if set(kinds) <= {"int"} else (1, 0.0, n))
    bad = next((n for n in names if not n or any(ch in n for ch in "\t\r\n")), None)
    if bad is not None:
        line = next(k for k, r in table.rows if _class_name(r[column]) == bad)
        raise UserError(f"{table.path}:{line}: label {bad!r} holds a tab or line break; accepted: class names that fit "
                        "one TSV field (they are written to predictions files)")
    if len(names) < 2:
        raise UserError(f"{table.path}: a single class ({names[0]!r}, {len(table.rows)} rows) in column {column!r}; "
                        "a classifier needs at least two (for scores, --task-type regression)")
    return tuple(names)


def _label_at(table: Table, lineno: int, column: str):
    return next(r[column] for n, r in table.rows if n == lineno)


def _label(table: Table, lineno: int, row: dict, column: str, ids: dict[str, int] | None):
    value = _value(table, lineno, row, column, "label")
    if ids is None:
        if not _is_number(value):
            raise UserError(f"{table.path}:{lineno}: label {value!r} is not a number; accepted: a finite number "
                            "(the task is regression)")
        return float(value)
    name = _class_name(value)
    if name not in ids:
        shown = ", ".join(list(ids)[:20]) + (", ..." if len(ids) > 20 else "")
        raise UserError(f"{table.path}:{lineno}: label {name!r} is not one of the training file's classes; "
                        f"accepted: {shown}")
    return ids[name]


# ----------------------------------------------------------------------------- the task and its splits


def load_files(cfg) -> tuple[GlueTask, dict[str, list]]:
    """The task the files define and its splits (train, dev, and test with --predict-test), as ``data.load_glue``."""
    from .data import Example

    check_files(cfg)
    label = cfg.label_column or "label"
    train = read_table(cfg.train_file)
    if not train.rows:
        raise UserError(f"{train.path} has no rows (only a header?); accepted: {_layout(file_format(train.path))}")
    _need_column(train, label, "--label-column")
    ident = cfg.id_column or next((c for c in ID_COLUMNS if c in train.columns), None)
    texts = text_columns(train, cfg.text_columns, label, ident)
    labels = infer_labels(train, label, cfg.task_type)
    task = user_task(cfg.task_name, labels, texts, cfg.main_metric)
    ids = {n: i for i, n in enumerate(labels)} if labels is not None else None
    kind = "regression" if labels is None else f"classification into {len(labels)} classes"
    log.info("task %s from %s: %s; text%s %s; label column %r", task.name, train.path, kind,
             "s" * (len(texts) > 1), " + ".join(map(repr, texts)), label)
    splits = {"train": _examples(train, texts, label, ids)}
    dev = read_table(cfg.validation_file)
    for c in texts + (label,):
        _need_column(dev, c, "--label-column" if c == label else "--text-columns")
    if not dev.rows:
        raise UserError(f"{dev.path} has no rows (only a header?); accepted: {_layout(file_format(dev.path))}")
    splits["dev"] = _examples(dev, texts, label, ids)
    if cfg.predict_test:
        test = read_table(cfg.test_file)
        for c in texts:
            _need_column(test, c, "--text-columns")
        if not test.rows:
            raise UserError(f"{test.path} has no rows (only a header?); accepted: {_layout(file_format(test.path))}")
        tid = cfg.id_column or next((c for c in ID_COLUMNS if c in test.columns), None)
        if cfg.id_column:
            _need_column(test, cfg.id_column, "--id-column")
        splits["test"] = [Example(_texts(test, n, r, texts), None, _ident(test, n, r, tid, k), str(test.path))
                          for k, (n, r) in enumerate(test.rows)]
        for n, r in test.rows:  # labels are not needed; one given must still be one of the task's
            if r.get(label) is not None and str(r[label]).strip() not in NO_LABEL:
                _label(test, n, r, label, ids)
        if tid is not None:
            seen: dict[str, int] = {}
            for (n, _), e in zip(test.rows, splits["test"]):
                if e.index in seen:
                    raise UserError(f"{test.path}:{n}: id {e.index!r} appears twice (first at line {seen[e.index]}); "
                                    f"accepted: one row per id in column {tid!r}")
                seen[e.index] = n
    return task, splits


def _ident(table: Table, lineno: int, row: dict, column: str | None, k: int) -> str:
    if column is None:
        return str(k)
    value = _value(table, lineno, row, column, "id")
    text = value if isinstance(value, str) else json.dumps(value)
    if not text.strip() or any(ch in text for ch in "\t\r\n"):
        raise UserError(f"{table.path}:{lineno}: id {text!r} is empty or holds a tab or line break; accepted: an id "
                        "that fits one TSV field")
    return text


def _examples(table: Table, texts: tuple[str, ...], label: str, ids) -> list:
    from .data import Example

    return [Example(_texts(table, n, r, texts), _label(table, n, r, label, ids), str(k), str(table.path))
            for k, (n, r) in enumerate(table.rows)]
