"""What training changed, from each run's ``delta.safetensors`` and its base model loaded again (imports torch).

    from bitfit.delta import read
    from bitfit.report.deltas import BaseModels, bias_change, layer_distance
    bases = BaseModels()
    bias_change(read("runs/rte_bitfit"), bases)       # {("query", 0): 0.0031, ...}: role, layer -> mean |Δb|
    layer_distance(read("runs/rte_full"), bases)      # {"embeddings": (0.01, 2.3), "0": ..., "pooler": ...}
    lines, notes = delta_sections(groups, Path("report/figures"), Path("report"))

The base is loaded as training loaded it and checked against the delta's fingerprint, so a hub
model means the local cache; a base that cannot be loaded or has other weights is a note, not a figure.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..delta import Delta, fingerprint, quiet_base_loading, read
from ..errors import UserError
from ..models import load_model
from ..policies.anatomy import ARCH_ROLES, head_names, layer_of, role_of
from ..progress import progress
from ..tasks import GlueTask
from .figures import group_slug, part_label, plot_bias_change, plot_layer_distance
from .groups import RunGroup, group_name, method_order, model_name, size_name, task_order
from .tables import bias_table, markdown_table, seeds_text

BIAS_INTRO = ("Mean |b_final - b_initial| over each bias vector's entries, per bias role and layer (layers counted "
              "from 1), between the best epoch's delta and the pretrained base; blank: a bias that did not train. "
              "The embeddings LayerNorm and pooler biases, outside the layers, are left out.")
DISTANCE_INTRO = ("Per encoder part, ||W_ft - W_0|| / ||W_0|| over all its tensors together (L2; the absolute "
                  "||W_ft - W_0|| in the figures' tables below), best epoch's delta against the pretrained base.")


class BaseModels:
    """Base models' encoder weights, loaded once each (as training loaded them) and checked by fingerprint."""

    def __init__(self):
        self._cache: dict[str, tuple[dict, set[str], str] | str] = {}

    def get(self, d: Delta) -> tuple[dict, set[str]]:
        """(parameter name -> pretrained tensor, names the base lacked) for the delta ``d``; UserError if unusable."""
        name = d.base_model
        if name not in self._cache:
            self._cache[name] = self._load(name, d.task)
        got = self._cache[name]
        if isinstance(got, str):
            raise UserError(got)
        params, new_params, fp = got
        if d.fingerprint is not None and d.fingerprint != fp:
            raise UserError(f"base model {model_name(name)!r} here has other weights than the run was trained on "
                            f"(fingerprint {fp[:19]}..., delta {d.fingerprint[:19]}...)")
        return params, new_params

    @staticmethod
    def _load(name: str, task: GlueTask) -> tuple[dict, set[str], str] | str:
        import transformers

        transformers.logging.set_verbosity_error()  # as a run does: no notes on the fresh task head
        transformers.logging.disable_progress_bar()
        try:
            with quiet_base_loading():
                model, new_params = load_model(name, task)
        except (UserError, OSError) as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            return f"base model {model_name(name)!r} cannot be loaded here: {why}"
        head = set(head_names(model))
        params = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if n not in head}
        return params, set(new_params) | head, fingerprint(model, new_params)


def _encoder_relative(name: str) -> str:
    """The name relative to the encoder (``encoder.layer.0...``), as ``ARCH_ROLES`` patterns expect."""
    first, _, rest = name.partition(".")
    return rest if rest and first not in ("embeddings", "encoder", "transformer", "pooler") else name


def _base_tensors(d: Delta, bases: BaseModels, biases_only: bool = False):
    """(name relative to the encoder, trained tensor, pretrained tensor) of every whole encoder tensor in ``d``."""
    params, new_params = bases.get(d)
    for key, t in d.tensors.items():
        if "::" in key or key not in params or key in new_params or (biases_only and not key.endswith(".bias")):
            continue
        yield _encoder_relative(key), t.double(), params[key].double()


def bias_change(d: Delta, bases: BaseModels) -> dict[tuple[str, int], float]:
    """(role, layer) -> mean |b_final - b_initial| over the bias's entries, for every whole bias in the delta."""
    roles = ARCH_ROLES.get(d.meta["model_type"])
    if roles is None:
        raise UserError(f"no bias-role mapping for model type {d.meta['model_type']!r}; known: {', '.join(ARCH_ROLES)}")
    out = {}
    for rel, t, t0 in _base_tensors(d, bases, biases_only=True):
        role, layer = role_of(rel, roles), layer_of(rel)
        if role is not None and layer is not None:
            out[(role, layer)] = float((t - t0).abs().mean())
    if not out:
        raise UserError("the delta holds no encoder bias of a known role")
    return out


def _part_order(part: str) -> tuple:
    return (0, -1) if part == "embeddings" else (1, int(part)) if part.isdigit() else (2, part)


