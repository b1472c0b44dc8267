"""GLUE data: from a folder in the original GLUE TSV layout, or from the datasets hub.

    >>> from bitfit.tasks import get_task
    >>> ds = load_glue(get_task("rte"), "../shared/glue_data")
    >>> ds["train"][0].texts, ds["train"][0].label

Each split is a list of ``Example`` (texts, label id / score or None, index, source file). Readers follow
GLUE's processors: tab-separated, no quoting, text and label taken by column position, the label from the
last column where GLUE does (so RTE's train row with an extra tab is read as GLUE reads it); a header that
names the texts elsewhere, or a split of one class, is worth a warning, not an error. ``encode`` cuts what
truncation would drop before tokenizing, so a text of any length costs about what a normal one does.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import hub, tsv
from .errors import UserError
from .preflight import local_files, split_path
from .tasks import GlueTask

log = logging.getLogger(__name__)


@dataclass
class Example:
    texts: tuple[str, ...]
    label: int | float | None  # class id, STS-B score, or None for test rows
    index: str  # GLUE's index column (test rows), or the row number
    source: str = ""  # the file it was read from, for messages ("" if none)


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
    source = str(path)
    for lineno, row in tsv.read_rows(path):
        if header and lineno == 1:
            _check_header(path, row, task, text_cols)
            continue
        if len(row) < need:
            raise UserError(f"{path}:{lineno}: expected at least {need} tab-separated columns, found {len(row)}")
        texts = tuple(row[c] for c in text_cols)
        if test:
            examples.append(Example(texts, None, row[0], source))
            continue
        examples.append(Example(texts, _label(row[task.label_column].strip(), label_ids, path, lineno, task),
                                str(len(examples)), source))
    return examples


def _check_header(path: Path, header: list[str], task: GlueTask, text_cols: tuple[int, ...]) -> None:
    """Warn (one line) when the header names the task's text columns where GLUE's layout does not have them.

    The texts are still read by position, as GLUE's processors read them: a header is not trusted to move them.
    """
    names = [h.strip() for h in header]
    expected = next((n for n in task.text_names if all(x in names for x in n)), None)
    if expected is None or tuple(names.index(x) for x in expected) == text_cols:
        return
    headed = [names[c] if c < len(names) else "" for c in text_cols]
    log.warning("%s: the header names the text columns otherwise than GLUE's %s files (%s where GLUE has %s); "
                "they are read by position, as GLUE reads them: %s", path, task.glue_name, ", ".join(headed),
                ", ".join(expected), ", ".join(f"{x} from the column headed {h!r}" for x, h in zip(expected, headed)))


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


def load_local(task: GlueTask, data_dir: str | os.PathLike, with_test: bool) -> dict[str, list[Example]]:
    """Every split a run reads from a folder in the GLUE layout (``preflight.local_files`` finds the files)."""
    out: dict[str, list[Example]] = {}
    for name, split, test, path in local_files(task, data_dir, with_test):
        out[name] = read_tsv(path, task, test, split.text_columns if split else None)
        if not out[name] and name != "train":  # an empty training set is refused by load_glue
            raise UserError(f"{path} has no examples (only a header?); accepted: a {task.glue_name} "
                            f"{'test' if test else 'dev'} file with at least one row")
    return out


# ----------------------------------------------------------------------------- the datasets hub


def load_hub(task: GlueTask, with_test: bool) -> dict[str, list[Example]]:
    if not hub.offline() and not hub.reachable():
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
        raise UserError(f"the training set of {task.glue_name} is empty" + (f" ({split_path(Path(data_dir), task, None)})" if data_dir else ""))
    return splits


def warn_single_class(task: GlueTask, name: str, examples: list[Example]) -> None:
    """One warning if a labelled split of a classification task holds one class only (not an error: a dev
    set of one class is legal, and test splits carry no labels)."""
    if task.is_regression or not examples or examples[0].label is None:
        return
    classes = {e.label for e in examples}
    if len(classes) > 1:
        return
    where = f"{examples[0].source}: " if examples[0].source else f"GLUE {task.glue_name} "
    split = "training set" if name == "train" else f"{name} set"
    why = ("the model can only learn to predict it" if name == "train" else
           "its metrics cannot tell a model that learned the task from one that always predicts it")
    rows = f"{len(examples)} row{'s' if len(examples) > 1 else ''}"
    log.warning("%s%s has a single class (%r, %s): %s", where, split, task.labels[classes.pop()], rows, why)


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


# Characters kept of each text before tokenizing: 20 per token of the max length, and never under 2,560 (20 * 128).
# Truncation keeps at most max_length tokens of a text (max_length + 1 of a pair's longer text is all
# ``_fit_pairs`` needs), so the cut changes nothing unless those tokens average over 20 characters. WordPiece and
# BPE tokens are pieces of words: on all of GLUE's texts (MiniLM's WordPiece) the first 8 tokens of a text average
# at most 9.1 characters, the first 128 at most 5.9. When both texts of a pair are cut, which one is longer (it
# gets the odd token) is no longer known: the floor keeps that to texts of pages (GLUE's longest is 1,392
# characters), and tests/test_data_hardening.py checks the encodings of GLUE's files are identical with the cut.
CHARS_PER_TOKEN = 20
CAP_FLOOR = 2560
CALL_CHARS = 1 << 18  # a tokenizer call takes CALL_CHARS // text_cap rows: what it holds at once is bounded


def text_cap(max_length: int) -> int:
    """Characters of each text kept before tokenizing to ``max_length`` tokens (see ``CHARS_PER_TOKEN``)."""
    return max(CHARS_PER_TOKEN * max_length, CAP_FLOOR)


def encode(examples: list[Example], tokenizer, max_length: int, regression: bool) -> Encoded:
    """Tokenize a split once (fast tokenizer, batched), truncated to ``max_length``, not padded.

    What truncation would drop is cut off before tokenizing (``_capped_columns``, ``_fit_pairs``), so a text of
    megabytes costs what a normal one does; the tokenizer is called on ``CALL_CHARS // text_cap`` rows at a time.
    """
    left = getattr(tokenizer, "truncation_side", "right") == "left"
    columns = _capped_columns(examples, max_length, keep_end=left)
    rows = max(1, CALL_CHARS // text_cap(max_length))
    features: list[dict] = []
    for lo in range(0, len(examples), rows):
        part = [c[lo:lo + rows] for c in columns]
        if len(part) == 2 and getattr(tokenizer, "is_fast", False) and not left:
            part = _fit_pairs(part[0], part[1], tokenizer, max_length)
        enc = tokenizer(*part, truncation=True, max_length=max_length, padding=False)
        keys = list(enc.keys())
        features += [{k: enc[k][i] for k in keys} for i in range(len(part[0]))]
    labels = None
    if examples and examples[0].label is not None:
        labels = [float(e.label) if regression else int(e.label) for e in examples]
    return Encoded(features, labels)


def _capped_columns(examples: list[Example], max_length: int, keep_end: bool = False) -> list[list[str]]:
    """The examples' texts by column, each cut to ``text_cap(max_length)`` characters (its end kept if
    ``keep_end``: a tokenizer that truncates on the left); one warning names how many rows were cut, and where."""
    cap = text_cap(max_length)
    columns = [list(c) for c in zip(*(e.texts for e in examples))]
    cut = [i for i, texts in enumerate(zip(*columns)) if max(map(len, texts)) > cap]
    if not cut:
        return columns
    sources = sorted({examples[i].source for i in cut if examples[i].source})
    log.warning("%s%d of %d rows have a text of over %d characters, cut to that before tokenizing (truncation to %d "
                "tokens keeps less)", f"{', '.join(sources)}: " if sources else "", len(cut), len(examples), cap,
                max_length)
    return [[(t[-cap:] if keep_end else t[:cap]) if len(t) > cap else t for t in c] for c in columns]


def _fit_pairs(firsts: list[str], seconds: list[str], tokenizer, max_length: int) -> list[list[str]]:
    """Pairs cut to the tokens pair truncation can keep, so that tokenizing them costs what a normal pair does.

    A fast tokenizer keeps what truncation drops as overflow windows, and for a pair it joins every window of one
    text with every window of the other: two texts of n tokens cost ~(2n / max_length)^2 encodings (a 2 MB + 2 MB
    pair took 22 GB). Truncation of a pair ("longest_first") keeps at most max_length tokens of either text and
    gives an odd token to the longer one, so cutting a text to its first max_length tokens, max_length + 1 if it
    is the longer of the two, leaves the result as it was (WordPiece and BPE tokenize a prefix that ends between
    two tokens into those same tokens; a suffix can start mid-word, so a tokenizer that truncates on the left is
    not given this). Only texts of over ``max_length`` UTF-8 bytes are tokenized here: a WordPiece or byte-level
    BPE token is at least one byte, so a shorter text has no more than ``max_length`` tokens to overflow.
    """
    columns = [list(firsts), list(seconds)]
    long = [(k, i) for k, texts in enumerate(columns) for i, t in enumerate(texts) if _utf8_len(t) > max_length]
    if not long:
        return columns
    offsets = tokenizer([columns[k][i] for k, i in long], add_special_tokens=False, return_offsets_mapping=True,
                        return_attention_mask=False, return_token_type_ids=False, verbose=False)["offset_mapping"]
    tokens = [[0] * len(firsts), [0] * len(firsts)]  # of each long text; 0 for a short one (max_length or fewer)
    for (k, i), o in zip(long, offsets):
        tokens[k][i] = len(o)
    for (k, i), o in zip(long, offsets):
        columns[k][i] = _first_tokens(columns[k][i], o, max_length + (tokens[k][i] > tokens[1 - k][i]))
    return columns


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _first_tokens(text: str, offsets: list[tuple[int, int]], n: int) -> str:
    """``text`` cut after its first ``n`` tokens, given the tokens' character offsets."""
    return text if len(offsets) <= n else text[:max(end for _, end in offsets[:n])]


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
