"""Dojo's number formats (CFloat8/16, BF16, FP32) and precision policies for PyTorch training.

Formats are data (`formats.py`); `quantize.py` encodes, decodes and rounds tensors; `policy.py`
names precision policies and keeps per-tensor bias state; `modules.py` applies a policy to the
Linear/Conv2d layers of an nn.Module. See docs/numerics.md.
"""

from dojo.numerics.formats import FORMATS, NumberFormat, get_format
from dojo.numerics.modules import (
    PolicyConv2d,
    PolicyLinear,
    apply_policy,
    load_policy_state,
    policy_state,
    remove_policy,
    round_gradient,
    round_operand,
)
from dojo.numerics.policy import (
    POLICIES,
    AmaxHistory,
    OperandRule,
    PrecisionPolicy,
    TensorQuantizer,
    get_policy,
    policy_from_mapping,
)
from dojo.numerics.quantize import bias_for_amax, decode, encode, quantize

__all__ = [
    "FORMATS",
    "POLICIES",
    "AmaxHistory",
    "NumberFormat",
    "OperandRule",
    "PolicyConv2d",
    "PolicyLinear",
    "PrecisionPolicy",
    "TensorQuantizer",
    "apply_policy",
    "bias_for_amax",
    "decode",
    "encode",
    "get_format",
    "get_policy",
    "load_policy_state",
    "policy_from_mapping",
    "policy_state",
    "quantize",
    "remove_policy",
    "round_gradient",
    "round_operand",
]
