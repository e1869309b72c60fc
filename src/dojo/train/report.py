"""The files of a `dojo train` run: report.html, trace.json, metrics.json and bev.png.

metrics.json has exactly the keys `train_loss` (per step), `val_iou`, `baseline_iou`, `steps`,
`simulated` {`system`, `plan`, `step_time_s`, `samples_per_s`, `energy_j`} (the Dojo step of the
large preset, data loading included) and `data_path` {`decode_fps_per_core` (frames/s per core at
the data set's frame size), `decode_fps_large` (at 1280 x 960, what the data path uses),
`decode_rates` ("recorded" or "measured"), `hosts_needed`}, `dataset` {`train`, `val`: dataset
version IDs, `dojo.data.catalog`} and `slices` {name: {`clips`, `iou`, `ci95`, `weight`}}.
Nothing in it is measured on this machine unless `--measure-decode` asks: wall-clock figures
(training time, samples/s) are in the report only, marked as measured.

Bird's-eye pictures put ego forward up and ego left on the left (row i of a grid is x forward,
column j is y left, so the image is the grid flipped on both axes).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dojo.hardware.derived import summarize
from dojo.report import (
    HtmlReport,
    plot_breakdown,
    plot_curves,
    plot_heatmap,
    plot_timeline,
    write_bytes_atomic,
    write_text_atomic,
    write_trace,
)
from dojo.report.html import figure_png
from dojo.units import si

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dojo.train.run import TrainResult


def metrics(result: TrainResult) -> dict[str, Any]:
    """The metrics.json mapping (module docstring): a function of the options and the data
    alone with recorded decode rates (the default), so two runs give the same bytes."""
    sim, r = result.sim, result.sim.dojo.result
    data_fps, large_fps = result.decode
    return {
        "train_loss": [float(x) for x in result.history.train_loss],
        "val_iou": result.val_iou,
        "baseline_iou": result.history.baseline_iou,
        "steps": len(result.history.train_loss),
        "simulated": {"system": sim.dojo.program.system.name,
                      "plan": sim.dojo.program.plan.text(), "step_time_s": r.step_time_s,
                      "samples_per_s": r.samples_per_s, "energy_j": r.energy_j},
        "data_path": {"decode_fps_per_core": data_fps.frames_per_s,
                      "decode_fps_large": large_fps.frames_per_s,
                      "decode_rates": large_fps.source,
                      "hosts_needed": sim.data.hosts_needed},
        "dataset": dict(result.dataset),
        "slices": result.slices,
        "rounds": result.rounds,
    }


def write_outputs(result: TrainResult, out: Path) -> dict[str, Path]:
    """Write the four files into `out` (each atomically); returns them by name."""
    bev = bev_figure(result)
    png = figure_png(bev, dpi=110)
    files = {"bev": write_bytes_atomic(out / "bev.png", png),
             "trace": out / "trace.json",
             "metrics": write_text_atomic(out / "metrics.json",
                                          json.dumps(metrics(result), indent=1) + "\n")}
    write_trace(result.sim.dojo, files["trace"], data=result.sim.data)
    files["report"] = build_report(result, png).write(out / "report.html")
    return files


def bev_figure(result: TrainResult) -> Figure:
    """Held-out samples, one per row: front camera (last frame), prediction, ground truth."""
    from matplotlib.figure import Figure

    rows = max(1, len(result.examples))
    fig = Figure(figsize=(9.0, 2.6 * rows), dpi=100, layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False)
    r = float(result.overrides["range_m"])
    extent = (r, -r, -r, r)  # left edge is +y (left), top edge is +x (forward)
    for k, ex in enumerate(result.examples):
        cam, pred, truth = axes[k]
        cam.imshow(ex.image.clamp(0, 1).numpy())
        cam.set_title("front camera, last frame", fontsize=9)
        for ax, grid, name in ((pred, ex.probability, "predicted P(occupied)"),
                               (truth, ex.truth, "ground truth")):
            ax.imshow(grid.flip(0, 1).numpy(), cmap="magma", vmin=0, vmax=1, extent=extent)
            ax.plot([0], [0], marker="^", color="cyan", markersize=6)  # the ego vehicle
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("y (m, + is left)", fontsize=8)
            ax.set_ylabel("x (m, + is forward)", fontsize=8)
        cam.axis("off")
    return fig


def build_report(result: TrainResult, bev_png: bytes) -> HtmlReport:
    """The HTML report: training, pictures, data, the simulated step, utilisation, GPUs."""
    opts, h = result.options, result.history
    rep = HtmlReport(f"dojo train occupancy: {opts.out}")
    _training(rep, result)
    rep.heading("Held-out predictions")
    rep.image(bev_png, "Bird's-eye view, ego (triangle) at the centre, forward up: the model's "
              "probability of occupancy beside the ground truth, on clips never trained on.")
    _data(rep, result)
    slice_section(rep, {f"round {r['round']}": r["slices"] for r in result.rounds}
                  or {"this run": result.slices})
    if result.rounds:
        _rounds(rep, result.rounds, opts.mine_by)
    _simulated(rep, result)
    _utilisation(rep, result)
    _data_path(rep, result)
    _gpu(rep, result)
    rep.heading("metrics.json")
    shown = metrics(result)
    shown["train_loss"] = f"[{len(h.train_loss)} values]"
    rep.json_block(shown)
    return rep


def _training(rep: HtmlReport, result: TrainResult) -> None:
    opts, h = result.options, result.history
    rate = h.samples / h.train_s if h.train_s else 0.0
    rep.heading("Training on this machine")
    rep.table([("steps", len(h.train_loss)), ("batch", opts.batch_size),
               ("precision policy", opts.precision), ("learning rate", f"{opts.lr:g} peak, "
                f"{opts.warmup} warm-up steps, cosine to a tenth"),
               ("model", ", ".join(f"{k}={v}" for k, v in result.overrides.items())),
               ("training time (measured, wall clock)", si(h.train_s, "s")),
               ("throughput (measured)", f"{rate:.3g} samples/s"),
               ("final loss (mean of last 10)", sum(h.train_loss[-10:]) / max(1, len(
                   h.train_loss[-10:]))),
               ("IoU untrained", h.baseline_iou), ("IoU held-out", result.val_iou)],
              ["", "value"])
    rep.figure(plot_curves({"train loss": h.train_loss}, "step", "BCE loss", logy=True),
               "Training loss per step (binary cross entropy over the BEV grid).")
    steps = [0, *h.iou_steps]
    rep.figure(plot_curves({"held-out IoU": (steps, [h.baseline_iou, *h.iou_values]),
                            "untrained": (steps, [h.baseline_iou] * len(steps))},
                           "step", "IoU"),
               "Occupancy IoU on the held-out clips (probability > 0.5 counts as occupied).")


def _data(rep: HtmlReport, result: TrainResult) -> None:
    rep.heading("Data")
    rep.paragraph(f"{result.train_samples} training windows of {result.options.window} "
                  f"frames; {len(result.skipped)} clips skipped for bad data.")
    if result.skipped:
        rep.table([(s.clip, s.file, s.reason) for s in result.skipped],
                  ["clip", "file", "reason"])


def slice_section(rep: HtmlReport, by_round: dict[str, dict[str, dict[str, Any]]]) -> None:
    """IoU per slice with 95 % bootstrap intervals: a table and bars (one colour a round)."""
    from dojo.train.slices import BOOTSTRAP, slice_figure

    rep.heading("Held-out IoU by slice")
    rep.paragraph(f"Each slice pools the intersections and unions of its held-out clips; the "
                  f"interval is the 2.5-97.5th percentile over {BOOTSTRAP} resamples of its "
                  "clips (seeded). Few clips give wide intervals.")
    rows = []
    for label, slices in by_round.items():
        for name, v in slices.items():
            rows.append((label, name, v["clips"], f"{v['iou']:.3f}",
                         f"{v['ci95'][0]:.3f} - {v['ci95'][1]:.3f}", v["weight"]))
    if not rows:
        rep.paragraph("No slice has a held-out clip.")
        return
    rep.table(rows, ["round", "slice", "clips", "IoU", "95 % interval", "weight"])
    rep.figure(slice_figure(by_round), "Held-out IoU per slice, 95 % bootstrap intervals.")


def _rounds(rep: HtmlReport, rounds: list[dict[str, Any]], mine_by: str = "score") -> None:
    rep.heading("Mining rounds")
    rep.paragraph("Each round mines clips for the previous round's weakest slice from the pool "
                  "and trains a fresh model on the new dataset version; each slice's IoU "
                  "before (previous round) and after (this round) on the same held-out clips. "
                  "The change's interval and p resample the slice's held-out clips, the same "
                  "draw for both models (paired bootstrap): they leave out training noise, "
                  "which another seed shows (bench/bench_mine_gain.py measures both)."
                  + (" This run is the control (--mine-by random): each round's clips were "
                     "drawn at random from the pool, not mined." if mine_by == "random" else ""))
    rows = []
    for prev, r in itertools.pairwise(rounds):
        for name in sorted(r["slices"], key=lambda n: (n != r["mined_for"], n)):
            before, after = prev["slices"].get(name), r["slices"][name]
            change = r.get("vs_previous", {}).get(name)
            rows.append((r["round"], f"{name} (mined for)" if name == r["mined_for"] else name,
                         r["added"], r["train_clips"], after["clips"],
                         _with_ci(before) if before else "-", _with_ci(after),
                         (f"{change['delta']:+.3f} [{change['ci95'][0]:+.3f}, "
                          f"{change['ci95'][1]:+.3f}]") if change else "-",
                         f"{change['p']:.3f}" if change else "-"))
        rows.append((r["round"], "all held-out clips", r["added"], r["train_clips"], "",
                     f"{prev['val_iou']:.3f}", f"{r['val_iou']:.3f}",
                     f"{r['val_iou'] - prev['val_iou']:+.3f}", ""))
    rep.table(rows, ["round", "slice", "clips added", "training clips", "held-out clips",
                     "IoU before [95 %]", "IoU after [95 %]", "change [95 %]", "p"])
    rep.paragraph("Versions: " + ", ".join(f"round {r['round']} {r['train_version']}"
                                           for r in rounds) + ".")


def _with_ci(s: dict[str, Any]) -> str:
    return f"{s['iou']:.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]"


def _simulated(rep: HtmlReport, result: TrainResult) -> None:
    sim = result.sim
    p, r = sim.dojo.program, sim.dojo.result
    rep.heading(f"Simulated on Dojo: occupancy-large on {p.system.title}")
    rep.paragraph("One training step of the realistic configuration (8 cameras, 8 frames of "
                  "1280 x 960, 200 x 200 grid), at the run's precision, data loading included.")
    rep.table([("plan", p.plan.text()), ("devices", f"{p.devices:,} {p.device}s"),
               ("global batch", f"{p.batch:,} samples"),
               ("step time", si(r.step_time_s, "s")),
               ("throughput", si(r.samples_per_s, "samples/s")),
               ("MFU", f"{100 * r.mfu:.1f} %"), ("energy per step", si(r.energy_j, "J")),
               ("energy per epoch", si(sim.energy_per_epoch_j(sim.dojo), "J") +
                f" ({sim.epoch_samples:,} samples, the training set)")], ["", "value"])
    rows = [(k, si(v, "s"), f"{100 * v / r.step_time_s:.1f} %") for k, v in
            r.breakdown_s.items()]
    rep.table(rows, ["component", "time", "share of step"])
    rep.figure(plot_timeline(r), "One step, one device per pipeline stage.")


def _utilisation(rep: HtmlReport, result: TrainResult) -> None:
    u = result.sim.utilisation
    rep.heading("Utilisation")
    rep.paragraph("Per chip: the fraction of the step its pipeline stage computes (forward, "
                  "backward, optimizer). Per link level: bytes one device sends there per step "
                  "over the link's bandwidth x step time, by traffic kind.")
    rep.figure(plot_heatmap(u.tiles, u.tile_labels, u.chip_labels, "compute busy per chip",
                            vmin=0.0, vmax=1.0), "Per-tile, per-chip compute utilisation.")
    rep.figure(plot_heatmap(u.links, u.traffic_labels, u.link_labels, "link utilisation",
                            vmin=0.0, vmax=1.0), "Per-link-level utilisation.")


def _data_path(rep: HtmlReport, result: TrainResult) -> None:
    sim, d = result.sim, result.sim.data
    data_fps, large_fps = result.decode
    rep.heading("Data path: hosts -> DIPs -> tiles")
    rep.paragraph(f"Decode rates per core: {large_fps.origin}.")
    rep.table([(f"decode rate at {data_fps.size[0]} x {data_fps.size[1]} ({data_fps.source})",
                f"{data_fps.frames_per_s:,.0f} frames/s/core"),
               (f"decode rate at {large_fps.size[0]} x {large_fps.size[1]} ({large_fps.source})",
                f"{large_fps.frames_per_s:,.1f} frames/s/core"),
               ("images per sample", sim.images_per_sample),
               ("bytes per sample", si(sim.bytes_per_sample, "B")),
               ("decode per step", si(d.decode_s, "s")),
               ("transfer per step", si(d.transfer_s, "s")),
               ("exposed (not hidden by compute)", si(d.exposed_s, "s")),
               ("hosts needed", d.hosts_needed),
               ("ingest hosts to add", d.ingest_hosts_needed),
               ("data loading is the bottleneck", d.bottleneck)], ["", "value"])


def _gpu(rep: HtmlReport, result: TrainResult) -> None:
    sim = result.sim
    rep.heading("Beside a GPU cluster of the same power")
    rows = []
    for name, s in (("Dojo", sim.dojo), ("Dojo, compute only", sim.dojo_compute),
                    ("GPU", sim.gpu)):
        p, r = s.program, s.result
        rows.append((f"{name}: {p.system.name}", f"{p.devices:,} {p.device}s",
                     si(summarize(p.system).power_watts, "W"), p.plan.precision, p.plan.text(),
                     si(r.step_time_s, "s"), si(r.samples_per_s, "samples/s"),
                     si(r.energy_j, "J"), si(sim.energy_per_epoch_j(s), "J")))
    rep.table(rows, ["system", "devices", "power", "precision", "plan", "step time", "throughput",
                     "energy/step", "energy/epoch"])
    rep.paragraph("The GPU cluster has no DIP data path in the model, so its step excludes "
                  "input loading: compare it with the Dojo compute-only row.")
    dojo_p, gpu_p = sim.dojo.program.plan.precision, sim.gpu.program.plan.precision
    if gpu_p != dojo_p:
        rep.paragraph(f"The GPUs run {gpu_p}: {sim.gpu.program.system.leaf_name} has no "
                      f"{dojo_p} matrix rate, so the GPU step is simulated at {gpu_p} (rates, "
                      "weights, gradients, activations), the precision it would really train at.")
    rep.figure(plot_breakdown({"Dojo": sim.dojo.result, "Dojo compute": sim.dojo_compute.result,
                               "GPU": sim.gpu.result}),
               "Step time breakdown, same global batch.")
