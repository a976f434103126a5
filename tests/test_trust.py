"""Nothing loaded runs code: a crafted checkpoint is refused by every loader, and its code never
runs (a marker file it would write stays absent); safetensors round trips."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe
from PIL import Image

import pixelwise
from pixelwise.cli import main
from pixelwise.config import ConfigError, load_config
from pixelwise.io.checkpoint import load_checkpoint, save_safetensors
from pixelwise.inference.loading import load_model
from pixelwise.training.loop import train
from pixelwise.io.safe_load import UntrustedFileError


class _Payload:
    """What an attacker pickles: unpickling it calls ``exec`` with code that writes a marker."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _hostile(path: Path, marker: Path, wrap_model: bool = True) -> Path:
    weights = {"w": torch.ones(2), "payload": _Payload(marker)}
    torch.save({"model": weights, "iteration": 1} if wrap_model else weights, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    marker = tmp_path / "PWNED"
    yield marker
    assert not marker.exists(), "the hostile file's code ran"


def test_the_payload_really_runs_code_when_unpickled_unsafely(tmp_path: Path) -> None:
    """The control: without weights_only the same file does run its code, so the tests below
    prove something."""
    control = tmp_path / "control"
    torch.load(_hostile(tmp_path / "evil.pt", control), weights_only=False)
    assert control.read_text() == "pwned"


def test_checkpoint_loaders_refuse_it(tmp_path: Path, marker: Path) -> None:
    evil = _hostile(tmp_path / "evil.pt", marker)
    for load in (load_checkpoint, load_model):
        with pytest.raises(UntrustedFileError, match=r"evil\.pt.*it calls (builtins\.)?exec\).*never runs code"):
            load(evil)


def test_evaluate_predict_and_export_refuse_it(tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture) -> None:
    evil = _hostile(tmp_path / "evil.pt", marker)
    image = tmp_path / "photo.png"
    Image.new("RGB", (16, 16)).save(image)
    for argv in (["evaluate", "--checkpoint", str(evil)],
                 ["predict", "--checkpoint", str(evil), str(image), "--out", str(tmp_path / "out")],
                 ["export", "--checkpoint", str(evil), "--out", str(tmp_path / "evil.onnx")]):
        assert main(argv) == 2
        message = " ".join(capsys.readouterr().out.split())
        assert "evil.pt" in message and "never runs code" in message, message
    assert not (tmp_path / "evil.onnx").exists()


def test_resume_refuses_it(tmp_path: Path, marker: Path) -> None:
    _hostile(tmp_path / "last.pt", marker)
    # The default U-Net on resnet18, validated at the default interval (the resume stops before a step).
    config = load_config(None, tiny_recipe(tmp_path, "model.encoder=resnet18", "model.options={}",
                                           "data.options={size: 32, length: 2}", "train.eval_every=250"))
    with pytest.raises(UntrustedFileError, match="last.pt"):
        train(config, resume=True)


def test_encoder_and_model_weight_files_refuse_it(tmp_path: Path, marker: Path) -> None:
    evil = _hostile(tmp_path / "evil.pth", marker, wrap_model=False)
    with pytest.raises(UntrustedFileError, match="weights file .*evil.pth"):
        pixelwise.create_model("fcn32s", num_classes=3, encoder="resnet18", encoder_weights=str(evil))
    with pytest.raises(UntrustedFileError, match="evil.pth"):
        pixelwise.create_model("fcn32s", num_classes=3, encoder="resnet18", weights=str(evil))


def test_recipes_are_read_with_safe_load(tmp_path: Path, marker: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml.*!!python/\.\.\. are refused and nothing in them ran"):
        load_config(recipe)


def test_safetensors_round_trip_predicts_like_the_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "safetensors", "--out", str(path)]) == 0
    original, exported = load_model(tiny_checkpoint), load_model(path)
    assert exported.classes == original.classes and exported.normalization == original.normalization
    image = torch.randn(1, 3, 41, 57)
    with torch.no_grad():
        assert torch.equal(exported.model(image), original.model(image))
    assert main(["predict", "--checkpoint", str(path), str(_scene(tmp_path)), "--out", str(tmp_path / "out")]) == 0


