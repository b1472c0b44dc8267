"""No input can hurt the machine or the user's files (issue 26): the run lock never writes through a symlink,
every run-folder file parsed is read bounded (no FIFO hang, no RecursionError), ``python -m bitfit state``
answers for every folder, and a full disk at any write is one line and exit 74."""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from safetensors import SafetensorError

import run_glue
from bitfit import checkpoint, io, runlock
from bitfit.errors import EnvironmentFailure, UnreadableFile, UserError
from bitfit.runlock import LOCK_FILE, RunLock, holder
from bitfit.runstate import BROKEN, INTERRUPTED, NEW, read_state
from conftest import REPO
from test_cli import make_glue_dir

DEEP = "[" * 100_000  # json.loads raises RecursionError on it


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    return make_glue_dir(tmp_path_factory.mktemp("glue"))


def base_args(model, data, out, *extra) -> list[str]:
    args = ("-t", "rte", "-m", model, "--data-dir", data, "-o", out, "-e", "1", "--no-verbose", *extra)
    return [str(a) for a in args]


def cli(capsys, *argv) -> tuple[int, str]:
    rc = run_glue.main(list(argv))
    return rc, capsys.readouterr().err


LOG_LINE = re.compile(r"\d\d:\d\d:\d\d (DEBUG|INFO|WARNING) ")  # the run's own log ("no GPU found: ..."), not the error


