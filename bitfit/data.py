"""GLUE data: from a folder in the original GLUE TSV layout, or from the datasets hub.

    >>> from bitfit.tasks import get_task
    >>> ds = load_glue(get_task("rte"), "../shared/glue_data")
    >>> ds["train"][0]["texts"], ds["train"][0]["label"]

Each split is a list of ``Example`` (texts, label id / score or None, index). Readers follow GLUE's
processors: tab-separated, no quoting, text and label taken by column position, the label from the
last column where GLUE does (so RTE's train row with an extra tab is read as GLUE reads it).
"""

from __future__ import annotations

import logging
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from . import tsv
from .errors import UserError
from .tasks import GlueTask, Split

log = logging.getLogger(__name__)


@dataclass
class Example:
    texts: tuple[str, ...]
    label: int | float | None  # class id, STS-B score, or None for test rows
    index: str  # GLUE's index column (test rows), or the row number


# ----------------------------------------------------------------------------- local TSV files


def read_tsv(path: Path, task: GlueTask, test: bool, text_columns: tuple[int, ...] | None = None) -> list[Example]:
    """Read one GLUE TSV file; errors name the file, line and what was expected."""
    header = True if test else task.header
    text_cols = text_columns or (task.test_text_columns if test else task.text_columns)
    need = max(text_cols) + 1
    if not test:
        need = max(need, task.label_column + 1 if task.label_column >= 0 else 1)
    label_ids = {name: i for i, name in enumerate(task.labels)} if task.labels else None
    examples: list[Example] = []
    for lineno, row in tsv.read_rows(path):
        if header and lineno == 1:
            continue
        if len(row) < need:
            raise UserError(f"{path}:{lineno}: expected at least {need} tab-separated columns, found {len(row)}")
        texts = tuple(row[c] for c in text_cols)
        if test:
            examples.append(Example(texts, None, row[0]))
            continue
        examples.append(Example(texts, _label(row[task.label_column].strip(), label_ids, path, lineno, task),
                                str(len(examples))))
    return examples


def _label(raw: str, label_ids: dict[str, int] | None, path, lineno: int, task: GlueTask) -> int | float:
    if label_ids is None:
        try:
            score = float(raw)
        except ValueError:
            score = math.nan
        if not 0.0 <= score <= 5.0:  # also refuses nan
            raise UserError(f"{path}:{lineno}: label {raw!r} is not a similarity score; accepted: a number from 0 to 5")
        return score
    if raw not in label_ids:
        raise UserError(f"{path}:{lineno}: unknown label {raw!r}; accepted: {', '.join(task.labels)}")
    return label_ids[raw]


def _split_path(data_dir: Path, task: GlueTask, split: Split | None) -> Path:
    folder = data_dir / (split.folder if split and split.folder else task.glue_name)
    return folder / (split.tsv if split else "train.tsv")


def load_local(task: GlueTask, data_dir: str | os.PathLike, with_test: bool) -> dict[str, list[Example]]:
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"data dir {str(root)!r} is not a folder; expected the GLUE layout, e.g. {root / task.glue_name / 'train.tsv'}")
    wanted: list[tuple[str, Split | None, bool]] = [("train", None, False)]
    wanted += [(s.name, s, False) for s in task.dev_splits]
    if with_test:
        wanted += [(s.name, s, True) for s in task.test_splits]
    out: dict[str, list[Example]] = {}
    for name, split, test in wanted:
        path = _split_path(root, task, split)
        if not path.is_file():
            if split is not None and split.folder:  # the diagnostic set is optional
                log.warning("%s not found: skipping %s", path, split.submission)
                continue
            raise UserError(f"data dir {str(root)!r} has no {path.relative_to(root)} for task {task.glue_name}")
        out[name] = read_tsv(path, task, test, split.text_columns if split else None)
        if not out[name] and name != "train":  # an empty training set is refused by load_glue
            raise UserError(f"{path} has no examples (only a header?); accepted: a {task.glue_name} "
                            f"{'test' if test else 'dev'} file with at least one row")
    return out


