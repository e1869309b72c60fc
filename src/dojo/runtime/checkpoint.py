"""Checkpoint and resume: model, optimizer, RNG, policy state and data position, per rank.

Layout of a checkpoint folder: `rank<r>.pt` per rank and `manifest.json`, written last by rank 0
after a barrier. Every file is written to a temporary name and renamed (atomic on POSIX), so a
run killed mid-save leaves either the previous complete checkpoint or files without a manifest;
`load_checkpoint` refuses a folder without a manifest, or one saved under another plan.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from dojo.config import load_json
from dojo.errors import DojoError
from dojo.numerics import load_policy_state, policy_state
from dojo.paths import can_create_in, nearest_existing, not_a_folder

MANIFEST = "manifest.json"


def atomic_write(path: Path, write: Any) -> None:
    """Run `write(tmp)` on a temporary name beside `path`, then rename it over `path`; a failure
    (or a kill) leaves `path` as it was and no temporary behind."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_folder(folder: str | Path, *, resume: bool) -> Path:
    """Check a checkpoint folder before any process starts; DojoError naming `--checkpoint`.

    To resume, the folder must hold a manifest. To save, it must be a folder or not exist yet
    below an existing, writable folder (nothing is created here)."""
    root = Path(folder)
    if not str(folder).strip():
        raise DojoError("--checkpoint = '': expected a folder path")
    if resume:
        if not (root / MANIFEST).is_file():
            raise DojoError(f"--checkpoint {root}: no {MANIFEST} there to resume from "
                            "(missing folder, or an incomplete checkpoint)")
        return root
    if root.exists() and not root.is_dir():
        raise DojoError(f"--checkpoint {root}: exists and is not a folder")
    parent = nearest_existing(root)
    if not parent.is_dir():
        raise DojoError(f"--checkpoint {root}: {parent} is {not_a_folder(parent)}, not a "
                        "folder")
    if not can_create_in(parent):
        raise DojoError(f"--checkpoint {root}: {parent} is not writable")
    return root


def save_checkpoint(trainer: Any, folder: str | Path) -> Path:
    """Save this rank's state into `folder` (collective when distributed); returns the folder."""
    root = Path(folder)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DojoError(f"checkpoint {root}: cannot create the folder ({err.strerror})") from None
    rank = trainer.mesh.rank
    state = {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
             "rng": torch.get_rng_state(), "position": trainer.position,
             "quantizers": policy_state(trainer.model), "plan": trainer.plan.text()}
    atomic_write(root / f"rank{rank}.pt", lambda p: torch.save(state, p))
    if trainer.mesh.groups or trainer.plan.devices > 1:
        import torch.distributed as dist

        dist.barrier()
    if rank == 0:
        manifest = {"plan": trainer.plan.text(), "ranks": trainer.plan.devices,
                    "position": trainer.position}
        atomic_write(root / MANIFEST, lambda p: p.write_text(json.dumps(manifest)))
    return root


def load_checkpoint(trainer: Any, folder: str | Path) -> None:
    """Restore this rank's state from `folder`; DojoError if it is missing, partial or foreign."""
    root = Path(folder)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise DojoError(f"checkpoint {root}: no {MANIFEST} (missing or incomplete checkpoint)")
    manifest = load_json(manifest_path.read_bytes(), str(manifest_path))
    if not isinstance(manifest, dict):
        raise DojoError(f"checkpoint {root}: {MANIFEST} is not a checkpoint manifest (a JSON "
                        "object)")
    if manifest.get("plan") != trainer.plan.text():
        raise DojoError(f"checkpoint {root}: saved with plan {manifest.get('plan')!r}, "
                        f"this run uses {trainer.plan.text()!r}")
    path = root / f"rank{trainer.mesh.rank}.pt"
    if not path.is_file():
        raise DojoError(f"checkpoint {root}: {path.name} is missing")
    state = torch.load(path, weights_only=False)
    if state["position"] != manifest["position"]:
        raise DojoError(f"checkpoint {root}: {path.name} is at step {state['position']}, "
                        f"the manifest at {manifest['position']} (a save was interrupted)")
    _load_weights(trainer.model, state["model"], root, path.name)
    trainer.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    load_policy_state(trainer.model, state["quantizers"])
    trainer.position = int(state["position"])


def _load_weights(model: Any, weights: dict[str, Any], root: Path, name: str) -> None:
    """Load `weights` into `model`; a DojoError naming the first missing or unexpected tensor
    when the checkpoint holds another model's weights (another model or `--set`, or a version
    of dojo whose module layout differed: mlp's hidden layers became one folded stack)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(weights))
    extra = sorted(set(weights) - set(own))
    shapes = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or extra or shapes:
        first = (f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}" if extra
                 else f"{shapes[0]!r} is {tuple(weights[shapes[0]].shape)}, expected "
                      f"{tuple(own[shapes[0]].shape)}")
        raise DojoError(f"checkpoint {root}: {name} holds another model's weights ({first}; "
                        f"{len(missing)} missing, {len(extra)} unexpected, {len(shapes)} of "
                        "another shape): saved by another model, --set or dojo version")
    model.load_state_dict(weights)
