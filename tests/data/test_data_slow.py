"""Longer checks (`make test-slow`): longer, larger clips through every path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dojo.data.geometry import make_rig
from dojo.data.loader import ClipLoader, LoaderConfig
from dojo.data.synth import SynthConfig, clip_scene, render_clip, synthesize
from dojo.data.video import VideoReader, decode_all

pytestmark = pytest.mark.slow

CFG = SynthConfig(clips=2, cameras=6, frames=24, width=128, height=96, seed=3)


@pytest.fixture(scope="module")
def long_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("long") / "set"
    synthesize(root, CFG)
    return root


def test_every_window_by_seek_equals_sequential(long_set: Path) -> None:
    rng = np.random.default_rng(0)
    for path in sorted(long_set.rglob("*.mp4")):
        sequential = decode_all(path)
        reader = VideoReader(path, CFG.fps)
        for start in rng.permutation(24 - 5):
            np.testing.assert_array_equal(reader.read(int(start), 5),
                                          sequential[start:start + 5])


def test_larger_frames_keep_their_fidelity(long_set: Path) -> None:
    rig = make_rig(CFG.cameras, CFG.width, CFG.height)
    views, _ = render_clip(clip_scene(CFG, 1), rig, CFG.grid, CFG.range_m)
    for cam, rendered in zip(rig, views, strict=True):
        decoded = decode_all(long_set / "clip_0001" / f"{cam.name}.mp4").astype(float)
        mse = ((decoded - rendered) ** 2).mean(axis=(1, 2, 3))
        assert (10 * np.log10(255.0**2 / mse)).min() > 30.0, cam.name


def test_workers_and_ranks_cover_a_longer_set(long_set: Path) -> None:
    seen = []
    for rank in range(2):
        loader = ClipLoader(long_set, LoaderConfig(batch_size=3, window=6, stride=3, rank=rank,
                                                   world=2, num_workers=2, seed=5))
        for _ in range(2):  # two epochs through the persistent workers
            epoch = [(c, s) for b in loader for c, s in zip(b["clip"].tolist(),
                                                            b["start"].tolist(), strict=True)]
            seen.append(epoch)
    # starts 0, 3, ..., 18 in 2 clips = 14 samples; ranks split each epoch disjointly
    for e in range(2):
        a, b = seen[e], seen[2 + e]
        assert not set(a) & set(b) and len(set(a) | set(b)) == 14
