"""Feed clips to training: a torch Dataset of T-frame windows and a resumable, sharded loader.

A sample is a window of `window` consecutive frames from every camera of one clip, starting at
frames 0, stride, 2*stride, ... Batches (B samples) are dicts of tensors:

    frames      (B, T, N, 3, H, W) float32 in [0, 1], cameras in manifest order
                (uint8 0..255 with pixels="uint8": a quarter of the bytes, for on-device scaling)
    occupancy   (B, G, G) float32 0/1, the BEV grid of the window's last frame
    intrinsics  (B, N, 3, 3) float32 pixels;  extrinsics (B, N, 4, 4) float32 camera-to-ego
    ego_poses   (B, T, 4, 4) float32 ego-to-world (identity when the clip has none)
    clip, start (B,) int64 which clip and first frame each sample came from

Order: epoch e shuffles all samples with numpy's default_rng([seed, e]); rank r of world w takes
every w-th sample from position r (disjoint shards whose union is the whole epoch) and cuts it into
batches. So batch (e, step) of rank r is fixed by (seed, rank, world, e, step), independent of the
number of workers; `state_dict()` / `load_state_dict()` save and restore that position exactly.
"""

from __future__ import annotations

import dataclasses
import resource
import sys
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dojo.config import check
from dojo.data.layout import POLICIES, ClipSet, SkippedClip, SkippedClipWarning, open_clips
from dojo.data.video import PIXEL_SCALE, VideoReader
from dojo.errors import ConfigError, DojoError

# Open video files per process are capped by the memory their decoders hold (measured with
# PyAV 18: about 1 MiB plus 10 decoded frames each; 1.1 MB at 96 x 64, 19 MB at 1280 x 960) and
# by a quarter of the file-descriptor limit; beyond the cap the least recently used is closed.
# Reopening costs ~0.6 ms (open, probe, close), more than decoding a 96 x 64 window, so the
# default 32-clip set (192 files) must stay open: a cap of 64 reopened 82% of its windows and
# ran at 0.44-0.54x raw (docs/data.md).
_DECODER_BUDGET = 512 * 2**20  # bytes
_NUMPY_DTYPE = {torch.float32: np.float32, torch.uint8: np.uint8}


@dataclass(frozen=True, kw_only=True)
class LoaderConfig:
    """How to batch a clip set: `window` and `stride` in frames, shard `rank` of `world`."""

    batch_size: int = dataclasses.field(default=2, metadata=check(gt=0))
    window: int = dataclasses.field(default=4, metadata=check(gt=0, unit="frames"))
    stride: int = dataclasses.field(default=0, metadata=check(ge=0, unit="frames"))  # 0: window
    num_workers: int = dataclasses.field(default=0, metadata=check(ge=0))
    seed: int = dataclasses.field(default=0, metadata=check(ge=0))
    rank: int = dataclasses.field(default=0, metadata=check(ge=0))
    world: int = dataclasses.field(default=1, metadata=check(gt=0))
    shuffle: bool = True
    drop_last: bool = False  # True: every rank gets the same number of full batches
    policy: str = dataclasses.field(default="error", metadata=check(choices=POLICIES))
    verify: bool = False  # decode every frame when opening the set
    pixels: str = dataclasses.field(default="float32", metadata=check(choices=("float32", "uint8")))

    def __post_init__(self) -> None:
        if self.rank >= self.world:
            raise ConfigError("loader", "rank", self.rank, f"a rank < world = {self.world}")


