"""One backbone, many tasks: load the base once, add task deltas, predict for any of them.

    from bitfit.serve import Backbone
    bb = Backbone("minilm")
    bb.add("rte", "runs/rte")                     # a run folder or its delta.safetensors
    bb.add("stsb", "runs/stsb/delta.safetensors")
    bb.predict("rte", [("A man is sleeping.", "Nobody is asleep.")])   # [Prediction(label='not_entailment', ...)]
    bb.predict("stsb", [("A cat sits.", "A kitten is sitting.")])      # [Prediction(label='3.812', score=3.81...)]

    python -m bitfit predict --delta runs/rte --input ../shared/glue_data/RTE/test.tsv --probs
    python -m bitfit predict --delta runs/rte runs/stsb --input pairs.jsonl -o predictions/

Switching tasks changes the one model in place. ``add`` compiles each delta, once, into what
switching needs: for a whole tensor of the encoder (a bias vector) the task's values, copied into
the parameter's own storage (``copy_``); for a partly trained tensor or a learned mask the flat
indices it changes, the task's values there and the base's values there; for the task head (whose
shape depends on the task: 2 labels, 3, or 1 score) the task's own tensor, which the parameter is
pointed at. The backbone keeps a base copy of every whole encoder tensor some delta touches, so
leaving a task restores exactly the entries it changed before the next task's are written: after
A -> B -> A the model is bit-identical to a fresh load of base + A.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import delta as deltas
from . import tsv
from .data import Example, collator, encode, sorted_loader
from .config import check_settings
from .errors import UserError
from .models import check_max_length, load_model, load_tokenizer
from .policies import added, head_names
from .progress import progress
from .submit import format_prediction
from .tasks import GlueTask, get_task

log = logging.getLogger("bitfit")

INDEX_COLUMNS = ("index", "idx", "id")
PLACEHOLDER = get_task("stsb")  # the backbone's own head, until a task's delta brings its own


@dataclass
class Prediction:
    """One prediction. ``label`` is written as GLUE takes it: a label name, or the STS-B score with
    three decimals clipped to [0, 5]; ``score`` is the raw regression output; ``probs`` maps label
    names to softmax probabilities (classification)."""

    label: str
    score: float | None = None
    probs: dict[str, float] | None = None


@dataclass
class _Sparse:
    index: torch.Tensor  # flat indices into the parameter
    values: torch.Tensor | None  # the task's values there (None: zeros, a learned mask)
    base: torch.Tensor  # the base's values there


@dataclass
class _Task:
    name: str
    delta: deltas.Delta
    task: GlueTask
    whole: dict[str, torch.Tensor] = field(default_factory=dict)  # encoder tensors, copied in place
    head: dict[str, torch.Tensor] = field(default_factory=dict)  # head tensors, the parameter is pointed at them
    partial: dict[str, _Sparse] = field(default_factory=dict)
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)  # lora / ia3 / adapters: swapped in by name

    def nbytes(self) -> int:
        ts = list(self.whole.values()) + list(self.head.values())
        ts += [p for m in self.modules.values() for n, p in m.named_parameters() if added.is_added("." + n)]
        ts += [t for s in self.partial.values() for t in (s.index, s.values, s.base) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)


class Backbone:
    """One base model in memory serving any number of task deltas trained on it."""

    def __init__(self, model_name: str, device: str | torch.device = "cpu", trust_remote_code: bool = False):
        t0 = time.perf_counter()
        # the head of a placeholder task: every delta brings its own head and replaces it
        with deltas.quiet_base_loading():
            self.model, self.new_params = load_model(model_name, PLACEHOLDER, trust_remote_code)
        self.tokenizer = load_tokenizer(model_name, trust_remote_code)
        self.name = model_name
        self.fingerprint = deltas.fingerprint(self.model, self.new_params)
        self.device = torch.device(device)
        self.model.to(self.device).eval().requires_grad_(False)
        self.params = dict(self.model.named_parameters())
        self._head_names = set(head_names(self.model))
        self._base_whole: dict[str, torch.Tensor] = {}
        self._base_head = {n: self.params[n].data for n in self._head_names}
        self.tasks: dict[str, _Task] = {}
        self.active: str | None = None
        self.switches: list[tuple[str | None, str | None, float]] = []  # (from, to, seconds)
        self.show_progress = False  # log prediction progress (the predict command turns it on)
        self.load_seconds = time.perf_counter() - t0

    @classmethod
    def for_deltas(cls, paths, base: str | None = None, device="cpu", trust_remote_code: bool = False,
                   names: list[str] | None = None, allow_unverified: bool = False) -> Backbone:
        """A backbone of ``base`` (default: the base the first delta names) with every delta added."""
        ds = [deltas.as_delta(p, allow_unverified) for p in paths]
        if not ds:
            raise UserError("no delta given; accepted: one or more delta.safetensors files or run folders")
        bb = cls(base or ds[0].base_model, device, trust_remote_code)
        for name, d in zip(names or task_keys(ds), ds):
            bb.add(name, d)
        return bb

    # ------------------------------------------------------------------------------- tasks

    def add(self, name: str, d: deltas.Delta | str | os.PathLike) -> GlueTask:
        """Check a delta against this backbone (architecture, fingerprint) and keep it as task ``name``."""
        d = deltas.as_delta(d)
        if name in self.tasks:
            raise UserError(f"task name {name!r} is already taken; accepted: a new name")
        deltas.check_base(d, self.model, self.fingerprint, self.name)
        active = self.active
        self.activate(None)  # compile against the base values
        try:
            self.tasks[name] = self._compile(name, d)
        finally:
            self.activate(active, record=False)
        return d.task

    def _compile(self, name: str, d: deltas.Delta) -> _Task:
        t = _Task(name, d, d.task)
        where = f"delta {d.path}"
        # an added-module method's modules go in for the parse (their tensors are checked against them), then
        # come out again: they are the task's own, swapped in when it is active
        own = set(deltas.attach_modules(self.model, d.tensors, d.policy, d.config, where))
        try:
            params = {added.canonical(n): p for n, p in self.model.named_parameters()}
            parts = deltas.parse(d.tensors, params, where, d.policy, self._head_names)
            with torch.no_grad():
                for pname in own:
                    params[pname].requires_grad_(False)
                    deltas.check_shape(pname, parts[pname].tensor.shape, params[pname].shape, where)
                    params[pname].copy_(parts[pname].tensor)
        finally:
            t.modules = added.detach(self.model) if own else {}
        for pname, part in parts.items():
            if pname in own:
                continue
            p = self.params[pname]
            if pname in self._head_names:
                t.head[pname] = self._head_tensor(pname, part.tensor, d.task, where)
            elif part.kind == deltas.WHOLE:
                deltas.check_shape(pname, part.tensor.shape, p.shape, where)
                t.whole[pname] = part.tensor.to(self.device, p.dtype)
                self._base_whole.setdefault(pname, p.detach().clone())
            else:
                index = part.indices.to(self.device)
                values = None if part.values is None else part.values.to(self.device, p.dtype)
                t.partial[pname] = _Sparse(index, values, p.view(-1)[index].clone())
        missing = self._head_names - set(t.head)
        if missing:
            raise UserError(f"{where} has no {', '.join(sorted(missing))}; every delta must carry its task head")
        return t

    def _head_tensor(self, name: str, tensor: torch.Tensor, task: GlueTask, where: str) -> torch.Tensor:
        """The task's own copy of a head tensor, checked: the placeholder head has one output (STS-B), so a
        tensor whose first dimension is 1 here must have the task's label count there; others match exactly."""
        p = self.params[name]
        want = (task.num_labels, *p.shape[1:]) if p.shape[0] == PLACEHOLDER.num_labels else tuple(p.shape)
        if tuple(tensor.shape) != want:
            raise UserError(f"{where}: head tensor {name!r} has shape {tuple(tensor.shape)}; accepted: {want} "
                            f"({task.glue_name} has {task.num_labels} label(s))")
        return tensor.to(self.device, p.dtype, copy=True)  # own, aligned storage

    @torch.no_grad()
    def activate(self, name: str | None, record: bool = True) -> float:
        """Make the model task ``name`` (None: the base); returns the seconds the switch took."""
        if name is not None and name not in self.tasks:
            raise UserError(f"unknown task {name!r}; accepted: {', '.join(self.tasks) or '(none added)'}")
        if name == self.active:
            return 0.0
        t0 = time.perf_counter()
        old, new = self.tasks.get(self.active), self.tasks.get(name)
        if old is not None:
            added.swap_out(self.model, old.modules)
            for pname, s in old.partial.items():
                self.params[pname].view(-1).index_copy_(0, s.index, s.base)
            restore = [n for n in old.whole if new is None or n not in new.whole]
            _copy([self.params[n] for n in restore], [self._base_whole[n] for n in restore])
        if new is not None:
            added.swap_in(self.model, new.modules)
            _copy([self.params[n] for n in new.whole], list(new.whole.values()))
            for pname, s in new.partial.items():
                flat = self.params[pname].view(-1)
                if s.values is None:
                    flat.index_fill_(0, s.index, 0)
                else:
                    flat.index_copy_(0, s.index, s.values)
        heads = new.head if new is not None else self._base_head
        for pname, tensor in heads.items():
            self.params[pname].data = tensor
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        if record:
            self.switches.append((self.active, name, seconds))
        self.active = name
        return seconds

    def memory(self) -> dict[str, int]:
        """Bytes held: the backbone's parameters, base copies kept for switching, each task's tensors."""
        backbone = sum(p.numel() * p.element_size() for n, p in self.params.items() if n not in self._head_names)
        base = sum(t.numel() * t.element_size() for t in self._base_whole.values())
        base += sum(t.numel() * t.element_size() for t in self._base_head.values())
        return {"backbone": backbone, "base_copies": base} | {f"task:{n}": t.nbytes() for n, t in self.tasks.items()}

    # ------------------------------------------------------------------------------- prediction

    @torch.inference_mode()
    def logits(self, name: str, examples: list[Example], batch_size: int | None = None,
               max_seq_length: int | None = None) -> torch.Tensor:
        """Raw outputs (n, num_labels) for task ``name``, batched as the run batched its test set."""
        self.activate(name)
        t = self.tasks[name]
        config = t.delta.config
        if examples and len(examples[0].texts) != len(t.task.test_text_columns):
            raise UserError(f"task {t.task.glue_name} takes {len(t.task.test_text_columns)} text(s) per example; "
                            f"got {len(examples[0].texts)}")
        length, batch_size = self._sizes(name, batch_size, max_seq_length)
        if not examples:
            return torch.zeros(0, t.task.num_labels)
        encoded = encode(examples, self.tokenizer, length, t.task.is_regression)
        encoded.labels = None  # prediction only: gold labels, if the examples carry any, are not the model's business
        data = sorted_loader(encoded, batch_size, collator(self.tokenizer))
        precision = config.get("precision", "fp32")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        out = []
        for batch in progress(data.loader, f"predicting {name}", enabled=self.show_progress):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                out.append(self.model(**batch).logits.float().cpu())
        return torch.from_numpy(data.restore(torch.cat(out).numpy()))

    def _sizes(self, name: str, batch_size: int | None, max_seq_length: int | None) -> tuple[int, int]:
        """(max length, batch size) for task ``name``: the given ones, else its run's; checked as run_glue.py checks
        them (one shared check), and the length against what this backbone's model takes."""
        config = self.tasks[name].delta.config
        given = {"max_seq_length": max_seq_length, "eval_batch_size": batch_size}
        check_settings(given, labels={"max_seq_length": "--max-seq-length", "eval_batch_size": "--batch-size"})
        length = max_seq_length or config.get("max_seq_length", 128)
        label = "--max-seq-length" if max_seq_length else f"the max seq length of {name}'s run"
        check_max_length(length, self.model, self.tokenizer, self.name, label=label)
        return length, batch_size or config.get("eval_batch_size", 64)

    def predict(self, name: str, texts, batch_size: int | None = None, max_seq_length: int | None = None,
                probs: bool = True) -> list[Prediction]:
        """Predictions for task ``name``; ``texts``: strings or tuples of strings, or ``Example``s."""
        examples = [e if isinstance(e, Example) else Example((e,) if isinstance(e, str) else tuple(e), None, str(i))
                    for i, e in enumerate(texts)]
        logits = self.logits(name, examples, batch_size, max_seq_length)  # checks the name
        task = self.tasks[name].task
        if task.is_regression:
            return [Prediction(format_prediction(task, s), score=float(s)) for s in logits.squeeze(-1).tolist()]
        p = torch.softmax(logits, dim=-1)
        return [Prediction(format_prediction(task, i), probs=dict(zip(task.labels, row)) if probs else None)
                for i, row in zip(logits.argmax(-1).tolist(), p.tolist())]


