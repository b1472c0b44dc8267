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

import argparse
import csv
import io as _io
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import delta as deltas
from . import io, policies, sparse
from .data import Example, encode
from .errors import UserError
from .models import load_model, load_tokenizer
from .tasks import GlueTask, get_task

log = logging.getLogger("bitfit")

INDEX_COLUMNS = ("index", "idx", "id")


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

    def nbytes(self) -> int:
        ts = list(self.whole.values()) + list(self.head.values())
        ts += [t for s in self.partial.values() for t in (s.index, s.values, s.base) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)


class Backbone:
    """One base model in memory serving any number of task deltas trained on it."""

    def __init__(self, model_name: str, device: str | torch.device = "cpu", trust_remote_code: bool = False):
        t0 = time.perf_counter()
        # the head of a placeholder task: every delta brings its own head and replaces it
        with deltas.quiet_base_loading():
            self.model, self.fresh = load_model(model_name, get_task("stsb"), trust_remote_code)
        self.tokenizer = load_tokenizer(model_name, trust_remote_code)
        self.name = model_name
        self.fingerprint = deltas.fingerprint(self.model, self.fresh)
        self.device = torch.device(device)
        self.model.to(self.device).eval().requires_grad_(False)
        self.params = dict(self.model.named_parameters())
        self._head_names = set(policies.head_names(self.model))
        self._base_whole: dict[str, torch.Tensor] = {}
        self._base_head = {n: self.params[n].data for n in self._head_names}
        self.tasks: dict[str, _Task] = {}
        self.active: str | None = None
        self.switches: list[tuple[str | None, str | None, float]] = []  # (from, to, seconds)
        self.load_seconds = time.perf_counter() - t0

    @classmethod
    def for_deltas(cls, paths, base: str | None = None, device="cpu", trust_remote_code: bool = False,
                   names: list[str] | None = None) -> Backbone:
        """A backbone of ``base`` (default: the base the first delta names) with every delta added."""
        ds = [deltas.as_delta(p) for p in paths]
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
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in d.tensors.items():
            pname, _, kind = key.partition("::")
            if pname not in self.params or kind not in ("", "indices", "values", "maskbits", "shape"):
                raise UserError(f"delta {d.path}: tensor {key!r} does not fit {self.name!r}; accepted: its parameter "
                                "names, optionally with ::indices, ::values, ::maskbits or ::shape")
            parts.setdefault(pname, {})[kind] = tensor
        for pname, part in parts.items():
            p = self.params[pname]
            if pname in self._head_names:
                if set(part) != {""} or part[""].shape[1:] != p.shape[1:]:
                    raise UserError(f"delta {d.path}: head tensor {pname!r} is {tuple(part[''].shape) if '' in part else 'partial'}; "
                                    f"accepted: a whole tensor of shape (num_labels, {', '.join(map(str, p.shape[1:]))})")
                t.head[pname] = part[""].to(self.device, p.dtype, copy=True)  # own, aligned storage
            elif "" in part:
                _check_shape(d, pname, part[""].shape, p.shape)
                t.whole[pname] = part[""].to(self.device, p.dtype)
                self._base_whole.setdefault(pname, p.detach().clone())
            elif "indices" in part and "values" in part:
                index = part["indices"].to(self.device, torch.int64)
                t.partial[pname] = _Sparse(index, part["values"].to(self.device, p.dtype), p.view(-1)[index].clone())
            elif "maskbits" in part and "shape" in part:
                shape = tuple(int(s) for s in part["shape"])
                _check_shape(d, pname, shape, p.shape)
                index = (~sparse.unpack_bits(part["maskbits"], shape)).flatten().nonzero().flatten().to(self.device)
                t.partial[pname] = _Sparse(index, None, p.view(-1)[index].clone())
            else:
                raise UserError(f"delta {d.path}: {pname!r} is incomplete ({', '.join(sorted(part))}); accepted: "
                                "::indices with ::values, or ::maskbits with ::shape")
        missing = self._head_names - set(t.head)
        if missing:
            raise UserError(f"delta {d.path} has no {', '.join(sorted(missing))}; every delta must carry its task head")
        return t

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
            for pname, s in old.partial.items():
                self.params[pname].view(-1).index_copy_(0, s.index, s.base)
            restore = [n for n in old.whole if new is None or n not in new.whole]
            _copy([self.params[n] for n in restore], [self._base_whole[n] for n in restore])
        if new is not None:
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
        from .data import collator

        encoded = encode(examples, self.tokenizer, max_seq_length or config.get("max_seq_length", 128), t.task.is_regression)
        loader = torch.utils.data.DataLoader(encoded, batch_size=batch_size or config.get("eval_batch_size", 64),
                                             collate_fn=collator(self.tokenizer))
        precision = config.get("precision", "fp32")
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        out = []
        for batch in loader:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                out.append(self.model(**batch).logits.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, t.task.num_labels)

    def predict(self, name: str, texts, batch_size: int | None = None, max_seq_length: int | None = None,
                probs: bool = True) -> list[Prediction]:
        """Predictions for task ``name``; ``texts``: strings or tuples of strings, or ``Example``s."""
        from .train import format_prediction

        examples = [e if isinstance(e, Example) else Example((e,) if isinstance(e, str) else tuple(e), None, str(i))
                    for i, e in enumerate(texts)]
        logits = self.logits(name, examples, batch_size, max_seq_length)  # checks the name
        task = self.tasks[name].task
        if task.is_regression:
            return [Prediction(format_prediction(task, s), score=float(s)) for s in logits.squeeze(-1).tolist()]
        p = torch.softmax(logits, dim=-1)
        return [Prediction(format_prediction(task, i), probs=dict(zip(task.labels, row)) if probs else None)
                for i, row in zip(logits.argmax(-1).tolist(), p.tolist())]


