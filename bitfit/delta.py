"""Task deltas: what a run learned, as a small safetensors file on top of one shared base model.

    from bitfit import delta
    d = delta.read("runs/rte")                  # a run folder or its delta.safetensors; never unpickles
    model, tokenizer = delta.load(d)            # base (checked by fingerprint) + delta, ready to predict
    delta.merge(d, "merged/rte")                # a plain Hugging Face model folder: base + delta applied

    python -m bitfit merge runs/rte -o merged/rte

The file holds only what training changed (``encode`` writes it; ``parse`` is the one reader, used by
``apply_tensors`` for predict and merge, and by the serving backbone): a whole trained tensor
under its parameter name, a partly trained one as ``<name>::indices`` + ``<name>::values``, a learned
mask as ``<name>::maskbits`` + ``<name>::shape``; plus every tensor the base checkpoint lacked (the
new task head). Its metadata (strings) says what it applies to:

    format       "bitfit-delta/1"
    base_model   the --model-name of the run ("minilm", a folder, a hub id)
    model_type   e.g. "bert"
    fingerprint  "sha256:..." of the base weights (see ``fingerprint``)
    task, labels the task and its label names (JSON; null for STS-B)
    policy, bias_terms, best_epoch, config (the run's RunConfig as JSON)
    versions     JSON: python, torch, transformers, safetensors, and this tool's git commit

The fingerprint is computed on the base as ``bitfit.models.load_model`` gives it, before any
training: ``save`` loads the base checkpoint again rather than trusting the trained model, and
whoever applies the delta computes it the same way on the base it loaded, so one code path makes
both sides. A different base (another model, another revision, one changed weight) is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from . import io, preflight
from .policies import added, sparse
from .policies.anatomy import head_names, layer_of
from .config import check_settings
from .errors import UserError
from .methods import METHODS
from .models import load_model, load_tokenizer
from .tasks import GlueTask, from_definition, get_task, task_definition

log = logging.getLogger("bitfit")

FORMAT = "bitfit-delta/1"
FILE = "delta.safetensors"
FINGERPRINT_VERSION = b"bitfit-fingerprint/1\n"


# ---------------------------------------------------------------------------------------------
# The tensor format: one encoder (``encode``) and one parser (``parse``), used by training,
# ``apply_tensors`` (predict, merge) and the serving backbone


WHOLE, ENTRIES, MASK = "whole", "entries", "mask"
KINDS = ("", "indices", "values", "maskbits", "shape")


@dataclass
class Part:
    """What a delta holds for one parameter: the whole tensor, some entries, or a learned mask."""

    kind: str  # WHOLE, ENTRIES or MASK
    tensor: torch.Tensor | None = None  # WHOLE: the new tensor
    indices: torch.Tensor | None = None  # ENTRIES: flat int64 indices (as parsed); MASK: flat indices of zeroed entries
    values: torch.Tensor | None = None  # ENTRIES: the new values there


def encode(model: torch.nn.Module, sel) -> dict[str, torch.Tensor]:
    """CPU copies of what was learned under Selection ``sel``, named as in the module docstring."""
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, mask in sel.trainable.items():
            t = _tensor(model, name).detach().to("cpu")
            if mask is None:
                out[name] = t.clone().contiguous()
            else:
                _put_entries(out, name, t, mask)
        if sel.diffed:  # diff_prune: the kept entries, as partly trained tensors
            from .policies import diff

            gates = diff.gates(model)
            if not diff.group_of(model).fixed:
                raise ValueError("diff_prune: a delta is written after the projection (the search's difference is dense)")
            for name in sel.diffed:
                keep = gates[name].kept().to("cpu")
                if keep.any():
                    _put_entries(out, name, _tensor(model, name).detach().to("cpu"), keep)
        masks = sparse.masks(model)
        for name in sel.masked:
            out[f"{name}::maskbits"] = sparse.pack_bits(masks[name])
            out[f"{name}::shape"] = torch.tensor(list(masks[name].shape), dtype=torch.int64)
    return out


INT32_MAX = 2**31 - 1


def _put_entries(out: dict[str, torch.Tensor], name: str, t: torch.Tensor, keep: torch.Tensor) -> None:
    """``<name>::indices`` (flat; int32 when the tensor has under 2**31 entries, as every encoder tensor
    has, else int64) and ``<name>::values``: the entries of ``t`` where ``keep``. int32 halves the
    indices, two thirds of a sparse delta's bytes; ``parse`` reads either."""
    idx = keep.flatten().nonzero().flatten()
    out[f"{name}::indices"] = idx.to(torch.int32 if t.numel() <= INT32_MAX else torch.int64)
    out[f"{name}::values"] = t.flatten()[idx].clone()