def one_line(err: str) -> str:
    """The one error line on stderr (besides the run's log lines); fails on a traceback or a second line."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, err
    return lines[0]


def within(seconds: float, fn, *args):
    """``fn(*args)``'s result or exception, failing the test if it has not returned in ``seconds`` (a blocked open)."""
    box: dict = {}

    def call():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            box["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn.__name__} blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]


def unblock(fifo: Path) -> None:
    """Open a FIFO for writing without waiting, so a reader stuck on it (if the test failed) can go on."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# 1. The run lock never writes through a symlink


def _char_device(path: Path) -> None:
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is
    except (OSError, AttributeError) as e:
        pytest.skip(f"cannot make a character device here ({e})")


LOCK_NAMES = {  # how a lock name is made into something that is not a regular file -> what the refusal says
    "symlink to a file": (lambda lock, victim: lock.symlink_to(victim), "a symlink"),
    "dangling symlink": (lambda lock, victim: lock.symlink_to(victim.parent / "not-there"), "a symlink"),
    "symlink to /dev/null": (lambda lock, victim: lock.symlink_to("/dev/null"), "a symlink"),
    "FIFO": (lambda lock, victim: os.mkfifo(lock), "a FIFO"),
    "character device": (lambda lock, victim: _char_device(lock), "a character device"),
    "folder": (lambda lock, victim: lock.mkdir(), "a folder"),
}


@pytest.mark.parametrize("kind", LOCK_NAMES)
def test_the_lock_is_refused_in_one_line_and_never_writes_through_its_name(tmp_path, capsys, kind, tiny_bert_dir,
                                                                           glue_dir):
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    victim.write_bytes(b"precious\n")
    make, what = LOCK_NAMES[kind]
    make(run / LOCK_FILE, victim)
    with pytest.raises(UserError, match=f"lock '.*{LOCK_FILE}' is {what}.*accepted: a regular file.*remove it"):
        within(20, RunLock(run).acquire)
    assert within(20, holder, run) is None  # readers neither follow it nor wait on it
    rc, err = cli(capsys, *base_args(tiny_bert_dir, glue_dir, run, "--overwrite"))
    assert rc == 2 and f"is {what}, not a regular file" in one_line(err)
    assert victim.read_bytes() == b"precious\n" and not (victim.parent / "not-there").exists()
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # the start wrote nothing


HOLD = ("import os, sys, time; from bitfit.runlock import RunLock; lock = RunLock(sys.argv[1]).acquire(); "
        "os.pwrite(lock._fd, sys.argv[2].encode(), 0) if len(sys.argv) > 2 else None; print('held', flush=True); "
        "time.sleep(60)")


def hold_lock(run: Path, *content: str) -> subprocess.Popen:
    """Another process holding ``run``'s lock (with ``content`` in its lock file instead of its PID)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run), *content], cwd=REPO, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_busy_lock_names_only_a_pid_on_one_line(tmp_path):
    run = tmp_path / "run"
    proc = hold_lock(run, "12\nTraceback: \x1b[31m")
    try:
        with pytest.raises(UserError) as e:
            RunLock(run).acquire()
        assert str(e.value) == (f"run folder {str(run)!r} is in use by another run (pid unknown); wait for it to end "
                                "or stop it (one writer per folder)")
        assert holder(run) == "unknown"
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# 2. Every run-folder file parsed is read bounded


def test_read_json_file_reads_only_a_bounded_regular_file(tmp_path):
    good = tmp_path / "good.json"
    good.write_text('{"a": [1, 2]}')
    assert io.read_json_file(good) == {"a": [1, 2]}
    cases = {"fifo": "a FIFO, not a regular file", "link": "a symlink", "folder": "a folder, not a regular file",
             "deep": "JSON nested too deeply", "big": "larger than 200,000 bytes", "garbage": "JSONDecodeError",
             "latin1": "UnicodeDecodeError"}
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to(good)
    (tmp_path / "folder").mkdir()
    (tmp_path / "deep").write_text(DEEP)
    (tmp_path / "big").write_text(json.dumps(["x" * 200_001]))
    (tmp_path / "garbage").write_text("{not json")
    (tmp_path / "latin1").write_bytes(b'{"a": "\xe9"}')
    try:
        for name, why in cases.items():
            with pytest.raises(UnreadableFile) as e:
                within(20, io.read_json_file, tmp_path / name, 200_000)
            assert e.value.why == why and str(tmp_path / name) in str(e.value) and "accepted:" in str(e.value)
            assert "\n" not in str(e.value)
    finally:
        unblock(tmp_path / "fifo")
    with pytest.raises(FileNotFoundError):
        io.read_json_file(tmp_path / "missing")
    assert io.JSON_LIMIT == 64 << 20 and io.read_jsonl_file(_jsonl(tmp_path)) == [{"epoch": 1}, {"epoch": 2}]


def _jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n\n{"epoch": 2}\n')
    return path


def test_a_write_replaces_a_symlink_at_the_name_and_never_touches_its_target(tmp_path):
    run, victim = tmp_path / "run", tmp_path / "victim.txt"
    run.mkdir()
    victim.write_bytes(b"precious\n")
    (run / "results.json").symlink_to(victim)
    io.write_json(run / "results.json", {"status": "complete"})
    assert victim.read_bytes() == b"precious\n"
    assert not (run / "results.json").is_symlink() and json.loads((run / "results.json").read_text()) == {
        "status": "complete"}


def _run_folder(path: Path, checkpoint_epoch: int | None = None, **files: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"config": {"task_name": "rte", "epochs": 3}}))
    if checkpoint_epoch is not None:
        (path / "checkpoint").mkdir()
        (path / "checkpoint" / "state.json").write_text(json.dumps({"epoch": checkpoint_epoch}))
    for name, text in files.items():
        (path / name.replace("_", ".")).write_text(text)
    return path


def test_a_checkpoint_state_json_that_is_deep_malformed_or_names_other_files_is_one_line(tmp_path):
    run = _run_folder(tmp_path / "run", checkpoint_epoch=1)
    state = run / "checkpoint" / "state.json"
    for text, message in ((DEEP, "unreadable (JSON nested too deeply)"), ("[]", "not a JSON object"),
                          (json.dumps({"format": checkpoint.FORMAT}), "malformed (KeyError: 'files')"),
                          (json.dumps({"format": checkpoint.FORMAT, "files": {"state": "../../victim.safetensors"},
                                       "sha256": {}}), "names the file '../../victim.safetensors'")):
        state.write_text(text)
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
            checkpoint.load(run)
        assert "\n" not in str(e.value)


