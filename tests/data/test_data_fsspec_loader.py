"""The training loader reads clip sets through fsspec URLs: the same batches, bit for bit, from
`memory://` and `file://` as from the local folder (PyAV decodes the URL's file object), and a
missing or damaged file behind a URL is skipped with its URL named, like a local one."""

from __future__ import annotations

import uuid
from pathlib import Path

import fsspec
import pytest
import torch

from dojo.data import ClipLoader, LoaderConfig, open_clips
from dojo.data.synth import SynthConfig, synthesize
from dojo.data.video import probe
from dojo.errors import DojoError


@pytest.fixture(scope="module")
def local_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fsspec") / "set"
    synthesize(root, SynthConfig(clips=2, cameras=2, frames=4, width=32, height=32, grid=8,
                                 seed=3), catalog="")
    return root


def to_memory(local: Path) -> str:
    """A copy of the set in fsspec's in-memory file system; its URL."""
    fs = fsspec.filesystem("memory")
    base = f"/sets-{uuid.uuid4().hex}"
    for path in sorted(local.rglob("*")):
        if path.is_file():
            fs.pipe_file(f"{base}/{path.relative_to(local).as_posix()}", path.read_bytes())
    return f"memory://{base}"


def batches(root: str | Path) -> list[dict[str, torch.Tensor]]:
    loader = ClipLoader(root, LoaderConfig(batch_size=3, window=2, stride=1, seed=4))
    return [{k: v for k, v in b.items() if k != "skipped"} for b in loader]


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_url_sets_give_the_local_batches(kind: str, local_set: Path) -> None:
    url = to_memory(local_set) if kind == "memory" else local_set.resolve().as_uri()
    assert url.startswith(f"{kind}://")
    want, got = batches(local_set), batches(url)
    assert len(want) == len(got) == 2  # 2 clips x 3 windows of 2 frames, in batches of 3
    for a, b in zip(want, got, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert probe(f"{url}/clip_0000/front.mp4").frames == 4


def test_a_missing_file_behind_a_url_is_skipped_naming_it(local_set: Path) -> None:
    url = to_memory(local_set)
    fsspec.filesystem("memory").rm(f"{url.removeprefix('memory://')}/clip_0001/labels.npz")
    with pytest.warns(UserWarning, match="clip_0001"):
        clips = open_clips(url, policy="skip")
    assert [c.name for c in clips.clips] == ["clip_0000"]
    assert clips.skipped[0].file == f"{url}/clip_0001/labels.npz"
    with pytest.raises(DojoError, match=r"clip_0001/labels.npz: file of clip"):
        open_clips(url, policy="error")


def test_a_corrupt_video_behind_a_url_is_one_error(local_set: Path) -> None:
    url = to_memory(local_set)
    inner = f"{url.removeprefix('memory://')}/clip_0000/front.mp4"
    fsspec.filesystem("memory").pipe_file(inner, b"not an mp4 at all")
    with pytest.raises(DojoError, match=r"front\.mp4: cannot read video"):
        open_clips(url, policy="error")
