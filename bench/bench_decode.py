"""Decode throughput: the dojo.data loader against raw PyAV decoding of the same files.

    .venv/bin/python bench/bench_decode.py [--size 96x64] [--clips 4] [--frames 16]
                                           [--workers 0,1] [--rounds 3] [--window 8] [--dir DIR]
                                           [--probe 96x64,320x192,640x480,1280x960]
    .venv/bin/python bench/bench_decode.py --record src/dojo/data/decode_calibration.toml

Makes a synthetic clip set (or reuses --dir; --size etc. then do not apply), then per round times
- raw: every MP4 decoded start to end with PyAV on one thread, each frame converted to RGB;
- loader: one epoch of `ClipLoader` (windows of --window frames, default one GOP, batch 4),
  which adds seeking, stacking into (B, T, N, 3, H, W) float32 in [0, 1], labels, and worker
  processes.
Prints a markdown table of the best round's frames/s and the ratio to raw (goal >= 0.8),
and `decode_fps_per_core` from `dojo.data.measure_decode_fps` for the host data-path model.
`--probe` also measures `dojo.data.measure_decode_fps_at` (the cached synthetic probe clip) at
each listed size, with the probe's bits per pixel.
`--record FILE` measures instead the rates `dojo train` uses by default (`dojo.data.decodecal`):
the data set's rendered clips at 32x32, 96x64, 320x192 and 640x480, and the probe clip at
96x64 and 1280x960 (best of 3 runs each), and writes them as TOML with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import av
import torch
from av.video.reformatter import VideoReformatter

from dojo.data import ClipLoader, LoaderConfig, SynthConfig, measure_decode_fps, synthesize
from dojo.data.decoderate import PROBE_FRAMES, measure_decode_fps_at, probe_clip
from dojo.data.layout import read_manifest
from dojo.data.video import GOP, video_files

Timing = tuple[int, float, float]  # frames, wall seconds, CPU seconds of this process


def raw_decode(files: list[Path], reuse: bool = True) -> Timing:
    """Decode `files` start to end on one thread to RGB arrays.

    `reuse`: convert through one VideoReformatter (as the loader does); False is the naive
    `frame.to_ndarray(format="rgb24")`, which rebuilds the swscale context every frame.
    """
    start, cpu, frames = time.perf_counter(), time.process_time(), 0
    rgb = VideoReformatter()
    for path in files:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            for frame in container.decode(stream):
                if reuse:
                    rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
                else:
                    frame.to_ndarray(format="rgb24", threads=1)
                frames += 1
    return frames, time.perf_counter() - start, time.process_time() - cpu


def loader_epoch(loader: ClipLoader) -> Timing:
    """One epoch of the loader; frames = B * T * N per batch."""
    start, cpu, frames = time.perf_counter(), time.process_time(), 0
    for batch in loader:
        frames += batch["frames"].shape[0] * batch["frames"].shape[1] * batch["frames"].shape[2]
    return frames, time.perf_counter() - start, time.process_time() - cpu


def run(root: Path, workers: list[int], rounds: int, batch: int,
        window: int = GOP) -> dict[str, list[Timing]]:
    files = video_files(root)
    loaders = {f"loader, {w} workers": ClipLoader(root, LoaderConfig(
        batch_size=batch, window=window, num_workers=w)) for w in workers}
    loaders["loader, 0 workers, uint8 pixels"] = ClipLoader(root, LoaderConfig(
        batch_size=batch, window=window, pixels="uint8"))
    raw_decode(files)  # warm the page cache and the codec
    for loader in loaders.values():
        loader_epoch(loader)  # start persistent workers, open files
    samples: dict[str, list[Timing]] = {}
    for _ in range(rounds):  # interleave so background load hits every path alike
        samples.setdefault("raw PyAV", []).append(raw_decode(files))
        samples.setdefault("raw PyAV, naive to_ndarray", []).append(raw_decode(files, False))
        for name, loader in loaders.items():
            samples.setdefault(name, []).append(loader_epoch(loader))
    return samples


def table(samples: dict[str, list[Timing]], pixels: int) -> list[str]:
    """Best round per path (other load only ever slows a round down); CPU rate only where all
    the work runs in this process."""
    raw = samples["raw PyAV"]
    raw_wall = max(n / w for n, w, _ in raw)
    raw_cpu = max(n / c for n, _, c in raw)
    lines = ["| path | frames/s (wall) | Mpixel/s | vs raw (wall) | frames/CPU-s | vs raw (CPU) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, timings in samples.items():
        wall = max(n / w for n, w, _ in timings)
        in_process = "workers" not in name or name.startswith("loader, 0 workers")
        cpu = max(n / c for n, _, c in timings) if in_process else None
        cpu_cells = f"{cpu:,.0f} | {cpu / raw_cpu:.2f}x" if cpu else "(in workers) | -"
        lines.append(f"| {name} | {wall:,.0f} | {wall * pixels / 1e6:.1f} | "
                     f"{wall / raw_wall:.2f}x | {cpu_cells} |")
    return lines


def probe_table(sizes: list[str]) -> list[str]:
    """`measure_decode_fps_at` per size (frames per CPU-second, best of 3 one-second runs)."""
    lines = ["| size | probe bits/pixel | frames/s per core | Mpixel/s |", "|---|---:|---:|---:|"]
    for size in sizes:
        w, h = (int(x) for x in size.split("x"))
        bpp = probe_clip(w, h).stat().st_size * 8 / (PROBE_FRAMES * w * h)
        fps = max(measure_decode_fps_at(w, h, seconds=1.0) for _ in range(3))
        lines.append(f"| {w}x{h} | {bpp:.3f} | {fps:,.0f} | {fps * w * h / 1e6:.0f} |")
    return lines


RECORD_RENDERED = ("32x32", "96x64", "320x192", "640x480")
RECORD_PROBE = ("96x64", "1280x960")


def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}"


def _rendered_fps(size: str, tmp: Path) -> float:
    """Best of 3 runs of `measure_decode_fps` on a rendered clip set (1 clip, 2 cameras,
    16 frames) at `size`."""
    w, h = (int(x) for x in size.split("x"))
    root = tmp / f"rendered-{size}"
    synthesize(root, SynthConfig(clips=1, cameras=2, frames=16, width=w, height=h))
    return max(measure_decode_fps(root, seconds=1.0) for _ in range(3))


def record(path: Path) -> str:
    """Measure the calibration `dojo train` ships (module docstring) and write it to `path`."""
    import tomllib

    lines = ["# Single-core H.264 decode rates (frames per CPU-second, one decoder thread,",
             "# container open and YUV-to-RGB included), read by dojo.data.decodecal.",
             "# Measured by the command below; best of 3 one-second runs per size.",
             f'machine = "{_machine()}"',
             f'date = "{datetime.datetime.now(datetime.UTC):%Y-%m-%d}"',
             f'software = "PyAV {av.__version__}, libavcodec '
             f'{".".join(map(str, av.library_versions["libavcodec"]))}, '
             f'Python {platform.python_version()}"',
             f'command = "python bench/bench_decode.py --record {path}"', ""]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        for size in RECORD_RENDERED:
            fps = _rendered_fps(size, Path(tmp))
            w, h = size.split("x")
            lines += ["[[rendered]]  # the data set's own clips (dojo data synth)",
                      f"width = {w}", f"height = {h}", f"frames_per_s = {fps:.1f}", ""]
    for size in RECORD_PROBE:
        w, h = (int(x) for x in size.split("x"))
        fps = max(measure_decode_fps_at(w, h, seconds=1.0) for _ in range(3))
        lines += ["[[probe]]  # the synthetic probe clip (dojo.data.decoderate)",
                  f"width = {w}", f"height = {h}", f"frames_per_s = {fps:.1f}", ""]
    text = "\n".join(lines).rstrip() + "\n"
    tomllib.loads(text)  # what we write must read back
    path.write_text(text, encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="96x64")
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--workers", default="0,1")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--window", type=int, default=GOP)
    parser.add_argument("--probe", default="", help="sizes for measure_decode_fps_at, WxH,...")
    parser.add_argument("--dir", help="reuse (or create) this clip set instead of a temp one")
    parser.add_argument("--record", help="measure the shipped decode calibration into FILE")
    args = parser.parse_args(argv)
    if args.record:
        sys.stdout.write(record(Path(args.record)))
        return 0
    torch.set_num_threads(1)
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.dir) if args.dir else Path(tmp) / "clips"
        if not (root / "manifest.json").exists():
            synthesize(root, SynthConfig(clips=args.clips, frames=args.frames, width=width,
                                         height=height, cameras=args.cameras))
        samples = run(root, [int(w) for w in args.workers.split(",")], args.rounds, args.batch,
                      args.window)
        per_core = measure_decode_fps(root, seconds=1.0)
        manifest = read_manifest(root)
    width, height = manifest.width, manifest.height
    lines = [f"decode benchmark: {len(manifest.clips)} clips x {len(manifest.cameras)} cameras x "
             f"{manifest.clips[0].frames} "
             f"frames, {width}x{height}, GOP {GOP}, window {args.window}, batch {args.batch}, "
             f"best of {args.rounds} rounds, torch threads 1", "",
             *table(samples, width * height)]
    lines += ["", f"decode_fps_per_core = {per_core:,.0f} frames/s at {width}x{height} "
              f"({per_core * width * height / 1e6:.1f} Mpixel/s)"]
    if args.probe:
        lines += ["", "measure_decode_fps_at (synthetic probe clip):", "",
                  *probe_table(args.probe.split(","))]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
