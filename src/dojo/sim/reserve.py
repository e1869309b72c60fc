"""Device memory a GPU training process holds outside its tensors (the non-tensor reserve).

A GPU's capacity (`[gpu.memory.hbm] bytes`, the total NVML reports) is not all free for
weights, gradients, optimizer state and activations. Three holders take a share first:

- The CUDA context (driver state, loaded kernels). PyTorch's maintainers measure it at about
  300 MB with CUDA's lazy module loading (CUDA >= 11.7; pytorch/pytorch#107667) and up to
  1,008 MiB without it (pytorch/pytorch#28394, PyTorch 1.3). We take the larger, conservative
  figure: 1,008 MiB.
- The cuBLAS and cuBLASLt workspaces: 32 MiB each, the size cuBLAS recommends on Hopper and
  PyTorch allocates there by default (pytorch/pytorch#89027, #120925; 4 MiB before Hopper,
  so 32 MiB is conservative on an A100).
- NCCL's communicator buffers: each channel of a collective holds its own FIFO of
  NCCL_BUFFSIZE = 4 MiB per peer connection (NCCL environment docs; NVIDIA/nccl#1450), a ring
  has 2 connections (previous and next rank) whatever its size (NVIDIA/nccl#986), and an
  H100 NVLink communicator opens up to 32 channels (NVIDIA/nccl#1685). So a communicator
  holds at most 32 x 2 x 4 MiB = 256 MiB per rank; a plan holds one per parallel dimension
  above 1 (tp, cp, dp, pp, ep) plus the joint dp x cp group its gradients reduce over when
  both dp and cp exceed 1.

Allocator fragmentation is not modelled (it depends on the allocation order, not on a plan).
"""

from __future__ import annotations

from dojo.plan.plan import Plan

MIB = 1024 ** 2
CUDA_CONTEXT_BYTES = 1008 * MIB
CUBLAS_WORKSPACE_BYTES = 2 * 32 * MIB           # cuBLAS + cuBLASLt, 32 MiB each (Hopper)
NCCL_BUFFSIZE = 4 * MIB                         # NCCL_BUFFSIZE default
NCCL_CHANNELS = 32                              # channels per communicator, at most
NCCL_RING_CONNECTIONS = 2                       # previous and next rank
NCCL_COMMUNICATOR_BYTES = NCCL_CHANNELS * NCCL_RING_CONNECTIONS * NCCL_BUFFSIZE


def fixed_reserve() -> float:
    """Bytes every GPU training process holds whatever its plan: context and workspaces."""
    return float(CUDA_CONTEXT_BYTES + CUBLAS_WORKSPACE_BYTES)


def communicators(plan: Plan) -> int:
    """NCCL communicators a rank of `plan` holds: one per parallel dimension above 1, and
    the dp x cp gradient group when both exceed 1."""
    dims = sum(1 for n in (plan.tp, plan.cp, plan.dp, plan.pp, plan.ep) if n > 1)
    return dims + (1 if plan.dp > 1 and plan.cp > 1 else 0)


def nccl_reserve(plan: Plan) -> float:
    """Bytes of NCCL buffers a rank of `plan` holds (`communicators` x 256 MiB)."""
    return float(communicators(plan) * NCCL_COMMUNICATOR_BYTES)
