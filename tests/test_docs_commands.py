"""Every command README.md and docs/*.md show does what its text says (issue 26).

tests/test_readme.py runs README.md's commands in order on a slice of the real data. The docs hold many
more (benchmarks of minutes, sweeps of hundreds of runs), so here each is checked without training:

- every ``python run_glue.py`` / ``python -m bitfit <command>`` line parses with that command's own
  parser, and a training command's values pass RunConfig's checks (a renamed flag or an out-of-range
  value in a doc fails here);
- the experiment scripts take their grid from flags only: a doc that sets an environment variable a
  script ignores (``TASKS=... scripts/table2_glue.sh``, which once planned the whole paper grid) fails;
- the reproduction commands of docs/RESULTS.md are planned with ``--dry-run`` on the real data folder,
  and plan exactly the runs the text says, with no task whose data is missing.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bitfit import cli as commands
from conftest import REPO, needs_glue

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SETTINGS_ENV = ("PYTHON", "PYTHONPATH", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "GLUE_DIR")
PLACEHOLDER = re.compile(r"\$|<|\[|\.\.\.|\bRUN\b|/path/to")  # a template, not a command to run as written
PRESET_SCRIPTS = {p.name for p in (REPO / "scripts").glob("*.sh") if "sweep_preset" in p.read_text()
                  and p.name != "_sweep.sh"}


def doc_commands() -> list[tuple[str, str]]:
    """(file, command) for every command line in a bash block or in inline code of README.md and docs/*.md."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    found.append((path.name, line.strip()))
        for code in re.findall(r"`([^`\n]+)`", text):
            if re.match(r"(\w+=\S+ )*(python |bash scripts/|scripts/)", code):
                found.append((path.name, code.strip()))
    return found


def words(command: str) -> list[str]:
    """The first command of a line: comments, pipes, redirections and chained commands cut off."""
    first = re.split(r"\s(?:\||>|&&|;)\s", command)[0]
    return shlex.split(first, comments=True)


def split_env(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    env = {}
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        key, _, value = argv.pop(0).partition("=")
        env[key] = value
    return env, argv


def bitfit_command(argv: list[str]) -> tuple[str, list[str]] | None:
    """(command name, its flags) of a ``python run_glue.py`` or ``python -m bitfit X`` line, else None."""
    if argv[:1] == ["accelerate"] and "run_glue.py" in argv:  # accelerate launch [its flags] run_glue.py ...
        return "train", argv[argv.index("run_glue.py") + 1:]
    if argv[:2] == ["python", "run_glue.py"]:
        return "train", argv[2:]
    if argv[:3] == ["python", "-m", "bitfit"] and len(argv) > 3:
        return argv[3], argv[4:]
    return None


def parsed_commands():
    out = []
    for doc, command in doc_commands():
        if PLACEHOLDER.search(command):
            continue
        env, argv = split_env(words(command))
        found = bitfit_command(argv) if argv else None
        if found and found[1] and "-h" not in found[1]:  # a bare name in prose, or help: not a run
            out.append(pytest.param(doc, command, *found, id=f"{doc}:{command[:60]}"))
    return out


@pytest.mark.parametrize("doc, command, name, flags", parsed_commands())
def test_every_documented_command_parses_and_its_values_are_accepted(doc, command, name, flags):
    import importlib

    assert name in commands.COMMANDS, f"{doc}: unknown command {name!r} in: {command}"
    module = importlib.import_module(f"bitfit.cli.{name}")
    parser = module.build_parser(commands.make_parser(f"python -m bitfit {name}", ""))
    try:
        args = parser.parse_args(flags)
    except SystemExit:
        pytest.fail(f"{doc}: does not parse: {command}")
    if name == "train":
        from bitfit.config import RunConfig

        RunConfig(**{k: v for k, v in vars(args).items()})  # UserError names the bad value


def test_the_docs_hold_enough_commands_to_check():
    """The extraction itself: it finds the commands the docs are known to show (a regex that silently found
    nothing would make the test above pass vacuously)."""
    names = {p.values[2] for p in parsed_commands()}
    assert {"train", "predict", "merge", "submit", "sweep", "bench", "report"} <= names, names
    assert len(parsed_commands()) >= 40


def test_experiment_scripts_are_narrowed_by_flags_not_by_environment_variables():
    bad = []
    for doc, command in doc_commands():
        env, argv = split_env(words(command))
        script = next((Path(a).name for a in argv[:2] if a.endswith(".sh")), None)
        if script in PRESET_SCRIPTS and set(env) - set(SETTINGS_ENV):
            bad.append(f"{doc}: {command}")
    assert PRESET_SCRIPTS >= {"table2_glue.sh", "table3_bias_subsets.sh", "data_size.sh"}
    assert not bad, "the preset scripts read no such variables (narrow with --tasks, --seeds, ...):\n" + "\n".join(bad)


def results_reproductions() -> list[str]:
    """docs/RESULTS.md's preset-script commands."""
    return [c for doc, c in doc_commands() if doc == "RESULTS.md" and Path(words(c)[0]).name in PRESET_SCRIPTS]


@needs_glue("SST-2")
@needs_glue("RTE")
@needs_glue("MRPC")
@needs_glue("STS-B")
@needs_glue("CoLA")
def test_results_reproduction_commands_plan_what_the_text_says_with_every_tasks_data_here(tmp_path):
    """Table 2 (4 tasks x 2 methods x 3 seeds), Table 3 (x 8 methods), SST-2 at 4,000 (8 methods x 3 seeds),
    the data-size curve (3 sizes x 2 methods x 3 seeds): planned on the real data, nothing missing."""
    expected = {"table2_glue.sh": 24, "table3_bias_subsets.sh": 96, "data_size.sh": 18}
    cmds = results_reproductions()
    assert len(cmds) == 4, cmds
    for command in cmds:
        argv = words(command)
        script = Path(argv[0]).name
        argv[3] = str(tmp_path / "runs")  # OUT_ROOT: nothing is written by a dry run, but not into the repo
        proc = subprocess.run(["bash", str(REPO / "scripts" / script), *argv[1:], "--dry-run"], cwd=REPO,
                              capture_output=True, text=True, timeout=300, env={"PYTHON": sys.executable,
                                                                              "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr == "", f"{command}: {proc.stderr}"  # no "would stop here" note: every task's data is here
        n = 24 if "sst2" in argv else expected[script]
        assert proc.stdout.splitlines()[-1] == f"{n} runs: {n} to start", (command, proc.stdout[-300:])
    assert not (tmp_path / "runs").exists()
