"""Training: ``run(cfg)`` fine-tunes one model on one task and writes its run folder.

    setup.py     prepare(cfg): data, model, method, device, all checked before anything is written
    loop.py      run(cfg): start, one epoch, evaluate, end of epoch, finish
    evaluate.py  predictions and loss over a split, across processes
    optim.py     the optimizer and the learning-rate schedule
    stops.py     why a run stops early, agreed by every process (non-finite loss, signal, early stop)
"""

from .loop import run

__all__ = ["run"]
