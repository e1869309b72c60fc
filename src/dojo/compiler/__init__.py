"""graph x plan x system -> per-device program: work, collectives, transfers (chip level)."""

from dojo.compiler.program import PRECISION_BYTES, Chunk, Comm, Program, compile_program
from dojo.compiler.work import ModelWork, model_work

__all__ = ["PRECISION_BYTES", "Chunk", "Comm", "ModelWork", "Program", "compile_program",
           "model_work"]