def _copy(dst: list[torch.Tensor], src: list[torch.Tensor]) -> None:
    if dst:
        torch._foreach_copy_(dst, src)


def task_keys(ds: list[deltas.Delta]) -> list[str]:
    """A name per delta: its task, or ``task@run-folder`` when two deltas share a task (``-2``... if still taken)."""
    tasks = [d.task.name for d in ds]
    keys: list[str] = []
    for d, task in zip(ds, tasks):
        key = task if tasks.count(task) == 1 else f"{task}@{d.path.parent.name}"
        k = 1
        while (key if k == 1 else f"{key}-{k}") in keys:
            k += 1
        keys.append(key if k == 1 else f"{key}-{k}")
    return keys


# ---------------------------------------------------------------------------------------------
# Input files: TSV or CSV with a header, or JSON lines


def read_source(source: str) -> tuple[str, str]:
    """(display name, text) of a file, or of standard input for ``-``."""
    if source == "-":
        return "<stdin>", sys.stdin.read()
    p = Path(source)
    if not p.is_file():
        raise UserError(f"input {source!r} not found; accepted: a .tsv, .csv or .jsonl file, or - for standard input")
    return source, tsv.read_text(p)


INPUT_FORMATS = ("auto", "tsv", "csv", "jsonl")


def input_format(name: str, text: str, fmt: str = "auto") -> str:
    """The format of an input: ``fmt`` unless "auto"; then by suffix (.jsonl/.json, .csv, anything else TSV), and
    for a name without one (standard input) by its first line: ``{`` JSON lines, commas but no tab CSV, else TSV."""
    if fmt not in INPUT_FORMATS:
        raise UserError(f"input format {fmt!r} is unknown; accepted: {', '.join(INPUT_FORMATS)}")
    if fmt != "auto":
        return fmt
    suffix = Path(name).suffix.lower() if name != "<stdin>" else ""
    if suffix:
        return "jsonl" if suffix in (".jsonl", ".json") else "csv" if suffix == ".csv" else "tsv"
    first = next((line for line in text.splitlines() if line.strip()), "")
    if first.lstrip().startswith("{"):
        return "jsonl"
    return "csv" if "," in first and "\t" not in first else "tsv"


