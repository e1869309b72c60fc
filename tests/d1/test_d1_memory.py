"""SRAM planning: SRAM first, DIP HBM next, an out-of-memory report per chip in bytes."""

from __future__ import annotations

import pytest

from dojo.compiler.d1 import SramOutOfMemory, plan_sram, stream_share
from dojo.errors import DojoError
from dojo.hardware import load_system

CHIP_SRAM = 354 * 1.25e6  # 442.5 MB
V1_HBM_PER_CHIP = 20 * 32e9 / 150  # 20 DIPs x 32 GB over 150 chips
V1_STREAM_PER_CHIP = 20 * 800e9 / 150  # HBM 800 GB/s < TTP 900 GB/s per DIP


def test_everything_fits_in_sram() -> None:
    plan = plan_sram(1e8, 1e8, 2e8, 4e7, load_system("v1"), 150)
    assert plan.fits_in_sram and len(plan.chips) == 150
    assert plan.chips[0].resident_bytes == pytest.approx(4.4e8)


def test_spill_order_and_amounts() -> None:
    plan = plan_sram(2e8, 2e8, 4e8, 1e8, load_system("v1"), 150)
    chip = plan.chips[0]
    resident, spilled = dict(chip.resident), dict(chip.spilled)
    # Params and grads stay; activations get the 42.5 MB left; optimizer state spills whole.
    assert resident["params"] == 2e8 and resident["grads"] == 2e8
    assert resident["activations"] == pytest.approx(CHIP_SRAM - 4e8)
    assert spilled["activations"] == pytest.approx(1e8 - (CHIP_SRAM - 4e8))
    assert spilled["optimizer"] == 4e8
    assert chip.resident_bytes == pytest.approx(CHIP_SRAM)
    assert chip.hbm_bytes == pytest.approx(V1_HBM_PER_CHIP)


def test_stream_share_is_the_pooled_dip_bandwidth() -> None:
    share = stream_share(load_system("v1"))
    assert share.dips == 20 and share.chips == 150
    assert share.bytes_per_s == pytest.approx(V1_STREAM_PER_CHIP)
    # Farther chips see more hops from their nearest DIP: latency grows with mesh distance.
    # DIPs sit on the west and east edges of a 10 x 15 chip array (every chip row has one), so
    # the nearest chip is the TTP hop away and the middle column 7 more D1 edges.
    hops = [s.hops for s in share.streams]
    assert min(hops) == 1 and max(hops) == 1 + 7
    lat = {s.hops: s.latency_s for s in share.streams}
    # Column 7 lies in the middle tile: 6 D1 edges at 20 ns and one tile edge at 50 ns.
    assert lat[8] == pytest.approx(lat[1] + 6 * 20e-9 + 50e-9)


def test_stream_time_is_at_least_bytes_over_bandwidth() -> None:
    chip = plan_sram(2e8, 2e8, 4e8, 1e8, load_system("v1"), 150).chips[7]
    assert chip.stream_time_s(1e9) >= 1e9 / V1_STREAM_PER_CHIP


def test_oom_names_the_chip_and_the_bytes() -> None:
    per_chip = [1e8] * 25
    per_chip[24] = 1e9
    with pytest.raises(SramOutOfMemory) as info:
        plan_sram(per_chip, 0, 0, 0, load_system("tile"), 25)
    err = info.value
    assert len(err.shortfalls) == 1
    worst = err.shortfalls[0]
    assert worst.chip == "chip[4,4]"
    assert worst.short_bytes == pytest.approx(1e9 - CHIP_SRAM)
    text = str(err)
    assert "chip[4,4]" in text and "1e+09" in text and "5.575e+08" in text
    assert "\n" not in text and isinstance(err, DojoError)


def test_oom_when_spill_exceeds_dip_hbm() -> None:
    with pytest.raises(SramOutOfMemory) as info:
        plan_sram(2e9, 2e9, 4e9, 1e8, load_system("v1"), 150)
    worst = info.value.shortfalls[0]
    assert worst.short_bytes == pytest.approx(8.1e9 - CHIP_SRAM - V1_HBM_PER_CHIP)
    assert len(info.value.shortfalls) == 150


def test_working_set_cannot_spill() -> None:
    with pytest.raises(SramOutOfMemory):
        plan_sram(0, 0, 0, 0, load_system("v1"), 1, working_bytes=CHIP_SRAM + 1)


def test_bad_input() -> None:
    v1 = load_system("v1")
    with pytest.raises(DojoError, match="chips = 151"):
        plan_sram(0, 0, 0, 0, v1, 151)
    with pytest.raises(DojoError, match="3 values for 2 chips"):
        plan_sram([1, 2, 3], 0, 0, 0, v1, 2)
    with pytest.raises(DojoError, match="negative"):
        plan_sram(-1, 0, 0, 0, v1, 2)
