"""Mining: rank unused clips by how badly a model does on them, how unsure it is, and how much
they look like a failing slice; the chosen ones join the training set as a new dataset version.

For each clip of the pool split that is not in the training version, over its windows (stride
= window) and cells:
- error = 1 - IoU of the prediction (probability > 0.5) against its labels;
- uncertainty = mean binary entropy of the predicted probability, divided by ln 2 (0..1);
- similarity = cosine between the clip's features and the mean features of the slice's clips
  in the catalog (features: one-hot scenario, weather and time of day, then ego speed / 30 m/s,
  pedestrians / 10, cars / 10, trucks / 5, occlusion, mean luma / 255, each clipped to 0..1);
- in_slice = 1 when the clip itself satisfies the slice's condition.
score = in_slice + similarity + error + uncertainty; the `budget` best (ties by clip hash) are
added to the training version's clips: a new version whose parent is the training version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dojo.config import load_json
from dojo.data import ClipLoader, LoaderConfig
from dojo.data.catalog import Version, read_version, write_version
from dojo.data.query import Slice, add_slices, connect, load_slices, tag_slices
from dojo.data.scenario import TAGS
from dojo.data.subset import write_subset
from dojo.errors import ConfigError, DojoError
from dojo.train.options import TrainOptions

_NUMERIC = (("ego_speed_mps", 30.0), ("pedestrians", 10.0), ("cars", 10.0), ("trucks", 5.0),
            ("occlusion", 1.0), ("mean_luma", 255.0))


@dataclass(frozen=True)
class Mined:
    """A mining step: the new version, the slice it mined for, and the chosen clips' scores."""

    version: Version
    slice: str
    chosen: list[dict[str, Any]]


@torch.no_grad()
def pool_scores(model: torch.nn.Module, con: Any, pool: str, exclude: set[str],
                opts: TrainOptions) -> dict[str, dict[str, Any]]:
    """{clip_hash: {clip (SET/NAME), error, uncertainty}} of the pool split's clips not in
    `exclude`."""
    rows = con.execute("SELECT clip_hash, dataset, name FROM clips WHERE split = ? "
                       "ORDER BY dataset, name", [pool]).fetchall()
    wanted = {(d, n): h for h, d, n in rows if h not in exclude}
    where = {h: f"{d}/{n}" for (d, n), h in wanted.items()}
    out: dict[str, dict[str, Any]] = {}
    model.eval()
    for dataset in sorted({d for d, _ in wanted}):
        loader = ClipLoader(dataset, LoaderConfig(batch_size=8, window=opts.window,
                                                  stride=opts.window, shuffle=False,
                                                  policy="skip"))
        names = [c.name for c in loader.dataset.clipset.clips]
        sums: dict[int, list[float]] = {}
        for batch in loader:
            if not batch["frames"].shape[0]:
                continue
            logits = model(batch["frames"], batch["intrinsics"], batch["extrinsics"])  # (B,G,G)
            p = torch.sigmoid(logits).clamp(1e-7, 1 - 1e-7)
            entropy = -(p * p.log() + (1 - p) * (1 - p).log()) / math.log(2)  # (B, G, G)
            pred, truth = logits > 0, batch["occupancy"] > 0.5
            for k in range(len(p)):
                acc = sums.setdefault(int(batch["clip"][k]), [0.0, 0.0, 0.0, 0.0])
                acc[0] += float((pred[k] & truth[k]).sum())
                acc[1] += float((pred[k] | truth[k]).sum())
                acc[2] += float(entropy[k].mean())
                acc[3] += 1
        for c, (inter, union, ent, n) in sums.items():
            h = wanted.get((dataset, names[c]))
            if h is not None:
                out[h] = {"clip": where[h], "error": 1.0 - (inter / union if union else 1.0),
                          "uncertainty": ent / n}
    return out


def similarity(con: Any, slice_name: str) -> dict[str, tuple[bool, float]]:
    """{clip_hash: (in the slice, cosine to the slice's mean features)} over the catalog."""
    cols = ", ".join(k for k in TAGS) + ", " + ", ".join(k for k, _ in _NUMERIC)
    rows = con.execute(f"SELECT clip_hash, {cols} FROM clips ORDER BY clip_hash").fetchall()
    members = {r[0] for r in con.execute(f"SELECT clip_hash FROM slice_{slice_name}").fetchall()}
    vocab = [(k, v) for k, mix in TAGS.items() for v in mix]
    feats = {}
    for r in rows:
        tags = dict(zip(TAGS, r[1:1 + len(TAGS)]))
        onehot = [1.0 if tags[k] == v else 0.0 for k, v in vocab]
        nums = [min(1.0, max(0.0, (x or 0.0) / scale))
                for x, (_, scale) in zip(r[1 + len(TAGS):], _NUMERIC)]
        feats[r[0]] = np.array(onehot + nums)
    if not members:
        raise DojoError(f"slice {slice_name}: no clip of the catalog is in it; nothing to be like")
    centre = np.mean([feats[h] for h in members if h in feats], axis=0)
    norm = float(np.linalg.norm(centre)) or 1.0
    return {h: (h in members, float(v @ centre / ((float(np.linalg.norm(v)) or 1.0) * norm)))
            for h, v in feats.items()}


