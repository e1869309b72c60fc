"""The simulated half of `dojo train`: the model's large preset on Dojo and on a GPU cluster.

What is simulated: one training step of `occupancy-large` (8 cameras x 8 frames of 1280 x 960,
a 200 x 200 grid) at the precision of the real run, on the chosen Dojo system under the chosen
plan (`auto` searches with `dojo.sim.search.best_plan`), and beside it on an H100 cluster sized
to the same power budget (GPUs = Dojo system power / power per GPU, rounded to whole 8-GPU
servers) at the precision the GPU really has (`gpu_precision`: BF16 for a CFP8 run), both at
the same global batch. The Dojo step includes its data path: host decode at the given rate
per core at the large frame size (recorded, or measured with `--measure-decode`:
`dojo.train.decode`), then PCIe into the DIPs and TTP onto the tiles (`dojo.sim.datapath`).

Utilisation maps (fractions of one step, 0..1):
- per chip of each tile: the busy time of the pipeline stage the chip runs (forward, backward
  and optimizer spans of `Result`, less the tensor-parallel collectives the simulator adds to
  the end of each span) over the step time. Devices are numbered tp fastest, then dp,
  then pp (the order of `dojo.compiler.mapping.group_levels`), so chip d runs stage
  d // (tp x dp) and sits on tile d // chips-per-tile.
- per link level and traffic kind: bytes one device sends at that level per step over (link
  bytes/s x step time). Tensor-parallel traffic is the chunks' tp collectives x micro-batches;
  gradient sync is a ring all-reduce, 2 (n - 1) / n of the device's gradient bytes; pipeline
  traffic is one activation and one gradient per micro-batch. The data row is the DIP links
  (PCIe host -> DIP and TTP DIP -> tile, the slower one) carrying the step's input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from dojo.compiler.mapping import device_count, group_levels
from dojo.compiler.program import PRECISION_BYTES, PRECISION_DTYPES, Program
from dojo.errors import ConfigError
from dojo.hardware.derived import summarize
from dojo.hardware.loader import dip_count, load_system
from dojo.hardware.spec import SystemSpec
from dojo.plan.plan import parse_plan
from dojo.sim.datapath import DataPath, data_path, with_data
from dojo.sim.search import best_plan
from dojo.sim.session import Simulated, simulate_model
from dojo.sim.simulate import Result

LARGE_MODEL = "occupancy-large"
GPU_SYSTEM = "h100-cluster"
GPUS_PER_SERVER = 8


@dataclass(frozen=True)
class Utilisation:
    """Fractions of one step (0..1): `tiles` (tiles x chips per tile) busy computing, and
    `links` (traffic kinds x link levels) of link capacity used."""

    tiles: list[list[float]]
    tile_labels: list[str]
    chip_labels: list[str]
    links: list[list[float]]
    traffic_labels: list[str]
    link_labels: list[str]


@dataclass(frozen=True)
class SimulatedRun:
    """Dojo and GPU-cluster steps of the large preset, the data path, the utilisation maps.

    `dojo.result` already includes the exposed data-loading time; energies in joules,
    `epoch_samples` is the size of the training set in samples (windows).
    """

    dojo: Simulated
    dojo_compute: Simulated            # the same step without input loading
    gpu: Simulated
    data: DataPath
    decode_fps_large: float            # frames/s per core at the large preset's frame size
    images_per_sample: int
    bytes_per_sample: float
    utilisation: Utilisation
    epoch_samples: int

    def energy_per_epoch_j(self, sim: Simulated) -> float:
        """Energy for one pass over `epoch_samples` samples at `sim`'s energy per sample (J)."""
        r = sim.result
        return r.energy_j / sim.program.batch * self.epoch_samples


def large_config() -> Any:
    """The config of the large preset (cameras, frames, image size)."""
    from dojo.models import make_config

    return make_config(LARGE_MODEL)


