"""Load a system description from a shipped name or a user's TOML file.

`load_system("v1")`, `load_system("h100-cluster", devices=64)`, `load_system("h100-cluster:64")`
and `load_system("path/to/mine.toml")` all return a validated `SystemSpec`. A file may say
`extends = "v1"` (a shipped name or a path relative to it) and override any field; tables merge
key by key, everything else replaces. Every problem is a `ConfigError` or `DojoError` that names
the file, the field and the value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from dojo.config import one_line_name, parse, read_toml_file, whole_number
from dojo.errors import MISSING, ConfigError, DojoError, UnknownNameError
from dojo.hardware.calibration import calibration_names, calibration_with
from dojo.hardware.spec import (
    FAMILIES,
    SIDES,
    DipSpec,
    HostSpec,
    LeafSpec,
    Level,
    LevelSpec,
    SystemSpec,
)

_TOP_KEYS = ("name", "title", "family", "source", "hierarchy", "dip", "host")

# Size limits of a system (docs/architecture.md, Hardware). Figures are closed-form in the
# counts, but two things are not: the D1 data path routes every chip of one DIP placement unit
# to its nearest DIP (a V1 tray: 150 chips; 4,096 keeps that under about a second), and counts
# beyond 2**40 leaves (a million ExaPODs) describe no machine and lose exactness in float sums.
MAX_LEAVES = 2**40
MAX_CHIPS_PER_DIP_UNIT = 4096


def shipped_systems() -> list[str]:
    """Names of the systems that ship with dojo, in a stable order."""
    folder = resources.files("dojo.hardware") / "systems"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir()
                  if p.name.endswith(".toml"))


def load_system(name_or_path: str, devices: int | None = None) -> SystemSpec:
    """Load, merge, validate. `NAME:N` is shorthand for `devices=N` (GPU clusters only)."""
    text = name_or_path
    if devices is not None and (isinstance(devices, bool) or devices < 1):
        raise ConfigError("--devices", "devices", devices, "a positive integer")
    if ":" in text and not Path(text).exists():
        text, _, count = text.rpartition(":")
        if (whole_number(count) or 0) < 1:
            raise ConfigError(name_or_path, "devices", count, "a positive integer after ':'")
        if devices is not None and devices != int(count):
            raise ConfigError("--devices", "devices", devices,
                              f"no value, or {count} as in '{name_or_path}' (give the count once)")
        devices = int(count)
    data, source = _read_merged(text, seen=())
    spec = _build(data, source)
    if devices is not None:
        spec = scale_devices(spec, devices, source)
        check_size(spec, source)
    return spec


def system_data(name_or_path: str) -> tuple[dict[str, Any], str]:
    """The raw tables of a system file, `extends` merged in, and its source name (unchecked:
    `load_system` checks them). A tool that writes a derived system file starts from these."""
    return _read_merged(name_or_path, seen=())


def _locate(name_or_path: str, base: Path | None) -> tuple[Path, str]:
    candidate = Path(name_or_path)
    if base is not None and not candidate.is_absolute():
        candidate = base / candidate
    if not name_or_path.strip():
        raise DojoError(f"system '{name_or_path}': expected a shipped name "
                        f"({', '.join(shipped_systems())}) or a path to a .toml file")
    if candidate.is_dir() and name_or_path not in shipped_systems():
        raise DojoError(f"{name_or_path}: is a folder: expected a system .toml file")
    if candidate.exists() and not candidate.is_file() and not candidate.is_dir():
        raise DojoError(f"{name_or_path}: is a device or special file: expected a system "
                        ".toml file")
    if name_or_path.endswith(".toml") or candidate.is_file():
        if not candidate.is_file():
            raise DojoError(f"{name_or_path}: no such system file")
        return candidate, str(name_or_path)
    if name_or_path not in shipped_systems():
        raise UnknownNameError("system", name_or_path, shipped_systems())
    shipped = resources.files("dojo.hardware") / "systems" / f"{name_or_path}.toml"
    return Path(str(shipped)), f"systems/{name_or_path}.toml"


def system_files(name_or_path: str) -> list[str]:
    """The user's files a system is read from: its own .toml (a `:N` suffix dropped) and each
    local file its `extends` chain names, resolved; shipped systems are left out. A command
    that writes files refuses to write over any of them."""
    text = name_or_path
    if ":" in text and not Path(text).exists():
        text = text.rpartition(":")[0]
    files: list[str] = []
    _read_merged(text, seen=(), files=files)
    shipped = str(Path(str(resources.files("dojo.hardware") / "systems")).resolve())
    return [f for f in files if Path(f).parent != Path(shipped)]


def _read_merged(name_or_path: str, seen: tuple[str, ...], base: Path | None = None,
                 files: list[str] | None = None) -> tuple[dict[str, Any], str]:
    """The merged tables of a system and its source name; `files` (when given) collects the
    resolved path of each file read, the system's own first."""
    path, source = _locate(name_or_path, base)
    key = str(path.resolve())
    if files is not None:
        files.append(key)
    if key in seen:
        raise DojoError(f"{source}: 'extends' forms a cycle")
    data = read_toml_file(path, source)
    parent = data.pop("extends", None)
    if parent is None:
        return data, source
    if not isinstance(parent, str):
        raise ConfigError(source, "extends", parent, "a system name or a path to a .toml file")
    base_data, _ = _read_merged(parent, (*seen, key), base=path.parent, files=files)
    return _merge(base_data, data), source


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _build(data: dict[str, Any], source: str) -> SystemSpec:
    hierarchy = data.get("hierarchy")
    if (not isinstance(hierarchy, list) or len(hierarchy) < 2
            or not all(isinstance(h, str) and h for h in hierarchy)
            or len(set(hierarchy)) != len(hierarchy)):
        raise ConfigError(source, "hierarchy", hierarchy,
                          "a list of at least 2 distinct level names, leaf first")
    for key in data:
        if key not in _TOP_KEYS and key not in hierarchy:
            known = ", ".join([*_TOP_KEYS, *hierarchy])
            raise ConfigError(source, key, data[key], f"one of the keys {known}")
    for key in ("name", "title", "family", "source", *hierarchy):
        if key not in data:
            raise ConfigError(source, key, MISSING, "a value")
    for key in ("name", "title", "source"):
        if not one_line_name(data[key]):  # printed in tables, reports and error lines
            raise ConfigError(source, key, data[key], "a non-empty string of printable "
                              "characters on one line")
    if data["family"] not in FAMILIES:
        raise ConfigError(source, "family", data["family"], f"one of {', '.join(FAMILIES)}")
    leaf = parse(LeafSpec, data[hierarchy[0]], source, hierarchy[0])
    levels = tuple(Level(name=n, spec=parse(LevelSpec, data[n], source, n)) for n in hierarchy[1:])
    dip = parse(DipSpec, data["dip"], source, "dip") if "dip" in data else None
    host = parse(HostSpec, data["host"], source, "host") if "host" in data else None
    spec = SystemSpec(name=data["name"], title=data["title"], family=data["family"],
                      source=data["source"], path=source, leaf_name=hierarchy[0], leaf=leaf,
                      levels=levels, dip=dip, host=host)
    _check_levels(spec, source)
    _check_cost_model(spec.leaf, hierarchy[0], source)
    _check_attachments(spec, source)
    check_size(spec, source)
    return spec