class ClipDataset(Dataset[dict[str, Any]]):
    """Windows of `window` frames every `stride` frames over the clips of a validated set.

    torch's DataLoader hands each batch of indices to `__getitems__`, which decodes straight into
    one float batch buffer (in shared memory inside a worker), so pass `collate_fn=collate`.
    A window that fails to decode is left out of its batch and listed under "skipped"; the
    loader applies the policy. `ds[i]` is one sample: the batch layout without B.
    """

    def __init__(self, clipset: ClipSet, window: int, stride: int,
                 pixels: str = "float32") -> None:
        self.clipset = clipset
        self.window = window
        self.dtype = torch.uint8 if pixels == "uint8" else torch.float32
        self.skipped: list[SkippedClip] = list(clipset.skipped)
        self.index = [(c, s) for c, clip in enumerate(clipset.clips)
                      for s in range(0, clip.frames - window + 1, stride)]
        if not self.index:
            raise DojoError(f"{clipset.root}: no windows of {window} frames in "
                            f"{len(clipset.clips)} usable clips{_why_none(clipset, window)}")
        self._readers: dict[Path | str, VideoReader] = {}
        self.max_open = open_file_limit(clipset.manifest.width, clipset.manifest.height)
        # Set by ClipLoader when it has workers: inside a worker, float32 frames are decoded as
        # uint8 and the main process scales them (`to_float`). A quarter of the shared memory
        # to fault in per batch, and the scaling overlaps the workers' decoding.
        self.uint8_in_workers = False
        self.pool = _BufferPool()

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.__getitems__([i])
        for failure in batch["skipped"]:
            raise DojoError(f"{failure.file}: {failure.reason}")
        return {key: value[0] for key, value in batch.items() if key != "skipped"}

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        m = self.clipset.manifest
        shape = (len(indices), self.window, len(m.cameras), 3, m.height, m.width)
        in_worker = torch.utils.data.get_worker_info() is not None
        dtype = torch.uint8 if self.uint8_in_workers and in_worker else self.dtype
        frames = _batch_buffer(shape, dtype, self.pool)  # (B, T, N, 3, H, W)
        pixels = frames.numpy()
        kept: list[tuple[int, int]] = []
        skipped: list[SkippedClip] = []
        for i in indices:
            c, start = self.index[i]
            failure = self._decode(c, start, pixels[len(kept)])
            if failure is None:
                kept.append((c, start))
            else:
                skipped.append(failure)
        return {"frames": frames[: len(kept)], **self._labels(kept), "skipped": skipped}

    def _decode(self, c: int, start: int, out: np.ndarray) -> SkippedClip | None:
        """Decode one window into `out` (T, N, 3, H, W); the failure, if any."""
        clip = self.clipset.clips[c]
        for cam, path in enumerate(clip.videos):
            try:
                self._reader(path).read_planar(start, self.window, out[:, cam])
            except DojoError as err:
                return SkippedClip(clip.name, str(path), str(err).removeprefix(f"{path}: "))
        return None

    def _labels(self, kept: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
        t, g = self.window, self.clipset.manifest.grid.size
        n = len(self.clipset.manifest.cameras)
        rows: dict[str, list[np.ndarray]] = {"occupancy": [], "intrinsics": [], "extrinsics": [],
                                             "ego_poses": []}
        for c, start in kept:
            labels = self.clipset.clips[c].labels
            poses = labels.get("ego_poses")
            rows["occupancy"].append(labels["occupancy"][start + t - 1])  # the last frame's grid
            rows["intrinsics"].append(labels["intrinsics"])
            rows["extrinsics"].append(labels["extrinsics"])
            rows["ego_poses"].append(np.eye(4)[None].repeat(t, 0) if poses is None
                                     else poses[start:start + t])
        empty = {"occupancy": (0, g, g), "intrinsics": (0, n, 3, 3), "extrinsics": (0, n, 4, 4),
                 "ego_poses": (0, t, 4, 4)}
        out = {key: torch.from_numpy(np.stack(v).astype(np.float32) if v else
                                     np.zeros(empty[key], np.float32)) for key, v in rows.items()}
        out["clip"] = torch.tensor([c for c, _ in kept], dtype=torch.int64)
        out["start"] = torch.tensor([s for _, s in kept], dtype=torch.int64)
        return out

    def _reader(self, path: Path | str) -> VideoReader:
        reader = self._readers.pop(path, None)
        if reader is None:
            reader = VideoReader(path, self.clipset.manifest.fps)
            if len(self._readers) >= self.max_open:
                oldest = next(iter(self._readers))
                self._readers.pop(oldest).close()
        self._readers[path] = reader  # re-insert: dict order is least-recently-used first
        return reader

    def reset_readers(self) -> None:
        """Close every open file; a forked worker calls this so it never shares a parent's."""
        for reader in self._readers.values():
            reader.close()
        self._readers = {}


def _why_none(clipset: ClipSet, window: int) -> str:
    """Why a set has no windows: the first skipped clip's file and reason, or the clip length."""
    total = len(clipset.manifest.clips)
    if clipset.skipped:
        first = clipset.skipped[0]
        return (f" of {total} ({len(clipset.skipped)} skipped; first: {first.file}: "
                f"{first.reason})")
    longest = max((c.frames for c in clipset.clips), default=0)
    return f" of {total} (the longest has {longest} frames)"


def open_file_limit(width: int, height: int) -> int:
    """How many video files of `width` x `height` frames one process keeps open (at least 8)."""
    per_file = 2**20 + 10 * width * height * 3 // 2  # bytes: fixed + 10 yuv420p frames
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds = 4096 if soft == resource.RLIM_INFINITY else soft // 4
    return max(8, min(fds, _DECODER_BUDGET // per_file))


class _BufferPool:
    """Batch buffers of the main process, handed out again once the caller has let go of them.

    A buffer is numpy memory wrapped by `torch.from_numpy`; every tensor, view or array made from
    a batch keeps the numpy array alive, so a buffer whose only reference is the pool's is free.
    Reuse skips the allocator and the page faults of fresh memory, which at 320 x 192 float32
    (141 MB per batch of 4) cost as much as decoding. A caller that keeps its batches (a list
    of validation batches) just gets fresh buffers. At most `size` buffers are kept (for the
    dataset's life): two batches in flight in a training loop, and the smaller last batch.
    """

    def __init__(self, size: int = 3) -> None:
        self.size = size
        self._buffers: list[np.ndarray] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"size": self.size, "_buffers": []}  # a spawned worker gets no copies of them

    def get(self, shape: tuple[int, ...], dtype: np.dtype[Any] | type) -> np.ndarray:
        """An uninitialised array of `shape` and `dtype` that no batch handed out refers to."""
        for i in range(len(self._buffers)):
            # 2 references: the pool's list and getrefcount's argument
            if sys.getrefcount(self._buffers[i]) == 2 and self._buffers[i].shape == shape \
                    and self._buffers[i].dtype == dtype:
                return self._buffers[i]
        # numpy asks for transparent huge pages on large arrays (madvise): first writes fault
        # once per 2 MiB, not per 4 KiB (a fresh 141 MB batch fills in 26 ms, 63 from torch.empty)
        fresh = np.empty(shape, dtype)
        self._buffers = [*self._buffers[-(self.size - 1):], fresh] if self.size > 1 else [fresh]
        return fresh


def _batch_buffer(shape: tuple[int, ...], dtype: torch.dtype, pool: _BufferPool) -> torch.Tensor:
    """An uninitialised tensor: from `pool` in the main process; in a DataLoader worker in
    shared memory (as torch's default_collate does) so sending it to the trainer copies nothing.
    """
    if torch.utils.data.get_worker_info() is None:
        return torch.from_numpy(pool.get(shape, _NUMPY_DTYPE[dtype]))
    numel = int(np.prod(shape))
    base = torch.empty(0, dtype=dtype)
    storage = base._typed_storage()._new_shared(numel, device=base.device)
    return base.new(storage).view(shape)


def to_float(frames: torch.Tensor, pool: _BufferPool) -> torch.Tensor:
    """uint8 0..255 frames as float32 in [0, 1], rounded exactly as decoding straight to float
    (float32(x) * float32(1 / 255)), in a buffer from `pool`."""
    out = _batch_buffer(tuple(frames.shape), torch.float32, pool)
    np.multiply(frames.numpy(), PIXEL_SCALE, out=out.numpy(), casting="unsafe")
    return out


def collate(batch: Any) -> dict[str, Any]:
    """The collate_fn for a DataLoader over `ClipDataset`: batches come assembled by
    `ClipDataset.__getitems__` (shapes in the module docstring), so they pass through."""
    return batch


def _worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)  # decode parallelism comes from the worker processes
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, ClipDataset):
        info.dataset.reset_readers()


