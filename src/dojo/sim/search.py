"""Automatic planning: the fastest plan that fits, found by branch and bound over the simulator.

The space is every plan the plan vocabulary can write for the model, the devices and the batch
(`searchspace`): every dp x tp x pp (x cp) up to the device count, the rest idle (no device count
is dominated: a wider dp group may cross a slower link, or need a batch that does not divide),
tp dividing the model's heads and widths, at any level; dp dividing the batch; placed as the
system's compiler would (`compiler.placement`: on Dojo whole tiles and rectangles of chips);
every mb that divides the per-replica batch; every interleave up to blocks + 2 virtual stages,
with the block splits of `plan.stages.planner_splits` (the even and Llama 3's splits, and
uneven ones: first and last virtual stage c - 2 to c blocks, c = ceil(blocks / stages), the rest
even; other splits are not searched, not claimed dominated: 126 blocks have 1e18 splits over 16
stages, and `stages=` writes any for `dojo simulate`); every schedule, recompute and ZeRO stage,
sp on and off; for the interleaved schedule, where pp divides the micro-batches, every
micro-batch group `vp_group` N <= pp whose order runs (`searchspace.group_sizes`: N = pp, the
default, and every N < pp that does not deadlock, `plan.group_runs`). Where pp does not divide
them an interleaved plan needs `vp_group` and is not searched (a restriction for speed: those
plans made gpt3-175b's ExaPOD search several times slower). N > pp is not searched: with equal
chunk times and pp dividing the micro-batches it is never faster than N = pp (Narayanan's
bubble either way) and never smaller (the warm phase grows with N; both tested,
`tests/sim/test_sim_search_vpgroup.py`), but with unequal chunks, transfers, or a last group
that is not whole it can be faster, so it is a restriction of the space, not a dominance claim
(as for the splits above). Omitted, because each is dominated (never faster, never smaller) or
identical:
- `overlap=off`: every task takes at least as long as with overlap (a blocking send adds to
  it), the pipeline's task ends are monotone in the durations (a task starts at the max of its
  device's previous end and its input's end plus the transfer), and the sync then ends at
  last.end + sync instead of max(last.start + sync, last.end + sync / blocks); memory is the same.
- with pp = 1, `schedule=gpipe` (nothing waits on another device, so both orders take the sum of
  the same tasks, and GPipe holds every micro-batch) and `interleave` > 1 (refused: nothing to
  interleave); `schedule=1f1b` with interleave > 1 is the interleaved schedule.
- with dp = 1, `zero` > 0 (it shards over dp: the same bytes and times); with tp = 1, `sp=on`;
  `vp_group` with GPipe or written as pp where pp divides the micro-batches (the same order).
`precision` and `fusion` are held at the caller's values: they say what the software runs (its
number formats; whether a compiler fuses kernels), which a plan of the same step cannot choose.
Context parallelism: for a sequence model, every cp that divides the devices and cuts the
sequence into 2 cp chunks of at least `MIN_CP_TOKENS` / 2 tokens (cp_comm held at p2p). The floor
is a restriction for speed, not a dominance argument: each cp needs its own captures, and below
4,096 tokens per rank a ring step's attention is short against its transfer. Expert parallelism
(MoE models): every ep that divides both dp and the experts; `imbalance` is held at 1.

Bounds, cheapest first; each is a true lower bound (tests check them over whole spaces):
-1. per dp x tp x pp: the state spread evenly over its stages at ZeRO 3 must fit (the fullest
   holds at least that); (batch / dp) x FLOP per sample / (pp x peak), then x op seconds;
0. per split (interleave, split): each stage's state at ZeRO 3 (the least over ep) plus
   `stagemem.least_in_flight` must fit; per mb: micro x the model's op and collective seconds
   (the least over sp and ep) / pp (the -1 bound's term of that mb, before any group of it is
   built), and the same screen with a micro-batch holding at least mb x a sample's least saved
   bytes; per group (mb): first micro x the split's stream floor (where no ZeRO stage below 3
   fits at any ep, each task of a device takes at least its chunk's ZeRO 3 weight stream, so
   the device at least 2 x the streams of its chunks per micro-batch), then, when it comes up,
   the least first bound of its plans over sp, ep and ZeRO (0 standing for 0-2 where one of
   them fits at that ep, 3 where it fits), and for MoE models the least state plus the least
   activations over its schedules, recomputes and sp must fit;
1. per plan: its state must fit; `makespan_bounds` on the tasks' times, each at least
   max(op seconds, ZeRO 3's weight stream (`simulate._zero3_time`)) + its tp collectives and
   all-to-alls (the recompute's ops and reruns inside the max, as `simulate.task_durations`);
2. a plan of a micro-batch group N != default first waits under `_order_bound`
   (`pipeline.group_chain_bound` on the first bound's task times:
   device 0 runs each group's backwards chunk by chunk, and each chunk change waits for the
   backward to cross the other pp - 1 stages, so groups of N < pp stall the ring; such a plan
   is compiled only where its stall leaves it among the fastest, in practice where N = pp does
   not fit memory); then, before compiling any plan: every stage's bytes from the work
   (`stagemem.stage_totals`, the compiled program's figure, experts' 1/ep included); compiled:
   `stepbound.lower_bound` on the exact task durations (the program is kept for the plan's
   simulation), which includes device 0's own order run against the rings of the other
   devices' tasks and then its sync and optimizer (`pipeline.ring_spans`: within 0.1 % of
   the simulated end on gpt3-175b's ExaPOD plans of N < pp, where the chain bound is 19 %
   below, and tight for GPipe with few micro-batches, so such plans are no longer
   simulated). Bounds 0-2 hold at every N: the memory screens count the fewest
   units any N holds in flight (N = 1, `stagemem.least_in_flight`, `fewest_in_flight`), and
   the time bounds hold for every task order.
MoE models get the same screens (`screen._Screen._affine`): ep changes neither a GEMM's FLOP
nor the bytes saved for backward (`experts.ep_work`), only the state (counted per ep), the
weights ZeRO 3 streams, and the op times (the all-to-alls added, `searchspace.all_to_all_parts`).
The search's caches hold one group's or family's entries and are emptied when full
(`timebounds.room`), so its memory does not grow with the space.
All wait in one queue by bound (a group's plans that share a first bound as one bundle, built
when it comes up); the head is expanded, refined or simulated, and the search stops
when the head's bound exceeds the K-th best simulated time. No plan whose bound is below that is
left unsimulated, so the result equals exhaustive enumeration (`exhaustive`; tests compare them,
with idle devices and uneven splits too).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Mapping
from typing import Any

from dojo.compiler.mapping import device_count, device_name
from dojo.compiler.placement import placement_words
from dojo.errors import DojoError
from dojo.hardware.spec import SystemSpec
from dojo.sim.screen import _Screen
from dojo.sim.searchspace import (
    Candidate,
    Search,
    _family,
    _simplicity,
    bundle_plans,
    context_sizes,
    context_space,
    no_fit_error,
)
from dojo.sim.searchspace import plan_space as plan_space  # the space, for callers and tests
from dojo.sim.session import (
    Simulated,
    captured,
    check_inputs,
    compile_model,
    model_shape,
    simulate_model,
)
from dojo.sim.simulate import default_precision, simulate


def best_plan(model: str, overrides: Mapping[str, Any], spec: SystemSpec, batch: int,
              seq: int | None = None, top: int = 5, precision: str | None = None,
              fusion: str = "full") -> Search:
    """Search the plan space of `model` on `spec` for global batch `batch` (module docstring);
    `precision` None: the system's own (`default_precision`)."""
    start = time.perf_counter()
    precision = precision or default_precision(spec)
    check_inputs(batch, seq)
    graph, config = captured(model, overrides, 1, seq)
    shape = model_shape(graph, config)
    devices = device_count(spec)
    screen = _Screen(model, overrides, spec, batch, seq)
    cps = context_sizes(model, overrides, seq, devices)
    queue, splits = screen.device_groups(shape, devices, precision, fusion, cps)
    if not splits:
        raise DojoError(f"no plan fits {model} on {spec.name} with batch {batch}: no dp x tp x "
                        f"pp <= {devices}{placement_words(spec)} divides both the model "
                        f"({shape.layers} blocks, {shape.heads} heads) and the batch")
    head = f"no plan fits {model} on {spec.name} with batch {batch}"
    if not queue:
        raise no_fit_error(head, device_name(spec), screen.capacity, screen.least, None)
    found: list[Candidate] = []
    fitting: set[str] = set()
    evaluated = considered = 0
    count = itertools.count(len(queue))
    while queue:
        bound, _, index, tier, plan = heapq.heappop(queue)
        if len(found) >= top and bound > found[top - 1].step_time_s:
            break
        worst = found[top - 1].step_time_s if len(found) >= top else float("inf")
        if tier == -2:  # a dp x tp x pp under its FLOP bound: again under its op-time bound
            heapq.heappush(queue, (max(bound, screen._op_bound(plan)), _simplicity(plan),
                                   index, -1, plan))
            continue
        if tier <= -1:  # a dp x tp x pp: its groups (those under the K-th best time)
            for group in screen.groups(plan, shape, devices, worst):
                considered += group[0]
                if group[1] <= worst:
                    heapq.heappush(queue, (*group[1:3], next(count), 0, group[3]))
            continue
        if tier == 0:   # a group under its floor: again under its plans' least first bound
            least = screen.group_bound(plan, shape, devices, worst)
            if least <= worst and least < float("inf"):
                heapq.heappush(queue, (max(bound, least), _simplicity(plan), index, 1, plan))
            continue
        if tier == 1:   # a group: its bundles of plans, each under its plans' first bound
            for first, simplest, bundle in screen.plans(plan, shape, devices, worst):
                heapq.heappush(queue, (first, _simplicity(simplest), next(count), 5, bundle))
            continue
        if tier == 5:   # a bundle: its plans
            for variant in bundle_plans(plan):
                heapq.heappush(queue, (bound, _simplicity(variant), next(count), 2, variant))
            continue
        if tier == 2 and screen._ordered(plan):   # again under its own order's bound
            heapq.heappush(queue, (max(bound, screen._order_bound(plan)), _simplicity(plan),
                                   index, 4, plan))
            continue
        if tier in (2, 4):
            refined = screen.refine(plan)
            if refined is not None:
                heapq.heappush(queue, (max(bound, refined) if tier == 4 else refined,
                                       _simplicity(plan), index, 3, plan))
            continue
        program, graph, prepared = screen.compiled.pop(plan) if plan in screen.compiled else \
            (*compile_model(model, overrides, spec, plan, batch, seq, derive=True), None)
        sim = Simulated(program=program, result=simulate(program, prepared), graph=graph)
        evaluated += 1
        r = sim.result
        found.append(Candidate(plan, r.step_time_s, r.mfu, r.memory.fits, sim))
        found.sort(key=_preference)
        fitting.add(_family(plan))
        del found[top:]   # the rest hold their programs and timelines for nothing
    if not found:
        raise no_fit_error(head, device_name(spec), screen.capacity, None, screen.closest)
    rejected = tuple((f, r) for f, r in screen.rejected.items() if f not in fitting)
    return Search(best=found[0], candidates=tuple(found[:top]), rejected=rejected,
                  search_s=time.perf_counter() - start, evaluated=evaluated,
                  considered=considered)


def _preference(c: Candidate) -> tuple[Any, ...]:
    """Fastest first; among equal times (to 1e-12 s), the plan with fewer moving parts."""
    return (round(c.step_time_s, 12), _simplicity(c.plan), c.plan.text())


def exhaustive(model: str, overrides: Mapping[str, Any], spec: SystemSpec, batch: int,
               seq: int | None = None, precision: str | None = None) -> Candidate:
    """Simulate every plan of the space, each from its own capture (the reference the search
    is tested against); `precision` None: the system's own."""
    precision = precision or default_precision(spec)
    graph, config = captured(model, overrides, 1, seq)
    shape = model_shape(graph, config)
    best: Candidate | None = None
    devices = device_count(spec)
    cps = context_sizes(model, overrides, seq, devices)
    for plan in context_space(shape, devices, batch, cps, precision, spec=spec):
        sim = simulate_model(model, overrides, spec, plan, batch, seq)
        if not sim.result.memory.fits:
            continue
        cand = Candidate(plan, sim.result.step_time_s, sim.result.mfu, True, sim)
        if best is None or _preference(cand) < _preference(best):
            best = cand
    if best is None:
        raise DojoError(f"no plan fits {model} on {spec.name}")
    return best