def check_size(spec: SystemSpec, source: str) -> None:
    """DojoError when `spec` passes `MAX_LEAVES` leaves or `MAX_CHIPS_PER_DIP_UNIT` chips in
    one DIP placement unit (see the limits' comment)."""
    leaves = units_of(spec, spec.leaf_name)
    if leaves > MAX_LEAVES:
        product = " x ".join(f"{lv.spec.count:,}" for lv in spec.levels)
        raise DojoError(f"{source}: {leaves:,} {spec.leaf_name}s (counts {product}): expected "
                        f"at most 2**40 = {MAX_LEAVES:,} in the whole system")
    if spec.dip is None or spec.dip.placement.level not in spec.level_names:
        return
    where = spec.dip.placement.level
    chip = spec.levels[0].name
    chips = units_of(spec, chip) // max(1, units_of(spec, where))
    if chips > MAX_CHIPS_PER_DIP_UNIT:
        raise DojoError(f"{source}: {chips:,} {chip}s per {where} (dip.placement.level): "
                        f"expected at most {MAX_CHIPS_PER_DIP_UNIT:,}, since each is routed to "
                        f"its nearest DIP of the {where}")


def _check_levels(spec: SystemSpec, source: str) -> None:
    for lv in spec.levels:
        s = lv.spec
        if s.topology == "mesh2d":
            if s.grid is None:
                raise ConfigError(source, f"{lv.name}.grid", None,
                                  "[rows, cols] for a mesh2d level")
            rows, cols = s.grid
            # A row or column with no unit is no part of the mesh; left in, a grid of
            # 10^8 x 10^8 for 25 chips made the D1 paths walk 10^16 places.
            if rows < 1 or cols < 1 or rows * cols < s.count or \
                    (rows - 1) * cols >= s.count or rows * (cols - 1) >= s.count:
                raise ConfigError(source, f"{lv.name}.grid", list(s.grid),
                                  f"rows x cols >= count = {s.count} with no row or column "
                                  "empty: (rows - 1) x cols < count and rows x (cols - 1) < "
                                  "count (rows, cols >= 1)")
        if s.edge is not None and s.edges < 1:
            raise ConfigError(source, f"{lv.name}.edges", s.edges, "at least 1 when 'edge' is set")
        if not spec.leaf.memory:
            raise ConfigError(source, f"{spec.leaf_name}.memory", {}, "at least one memory pool")
    leaf = spec.leaf
    if leaf.power_watts and leaf.idle_watts > leaf.power_watts:  # 0: power not given
        raise ConfigError(source, f"{spec.leaf_name}.idle_watts", leaf.idle_watts,
                          f"at most power_watts = {leaf.power_watts:g} W (idle draws no more "
                          "than busy)")
    for name, pool in leaf.memory.items():  # a reserve past the pool left no memory, or less
        if pool.reserved_bytes >= pool.bytes:
            raise ConfigError(source, f"{spec.leaf_name}.memory.{name}.reserved_bytes",
                              pool.reserved_bytes, f"less than bytes = {pool.bytes:g} (the "
                              "reserve is held out of the pool)")


