"""Shared fixtures: tiny random models saved as local folders (no downloads), real-data locations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GLUE_DIR = Path(os.environ.get("BITFIT_TEST_GLUE_DIR", REPO.parent / "shared" / "glue_data"))

WORDS = ("the a an is was are not no yes good bad movie film man woman dog cat ran sat on in of to and "
         "it this that he she they we you i what who . , ! ? ' - great awful boring fun").split()


def needs_glue(task_folder: str = ""):
    """Skip (with the reason) when the real GLUE data is absent; CI has it at ../shared/glue_data."""
    path = GLUE_DIR / task_folder
    return pytest.mark.skipif(not path.exists(), reason=f"real GLUE data not found at {path}")


def write_bert_tokenizer(folder: Path):
    from transformers import BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(folder)
    return tok


def write_roberta_tokenizer(folder: Path):
    from transformers import RobertaTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])}
    for ch in _byte_level_alphabet():
        vocab.setdefault(ch, len(vocab))
    tok = RobertaTokenizerFast(vocab=vocab, merges=[])
    tok.save_pretrained(folder)
    return tok


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table: the 256 symbols a byte-level BPE vocabulary starts from."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tiny_config(arch: str = "bert", **kw):
    from transformers import BertConfig, RobertaConfig

    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                  max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    common.update(kw)
    if arch == "bert":
        return BertConfig(vocab_size=100, **common)
    if arch == "roberta":
        return RobertaConfig(vocab_size=300, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                             max_position_embeddings=130, **{k: v for k, v in common.items() if k != "max_position_embeddings"})
    raise ValueError(arch)


def make_tiny_model_dir(folder: Path, arch: str = "bert", seed: int = 0) -> Path:
    """Save a random tiny encoder (base model weights only, like a hub checkpoint) plus tokenizer."""
    from transformers import AutoModel

    torch.manual_seed(seed)
    (write_bert_tokenizer if arch == "bert" else write_roberta_tokenizer)(folder)
    AutoModel.from_config(tiny_config(arch)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_bert"), "bert")


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_roberta"), "roberta")


def tiny_classifier(arch: str = "bert", num_labels: int = 2, seed: int = 0):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(arch, num_labels=num_labels))


def accelerate_launch(num_processes: int = 2) -> list[str]:
    """``accelerate launch`` of ``num_processes`` data-parallel processes on this machine, on a port of their
    own (the default 29500 would be shared with any other launch running at the same time: another
    test worker's, another user's)."""
    import socket
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no"]


def two_processes_and_one(common: list[str], out: Path, batch: int = 8) -> tuple[Path, Path]:
    """run_glue.py ``common`` twice: under two gloo processes at ``batch / 2`` each (``out/two``), and as one
    process at ``batch`` (``out/one``): the same global batch. Returns (one, two); each must have succeeded."""
    import os
    import subprocess
    import sys

    env = os.environ | {"OMP_NUM_THREADS": "1"}
    two = subprocess.run([*accelerate_launch(2), str(REPO / "run_glue.py"), *common, "-b", str(batch // 2), "-o",
                          str(out / "two")], capture_output=True, text=True, timeout=300, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(REPO / "run_glue.py"), *common, "-b", str(batch), "-o", str(out / "one")],
                         capture_output=True, text=True, timeout=300, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    return out / "one", out / "two"


def _cuda_here() -> bool:
    return torch.cuda.is_available()


# The files that take longest (real Ray sweeps, the README's commands, two-process launches, real data),
# longest first: they start first, so that parallel workers (pytest-xdist, one file per worker at a
# time) do not end with one long file running alone. Measured with --durations on two cores.
LONGEST_FIRST = ("test_sweep_faults.py", "test_readme.py", "test_sweep.py", "test_sweep_cluster.py", "test_multiproc_stops.py",
                 "test_reliability.py", "test_hardening.py", "test_golden.py", "test_bench.py")


def pytest_collection_modifyitems(config, items):
    """The longest files first (a stable sort: each file's tests keep their order). ``gpu`` tests are
    collected everywhere and skip, with the reason, where CUDA is absent."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    if _cuda_here():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu; run them with: python -m pytest -m gpu -rs)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request, monkeypatch):
    """Every test not marked ``gpu`` runs on the CPU, on a GPU box too: no GPU is visible to it or to the
    processes it starts (bit-identical resume, two gloo processes), whatever CUDA_VISIBLE_DEVICES said."""
    if "gpu" in request.keywords:
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models gain nothing from threads, and oversubscribed cores make them crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
