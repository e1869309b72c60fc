"""The model path's memos change no result, only how often it is computed.

The plan search compiles one capture under many plans; `dojo.graph.memo` answers each graph's
plan-independent questions (the fused-attention graph, the tp dataflow, the tp collectives)
once. The reference here is the same computation with every memo and the session's caches
emptied before each call, so nothing is reused: each `ModelWork` must be identical to the
memoized one, float for float (compared by `repr`, which round-trips every float exactly and
tells -0.0 from 0.0), whatever order the plans come in. The micro-batch extrapolation's fast
path (`session._affine`) is checked against the straightforward field-by-field version.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from dojo.compiler import fusion
from dojo.compiler.replicated import with_whole_experts
from dojo.compiler.work import model_work
from dojo.graph.memo import clear_all
from dojo.models import MODELS
from dojo.plan.plan import Plan
from dojo.sim import session

MODELS_UNDER_TEST = [("gpt", {"dropout": 0.1}), ("llama", {}), ("moe", {}),
                     ("deepseek-v3", {})]
PLANS = [
    Plan(tp=2, sp=True),
    Plan(),
    Plan(tp=4, precision="fp8", recompute="selective"),
    Plan(tp=2, fusion="kernels", recompute="ops:mm"),
    Plan(tp=4, sp=True, precision="fp32", fusion="none"),
    Plan(tp=2, recompute="modules:mlp+layernorm", precision="fp8"),
    Plan(tp=2, sp=True, cp=2, recompute="modules:core_attn"),
    Plan(tp=2, ep=2, etp=1, dp=2),
]


def _overrides(name: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {**dict(MODELS.get(name).small), **extra}


def _fresh() -> None:
    clear_all()
    session._WORKS.clear()


def _works(name: str, over: dict[str, Any], plans: list[Plan], mb: int, fresh: bool
           ) -> list[str]:
    out = []
    for plan in plans:
        if fresh:
            _fresh()
        for fused in (True, False):
            work = session.work_for(name, over, mb, None, plan, derive=False,
                                    fused_attention=fused)
            out.append(repr(work))
    return out


@pytest.mark.parametrize("name,extra", MODELS_UNDER_TEST)
def test_memoized_work_is_the_fresh_work(name: str, extra: dict[str, Any]) -> None:
    over = _overrides(name, extra)
    reference = _works(name, over, PLANS, 2, fresh=True)
    _fresh()
    warm = _works(name, over, PLANS[::-1], 2, fresh=False)[::-1]
    # the reversed run lists each plan's (fused, unfused) pair reversed too
    warm = [w for pair in zip(warm[1::2], warm[0::2]) for w in pair]
    assert warm == reference
    session._WORKS.clear()  # the works again, from the memos alone
    assert _works(name, over, PLANS, 2, fresh=False) == reference


def test_fused_attention_is_computed_once_per_graph(monkeypatch: pytest.MonkeyPatch) -> None:
    """Old code fused the attention of a capture anew for every plan compiled from it."""
    over = _overrides("gpt", {"dropout": 0.1})
    graph, _ = session.captured("gpt", over, 2, None)
    assert fusion.has_sdpa_fallback(graph)
    calls = []
    real = fusion.fuse_attention

    def counted(g: Any, weights: Any) -> Any:
        calls.append(g)
        return real(g, weights)

    monkeypatch.setattr(fusion, "fuse_attention", counted)
    clear_all()
    for tp in (1, 2, 4):
        for sp in (False, True):
            model_work(graph, tp=tp, sp=sp, scale=0.5)
    assert len(calls) == 1
    assert with_whole_experts(graph) is with_whole_experts(graph)


def _reference_affine(a: Any, b: Any, k: int) -> Any:
    """a + (b - a) k field by field, written plainly (as the session's was before its fast
    path for ints)."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return type(a)(**{f.name: _reference_affine(getattr(a, f.name), getattr(b, f.name), k)
                          for f in dataclasses.fields(a)})
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        return tuple(_reference_affine(x, y, k) for x, y in zip(a, b))
    if isinstance(a, str) and isinstance(b, str) and a != b:
        pa, pb = re.split(r"(\d+)", a), re.split(r"(\d+)", b)
        return "".join(x if i % 2 == 0 else str(int(x) + (int(y) - int(x)) * k)
                       for i, (x, y) in enumerate(zip(pa, pb)))
    if a is None or b is None or isinstance(a, (str, bool)):
        assert a == b
        return a
    return a + (b - a) * k


@pytest.mark.parametrize("name", ["gpt", "deepseek-v3"])
def test_fast_extrapolation_is_the_plain_one(name: str) -> None:
    over = _overrides(name, {})
    g2, _ = session.captured(name, over, 2, None)
    g3, _ = session.captured(name, over, 3, None)
    for k in (1, 2, 7):
        fast = session._affine(g2, g3, k)
        assert fast == _reference_affine(g2, g3, k)
        assert repr(fast) == repr(_reference_affine(g2, g3, k))
