"""Sweeps: the paper's grids (and any other) as one command, on Ray Tune, resumable.

    python -m bitfit sweep --tasks rte mrpc --methods bitfit full_ft --learning-rates 1e-4 1e-3 \\
        --seeds 0 1 -m minilm --data-dir ../shared/glue_data -o runs -e 3
    python -m bitfit sweep --preset table2 -m bert-base-cased --data-dir ../shared/glue_data -o runs --gpus-per-run 0.25
    python -m bitfit sweep --config sweep.yaml -o runs --dry-run

The modules, in the order a sweep uses them:

    grid.py      tasks x methods (rates, epochs) x seeds x sizes -> trials (run folder + settings), checked
    presets.py   the paper's grids (table2, table3, data-size, bias-change)
    plan.py      what to do with each run folder, from bitfit.runstate.read_state (skip/resume/overwrite/new)
    driver.py    embedded Ray or a cluster: placing runs on GPUs, failing fast, one Tune trial per run,
                 retries of lost workers, interrupts; what became of each run
    control.py   the sweep's folder OUT/.tune/<sweep>/ that the driver and its trials share (marker, stop)
    asha.py      --early-stop asha, decided by each trial from its group's run folders
    progress.py  the progress lines (a Tune callback)
    raycompat.py every reliance on Ray beyond its plain public calls, in one place
    reaper.py    ends the embedded Ray if the driver is killed outright
    summary.py   what happened, and the best learning rate per task and method among rates that beat
                 the trivial baseline

Each trial is one ordinary ``bitfit.training.run`` (``bitfit/cli/sweep_trial.py``, since only the
command layer calls the training loop), writing the same run folder ``run_glue.py`` would. See
docs/SWEEPS.md.
"""
