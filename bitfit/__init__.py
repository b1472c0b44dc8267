"""bitfit: parameter-efficient fine-tuning of transformer encoders on GLUE.

    import bitfit
    cfg = bitfit.RunConfig(output_path="runs/rte", task_name="rte", fine_tune_type="bitfit",
                           data_dir="../shared/glue_data", epochs=3)
    results = bitfit.run(cfg)                          # the run folder's results.json, as a dict
    bitfit.read_state("runs/rte").status               # "complete"
    d = bitfit.read_delta("runs/rte")                  # what the run learned, checked
    model, tokenizer = bitfit.load_delta(d)            # base + delta, ready to predict
    bb = bitfit.Backbone("minilm"); bb.add("rte", "runs/rte"); bb.predict("rte", [("A.", "B.")])
    bitfit.write_report(["runs"], "report/")

Names are imported when first used, so ``import bitfit`` (and every ``-h``) stays free of torch.
"""

from __future__ import annotations

import importlib

_API = {  # public name -> module that defines it
    "RunConfig": "bitfit.config",
    "run": "bitfit.training",
    "METHODS": "bitfit.methods", "Method": "bitfit.methods", "get_method": "bitfit.methods",
    "select": "bitfit.policies", "apply": "bitfit.policies", "Selection": "bitfit.policies",
    "read_delta": "bitfit.delta", "save_delta": "bitfit.delta", "load_delta": "bitfit.delta",
    "merge_delta": "bitfit.delta",
    "Backbone": "bitfit.serve",
    "write_report": "bitfit.report",
    "submit": "bitfit.submit",
    "read_state": "bitfit.runstate", "RunState": "bitfit.runstate",
    "UserError": "bitfit.errors", "RunStopped": "bitfit.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'bitfit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
