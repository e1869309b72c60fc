"""The data path as Dojo has it: hosts decode video, push it over PCIe into the DIPs, TTP carries
it onto the tiles; cheap ingest hosts (Tesla's fix) add decode capacity and write over TTPoE.

`data_path(spec, batch, images_per_sample, bytes_per_sample, decode_fps_per_core, step_s)` says
how long one step's input takes to decode and deliver, whether it hides behind the compute of the
step (input is prefetched one step ahead), how many hosts the tiles would need, and how many
ingest hosts must be added to the system's own. Seconds, bytes, frames per second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from dojo.errors import DojoError
from dojo.hardware.loader import dip_count, host_count
from dojo.hardware.spec import SystemSpec
from dojo.sim.simulate import Result


@dataclass(frozen=True, kw_only=True)
class IngestHost:
    """Tesla's added ingest host: PCIe Gen3 x16, one 100 GbE NIC, 8 GB DDR4 (AI Day 2022).
    Its core count is not published; 16 is assumed."""

    cores: int = 16
    nic_bytes_per_s: float = 12.5e9


@dataclass(frozen=True)
class DataPath:
    decode_s: float        # decoding one step's frames on the system's hosts
    transfer_s: float      # hosts -> DIPs (PCIe) -> tiles (TTP), the slower hop
    data_s: float          # max of the two: the step's input time
    exposed_s: float       # what the compute of a step does not hide
    hosts_needed: int      # hosts (at the system's cores per host) to keep up with compute
    ingest_hosts_needed: int
    bottleneck: bool       # data loading, not compute, sets the step time

    def to_json(self) -> dict[str, Any]:
        return {"decode_s": self.decode_s, "transfer_s": self.transfer_s, "data_s": self.data_s,
                "exposed_s": self.exposed_s, "hosts_needed": self.hosts_needed,
                "ingest_hosts_needed": self.ingest_hosts_needed, "bottleneck": self.bottleneck}


def data_path(spec: SystemSpec, batch: int, images_per_sample: int, bytes_per_sample: float,
              decode_fps_per_core: float, step_s: float,
              ingest: IngestHost | None = None) -> DataPath:
    """Input time of one step of `batch` samples against a compute step of `step_s` seconds."""
    if decode_fps_per_core <= 0:
        raise DojoError(f"decode rate must be positive, got {decode_fps_per_core} frames/s")
    ingest = ingest or IngestHost()
    hosts, dips = host_count(spec), dip_count(spec)
    if spec.host is None or spec.dip is None or hosts == 0:
        raise DojoError(f"{spec.name} has no hosts and DIPs to feed it (try v1, tray, exapod)")
    cores = spec.host.cpu_cores
    frames = batch * images_per_sample
    decode = frames / (hosts * cores * decode_fps_per_core)
    link = min(spec.dip.pcie.bytes_per_s, spec.dip.ttp.bytes_per_s) * dips
    transfer = batch * bytes_per_sample / link
    data = max(decode, transfer)
    need_rate = frames / step_s
    hosts_needed = math.ceil(need_rate / (cores * decode_fps_per_core))
    deficit = max(0.0, need_rate - hosts * cores * decode_fps_per_core)
    per_ingest = min(ingest.cores * decode_fps_per_core,
                     ingest.nic_bytes_per_s / (bytes_per_sample / images_per_sample))
    return DataPath(decode_s=decode, transfer_s=transfer, data_s=data,
                    exposed_s=max(0.0, data - step_s), hosts_needed=hosts_needed,
                    ingest_hosts_needed=math.ceil(deficit / per_ingest) if deficit else 0,
                    bottleneck=data > step_s)


def with_data(result: Result, path: DataPath, idle_fraction: float = 0.3) -> Result:
    """The result with input loading in it: the step waits for whatever the data path exposes,
    and during that wait the system draws `idle_fraction` of its average power in the step."""
    step = result.step_time_s + path.exposed_s
    idle_watts = result.energy_j / result.step_time_s * idle_fraction
    breakdown = dict(result.breakdown_s)
    breakdown["data"] = path.exposed_s
    scale = result.step_time_s / step
    return replace(result, step_time_s=step, samples_per_s=result.samples_per_s * scale,
                   tokens_per_s=None if result.tokens_per_s is None
                   else result.tokens_per_s * scale,
                   achieved_flops_per_device=result.achieved_flops_per_device * scale,
                   mfu=result.mfu * scale, breakdown_s=breakdown,
                   energy_j=result.energy_j + idle_watts * path.exposed_s)