def gpu_count_for_power(spec: SystemSpec) -> int:
    """H100s (whole servers of 8) that draw about the power of `spec` (at least one server)."""
    server = load_system(GPU_SYSTEM, devices=GPUS_PER_SERVER)
    per_gpu = summarize(server).power_watts / GPUS_PER_SERVER
    servers = max(1, round(summarize(spec).power_watts / per_gpu / GPUS_PER_SERVER))
    return servers * GPUS_PER_SERVER


def common_batch(a: int, b: int, limit: int = 4096) -> int:
    """The smallest global batch both device counts divide, or `a` when that exceeds `limit`."""
    both = math.lcm(a, b)
    return both if both <= limit else a


def _step(model: str, spec: SystemSpec, plan_text: str, batch: int,
          precision: str) -> Simulated:
    if plan_text == "auto":
        return best_plan(model, {}, spec, batch, precision=precision).best.simulated
    plan = parse_plan(plan_text)
    if "precision=" in plan_text and plan.precision != precision:
        raise ConfigError("--plan", "precision", plan.precision,
                          f"{precision}, the precision of the run (--precision)")
    return simulate_model(model, {}, spec, replace(plan, precision=precision), batch)


def gpu_precision(precision: str, spec: SystemSpec) -> str:
    """The precision policy the GPU really runs for a run at `precision`: the first matrix dtype
    of the policy (`PRECISION_DTYPES`, in order of preference) that the GPU has a peak rate for
    and that is itself a policy. H100s have no CFP8 (and FP8 is no policy here), so a CFP8 run
    is compared with BF16 on them: rate, weights, gradients and activations all at BF16."""
    peaks = spec.leaf.peak_flops
    for dtype in PRECISION_DTYPES[precision]:
        if dtype in peaks and dtype in PRECISION_BYTES:
            return dtype
    raise ConfigError(spec.name, "peak_flops", sorted(peaks),
                      f"a rate for one of {', '.join(PRECISION_DTYPES[precision])}")


def simulate_large(system: str | SystemSpec, plan: str, precision: str,
                   decode_fps_large: float, epoch_samples: int = 0) -> SimulatedRun:
    """Simulate the large preset on `system` (a name, or an already-built spec such as a
    service job's tile partition) under `plan` and on a GPU cluster of equal power
    (at `gpu_precision`); the Dojo data path decodes at `decode_fps_large` frames/s per core
    (the rate at the large preset's frame size). `epoch_samples` may be set later (`replace`).
    """
    spec = system if isinstance(system, SystemSpec) else load_system(system)
    gpus = gpu_count_for_power(spec)
    gpu_spec = load_system(GPU_SYSTEM, devices=gpus)
    batch = common_batch(device_count(spec), gpus)
    cfg = large_config()
    dojo = _step(LARGE_MODEL, spec, plan, batch, precision)
    gpu = _step(LARGE_MODEL, gpu_spec, "auto", batch, gpu_precision(precision, gpu_spec))
    images = cfg.cameras * cfg.frames
    nbytes = float(images * cfg.width * cfg.height * 3)  # uint8 RGB
    path = data_path(spec, batch, images, nbytes, decode_fps_large, dojo.result.step_time_s)
    fed = Simulated(program=dojo.program, result=with_data(dojo.result, path), graph=dojo.graph)
    util = utilisation(fed.program, fed.result, path)
    return SimulatedRun(dojo=fed, dojo_compute=dojo, gpu=gpu, data=path,
                        decode_fps_large=decode_fps_large, images_per_sample=images,
                        bytes_per_sample=nbytes, utilisation=util, epoch_samples=epoch_samples)


def utilisation(program: Program, result: Result, path: DataPath) -> Utilisation:
    """Per-chip busy fractions by tile, and per-level link use by traffic kind (module doc)."""
    tiles, tile_labels, chip_labels = _tile_map(program, result)
    links, kinds, levels = _link_map(program, result.step_time_s, path)
    return Utilisation(tiles=tiles, tile_labels=tile_labels, chip_labels=chip_labels,
                       links=links, traffic_labels=kinds, link_labels=levels)


