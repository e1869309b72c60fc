"""`Trainer`: execute a compiled `Program` on real tensors, in one process or one rank of many.

    sim = simulate_model("gpt", overrides, "h100-cluster", plan, batch, devices=plan.devices)
    trainer = Trainer(sim.program, build("gpt", ..., overrides=overrides))
    assert trainer.program is sim.program          # the program simulated is the one executed
    loss = trainer.step()

Execution follows the program: `program.plan` gives dp/tp/pp, the micro-batch size, the
pipeline schedule (the simulator's task order, `pipeline`), sp (`sequence_parallel`), zero 1/2
(`zero`) and recompute (`recompute`); `program.chunks[v].blocks` the blocks of each pipeline
chunk, `program.batch` the global batch. Inside a `torch.distributed` world of `plan.devices`
ranks (see `launch`) each rank takes its place in the mesh (`dojo.runtime.mesh`); without one,
the plan must be a one-device plan and micro-batches become gradient accumulation.

Optimizer: a plan with fusion `full` or `kernels` runs PyTorch's fused (multi-tensor) AdamW,
Adam or SGD, one kernel over all parameters, as the simulator times it; `fusion=none` keeps the
bundle's per-parameter loop (eager PyTorch's default on CPU). Other optimizers run as built.

Numerics: the plan's precision policy (`dojo.numerics`) is applied to the model's nn.Linear and
nn.Conv2d layers; master weights, gradients and optimizer state stay FP32. Losses are means over
the global batch: each micro-batch's mean loss is scaled by 1/micro-batches and data-parallel
gradients are averaged, which equals the single-process mean when micro-batches are equal.

Which models support what: every zoo model and user factory runs with dp (and micro-batches);
tp needs the gpt, llama, vit or MoE decoder models (Megatron splits, `tensor_parallel_models`
and `tensor_parallel_moe`, with the vocabulary-parallel embedding, head and cross entropy of
`vocab_parallel`); pp needs gpt, llama or an MoE decoder (`pipeline.LAYOUTS`). BatchNorm models
(resnet) see per-micro-batch statistics under dp or mb > 1, as in PyTorch DDP, so they do not
match a whole-batch single-process run exactly.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dojo.compiler.program import Program
from dojo.errors import DojoError
from dojo.models.zoo import MODELS, ModelBundle
from dojo.numerics import apply_policy, get_policy
from dojo.runtime.mesh import Mesh, build_mesh
from dojo.runtime.pipeline import PipelineStep, chunk_ranges, layout_of, schedule_tasks
from dojo.runtime.recompute import apply_recompute
from dojo.runtime.sequence_parallel import install as install_sequence_parallel
from dojo.runtime.sequence_parallel import partial_grad_names
from dojo.runtime.tensor_parallel import Shard
from dojo.runtime.tensor_parallel_models import shard_model
from dojo.runtime.zero import ZeroOptimizer, check_zero

# Layers that do matmul work a policy would have to round but `apply_policy` does not cover
# (it rounds exactly nn.Linear and nn.Conv2d); a non-fp32 policy refuses them by name.
UNCOVERED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
             nn.MultiheadAttention, nn.Bilinear, nn.RNNBase)


@dataclass(frozen=True)
class Batches:
    """The run's data: batch `i` of the stream is drawn from a generator seeded by (seed, i), so
    the data position is one integer and a resumed run sees the same batches. With `fixed`, batch
    0 repeats (a memorisation task whose loss must fall). Models from a user factory have no
    data function: their example batch repeats."""

    bundle: ModelBundle
    batch: int
    seed: int = 0
    fixed: bool = False

    def get(self, index: int) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """(inputs, targets) of global batch `index`, on CPU."""
        if self.bundle.name not in MODELS:
            return self.bundle.example_inputs, self.bundle.targets
        entry = MODELS.get(self.bundle.name)
        seq = self.bundle.example_inputs[0].shape[1] if self.bundle.sequence else None
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + (0 if self.fixed else index))
        inputs, target = entry.make_data(self.bundle.config, self.batch, seq, gen,
                                         torch.device("cpu"))
        return tuple(inputs), (target,)


def check_policy_coverage(model: nn.Module, policy: str) -> None:
    """DojoError naming the first layer that `policy` cannot round (fp32 accepts everything)."""
    p = get_policy(policy)
    if all(r is None for r in (p.activations, p.weights, p.grads, p.outputs)):
        return
    for path, module in model.named_modules():
        if isinstance(module, UNCOVERED):
            raise DojoError(f"precision policy '{p.name}' cannot handle layer '{path}' "
                            f"({type(module).__name__}): it rounds nn.Linear and nn.Conv2d only; "
                            "use precision=fp32 for this model")


class Trainer:
    """Runs `program` on `bundle`'s model; one instance per rank. See the module docstring.

    `seed` seeds the data stream and the policy's stochastic rounding; `distributed` defaults to
    whether torch.distributed is initialised; `data` defaults to `Batches(bundle, program.batch,
    seed)`.
    """

    def __init__(self, program: Program, bundle: ModelBundle, *, seed: int = 0,
                 distributed: bool | None = None, data: Batches | None = None) -> None:
        self.program = program
        self.bundle = bundle
        self.plan = plan = program.plan
        self.seed = seed
        self.position = 0  # index of the next global batch (the data position)
        self.mesh = _mesh(program, distributed)
        self.model = bundle.model
        self.executed: list[tuple[str, int, int]] = []  # pipeline tasks of the last step
        check_zero(plan.zero)
        self.shards = self._split()
        self.loss_fn = self._loss_fn()
        apply_recompute(self.model, plan.recompute)
        check_policy_coverage(self.model, plan.precision)
        if get_policy(plan.precision).name != "fp32":
            apply_policy(self.model, plan.precision, seed=seed * 1009 + self.mesh.rank)
        self.params, self.tied = self._owned_parameters()
        partial = partial_grad_names(self.model) if plan.sp else set()
        self.sp_partial = [p for n, p in self.params if n in partial]
        self.zero: ZeroOptimizer | None = None
        if plan.zero and "dp" in self.mesh.groups:
            self.zero = ZeroOptimizer([p for _, p in self.params], self._make_optimizer,
                                      self.mesh.groups["dp"], plan.dp, self.mesh.coords.dp,
                                      plan.zero)
        self.optimizer = (self.zero.optimizer if self.zero else
                          self._make_optimizer([p for _, p in self.params]))
        self.data = data or Batches(bundle, program.batch, seed)

    def _make_optimizer(self, params: Any) -> torch.optim.Optimizer:
        """The bundle's optimizer, fused when the plan fuses (see the module docstring)."""
        return fused_optimizer(self.bundle.make_optimizer(params), self.plan.fusion)

    def _split(self) -> dict[str, Shard]:
        """Tensor (and sequence) parallel split of the model's blocks; also the tp = 1
        structure that gpt's recompute=selective needs. Returns `shard_model`'s local -> whole
        name map."""
        from dojo.models.gpt import GPT

        plan = self.plan
        if plan.tp == 1 and not (plan.recompute == "selective" and isinstance(self.model, GPT)):
            return {}
        group = self.mesh.groups.get("tp")
        with torch.random.fork_rng(devices=[]):  # new layers must not move the global RNG
            shards = shard_model(self.model, plan.tp, self.mesh.coords.tp, group, sp=plan.sp)
        if plan.sp:
            install_sequence_parallel(self.model, plan.tp, self._seq(), group)
        return shards

    def _loss_fn(self) -> Any:
        """The bundle's loss, or under a vocabulary-parallel head (tp > 1) the split cross
        entropy; DojoError when the bundle's loss is not the classification loss it computes."""
        from dojo.models.zoo import classification_loss
        from dojo.runtime.vocab_parallel import VocabParallelEmbedding, vocab_parallel_loss

        wte = next((m for m in self.model.modules() if isinstance(m, VocabParallelEmbedding)),
                   None)
        if wte is None:
            return self.bundle.loss_fn
        if self.bundle.loss_fn is not classification_loss:
            raise DojoError(f"tensor parallelism (tp={self.plan.tp}) splits the head by "
                            "vocabulary and computes its cross entropy split; this bundle's "
                            f"loss {getattr(self.bundle.loss_fn, '__name__', '?')} is not it")
        return vocab_parallel_loss(wte.lo, wte.group)

    def _seq(self) -> int:
        return int(self.bundle.example_inputs[0].shape[1])

    def _owned_parameters(self) -> tuple[list[tuple[str, nn.Parameter]], list[nn.Parameter]]:
        """(name, parameter) this stage uses, and the tied ones (on the first and last stage)."""
        named = list(self.model.named_parameters())
        if self.plan.pp == 1:
            return named, []
        layout = layout_of(self.model, self.plan.pp)
        stage, pp = self.mesh.coords.pp, self.plan.pp
        chunks = [v for v in range(len(self.program.chunks)) if v % pp == stage]
        last = len(self.program.chunks) - 1
        ranges = chunk_ranges([c.blocks for c in self.program.chunks])
        prefixes = [f"{layout.blocks}.{i}." for v in chunks for i in ranges[v]]
        pre = {f"{m}." for m in layout.pre_modules}
        post = {f"{m}." for m in layout.post_modules}
        if 0 in chunks:
            prefixes += sorted(pre)
        if last in chunks:
            prefixes += sorted(post)
        owned = [(n, p) for n, p in named if n.startswith(tuple(prefixes))]
        tied_names = pre & post
        tied = [p for n, p in owned if n.startswith(tuple(tied_names))]
        return owned, tied

    def step(self, batch: tuple[tuple[Tensor, ...], tuple[Tensor, ...]] | None = None) -> float:
        """One optimizer step on the next global batch; returns the global mean loss. `batch` is
        that batch (`self.data.get(self.position)`) when the caller drew it ahead, as a data
        loader prefetches; None draws it here."""
        inputs, targets = batch if batch is not None else self.data.get(self.position)
        micro_in, micro_tgt = self._micro_batches(inputs, targets)
        self.model.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)
        self.model.train()
        if self.plan.pp == 1:
            loss = self._accumulate(micro_in, micro_tgt)
        else:
            loss = self._pipeline(micro_in, micro_tgt)
        self._sync_gradients()
        if self.zero is not None:
            self.zero.step()  # reduce-scatter, sharded update, all-gather
        else:
            self.optimizer.step()
        self.position += 1
        return self._global_loss(loss)

    def _micro_batches(self, inputs: tuple[Tensor, ...], targets: tuple[Tensor, ...]
                       ) -> tuple[list[tuple[Tensor, ...]], list[tuple[Tensor, ...]]]:
        per = self.program.batch // self.plan.dp
        if per * self.plan.dp != self.program.batch or per % self.plan.mb:
            raise DojoError(f"batch {self.program.batch} does not split into dp {self.plan.dp} x "
                            f"micro-batches of mb {self.plan.mb}")
        lo = self.mesh.coords.dp * per

        def cut(ts: tuple[Tensor, ...]) -> list[tuple[Tensor, ...]]:
            return [tuple(t[lo + i: lo + i + self.plan.mb] for t in ts)
                    for i in range(0, per, self.plan.mb)]

        return cut(inputs), cut(targets)

    def _accumulate(self, micro_in: list[tuple[Tensor, ...]],
                    micro_tgt: list[tuple[Tensor, ...]]) -> Tensor:
        total = torch.zeros(())
        for x, t in zip(micro_in, micro_tgt):
            loss = self.loss_fn(self.model(*x), *t) / len(micro_in)
            loss.backward()
            total = total + loss.detach()
        return total

    def _pipeline(self, micro_in: list[tuple[Tensor, ...]],
                  micro_tgt: list[tuple[Tensor, ...]]) -> Tensor:
        plan, micro = self.plan, len(micro_in)
        x0 = micro_in[0][0]
        hidden = int(self.bundle.config.hidden)
        seq = x0.shape[1] // plan.tp if plan.sp else x0.shape[1]  # sp: activations sliced
        step = PipelineStep(model=self.model, layout=layout_of(self.model, plan.pp),
                            ranges=chunk_ranges([c.blocks for c in self.program.chunks]),
                            stage_rank=lambda v: self.mesh.stage_rank(v % plan.pp),
                            shape=(x0.shape[0], seq, hidden), micro=micro, pp=plan.pp,
                            loss_fn=self.loss_fn)
        tasks = schedule_tasks(plan.schedule, self.mesh.coords.pp, plan.pp, plan.interleave, micro,
                               plan.vp_group)
        loss = step.run(tasks, micro_in, micro_tgt)
        self.executed = step.executed
        return loss

    def _sync_gradients(self) -> None:
        """Tied embedding: sum over first and last stage; under sp the norms' and row biases'
        partial sums over tp; then average over data parallel (the reduce-scatter of ZeRO)."""
        if "tied" in self.mesh.groups and self.tied:
            _all_reduce_grads(self.tied, self.mesh.groups["tied"], scale=1.0)
        if self.sp_partial:
            _all_reduce_grads(self.sp_partial, self.mesh.groups["tp"], scale=1.0)
        if "dp" in self.mesh.groups and self.zero is None:
            _all_reduce_grads([p for _, p in self.params], self.mesh.groups["dp"],
                              scale=1.0 / self.plan.dp)

    def _global_loss(self, loss: Tensor) -> float:
        if not self.mesh.groups and self.plan.devices == 1:
            return float(loss)
        import torch.distributed as dist

        value = loss.detach().clone() if self.mesh.last_stage else torch.zeros(())
        dist.all_reduce(value)
        return float(value) / (self.plan.dp * self.plan.tp)

    def local_state(self) -> dict[str, Tensor]:
        """This rank's parameters by local name (see `shards` for the sliced ones)."""
        return {n: p.detach().clone() for n, p in self.params}

    def local_grads(self) -> dict[str, Tensor]:
        """This rank's gradients after the last step (after synchronisation); empty under ZeRO,
        whose averaged gradient exists only as this rank's slice (`zero.grad_slice()`)."""
        if self.zero is not None:
            return {}
        return {n: p.grad.detach().clone() for n, p in self.params if p.grad is not None}


