"""The report: learning rates chosen on dev over seeds, skipped runs with reasons, delta figures checked
against the base weights read independently, and the experiment scripts' queue (never training)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bitfit.cli import main as bitfit_main
from bitfit.config import RunConfig
from bitfit.errors import UserError
from bitfit.report import write_report
from bitfit.report.deltas import BaseModels, bias_change, layer_distance
from bitfit.report.groups import select
from bitfit.report.runs import collect
from bitfit.tasks import get_task
from conftest import REPO, make_tiny_model_dir
from test_cli import make_glue_dir, run_cli

# ---------------------------------------------------------------------------------------------
# Run folders written by hand: exact numbers, no training


BASELINES = {  # what always giving the majority answer scores on the real dev sets (metrics.baseline)
    "rte": {"answer": "entailment", "accuracy": 0.5270758122743683},
    "mrpc": {"answer": "1", "f1": 0.8122270742358079, "accuracy": 0.6838235294117647},
    "stsb": {"answer": "constant", "pearson": 0.0, "spearmanr": 0.0},
    "cola": {"answer": "1", "mcc": 0.0, "accuracy": 0.6912751677852349},
    "sst2": {"answer": "1", "accuracy": 0.5091743119266054},
}


def fake_run(root: Path, name: str, task: str = "rte", lr: float = 1e-3, seed: int = 0, main: float = 0.5,
             status: str | None = "complete", train_size: int = 100, results: bool = True, **cfg) -> Path:
    """A run folder as bitfit.train writes it, with ``main`` as every dev metric (MRPC's accuracy: main - 0.1)."""
    folder = root / name
    folder.mkdir(parents=True)
    t = get_task(task)
    config = RunConfig(output_path=str(folder), task_name=task, learning_rate=lr, seed=seed,
                       **({"epochs": 2} | cfg)).to_dict()
    (folder / "config.json").write_text(json.dumps({"config": config, "task": t.glue_name, "num_processes": 1}))
    epochs = config["epochs"]
    metrics = {m: main - 0.1 * (m == "accuracy" and task == "mrpc") for m in t.metrics}
    rows = []
    for e in range(1, epochs + 1):
        rows.append({"epoch": e, "split": "train", "loss": 0.7, "lr": lr, "seconds": 1.0})
        rows += [{"epoch": e, "split": s.name, "loss": 0.6} | {m: v - 0.01 * (epochs - e) for m, v in metrics.items()}
                 for s in t.dev_splits]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if results:
        res = {"task": task, "fine_tune_type": config["fine_tune_type"], "best_epoch": epochs,
               "completed_epochs": epochs, "epochs": epochs, "main_metric": t.main_metric, "best_main_metric": main,
               "best_metrics": {s.name: metrics | {"loss": 0.6} for s in t.dev_splits},
               "trainable_params": 10, "total_params": 1000, "trainable_percent": 1.0,
               "trainable_params_in_layers": 8, "train_samples": train_size * epochs,
               "baseline": {s.name: BASELINES[task] for s in t.dev_splits}}
        if status is not None:
            res["status"] = status
        (folder / "results.json").write_text(json.dumps(res))
    return folder


def skipped_reasons(readme: Path) -> dict[str, str]:
    text = readme.read_text().split("## Skipped runs", 1)[1]
    return {m[1]: m[2] for m in re.finditer(r"^\| (\S+) \| (.+) \|$", text, re.M) if m[1] not in ("run", "---")}


def test_learning_rate_chosen_by_mean_dev_over_seeds_and_reported_with_std(tmp_path):
    runs = tmp_path / "runs"
    for seed, main in enumerate((0.70, 0.60, 0.65)):  # lr 1e-3: the best single run, but mean 0.65
        fake_run(runs, f"bitfit/lr1e-3_s{seed}", lr=1e-3, seed=seed, main=main)
    for seed, main in enumerate((0.66, 0.68, 0.67)):  # lr 4e-4: mean 0.67 wins
        fake_run(runs, f"bitfit/lr4e-4_s{seed}", lr=4e-4, seed=seed, main=main)
    fake_run(runs, "full/lr2e-5", lr=2e-5, main=0.72, fine_tune_type="full_ft", epochs=3)
    fake_run(runs, "qi/mrpc", task="mrpc", main=0.80, bias_terms=["intermediate", "query"])

    found, skipped = collect([runs])
    cells, more = select(found)
    assert skipped == more == []
    rte = next(c for c in cells if c.key.method == "bitfit" and c.key.task == "rte")
    assert rte.lr == 4e-4 and [r.seed for r in rte.runs] == [0, 1, 2]
    assert rte.main().mean == pytest.approx(0.67) and rte.main().std == pytest.approx(0.01, rel=1e-4)
    assert rte.main(1e-3).mean == pytest.approx(0.65) and rte.main(1e-3).n == 3

    out = write_report([runs], tmp_path / "out", deltas=False)
    text = out.read_text()
    table = text.split("## minilm, full training sets\n\n", 1)[1].split("\n\n", 1)[0]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines()}
    assert list(rows)[2:] == ["full_ft", "bitfit", "bitfit (query, intermediate)",  # the paper's row order
                              "trivial baseline (majority class; STS-B: a constant)"]
    # the reference row: RTE's and MRPC's majority class, as the runs recorded it
    assert rows["trivial baseline (majority class; STS-B: a constant)"].endswith("| 81.2 / 68.4 | 52.7 | 67.0 |")
    assert "MRPC (F1 / acc)" in rows["method"] and "RTE (acc)" in rows["method"]
    # one seed: no ±; a cell with fewer seeds than the table's most says how many it has
    assert "| 67.0 ± 1.0 |" in rows["bitfit"] and "| 72.0 (1 seed) |" in rows["full_ft"]
    assert "| 80.0 / 70.0 (1 seed) |" in rows["bitfit (query, intermediate)"]
    assert "\n\nSeeds per cell: 3, or as many as the cell says.\n" in text
    assert "0.0004 (3 seeds of 2 rates)" in text
    grid = (tmp_path / "out" / "grid.md").read_text()
    assert "**0.0004**" in grid and "**67.0 ± 1.0**" in grid and "65.0 ± 5.0" in grid
    assert len(list((tmp_path / "out" / "figures").glob("curves_*.png"))) == 3
    assert "None: every run folder found was used." in text


