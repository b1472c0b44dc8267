from pathlib import Path

import pytest

from bitfit import data, hub
from bitfit.data import encode, load_glue, read_tsv
from bitfit.errors import UserError
from bitfit.tasks import get_task
from conftest import GLUE_DIR, needs_glue, write_bert_tokenizer

# rows per file, from ../shared/glue_data/SOURCES.md
ROWS = {"CoLA": (8551, 1043, 1063), "SST-2": (67349, 872, 1821), "MRPC": (3668, 408, 1725),
        "STS-B": (5749, 1500, 1379), "RTE": (2490, 277, 3000), "WNLI": (635, 71, 146)}


@needs_glue()
@pytest.mark.parametrize("glue_name", list(ROWS))
def test_real_glue_files_read_completely(glue_name):
    task = get_task(glue_name)
    splits = load_glue(task, str(GLUE_DIR), with_test=True)
    assert (len(splits["train"]), len(splits["dev"]), len(splits["test"])) == ROWS[glue_name]
    for ex in splits["train"] + splits["dev"]:
        assert len(ex.texts) == len(task.text_columns) and all(isinstance(t, str) and t for t in ex.texts)
        assert ex.label is not None
    assert [e.index for e in splits["test"][:3]] == ["0", "1", "2"]


@needs_glue("RTE")
def test_rte_row_with_extra_tab_takes_label_from_last_column():
    splits = load_glue(get_task("rte"), str(GLUE_DIR))
    row = next(ex for ex in splits["train"] if ex.texts[0].startswith("\"That film wasn't too successful"))  # index 2164
    raw = (GLUE_DIR / "RTE" / "train.tsv").read_text(encoding="utf-8").splitlines()
    line = next(l for l in raw if l.startswith("2164\t"))
    assert line.split("\t")[3] == "" and line.split("\t")[-1] == "not_entailment"
    assert row.label == get_task("rte").labels.index("not_entailment")
    assert row.texts == tuple(line.split("\t")[1:3])


@needs_glue("MRPC")
def test_mrpc_bom_header_and_columns():
    splits = load_glue(get_task("mrpc"), str(GLUE_DIR), with_test=True)
    first = splits["train"][0]
    assert first.label == 1 and first.texts[0].startswith("Amrozi accused his brother, whom he called")
    assert sum(e.label for e in splits["train"]) == 2474  # positives in MRPC train (67.4%)
    assert splits["test"][0].texts[0].startswith("PCCW's chief operating officer")


@needs_glue("CoLA")
def test_cola_headerless_train_and_stsb_scores():
    cola = load_glue(get_task("cola"), str(GLUE_DIR))
    assert cola["train"][0].texts == ("Our friends won't buy this analysis, let alone the next one we propose.",)
    stsb = load_glue(get_task("stsb"), str(GLUE_DIR))
    assert stsb["train"][0].label == 5.0 and stsb["train"][1].label == 3.8
    assert stsb["dev"][0].texts == ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing.")


def _write(tmp_path: Path, folder: str, name: str, text: str) -> Path:
    p = tmp_path / folder / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text, encoding="utf-8")
    return p


def test_missing_column_names_file_and_line(tmp_path):
    p = _write(tmp_path, "RTE", "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tonly one\n")
    with pytest.raises(UserError, match=r"train.tsv:3: expected at least 3 tab-separated columns, found 2"):
        read_tsv(p, get_task("rte"), test=False)


