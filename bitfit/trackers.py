"""Experiment tracking (``--report-to``): Accelerate's trackers, written by the main process only.

    --report-to tensorboard   event files in <run folder>/tensorboard/ (``tensorboard --logdir runs``
                              shows every run of a tree, a sweep's included, side by side)
    --report-to wandb         a W&B run named after the run folder (project $WANDB_PROJECT, else "bitfit")
    --report-to mlflow        an MLflow run named after the run folder ($MLFLOW_TRACKING_URI, else ./mlruns)

Every epoch logs the metrics.jsonl rows: ``train/loss``, ``train/lr``, ``train/seconds`` and
``<split>/<metric>`` for each dev split (``dev/accuracy``, ``dev_mismatched/accuracy``, ...), at
step = epoch; the run's settings go in as hyperparameters. A tracker's package that is missing is a
one-line error before anything is written (``missing_package``); a tracker that fails while the run
trains is logged and dropped, never the run.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

log = logging.getLogger("bitfit")

REPORT_TO = ("none", "tensorboard", "wandb", "mlflow")
PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def missing_package(name: str | None) -> str | None:
    """The pip package ``--report-to name`` needs and this environment lacks, else None."""
    package = PACKAGE.get(name or "none")
    return package if package and importlib.util.find_spec(package) is None else None


def _hparams(settings: dict) -> dict:
    """Settings as tracker hyperparameters: numbers, strings and booleans as they are, the rest as text."""
    return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in settings.items()}


def _make(name: str, out: Path, run_name: str):
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    if name == "tensorboard":
        return TensorBoardTracker("tensorboard", logging_dir=str(out))
    if name == "wandb":
        return WandBTracker(os.environ.get("WANDB_PROJECT", "bitfit"), name=run_name)
    return MLflowTracker(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "bitfit"), run_name=run_name)


def open_trackers(name: str | None, out: Path, settings: dict, is_main: bool) -> list:
    """Start the run's tracker (main process; none for 'none'), with the settings as hyperparameters."""
    if not is_main or (name or "none") == "none":
        return []
    tracker = _make(name, out, run_name=str(settings.get("output_path") or out.name))
    try:
        tracker.start()
        tracker.store_init_configuration(_hparams(settings))
    except Exception as e:  # noqa: BLE001 - a tracker's failure must not end the run
        log.warning("--report-to %s could not start (%s); the run goes on without it", name, e)
        return []
    return [tracker]


def epoch_values(rows: list[dict]) -> dict[str, float]:
    """One epoch's metrics.jsonl rows as tracker values: ``<split>/<key>`` for every number but the epoch."""
    return {f"{r['split']}/{k}": v for r in rows for k, v in r.items()
            if k not in ("epoch", "split") and isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_epoch(trackers: list, rows: list[dict], epoch: int) -> None:
    for tracker in list(trackers):
        try:
            tracker.log(epoch_values(rows), step=epoch)
        except Exception as e:  # noqa: BLE001
            log.warning("--report-to %s failed (%s); the run goes on without it", tracker.name, e)
            trackers.remove(tracker)


def close_trackers(trackers: list) -> None:
    for tracker in trackers:
        try:
            tracker.finish()
        except Exception as e:  # noqa: BLE001
            log.warning("--report-to %s did not close cleanly (%s)", tracker.name, e)
    trackers.clear()