def test_a_rate_on_one_lucky_seed_does_not_beat_a_rate_confirmed_on_three(tmp_path):
    # the two-stage protocol: every rate on seed 0, then seeds 1 and 2 at seed 0's best; a rate left at
    # one seed is shown in grid.md but cannot win, in the report and in the sweep's summary alike
    from bitfit.sweep.summary import best_rate_lines
    runs = tmp_path / "runs"
    paths = [fake_run(runs, "bitfit/lr1e-4_s0", lr=1e-4, seed=0, main=0.80)]  # one seed, the best number
    paths += [fake_run(runs, f"bitfit/lr1e-3_s{seed}", lr=1e-3, seed=seed, main=main)
              for seed, main in enumerate((0.75, 0.65, 0.70))]  # mean 0.70 over 3 seeds
    (g,), _ = select(collect([runs])[0])
    assert g.eligible == [1e-3] and g.lr == 1e-3 and g.main().mean == pytest.approx(0.70)
    assert g.main(1e-4).mean == pytest.approx(0.80)  # still there, for grid.md
    line = next(x for x in best_rate_lines(paths) if "RTE" in x)
    assert "lr 0.001 -> accuracy 0.7000 (3 seeds)" in line, line
    write_report([runs], tmp_path / "out", deltas=False)
    grid = (tmp_path / "out" / "grid.md").read_text()
    assert "**0.001**" in grid and "| 0.0001 | 80.0" in grid, grid


