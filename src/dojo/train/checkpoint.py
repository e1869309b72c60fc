"""The checkpoint of a `dojo train` run: one file, written atomically.

DIR/checkpoint/state.pt holds the model and optimizer state, torch's global RNG state, the data
loader's position (the next batch), the precision policy's per-layer state (delayed-scaling amax
histories and stochastic-rounding generators), the history so far (losses, IoU curve, baseline)
and the settings that give the state its meaning. It is written to a temporary name in the same
folder and renamed over the old one (`os.replace`), so a run killed mid-save leaves the previous
complete checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dojo.errors import DojoError
from dojo.runtime.checkpoint import atomic_write

STATE = "state.pt"


def save(folder: Path, state: dict[str, Any]) -> Path:
    """Write `state` as folder/state.pt atomically; returns the file."""
    target = folder / STATE
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda tmp: torch.save(state, tmp))
    except OSError as err:  # full disk, a folder made read-only mid-run: one line
        raise DojoError(f"{target}: cannot write the checkpoint ({err.strerror})") from None
    return target


def load(folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Read folder/state.pt; `DojoError` when it is missing, unreadable, or was saved with
    other `settings` (a resumed run must be the same run)."""
    path = folder / STATE
    if not path.is_file():
        raise DojoError(f"{path}: no checkpoint to resume from (run without --resume first)")
    try:
        state: dict[str, Any] = torch.load(path, weights_only=False)
    except Exception as err:  # a damaged file: say which, in one line
        raise DojoError(f"{path}: cannot read checkpoint ({type(err).__name__})") from None
    saved = state.get("settings", {})
    for key, value in settings.items():
        if saved.get(key) != value:
            raise DojoError(f"{path}: saved with {key} = {saved.get(key)!r}, this run has "
                            f"{key} = {value!r} (resume with the same settings)")
    return state