def _scene(folder: Path) -> Path:
    path = folder / "scene.png"
    Image.new("RGB", (24, 24), (200, 30, 30)).save(path)
    return path


def test_safetensors_without_pixelwise_metadata_and_bare_state_dicts(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.ones(2)}, str(bare))
    with pytest.raises(ValueError, match="bare.safetensors.*without pixelwise metadata"):
        load_checkpoint(bare)
    with pytest.raises(ValueError, match="lacks"):
        save_safetensors({"model": {"w": torch.ones(2)}}, tmp_path / "x.safetensors")
    legacy = tmp_path / "plain.pt"
    torch.save({"model": {"w": torch.ones(2)}, "iteration": 3, "config": {"a": [1, 2.0, "b", None]}}, legacy)
    assert load_checkpoint(legacy)["iteration"] == 3  # tensors and plain values: still loads
    with pytest.raises(FileNotFoundError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_a_pickle_named_safetensors_is_never_unpickled(tmp_path: Path, marker: Path) -> None:
    evil = _hostile(tmp_path / "evil.safetensors", marker)
    for load in (load_checkpoint, load_model):
        with pytest.raises(ValueError, match=r"evil\.safetensors.*not a readable safetensors file"):
            load(evil)
    with pytest.raises(ValueError, match=r"weights file .*evil\.safetensors.*not a readable safetensors file"):
        pixelwise.create_model("unet", num_classes=3, encoder="resnet18", encoder_weights=str(evil))


def test_save_safetensors_round_trips_by_content_not_name(tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = load_checkpoint(tiny_checkpoint)
    save_safetensors(state, tmp_path / "model.safetensors")
    (tmp_path / "renamed.pt").write_bytes((tmp_path / "model.safetensors").read_bytes())
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary behind
    original = load_model(tiny_checkpoint)
    image = torch.randn(1, 3, 40, 40)
    for path in (tmp_path / "model.safetensors", tmp_path / "renamed.pt"):
        loaded = load_checkpoint(path)
        assert {key: loaded[key] for key in ("model_spec", "classes", "normalization")} == \
               {key: state[key] for key in ("model_spec", "classes", "normalization")}
        exported = load_model(path)
        with torch.no_grad():
            assert torch.equal(exported.model(image), original.model(image))


def test_save_safetensors_copes_with_tied_and_strided_weights(tmp_path: Path) -> None:
    weight = torch.randn(4, 3)
    state = {"model": {"a": weight, "b": weight, "c": weight.t()}, "model_spec": {"name": "x"},
             "classes": {"names": ["a"]}, "normalization": {"mean": [0.0], "std": [1.0]}}
    save_safetensors(state, tmp_path / "tied.safetensors")
    loaded = load_checkpoint(tmp_path / "tied.safetensors")
    assert all(torch.equal(loaded["model"][key], value) for key, value in state["model"].items())
    assert loaded["model_spec"] == {"name": "x"} and "inference" not in loaded


def test_weight_files_load_from_safetensors_and_odd_files_say_what_they_are(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    source = pixelwise.create_encoder("resnet18")
    save_file({key: value.contiguous() for key, value in source.state_dict().items()}, str(tmp_path / "enc.bin"))
    loaded = pixelwise.create_encoder("resnet18", weights=str(tmp_path / "enc.bin"))
    assert all(torch.equal(value, source.state_dict()[key]) for key, value in loaded.state_dict().items())
    (tmp_path / "notes.pth").write_text("not weights at all")
    with pytest.raises(ValueError, match=r"notes\.pth.*neither a PyTorch file"):
        pixelwise.create_encoder("resnet18", weights=str(tmp_path / "notes.pth"))


def test_broken_files_and_folders_say_so(tiny_checkpoint: Path, tmp_path: Path) -> None:
    data = tiny_checkpoint.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.pt.*unreadable.*truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match=r"is a folder, not a file; pass .*best\.pt"):
        load_checkpoint(tiny_checkpoint.parent)
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "bad.safetensors"),
              metadata={"format": "pixelwise", "model_spec": "{", "classes": "{}", "normalization": "{}"})
    with pytest.raises(ValueError, match=r"bad\.safetensors.*not valid JSON"):
        load_checkpoint(tmp_path / "bad.safetensors")
