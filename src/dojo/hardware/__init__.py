"""Hardware as data: system files, their typed specs, topology and derived figures."""

from dojo.hardware.derived import Summary, summarize
from dojo.hardware.loader import load_system, shipped_systems
from dojo.hardware.spec import SystemSpec
from dojo.hardware.topology import Route, Topology

__all__ = [
    "Route",
    "Summary",
    "SystemSpec",
    "Topology",
    "load_system",
    "shipped_systems",
    "summarize",
]