FUSED = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)


def fused_optimizer(optimizer: torch.optim.Optimizer, fusion: str) -> torch.optim.Optimizer:
    """`optimizer` rebuilt with `fused=True` (same parameter groups and settings) when `fusion`
    is not "none" and it is one of PyTorch's fused-capable optimizers; else `optimizer`."""
    if fusion == "none" or type(optimizer) not in FUSED:
        return optimizer
    if optimizer.defaults.get("differentiable") or optimizer.state:
        return optimizer
    groups = [{**g, "fused": True, "foreach": None} for g in optimizer.param_groups]
    accepted = inspect.signature(type(optimizer)).parameters
    settings = {k: v for k, v in optimizer.defaults.items() if k in accepted}
    return type(optimizer)(groups, **{**settings, "fused": True, "foreach": None})


def _mesh(program: Program, distributed: bool | None) -> Mesh:
    import torch.distributed as dist

    plan = program.plan
    on = dist.is_available() and dist.is_initialized() if distributed is None else distributed
    if not on:
        if plan.devices != 1:
            raise DojoError(f"plan {plan.text()} needs {plan.devices} ranks; run it with "
                            f"`dojo run --nproc {plan.devices}`, torchrun or dojo.runtime.launch")
        return build_mesh(plan, 0, distributed=False)
    world = dist.get_world_size()
    if world != plan.devices:
        raise DojoError(f"plan {plan.text()} needs dp*tp*pp = {plan.devices} ranks; "
                        f"this world has {world}")
    return build_mesh(plan, dist.get_rank(), distributed=True)


def _all_reduce_grads(params: list[nn.Parameter], group: Any, scale: float) -> None:
    """One flat all-reduce (sum, then `scale`) over the gradients of `params`."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    if scale != 1.0:
        flat.mul_(scale)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset: offset + n].view_as(p).clone()
        offset += n