def test_the_checkpoint_is_never_written_or_emptied_through_a_symlink(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "models"
    run.mkdir()
    elsewhere.mkdir()
    (elsewhere / "model.safetensors").write_bytes(b"weights")
    (elsewhere / "notes.txt").write_text("mine")
    (run / "checkpoint").symlink_to(elsewhere)
    with pytest.raises(UserError, match="checkpoint folder '.*' is a symlink; accepted: a folder of the run's own"):
        checkpoint.save(run, checkpoint.TrainState(), best_changed=True)
    checkpoint.remove(run)  # what --overwrite and a completed run do: the link goes, never what it points at
    assert not (run / "checkpoint").exists() and not (run / "checkpoint").is_symlink()
    assert sorted(p.name for p in elsewhere.iterdir()) == ["model.safetensors", "notes.txt"]
    (run / "checkpoint").mkdir()
    for name in ("state-e1.safetensors", "state.json", "mine.safetensors"):
        (run / "checkpoint" / name).write_text("x")
    checkpoint.remove(run)  # only the files a checkpoint is made of
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["mine.safetensors"]


# ---------------------------------------------------------------------------------------------
# 3. python -m bitfit state: one line per folder, whatever the others hold


def state_lines(*folders: Path) -> list[list[str]]:
    proc = subprocess.run([sys.executable, "-m", "bitfit", "state", *map(str, folders)], capture_output=True, text=True,
                          cwd=REPO, timeout=60)  # a FIFO read would block here until the timeout
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [line.split("\t") for line in proc.stdout.splitlines()]


def test_state_answers_for_every_folder_on_its_own_line(tmp_path):
    fifo_results = _run_folder(tmp_path / "fifo", checkpoint_epoch=1)
    os.mkfifo(fifo_results / "results.json")
    deep_config = tmp_path / "deep"
    deep_config.mkdir()
    (deep_config / "config.json").write_text(DEEP)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    parent = tmp_path / "runs"
    for name in ("rte", "cola", "mrpc", "sst2"):
        _run_folder(parent / name)
    good = _run_folder(tmp_path / "good", checkpoint_epoch=2)
    odd = _run_folder(tmp_path / "tab\tand\nnewline", checkpoint_epoch=1)
    folders = [fifo_results, deep_config, tmp_path / "loop", tmp_path / "dangling", parent, good, odd,
               tmp_path / "none"]
    try:
        lines = state_lines(*folders)
    finally:
        unblock(fifo_results / "results.json")
    assert [line[0] for line in lines] == [BROKEN] * 5 + [INTERRUPTED, INTERRUPTED, NEW]
    assert [line[1] for line in lines[:6]] == list(map(str, folders[:6]))
    reasons = [line[2] for line in lines]
    assert reasons[0] == "results.json is unreadable (a FIFO, not a regular file)"
    assert reasons[1] == "no usable config.json (unreadable (JSON nested too deeply))"
    assert reasons[2].startswith("a symlink loop; accepted: a run folder")
    assert reasons[3].startswith(f"a symlink to {str(tmp_path / 'nowhere')!r}, which does not exist")
    assert reasons[4] == ("not a run folder: it holds 4 run folder(s) (cola, mrpc, rte, ...); name them, e.g. "
                          f"{parent}/cola")
    assert lines[6][1] == str(odd).replace("\t", "\\t").replace("\n", "\\n")
    assert all("--overwrite" not in r for r in reasons[2:5])


def test_a_run_holding_the_lock_reads_running_pid_and_is_never_told_to_overwrite(tmp_path):
    run = _run_folder(tmp_path / "run")  # in its first epoch: config.json, no checkpoint yet
    assert "--overwrite" in read_state(run).reason  # not running: a start that died before its checkpoint
    proc = hold_lock(run)
    try:
        st = read_state(run)
        assert st.running == str(proc.pid) and st.reason.startswith(f"running (pid {proc.pid})")
        assert "--overwrite" not in st.reason and "--resume" not in st.reason, st.reason
        (run / "checkpoint").mkdir()
        (run / "checkpoint" / "state.json").write_text(json.dumps({"epoch": 2}))
        assert read_state(run).reason.startswith(f"running (pid {proc.pid}): epoch 2 of 3 checkpointed")
        assert state_lines(run)[0][2].startswith(f"running (pid {proc.pid})")
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------
# 4. A full disk at any write: one line, exit 74, nothing half-written


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs mounted at a fresh folder (the tests run as root); unmounted after the test."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs here ({(proc.stderr or proc.stdout).strip()}): needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Fill ``disk`` until ``leave`` bytes are free (0: until the file system refuses more)."""
    with open(disk / "filler", "wb", buffering=0) as f:  # unbuffered: nothing left to flush (and fail) on close
        try:
            while os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize > leave + 4096:
                f.write(b"\0" * 4096)
            while not leave:
                f.write(b"\0" * 4096)
        except OSError as e:
            assert e.errno == errno.ENOSPC


def test_a_checkpoint_that_does_not_fit_on_a_real_disk_is_one_line_exit_74(tiny_disk, capsys, tiny_bert_dir, glue_dir):
    fill(tiny_disk, leave=160 << 10)  # room for config.json and metrics.jsonl, not for full_ft's ~300 KB checkpoint
    run = tiny_disk / "run"
    rc, err = cli(capsys, *base_args(tiny_bert_dir, glue_dir, run, "-f", "full_ft"))
    line = one_line(err)
    assert rc == 74 and line.startswith("run_glue.py: error: cannot write ") and "No space left on device" in line, err
    assert "state-e1.safetensors" in line
    assert not list(run.rglob("*.tmp")) and not list(run.rglob("*.safetensors"))  # nothing half-written
    assert json.loads((run / "config.json").read_text())["config"]["fine_tune_type"] == "full_ft"  # written before:
    assert [json.loads(row)["epoch"] for row in (run / "metrics.jsonl").read_text().splitlines()] == [1, 1]  # intact
    assert not (run / LOCK_FILE).exists()


def test_taking_the_lock_on_a_full_real_disk_is_one_line_exit_74(tiny_disk, capsys, tiny_bert_dir, glue_dir):
    fill(tiny_disk, leave=0)
    rc, err = cli(capsys, *base_args(tiny_bert_dir, glue_dir, tiny_disk / "run"))
    assert rc == 74 and one_line(err) == (
        f"run_glue.py: error: cannot write {tiny_disk / 'run' / LOCK_FILE}: No space left on device (it is left as it "
        "was; free space or write to another disk)")
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["filler"]  # no lock file, no run folder


def test_safetensors_own_no_space_error_is_exit_74(tmp_path, capsys, monkeypatch, tiny_bert_dir, glue_dir):
    import safetensors.torch

    def full(*a, **k):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    target = tmp_path / "delta.safetensors"
    target.write_bytes(b"old")
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(EnvironmentFailure, match="No space left on device"):
        io.write_safetensors(target, {}, {})
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["delta.safetensors"]
    rc, err = cli(capsys, *base_args(tiny_bert_dir, glue_dir, tmp_path / "run"))
    assert rc == 74 and "No space left on device" in one_line(err) and not list((tmp_path / "run").rglob("*.tmp"))

    def other(*a, **k):
        raise SafetensorError("Error while serializing: something else")

    monkeypatch.setattr(safetensors.torch, "save_file", other)
    with pytest.raises(SafetensorError, match="something else"):  # not a disk's fault: left as the library said it
        io.write_safetensors(target, {}, {})


def test_a_full_disk_while_writing_the_lock_pid_is_exit_74_and_leaves_nothing(tmp_path, capsys, monkeypatch,
                                                                               tiny_bert_dir, glue_dir):
    real_write = os.write

    def full(fd, data):
        if data == f"{os.getpid()}\n".encode():  # the lock's PID; any other write goes through
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(runlock.os, "write", full)
    with pytest.raises(EnvironmentFailure, match="No space left on device"):
        RunLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run").exists()
    rc, err = cli(capsys, *base_args(tiny_bert_dir, glue_dir, tmp_path / "run"))
    assert rc == 74 and LOCK_FILE in one_line(err) and not (tmp_path / "run").exists()