def test_methods_in_the_papers_order_bias_subsets_by_size(tmp_path):
    runs = tmp_path / "runs"
    for name, cfg, percent in [("q", {"bias_terms": ["query"]}, 0.01), ("all", {}, 0.09),
                               ("frozen", {"fine_tune_type": "frozen"}, 0.001), ("full", {"fine_tune_type": "full_ft"}, 100),
                               ("qi", {"bias_terms": ["query", "intermediate"]}, 0.04),
                               ("i", {"bias_terms": ["intermediate"]}, 0.03),
                               ("rand", {"fine_tune_type": "rand_uniform"}, 0.09)]:
        res = fake_run(runs, name, **cfg) / "results.json"
        res.write_text(json.dumps(json.loads(res.read_text()) | {"trainable_percent": percent}))
    text = write_report([runs], tmp_path / "out", deltas=False).read_text()
    table = text.split("## minilm, full training sets\n\n", 1)[1].split("\n\n", 1)[0]
    assert [line.split(" | ")[0].lstrip("| ") for line in table.splitlines()[2:]] == [
        "full_ft", "bitfit", "bitfit (query, intermediate)", "bitfit (intermediate)", "bitfit (query)",
        "rand_uniform", "frozen", "trivial baseline (majority class; STS-B: a constant)"]


def test_skipped_runs_are_listed_with_their_reason_and_never_mixed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    fake_run(runs, "ok0", seed=0, main=0.60)
    fake_run(runs, "ok1", seed=1, main=0.62)
    fake_run(runs, "old_no_status", seed=2, main=0.64, status=None)  # before results.json had a status: complete
    fake_run(runs, "more_epochs", seed=3, main=0.99, epochs=5)
    fake_run(runs, "ok0_copy", seed=0, main=0.10)  # same lr and seed as ok0
    stopped = fake_run(runs, "stopped", seed=4, status="interrupted") / "checkpoint"  # Ctrl-C after epoch 2
    stopped.mkdir()
    (stopped / "state.json").write_text(json.dumps({"epoch": 2}))
    fake_run(runs, "stopped_unsaved", seed=9, status="interrupted")  # no checkpoint: nothing to resume from
    fake_run(runs, "nan", seed=5, status="diverged")
    fake_run(runs, "running", seed=6, results=False)
    ckpt = fake_run(runs, "killed", seed=7, results=False) / "checkpoint"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"epoch": 1}))
    (fake_run(runs, "garbled", seed=8) / "results.json").write_text("{not json")
    model = runs / "merged_model"  # a Hugging Face model folder is not a run
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))

    readme = write_report([runs], tmp_path / "out", deltas=False)
    reasons = skipped_reasons(readme)
    base = "runs"  # relative to the working directory, as the report names every folder
    assert set(reasons) == {f"{base}/{n}" for n in ("more_epochs", "ok0_copy", "stopped", "stopped_unsaved", "nan",
                                                    "running", "killed", "garbled")}
    assert reasons[f"{base}/more_epochs"].startswith("different settings: epochs=5, where the other")
    assert "epochs=2; not mixed" in reasons[f"{base}/more_epochs"]
    assert reasons[f"{base}/ok0_copy"] == ("duplicate: same method, task, model, training size, learning rate and "
                                           f"seed as {base}/ok0")
    assert reasons[f"{base}/stopped"].startswith("incomplete: interrupted after epoch 2 of 2")
    assert "--resume" in reasons[f"{base}/stopped"]
    assert reasons[f"{base}/stopped_unsaved"].startswith("failed: ") and "--overwrite" in reasons[f"{base}/stopped_unsaved"]
    assert reasons[f"{base}/nan"].startswith("failed: diverged")
    assert reasons[f"{base}/running"].startswith("incomplete: no results.json, 2 of 2 epochs in metrics.jsonl")
    assert reasons[f"{base}/killed"].startswith("incomplete: interrupted after epoch 1 of 2")
    assert "--resume" in reasons[f"{base}/killed"]
    assert reasons[f"{base}/garbled"].startswith("failed: results.json is unreadable")
    assert "| 62.0 ± 2.0 |" in readme.read_text()  # ok0, ok1, old_no_status; the 0.99 and 0.10 runs left out
    assert "\n\nSeeds per cell: 3.\n" in readme.read_text()  # every cell has them all: no cell says its count