# ----------------------------------------------------------------------------- the datasets hub


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if the Hugging Face endpoint answers a TCP connect within ``timeout`` seconds."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_hub(task: GlueTask, with_test: bool) -> dict[str, list[Example]]:
    if not hub_offline() and not hub_reachable():
        raise UserError(
            f"cannot reach the Hugging Face hub to download GLUE {task.glue_name}; pass --data-dir "
            "(or set $GLUE_DIR) to a folder in the GLUE TSV layout, or set HF_DATASETS_OFFLINE=1 to use a cached copy")
    import datasets

    def convert(config: str, split: str, test: bool) -> list[Example]:
        ds = datasets.load_dataset("nyu-mll/glue", config, split=split)
        names = ds.features["label"].names if hasattr(ds.features["label"], "names") else None
        remap = {i: task.labels.index(n) for i, n in enumerate(names)} if (names and task.labels) else None
        out = []
        for i, row in enumerate(ds):
            texts = tuple(row[f] for f in task.hub_text_fields)
            label = None if test else (remap[row["label"]] if remap else float(row["label"]))
            out.append(Example(texts, label, str(row.get("idx", i))))
        return out

    try:
        splits = {"train": convert(task.name, "train", False)}
        splits |= {s.name: convert(task.name, s.hub_split, False) for s in task.dev_splits}
        if with_test:
            splits |= {s.name: convert(s.hub_config or task.name, s.hub_split, True) for s in task.test_splits}
    except (ConnectionError, OSError) as e:
        raise UserError(f"could not load GLUE {task.glue_name} from the hub ({e.__class__.__name__}); pass --data-dir") from None
    return splits


def load_glue(task: GlueTask, data_dir: str | None, with_test: bool = False) -> dict[str, list[Example]]:
    """All splits of a task: train, each dev split, and (``with_test``) each test split."""
    splits = load_local(task, data_dir, with_test) if data_dir else load_hub(task, with_test)
    if not splits["train"]:
        raise UserError(f"the training set of {task.glue_name} is empty" + (f" ({_split_path(Path(data_dir), task, None)})" if data_dir else ""))
    return splits


# ----------------------------------------------------------------------------- tokenization and batches


class Encoded(torch.utils.data.Dataset):
    """A tokenized split: token id lists (unpadded) plus labels; padding happens per batch."""

    def __init__(self, features: list[dict], labels: list | None):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.features[i])
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item

    def lengths(self) -> list[int]:
        return [len(f["input_ids"]) for f in self.features]


def encode(examples: list[Example], tokenizer, max_length: int, regression: bool) -> Encoded:
    """Tokenize a split once (fast tokenizer, batched), truncated to ``max_length``, not padded."""
    columns = list(zip(*(e.texts for e in examples))) if examples else [()]
    enc = tokenizer(*[list(c) for c in columns], truncation=True, max_length=max_length, padding=False)
    keys = list(enc.keys())
    features = [{k: enc[k][i] for k in keys} for i in range(len(examples))]
    labels = None
    if examples and examples[0].label is not None:
        labels = [float(e.label) if regression else int(e.label) for e in examples]
    return Encoded(features, labels)


def collator(tokenizer):
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=None)


class EpochBatches(torch.utils.data.Sampler):
    """Shuffled batches of indices, a fresh order each epoch drawn from (seed, epoch) alone.

    With ``lengths``, batches are length-grouped as Hugging Face's ``group_by_length`` does: the
    shuffled order is cut into mega-batches of ``MEGA`` batches, each sorted by length, then cut
    into batches whose order is shuffled again; padding per batch then costs little.
    """

    MEGA = 50

    def __init__(self, n: int, batch_size: int, seed: int, lengths: list[int] | None = None):
        self.n, self.batch_size, self.seed, self.epoch, self.lengths = n, batch_size, seed, 0, lengths

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        if self.lengths is not None:
            mega = self.MEGA * self.batch_size
            order = [i for k in range(0, self.n, mega)
                     for i in sorted(order[k:k + mega], key=lambda j: -self.lengths[j])]
        batches = [order[i:i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        if self.lengths is not None:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        yield from batches

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


@dataclass
class SortedLoader:
    """A (prepared) loader over a split reordered longest first; ``order[k]`` is the split index of item k."""

    loader: object
    order: np.ndarray

    def restore(self, values: np.ndarray) -> np.ndarray:
        """Values in loader order -> the split's own order."""
        out = np.empty_like(values)
        out[self.order] = values
        return out


def loader_options(num_workers: int, device) -> dict:
    """DataLoader keywords for ``--num-workers`` on ``device``: worker processes (kept across epochs), and
    pinned batches on a GPU (so accelerate's non-blocking copies overlap the computation)."""
    options = {"num_workers": num_workers, "pin_memory": torch.device(device).type == "cuda"}
    return options | ({"persistent_workers": True} if num_workers else {})


def sorted_loader(encoded, batch_size: int, collate, prepare=None, **options) -> SortedLoader:
    """Batches of similar length (longest first, ties in split order); ``prepare``: accelerate's;
    ``options``: DataLoader keywords (``loader_options``)."""
    order = np.array(sorted(range(len(encoded)), key=lambda i: -len(encoded.features[i]["input_ids"])), dtype=np.int64)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(encoded, order.tolist()), batch_size=batch_size,
                                         collate_fn=collate, **options)
    return SortedLoader(prepare(loader) if prepare else loader, order)
