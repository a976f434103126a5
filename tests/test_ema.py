"""train.ema: the moving average of the weights, against torch's AveragedModel, in a run, resumed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from test_train import _Interrupt, _stop_at

from pixelwise.cli import main
from pixelwise.config import ConfigError, load_config
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.training.ema import WeightAverage, warmed_decay
from pixelwise.inference.evaluation import evaluate_checkpoint
from pixelwise.inference.logits import InferenceOptions
from pixelwise.training.loop import train

# On tiny_recipe's: a U-Net on resnet18, six steps, a moving average of the weights.
RUN = ("model.encoder=resnet18", "model.options={decoder_channels: [16, 8, 8, 8, 8]}",
       "data.options={size: [40, 40], length: 8}", "optim.lr=0.01", "train.iterations=6", "train.eval_every=3",
       "train.checkpoint_every=3", "train.ema=0.9")


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def _train_a_little(net: nn.Module, step: int) -> None:
    """Move the weights and the batch-norm statistics as a training step would."""
    generator = torch.Generator().manual_seed(step)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator))
    net.train()
    net(torch.randn(2, 3, 8, 8, generator=generator) * (1 + step))


def test_a_fixed_decay_matches_torchs_exponential_average() -> None:
    """Once the warm-up decay is above it (from the first update for 0.15), the average is
    AveragedModel's EMA, batch-norm statistics included."""
    torch.manual_seed(0)
    net = _net()
    ours, peer = WeightAverage(net, 0.15), AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(0.15),
                                                          use_buffers=True)
    for step in range(5):
        _train_a_little(net, step)
        ours.update(net)
        peer.update_parameters(net)
    expected = peer.module.state_dict()
    for name, value in ours.module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            assert value == net.state_dict()[name] == 5  # integers are copied, not blended
        else:
            torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    assert ours.updates == 5


def test_the_decay_warms_up_so_the_average_follows_early_training() -> None:
    torch.manual_seed(1)
    net = _net()
    average = WeightAverage(net, 0.999)
    reference = {name: value.clone() for name, value in net.state_dict().items()}
    for step in range(4):
        _train_a_little(net, step)
        average.update(net)
        rate = 1.0 if step == 0 else 1 - warmed_decay(0.999, step)  # the first update copies
        for name, value in net.state_dict().items():
            if value.is_floating_point():
                reference[name] = reference[name] + rate * (value - reference[name])
    for name, value in average.module.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, reference[name], rtol=1e-6, atol=1e-6, msg=name)
    assert [warmed_decay(0.999, n) for n in (1, 90, 10_000)] == [2 / 11, 0.91, 0.999]
    assert not any(parameter.requires_grad for parameter in average.module.parameters())
    with pytest.raises(ValueError, match="decay in"):
        WeightAverage(net, 1.0)


def test_a_run_validates_and_saves_the_average_and_resumes_exactly(tmp_path: Path) -> None:
    straight = train(load_config(None, tiny_recipe(tmp_path / "straight", *RUN)))
    last = load_checkpoint(straight.run_dir / "last.pt")
    assert last["ema_updates"] == 6
    trained, averaged = last["training_model"], last["model"]
    assert any(not torch.equal(trained[name], averaged[name]) for name in trained if trained[name].is_floating_point())
    # validation scored the average: evaluating the checkpoint's predicting weights reproduces it
    best = evaluate_checkpoint(straight.run_dir / "best.pt", options=InferenceOptions.create(scales=[1.0], flip=False))
    assert best.summary()["mean_iou"] == pytest.approx(load_checkpoint(straight.run_dir / "best.pt")["best_miou"],
                                                       abs=1e-12)

    resumed_dir = tmp_path / "resumed"
    with pytest.raises(_Interrupt):
        train(load_config(None, tiny_recipe(resumed_dir, *RUN)), on_step=_stop_at(4))
    assert load_checkpoint(resumed_dir / "last.pt")["ema_updates"] == 3
    train(load_config(None, tiny_recipe(resumed_dir, *RUN)), resume=True)
    resumed = load_checkpoint(resumed_dir / "last.pt")
    for key in ("model", "training_model"):
        for name, value in last[key].items():
            assert torch.equal(resumed[key][name], value), f"{key}.{name} differs after resuming"


def test_the_cli_trains_with_an_average_and_refuses_a_decay_that_cannot_work(tmp_path: Path) -> None:
    assert main(["train", *tiny_recipe(tmp_path, *RUN, "train.iterations=2", "train.eval_every=2")]) == 0
    assert load_checkpoint(tmp_path / "last.pt")["ema_updates"] == 2
    for decay in ("1.0", "0", "-0.5"):
        with pytest.raises(ConfigError, match=r"train.ema = .* must be a decay in \(0, 1\)"):
            load_config(None, [f"train.ema={decay}"])
    assert "training_model" not in load_checkpoint(
        train(load_config(None, tiny_recipe(tmp_path / "plain", *RUN, "train.ema=null", "train.iterations=1",
                                            "train.eval_every=1"))).run_dir / "last.pt")
