"""The paper's tables and figures from a tree of finished run folders; never trains anything.

    python -m bitfit report runs/ -o report/
    python -m bitfit report runs/ -o report/ --no-deltas      # tables and curves only: fast

    from bitfit.report import write_report
    write_report(["runs/"], "report/")                        # -> Path("report/README.md")

    from bitfit.report.runs import collect
    from bitfit.report.groups import select
    runs, skipped = collect(["runs/"])
    groups, skipped_more = select(runs)

Every folder under the roots that holds a run (``config.json`` of a run, ``results.json`` or
``metrics.jsonl``) is read. Runs group by (method, task, model, ``--max-train-samples``), where the
method is the fine-tune type with its bias terms and layers, e.g. ``bitfit (query, intermediate)``.
Within a group the learning rate with the best mean dev main metric over seeds is chosen (ties: the
smaller rate) among the rates with the most seeds (every rate on seed 0, then more seeds at the best:
the one-seed rates are shown in grid.md but cannot win on one lucky seed), and the table shows that rate's mean ± sample std over seeds (a cell with fewer seeds
than the table's most says how many it has). A run is left out, and listed with the reason, when it
is incomplete (no results, interrupted), failed (diverged, broken), a duplicate, or its settings
(epochs, batch size, ...) differ from the rest of its group, which are never silently mixed: the
settings most runs of the group share win. Run folders are named relative to the current working
directory, never by an absolute path, so a report can be committed as it is.

A task given as files (``run_glue.py -t NAME --train-file ...``) is known from its runs' config.json
(``task_definition``), never from its files: its columns follow GLUE's, by name, with its own metrics
and baseline (MSE as it is, 4 significant digits, not ×100; lower is better, so it never chooses
anything); the average column is GLUE's columns only ("GLUE avg" beside such tasks, none without a GLUE
column); the file paths are not compared (as ``--data-dir`` is not), the definitions are: runs that
define one name differently are skipped with both definitions (the one most runs share is kept).

    report/README.md   one table per model and training-set size (rows: methods; columns: tasks),
                       the learning rates chosen, links to every figure, the skipped runs
    report/grid.md     every learning rate of every group, mean ± std and seeds, the chosen one marked
    report/figures/    curves_*.png        dev main metric per epoch, one line per learning rate
                       bias_change_*.png   BitFit: mean |b_final - b_initial| per bias role and layer
                       distance_*.png      full fine-tuning: ||W_ft - W_0|| / ||W_0|| per layer
                       data_size_*.png     main metric against training-set size, one line per method

The delta figures compare a run's ``delta.safetensors`` with its base model loaded again (and
checked against the delta's fingerprint); for a hub model that means the local cache.

The modules, in the order the report is made:

    runs.py      find run folders and read them (bitfit.runstate says which are complete); Run, Skipped
    groups.py    group runs, keep the settings that agree, choose each group's learning rate; RunGroup
    tables.py    numbers (×100, mean ± std) and the markdown tables
    figures.py   the PNG figures (matplotlib)
    deltas.py    bias change and per-layer distance from the runs' deltas and base models (torch)
    write.py     write_report: README.md, grid.md and figures/ from all of the above
"""

from __future__ import annotations

from .write import write_report

__all__ = ["write_report"]