def test_a_one_off_option_run_does_not_replace_the_main_run_on_a_tie(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    fake_run(runs, "rte_bitfit", main=0.48)
    fake_run(runs, "rte_bitfit_attn0", main=0.55, attention_dropout=0.0)  # one run each: a tie in its group
    fake_run(runs, "stsb_bitfit", task="stsb", main=0.85)  # the rest of the tree runs the default
    fake_run(runs, "rte_full_ft", main=0.58, fine_tune_type="full_ft")
    cells, skipped = select(collect([runs])[0])
    rte = next(c for c in cells if c.key.method == "bitfit" and c.key.task == "rte")
    assert [r.label for r in rte.runs] == ["runs/rte_bitfit"]
    assert [s.label for s in skipped] == ["runs/rte_bitfit_attn0"]
    assert "different settings: attention_dropout=0.0" in skipped[0].reason


def test_data_size_curve_and_one_table_per_training_size(tmp_path):
    runs = tmp_path / "runs"
    for n, (bitfit, full) in {100: (0.55, 0.52), 1000: (0.62, 0.63), None: (0.70, 0.74)}.items():
        size = {} if n is None else {"max_train_samples": n}
        fake_run(runs, f"bitfit_{n}", main=bitfit, train_size=n or 2490, **size)
        fake_run(runs, f"full_{n}", main=full, train_size=n or 2490, fine_tune_type="full_ft", **size)
    fake_run(runs, "frozen", main=0.5, fine_tune_type="frozen")  # one size only: no line of its own
    text = write_report([runs], tmp_path / "out", deltas=False).read_text()
    titles = re.findall(r"^## (.+)$", text, re.M)
    assert titles[:3] == ["minilm, full training sets", "minilm, first 100 training examples",
                          "minilm, first 1,000 training examples"]
    section = text.split("## Training-set size", 1)[1]
    assert "| method | 100 | 1,000 | 2,490 |" in section
    assert "| full_ft | 52.0 | 63.0 | 74.0 |" in section and "| bitfit | 55.0 | 62.0 | 70.0 |" in section
    assert "frozen" not in section.split("## Skipped runs")[0]
    assert (tmp_path / "out" / "figures" / "data_size_minilm_rte.png").stat().st_size > 1000


def test_output_folder_is_not_overwritten_unless_asked(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "a")
    out = tmp_path / "out"
    write_report([runs], out, deltas=False)
    stale = out / "figures" / "curves_old.png"
    stale.write_bytes(b"x")
    with pytest.raises(UserError, match="not empty"):
        write_report([runs], out, deltas=False)
    write_report([runs], out, overwrite=True, deltas=False)
    assert not stale.exists() and (out / "README.md").is_file()
    with pytest.raises(UserError, match="no run folder"):
        write_report([tmp_path / "out" / "figures"], tmp_path / "out2")


def test_no_absolute_path_in_the_report_made_from_absolute_roots_elsewhere(tmp_path, monkeypatch):
    runs = tmp_path / "runs"  # absolute, as are the output folder and a local model folder
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    for seed in (0, 1):
        fake_run(runs, f"bitfit_s{seed}", seed=seed, model_name=str(model))
    fake_run(runs, "bitfit_s0_copy", seed=0, model_name=str(model))  # a duplicate: names the run it repeats
    fake_run(runs, "bitfit_e5", seed=2, epochs=5, model_name=str(model))  # names the group it differs from
    fake_run(runs, "full/size100", fine_tune_type="full_ft", max_train_samples=100, train_size=100)
    fake_run(runs, "full/all", fine_tune_type="full_ft", train_size=2490)
    fake_run(runs, "running", seed=3, results=False)
    elsewhere = tmp_path / "work" / "here"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)

    readme = write_report([runs], tmp_path / "out")  # with deltas: the runs have none, so notes name the folders
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.suffix != ".png"]
    assert sorted(p.name for p in written) == ["README.md", "grid.md"]
    for path in written:
        text = path.read_text(encoding="utf-8")
        assert str(tmp_path) not in text and tmp_path.as_posix() not in text
        assert not re.search(r"(?<![\w.~<])/\w", text), (path.name, re.search(r".{40}(?<![\w.~<])/\w.{40}", text))
    text = readme.read_text()
    assert "under `../../runs`" in text and "## ../../models/tiny, full training sets" in text
    assert "| ../../runs/bitfit_s0_copy | duplicate: " in text and "as ../../runs/bitfit_s0 |" in text
    assert "not drawn from ../../runs/bitfit_s0: delta '../../runs/bitfit_s0' not found" in text
    assert "../../runs/bitfit_s0<br>../../runs/bitfit_s1" in (tmp_path / "out" / "grid.md").read_text()


