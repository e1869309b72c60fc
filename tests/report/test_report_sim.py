"""simulation_report: one call gives a complete, well-formed report of a simulated step."""

from __future__ import annotations

import json
import re
from html import unescape
from pathlib import Path
from typing import Any

from report_checks import decode, parse

from dojo.report import simulation_report
from dojo.sim.session import Simulated
from dojo.units import si


def _rows(text: str) -> dict[str, str]:
    """First cell -> second cell of every two-or-more-column table row."""
    out: dict[str, str] = {}
    for row in re.findall(r"<tr>(.*?)</tr>", text, flags=re.S):
        cells = [unescape(re.sub(r"<[^>]+>", "", c))
                 for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, flags=re.S)]
        if len(cells) >= 2:
            out.setdefault(cells[0], cells[1])
    return out


def test_report_has_the_sections_figures_and_numbers(interleaved: Simulated,
                                                     tmp_path: Path) -> None:
    report = simulation_report(interleaved)
    path = report.write(tmp_path / "sim.html")
    text = path.read_text()
    c = parse(text)
    headings = re.findall(r"<h2>(.*?)</h2>", text)
    assert headings == ["Headline", "Where the step time goes", "Memory per device", "Timeline",
                        "Plan", "System", "Result (JSON)"]
    assert c.counts["figure"] == 2 == report.figures        # breakdown chart and timeline
    for src in c.images:
        assert decode(src).size[0] > 300
    r, m = interleaved.result, interleaved.result.memory
    rows = _rows(text)
    assert rows["step time"] == si(r.step_time_s, "s")
    assert rows["MFU"] == f"{100 * r.mfu:.1f} %"
    # Memory rows against their own definition: the four parts add to the total, and the
    # "fits" verdict is total <= capacity.
    parts = m.params + m.grads + m.optimizer_state + m.activations
    assert rows["total"] == si(parts, "B")
    assert rows["fits in memory"].startswith("yes" if parts <= m.capacity else "no")
    # The breakdown table lists every component; shares of the step add to 100 %.
    shares = [float(v.split()[0]) for k, v in re.findall(
        r"<tr><td>(\w+)</td><td>[^<]*</td><td>([\d.]+ %)</td></tr>", text)]
    assert len(shares) == len(r.breakdown_s) and abs(sum(shares) - 100) < 0.5
    assert rows["gpus"] == "8" and rows["pp"] == "2" and rows["interleave"] == "2"
    blob = re.search(r'<code class="json">(.*?)</code>', text, flags=re.S)
    assert blob and json.loads(unescape(blob.group(1)))["fits"] == m.fits


def test_device_memory_is_named_by_its_pool(interleaved: Simulated) -> None:
    from types import SimpleNamespace

    from dojo.hardware import load_system
    from dojo.report.simreport import device_memory_label

    rows = _rows(simulation_report(interleaved).html())
    # An H100's 80 GB are HBM stacks beside the die: the report must not call them on chip.
    assert "on chip" not in rows and rows["HBM"] == si(interleaved.result.memory.onchip, "B")
    dojo: Any = SimpleNamespace(program=SimpleNamespace(system=load_system("v1")))
    assert device_memory_label(dojo) == "SRAM (on chip)"


def test_long_titles_wrap_instead_of_overflowing(interleaved: Simulated) -> None:
    text = simulation_report(interleaved).html()
    title = re.search(r"<h1>(.*?)</h1>", text)
    assert title and len(title.group(1)) > 60 and " " not in title.group(1).split("plan ")[-1]
    # the plan text has no spaces to break at: the style must let the heading break anywhere
    style = re.search(r"<style>(.*?)</style>", text, flags=re.S)
    assert style and re.search(r"h1[^{]*\{[^}]*overflow-wrap:\s*anywhere", style.group(1))
