"""Evaluation by slice: held-out IoU per named slice of the catalog, with bootstrap intervals.

Per held-out clip the model's intersection and union counts are summed over the clip's windows
and cells (`clip_counts`); a slice's IoU pools its clips the way `val_iou` pools all of them
(sum of intersections / sum of unions). Its 95 % interval is the 2.5th and 97.5th percentile of
the IoU over `BOOTSTRAP` resamples of the slice's clips with replacement, drawn by
`numpy.random.default_rng(seed)`, so the same run gives the same interval. Slices come from a
slices file (`dojo.data.query`) or, without one, one per tag value in the held-out set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dojo.data.catalog import dataset_name
from dojo.data.query import Slice, add_slices, connect, tag_slices

BOOTSTRAP = 1000


@torch.no_grad()
def clip_counts(model: torch.nn.Module, batches: list[dict[str, Any]]) -> dict[int, list[int]]:
    """{clip index: [intersection, union]} over every window and cell of each held-out clip
    (a cell is predicted occupied when its logit exceeds 0, probability 0.5)."""
    was_training = model.training
    model.eval()
    out: dict[int, list[int]] = {}
    for batch in batches:
        logits = model(batch["frames"], batch["intrinsics"], batch["extrinsics"])  # (B, G, G)
        pred, truth = logits > 0, batch["occupancy"] > 0.5
        inter = (pred & truth).flatten(1).sum(1)  # (B,)
        union = (pred | truth).flatten(1).sum(1)  # (B,)
        for k in range(len(inter)):
            counts = out.setdefault(int(batch["clip"][k]), [0, 0])
            counts[0] += int(inter[k])
            counts[1] += int(union[k])
    model.train(was_training)
    return out


def pooled_iou(counts: np.ndarray) -> float:
    """IoU of (n, 2) [intersection, union] rows pooled; 1.0 when the union is empty."""
    union = counts[:, 1].sum()
    return 1.0 if union == 0 else float(counts[:, 0].sum() / union)


def bootstrap_ci(counts: np.ndarray, seed: int, draws: int = BOOTSTRAP) -> tuple[float, float]:
    """95 % percentile interval of the pooled IoU over resamples of the rows (clips)."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(counts), size=(draws, len(counts)))  # (draws, n)
    inter, union = counts[picks, 0].sum(1), counts[picks, 1].sum(1)  # (draws,)
    iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    lo, hi = np.percentile(iou, [2.5, 97.5])
    return float(lo), float(hi)


def slice_members(catalog: str, val_root: Path | str, slices: dict[str, Slice] | None
                  ) -> tuple[dict[str, Slice], dict[str, list[str]]]:
    """The slices (`slices`, or one per tag value of the catalog) and {slice: names of the
    held-out clips of `val_root` in it, sorted}."""
    con = connect(catalog)
    chosen = dict(slices) if slices else tag_slices(con)
    add_slices(con, chosen)
    where = dataset_name(str(val_root))
    return chosen, {name: [r[0] for r in con.execute(
        f"SELECT name FROM slice_{name} WHERE dataset = ? ORDER BY name", [where]).fetchall()]
        for name in chosen}


def slice_ious(catalog: str, val_root: Path | str, clip_names: list[str],
               counts: dict[int, list[int]], slices: dict[str, Slice] | None,
               seed: int) -> dict[str, dict[str, Any]]:
    """{slice: {clips, iou, ci95: [lo, hi], weight}} over the held-out clips of `val_root`
    (clip index i is `clip_names[i]`); slices with no held-out clip are left out."""
    chosen, held = slice_members(catalog, val_root, slices)
    by_name = {name: i for i, name in enumerate(clip_names)}
    out: dict[str, dict[str, Any]] = {}
    for name, sl in chosen.items():
        members = [by_name[n] for n in held[name] if by_name.get(n) in counts]
        if not members:
            continue
        table = np.array([counts[i] for i in members], dtype=np.int64)  # (n, 2)
        lo, hi = bootstrap_ci(table, seed)
        out[name] = {"clips": len(members), "iou": pooled_iou(table), "ci95": [lo, hi],
                     "weight": sl.weight}
    return out


def slice_figure(by_round: dict[str, dict[str, dict[str, Any]]]) -> Any:
    """Bars of IoU per slice with 95 % intervals, one bar group per slice, one colour per
    round (a single run is one round)."""
    from matplotlib.figure import Figure

    names = sorted({s for r in by_round.values() for s in r})
    fig = Figure(figsize=(max(6.0, 0.9 * len(names) + 2), 3.6), dpi=100, layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(by_round))
    for k, (label, slices) in enumerate(by_round.items()):
        xs = [i + k * width for i, n in enumerate(names) if n in slices]
        ys = [slices[n]["iou"] for n in names if n in slices]
        lo = [slices[n]["iou"] - slices[n]["ci95"][0] for n in names if n in slices]
        hi = [slices[n]["ci95"][1] - slices[n]["iou"] for n in names if n in slices]
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=3, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=30,
                  ha="right", fontsize=8)
    ax.set_ylabel("held-out IoU")
    ax.set_ylim(0, 1)
    if len(by_round) > 1:
        ax.legend(fontsize=8)
    return fig
