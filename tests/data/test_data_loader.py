"""The loader: shapes and contents against a sequential decode, determinism, shards, resume."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dojo.data.loader import ClipLoader, LoaderConfig
from dojo.data.synth import SynthConfig
from dojo.data.video import decode_all
from dojo.errors import ConfigError, DojoError


def _cfg(**kw: object) -> LoaderConfig:
    base = {"batch_size": 2, "window": 4, "stride": 2}
    return LoaderConfig(**{**base, **kw})  # type: ignore[arg-type]


def _positions(batch: dict) -> list[tuple[int, int]]:
    return list(zip(batch["clip"].tolist(), batch["start"].tolist(), strict=True))


def test_batch_shapes_and_contents(tiny_set: Path, tiny_cfg: SynthConfig) -> None:
    loader = ClipLoader(tiny_set, _cfg())
    # 3 clips of 8 frames, windows of 4 every 2 frames: starts 0, 2, 4 -> 9 samples
    assert len(loader.dataset) == 9 and loader.steps_per_epoch == 5
    batch = next(iter(loader))
    n, h, w, g = tiny_cfg.cameras, tiny_cfg.height, tiny_cfg.width, tiny_cfg.grid
    assert batch["frames"].shape == (2, 4, n, 3, h, w) and batch["frames"].dtype == torch.float32
    assert batch["occupancy"].shape == (2, g, g)
    assert batch["intrinsics"].shape == (2, n, 3, 3)
    assert batch["extrinsics"].shape == (2, n, 4, 4)
    assert batch["frames"].min() >= 0.0 and batch["frames"].max() <= 1.0
    manifest_cams = ["front", "front_left", "front_right", "back", "back_left", "back_right"]
    for b, (clip, start) in enumerate(_positions(batch)):
        folder = tiny_set / f"clip_{clip:04d}"
        labels = np.load(folder / "labels.npz")
        np.testing.assert_array_equal(batch["occupancy"][b].numpy(),
                                      labels["occupancy"][start + 3])  # the window's last frame
        np.testing.assert_allclose(batch["extrinsics"][b].numpy(), labels["extrinsics"], atol=1e-6)
        np.testing.assert_allclose(batch["intrinsics"][b].numpy(), labels["intrinsics"], rtol=1e-6)
        for i, cam in enumerate(manifest_cams):
            frames = decode_all(folder / f"{cam}.mp4")[start:start + 4]  # (T, H, W, 3)
            expected = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
            torch.testing.assert_close(batch["frames"][b, :, i], expected)


def _epoch(loader: ClipLoader) -> list[list[tuple[int, int]]]:
    return [_positions(b) for b in loader]


def test_same_seed_same_batches_and_workers_do_not_matter(tiny_set: Path) -> None:
    a = list(ClipLoader(tiny_set, _cfg(seed=3)))
    b = list(ClipLoader(tiny_set, _cfg(seed=3, num_workers=2)))
    assert [_positions(x) for x in a] == [_positions(x) for x in b]
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x["frames"], y["frames"], rtol=0, atol=0)
    other = _epoch(ClipLoader(tiny_set, _cfg(seed=4)))
    assert other != [_positions(x) for x in a], "the seed does not change the order"


def test_epochs_reshuffle_and_cover_every_sample(tiny_set: Path) -> None:
    loader = ClipLoader(tiny_set, _cfg(batch_size=4))
    first, second = _epoch(loader), _epoch(loader)
    every = sorted((c, s) for c in range(3) for s in (0, 2, 4))
    assert sorted(p for batch in first for p in batch) == every
    assert sorted(p for batch in second for p in batch) == every
    assert first != second
    assert loader.state_dict()["epoch"] == 2


@pytest.mark.parametrize("world", [2, 3, 4])
def test_shards_are_disjoint_and_cover_the_epoch(tiny_set: Path, world: int) -> None:
    seen: list[tuple[int, int]] = []
    for rank in range(world):
        loader = ClipLoader(tiny_set, _cfg(rank=rank, world=world, batch_size=1))
        seen += [p for batch in _epoch(loader) for p in batch]
    assert len(seen) == len(set(seen)) == 9


def test_drop_last_keeps_ranks_in_step(tiny_set: Path) -> None:
    steps = {ClipLoader(tiny_set, _cfg(rank=r, world=2, drop_last=True)).steps_per_epoch
             for r in range(2)}
    assert steps == {2}  # 9 samples / 2 ranks = 4 each (floor) -> 2 full batches of 2


def test_resume_continues_exactly(tiny_set: Path) -> None:
    reference = ClipLoader(tiny_set, _cfg(seed=9))
    stream = _epoch(reference) + _epoch(reference)  # two epochs, 10 batches
    first = ClipLoader(tiny_set, _cfg(seed=9))
    it = iter(first)
    for _ in range(3):
        next(it)
    state = first.state_dict()
    assert state["epoch"] == 0 and state["step"] == 3
    resumed = ClipLoader(tiny_set, _cfg(seed=9))
    resumed.load_state_dict(state)
    assert _epoch(resumed) == stream[3:5]  # the rest of epoch 0 ...
    assert _epoch(resumed) == stream[5:10]  # ... then epoch 1 as if never interrupted
    # the frames, not only the positions, are the same
    again = ClipLoader(tiny_set, _cfg(seed=9))
    again.load_state_dict(state)
    first_after = next(iter(again))
    torch.testing.assert_close(first_after["frames"], next(it)["frames"], rtol=0, atol=0)


def test_resume_after_the_last_batch_starts_the_next_epoch(tiny_set: Path) -> None:
    loader = ClipLoader(tiny_set, _cfg())
    batches = list(iter(loader))
    assert len(batches) == loader.steps_per_epoch
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["step"] == 0


def test_state_from_another_shard_is_refused(tiny_set: Path) -> None:
    loader = ClipLoader(tiny_set, _cfg(rank=1, world=2))
    with pytest.raises(ConfigError, match="rank"):
        loader.load_state_dict({"epoch": 0, "step": 1, "seed": 0, "rank": 0, "world": 2})
    with pytest.raises(ConfigError, match="step"):
        loader.load_state_dict({"epoch": 0, "step": -1})


def test_bad_loader_settings_are_config_errors(tiny_set: Path) -> None:
    with pytest.raises(ConfigError, match="rank"):
        _cfg(rank=2, world=2)
    with pytest.raises(DojoError, match="no windows of 9 frames"):
        ClipLoader(tiny_set, _cfg(window=9))


def test_uint8_pixels_are_the_decoded_bytes(tiny_set: Path) -> None:
    raw = ClipLoader(tiny_set, _cfg(pixels="uint8", shuffle=False))
    scaled = ClipLoader(tiny_set, _cfg(shuffle=False))
    a, b = next(iter(raw)), next(iter(scaled))
    assert a["frames"].dtype == torch.uint8
    clip, start = _positions(a)[0]
    front = decode_all(tiny_set / f"clip_{clip:04d}" / "front.mp4")[start:start + 4]
    np.testing.assert_array_equal(a["frames"][0, :, 0].numpy(), front.transpose(0, 3, 1, 2))
    torch.testing.assert_close(b["frames"], a["frames"].float() / 255)


def test_a_single_sample_has_the_batch_layout_without_b(tiny_set: Path) -> None:
    loader = ClipLoader(tiny_set, _cfg())
    sample = loader.dataset[4]
    clip, start = loader.dataset.index[4]
    assert sample["frames"].shape == (4, 6, 3, 48, 64)
    assert (int(sample["clip"]), int(sample["start"])) == (clip, start)


def test_each_file_is_opened_once_over_epochs(tiny_set: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import dojo.data.video as video

    loader = ClipLoader(tiny_set, _cfg(window=2, stride=2))  # 4 windows per 8-frame file
    opened: list[str] = []  # counted from here: opening the set probes every header first
    real_open = video.av.open

    def counting_open(path: str, *args: Any, **kw: Any) -> Any:
        opened.append(str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(video.av, "open", counting_open)
    batches = _epoch(loader) + _epoch(loader)
    assert sum(len(b) for b in batches) == 2 * 3 * 4  # 3 clips x 4 windows, two epochs
    assert len(opened) == len(set(opened)) == 3 * 6  # every camera file once, never reopened


def test_open_file_limit_keeps_the_training_set_open(monkeypatch: pytest.MonkeyPatch) -> None:
    import dojo.data.loader as loader_module
    from dojo.data.loader import open_file_limit

    # dojo train's default set: 32 clips x 6 cameras of 96 x 64 must all stay open
    assert open_file_limit(96, 64) >= 32 * 6
    # 1280 x 960 decoders hold ~19 MB each (docs/data.md): fewer, within 512 MiB
    assert 8 <= open_file_limit(1280, 960) * 19e6 <= 512 * 2**20
    monkeypatch.setattr(loader_module.resource, "getrlimit", lambda _: (40, 40))
    assert open_file_limit(96, 64) == 10  # a quarter of the descriptor limit


def test_a_dropped_loader_is_freed_at_once(tiny_set: Path) -> None:
    import gc
    import weakref

    loader = ClipLoader(tiny_set, _cfg(num_workers=1))
    next(iter(loader))
    ref = weakref.ref(loader)
    gc.disable()
    try:  # no reference cycle: its persistent worker shuts down now, not after a 5 s timeout
        del loader
        assert ref() is None
    finally:
        gc.enable()


def test_kept_batches_are_never_overwritten(tiny_set: Path) -> None:
    loader = ClipLoader(tiny_set, _cfg(batch_size=2))
    kept, views, copies = [], [], []
    for batch in _two_epochs(loader):
        kept.append(batch)                      # the whole batch dict
        views.append(batch["frames"][0, :, 1])  # only a view of it
        copies.append(batch["frames"].clone())
    for batch, view, copy in zip(kept, views, copies, strict=True):
        assert torch.equal(batch["frames"], copy) and torch.equal(view, copy[0, :, 1])


def test_dropped_batch_buffers_are_reused(tiny_set: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loader = ClipLoader(tiny_set, _cfg(batch_size=2))
    allocations: list[tuple[int, ...]] = []
    real_empty = np.empty

    def counting_empty(shape: tuple[int, ...], *args: object, **kw: object) -> np.ndarray:
        if isinstance(shape, tuple) and len(shape) == 6:  # (B, T, N, 3, H, W) frames
            allocations.append(shape)
        return real_empty(shape, *args, **kw)  # type: ignore[call-overload]

    monkeypatch.setattr(np, "empty", counting_empty)
    batches = sum(1 for _ in _two_epochs(loader))
    assert batches == 10  # 9 windows in batches of 2: 5 per epoch
    # each batch is dropped when the one after the next is made: 2 full-size buffers and the
    # last, smaller batch's (9 = 4 x 2 + 1) are all this needs
    assert len(allocations) <= 3


def _two_epochs(loader: ClipLoader) -> Iterator[dict[str, torch.Tensor]]:
    for _ in range(2):
        yield from loader