def mine(model: torch.nn.Module, catalog: str, train: Version, slice_name: str,
         slices: dict[str, Slice], budget: int, pool: str, opts: TrainOptions) -> Mined:
    """Choose `budget` pool clips for `slice_name` (module docstring); records the version."""
    if slice_name not in slices:
        raise ConfigError("--slice", "slice", slice_name,
                          f"one of the slices ({', '.join(sorted(slices))})")
    con = connect(catalog)
    add_slices(con, slices)
    scores = pool_scores(model, con, pool, set(train.clips), opts)
    if not scores:
        raise DojoError(f"{catalog}: no unused clips of split '{pool}' to mine (index a pool: "
                        f"dojo data index DIR --catalog {catalog} --split {pool})")
    sim = similarity(con, slice_name)
    ranked = []
    for h, s in scores.items():
        member, cosine = sim.get(h, (False, 0.0))
        total = float(member) + cosine + s["error"] + s["uncertainty"]
        ranked.append({"clip_hash": h, "score": total, "in_slice": member, "similarity": cosine,
                       **s})
    ranked.sort(key=lambda r: (-r["score"], r["clip_hash"]))
    chosen = ranked[:budget]
    version = write_version(catalog, [*train.clips, *(c["clip_hash"] for c in chosen)],
                            parent=train.id, note=f"mined {len(chosen)} clips for {slice_name}")
    return Mined(version, slice_name, chosen)


def weight_repeats(con: Any, slices: dict[str, Slice]) -> dict[str, int]:
    """{clip_hash: times drawn}: the largest rounded weight of the slices holding the clip."""
    out: dict[str, int] = {}
    for name, sl in slices.items():
        for (h,) in con.execute(f"SELECT clip_hash FROM slice_{name}").fetchall():
            out[h] = max(out.get(h, 1), round(sl.weight))
    return out


def mine_run(run_dir: str, slice_name: str, budget: int, slices_file: str = "",
             pool: str = "pool", catalog: str = "", by: str = "score",
             seed: int | None = None) -> dict[str, Any]:
    """`dojo data mine`: mine for RUN's model, write the new version and its set
    (RUN/mined/ID/manifest.json, which `dojo train occupancy` can train on).

    `by="random"` is the control (`dojo.train.rounds.pick_random`): `budget` unused pool clips
    drawn with `numpy.random.default_rng(seed)`, seed defaulting to the run's seed + 1, so it
    picks what round 1 of `dojo train occupancy --rounds 2 --mine-by random` picks."""
    from dojo.train.evalrun import load_run

    run = Path(run_dir)
    loaded = load_run(run)
    catalog = catalog or loaded.catalog
    try:
        metrics = load_json((run / "metrics.json").read_bytes(), str(run / "metrics.json"))
    except (OSError, DojoError) as err:  # stopped before its metrics, or a damaged file
        raise DojoError(f"{run / 'metrics.json'}: cannot read the run's metrics "
                        f"({getattr(err, 'strerror', None) or err}); expected a finished run") \
            from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("dataset", {}), dict):
        raise DojoError(f"{run / 'metrics.json'}: not a run's metrics (expected the object "
                        "`dojo train` writes); expected a finished run")
    train = read_version(catalog, metrics.get("dataset", {}).get("train", ""))
    con = connect(catalog)
    slices = load_slices(slices_file) if slices_file else tag_slices(con)
    if by == "random":
        from dojo.train.rounds import pick_random

        if slice_name not in slices:
            raise ConfigError("--slice", "slice", slice_name,
                              f"one of the slices ({', '.join(sorted(slices))})")
        draw = loaded.options.seed + 1 if seed is None else seed
        mined = pick_random(catalog, train, slice_name, budget, pool, draw)
    else:
        mined = mine(loaded.model, catalog, train, slice_name, slices, budget, pool,
                     loaded.options)
    add_slices(con, slices)
    manifest = write_subset(catalog, mined.version.clips, run / "mined" / mined.version.id,
                            weight_repeats(con, slices))
    return {"version": mined.version.id, "parent": train.id, "slice": slice_name,
            "clips": len(mined.version.clips), "train_set": str(manifest.parent),
            "by": by, "added": mined.chosen}
