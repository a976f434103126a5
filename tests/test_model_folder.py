"""The ecosystem's model folder (``config.json`` + ``model.safetensors``): written by
``pixelwise export --format folder``, read by every command and by ``pixelwise.from_pretrained``,
checksummed, written atomically, and never replacing anything but a model folder. Made from the
committed fixture checkpoint (no training here)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load_file

import pixelwise
from pixelwise.cli import main
from pixelwise.errors import MissingFileError
from pixelwise.export import export_checkpoint
from pixelwise.inference.loading import load_model, load_predictor
from pixelwise.io.atomic import remove_orphan_temporaries
from pixelwise.serve.app import app_for_file

FIXTURES = Path(__file__).parent / "fixtures" / "model_files"
CHECKPOINT = FIXTURES / "checkpoint.pt"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "unet-tiny"
    assert main(["export", "--checkpoint", str(CHECKPOINT), "--format", "folder", "--out", str(out)]) == 0
    return out


def _batch() -> torch.Tensor:
    return torch.randn(2, 3, 21, 27, generator=torch.Generator().manual_seed(1))


def test_the_folder_holds_a_readable_config_and_plain_safetensors(folder: Path) -> None:
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    original = load_model(CHECKPOINT)
    assert config["format"] == "pixelwise" and config["model_spec"]["name"] == "unet"
    assert tuple(config["classes"]["names"]) == tuple(original.classes.names) and config["normalization"] == original.normalization
    weights = load_file(str(folder / "model.safetensors"))  # plain safetensors: loads without pixelwise
    assert weights.keys() == original.model.state_dict().keys()
    assert all(torch.equal(weights[key], value) for key, value in original.model.state_dict().items())


def test_from_pretrained_gives_the_checkpoints_model(folder: Path) -> None:
    loaded, original = pixelwise.from_pretrained(folder), load_model(CHECKPOINT)
    assert isinstance(loaded.model, torch.nn.Module) and not loaded.model.training
    assert loaded.classes == original.classes and loaded.model_spec == original.model_spec
    with torch.no_grad():
        assert torch.equal(loaded.model(_batch()), original.model(_batch()))
    assert pixelwise.from_pretrained(FIXTURES / "model.safetensors").classes == original.classes


def test_every_command_reads_a_model_folder(folder: Path, tmp_path: Path) -> None:
    image = tmp_path / "scene.png"
    Image.open(FIXTURES / "image.png").save(image)
    for flag in ("--checkpoint", "--model"):
        out = tmp_path / f"predicted{flag}"
        assert main(["predict", flag, str(folder), str(image), "--out", str(out)]) == 0
        assert (out / "scene.png").is_file()
    first, second = (np.asarray(Image.open(tmp_path / f"predicted{flag}" / "scene.png"))
                     for flag in ("--checkpoint", "--model"))
    assert np.array_equal(first, second)
    assert main(["evaluate", "--checkpoint", str(folder), "--format", "synthetic", "--split", "val",
                 "--data-option", "size=32", "--data-option", "length=2", "--out", str(tmp_path / "eval")]) == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["summary"]["mean_iou"] >= 0
    onnx_file = tmp_path / "from_folder.onnx"
    export_checkpoint(folder, onnx_file)
    assert load_predictor(onnx_file).classes == load_model(CHECKPOINT).classes
    with TestClient(app_for_file(str(folder))) as client:
        info = client.get("/info", headers={"host": "127.0.0.1"}).json()
    assert [entry["name"] if isinstance(entry, dict) else entry for entry in info["classes"]] == list(load_model(CHECKPOINT).classes.names)


@pytest.mark.parametrize("edit", ["config", "weights"])
def test_an_edited_folder_is_called_edited(folder: Path, edit: str) -> None:
    if edit == "config":
        config = json.loads((folder / "config.json").read_text())
        config["classes"]["names"][0] = "sky"
        (folder / "config.json").write_text(json.dumps(config))
    else:
        from safetensors.torch import save_file

        weights = load_file(str(folder / "model.safetensors"))
        first = next(iter(weights))
        weights[first] = weights[first] + 1
        save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=r"unet-tiny' is damaged or was edited"):
        pixelwise.from_pretrained(folder)


def test_a_reformatted_config_still_loads(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config, indent=4))  # whitespace is not an edit
    assert list(pixelwise.from_pretrained(folder).classes.names) == config["classes"]["names"]


def test_an_incomplete_or_foreign_folder_says_what_is_missing(folder: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    (folder / "model.safetensors").unlink()
    with pytest.raises(MissingFileError, match="has no model.safetensors"):
        pixelwise.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    shutil.copy(FIXTURES / "model_folder" / "model.safetensors", folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"config\.json' is not valid JSON"):
        pixelwise.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"architectures": ["SomethingElse"]}))
    assert main(["predict", "--model", str(folder), str(FIXTURES / "image.png"), "--out", str(tmp_path / "o")]) == 2
    output = capsys.readouterr()
    assert "not a pixelwise model config" in output.out and "Traceback" not in output.out + output.err
    with pytest.raises(ValueError, match="not a PyTorch model's weights"):
        load_model(FIXTURES / "model.onnx")


def test_a_folder_export_replaces_only_a_model_folder(folder: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    before = (folder / "config.json").read_text()
    assert main(["export", "--checkpoint", str(CHECKPOINT), "--format", "folder", "--out", str(folder)]) == 2
    assert "exists; pass --overwrite" in " ".join(capsys.readouterr().out.split())
    assert main(["export", "--checkpoint", str(CHECKPOINT), "--format", "folder", "--out", str(folder),
                 "--overwrite"]) == 0
    assert (folder / "config.json").read_text() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["unet-tiny"]  # no temporaries left
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("a user's file")
    assert main(["export", "--checkpoint", str(CHECKPOINT), "--format", "folder", "--out", str(home),
                 "--overwrite"]) == 2
    assert "is not a model folder" in " ".join(capsys.readouterr().out.split())
    assert (home / "notes.txt").read_text() == "a user's file"
    assert main(["export", "--checkpoint", str(folder), "--format", "folder", "--out", str(folder),
                 "--overwrite"]) == 2
    assert "is the checkpoint being exported" in " ".join(capsys.readouterr().out.split())
    assert pixelwise.from_pretrained(folder).classes.num_classes == 6


def test_a_killed_folder_export_leaves_nothing_the_next_one_keeps(tmp_path: Path) -> None:
    dead = 2 ** 22 + 1  # above the default pid_max: no such process
    assert not os.path.exists(f"/proc/{dead}")
    orphan = tmp_path / f".model.{dead}.tmp"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"half")
    export_checkpoint(CHECKPOINT, tmp_path / "model", "folder")
    assert remove_orphan_temporaries(tmp_path) == [] and not orphan.exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]