def parse_inputs(name: str, text: str, task: GlueTask, fmt: str = "auto") -> list[Example]:
    """Examples for ``task`` from TSV (header line; text columns by name, else GLUE's test layout), CSV (header line,
    text columns by name; read as training reads a CSV file) or JSONL."""
    fmt = input_format(name, text, fmt)
    parse = {"jsonl": _parse_jsonl, "csv": _parse_csv, "tsv": _parse_tsv}[fmt]
    examples = parse(name, text, task)
    if not examples:
        raise UserError(f"{name}: no examples to predict (an empty file, or a header only); accepted: "
                        + ("one JSON object per line" if fmt == "jsonl" else "a header line and at least one row"))
    return examples


def _text_columns(task: GlueTask, found) -> tuple[str, ...] | None:
    """The first of ``task.text_names`` all of whose columns are in ``found`` (a header, a JSON object), or None."""
    return next((names for names in task.text_names if all(c in found for c in names)), None)


def _no_text_columns(where: str, found: list[str], task: GlueTask, also: str = "", jsonl: bool = False) -> UserError:
    """One line naming the columns (JSON: fields) found and the ones wanted (``also``: another accepted way)."""
    what, accepted = ("fields", "") if jsonl else ("columns", "a header naming ")
    return UserError(f"{where}: no text {what} for {task.glue_name} in {'' if jsonl else 'header '}{found}; accepted: "
                     f"{accepted}{_wanted(task)}{also}")


