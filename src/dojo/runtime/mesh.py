"""The device mesh of a run: rank <-> (pp, dp, tp) coordinates and the process groups per axis.

Ranks are laid out as the compiler lays devices out (`dojo.compiler.program`): tensor-parallel
ranks are adjacent (stride 1), data-parallel replicas stride `tp`, pipeline stages stride
`tp * dp`. So rank = pp_index * dp * tp + dp_index * tp + tp_index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dojo.plan.plan import Plan
from dojo.runtime.gloothreads import follow


@dataclass(frozen=True)
class Coords:
    """Where one rank sits: pipeline stage, data-parallel replica, tensor-parallel slot."""

    pp: int
    dp: int
    tp: int


def coords_of(rank: int, plan: Plan) -> Coords:
    """The mesh coordinates of `rank` under `plan`."""
    return Coords(pp=rank // (plan.dp * plan.tp), dp=(rank // plan.tp) % plan.dp, tp=rank % plan.tp)


def rank_of(c: Coords, plan: Plan) -> int:
    """Inverse of `coords_of`."""
    return c.pp * plan.dp * plan.tp + c.dp * plan.tp + c.tp


def axis_groups(plan: Plan) -> dict[str, list[list[int]]]:
    """Every group of ranks along each axis ("tp", "dp", "pp"), plus "tied": the first and last
    pipeline stage of each (dp, tp) pair, which share the tied embedding (empty when pp == 1)."""
    n = plan.devices
    out: dict[str, list[list[int]]] = {"tp": [], "dp": [], "pp": [], "tied": []}
    for axis in ("tp", "dp", "pp"):
        seen: set[tuple[int, ...]] = set()
        for r in range(n):
            c = coords_of(r, plan)
            members = [rank_of(_with(c, axis, i), plan) for i in range(getattr(plan, axis))]
            key = tuple(members)
            if key not in seen:
                seen.add(key)
                out[axis].append(members)
    if plan.pp > 1:
        out["tied"] = [[g[0], g[-1]] for g in out["pp"]]
    return out


def _with(c: Coords, axis: str, value: int) -> Coords:
    return Coords(**{**c.__dict__, axis: value})


@dataclass(frozen=True)
class Mesh:
    """This rank's coordinates and its process groups (None where the axis has size 1 or there
    is no torch.distributed world)."""

    plan: Plan
    rank: int
    coords: Coords
    groups: dict[str, Any]
    peers: dict[str, list[int]]

    @property
    def first_stage(self) -> bool:
        return self.coords.pp == 0

    @property
    def last_stage(self) -> bool:
        return self.coords.pp == self.plan.pp - 1

    def stage_rank(self, stage: int) -> int:
        """The global rank holding pipeline `stage` with this rank's dp and tp coordinates."""
        return rank_of(Coords(pp=stage % self.plan.pp, dp=self.coords.dp, tp=self.coords.tp),
                       self.plan)


def build_mesh(plan: Plan, rank: int, distributed: bool) -> Mesh:
    """Create the process groups of every axis. Every rank must call this in the same order:
    `new_group` is collective over the whole world."""
    groups: dict[str, Any] = {}
    peers: dict[str, list[int]] = {}
    if distributed:
        import torch.distributed as dist

        for axis, lists in axis_groups(plan).items():
            for members in lists:
                if len(members) < 2:
                    continue
                group = dist.new_group(members)
                if rank in members:
                    groups[axis] = group
                    peers[axis] = members
        follow()  # every group's loop exists now: the launcher's choice (`gloothreads`)
    return Mesh(plan=plan, rank=rank, coords=coords_of(rank, plan), groups=groups, peers=peers)