def test_unknown_label_names_value_and_accepted(tmp_path):
    p = _write(tmp_path, "RTE", "train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    with pytest.raises(UserError, match=r"train.tsv:2: unknown label 'maybe'; accepted: entailment, not_entailment"):
        read_tsv(p, get_task("rte"), test=False)


def test_non_utf8_is_rejected_with_the_file(tmp_path):
    p = tmp_path / "RTE" / "train.tsv"
    p.parent.mkdir()
    p.write_bytes(b"index\tsentence1\tsentence2\tlabel\n0\t\xff\xfe\tb\tentailment\n")
    with pytest.raises(UserError, match=r"train.tsv: not valid UTF-8"):
        read_tsv(p, get_task("rte"), test=False)


def test_empty_training_set_and_missing_files(tmp_path):
    _write(tmp_path, "RTE", "train.tsv", "index\tsentence1\tsentence2\tlabel\n")
    _write(tmp_path, "RTE", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(UserError, match=r"the training set of RTE is empty"):
        load_glue(get_task("rte"), str(tmp_path))
    with pytest.raises(UserError, match=r"has no CoLA/train.tsv for task CoLA"):
        load_glue(get_task("cola"), str(tmp_path))
    with pytest.raises(UserError, match=r"is not a folder"):
        load_glue(get_task("rte"), str(tmp_path / "nope"))


def test_hub_unreachable_fails_fast_with_advice(monkeypatch):
    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(UserError, match=r"cannot reach the Hugging Face hub to download GLUE RTE; pass --data-dir"):
        load_glue(get_task("rte"), None)


def test_hub_reachability_is_a_quick_tcp_check(monkeypatch):
    """Answers True for a listening endpoint, False for a refused one and, within its timeout, for a silent one."""
    import socket

    from huggingface_hub import constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()  # nothing listens there: connecting is refused
    held = []
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        assert hub.reachable(timeout=2.0) is True
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port}")
        assert hub.reachable(timeout=2.0) is False

        for _ in range(8):  # fill the listen backlog: further connects get no answer at all
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=0.2))
            except OSError:
                break
        else:
            pytest.skip("this system answers every connect; cannot make a silent endpoint")
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        connects, real_connect = [], socket.create_connection

        def spy(address, timeout=None, *a, **k):
            connects.append(timeout)
            try:
                return real_connect(address, timeout, *a, **k)
            except OSError as e:
                connects.append(type(e))
                raise

        monkeypatch.setattr(socket, "create_connection", spy)
        assert hub.reachable(timeout=0.5) is False
        # it gives up at its own timeout (the socket timed out) instead of the OS's minute of connect retries
        assert connects == [0.5, TimeoutError]
    finally:
        for s in held:
            s.close()
        server.close()


def test_encode_tokenizes_pairs_without_padding(tmp_path):
    tok = write_bert_tokenizer(tmp_path / "tok")
    exs = [data.Example(("the", "good"), 1, "0"), data.Example(("a dog sat on the cat", "no"), 0, "1")]
    enc = encode(exs, tok, max_length=6, regression=False)
    assert enc.lengths() == [5, 6]  # [CLS] the [SEP] good [SEP]; the second is truncated to 6
    assert enc[0]["labels"] == 1 and enc[1]["token_type_ids"][-1] == 1
    from bitfit.data import collator

    batch = collator(tok)([enc[0], enc[1]])
    assert batch["input_ids"].shape == (2, 6)  # padded to the longest in the batch, not to max_seq_length


def test_hub_path_maps_hub_label_order_to_glue_order(monkeypatch):
    """nyu-mll/glue orders MNLI labels entailment, neutral, contradiction; GLUE's files use names."""
    import datasets

    calls = []

    def fake_load_dataset(path, config, split):
        calls.append((path, config, split))
        features = datasets.Features({"premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
                                      "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
                                      "idx": datasets.Value("int32")})
        rows = {"premise": ["p0", "p1", "p2"], "hypothesis": ["h0", "h1", "h2"], "label": [0, 1, 2], "idx": [7, 8, 9]}
        if split.startswith("test"):
            rows["label"] = [-1, -1, -1]
        return datasets.Dataset.from_dict(rows, features=features)

    monkeypatch.setattr(hub, "reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = get_task("mnli")
    splits = load_glue(task, None, with_test=True)
    assert [task.labels[e.label] for e in splits["train"]] == ["entailment", "neutral", "contradiction"]
    assert splits["dev_mismatched"][0].texts == ("p0", "h0")
    assert [e.index for e in splits["test_matched"]] == ["7", "8", "9"] and splits["ax"][0].label is None
    assert ("nyu-mll/glue", "ax", "test") in calls and ("nyu-mll/glue", "mnli", "validation_matched") in calls
