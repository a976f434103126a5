"""A recipe's ``inference`` section: its checkpoints (and ONNX files exported from them) record
the test-time scales and flip, and evaluate, predict and serve use them unless told otherwise."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from conftest import tiny_recipe
from servers import running

from pixelwise.cli import main
from pixelwise.config import ConfigError, load_config
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.inference.evaluation import evaluate_checkpoint
from pixelwise.inference.logits import InferenceOptions, recorded_augmentation
from pixelwise.inference.predict import RecordedViews

SCALES = [0.75, 1.0]
# On tiny_recipe's: a U-Net on resnet18, 64×64 scenes of two to four shapes, lr 0.003.
TINY_RUN = ("model.encoder=resnet18", "model.options={decoder_channels: [32, 16, 16, 8, 8]}",
            "data.options={size: 64, length: 4, shapes_per_image: [2, 4]}", "data.crop_size=[48, 48]",
            "optim.lr=0.003", "train.checkpoint_every=2")


@pytest.fixture(scope="module")
def tta_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``best.pt`` of a 2-step run whose recipe predicts at scales 0.75 and 1, flipped too."""
    from pixelwise.training.loop import train

    run_dir = tmp_path_factory.mktemp("tta_run")
    train(load_config(None, tiny_recipe(run_dir, *TINY_RUN, f"inference.scales={SCALES}", "inference.flip=true")))
    return run_dir / "best.pt"


def test_the_checkpoint_records_the_recipes_views(tta_checkpoint: Path) -> None:
    recorded = load_checkpoint(tta_checkpoint)["inference"]
    assert recorded["scales"] == SCALES and recorded["flip"] is True and recorded["precision"] == "fp32"
    assert recorded_augmentation(recorded) == {"scales": (0.75, 1.0), "flip": True}
    assert recorded_augmentation(recorded, scales=[2.0], flip=False) == {"scales": (2.0,), "flip": False}
    assert recorded_augmentation(None) == {"scales": (1.0,), "flip": False}  # files that predate the record


def test_evaluate_uses_the_recorded_views_unless_told_otherwise(tta_checkpoint: Path) -> None:
    state = load_checkpoint(tta_checkpoint)
    default = evaluate_checkpoint(tta_checkpoint)
    assert default.inference.scales == (0.75, 1.0) and default.inference.flip
    explicit = evaluate_checkpoint(tta_checkpoint, options=InferenceOptions.create(scales=SCALES, flip=True))
    assert torch.equal(default.matrix.matrix, explicit.matrix.matrix)
    # one unflipped scale is what validation during training computed
    single = evaluate_checkpoint(tta_checkpoint, options=InferenceOptions.create(scales=[1.0], flip=False))
    assert single.summary()["mean_iou"] == pytest.approx(state["best_miou"], abs=1e-12)
    assert not torch.equal(single.matrix.matrix, default.matrix.matrix)
    flipped_only = evaluate_checkpoint(tta_checkpoint, options=RecordedViews(scales=[1.0]))  # flip still as recorded
    assert flipped_only.inference.flip and flipped_only.inference.scales == (1.0,)


def test_the_cli_prints_the_views_and_can_turn_them_off(tta_checkpoint: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--checkpoint", str(tta_checkpoint), "--out", str(tmp_path / "a")]) == 0
    assert "scales 0.75 1 + flip" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(tta_checkpoint), "--out", str(tmp_path / "b"),
                 "--scales", "1", "--no-flip"]) == 0
    assert "scales" not in capsys.readouterr().out


def test_predict_uses_the_recorded_views(tta_checkpoint: Path, tmp_path: Path) -> None:
    from PIL import Image

    from pixelwise.inference.predict import predict_files

    image = tmp_path / "scene.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 52, 3), dtype=np.uint8)).save(image)
    probabilities = {}
    for name, views in {"default": RecordedViews(), "explicit": InferenceOptions.create(scales=SCALES, flip=True),
                        "single": InferenceOptions.create(scales=[1.0], flip=False)}.items():
        predict_files(tta_checkpoint, [image], tmp_path / name, views, save_probabilities=True,
                      probability_dtype="float32")
        probabilities[name] = np.load(tmp_path / name / "scene_probs.npy")
    assert np.array_equal(probabilities["default"], probabilities["explicit"])
    assert not np.allclose(probabilities["default"], probabilities["single"])


def test_serve_and_an_exported_file_keep_the_recorded_views(tta_checkpoint: Path) -> None:
    from pixelwise.io.record import ModelRecord
    from pixelwise.serve import app_for_file

    metadata = ModelRecord.from_state(load_checkpoint(tta_checkpoint), "").to_metadata()  # what an ONNX file carries
    assert recorded_augmentation(json.loads(metadata["pixelwise.inference"])) == {"scales": (0.75, 1.0), "flip": True}
    for settings, expected in [(None, (SCALES, True)), ({"batch_size": 2}, (SCALES, True)),
                               ({"scales": None, "flip": False}, (SCALES, False)),
                               ({"scales": [1.5]}, ([1.5], True))]:
        with running(app_for_file(str(tta_checkpoint), options=settings)) as base:
            inference = httpx.get(f"{base}/info").json()["inference"]
        assert (inference["scales"], inference["flip"]) == expected


@pytest.mark.parametrize("scales", ["[]", "[0]", "[1, -2]"])
def test_scales_that_cannot_work_are_refused(scales: str) -> None:
    with pytest.raises(ConfigError, match="inference.scales .* one or more positive factors"):
        load_config(None, [f"inference.scales={scales}"])
