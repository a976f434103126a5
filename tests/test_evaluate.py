"""Evaluating a checkpoint: API and CLI on a real (tiny) trained model and synthetic data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import RecordedData, create_dataset
from pixelwise.data.synthetic import CLASS_NAMES
from pixelwise.data.transforms import val_transform
from pixelwise.io.checkpoint import save_checkpoint
from pixelwise.inference.loading import load_model
from pixelwise.inference.evaluation import evaluate_checkpoint, row_normalised
from pixelwise.inference.logits import InferenceOptions
from pixelwise.inference.predict import RecordedViews
from pixelwise.training.loop import evaluate
from pixelwise.metrics import BoundaryMetric

# What the tiny_checkpoint fixture (conftest.py) trained on.
VAL_SET = {"size": 64, "length": 8, "shapes_per_image": [2, 4]}  # as the tiny checkpoint records (conftest.py)


def _valid_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()  # checks the chunks' CRCs
    with Image.open(path) as image:
        image.load()
        return image.size


def test_api_writes_metrics_equal_to_training_evaluation(tiny_checkpoint: Path, tmp_path: Path) -> None:
    result = evaluate_checkpoint(tiny_checkpoint, out_dir=tmp_path)
    assert result.files == [tmp_path / "metrics.json", tmp_path / "confusion_matrix.png"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())

    model, classes, normalization, *_ = load_model(tiny_checkpoint)
    val_set = create_dataset("synthetic", split="val", transform=val_transform(**normalization), **VAL_SET)
    expected = evaluate(model, val_set, torch.device("cpu")).summary()
    assert metrics["summary"]["mean_iou"] == expected["mean_iou"]
    assert metrics["summary"]["pixel_accuracy"] == expected["pixel_accuracy"]
    assert [row["iou"] for row in metrics["per_class"]] == expected["iou"]
    assert [row["name"] for row in metrics["per_class"]] == list(CLASS_NAMES) == list(classes.names)
    assert metrics["data"] == {"format": "synthetic", "root": None, "split": "val", "options": VAL_SET,
                               "num_images": 8}
    assert metrics["inference"]["mode"] == "whole" and metrics["iteration"] == 4
    matrix = metrics["confusion_matrix"]
    assert sum(map(sum, matrix["matrix"])) == metrics["summary"]["num_pixels"] == 8 * 64 * 64
    assert matrix["class_names"] == list(CLASS_NAMES)
    width, height = _valid_png(tmp_path / "confusion_matrix.png")
    assert width > 200 and height > 200


def test_boundary_metrics_equal_a_boundary_metric_on_the_same_predictions(tiny_checkpoint: Path,
                                                                         tmp_path: Path) -> None:
    result = evaluate_checkpoint(tiny_checkpoint, out_dir=tmp_path, boundary_width=2)
    metrics = json.loads((tmp_path / "metrics.json").read_text())

    model, classes, normalization, *_ = load_model(tiny_checkpoint)
    val_set = create_dataset("synthetic", split="val", transform=val_transform(**normalization), **VAL_SET)
    expected = BoundaryMetric.for_classes(classes, width=2)
    for image, mask in val_set:
        expected.update_logits(mask[None], InferenceOptions.create().logits(model, image[None]))
    assert torch.equal(result.boundary.counts, expected.counts)
    wanted = expected.summary()
    assert metrics["summary"]["mean_boundary_iou"] == wanted["mean_boundary_iou"]
    assert metrics["summary"]["trimap_accuracy"] == wanted["trimap_accuracy"]
    assert metrics["summary"]["trimap_pixels"] == wanted["trimap_pixels"] > 0
    assert metrics["summary"]["boundary_width"] == 2
    assert [row["boundary_iou"] for row in metrics["per_class"]] == wanted["boundary_iou"]


def test_cli_boundary_width(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "a"),
                 "--data-options", "length=2"]) == 0
    printed = capsys.readouterr().out
    assert "BIoU" in printed and "within 3 px of class edges" in printed and "trimap accuracy" in printed
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["summary"]["boundary_width"] == 3

    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "b"),
                 "--data-options", "length=2", "--boundary-width", "0"]) == 0
    printed = capsys.readouterr().out
    assert "BIoU" not in printed and "trimap" not in printed
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert "mean_boundary_iou" not in metrics["summary"] and "boundary_iou" not in metrics["per_class"][0]

    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--boundary-width", "-1"]) == 2
    assert "boundary width must be a whole number of pixels, 0 or more" in capsys.readouterr().out


def test_slide_with_a_window_covering_the_image_equals_whole(tiny_checkpoint: Path) -> None:
    whole = evaluate_checkpoint(tiny_checkpoint)
    one_window = evaluate_checkpoint(tiny_checkpoint, options=RecordedViews(InferenceOptions.create(mode="slide",
                                                                                                    window=64)))
    assert torch.equal(one_window.matrix.matrix, whole.matrix.matrix)
    assert whole.files == []  # no out_dir, no files
    several = evaluate_checkpoint(tiny_checkpoint, options=RecordedViews(InferenceOptions.create(
        mode="slide", window=48, stride=16, blend="uniform")))
    assert several.matrix.num_pixels == whole.matrix.num_pixels
    assert several.to_dict()["inference"]["stride"] == [16, 16]


def test_flip_and_scale_augmentation_runs(tiny_checkpoint: Path) -> None:
    result = evaluate_checkpoint(tiny_checkpoint, RecordedData(options={"length": 2}),
                                 InferenceOptions.create(scales=(0.75, 1.0), flip=True))
    assert result.matrix.num_pixels == 2 * 64 * 64
    assert 0.0 <= result.summary()["mean_iou"] <= 1.0
    assert result.to_dict()["inference"] | {"scales": [0.75, 1.0], "flip": True} == result.to_dict()["inference"]


def test_cli_prints_the_table_and_where_the_files_went(tiny_checkpoint: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--mode", "slide",
                 "--window", "64", "64", "--data-options", "length=3"]) == 0
    printed = capsys.readouterr().out
    assert "background" in printed and "mIoU" in printed
    assert str(out / "metrics.json") in printed and str(out / "confusion_matrix.png") in printed
    assert json.loads((out / "metrics.json").read_text())["data"]["num_images"] == 3
    _valid_png(out / "confusion_matrix.png")


def test_cli_default_output_folder_is_beside_the_checkpoint(tiny_checkpoint: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    copy = tmp_path / "run" / "best.pt"
    copy.parent.mkdir()
    copy.write_bytes(tiny_checkpoint.read_bytes())
    assert main(["evaluate", "--checkpoint", str(copy), "--data-options", "length=1"]) == 0
    assert (tmp_path / "run" / "evaluation" / "metrics.json").is_file()


def _not_a_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    return path


def _bare_state_dict(tmp_path: Path) -> Path:
    path = tmp_path / "weights.pt"
    save_checkpoint({"model": {"weight": torch.ones(2)}}, path)
    return path


@pytest.mark.parametrize(("make", "message"), [
    (lambda tmp: tmp / "missing.pt", "does not exist"),
    (_not_a_checkpoint, "is not a pixelwise checkpoint"),
    (_bare_state_dict, "holds weights but lacks ['model_spec', 'classes', 'normalization']"),
])
def test_cli_bad_checkpoint_is_a_clear_error(make, message: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    path = make(tmp_path)
    assert main(["evaluate", "--checkpoint", str(path), "--out", str(tmp_path / "out")]) == 2
    printed = " ".join(capsys.readouterr().out.split())  # rich folds long lines
    assert printed.startswith("error:") and message in printed and path.name in printed


def test_data_that_does_not_match_the_model_is_a_clear_error(tiny_checkpoint: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data-options", "num_classes=3"]) == 2
    assert "has 3 classes but the model predicts 6" in capsys.readouterr().out


def test_resolve_data_keeps_the_recording_unless_the_format_changes() -> None:
    recorded = {"format": "folder", "root": "/data/a", "options": {"num_classes": 3}, "val_split": "valid"}
    assert RecordedData().resolve(recorded).to_dict() == {"format": "folder", "root": "/data/a", "split": "valid",
                                                          "options": {"num_classes": 3}}
    assert RecordedData(root="/data/b", split="test").resolve(recorded).root == "/data/b"
    assert RecordedData("voc", root="/voc").resolve(recorded).to_dict() == {"format": "voc", "root": "/voc",
                                                                            "split": "valid", "options": {}}
    with pytest.raises(ValueError, match="records no data set"):
        RecordedData().resolve(None)


def test_row_normalised_matrix_marks_absent_classes() -> None:
    from pixelwise.metrics import ConfusionMatrix

    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([[0, 0, 1, 1]]), torch.tensor([[0, 1, 1, 1]]))
    rows = row_normalised(matrix)
    assert rows[0].tolist() == [0.5, 0.5, 0.0] and rows[1].tolist() == [0.0, 1.0, 0.0]
    assert rows[2].isnan().all()  # no ground-truth pixels of class 2: undefined, drawn grey
