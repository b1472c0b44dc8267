"""What a run reads, checked before torch is imported and before any folder is made.

    from bitfit.preflight import check_inputs, local_files
    check_inputs(cfg)                     # one UserError naming the bad path, in milliseconds
    local_files(task, "../shared/glue_data", with_test=True)   # [(split name, Split | None, is_test, path)]

A mistyped ``--data-dir``, a task whose files are missing, a model folder that does not exist or an output
path under a file used to be found after torch, transformers and the run folder's lock (16-41 s, and the
empty parent folders of ``-o`` left behind); here they are one line before any of that. A hub model id is
left to the loader, which fails at once when the hub cannot be reached (``bitfit.models``). Torch-free.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .errors import RunBusy, UserError
from .runlock import LOCK_FILE, holder
from .runstate import read_state
from .tasks import GlueTask, Split, get_task

log = logging.getLogger("bitfit")


def split_path(data_dir: Path, task: GlueTask, split: Split | None) -> Path:
    """Where a split lives in the GLUE layout (``split`` None: the training file)."""
    folder = data_dir / (split.folder if split and split.folder else task.glue_name)
    return folder / (split.tsv if split else "train.tsv")


def local_files(task: GlueTask, data_dir: str | Path, with_test: bool) -> list[tuple[str, Split | None, bool, Path]]:
    """(split name, split, is a test split, file) for every file a run reads from ``data_dir``; refuses a data dir
    that is not a folder or lacks a file the run needs (the diagnostic set is optional: skipped with a warning)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data dir {str(root)!r} is not a folder; expected the GLUE layout, e.g. "
                        f"{root / task.glue_name / 'train.tsv'}")
    wanted: list[tuple[str, Split | None, bool]] = [("train", None, False)]
    wanted += [(s.name, s, False) for s in task.dev_splits]
    if with_test:
        wanted += [(s.name, s, True) for s in task.test_splits]
    found = []
    for name, split, test in wanted:
        path = split_path(root, task, split)
        if not path.is_file():
            if split is not None and split.folder:  # the diagnostic set is optional
                log.warning("%s not found: skipping %s", path, split.submission)
                continue
            raise UserError(f"data dir {str(root)!r} has no {path.relative_to(root)} for task {task.glue_name}")
        found.append((name, split, test, path))
    return found


# ----------------------------------------------------------------------------- a task given as files

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
ACCEPTED_FORMATS = "a .csv, .tsv, .jsonl or .json (JSON Lines) file"
FILE_FLAGS = {"train_file": "--train-file", "validation_file": "--validation-file", "test_file": "--test-file"}


def file_format(path: str | Path) -> str:
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unknown data file type {Path(path).suffix or '(no extension)'!r}; accepted: "
                        f"{ACCEPTED_FORMATS}")
    return kind


def check_files(cfg, flags: dict[str, str] = FILE_FLAGS) -> None:
    """The run's data files exist and have a known extension (before torch, before folders). ``flags`` names each
    file as the user gave it (run_glue's flags by default; a sweep file's keys in a sweep)."""
    for attr, flag in flags.items():
        path = getattr(cfg, attr)
        if path is None:
            continue
        file_format(path)
        p = Path(path)
        if not p.is_file():
            what = "a folder" if p.is_dir() else "not found"
            raise UserError(f"{flag} {path!r}: {what}; accepted: {ACCEPTED_FORMATS}")


def check_output_folder(path: str, overwrite: bool) -> None:
    """Refuse a non-empty output folder (or a file in its place) unless ``overwrite``; writes nothing."""
    p = Path(path)
    check_not_under_a_file(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"output path {path!r} is a file; accepted: a new or empty folder (or --overwrite on a run folder)")
    if p.is_dir() and any(f.name != LOCK_FILE for f in p.iterdir()) and not overwrite:
        state = read_state(p)
        if state.resumable:  # --overwrite would throw its checkpoint away
            raise UserError(f"output folder {path!r} holds a run that can be continued ({state.reason}); pass "
                            "--resume to continue it, or --overwrite to discard it and start again")
        raise UserError(f"output folder {path!r} is not empty; pass --overwrite to write into it")


def check_not_under_a_file(path: str, what: str = "output path") -> None:
    """Refuse a path below an existing file (no folder could be made there); writes nothing."""
    for parent in Path(path).parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UserError(f"{what} {path!r} is under {str(parent)!r}, which is a file; accepted: a path in a folder")
            return


def is_main_process() -> bool:
    """Rank 0 of a launch (``accelerate launch``/``torchrun`` set RANK), or a plain single process."""
    return os.environ.get("RANK", "0") == "0"


def check_inputs(cfg) -> None:
    """A RunConfig's paths: the output folder can be written as asked (new or empty, or --overwrite; a run there
    that can be continued is named, with --resume), the data files exist, the model resolves. ``--resume`` is
    checked against the run's saved settings later, by ``checkpoint.check_resumable``."""
    from .models import resolve_model

    check_not_under_a_file(cfg.output_path)
    if is_main_process():  # under a launch, the others would see the main process's own lock
        pid = holder(cfg.output_path)
        if pid is not None:  # another run writes there now: say so, whatever its files look like so far
            raise RunBusy.holding(cfg.output_path, pid)
        if not cfg.resume:
            check_output_folder(cfg.output_path, cfg.overwrite)
    if cfg.train_file is not None:
        check_files(cfg)
    elif cfg.data_dir is not None:
        local_files(get_task(cfg.task_name), cfg.data_dir, cfg.predict_test)
    resolve_model(cfg.model_name)
