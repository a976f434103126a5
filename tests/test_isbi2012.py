"""The ISBI 2012 membrane format: its layout, label mapping, documented split and errors, on a
small copy made here; and on the real slices where ``../shared/datasets/isbi2012`` is present."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import DataError, ISBI2012Dataset, create_dataset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "isbi2012"


def _volume(root: Path, slices: int = 25, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for folder in ("image", "label"):
        (root / folder).mkdir(parents=True)
    for index in range(slices):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / "image" / f"{index}.png")
        label = np.where(rng.random((size, size)) < 0.3, 0, 255).astype(np.uint8)
        Image.fromarray(label).save(root / "label" / f"{index}.png")
    return root


def test_labels_are_membrane_0_and_cell_1_and_the_split_is_documented(tmp_path: Path) -> None:
    root = _volume(tmp_path / "isbi")
    lengths = {split: len(create_dataset("isbi2012", root=str(root), split=split)) for split in ("train", "val", "all")}
    assert lengths == {"train": 20, "val": 5, "all": 25}
    dataset = ISBI2012Dataset(root, "val")
    assert dataset.classes.names == ("membrane", "cell") or list(dataset.classes.names) == ["membrane", "cell"]
    image, mask = dataset.load(0)
    raw = np.asarray(Image.open(root / "label" / "20.png"))
    assert np.array_equal(mask.numpy(), (raw == 255).astype(np.int64))
    assert image.shape == (3, 16, 16) and bool((image[0] == image[1]).all() and (image[1] == image[2]).all())


def test_a_label_that_is_neither_membrane_nor_cell_names_its_file(tmp_path: Path) -> None:
    root = _volume(tmp_path / "isbi")
    Image.fromarray(np.full((16, 16), 128, dtype=np.uint8)).save(root / "label" / "3.png")
    with pytest.raises(DataError, match=r"label/3\.png"):
        ISBI2012Dataset(root, "train").load(3)


def test_a_missing_label_or_split_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _volume(tmp_path / "isbi")
    (root / "label" / "22.png").unlink()
    with pytest.raises(DataError, match="22.png"):
        ISBI2012Dataset(root, "val")
    with pytest.raises(ValueError, match="split must be one of train, val, all"):
        ISBI2012Dataset(root, "test")
    assert main(["check-data", "--format", "isbi2012", "--root", str(root)]) != 0
    assert "22.png" in capsys.readouterr().out


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/datasets/isbi2012 is absent")
def test_the_real_slices_read_as_two_classes() -> None:
    dataset = ISBI2012Dataset(SHARED, "val")
    image, mask = dataset.load(0)
    assert len(dataset) == 5 and image.shape == (3, 512, 512) and set(mask.unique().tolist()) == {0, 1}


def test_the_data_benchmark_measures_the_recipes_own_loader_and_step(tmp_path: Path) -> None:
    """``benchmarks/data.py --config``: the ISBI recipe's samples (elastic deformation, weight maps)
    and its weighted step, on a small volume."""
    import json
    import subprocess
    import sys

    root = _volume(tmp_path / "isbi", size=48)
    repo = Path(__file__).resolve().parents[1]
    overrides = [f"data.root={root}", "data.crop_size=[32, 32]", "data.workers=0", "data.batch_size=2",
                 "model.options={base_channels: 4, depth: 2, padding: valid}"]
    recipe = repo / "configs" / "isbi2012_unet.yaml"
    command = [sys.executable, str(repo / "benchmarks" / "data.py"), "--config", str(recipe),
               "--steps", "2", "--warmup", "1", "--read-batches", "2", "--threads", "1",
               "--output", str(tmp_path / "data.json"), *(arg for o in overrides for arg in ("--set", o))]
    run = subprocess.run(command, capture_output=True, text=True, cwd=repo, timeout=600)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "data.json").read_text())
    assert report["recipe"].endswith("isbi2012_unet.yaml") and report["batch_size"] == 2
    training = report["training"]
    assert training["steps"] == 2 and len(training["wait_ms"]) == 2 and training["compute_ms_per_step"] > 0
    assert 0 <= training["wait_share"] < 1
    assert report["throughput"]["samples"] == 4
    assert "elastic True, weight map True" in run.stdout
