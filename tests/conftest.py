"""Shared test set-up: deterministic, single-threaded torch (pytest-xdist runs one worker per core)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

# The tiny training recipe the tests share: the paper's U-Net at 4 channels and depth 2 without
# batch norm, on 32×32 synthetic images loaded in the main process, two steps, validated at the end
# (seconds on one core). Tests name only what differs; a later ``key=value`` replaces an earlier one
# (a whole value: ``model.options={...}`` replaces these options, it does not merge into them).
TINY_RECIPE = (
    "model.name=unet", "model.encoder=null", "model.options={base_channels: 4, depth: 2, norm: null}",
    "data.format=synthetic", "data.options={size: 32, length: 8}", "data.crop_size=[32, 32]", "data.batch_size=2",
    "data.workers=0", "train.iterations=2", "train.eval_every=2",
)


def tiny_recipe(output_dir: str | Path, *extra: str) -> list[str]:
    """The overrides of :data:`TINY_RECIPE` writing to ``output_dir``, then ``extra`` (which win).

    Import it as ``from conftest import tiny_recipe``; pass the list to ``load_config(None, ...)``
    or, after ``"train"``, to ``pixelwise.cli.main``."""
    return [*TINY_RECIPE, f"train.output_dir={output_dir}", *extra]


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
    train(load_config(None, tiny_recipe(
        run_dir, "model.encoder=resnet18", "model.options={decoder_channels: [32, 16, 16, 8, 8]}",
        "data.options={size: 64, length: 8, shapes_per_image: [2, 4]}", "data.crop_size=[48, 48]", "optim.lr=0.003",
        "train.iterations=4", "train.eval_every=4", "train.checkpoint_every=4",
    )))
    return run_dir / "best.pt"