def _wanted(task: GlueTask) -> str:
    """The text column names ``task`` takes, in order: for a task of the user's, its own first, said so."""
    names = ["+".join(n) for n in task.text_names]
    if task.custom:
        names[0] += f" (the column{'s' * (len(task.hub_text_fields) > 1)} task {task.name} was trained on)"
    return " or ".join(names)


def _parse_csv(name: str, text: str, task: GlueTask) -> list[Example]:
    """A CSV input, read by ``userdata.read_table`` as training reads a CSV file (RFC 4180 quoting, a record's first
    line number in messages); its id column (``id``/``idx``/``index``, as for a test file) becomes the index."""
    from .userdata import ID_COLUMNS

    table = _read_csv_table(name, text)
    cols = _text_columns(task, table.columns)
    if cols is None:
        raise _no_text_columns(f"{name}:{_header_line(text)}", table.columns, task)
    ident = next((c for c in ID_COLUMNS if c in table.columns), None)
    examples = []
    for lineno, row in table.rows:
        index = str(len(examples))
        if ident is not None:
            index = row[ident]
            if not index.strip() or any(ch in index for ch in "\t\r\n"):
                raise UserError(f"{name}:{lineno}: id {index!r} (column {ident!r}) is empty or holds a tab or line "
                                "break; accepted: an id that fits one TSV field")
        examples.append(Example(tuple(row[c] for c in cols), None, index))
    return examples


def _header_line(text: str) -> int:
    return next((i for i, line in enumerate(text.splitlines(), start=1) if line.strip()), 1)