# ---------------------------------------------------------------------------------------------
# Real tiny runs: the delta figures


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny BERT whose biases are not zero (random init gives zeros), so b_initial matters."""
    from transformers import AutoModel

    folder = make_tiny_model_dir(tmp_path_factory.mktemp("base"), "bert", seed=3)
    model = AutoModel.from_pretrained(folder)
    torch.manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0.0, 0.5)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_dir) -> Path:
    root = tmp_path_factory.mktemp("trained")
    glue = make_glue_dir(root / "glue")
    runs = root / "runs"
    common = ("-t", "rte", "-m", base_dir, "--data-dir", glue, "-e", 1, "--no-verbose", "--max-eval-samples", 8)
    for name, args in {"bitfit": ("-f", "bitfit", "-l", "1e-2"),
                       "bitfit_qi": ("-f", "bitfit", "-l", "1e-2", "--bias-terms", "query", "intermediate"),
                       "full_ft": ("-f", "full_ft", "-l", "1e-3")}.items():
        assert run_cli("-o", runs / name, *common, *args) == 0
    return runs


def _base_weights(base_dir: Path) -> dict[str, torch.Tensor]:
    """Read straight from the checkpoint, whose names lack the task model's ``bert.`` prefix."""
    return {f"bert.{k}": v for k, v in load_file(base_dir / "model.safetensors").items()}


def test_bias_change_is_mean_abs_difference_from_the_pretrained_bias(trained, base_dir):
    from bitfit.delta import read

    base = _base_weights(base_dir)
    delta = read(trained / "bitfit").tensors
    change = bias_change(read(trained / "bitfit"), BaseModels())
    in_layers = ("query", "key", "value", "attention_output", "intermediate", "output", "attention_layernorm",
                 "output_layernorm")  # the embeddings LayerNorm lies outside the layers
    assert set(change) == {(role, layer) for role in in_layers for layer in (0, 1)}
    for (role, layer), name in {("query", 0): "attention.self.query", ("intermediate", 1): "intermediate.dense",
                                ("attention_output", 1): "attention.output.dense",
                                ("output_layernorm", 0): "output.LayerNorm"}.items():
        key = f"bert.encoder.layer.{layer}.{name}.bias"
        assert change[(role, layer)] == pytest.approx(float((delta[key] - base[key]).abs().mean()), rel=1e-6)
        assert change[(role, layer)] < 0.5 * float(delta[key].abs().mean())  # measured from b_initial, not from 0

    subset = bias_change(read(trained / "bitfit_qi"), BaseModels())
    assert {role for role, _ in subset} == {"query", "intermediate"} and all(v > 0 for v in subset.values())