def _check_shape(d: deltas.Delta, name: str, got, want) -> None:
    if tuple(got) != tuple(want):
        raise UserError(f"delta {d.path}: {name!r} has shape {tuple(got)}; accepted: {tuple(want)} (another model size?)")


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
# Input files: TSV with a header, or JSON lines


def _name_sets(task: GlueTask) -> list[tuple[str, ...]]:
    """Column names that can hold a task's texts: its GLUE field names, or the generic ones."""
    generic = ("sentence",) if len(task.hub_text_fields) == 1 else ("sentence1", "sentence2")
    return [task.hub_text_fields] + ([generic] if generic != task.hub_text_fields else [])


def read_source(source: str) -> tuple[str, str]:
    """(display name, text) of a file, or of standard input for ``-``."""
    if source == "-":
        return "<stdin>", sys.stdin.read()
    p = Path(source)
    if not p.is_file():
        raise UserError(f"input {source!r} not found; accepted: a .tsv or .jsonl file, or - for standard input")
    try:
        return source, p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{source}: not valid UTF-8 ({e.reason} at byte {e.start})") from None


def parse_inputs(name: str, text: str, task: GlueTask, fmt: str = "auto") -> list[Example]:
    """Examples for ``task`` from TSV (header line; text columns by name, else GLUE's test layout) or JSONL."""
    if fmt == "auto":
        suffix = Path(name).suffix.lower()
        fmt = "jsonl" if suffix in (".jsonl", ".json") else "tsv" if suffix else (
            "jsonl" if text.lstrip().startswith("{") else "tsv")
    return _parse_jsonl(name, text, task) if fmt == "jsonl" else _parse_tsv(name, text, task)


def _parse_tsv(name: str, text: str, task: GlueTask) -> list[Example]:
    rows = [r for r in csv.reader(_io.StringIO(text), delimiter="\t", quotechar=None) if r and r != [""]]
    if not rows:
        return []
    header = [h.strip() for h in rows[0]]
    cols = next((tuple(header.index(c) for c in names) for names in _name_sets(task) if all(c in header for c in names)),
                None)
    if cols is None:
        if len(header) <= max(task.test_text_columns):
            raise UserError(f"{name}: no text columns for {task.glue_name} in header {header}; accepted: a header "
                            f"naming {' or '.join('+'.join(n) for n in _name_sets(task))}, or GLUE's {task.glue_name} test-file layout")
        cols = task.test_text_columns
        log.info("%s: %s texts from columns %s (GLUE's test-file layout)", name, task.glue_name, list(cols))
    index = next((header.index(c) for c in INDEX_COLUMNS if c in header), None)
    need = max(cols + ((index,) if index is not None else ())) + 1
    examples = []
    for lineno, row in enumerate(rows[1:], start=2):
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
        if not isinstance(obj, dict):
            raise UserError(f"{name}:{lineno}: not a JSON object; accepted: one object per line")
        if keys is None:
            keys = next((k for k in _name_sets(task) if all(c in obj for c in k)), None)
            if keys is None:
                raise UserError(f"{name}:{lineno}: no text fields for {task.glue_name} in {sorted(obj)}; accepted: "
                                f"{' or '.join('+'.join(n) for n in _name_sets(task))}")
        if not all(isinstance(obj.get(k), str) for k in keys):
            raise UserError(f"{name}:{lineno}: fields {', '.join(keys)} must all be strings")
        index = next((obj[c] for c in INDEX_COLUMNS if c in obj), len(examples))
        examples.append(Example(tuple(obj[k] for k in keys), None, str(index)))
    return examples


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