def _read_csv_table(name: str, text: str):
    """``userdata.read_table`` of ``name``: the file itself when it is a .csv file, else ``text`` (standard input, or
    another suffix with --input-format csv) through a temporary .csv file, its path in messages replaced by ``name``."""
    import tempfile

    from .userdata import read_table

    p = Path(name)
    if name != "<stdin>" and p.suffix.lower() == ".csv" and p.is_file():
        return read_table(p)
    with tempfile.TemporaryDirectory(prefix="bitfit-predict-") as tmp:
        path = Path(tmp) / "input.csv"
        path.write_text(text, encoding="utf-8", newline="")
        try:
            return read_table(path)
        except UserError as e:
            message = str(e).replace(str(path), name)  # read_table's hints name a file suffix; here: the flag
            for kind in ("tsv", "jsonl"):
                message = message.replace(f"Name it .{kind}", f"Pass --input-format {kind}")
            raise UserError(message) from None


def _parse_tsv(name: str, text: str, task: GlueTask) -> list[Example]:
    rows = tsv.parse_rows(text)
    if not rows:
        return []
    header_line, header = rows[0][0], [h.strip() for h in rows[0][1]]
    names = _text_columns(task, header)
    if names is None:
        # GLUE's test files name their columns in ways of their own: their layout is the fallback; a task of the
        # user's has no such layout, its header must name its text columns
        if task.custom or len(header) <= max(task.test_text_columns):
            layout = "" if task.custom else f", or GLUE's {task.glue_name} test-file layout"
            raise _no_text_columns(f"{name}:{header_line}", header, task, layout)
        cols = task.test_text_columns
        log.info("%s: %s texts from columns %s (GLUE's test-file layout)", name, task.glue_name, list(cols))
    else:
        cols = tuple(header.index(c) for c in names)
    index = next((header.index(c) for c in INDEX_COLUMNS if c in header), None)
    need = max(cols + ((index,) if index is not None else ())) + 1
    examples = []
    for lineno, row in rows[1:]:
        if len(row) < need:
            raise UserError(f"{name}:{lineno}: expected at least {need} tab-separated columns, found {len(row)}")
        examples.append(Example(tuple(row[c] for c in cols), None, row[index] if index is not None else str(len(examples))))
    return examples


def _parse_jsonl(name: str, text: str, task: GlueTask) -> list[Example]:
    examples, keys = [], None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{name}:{lineno}: not JSON ({e.msg}); accepted: one JSON object per line") from None
        except RecursionError:
            raise UserError(f"{name}:{lineno}: JSON nested too deeply; accepted: one JSON object per line") from None
        except ValueError as e:  # an integer of more than 4,300 digits
            raise UserError(f"{name}:{lineno}: not JSON this tool reads ({str(e).split(':')[0]}); accepted: one JSON "
                            "object per line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{name}:{lineno}: not a JSON object; accepted: one object per line")
        if keys is None:
            keys = _text_columns(task, obj)
            if keys is None:
                raise _no_text_columns(f"{name}:{lineno}", sorted(obj), task, jsonl=True)
        if not all(isinstance(obj.get(k), str) for k in keys):
            raise UserError(f"{name}:{lineno}: fields {', '.join(keys)} must all be strings")
        if not all(obj[k].isascii() or _encodable(obj[k]) for k in keys):  # JSON's \ud800 escapes decode to lone halves
            raise UserError(f"{name}:{lineno}: a text holds a lone UTF-16 surrogate (an escape like \\ud800 without its "
                            "pair); accepted: valid Unicode text")
        index = next((obj[c] for c in INDEX_COLUMNS if c in obj), len(examples))
        examples.append(Example(tuple(obj[k] for k in keys), None, str(index)))
    return examples


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def format_rows(task: GlueTask, examples: list[Example], preds: list[Prediction], fmt: str, probs: bool,
                task_name: str | None = None) -> str:
    """TSV (``index<TAB>prediction`` [+ ``prob_<label>``]) or JSON lines, one row per example."""
    probs = probs and not task.is_regression
    if fmt == "jsonl":
        lines = []
        for e, p in zip(examples, preds):
            row = ({"task": task_name} if task_name else {}) | {"index": e.index, "prediction": p.label}
            if probs:
                row["probs"] = {k: round(v, 6) for k, v in p.probs.items()}
            lines.append(json.dumps(row))
        return "".join(line + "\n" for line in lines)
    head = ["index", "prediction"] + ([f"prob_{label}" for label in task.labels] if probs else [])
    lines = ["\t".join(head)]
    for e, p in zip(examples, preds):
        lines.append("\t".join([e.index, p.label] + ([f"{p.probs[label]:.6f}" for label in task.labels] if probs else [])))
    return "\n".join(lines) + "\n"
