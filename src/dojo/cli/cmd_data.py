"""`dojo data`: make synthetic driving clips, check a clip set, measure decode speed, and
catalog, query and mine clips.

    dojo data synth --out DIR --clips N [--cameras 6] [--frames 8] [--size 96x64] [--seed 0]
                    [--grid 32] [--range 16] [--fps 10] [--force] [--catalog CAT] [--split S]
                    [--scenario NAME] [--weather NAME] [--time-of-day NAME]
    dojo data check DIR [--policy error|skip] [--verify]
    dojo data fps PATH [--seconds 1]
    dojo data index DIR [--catalog CAT] [--split S]
    dojo data query "SQL" [--catalog CAT] [--slices FILE] [--format table|json|csv]
    dojo data mine RUN --slice NAME --budget N [--slices FILE] [--pool SPLIT] [--by random]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dojo.cli.common import print_json
from dojo.config import NUMBER_FORM, ascii_float, ascii_int
from dojo.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("data", help="synthetic driving clips and the decode path")
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    synth = sub.add_parser("synth", help="write deterministic synthetic multi-camera clips")
    synth.add_argument("--out", required=True, help="folder to create (must be new or empty)")
    synth.add_argument("--clips", required=True, help="number of clips")
    synth.add_argument("--cameras", default="6", help="cameras per clip, 1..6 (default 6)")
    synth.add_argument("--frames", default="8", help="frames per clip (default 8)")
    synth.add_argument("--size", default="96x64", help="WxH pixels, both even (default 96x64)")
    synth.add_argument("--seed", default="0", help="random seed (default 0)")
    synth.add_argument("--grid", default="32", help="BEV grid cells per side (default 32)")
    synth.add_argument("--range", default="16", help="BEV half-extent R in metres (default 16)")
    synth.add_argument("--fps", default="10", help="frames per second (default 10)")
    synth.add_argument("--force", action="store_true", help="replace an existing folder")
    synth.add_argument("--catalog", default="", help="catalog to index the set into "
                       "(default OUT/catalog)")
    synth.add_argument("--split", default="", help="split of the clips (default OUT's name)")
    synth.add_argument("--scenario", default="", help="force every clip's scenario (default: "
                       "the mix of docs/data.md)")
    synth.add_argument("--weather", default="", help="force the weather (clear, rain, fog)")
    synth.add_argument("--time-of-day", default="", help="force the time (day, dusk, night)")
    synth.set_defaults(run=_synth)

    from dojo.cli.cmd_catalog import add_catalog_parsers

    add_catalog_parsers(sub)

    check = sub.add_parser("check", help="validate a clip set and list clips that would be skipped")
    check.add_argument("root", help="clip set folder (with manifest.json)")
    check.add_argument("--policy", default="skip", help="error: stop at the first bad clip; "
                       "skip: list every bad clip (default)")
    check.add_argument("--verify", action="store_true", help="decode every frame (slow)")
    check.set_defaults(run=_check)

    fps = sub.add_parser("fps", help="measure single-core decode rate (frames/s)")
    fps.add_argument("path", help="an .mp4 file or a folder of them")
    fps.add_argument("--seconds", default="1", help="how long to measure (default 1)")
    fps.set_defaults(run=_fps)


def _number(text: str, flag: str, kind: type = int) -> Any:
    value = ascii_int(text) if kind is int else ascii_float(text)
    if value is None:
        raise ConfigError(flag, flag.lstrip("-"), text,
                          f"{'an integer' if kind is int else 'a number'} in {NUMBER_FORM}")
    return value


def _size(text: str) -> tuple[int, int]:
    wide, _, high = text.lower().partition("x")
    w, h = ascii_int(wide), ascii_int(high)
    if w is None or h is None:
        raise ConfigError("--size", "size", text, f"WxH in pixels, e.g. 96x64, in {NUMBER_FORM}")
    return w, h


def _synth(args: argparse.Namespace) -> int:
    from dojo.config import parse
    from dojo.data.synth import SynthConfig, synthesize

    if not args.out.strip():  # ' ' made a clip set in a folder named by a blank
        raise ConfigError("--out", "out", args.out, "a folder path for the clip set, not blank")
    width, height = _size(args.size)
    mapping = {
        "clips": _number(args.clips, "--clips"), "cameras": _number(args.cameras, "--cameras"),
        "frames": _number(args.frames, "--frames"), "width": width, "height": height,
        "seed": _number(args.seed, "--seed"), "grid": _number(args.grid, "--grid"),
        "range_m": _number(args.range, "--range", float), "fps": _number(args.fps, "--fps", float),
        "scenario": args.scenario, "weather": args.weather, "time_of_day": args.time_of_day,
    }
    cfg = parse(SynthConfig, mapping, "dojo data synth")
    from dojo.cli.cmd_catalog import check_split

    check_split(args.split)
    if args.catalog:  # refused before any clip is written: no clip set left without its catalog
        from dojo.cli.cmd_catalog import check_catalog_folder

        check_catalog_folder(args.catalog)

    def progress(done: int, total: int) -> None:
        print(f"dojo data synth: {done}/{total} clips", file=sys.stderr, flush=True)

    def views(clip: int, frame: int, camera: int) -> None:  # large clips: each view, too
        print(f"dojo data synth: clip {clip + 1}/{cfg.clips}: frame {frame + 1}/{cfg.frames}, "
              f"camera {camera + 1}/{cfg.cameras}", file=sys.stderr, flush=True)

    manifest = synthesize(args.out, cfg, progress=progress, force=args.force,
                          catalog=args.catalog or None, split=args.split, view_progress=views)
    print_json({"manifest": str(manifest), "clips": cfg.clips, "cameras": cfg.cameras,
                "frames": cfg.frames, "size": [cfg.width, cfg.height], "fps": cfg.fps,
                "gop": cfg.gop, "grid": cfg.grid, "range_m": cfg.range_m, "seed": cfg.seed,
                "catalog": args.catalog or str(manifest.parent / "catalog")})
    return 0


def _check(args: argparse.Namespace) -> int:
    import warnings

    from dojo.data.layout import SkippedClipWarning, open_clips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedClipWarning)  # listed in the output instead
        clipset = open_clips(args.root, args.policy, args.verify)
    m = clipset.manifest
    print_json({
        "root": str(clipset.root), "clips": len(m.clips), "usable": len(clipset.clips),
        "cameras": list(m.cameras), "size": [m.width, m.height], "fps": m.fps,
        "grid": {"size": m.grid.size, "range_m": m.grid.range_m},
        "skipped": [{"clip": s.clip, "file": s.file, "reason": s.reason}
                    for s in clipset.skipped],
    })
    return 1 if clipset.skipped else 0


def _fps(args: argparse.Namespace) -> int:
    from dojo.data.video import measure_decode_fps

    if not args.path.strip():  # "" is the current folder to pathlib: every clip under it
        raise ConfigError("PATH", "path", args.path, "an .mp4 file or a folder of them")
    seconds = _number(args.seconds, "--seconds", float)
    if not 0 < seconds <= 3600:  # inf never ends; the rate settles within seconds
        raise ConfigError("--seconds", "seconds", seconds, "a number of seconds > 0, at most "
                          "3600")
    print_json({"path": args.path, "decode_fps_per_core": round(measure_decode_fps(
        args.path, seconds), 1)})
    return 0
