"""`dojo train occupancy --rounds K`: the data engine's loop on one machine.

Round 0 is the ordinary run. Each later round takes the previous round's weakest slice (lowest
held-out IoU among slices with at least 2 held-out clips), mines `--budget` clips for it from
the pool split (`dojo.train.mine`), writes the new dataset version as a set (OUT/round-R/train,
a manifest pointing at the clips where they lie), trains a fresh model on it with the same
options, and evaluates it by slice on the same held-out set. The pool is the catalog's `pool`
split, or, when it has none, OUT/pool synthesized like the training set (`pool_clips` clips,
seed + 2, so no pool scene is a training or held-out scene).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from dojo.data.catalog import Version, index_set, read_set_manifest, read_version, write_version
from dojo.data.query import add_slices, connect, tag_slices
from dojo.data.subset import write_subset
from dojo.data.synth import SynthConfig, synthesize
from dojo.errors import DojoError
from dojo.train.mine import Mined, mine, weight_repeats
from dojo.train.options import Progress
from dojo.train.slices import slice_members

POOL = "pool"


def weakest_slice(slices: dict[str, dict[str, Any]], min_clips: int = 2) -> str:
    """The slice with the lowest IoU among those with `min_clips` held-out clips (all slices
    when none has); ties go to the first name."""
    pool = {k: v for k, v in slices.items() if v["clips"] >= min_clips} or slices
    return min(sorted(pool), key=lambda k: pool[k]["iou"])


def ensure_pool(catalog: str, out: Path, train_dir: Path | str, clips: int, seed: int,
                tell: Callable[[Progress], None]) -> None:
    """Synthesize and index OUT/pool when the catalog has no pool split."""
    con = connect(catalog)
    if con.execute("SELECT count(*) FROM clips WHERE split = ?", [POOL]).fetchone()[0]:
        return
    m = read_set_manifest(str(train_dir))
    cfg = SynthConfig(clips=clips, seed=seed, cameras=len(m.cameras),
                      frames=min(c.frames for c in m.clips), width=m.width, height=m.height,
                      grid=m.grid.size, range_m=m.grid.range_m, fps=m.fps)

    def tick(done: int, total: int) -> None:
        tell(Progress("data", f"making pool clips {done}/{total}"))

    synthesize(out / POOL, cfg, tick, catalog="")
    index_set(str(out / POOL), catalog, POOL)


def weighted_set(catalog: str, version: str, slices: dict[str, Any], folder: Path) -> Path:
    """The training version as a set whose clips repeat by their slices' weights (a clip in a
    slice of weight 3 is listed 3 times, so its windows are drawn 3 times per epoch)."""
    con = connect(catalog)
    add_slices(con, slices)
    write_subset(catalog, read_version(catalog, version).clips, folder,
                 weight_repeats(con, slices))
    return folder


def pick_random(catalog: str, train: Version, target: str, budget: int, pool: str, seed: int
                ) -> Mined:
    """`budget` clips of the pool split not in `train`, drawn uniformly without replacement
    with `numpy.random.default_rng(seed)` over the clip hashes in sorted order (the control
    for mining: the same number of new clips, chosen without looking at the model or slice)."""
    con = connect(catalog)
    rows = con.execute("SELECT DISTINCT clip_hash FROM clips WHERE split = ? "
                       "ORDER BY clip_hash", [pool]).fetchall()
    unused = [h for (h,) in rows if h not in set(train.clips)]
    if not unused:
        raise DojoError(f"{catalog}: no unused clips of split '{pool}' to draw from")
    rng = np.random.default_rng(seed)
    picked = sorted(unused[i] for i in rng.choice(len(unused), min(budget, len(unused)),
                                                  replace=False))
    version = write_version(catalog, [*train.clips, *picked], parent=train.id,
                            note=f"{len(picked)} random pool clips (control for {target})")
    return Mined(version, target, [{"clip_hash": h} for h in picked])


def summary(r: int, result: Any, version: str, clips: int, mined_for: str, added: int,
            vs_previous: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"round": r, "mined_for": mined_for, "added": added, "train_version": version,
            "train_clips": clips, "val_iou": result.val_iou, "slices": result.slices,
            "vs_previous": vs_previous or {}}


def vs_previous(members: dict[str, list[str]], before: Any, after: Any, seed: int
                ) -> dict[str, dict[str, Any]]:
    """{slice: {delta, ci95, p}}: this round's model against the previous round's on the same
    held-out clips of each slice (`dojo.train.gain.paired_bootstrap`: held-out sampling noise
    only; a fresh model with another training set also differs by training noise)."""
    from dojo.train.gain import paired_bootstrap

    out = {}
    for name, clips in members.items():
        both = [c for c in clips if c in before.counts and c in after.counts]
        if both:
            out[name] = paired_bootstrap(np.array([before.counts[c] for c in both]),
                                         np.array([after.counts[c] for c in both]), seed)
    return out


def run_rounds(job: Any, opts: Any, val_dir: Path | str, first: Any,
               learn: Callable[[Any, Path], Any], tell: Callable[[Progress], None]
               ) -> list[dict[str, Any]]:
    """Rounds 1..K-1 after `first` (round 0); `learn(job, train_dir)` trains and evaluates a
    fresh model. Returns one summary per round, round 0 first."""
    catalog = str(job.out / "catalog")
    ensure_pool(catalog, job.out, job.train_dir or job.data_root / "train", opts.pool_clips,
                opts.seed + 2, tell)
    con = connect(catalog)
    slices = dict(job.slices) if job.slices else tag_slices(con)
    add_slices(con, slices)
    repeats = weight_repeats(con, slices)
    train = read_version(catalog, first.dataset["train"])
    _, members = slice_members(catalog, val_dir, slices)
    rounds = [summary(0, first, train.id, len(train.clips), "", 0)]
    result = first
    for r in range(1, opts.rounds):
        target = weakest_slice(result.slices)
        tell(Progress("data", f"round {r}: mining {opts.budget} clips for {target}"))
        if opts.mine_by == "random":  # the control: as many pool clips, drawn at random
            mined = pick_random(catalog, train, target, opts.budget, POOL, opts.seed + r)
        else:
            mined = mine(result.model, catalog, train, target, slices, opts.budget, POOL, opts)
        folder = job.out / f"round-{r}"
        write_subset(catalog, mined.version.clips, folder / "train", repeats)
        train, before = mined.version, result
        result = learn(replace(job, out=folder, resume_state=None, catalog=job.out / "catalog"),
                       folder / "train")
        rounds.append(summary(r, result, train.id, len(train.clips), target, len(mined.chosen),
                              vs_previous(members, before, result, opts.seed)))
    return rounds