def _stage_busy(program: Program, result: Result, stages: int) -> list[float]:
    """Compute seconds per stage over the step: F/B spans without the tensor-parallel time the
    simulator adds to their ends (`dojo.report.trace.tp_seconds`), plus the optimizer."""
    from dojo.report.trace import tp_seconds

    tp = tp_seconds(program)
    busy = [0.0] * stages
    for span in result.spans:
        virtual = span.chunk * stages + span.stage
        busy[span.stage] += span.end - span.start - tp.get((span.kind, virtual), 0.0)
    for stage, start, end in result.optimizer_spans:
        busy[stage] += end - start
    step = result.step_time_s
    return [min(1.0, b / step) if step > 0 else 0.0 for b in busy]


def _tile_map(program: Program, result: Result
              ) -> tuple[list[list[float]], list[str], list[str]]:
    plan = program.plan
    busy = _stage_busy(program, result, plan.pp)
    levels = group_levels(program.system, program.devices, 1)
    per_tile = levels[0].members if levels else program.devices
    tiles = max(1, program.devices // per_tile)
    rows = [[busy[min(plan.pp - 1, d // (plan.tp * plan.dp_cp))]
             for d in range(t * per_tile, (t + 1) * per_tile)] for t in range(tiles)]
    unit = program.system.levels[1].name if program.system.family == "dojo" else "group"
    return (rows, [f"{unit} {t}" for t in range(tiles)],
            [f"{program.device} {c}" for c in range(per_tile)])


def _traffic(program: Program) -> dict[str, list[tuple[Any, float]]]:
    """Bytes one device sends per step, by traffic kind, with the group levels they cross."""
    plan, micro = program.plan, program.microbatches
    out: dict[str, list[tuple[Any, float]]] = {"tensor parallel": [], "gradient sync": [],
                                               "pipeline": []}
    for chunk in program.device_chunks(0):
        for comm in (*chunk.tp_forward, *chunk.tp_backward, *chunk.tp_recompute):
            out["tensor parallel"] += [(lv, comm.nbytes * micro) for lv in comm.levels]
    grads = program.device_params(0) * PRECISION_BYTES[plan.precision]["grads"]
    ring = 2 * (plan.dp_cp - 1) / plan.dp_cp if plan.dp_cp > 1 else 0.0
    out["gradient sync"] += [(lv, grads * ring) for lv in program.grad_levels]
    if program.tied is not None:  # stage 0 and the last sum their embedding copies: 2 (2-1)/2
        out["gradient sync"] += [(lv, program.tied.nbytes) for lv in program.tied.levels]
    if plan.pp > 1:
        out["pipeline"] += [(lv, 2 * program.p2p.nbytes * micro) for lv in program.p2p.levels]
    return out


def _link_map(program: Program, step: float, path: DataPath
              ) -> tuple[list[list[float]], list[str], list[str]]:
    levels = [lv.name for lv in program.system.levels[1:]] if program.system.family == "dojo" \
        else [lv.name for lv in program.system.levels]
    traffic = _traffic(program)
    rows = []
    for kind in traffic:
        row = [0.0] * len(levels)
        for lv, nbytes in traffic[kind]:
            if lv.level in levels and step > 0:
                row[levels.index(lv.level)] += nbytes / (lv.bytes_per_s * step)
        rows.append([min(1.0, v) for v in row])
    kinds = list(traffic)
    if dip_count(program.system):
        levels.append("dip (pcie/ttp)")
        for row in rows:
            row.append(0.0)
        rows.append([0.0] * (len(levels) - 1) + [min(1.0, path.transfer_s / step)])
        kinds.append("input data")
    return rows, kinds, [f"{name}" for name in levels]
