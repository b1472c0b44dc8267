"""README.md's commands, run in order as a new user would, on a tiny slice of the real GLUE data.

Every line of every ```bash block runs, verbatim but for one substitution (``-e N`` -> ``-e 1``, so
each run is one epoch), in a fresh folder laid out like a clone (``run_glue.py`` here,
``../shared/glue_data`` beside it) whose GLUE files are the real ones cut to their first rows. The
set-up commands (install, test) are not re-run, and a line is skipped only if it says why at its end
(``# needs the internet``, ``# GPU box``). An example that stops working, or stops chaining into the
next, fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import zipfile
from pathlib import Path

from conftest import GLUE_DIR, REPO, needs_glue

ROWS = 24  # data rows kept of every GLUE file
SETUP = ("pip install -r requirements.txt", "python -m pytest")
SKIP_MARKERS = ("# needs the internet", "# GPU box")


def readme_commands() -> list[str]:
    """Every command line of README.md's bash blocks, in order (continuations joined, comments dropped)."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                lines.append(line.strip())
    return lines


def slice_of_glue(root: Path) -> Path:
    """The real GLUE folders, each file cut to its header and first ROWS rows."""
    for folder in ("RTE", "STS-B", "CoLA"):
        (root / folder).mkdir(parents=True)
        for f in sorted((GLUE_DIR / folder).glob("*.tsv")):
            with open(f, encoding="utf-8", newline="") as src:
                head = [next(src) for _ in range(ROWS + 1)]
            (root / folder / f.name).write_text("".join(head), encoding="utf-8")
    return root


def one_epoch(command: str) -> str:
    return re.sub(r"(^|\s)-e \d+", r"\1-e 1", command)


@needs_glue("RTE")
def test_every_readme_command_runs_in_order_and_chains(tmp_path):
    commands = readme_commands()
    assert commands[:2] == list(SETUP)
    slice_of_glue(tmp_path / "shared" / "glue_data")
    clone = tmp_path / "clone"
    clone.mkdir()
    (clone / "run_glue.py").symlink_to(REPO / "run_glue.py")
    (clone / "examples").symlink_to(REPO / "examples")  # the task-of-your-own example's files
    env = os.environ | {"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.pop("GLUE_DIR", None)
    ran, skipped = [], []
    for command in commands[2:]:
        if command.endswith(SKIP_MARKERS):
            skipped.append(command)
            continue
        proc = subprocess.run(["bash", "-c", one_epoch(command)], cwd=clone, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"README command failed: {command}\n{proc.stderr[-3000:]}"
        ran.append(command)
    assert len(ran) >= 10 and len(skipped) <= 2, (ran, skipped)
    # what the commands promise, read back
    assert (clone / "runs" / "stsb" / "STS-B.tsv").read_text().count("\n") == ROWS + 1
    assert (clone / "merged" / "stsb" / "config.json").is_file()
    assert (clone / "preds_rte.tsv").read_text().splitlines()[0].startswith("index\tprediction\tprob_")
    assert sorted(p.name for p in (clone / "preds").iterdir()) == ["rte.tsv", "stsb.tsv"]
    with zipfile.ZipFile(clone / "glue_submission.zip") as z:
        assert sorted(z.namelist()) == ["CoLA.tsv", "RTE.tsv", "STS-B.tsv"]
    assert (clone / "report" / "README.md").is_file()
    ids = [r.split(",")[0] for r in (REPO / "examples" / "tickets" / "test.csv").read_text().splitlines()[1:]]
    predicted = [r.split("\t") for r in (clone / "runs" / "tickets" / "test_predictions.tsv").read_text().splitlines()]
    assert predicted[0] == ["index", "prediction"] and [r[0] for r in predicted[1:]] == ids
    assert {r[1] for r in predicted[1:]} <= {"account", "billing", "bug"}


def test_the_readme_skips_only_what_cannot_run_here():
    skipped = [c for c in readme_commands() if c.endswith(SKIP_MARKERS)]
    assert all("bert-base-cased" in c or "accelerate launch" in c for c in skipped), skipped
