"""Malformed system files: one-line errors naming file, field and value; exit 2; no traceback."""

from __future__ import annotations

import copy
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dojo.cli.main import main


def _write(tmp: Path, data: dict[str, Any], extends: str | None = None) -> Path:
    path = tmp / "mine.toml"
    path.write_text(_dump(data, extends), encoding="utf-8")
    return path


def _dump(data: dict[str, Any], extends: str | None) -> str:
    """A tiny TOML writer for the shapes system files use (the stdlib reads but cannot write)."""
    out = [f'extends = "{extends}"'] if extends else []
    tables: list[tuple[str, dict[str, Any]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            out.append(f"{key} = {_value(value)}")
    for name, table in tables:
        out.append(f"[{name}]")
        for key, value in table.items():
            out.append(f"{key} = {_value(value)}")
    return "\n".join(out) + "\n"


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, float) and v != v:
        return "nan"
    if isinstance(v, float) and v in (float("inf"), float("-inf")):
        return "inf" if v > 0 else "-inf"
    return repr(v)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["info", *argv])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(("override", "field", "value"), [
    ({"chip": {"link": {"bytes_per_s": -5.0}}}, "chip.link.bytes_per_s", "-5.0"),
    ({"chip": {"link": {"bytes_per_s": 0}}}, "chip.link.bytes_per_s", "0"),
    ({"node": {"clock_hz": "fast"}}, "node.clock_hz", "'fast'"),
    ({"tile": {"count": 25.5}}, "tile.count", "25.5"),
    ({"tile": {"colour": "red"}}, "tile.colour", "'red'"),
    ({"tile": {"grid": [2, 2]}}, "tile.grid", "[2, 2]"),
    ({"dip": {"count": 21}}, "dip.count", "21"),
    ({"host": {"count": 5}}, "host.count", "5"),
    ({"host": {"dips": 3}}, "host.dips", "3"),
    ({"tray": {"topology": "torus"}}, "tray.topology", "'torus'"),
    ({"family": "tpu"}, "family", "'tpu'"),
])
def test_one_line_error_names_file_field_value(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               override: dict[str, Any], field: str,
                                               value: str) -> None:
    path = _write(tmp_path, override, extends="tray")
    code, err = _run(capsys, str(path))
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err and f"'{field}'" in err and value in err


def test_missing_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = copy.deepcopy(_FULL)
    del data["node"]["memory"]["sram"]["read_bytes_per_s"]
    path = tmp_path / "x.toml"
    path.write_text(_dump_nested(data), encoding="utf-8")
    code, err = _run(capsys, str(path))
    assert code == 2 and "'node.memory.sram.read_bytes_per_s' is missing" in err


def test_unknown_system_lists_known(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(capsys, "v2")
    assert code == 2 and "unknown system 'v2'" in err and "exapod" in err and "v1" in err


def test_not_toml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("name = [unclosed\n", encoding="utf-8")
    code, err = _run(capsys, str(path))
    assert code == 2 and "broken.toml" in err and "TOML" in err


def _dump_nested(data: dict[str, Any], prefix: str = "") -> str:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    lines = [f"[{prefix}]"] if prefix and scalars else []
    lines += [f"{k} = {_value(v)}" for k, v in scalars.items()]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(_dump_nested(v, f"{prefix}.{k}" if prefix else k))
    return "\n".join(lines)


def _paths(data: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    return out


_FULL = tomllib.loads((resources.files("dojo.hardware") / "systems" / "d1.toml")
                      .read_text(encoding="utf-8"))
_JUNK = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                  st.text(max_size=5), st.booleans(), st.lists(st.integers(-3, 30), max_size=3),
                  st.builds(dict))  # a fresh {} per draw: st.just({}) would share one


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_files_never_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       data: st.DataObject) -> None:
    doc = copy.deepcopy(_FULL)
    paths = _paths(doc)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None  # type: ignore[assignment]
        if not isinstance(parent, dict):
            continue
        action = data.draw(st.sampled_from(["delete", "replace", "add"]))
        if action == "delete":
            parent.pop(path[-1], None)
        elif action == "replace":
            parent[path[-1]] = data.draw(_JUNK)
        else:
            key = data.draw(st.sampled_from(["extra", "count", "grid", "link"]))
            parent[key] = data.draw(_JUNK)
    file = tmp_path / "mutant.toml"
    file.write_text(_dump_nested(doc), encoding="utf-8")
    code = main(["info", str(file)])
    err = capsys.readouterr().err
    assert code in (0, 2)
    if code == 2:
        assert err.startswith("dojo: error: ") and err.count("\n") == 1


@pytest.mark.parametrize(("argv", "says"), [
    (["a100-cluster", "--devices", "-8"], "'devices' = -8: expected a positive integer"),
    (["a100-cluster", "--devices", "0"], "'devices' = 0: expected a positive integer"),
    (["a100-cluster:16", "--devices", "32"], "or 16 as in 'a100-cluster:16'"),
    (["h100-cluster:2000000000000"], "2,000,000,000,000 gpus"),
])
def test_device_counts_are_never_silently_changed(capsys: pytest.CaptureFixture[str],
                                                  argv: list[str], says: str) -> None:
    code, err = _run(capsys, *argv)
    assert code == 2 and err.count("\n") == 1 and says in err


def test_device_count_given_twice_alike_is_fine(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "a100-cluster:16", "--devices", "16", "--json"]) == 0
    assert '"gpus": 16' in capsys.readouterr().out


@pytest.mark.parametrize(("override", "says"), [
    # 354 nodes x 25 chips x 10^12 tiles: refused from the counts, nothing built per unit
    ({"tray": {"count": 10**12, "grid": [10**6, 10**6]}}, "expected at most 2**40"),
    # 600 tiles x 25 chips in one tray: the DIPs of one tray would serve 15,000 chips
    ({"tray": {"count": 600, "grid": [20, 30]}}, "15,000 chips per tray"),
])
def test_huge_counts_are_refused_quickly(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         override: dict[str, Any], says: str) -> None:
    import time

    path = _write(tmp_path, override, extends="v1")
    start = time.monotonic()
    code = main(["simulate", "mlp", "--system", str(path), "--batch", "8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and says in err and str(path) in err
    assert time.monotonic() - start < 5


def test_size_limits_admit_the_shipped_systems() -> None:
    from dojo.hardware import load_system
    from dojo.hardware.loader import MAX_CHIPS_PER_DIP_UNIT, MAX_LEAVES, shipped_systems

    for name in shipped_systems():
        load_system(name)
    # an ExaPOD is 10 x 2 x 6 x 25 x 354 nodes; a V1 tray's DIPs serve 6 x 25 chips
    assert MAX_LEAVES >= 1000 * 10 * 2 * 6 * 25 * 354 and MAX_CHIPS_PER_DIP_UNIT >= 20 * 6 * 25
    load_system("h100-cluster", devices=100_000)


def test_empty_name_and_folders_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adir").mkdir()
    (tmp_path / "v1").mkdir()  # a folder that happens to share a shipped name does not shadow it
    code, err = _run(capsys, "")
    assert code == 2 and "expected a shipped name (a100-cluster" in err
    code, err = _run(capsys, "adir")
    assert code == 2 and "adir: is a folder" in err
    assert main(["info", "v1", "--json"]) == 0
