"""Training recipes: YAML + dotted overrides, every key and type checked, resolved recipe saved."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torchvision.transforms import v2

from pixelwise.config import Config, ConfigError, config_to_dict, load_config, save_config
from pixelwise.training.loop import build_datasets


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_defaults_are_a_complete_recipe() -> None:
    config = load_config()
    assert isinstance(config, Config)
    assert config.model.name == "unet" and config.data.format == "synthetic"


def test_file_then_overrides_win(tmp_path: Path) -> None:
    path = _write(tmp_path, "model:\n  name: deeplabv3plus\n  options: {output_stride: 16}\noptim:\n  lr: 0.01\n")
    config = load_config(path, ["optim.lr=0.02", "data.crop_size=[96, 128]", "loss={ce: 1.0, dice: 0.5}"])
    assert config.model.name == "deeplabv3plus" and config.model.options == {"output_stride": 16}
    assert config.optim.lr == 0.02
    assert config.data.crop_size == [96, 128]
    assert config.loss == {"ce": 1.0, "dice": 0.5}


def test_augmentation_strength_is_a_recipe_key() -> None:
    def steps(overrides: list[str]) -> list[v2.Transform]:
        config = load_config(None, ["data.options={length: 2, size: 32}", "data.crop_size=[16, 16]", *overrides])
        train_set, _ = build_datasets(config)
        return list(train_set.transform.pipeline.transforms)

    default = steps([])
    flips = [s for s in default if isinstance(s, v2.RandomHorizontalFlip)]
    jitters = [s for s in default if isinstance(s, v2.ColorJitter)]
    assert flips[0].p == 0.5 and jitters[0].brightness == (0.7, 1.3) and jitters[0].hue is None
    custom = steps(["data.hflip=0", "data.color_jitter=[0.5, 0.1, 0.2, 0.05]"])
    assert not any(isinstance(s, v2.RandomHorizontalFlip) for s in custom)
    (jitter,) = [s for s in custom if isinstance(s, v2.ColorJitter)]
    assert jitter.brightness == (0.5, 1.5) and jitter.contrast == (0.9, 1.1) and jitter.hue == (-0.05, 0.05)
    plain = steps(["data.hflip=0", "data.color_jitter=null", "data.scale_range=[1, 1]"])
    assert not any(isinstance(s, (v2.RandomHorizontalFlip, v2.ColorJitter)) for s in plain)
    train_set, _ = build_datasets(load_config(None, ["data.options={length: 2, size: 16}", "data.crop_size=[16, 16]",
                                                     "data.hflip=0", "data.color_jitter=0", "data.scale_range=[1, 1]"]))
    first, again = train_set[0], train_set[0]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1]), "no random step left"


def test_int_is_accepted_where_a_float_is_expected() -> None:
    config = load_config(None, ["optim.lr=1"])
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)


def test_training_extras_default_off() -> None:
    config = load_config(None, ["train.time_budget_min=30"])
    assert config.train.time_budget_min == 30.0 and config.train.sync_batchnorm is False
    assert load_config().train.time_budget_min is None


def test_null_override_clears_an_optional_key() -> None:
    assert load_config(None, ["model.encoder=null"]).model.encoder is None


@pytest.mark.parametrize(("overrides", "message"), [
    (["optim.lrr=0.1"], "unknown key 'optim.lrr'; valid keys of optim: name, lr, weight_decay"),
    (["trian.iterations=5"], "unknown key 'trian'; valid keys: model, data, optim, schedule, loss, class_weights, train"),
    (["optim.lr=fast"], "optim.lr = 'fast' should be float"),
    (["train.iterations=1.5"], "train.iterations = 1.5 should be int"),
    (["train.channels_last=1"], "train.channels_last = 1 should be bool"),
    (["data.crop_size=[1, x]"], r"data.crop_size\[1\] = 'x' should be int"),
    (["train.amp=16"], "train.amp = 16 should be str or null"),
    (["train.time_budget_min=soon"], "train.time_budget_min = 'soon' should be float or null"),
    (["train.sync_batchnorm=yes please"], "train.sync_batchnorm = 'yes please' should be bool"),
    (["optim.lr"], "must look like section.key=value"),
])
def test_unknown_keys_and_wrong_types_are_clear_errors(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_unreadable_or_malformed_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(_write(tmp_path, "- just\n- a list\n"))


def test_resolved_recipe_round_trips(tmp_path: Path) -> None:
    config = load_config(None, ["optim.lr=0.02", "train.amp=bf16"])
    save_config(config, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optim"]["lr"] == 0.02
    assert config_to_dict(load_config(tmp_path / "config.yaml")) == config_to_dict(config)
