"""``python -m bitfit predict``: one backbone, several task deltas, predictions for any input file.

    python -m bitfit predict --delta runs/rte --input ../shared/glue_data/RTE/test.tsv --probs
    python -m bitfit predict --delta runs/rte runs/stsb --input pairs.jsonl -o predictions/
    python -m bitfit predict --delta runs/tickets --input new_tickets.csv --probs   # a task given as files
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .. import io, preflight
from ..config import check_settings
from ..errors import UserError
from ..logs import setup_logging

log = logging.getLogger("bitfit")


def build_parser(p):
    """Flags of ``python -m bitfit predict`` (added to the parser ``bitfit.__main__`` makes)."""
    p.add_argument("--delta", nargs="+", action="extend", required=True, metavar="DELTA",
                   help="delta.safetensors files or run folders; several share one backbone, loaded once")
    p.add_argument("--input", "-i", nargs="+", action="extend", required=True, metavar="FILE",
                   help="examples to predict: a TSV with a header (text columns named as the task's, e.g. "
                   "sentence1/sentence2, or GLUE's test-file layout), a .csv file with a header (read as training "
                   "reads one; quoted fields may hold commas and line breaks), a .jsonl file, or - for standard "
                   "input; an id/idx/index column becomes the output's index; one for all deltas, or one per delta")
    p.add_argument("--output", "-o", default="-", help="file to write (- for standard output); with several deltas "
                   "a folder, one <task>.tsv (or .jsonl) each")
    p.add_argument("--format", choices=("tsv", "jsonl"), default=None,
                   help="output format (default: jsonl if --output ends in .jsonl, else tsv)")
    p.add_argument("--input-format", choices=("auto", "tsv", "csv", "jsonl"), default="auto",
                   help="input format (auto: by file suffix; for - by the first line: { for JSON lines, commas "
                   "without a tab for CSV, else TSV)")
    p.add_argument("--probs", action="store_true", help="also write each label's probability (classification tasks)")
    p.add_argument("--base", default=None, help="base model (default: the one the first delta names); must match "
                   "every delta's fingerprint")
    p.add_argument("--batch-size", type=int, default=None, help="examples per forward pass (default: the run's eval batch size)")
    p.add_argument("--max-seq-length", type=int, default=None, help="truncate inputs (default: the run's max seq length)")
    p.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (auto: the first GPU if there is one)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow a base model whose code lives on the hub")
    p.add_argument("--allow-unverified", action="store_true", help="load deltas that carry no digest or "
                   "fingerprint (written by an older version); they cannot be checked for corruption, edits or their base")
    p.add_argument("--verbose", action=argparse.BooleanOptionalAction, default=True,
                   help="log loading and task-switch times (--no-verbose: warnings only)")
    return p


def _check(args) -> str:
    """Refuse inconsistent flags before anything loads; returns the output format."""
    if len(args.input) not in (1, len(args.delta)):
        raise UserError(f"{len(args.input)} inputs for {len(args.delta)} deltas; accepted: one input for all, or one per delta")
    check_settings({"eval_batch_size": args.batch_size, "max_seq_length": args.max_seq_length},
                   labels={"eval_batch_size": "--batch-size", "max_seq_length": "--max-seq-length"})  # as run_glue.py
    if args.output != "-":
        preflight.check_not_under_a_file(args.output, "output")
    fmt = args.format or ("jsonl" if args.output.endswith(".jsonl") else "tsv")
    several = len(args.delta) > 1
    if several and args.output == "-" and fmt == "tsv":
        raise UserError("several deltas write one table each: pass -o FOLDER, or --format jsonl for one stream")
    if several and args.output != "-" and Path(args.output).is_file():
        raise UserError(f"output {args.output!r} is a file; with several deltas accepted: a folder")
    if not several and args.output != "-" and Path(args.output).is_dir():
        raise UserError(f"output {args.output!r} is a folder; with one delta accepted: a file path, or - for standard output")
    return fmt


def cli(args) -> int:
    setup_logging(args.verbose)
    fmt = _check(args)
    from .. import delta as deltas
    from ..devices import resolve_device
    from ..serve import Backbone, format_rows, parse_inputs, read_source, task_keys

    device = resolve_device(args.device)
    ds = [deltas.read(p, args.allow_unverified) for p in args.delta]
    keys = task_keys(ds)
    several = len(keys) > 1
    bb = Backbone.for_deltas(ds, base=args.base, device=device, trust_remote_code=args.trust_remote_code, names=keys)
    bb.show_progress = args.verbose
    log.info("backbone %s loaded once in %.2f s; tasks: %s", bb.name, bb.load_seconds, ", ".join(keys))
    sources: dict[str, tuple[str, str]] = {}
    for i, key in enumerate(keys):
        src = args.input[i if len(args.input) > 1 else 0]
        if src not in sources:
            sources[src] = read_source(src)
        name, text = sources[src]
        task = bb.tasks[key].task
        examples = parse_inputs(name, text, task, args.input_format)
        preds = bb.predict(key, examples, args.batch_size, args.max_seq_length, probs=args.probs)
        _write(format_rows(task, examples, preds, fmt, args.probs, task_name=key if several else None),
               args.output, key, fmt, several, len(preds))
    _log_switches(bb.switches[1:])  # the first is base -> task, not a task switch
    return 0


def _write(rows: str, output: str, key: str, fmt: str, several: bool, n: int) -> None:
    if output == "-":
        sys.stdout.write(rows)
        sys.stdout.flush()
        return
    out = Path(output) / f"{key}.{fmt}" if several else Path(output)
    io.write_text(out, rows)
    log.info("%s: %d predictions -> %s", key, n, out)


def _log_switches(switches: list[tuple[str | None, str | None, float]]) -> None:
    if switches:
        times = sorted(s for _, _, s in switches)
        log.info("task switches: %d, median %.3f ms, max %.3f ms (%s)", len(times), 1e3 * times[len(times) // 2],
                 1e3 * times[-1], "; ".join(f"{a} -> {b} {1e3 * s:.3f} ms" for a, b, s in switches))