def test_full_ft_distance_per_layer_and_the_report_draws_both_figures(trained, base_dir, tmp_path):
    from bitfit.delta import read

    base = _base_weights(base_dir)
    delta = read(trained / "full_ft").tensors
    dist = layer_distance(read(trained / "full_ft"), BaseModels())
    assert list(dist) == ["embeddings", "0", "1", "pooler"]
    names = [k for k in base if k.startswith("bert.encoder.layer.1.")]
    diff = sum(float(((delta[k] - base[k]) ** 2).sum()) for k in names) ** 0.5
    norm = sum(float((base[k] ** 2).sum()) for k in names) ** 0.5
    assert dist["1"] == pytest.approx((diff / norm, diff), rel=1e-6) and diff > 0

    readme = write_report([trained], tmp_path / "out")
    text = readme.read_text()
    figures = {p.name for p in (tmp_path / "out" / "figures").iterdir()}
    slug = f"{base_dir.name}_full_rte"
    assert {f"bias_change_{slug}_bitfit.png", f"bias_change_{slug}_bitfit_query_intermediate.png",
            f"distance_{slug}_full_ft.png"} <= figures
    assert f"(figures/bias_change_{slug}_bitfit.png)" in text and f"(figures/distance_{slug}_full_ft.png)" in text
    assert "## Figures not drawn" not in text


def test_bias_change_refuses_a_base_other_than_the_one_trained_on(trained, base_dir, tmp_path):
    from bitfit.delta import read

    d = read(trained / "bitfit")
    d.meta["fingerprint"] = "sha256:" + "0" * 64
    with pytest.raises(UserError, match="other weights than the run was trained on"):
        bias_change(d, BaseModels())


def test_python_m_bitfit_report(trained, tmp_path):
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "bitfit", "report", str(trained), "-o", str(tmp_path / "out"), "--no-deltas", "--no-verbose"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "out" / "README.md")


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    fake_run(tmp_path / "runs", "a")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    for argv, message in (([str(tmp_path / "runs"), "-o", str(tmp_path / "out")], "pass --overwrite"),
                          ([str(tmp_path / "nowhere"), "-o", str(tmp_path / "o2")], "does not exist"),
                          ([str(tmp_path / "runs")], "required: --output/-o")):
        assert bitfit_main(["report", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err and err.startswith("python -m bitfit report: error: ")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"] and not (tmp_path / "o2").exists()


# ---------------------------------------------------------------------------------------------
# The experiment scripts: one line each over python -m bitfit sweep's presets (dry runs: never training)


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    cmd = ["bash", str(REPO / "scripts" / name), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.mark.parametrize("name, runs, first", [
    ("table2_glue.sh", 8, "full/rte/full_ft/lr1e-5_seed0"),
    ("table3_bias_subsets.sh", 32, "full/rte/bitfit_query/lr1e-4_seed0"),
    ("data_size.sh", 72, "n100/rte/full_ft/lr1e-5_seed0"),
    ("bias_change.sh", 2, "full/rte/bitfit/lr1e-3_seed0"),
])
def test_scripts_are_the_sweep_presets_and_dry_run_their_grids(name, runs, first, tmp_path):
    proc = _script(name, "bert-base-cased", "/data/glue dir", str(tmp_path / "runs"), "--tasks", "rte", "--seeds", "0",
                   "--dry-run")
    assert proc.returncode == 0, proc.stderr
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert rows[-1] == [f"{runs} runs: {runs} to start"]
    assert rows[0][:3] == ["new", "new", str(tmp_path / "runs" / "bert-base-cased" / first)]
    assert not (tmp_path / "runs").exists()


def test_scripts_skip_complete_runs_and_refuse_missing_arguments(tmp_path):
    done = tmp_path / "runs" / "bert-base-cased" / "full" / "rte" / "bitfit" / "lr1e-3_seed0"
    fake_run(done.parent, done.name, lr=1e-3)
    proc = _script("bias_change.sh", "bert-base-cased", "/data", str(tmp_path / "runs"), "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split("\t")[:2] == ["skip", "complete"]
    assert proc.stdout.splitlines()[-1] == "2 runs: 1 complete (skipped), 1 to start"
    bad = _script("table2_glue.sh", "bert-base-cased")
    assert bad.returncode == 2 and bad.stderr.startswith("usage:") and len(bad.stderr.splitlines()) == 1