def _tensor(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The tensor a parameter name stands for (the masked weight, for a parametrized one)."""
    module, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(module) if module else model, attr)


def parse(tensors: dict[str, torch.Tensor], params: dict[str, torch.Tensor], where: str = "delta",
          policy: str | None = None, head: set[str] | frozenset = frozenset()) -> dict[str, Part]:
    """Group a delta's tensors by parameter and check each against ``params`` (name -> tensor of the
    model it will be applied to): known names, complete parts, shapes, index ranges, finite values;
    with ``policy``, also that the method could have trained it (``head``: the task head's names)."""
    grouped: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        name, _, kind = key.partition("::")
        if name not in params or kind not in KINDS:
            raise UserError(f"{where}: tensor {key!r} does not fit this model; accepted: its parameter names, "
                            "optionally with ::indices, ::values, ::maskbits or ::shape")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{where}: tensor {key!r} holds NaN or infinite values; refusing to use it")
        grouped.setdefault(name, {})[kind] = t
    parts = {name: _part(name, got, params[name], where) for name, got in grouped.items()}
    if policy is not None:
        for name, part in parts.items():
            if not (part.kind == WHOLE if name in head else _trainable_by(policy, name, part)):
                raise UserError(f"{where}: {name!r} ({part.kind}) is not something policy {policy!r} trains; "
                                "refusing a delta whose tensors do not match its policy")
    return parts


def _trainable_by(policy: str, name: str, part: Part) -> bool:
    """Whether ``policy`` could have learned this part of an encoder parameter."""
    if policy == "full_ft":
        return part.kind == WHOLE
    if policy == "layers":
        return part.kind == WHOLE and layer_of(name) is not None
    if policy == "bitfit":
        return part.kind == WHOLE and name.endswith(".bias") and part.tensor.dim() == 1
    if policy in ("rand_uniform", "rand_row_col"):  # a tiny tensor drawn whole is stored whole
        return part.kind == ENTRIES or (policy == "rand_uniform" and part.kind == WHOLE and part.tensor.dim() <= 1)
    if policy == "sparse_mask":
        return part.kind == MASK
    if policy == "diff_prune":
        return part.kind == ENTRIES
    if METHODS[policy].adds:  # its modules' tensors; LoRA's biases (--lora-bias), the adapters' LayerNorms
        extra = {"lora": lambda t: name.endswith(".bias") and t.dim() == 1, "adapters": lambda t: t.dim() == 1}
        return part.kind == WHOLE and (added.is_added(name) or extra.get(policy, lambda t: False)(part.tensor))
    return False  # frozen: nothing outside the head


def _part(name: str, got: dict[str, torch.Tensor], param: torch.Tensor, where: str) -> Part:
    if set(got) == {""}:
        return Part(WHOLE, tensor=got[""])
    if set(got) == {"indices", "values"}:
        if got["indices"].dtype not in (torch.int32, torch.int64):
            raise UserError(f"{where}: {name!r} has {str(got['indices'].dtype).removeprefix('torch.')} indices; "
                            "accepted: int32 or int64")
        indices, values = got["indices"].to(torch.int64).flatten(), got["values"].flatten()
        if indices.numel() != values.numel() or (indices.numel() and not (0 <= int(indices.min()) and
                                                                          int(indices.max()) < param.numel())):
            raise UserError(f"{where}: {name!r} has {indices.numel()} indices for {values.numel()} values or indices "
                            f"outside 0..{param.numel() - 1}; accepted: as many in-range indices as values")
        return Part(ENTRIES, indices=indices, values=values)
    if set(got) == {"maskbits", "shape"}:
        shape = tuple(int(s) for s in got["shape"])
        check_shape(name, shape, param.shape, where)
        keep = sparse.unpack_bits(got["maskbits"], shape)
        return Part(MASK, indices=(~keep).flatten().nonzero().flatten())
    raise UserError(f"{where}: {name!r} is incomplete ({', '.join(sorted(got))}); accepted: the whole tensor, "
                    "::indices with ::values, or ::maskbits with ::shape")


def check_shape(name: str, got, want, where: str = "delta") -> None:
    if tuple(got) != tuple(want):
        raise UserError(f"{where}: tensor {name!r} has shape {tuple(got)}; accepted: {tuple(want)} (another model size?)")


def attach_modules(model: torch.nn.Module, tensors: dict[str, torch.Tensor], policy: str | None,
                   config: dict | None, where: str = "delta") -> list[str]:
    """For a delta of an added-module method (lora, ia3, adapters): put the same modules into ``model`` as the run
    did (rebuilt from its settings ``config``); returns their parameter names ([] for other methods)."""
    if policy is None or policy not in METHODS or not METHODS[policy].adds:
        return []
    addition = added.trim(added.addition_for(model, policy, config or {}), tensors)
    names = added.attach(model, addition)
    missing = sorted(set(names) - set(tensors))
    if missing:
        raise UserError(f"{where}: has no {missing[0]!r} (of {len(missing)} added tensors missing); accepted: a delta "
                        f"holding every tensor of its {policy} modules")
    return names


def apply_tensors(model: torch.nn.Module, tensors: dict[str, torch.Tensor], where: str = "delta",
                  policy: str | None = None, config: dict | None = None) -> None:
    """Apply a delta's tensors to a freshly loaded base model in place (masks become plain zeros; an added-module
    method's modules are put in first, see ``attach_modules``)."""
    attach_modules(model, tensors, policy, config, where)
    params = {added.canonical(n): p for n, p in model.named_parameters()}
    parts = parse(tensors, params, where, policy, set(head_names(model)))
    with torch.no_grad():
        for name, part in parts.items():
            p = params[name]
            if part.kind == WHOLE:
                check_shape(name, part.tensor.shape, p.shape, where)
                p.copy_(part.tensor)
            elif part.kind == ENTRIES:
                p.view(-1)[part.indices.to(p.device)] = part.values.to(p.device, p.dtype)
            else:
                p.view(-1)[part.indices.to(p.device)] = 0


# ---------------------------------------------------------------------------------------------
# The base model's fingerprint


def fingerprint(model: torch.nn.Module, exclude=()) -> str:
    """sha256 over the name, dtype, shape and every byte of each encoder parameter, in name order.

    The task head (every parameter outside ``model.base_model_prefix``) and the names in
    ``exclude`` (what ``load_model`` initialised at random) are left out, so the fingerprint
    depends on the pretrained weights alone, never on the task. Names are taken relative to the
    encoder, so the bare encoder (``AutoModel``) of the same checkpoint has the same fingerprint.
    Hashing every byte costs about 0.07 s for MiniLM and 0.3 s for BERT-base on one CPU core.
    """
    head, skip = set(head_names(model)), set(exclude)
    prefix = getattr(model, "base_model_prefix", "") + "."
    h = hashlib.sha256(FINGERPRINT_VERSION)
    params = {n.removeprefix(prefix): p for n, p in model.named_parameters() if n not in head and n not in skip}
    _hash_tensors(h, params)
    return "sha256:" + h.hexdigest()


def _hash_tensors(h, tensors: dict[str, torch.Tensor]) -> None:
    """Feed each tensor's name, dtype, shape and bytes to ``h``, in name order."""
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{str(t.dtype).removeprefix('torch.')}|{list(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)


@contextlib.contextmanager
def quiet_base_loading():
    """Load a base without "newly initialised" notes (the delta brings those tensors) or moving the RNG."""
    models_log = logging.getLogger("bitfit.models")
    level = models_log.level
    models_log.setLevel(logging.WARNING)
    try:
        with torch.random.fork_rng(devices=[]):  # the fresh head's random init must not move a run's RNG
            yield
    finally:
        models_log.setLevel(level)


def base_fingerprint(model_name: str, task: GlueTask, trust_remote_code: bool = False) -> str:
    """The fingerprint of ``model_name`` as ``load_model`` gives it (loads it once more)."""
    with quiet_base_loading():
        model, new_params = load_model(model_name, task, trust_remote_code)
    return fingerprint(model, new_params)


def versions() -> dict[str, str | None]:
    import safetensors

    env = io.environment()
    commit = env.get("git_commit")
    tool = None if commit is None else commit[:12] + ("+dirty" if env.get("git_dirty") else "")
    return {"python": env["python"], "torch": env["torch"], "transformers": env["transformers"],
            "safetensors": safetensors.__version__, "bitfit": tool}


# ---------------------------------------------------------------------------------------------
# Writing


def save(path: Path, model, sel, new_params: list[str], cfg, task: GlueTask, epoch: int,
         base_fp: str | None = None) -> dict[str, str]:
    """Write the learned tensors (plus any the base checkpoint lacked) and their metadata.

    ``base_fp`` is the base's fingerprint when the caller has it; otherwise the base is loaded
    again to compute it (the trained ``model`` no longer holds the base weights). Returns the metadata.
    """
    tensors = encode(model, sel)
    state = model.state_dict()
    for name in new_params:
        if name not in tensors and name in state:
            tensors[name] = state[name].detach().to("cpu", copy=True).contiguous()
    if base_fp is None:
        base_fp = base_fingerprint(cfg.model_name, task, getattr(cfg, "trust_remote_code", False))
    meta = {
        "format": FORMAT, "base_model": cfg.model_name, "model_type": model.config.model_type,
        "fingerprint": base_fp, "task": task.name, "labels": json.dumps(list(task.labels) if task.labels else None),
        "policy": cfg.fine_tune_type, "bias_terms": json.dumps(cfg.bias_terms), "best_epoch": str(epoch),
        "config": json.dumps(cfg.to_dict()), "versions": json.dumps(versions()),
        "tensors_sha256": tensors_digest(tensors),
    }
    if task.custom:  # a task of the user's: what predict, serve and merge know of it (GLUE's are known by name)
        meta["task_definition"] = json.dumps(task_definition(task))
    meta["digest"] = delta_digest(meta)
    io.write_safetensors(Path(path), tensors, meta)
    return meta


def delta_digest(meta: dict[str, str]) -> str:
    """sha256 over every metadata entry but itself (which include ``tensors_sha256``, the tensors' digest):
    a delta whose task, labels, policy or base was corrupted or edited after it was written no longer matches.
    An integrity check, not a signature: anyone can recompute it (docs/DELTAS.md says what that leaves)."""
    body = json.dumps({k: v for k, v in meta.items() if k != "digest"}, sort_keys=True).encode()
    return "sha256:" + hashlib.sha256(b"bitfit-delta-digest/1\n" + body).hexdigest()


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes: a delta whose tensors changed after
    it was written (a flipped bit, an edited value) no longer matches the digest in its metadata."""
    h = hashlib.sha256()
    _hash_tensors(h, tensors)
    return "sha256:" + h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Reading and applying


@dataclass
class Delta:
    """A delta file read into memory: its tensors (CPU) and metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, str]

    @property
    def task(self) -> GlueTask:
        return meta_task(self.path, self.meta)

    @property
    def base_model(self) -> str:
        return self.meta["base_model"]

    @property
    def fingerprint(self) -> str | None:
        return self.meta.get("fingerprint")

    @property
    def config(self) -> dict:
        return _json_meta(self.path, self.meta, "config", dict)

    @property
    def policy(self) -> str:
        return self.meta.get("policy", "?")

    def param_names(self) -> list[str]:
        """The parameters this delta changes, in file order."""
        return list(dict.fromkeys(k.partition("::")[0] for k in self.tensors))

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def delta_path(path: str | os.PathLike) -> Path:
    """A delta file, or a run folder holding ``delta.safetensors``: a regular file (``safe_open`` would wait
    forever on a FIFO, or read a device without end)."""
    p = Path(path)
    if p.is_dir():
        p = p / FILE
    accepted = "accepted: a delta.safetensors file or a run folder holding one"
    try:
        mode = p.stat().st_mode
    except OSError:  # nothing there, a link to nothing, a symlink loop
        raise UserError(f"delta {str(path)!r} not found; {accepted}") from None
    if not stat.S_ISREG(mode):
        raise UserError(f"delta {str(p)!r} is {io.file_kind(mode)}, not a regular file; {accepted}")
    return p


def read(path: str | os.PathLike, allow_unverified: bool = False) -> Delta:
    """Read a delta with safetensors only (no pickle anywhere); refuse anything that is not one, or that
    cannot be verified (no digest or fingerprint) unless ``allow_unverified``."""
    from safetensors import SafetensorError, safe_open

    p = delta_path(path)
    try:
        with safe_open(str(p), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{p} is not a safetensors file ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        "accepted: a delta.safetensors written by a bitfit run") from None
    _check_metadata(p, meta)
    missing = [k for k in ("digest", "tensors_sha256", "fingerprint") if not meta.get(k)]
    if missing and not allow_unverified:
        raise UserError(f"{p} has no {', '.join(missing)} in its metadata, so it cannot be verified; refusing it "
                        "(a delta written by an older version, or edited: pass --allow-unverified to load it anyway)")
    if missing:
        log.warning("%s: loading an unverified delta (no %s)", p, ", ".join(missing))
    if meta.get("tensors_sha256") and tensors_digest(tensors) != meta["tensors_sha256"]:
        raise UserError(f"{p}: its tensors do not match the digest recorded when it was written (corrupted or "
                        "modified); refusing to use it")
    if meta.get("digest") and delta_digest(meta) != meta["digest"]:
        raise UserError(f"{p}: its metadata does not match the digest recorded when it was written (corrupted, or "
                        "edited without recomputing it); refusing to use it")
    meta_task(p, meta)  # after the digests: a refused delta's task definition is never made known to get_task
    return Delta(p, tensors, meta)


def _json_meta(path: Path, meta: dict[str, str], key: str, kind: type):
    try:
        value = json.loads(meta.get(key) or ("{}" if kind is dict else "null"))
    except (ValueError, RecursionError):  # RecursionError: nested too deeply ("[" * 100000)
        value = ...
    if not (isinstance(value, kind) or (kind is not dict and value is None)):
        raise UserError(f"{path}: metadata {key!r} is not {'a JSON object' if kind is dict else 'a JSON list or null'}; "
                        "accepted: a delta.safetensors written by a bitfit run")
    return value


def meta_task(p: Path, meta: dict[str, str]) -> GlueTask:
    """The delta's task: GLUE's by name, or the one its ``task_definition`` describes (a task given as files)."""
    definition = _json_meta(p, meta, "task_definition", dict) if "task_definition" in meta else None
    if definition is not None and definition.get("name") != meta["task"]:
        raise UserError(f"{p}: metadata task {meta['task']!r} and its task_definition's name "
                        f"{definition.get('name')!r} differ; accepted: a delta.safetensors written by a bitfit run")
    return from_definition(definition, str(p)) if definition is not None else get_task(meta["task"])


def _check_metadata(p: Path, meta: dict[str, str]) -> None:
    """Format, the keys every delta has, and JSON where JSON is due; one line for what is wrong."""
    if meta.get("format") != FORMAT:
        raise UserError(f"{p} is not a bitfit delta (format {meta.get('format')!r}); accepted: format {FORMAT!r}")
    missing = [k for k in ("base_model", "task", "model_type", "policy") if k not in meta]
    if missing:
        raise UserError(f"{p} lacks metadata {', '.join(missing)}; accepted: a delta.safetensors written by a bitfit run")
    if meta["policy"] not in METHODS:
        raise UserError(f"{p}: policy {meta['policy']!r} is unknown; accepted: {', '.join(METHODS)}")
    check_settings(_json_meta(p, meta, "config", dict), where=f"{p} (its config)")  # as run_glue.py checks them
    _json_meta(p, meta, "labels", list)
    _json_meta(p, meta, "bias_terms", list)


def check_base(d: Delta, model, fp: str, base_name: str) -> None:
    """Refuse a base whose architecture or weights differ from the one the delta was trained on."""
    model_type = getattr(model.config, "model_type", None)
    if model_type != d.meta["model_type"]:
        raise UserError(f"delta {d.path} is for a {d.meta['model_type']} model ({d.base_model!r}); "
                        f"{base_name!r} is a {model_type} model: pass the base it was trained on (--base)")
    if d.fingerprint is None:
        log.warning("delta %s records no base fingerprint (written before fingerprints were kept): "
                    "cannot check that %r is the base it was trained on", d.path, base_name)
    elif d.fingerprint != fp:
        raise UserError(f"delta {d.path} was trained on base {d.base_model!r} with weights fingerprint "
                        f"{d.fingerprint[:19]}..., but {base_name!r} has {fp[:19]}...: refusing to apply it to other "
                        "weights; pass the base it was trained on (--base)")


def as_delta(d: Delta | str | os.PathLike, allow_unverified: bool = False) -> Delta:
    return d if isinstance(d, Delta) else read(d, allow_unverified)


def load(d: Delta | str | os.PathLike, base: str | None = None, trust_remote_code: bool = False,
         allow_unverified: bool = False):
    """(model, tokenizer): the base (``base`` or the one the delta names), checked, with the delta applied."""
    d = as_delta(d, allow_unverified)
    name = base or d.base_model
    with quiet_base_loading():
        model, new_params = load_model(name, d.task, trust_remote_code)
    check_base(d, model, fingerprint(model, new_params), name)
    apply_tensors(model, d.tensors, where=f"delta {d.path}", policy=d.policy, config=d.config)
    model.eval()
    return model, load_tokenizer(name, trust_remote_code)


# ---------------------------------------------------------------------------------------------
# Merging


MERGE_NOTE = "bitfit_delta.json"  # provenance written beside the merged weights; from_pretrained ignores it


def merge(d: Delta | str | os.PathLike, out: str | os.PathLike, base: str | None = None, overwrite: bool = False,
          trust_remote_code: bool = False, allow_unverified: bool = False) -> Path:
    """Write base + delta as a standalone Hugging Face model folder (weights, config, tokenizer).

    ``AutoModelForSequenceClassification.from_pretrained(out)`` loads it with no dependency on this
    tool, and its predictions equal the delta-applied model's exactly (the same tensors, saved); LoRA and
    IA3 are folded into the weights by PEFT's ``merge`` (equal within float rounding: ``W + BA`` is summed
    once); adapters are refused (one line: they add layers a plain model has no place for).
    Files appear whole: they are written to a temp folder beside ``out``, then moved in.
    """
    d = as_delta(d, allow_unverified)
    if d.policy == "adapters":
        raise UserError(added.MERGE_REFUSED)
    out = Path(out)
    preflight.check_output_folder(str(out), overwrite)
    model, tokenizer = load(d, base, trust_remote_code)
    added.merge(model)  # LoRA / IA3: PEFT folds them into the weights; nothing for other methods
    try:
        _write_merged(d, model, tokenizer, out, base)
    except OSError as e:  # a full disk or read-only file system: one line, exit 74; nothing half-moved in
        raise io.environment_failure(out, e) from None
    log.info("merged %s (%s, %s) onto %s -> %s", d.path, d.task.glue_name, d.policy, base or d.base_model, out)
    return out


def _write_merged(d: Delta, model, tokenizer, out: Path, base: str | None) -> None:
    """Weights, config, tokenizer and provenance into a temp folder beside ``out``, then moved in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        note = {k: v for k, v in d.meta.items() if k != "config"} | {"delta": str(d.path), "merged_onto": base or d.base_model}
        (tmp / MERGE_NOTE).write_text(json.dumps(note, indent=2) + "\n", encoding="utf-8")
        out.mkdir(exist_ok=True)
        for f in sorted(tmp.rglob("*")):
            if f.is_file():
                target = out / f.relative_to(tmp)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# public names (bitfit.read_delta, ...)
read_delta, save_delta, load_delta, merge_delta = read, save, load, merge
