"""Driving clips: synthetic multi-camera video with ground truth, and the decode/loading path.

- `synthesize(out, SynthConfig(...))` writes a clip set (layout in `dojo.data.layout`);
- `open_clips(root, policy)` validates a set (synthetic or the user's own MP4s);
- `ClipLoader(root, LoaderConfig(...))` yields batches for training (torch; imported lazily);
- `measure_decode_fps(path_or_dir, seconds)` measures one core's decode rate (frames/s);
- `measure_decode_fps_at(width, height)` the same at any frame size, on a cached synthetic clip.
"""

from __future__ import annotations

from typing import Any

from dojo.data.decoderate import measure_decode_fps_at
from dojo.data.layout import ClipSet, Manifest, SkippedClip, SkippedClipWarning, open_clips
from dojo.data.synth import SynthConfig, synthesize
from dojo.data.video import GOP, decode_all, measure_decode_fps

_LAZY = ("ClipDataset", "ClipLoader", "LoaderConfig", "collate")

__all__ = [
    "GOP",
    "ClipDataset",
    "ClipLoader",
    "ClipSet",
    "LoaderConfig",
    "Manifest",
    "SkippedClip",
    "SkippedClipWarning",
    "SynthConfig",
    "collate",
    "decode_all",
    "measure_decode_fps",
    "measure_decode_fps_at",
    "open_clips",
    "synthesize",
]


def __getattr__(name: str) -> Any:
    # The loader needs torch; import it only when asked so `dojo data synth` starts fast.
    if name in _LAZY:
        from dojo.data import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'dojo.data' has no attribute {name!r}")
