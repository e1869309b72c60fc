"""MosaicML's MPT-1B sequence sweep against the simulator (rows that are not validation cases).

    PYTHONPATH=src .venv/bin/python bench/mosaic_seq_sweep.py

Source: mosaicml/llm-foundry, scripts/train/benchmarking/README.md at commit 061f2c7c, tables
"A100 80GB with 1600 Gbps node-node interconnect (RoCE)" and "H100 80GB BF16": MPT-1B on 8
GPUs, FSDP FULL_SHARD, amp_bf16 DEFAULT, no activation checkpointing, per row the sequence
length, micro-batch, global batch, MFU and the logged parameter count. The measured step is
(6 N s + 12 L d s^2) x batch / (8 x MFU x peak) (LLM Foundry's convention, as the cases').
Each row is predicted with the shipped calibration and the `pytorch-fsdp` stack as the cases
are (`fsdp=1`). Prints a markdown table; docs/validation.md, "PyTorch FSDP's copies", reads the
slopes of time per token against the context from it.
"""

from __future__ import annotations

from dojo.hardware.loader import load_system
from dojo.hardware.stacks import with_stack
from dojo.plan.plan import parse_plan
from dojo.sim.session import simulate_model

PEAK = {"a100-cluster": 312e12, "h100-cluster": 989.5e12}  # Composer's GPU_AVAILABLE_FLOPS
# (system, seq, micro-batch, global batch, MFU %, NumParams), as published
ROWS = [("a100-cluster", 2048, 14, 448, 59.86, 1315950592),
        ("a100-cluster", 4096, 7, 224, 59.0, 1320144896),
        ("a100-cluster", 8192, 3, 96, 56.69, 1328533504),
        ("a100-cluster", 16384, 2, 64, 56.6, 1345310720),
        ("a100-cluster", 32768, 1, 32, 55.52, 1378865152),
        ("h100-cluster", 2048, 14, 112, 41.82, 1315950592),
        ("h100-cluster", 4096, 7, 224, 40.26, 1320144896),
        ("h100-cluster", 8192, 3, 96, 37.73, 1328533504),
        ("h100-cluster", 16384, 2, 64, 35.22, 1345310720),
        ("h100-cluster", 32768, 1, 32, 33.54, 1378865152)]
LAYERS, D_MODEL, GPUS = 24, 2048, 8


def main() -> None:
    print("| system | seq | measured s | predicted s | error | us per token, measured / sim |")
    print("|---|---|---|---|---|---|")
    for system, seq, mb, batch, mfu, params in ROWS:
        flops = (6 * params * seq + 12 * LAYERS * D_MODEL * seq * seq) * batch
        measured = flops / (GPUS * mfu / 100 * PEAK[system])
        spec = with_stack(load_system(system, devices=GPUS), "pytorch-fsdp", strict=False)
        plan = parse_plan(f"dp={GPUS},mb={mb},zero=3,overlap=on,fusion=none,fsdp=1")
        model = {"layers": LAYERS, "hidden": D_MODEL, "heads": 16, "seq": seq, "vocab": 50368,
                 "ffn": 4 * D_MODEL, "attention": "flash", "dropout": 0.0}
        predicted = simulate_model("gpt", model, spec, plan, batch).result.step_time_s
        tokens = batch * seq / GPUS   # per GPU and step
        print(f"| {system} | {seq} | {measured:.3f} | {predicted:.3f} | "
              f"{predicted / measured - 1:+.1%} | {measured / tokens * 1e6:.2f} / "
              f"{predicted / tokens * 1e6:.2f} |")


if __name__ == "__main__":
    main()