# ---------------------------------------------------------------------------------------------
# python -m bitfit predict


def build_parser(p):
    """Flags of ``python -m bitfit predict`` (added to the parser ``bitfit.__main__`` makes)."""
    p.add_argument("--delta", nargs="+", action="extend", required=True, metavar="DELTA",
                   help="delta.safetensors files or run folders; several share one backbone, loaded once")
    p.add_argument("--input", "-i", nargs="+", action="extend", required=True, metavar="FILE",
                   help="examples to predict: a TSV with a header (text columns named as the task's, e.g. "
                   "sentence1/sentence2, or GLUE's test-file layout), a .jsonl file, or - for standard input; "
                   "one for all deltas, or one per delta")
    p.add_argument("--output", "-o", default="-", help="file to write (- for standard output); with several deltas "
                   "a folder, one <task>.tsv (or .jsonl) each")
    p.add_argument("--format", choices=("tsv", "jsonl"), default=None,
                   help="output format (default: jsonl if --output ends in .jsonl, else tsv)")
    p.add_argument("--input-format", choices=("auto", "tsv", "jsonl"), default="auto",
                   help="input format (auto: by file suffix; for - by the first character)")
    p.add_argument("--probs", action="store_true", help="also write each label's probability (classification tasks)")
    p.add_argument("--base", default=None, help="base model (default: the one the first delta names); must match "
                   "every delta's fingerprint")
    p.add_argument("--batch-size", type=int, default=None, help="examples per forward pass (default: the run's eval batch size)")
    p.add_argument("--max-seq-length", type=int, default=None, help="truncate inputs (default: the run's max seq length)")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (auto: the first GPU if there is one)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a base model whose code lives on the hub")
    p.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=True,
                   help="log loading and task-switch times (--no-verbose: warnings only)")
    return p


def cli(args) -> int:
    from .train import setup_logging

    setup_logging(args.verbose)
    if len(args.input) not in (1, len(args.delta)):
        raise UserError(f"{len(args.input)} inputs for {len(args.delta)} deltas; accepted: one input for all, or one per delta")
    for flag in ("batch_size", "max_seq_length"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)} is out of range; accepted: an integer >= 1")
    fmt = args.format or ("jsonl" if args.output.endswith(".jsonl") else "tsv")
    several = len(args.delta) > 1
    if several and args.output == "-" and fmt == "tsv":
        raise UserError("several deltas write one table each: pass -o FOLDER, or --format jsonl for one stream")
    if several and args.output != "-" and Path(args.output).is_file():
        raise UserError(f"output {args.output!r} is a file; with several deltas accepted: a folder")
    if not several and args.output != "-" and Path(args.output).is_dir():
        raise UserError(f"output {args.output!r} is a folder; with one delta accepted: a file path, or - for standard output")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cpu", "cuda") or (kind == "cuda" and not torch.cuda.is_available()):
        raise UserError(f"device {args.device!r} is not available here; accepted: cpu"
                        + (", cuda, cuda:N" if torch.cuda.is_available() else " (no CUDA GPU found)") + ", auto")
    ds = [deltas.read(p) for p in args.delta]
    keys = task_keys(ds)
    bb = Backbone.for_deltas(ds, base=args.base, device=device, trust_remote_code=args.trust_remote_code, names=keys)
    log.info("backbone %s loaded once in %.2f s; tasks: %s", bb.name, bb.load_seconds, ", ".join(keys))
    sources = {}
    for i, key in enumerate(keys):
        src = args.input[i if len(args.input) > 1 else 0]
        if src not in sources:
            sources[src] = read_source(src)
        name, text = sources[src]
        task = bb.tasks[key].task
        examples = parse_inputs(name, text, task, args.input_format)
        preds = bb.predict(key, examples, args.batch_size, args.max_seq_length, probs=args.probs)
        rows = format_rows(task, examples, preds, fmt, args.probs, task_name=key if several else None)
        if args.output == "-":
            sys.stdout.write(rows)
            sys.stdout.flush()
        else:
            out = Path(args.output) / f"{key}.{fmt}" if several else Path(args.output)
            io.write_text(out, rows)
            log.info("%s: %d predictions -> %s", key, len(preds), out)
    if bb.switches[1:]:
        times = sorted(s for _, _, s in bb.switches[1:])  # the first is base -> task, not a task switch
        log.info("task switches: %d, median %.3f ms, max %.3f ms (%s)", len(times), 1e3 * times[len(times) // 2],
                 1e3 * times[-1], "; ".join(f"{a} -> {b} {1e3 * s:.3f} ms" for a, b, s in bb.switches[1:]))
    return 0
