"""Bad model names, overrides and user factories give one-line DojoErrors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dojo.errors import ConfigError, DojoError, UnknownNameError
from dojo.models import build, config_keys, load_factory, names


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownNameError) as err:
        build("gpt5")
    assert "unknown model 'gpt5'" in str(err.value)
    for name in ("mlp", "resnet50", "gpt2-small", "llama3-405b", "occupancy"):
        assert name in str(err.value)
    assert set(names()) >= {"mlp", "resnet18", "resnet50", "vit-b16", "gpt2-small", "gpt2-medium",
                            "gpt", "gpt3-175b", "llama", "llama3-8b", "llama3-70b", "llama3-405b",
                            "occupancy"}


def test_unknown_override_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as err:
        build("gpt", device="meta", overrides={"layer": 4})
    msg = str(err.value)
    assert msg.startswith("--set: field 'layer' = 4: expected one of the keys ")
    for key in ("layers", "hidden", "heads", "ffn", "seq", "vocab"):
        assert key in msg
    assert config_keys("llama")[:3] == ["ffn", "heads", "hidden"]
    assert "kv_heads" in config_keys("llama") and "range_m" in config_keys("occupancy")


@pytest.mark.parametrize(("name", "overrides", "field"), [
    ("gpt", {"hidden": 100, "heads": 3}, "heads"),
    ("gpt", {"layers": 0}, "layers"),
    ("gpt", {"layers": "two"}, "layers"),
    ("llama", {"heads": 8, "kv_heads": 3}, "kv_heads"),
    ("vit-b16", {"patch": 15}, "patch"),
    ("occupancy", {"width": 100}, "width"),
    ("resnet18", {"optimizer": "lion"}, "optimizer"),
])
def test_bad_override_value_names_the_field(name: str, overrides: dict[str, object],
                                            field: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(name, device="meta", overrides=overrides)
    assert err.value.field == field and err.value.source == "--set"
    assert "\n" not in str(err.value)


def test_seq_and_batch_checked() -> None:
    with pytest.raises(ConfigError, match=r"\[1, 1024\]"):
        build("gpt2-small", device="meta", seq=2048)
    with pytest.raises(ConfigError, match="not a sequence model"):
        build("resnet18", device="meta", seq=16)
    with pytest.raises(ConfigError, match="batch"):
        build("mlp", batch=0)


GOOD = """
import torch
def factory():
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    return model, (torch.ones(3, 4),), lambda out: out.pow(2).mean(), opt
def not_a_tuple():
    return torch.nn.Linear(4, 2)
def three():
    return torch.nn.Linear(4, 2), (torch.ones(1, 4),), None
def bad_model():
    return "model", (torch.ones(1, 4),), print, None
def raises():
    raise ValueError("no data\\nhere")
VALUE = 3
"""


@pytest.fixture
def user_file(tmp_path: Path) -> Path:
    path = tmp_path / "mine.py"
    path.write_text(GOOD, encoding="utf-8")
    return path


def test_factory_file_builds_a_bundle_that_trains(user_file: Path) -> None:
    bundle = build(f"{user_file}:factory")
    assert bundle.targets == () and bundle.example_inputs[0].shape == (3, 4)
    opt = bundle.make_optimizer(bundle.model.parameters())
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["lr"] == 0.05
    first = float(bundle.train_step(opt))
    assert float(bundle.train_step(opt)) < first  # the loss is minimised: it must go down
    assert build(f"{user_file}:factory", device="meta").model.weight.device.type == "meta"


@pytest.mark.parametrize(("attr", "message"), [
    ("missing", "no function 'missing'; callables there: bad_model, factory"),
    ("VALUE", "'VALUE' is a int, not a function"),
    ("not_a_tuple", "must return (model, example_inputs, loss_fn, optimizer); got a Linear"),
    ("three", "got a tuple of 3 items"),
    ("bad_model", "model (item 1 of"),
    ("raises", "factory raised ValueError: no data here"),
])
def test_factory_errors_are_one_line(user_file: Path, attr: str, message: str) -> None:
    with pytest.raises(DojoError) as err:
        load_factory(f"{user_file}:{attr}")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_factory_missing_file_and_bad_spec(tmp_path: Path) -> None:
    with pytest.raises(DojoError, match="does not exist"):
        build(f"{tmp_path}/nope.py:factory")
    with pytest.raises(DojoError, match=r"expected path/to/file\.py:function"):
        load_factory("model.py")
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\ndef broken(:\n", encoding="utf-8")
    with pytest.raises(DojoError, match="import failed: SyntaxError"):
        load_factory(f"{broken}:factory")
    with pytest.raises(DojoError, match="takes no --set overrides"):
        build(f"{broken}:factory", overrides={"x": 1})


@pytest.mark.parametrize("name", ["gpt", "llama", "vit-b16", "mlp"])
def test_layer_count_is_bounded_before_any_module_is_built(name: str) -> None:
    import time

    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"'layers' = 10{18}: expected at most 1,024 layers"):
        build(name, device="meta", overrides={"layers": 10**18})
    assert time.monotonic() - start < 2  # refused from the number, not after building


@pytest.mark.parametrize(("overrides", "batch"), [({"vocab": 10**18}, 2), ({}, 9 * 10**15),
                                                  ({"seq": 10**20}, 2)])
def test_shapes_past_int64_bytes_are_one_line(overrides: dict[str, int], batch: int) -> None:
    with pytest.raises(DojoError, match=r"a tensor would pass 2\*\*63 bytes") as err:
        build("gpt", device="meta", batch=batch, overrides=overrides)
    assert "\n" not in str(err.value)


def test_batch_past_2_to_53_is_refused_before_any_tensor() -> None:
    with pytest.raises(ConfigError, match=r"'batch' = 9007199254740993: expected an integer from "
                                          r"1 to 2\^53"):
        build("mlp", device="meta", batch=2**53 + 1)