class _RemainingBatches(Sampler[list[int]]):
    """The batches of the owner's current epoch from its current step; read anew each time the
    torch DataLoader starts an iteration, so one DataLoader serves every epoch and resume.

    It holds its owner weakly. A strong reference would close a cycle (loader -> DataLoader ->
    sampler -> loader), leaving a dropped loader to the garbage collector, which runs the worker
    queues' finalizers before the DataLoader's shutdown: the shutdown message is never sent and
    each persistent worker is joined only after a 5 s timeout.
    """

    def __init__(self, owner: ClipLoader) -> None:
        self._owner = weakref.ref(owner)

    @property
    def owner(self) -> ClipLoader:
        owner = self._owner()
        if owner is None:  # internal invariant: the loader owns the DataLoader that calls this
            raise RuntimeError("ClipLoader was garbage-collected while its DataLoader ran")
        return owner

    def __iter__(self) -> Iterator[list[int]]:
        owner = self.owner
        return iter(owner._batches(owner.epoch)[owner.step:])

    def __len__(self) -> int:
        owner = self.owner
        return max(owner.steps_per_epoch - owner.step, 0)


class ClipLoader:
    """Sharded, deterministic, resumable batches over a clip set (see the module docstring).

    Iterating yields the rest of the current epoch, then moves to the next epoch; one iteration
    at a time (a second `iter()` restarts the shared torch DataLoader). Worker processes persist
    across epochs.
    """

    def __init__(self, root: str | Path, cfg: LoaderConfig | None = None) -> None:
        self.cfg = cfg or LoaderConfig()
        clipset = open_clips(root, self.cfg.policy, self.cfg.verify)
        self.dataset = ClipDataset(clipset, self.cfg.window, self.cfg.stride or self.cfg.window,
                                   self.cfg.pixels)
        self.dataset.uint8_in_workers = self.cfg.num_workers > 0
        self.epoch = 0
        self.step = 0
        self._torch_loader: DataLoader[dict[str, Any]] | None = None

    @property
    def skipped(self) -> list[SkippedClip]:
        """Clips left out so far (policy "skip"), with the file at fault and the reason."""
        return self.dataset.skipped

    @property
    def steps_per_epoch(self) -> int:
        """Batches this rank yields per epoch (equal on all ranks when drop_last)."""
        return len(self._batches(0))

    def __len__(self) -> int:
        return self.steps_per_epoch

    def shard(self, epoch: int) -> np.ndarray:
        """Sample indices of this rank in epoch `epoch`, in order."""
        n = len(self.dataset)
        order = (np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
                 if self.cfg.shuffle else np.arange(n))
        return order[self.cfg.rank::self.cfg.world]

    def indices_at(self, epoch: int, step: int) -> list[int]:
        """Sample indices of batch `step` of epoch `epoch` on this rank."""
        return self._batches(epoch)[step]

    def _batches(self, epoch: int) -> list[list[int]]:
        shard = self.shard(epoch).tolist()
        b = self.cfg.batch_size
        if self.cfg.drop_last:  # the smallest shard sets the count so ranks stay in step
            shard = shard[: (len(self.dataset) // self.cfg.world) // b * b]
        return [shard[i:i + b] for i in range(0, len(shard), b)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self._normalise()
        if self._torch_loader is None:  # made once: worker processes persist across epochs
            workers = self.cfg.num_workers
            self._torch_loader = DataLoader(
                self.dataset, batch_sampler=_RemainingBatches(self), num_workers=workers,
                collate_fn=collate, worker_init_fn=_worker_init if workers else None,
                persistent_workers=workers > 0)
        for batch in self._torch_loader:
            self._apply_policy(batch["skipped"])  # raises before the step: resume retries it
            self.step += 1  # position of the next batch: what a checkpoint after this one needs
            if batch["frames"].dtype != self.dataset.dtype:  # uint8 from a worker
                batch["frames"] = to_float(batch["frames"], self.dataset.pool)
            yield batch
        self._normalise()

    def _apply_policy(self, failures: list[SkippedClip]) -> None:
        for failure in failures:
            if self.cfg.policy == "error":
                raise DojoError(f"{failure.file}: {failure.reason}")
            if failure not in self.dataset.skipped:
                warnings.warn(f"skipping clip {failure.clip}: {failure.file}: {failure.reason}",
                              SkippedClipWarning, stacklevel=3)
                self.dataset.skipped.append(failure)

    def _normalise(self) -> None:
        if self.step >= self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        """Position of the next batch, with the settings that give positions their meaning."""
        self._normalise()
        return {"epoch": self.epoch, "step": self.step, "seed": self.cfg.seed,
                "rank": self.cfg.rank, "world": self.cfg.world}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at a position saved by `state_dict`; seed, rank and world must match."""
        for key in ("seed", "rank", "world"):
            if key in state and state[key] != getattr(self.cfg, key):
                raise ConfigError("loader state", key, state[key],
                                  f"{getattr(self.cfg, key)} as configured (same {key} to resume)")
        for key in ("epoch", "step"):
            if not isinstance(state.get(key), int) or state[key] < 0:
                raise ConfigError("loader state", key, state.get(key), "an integer >= 0")
        self.epoch, self.step = state["epoch"], state["step"]
