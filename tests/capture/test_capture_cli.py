"""`dojo inspect`: the JSON contract, the table, a user factory file, and bad input (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dojo.cli.main import main

SMALL_GPT = ["--set", "layers=2", "--set", "hidden=64", "--set", "heads=4", "--set", "ffn=256",
             "--set", "vocab=128", "--set", "seq=32"]


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_json_has_exactly_the_documented_keys(capsys: pytest.CaptureFixture[str]) -> None:
    out = _json(capsys, ["inspect", "gpt2-small", "--batch", "2", "--seq", "16", *SMALL_GPT,
                         "--json"])
    assert list(out) == ["params", "flops", "ops", "bytes"]
    assert list(out["flops"]) == ["forward", "backward", "optimizer", "total"]
    assert list(out["ops"]) == ["forward", "backward", "optimizer"]
    assert list(out["bytes"]) == ["params", "grads", "optimizer_state", "peak_activations"]
    # parameters from the config by hand: embeddings, 2 blocks, final LayerNorm (tied head)
    h, f = 64, 256
    block = 2 * 2 * h + (3 * h * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h)
    assert out["params"] == 128 * h + 32 * h + 2 * block + 2 * h
    assert out["bytes"]["params"] == out["bytes"]["grads"] == 4 * out["params"]
    assert out["bytes"]["optimizer_state"] == 8 * out["params"]  # AdamW: two fp32 moments
    assert out["flops"]["total"] == sum(out["flops"][p] for p in ("forward", "backward",
                                                                  "optimizer"))


def test_table_shows_phases_memory_and_top_ops(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "gpt3-175b", "--batch", "1", "--seq", "128", "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "blocks x96" in text and "peak activations" in text
    assert "top 3 ops by FLOP" in text and "aten.mm.default" in text
    for phase in ("forward", "backward", "optimizer"):
        assert phase in text


def test_user_factory_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "mine.py"
    src.write_text(
        "import torch\nfrom torch import nn\n\n"
        "def factory():\n"
        "    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))\n"
        "    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)\n"
        "    return m, (torch.randn(4, 8),), lambda y: y.square().mean(), opt\n",
        encoding="utf-8")
    out = _json(capsys, ["inspect", f"{src}:factory", "--json"])
    assert out["params"] == 8 * 16 + 16 + 16 * 2 + 2
    assert out["bytes"]["optimizer_state"] == 4 * out["params"]  # one momentum buffer
    # forward matmuls: 2 x 4 x (8 x 16 + 16 x 2) FLOP
    assert out["flops"]["forward"] >= 2 * 4 * (8 * 16 + 16 * 2)


def test_untraceable_factory_is_exit_2_naming_the_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "branchy.py"
    src.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class M(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.l = nn.Linear(4, 4)\n\n"
        "    def forward(self, x):\n"
        "        y = self.l(x)\n"
        "        return y if y.max().item() > 0 else -y\n\n"
        "def factory():\n"
        "    m = M()\n"
        "    return m, (torch.randn(2, 4),), lambda y: y.sum(), "
        "torch.optim.SGD(m.parameters(), lr=0.1)\n",
        encoding="utf-8")
    assert main(["inspect", f"{src}:factory"]) == 2
    err = capsys.readouterr().err.strip()
    assert "branchy.py:11" in err and "data-dependent" in err and "\n" not in err


def test_unknown_model_lists_known(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "gpt5"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'gpt5'" in err and "gpt2-small" in err and "resnet50" in err


def test_unknown_set_key_lists_valid_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "gpt2-small", "--set", "depth=3"]) == 2
    err = capsys.readouterr().err
    assert "'depth'" in err and "layers" in err and "hidden" in err


def test_bad_batch_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "mlp", "--batch", "two"]) == 2
    assert "--batch" in capsys.readouterr().err


FACTORY = """
import torch
def factory():
    m = torch.nn.Linear(4, 2)
    return m, (torch.zeros(3, 4),), lambda out: out.sum(), torch.optim.SGD(m.parameters(), lr=0.1)
"""


@pytest.mark.parametrize("flags", [["--batch", "8"], ["--seq", "4"], ["--set", "x=1"]])
def test_factory_refuses_flags_it_would_ignore(tmp_path: Path, flags: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "user.py").write_text(FACTORY)
    assert main(["inspect", f"{tmp_path / 'user.py'}:factory", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flags[0] in err[0] and "user factory" in err[0]


def test_huge_layer_count_is_refused_not_built(capsys: pytest.CaptureFixture[str]) -> None:
    import time

    start = time.monotonic()
    assert main(["inspect", "gpt", "--set", "layers=1000000000000000000"]) == 2
    assert "at most 1,024 layers" in capsys.readouterr().err
    assert time.monotonic() - start < 5


def test_readme_inspect_figures_match_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    import re

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.startswith("dojo inspect gpt3-175b "))
    m = re.search(r"([\d.]+)B parameters, ([\d.]+)e(\d+) FLOP per step \(batch (\d+)\)", line)
    assert m, line
    out = _json(capsys, ["inspect", "gpt3-175b", "--batch", m.group(4), "--json"])
    assert f"{out['params'] / 1e9:.1f}" == m.group(1)
    assert f"{out['flops']['total'] / 10 ** int(m.group(3)):.1f}" == m.group(2)
    # and the figure is the model's: 6 x params x tokens plus attention, within 5 %
    tokens = int(m.group(4)) * 2048
    assert 1.0 < out["flops"]["total"] / (6 * out["params"] * tokens) < 1.05
