"""Shared test set-up: deterministic, single-threaded torch (pytest-xdist runs one worker per core)."""
from __future__ import annotations

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """``best.pt`` of a 4-step run on 64×64 synthetic images (a few seconds on one core), shared by
    the evaluation and prediction tests. lr 0.003 leaves the model predicting several classes, so
    comparisons of predictions are not trivially met by a constant map. Its scenes are pinned to
    two to four shapes (not the data set's default), so what the tests compare does not move
    when the synthetic defaults do."""
    from pixelwise.config import load_config
    from pixelwise.training.loop import train

    run_dir = tmp_path_factory.mktemp("tiny_run")
    train(load_config(None, [
        "model.name=unet", "model.encoder=resnet18", "model.options={decoder_channels: [32, 16, 16, 8, 8]}",
        "data.format=synthetic", "data.options={size: 64, length: 8, shapes_per_image: [2, 4]}", "data.crop_size=[48, 48]",
        "data.batch_size=2", "data.workers=0", "optim.lr=0.003", "train.iterations=4", "train.eval_every=4",
        "train.checkpoint_every=4", f"train.output_dir={run_dir}",
    ]))
    return run_dir / "best.pt"