def layer_distance(d: Delta, bases: BaseModels) -> dict[str, tuple[float, float]]:
    """Encoder part ("embeddings", "0", "1", ..., "pooler") -> (||W - W0|| / ||W0||, ||W - W0||), L2 over its tensors."""
    diff2: dict[str, float] = {}
    norm2: dict[str, float] = {}
    for rel, t, t0 in _base_tensors(d, bases):
        layer = layer_of(rel)
        part = str(layer) if layer is not None else "embeddings" if rel.startswith("embeddings.") else rel.split(".")[0]
        diff2[part] = diff2.get(part, 0.0) + float(((t - t0) ** 2).sum())
        norm2[part] = norm2.get(part, 0.0) + float((t0 ** 2).sum())
    if not diff2:
        raise UserError("the delta holds no whole encoder tensor")
    return {p: (math.sqrt(diff2[p] / norm2[p]) if norm2[p] else float("nan"), math.sqrt(diff2[p]))
            for p in sorted(diff2, key=_part_order)}


def mean_maps(maps: list[dict]) -> dict:
    """Key-wise mean of ``bias_change`` or ``layer_distance`` results (over seeds), on the keys all of them have."""
    keys = [k for k in maps[0] if all(k in m for m in maps)]
    if isinstance(next(iter(maps[0].values())), tuple):
        return {k: tuple(sum(m[k][i] for m in maps) / len(maps) for i in range(len(maps[0][k]))) for k in keys}
    return {k: sum(m[k] for m in maps) / len(maps) for k in keys}


def _group_maps(g: RunGroup, bases: BaseModels, notes: list[str]) -> list[dict]:
    """``bias_change`` (BitFit) or ``layer_distance`` of each run at the chosen rate; what fails goes to ``notes``."""
    deltas = []
    for r in g.runs:
        try:
            deltas.append(read(r.path))
        except UserError as e:
            notes.append(f"{group_name(g.key)}: not drawn from {r.label}: {e}")
    compute = bias_change if g.runs[0].cfg["fine_tune_type"] == "bitfit" else layer_distance
    try:
        return [compute(d, bases) for d in deltas]
    except UserError as e:
        notes.append(f"{group_name(g.key)}: not drawn: {e}")
        return []


def _bias_section(g: RunGroup, change: dict, path: Path, out: Path, seeds: str) -> list[str]:
    plot_bias_change(change, path, f"{group_name(g.key)}\n{seeds}")
    return [f"### {group_name(g.key)}", "", f"{seeds}.", "", f"![bias change]({path.relative_to(out).as_posix()})",
            ""] + bias_table(change) + [""]


def _distance_tables(rows: list[tuple[RunGroup, dict, Path, str]], out: Path) -> list[str]:
    """Relative and absolute distance per part, one row per task, for one method, model and size."""
    parts = list(rows[0][1])
    labels = [part_label(p) for p in parts]
    relative = [[f"{g.task.glue_name} ([png]({path.relative_to(out).as_posix()}))", seeds]
                + [f"{dist[p][0]:.4f}" if p in dist else "–" for p in parts] for g, dist, path, seeds in rows]
    absolute = [[g.task.glue_name] + [f"{dist[p][1]:.3g}" if p in dist else "–" for p in parts] for g, dist, _, _ in rows]
    return (markdown_table(["task", "runs"] + labels, relative) + ["", "Absolute ||W_ft - W_0||:", ""]
            + markdown_table(["task"] + labels, absolute) + [""])


def delta_sections(groups: list[RunGroup], figures: Path, out: Path) -> tuple[list[str], list[str]]:
    """Markdown for the bias-change heatmaps (BitFit) and the per-layer distances (full fine-tuning and
    ``layers``), with their figures drawn in ``figures``; and notes on what could not be drawn."""
    bases, order = BaseModels(), method_order(groups)
    bias, dist, notes = [], {}, []
    ordered = sorted(groups, key=lambda g: (g.key.model, g.key.max_train_samples or 0, order(g.key.method),
                                            task_order(g.key.task)))
    for g in progress(ordered, "report: deltas (bias change, distances)", unit="groups"):
        kind = g.runs[0].cfg["fine_tune_type"]
        maps = _group_maps(g, bases, notes) if kind in ("bitfit", "full_ft", "layers") else []
        if not maps:
            continue
        seeds = f"lr {g.lr:g}, mean over {seeds_text(len(maps))}"
        name = "bias_change" if kind == "bitfit" else "distance"
        path = figures / f"{name}_{group_slug(g)}.png"
        mean = mean_maps(maps)
        if kind == "bitfit":
            bias += _bias_section(g, mean, path, out, seeds)
        else:
            plot_layer_distance(mean, path, f"{group_name(g.key)}\n{seeds}")
            dist.setdefault((g.key.model, g.key.max_train_samples, g.key.method), []).append((g, mean, path, seeds))
    lines = ["## Bias change (BitFit; the paper's Figure 1)", "", BIAS_INTRO, ""] + bias if bias else []
    if dist:
        lines += ["## Distance from the pretrained weights (full fine-tuning)", "", DISTANCE_INTRO, ""]
        for (model, n, method), rows in dist.items():
            lines += [f"### {method}, {model_name(model)}, {size_name(n)}", ""] + _distance_tables(rows, out)
    return lines, notes
