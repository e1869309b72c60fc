"""program -> timeline: a deterministic event engine, cost models per device kind, collectives,
memory and energy."""

from dojo.sim.simulate import Result, simulate

__all__ = ["Result", "simulate"]
