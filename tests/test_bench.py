"""The benchmark's plumbing on a tiny model (its numbers are measured elsewhere, never in a test)."""

import json
import os
import shlex

import pytest

from bitfit import bench
from bitfit.cli import main
from bitfit.cli.bench import build_parser, command_line
from bitfit.methods import METHODS
from test_cli import make_glue_dir


def test_python_m_bitfit_bench_writes_table_json_and_chart(tmp_path, tiny_bert_dir, capsys, monkeypatch):
    data = make_glue_dir(tmp_path / "glue")
    monkeypatch.chdir(tmp_path)  # without -o: ./bench, never the docs' tracked tables (docs/perf)
    rc = main(["bench", "--model", str(tiny_bert_dir), "--data-dir", str(data), "--task", "rte", "--steps", "2",
               "--reps", "1", "--batch-size", "4", "--max-seq-length", "64", "--device", "cpu",
               "--regimes", "bitfit", "hf_trainer", "original"])
    assert rc == 0
    out = tmp_path / "bench"
    name = f"bench_rte_{tiny_bert_dir.name}_cpu_b4"
    table = (out / f"{name}.md").read_text()
    assert capsys.readouterr().out == table
    for regime in ("bitfit", "hf_trainer", "original"):
        assert f"| {regime} |" in table
    assert "bitfit vs original recipe, speed" in table and "bitfit vs hf_trainer (run_glue defaults), speed" in table
    assert "Command: `python -m bitfit bench --task rte" in table and "--out bench" in table
    report = json.loads((out / f"{name}.json").read_text())
    summary = report["summary"]
    assert summary["bitfit"]["checkpoint_bytes"] < summary["original"]["checkpoint_bytes"]
    assert summary["hf_trainer"]["tokens_per_s"] > 0 and summary["bitfit"]["percent_of_bound"] > 0
    pids = {row["pid"] for row in report["rows"]}
    assert len(pids) == 3 and os.getpid() not in pids  # every regime in its own fresh process
    assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_added_module_regimes_and_peft_under_the_trainer_are_measured(tmp_path, tiny_bert_dir):
    data = make_glue_dir(tmp_path / "glue")
    s = bench.Settings(model=str(tiny_bert_dir), data_dir=str(data), task="rte", steps=2, reps=1, batch_size=4,
                       max_seq_length=64, device="cpu", out=str(tmp_path / "bench"))
    rows = {name: bench.measure(s, name) for name in ("lora", "adapters", "peft_lora_trainer", "diff_prune")}
    for row in rows.values():
        assert row["samples_per_s"] > 0 and row["checkpoint_bytes"] > 0
    # the same LoRA tensors either way (rank 8 on query and value of 2 layers), ours in a delta with its metadata
    # and the head, PEFT's in its adapter file
    lora_bytes = 2 * 2 * 8 * (32 + 32) * 4
    assert rows["peft_lora_trainer"]["checkpoint_bytes"] > lora_bytes and rows["lora"]["checkpoint_bytes"] > lora_bytes
    assert rows["adapters"]["checkpoint_bytes"] > rows["lora"]["checkpoint_bytes"]
    # diff_prune: the delta a run writes, after the projection (0.5% of the entries), never the dense search
    assert rows["diff_prune"]["checkpoint_bytes"] < rows["adapters"]["checkpoint_bytes"]
    assert rows["diff_prune"]["non_embedding_params"] == rows["lora"]["non_embedding_params"]  # the model's own


@pytest.mark.parametrize("name, fast", [("lora", True), ("lora_native", False), ("bitfit_native", False)])
def test_native_regimes_measure_pytorchs_dropout_the_others_the_fast_cpu_ops(name, fast, tmp_path, tiny_bert_dir):
    from torch import nn

    from bitfit.fastops import FastDropout

    s = bench.Settings(model=str(tiny_bert_dir), data_dir=str(make_glue_dir(tmp_path / "glue")), task="rte",
                       max_seq_length=64, device="cpu", out=str(tmp_path / "bench"))
    kinds = {type(m) for m in bench.prepare(s, name, "cpu").model.modules() if isinstance(m, nn.Dropout)}
    assert kinds == ({FastDropout} if fast else {nn.Dropout}), name


def test_regimes_are_methods_of_the_registry():
    for name, regime in bench.REGIMES.items():
        assert regime.method in METHODS, name
    assert bench.REGIMES["full_ft"].flop_factor == 3 and bench.REGIMES["frozen"].flop_factor == 1
    assert bench.REGIMES["bitfit_qi"].flop_factor == bench.REGIMES["hf_trainer"].flop_factor == 2


def test_summary_uses_the_method_flop_factor():
    row = {"samples_per_s": 1.0, "tokens_per_s": 1e3, "peak_mb": 1.0, "training_mb": 1.0, "checkpoint_bytes": 1,
           "eval_samples_per_s": 1.0, "epoch_seconds": 1.0, "non_embedding_params": 1e6}
    rows = [dict(row, regime=name, pid=1) for name in ("full_ft", "bitfit_gc", "frozen")]
    summary = bench.summarize(rows, gflops=1.0)  # 2 FLOPs x 1e6 params x 1e3 tokens/s = 2 GFLOP/s per pass
    assert [summary[n]["percent_of_bound"] for n in ("full_ft", "bitfit_gc", "frozen")] == [600, 400, 200]


def test_recorded_command_parses_back_to_the_same_settings(tmp_path):
    from bitfit.cli import make_parser

    s = bench.Settings(task="SST-2", data_dir=str(tmp_path), batch_size=8, pad_all=True,
                       regimes=["full_ft", "bitfit_qi"], out=str(tmp_path / "out dir"))
    words = shlex.split(command_line(s))
    assert words[:4] == ["python", "-m", "bitfit", "bench"]
    args = build_parser(make_parser("bench", "")).parse_args(words[4:])
    assert bench.Settings(**vars(args)) == s
    assert bench.report_name(s) == "bench_sst2_minilm_auto_b8_pad128"


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "steps 0 is out of range"),
    (["--regimes", "bitfit", "qlora"], "invalid choice: 'qlora'"),
    (["--task", "squad"], "unknown task"),
])
def test_bad_settings_get_one_line_and_exit_2(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_bench_times_the_step_every_run_takes(tmp_path, tiny_bert_dir, monkeypatch):
    from bitfit.training import loop

    data = make_glue_dir(tmp_path / "glue")
    real, calls = loop._step, []

    def spy(tr, batch, *a, **kw):
        calls.append(tr.cfg)
        return real(tr, batch, *a, **kw)

    monkeypatch.setattr(loop, "_step", spy)
    s = bench.Settings(model=str(tiny_bert_dir), data_dir=str(data), steps=2, reps=1, batch_size=4, device="cpu",
                       regimes=["bitfit_qi"], out=str(tmp_path / "out"))
    row = bench.measure(s, "bitfit_qi")
    assert len(calls) == bench.WARM + 2  # warm-up and timed steps, all through bitfit.training's own step
    assert calls[0].fine_tune_type == "bitfit" and calls[0].bias_terms == ["query", "intermediate"]
    assert calls[0].batch_size == 4 and row["samples_per_s"] > 0 and row["checkpoint_bytes"] > 0
    calls.clear()
    bench.measure(s, "original")  # a peer's recipe: its own loop, not ours
    assert calls == []
