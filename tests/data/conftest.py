"""Shared tiny clip sets for the dojo.data tests (made once per session, a second or two)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dojo.data.synth import SynthConfig, synthesize

TINY = SynthConfig(clips=3, cameras=6, frames=8, width=64, height=48, seed=7, grid=16,
                   range_m=16.0)


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only 3-clip set; tests that damage files copy it first (see `damaged`)."""
    root = tmp_path_factory.mktemp("tiny") / "set"
    synthesize(root, TINY)
    return root


@pytest.fixture(scope="session")
def tiny_cfg() -> SynthConfig:
    """The config `tiny_set` was made with."""
    return TINY
