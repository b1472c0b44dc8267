"""The benchmark's plumbing on a tiny model (its numbers are measured elsewhere, never in a test)."""

import json

from bitfit import bench
from test_cli import make_glue_dir


def test_bench_writes_table_json_and_chart(tmp_path, tiny_bert_dir):
    data = make_glue_dir(tmp_path / "glue")
    out = tmp_path / "perf"
    rc = bench.main(["--model", str(tiny_bert_dir), "--data-dir", str(data), "--task", "rte", "--steps", "2",
                     "--reps", "1", "--batch-size", "4", "--max-seq-length", "64", "--device", "cpu",
                     "--regimes", "bitfit", "hf_trainer", "original", "--out", str(out)])
    assert rc == 0
    name = f"bench_rte_{tiny_bert_dir.name}_cpu_b4"
    table = (out / f"{name}.md").read_text()
    for regime in ("bitfit", "hf_trainer", "original"):
        assert f"| {regime} |" in table
    assert "bitfit vs original recipe, speed" in table and "bitfit vs hf_trainer (run_glue defaults), speed" in table
    summary = json.loads((out / f"{name}.json").read_text())["summary"]
    assert summary["bitfit"]["checkpoint_bytes"] < summary["original"]["checkpoint_bytes"]
    assert summary["hf_trainer"]["tokens_per_s"] > 0 and summary["bitfit"]["percent_of_bound"] > 0
    assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