def _check_cost_model(leaf: LeafSpec, leaf_name: str, source: str) -> None:
    """ConfigError unless the leaf names a shipped calibration and its overrides
    (`[LEAF.calibration]`, then each `[LEAF.stacks.NAME]` over them) are fields of it within
    their ranges: checked here so that every command refuses the file, not only those that
    simulate it."""
    names = calibration_names()
    if leaf.cost_model not in names:
        raise ConfigError(source, f"{leaf_name}.cost_model", leaf.cost_model if
                          leaf.cost_model else MISSING,
                          f"the name of a simulator calibration, one of {', '.join(names)}")
    calibration_with(leaf.cost_model, leaf.calibration, source, f"{leaf_name}.calibration")
    for stack, overrides in leaf.stacks.items():
        if not one_line_name(stack):  # named by --stack, in validation cases and in reports
            raise ConfigError(source, f"{leaf_name}.stacks", stack, "stack names that are "
                              "non-empty strings of printable characters on one line")
        calibration_with(leaf.cost_model, {**leaf.calibration, **overrides}, source,
                         f"{leaf_name}.stacks.{stack}")


def _check_attachments(spec: SystemSpec, source: str) -> None:
    dip, host = spec.dip, spec.host
    if (dip is None) != (host is None):
        raise ConfigError(source, "host" if dip else "dip", MISSING,
                          "'dip' and 'host' tables together (DIPs hang off hosts)")
    if dip is None or host is None:
        return
    names = [lv.name for lv in spec.levels]
    where = dip.placement.level
    if where not in names or names.index(where) == 0:
        raise ConfigError(source, "dip.placement.level", where,
                          f"a level above the first one, one of {', '.join(names[1:])}")
    inner = spec.levels[names.index(where)].spec
    rows, cols = inner.grid or (1, inner.count)
    for i, (r, c, side) in enumerate(dip.placement.edges):
        if not (0 <= r < rows and 0 <= c < cols) or side not in SIDES:
            raise ConfigError(source, f"dip.placement.edges[{i}]", [r, c, side],
                              f"[row < {rows}, col < {cols}, side in {'/'.join(SIDES)}]")
    derived = dip_count(spec)
    if dip.count is not None and dip.count != derived:
        edges = len(dip.placement.edges)
        raise ConfigError(source, "dip.count", dip.count,
                          f"{derived} = {dip.per_edge} per edge x {edges} edges"
                          f" x {derived // max(1, dip.per_edge * edges)} {where}s")
    if derived % host.dips:
        raise ConfigError(source, "host.dips", host.dips, f"a divisor of the {derived} DIPs")
    if host.count is not None and host.count != derived // host.dips:
        raise ConfigError(source, "host.count", host.count,
                          f"{derived // host.dips} = {derived} DIPs / {host.dips} DIPs per host")


def units_of(spec: SystemSpec, level_name: str) -> int:
    """How many units of `level_name` the whole system holds."""
    names = spec.level_names
    if level_name not in names:
        return 0
    total = 1
    for lv in reversed(spec.levels):
        if lv.name == level_name:
            return total
        total *= lv.spec.count
    return total  # the leaf


def dip_count(spec: SystemSpec) -> int:
    """DIPs in the system: per edge x placed edges x units of the placement level."""
    if spec.dip is None:
        return 0
    per_unit = spec.dip.per_edge * len(spec.dip.placement.edges)
    return per_unit * units_of(spec, spec.dip.placement.level)


def host_count(spec: SystemSpec) -> int:
    if spec.host is None:
        return 0
    return dip_count(spec) // spec.host.dips


def scale_devices(spec: SystemSpec, devices: int, source: str) -> SystemSpec:
    """Resize a GPU cluster to `devices` leaves by changing the counts from the top down.

    `devices` must be a multiple of the leaves in one child of the top level, or fit inside one.
    """
    if spec.family != "gpu":
        raise ConfigError(source, "devices", devices,
                          f"no device count: {spec.name} has a fixed composition "
                          "(--devices sizes GPU clusters only)")
    levels = list(spec.levels)
    for i in range(len(levels) - 1, -1, -1):
        below = 1
        for lv in levels[:i]:
            below *= lv.spec.count
        if devices >= below:
            if devices % below:
                unit = levels[i - 1].name if i else spec.leaf_name
                raise ConfigError(source, "devices", devices,
                                  f"a multiple of {below} {spec.leaf_name}s per {unit}, "
                                  f"or at most {below}")
            levels[i] = _resized(levels[i], devices // below, source)
            break
        levels[i] = _resized(levels[i], 1, source)
    return replace(spec, levels=tuple(levels))


def _resized(level: Level, count: int, source: str) -> Level:
    if level.spec.topology == "mesh2d":
        raise ConfigError(source, f"{level.name}.topology", "mesh2d",
                          "a switch or fat_tree level to resize with --devices")
    return replace(level, spec=replace(level.spec, count=count, grid=None))
