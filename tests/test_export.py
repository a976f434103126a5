"""Export: every model to ONNX with dynamic sizes, ONNX Runtime fp32 / int8 parity, the exported
file predicting without its checkpoint, TorchScript, and the errors a user meets."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from test_models import SMALL

import pixelwise
from pixelwise.cli import main
from pixelwise.data.synthetic import SyntheticShapes
from pixelwise.io.checkpoint import save_checkpoint
from pixelwise.inference.logits import InferenceOptions, normalize_image, predict_large_image, predict_logits
from pixelwise.export import ExportError, Int8Options, export_checkpoint, onnx_proto
from pixelwise.inference.loading import load_onnx, load_predictor, read_metadata
from pixelwise.layers import UPSAMPLE_KINDS

SIZES = [(1, 3, 253, 317), (1, 3, 1, 17), (2, 3, 33, 47)]
# Checked at the export's own tolerance: float32 in another order, see pixelwise/export.py.
TOLERANCE = 1e-3
HEAVY = {"fcn_resnet50", "deeplabv3_resnet50"}  # ResNet-50: 20-30 s each to export on one core


def _session(model: torch.nn.Module, name: str) -> ort.InferenceSession:
    proto = onnx_proto(model, name)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _assert_matches_eager(model: torch.nn.Module, session: ort.InferenceSession) -> None:
    for shape in SIZES:
        image = torch.randn(*shape)
        with torch.no_grad():
            expected = model(image)
        (actual,) = session.run(None, {"image": image.numpy()})
        assert actual.shape == tuple(expected.shape), shape
        scale = max(1.0, expected.abs().max().item())
        assert np.abs(actual - expected.numpy()).max() <= TOLERANCE * scale, shape


def _cases() -> list:
    cases = []
    for name in pixelwise.list_models():
        options = dict(SMALL.get(name, {}))
        if name == "unet":
            options["padding"] = "same"  # the paper's valid U-Net is refused: see the test below
        marks = [pytest.mark.slow] if name in HEAVY else []
        cases.append(pytest.param(name, options, id=name, marks=marks))
    cases += [pytest.param("fcn8s", {"encoder": "resnet18", "upsample": kind}, id=f"fcn8s-{kind}")
              for kind in UPSAMPLE_KINDS if kind != "transposed"]
    return cases


@pytest.mark.parametrize(("name", "options"), _cases())
def test_every_registered_model_exports_with_dynamic_batch_height_and_width(name: str, options: dict) -> None:
    """Exported from a 67×93 example, the graph predicts 253×317, 1×17 and a batch of two at
    33×47 as eager PyTorch does: the pad-and-crop is shape arithmetic, not constants."""
    model = pixelwise.create_model(name, num_classes=3, **options).eval()
    _randomise_batch_norms(model)
    _assert_matches_eager(model, _session(model, name))


def _randomise_batch_norms(model: torch.nn.Module) -> None:
    """Non-trivial running statistics, so a folded or dropped batch norm cannot pass unseen."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def test_models_that_cannot_export_say_which_and_why(tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = torch.load(tiny_checkpoint, weights_only=True)
    state["model_spec"] = {"name": "unet", "num_classes": 6, "options": {"base_channels": 4}}
    state["model"] = pixelwise.create_model("unet", num_classes=6, base_channels=4).state_dict()
    paper = tmp_path / "paper.pt"
    save_checkpoint(state, paper)
    with pytest.raises(ExportError, match=r"'unet'.*padding='valid'.*padding=same"):
        export_checkpoint(paper, tmp_path / "paper.onnx")
    assert not (tmp_path / "paper.onnx").exists()


def test_input_scale_exports_its_antialiased_resize_as_shape_arithmetic() -> None:
    model = pixelwise.create_model("fcn8s", num_classes=3, encoder="resnet18", input_scale=0.5).eval()
    _assert_matches_eager(model, _session(model, "fcn8s"))


def test_input_norm_exports_and_standardises_at_any_size() -> None:
    model = pixelwise.create_model("fcn8s", num_classes=3, encoder="resnet18", input_norm="instance").eval()
    _assert_matches_eager(model, _session(model, "fcn8s"))


# A trained model exported through the command line --------------------------------------------

@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model.onnx"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out)]) == 0
    return out


def _scene(path: Path, size: tuple[int, int], index: int = 0) -> Path:
    image, _ = SyntheticShapes("test", size=size, length=index + 1).load(index)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return path


def test_export_prints_parity_and_the_file_carries_what_prediction_needs(
        exported: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture) -> None:
    metadata = read_metadata(exported)
    state = torch.load(tiny_checkpoint, weights_only=True)
    assert metadata["classes"] == state["classes"] and metadata["model_spec"] == state["model_spec"]
    assert metadata["normalization"] == state["normalization"] and metadata["precision"] == "fp32"
    assert metadata["version"] == pixelwise.__version__
    props = {p.key for p in onnx.load(str(exported), load_external_data=False).metadata_props}
    assert {"pixelwise.classes", "pixelwise.normalization", "pixelwise.model_spec", "pixelwise.version"} <= props
    assert not list(exported.parent.glob(".*.tmp")), "temporary files left behind"


def test_predict_with_the_onnx_file_alone_equals_the_checkpoint(exported: Path, tiny_checkpoint: Path,
                                                                tmp_path: Path) -> None:
    images = [_scene(tmp_path / f"scene{i}.png", (61, 83), i) for i in range(2)]
    assert main(["predict", "--model", str(exported), *map(str, images), "--out", str(tmp_path / "onnx")]) == 0
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), *map(str, images), "--out",
                 str(tmp_path / "torch")]) == 0
    for image in images:
        onnx_mask = np.asarray(Image.open(tmp_path / "onnx" / image.name))
        torch_mask = np.asarray(Image.open(tmp_path / "torch" / image.name))
        assert len(np.unique(torch_mask)) > 1
        # Equal but where two classes tie to float32 rounding (none at all in practice).
        assert (onnx_mask != torch_mask).mean() <= 1e-3


def test_tiled_prediction_through_onnx_runtime(exported: Path, tiny_checkpoint: Path) -> None:
    onnx_model = load_onnx(exported)
    torch_model = load_predictor(tiny_checkpoint)
    pixels = np.asarray(Image.open(_scene(Path(exported.parent) / "big.png", (150, 190))).convert("RGB"))
    options = InferenceOptions.create(window=64, stride=40, batch_size=3)
    labels = predict_large_image(onnx_model.model, pixels, 6, options, onnx_model.normalization, band=70)
    expected = predict_logits(torch_model.model, normalize_image(pixels, torch_model.normalization)[None],
                              mode="slide", window=64, stride=40).argmax(1)[0].numpy()
    assert labels.shape == (150, 190) and (labels != expected).mean() <= 1e-3


def test_evaluate_an_onnx_file_like_its_checkpoint(exported: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    data = ["--format", "synthetic", "--data-options", "size=64", "length=4", "shapes_per_image=[2, 4]"]
    assert main(["evaluate", "--model", str(exported), *data, "--out", str(tmp_path / "onnx")]) == 0
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), *data, "--out", str(tmp_path / "pt")]) == 0
    onnx_metrics = json.loads((tmp_path / "onnx" / "metrics.json").read_text())
    torch_metrics = json.loads((tmp_path / "pt" / "metrics.json").read_text())
    assert onnx_metrics["inference"]["runtime"] == "onnxruntime"
    assert abs(onnx_metrics["summary"]["mean_iou"] - torch_metrics["summary"]["mean_iou"]) < 1e-3


def test_failing_parity_is_an_error_and_leaves_no_file(tiny_checkpoint: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pixelwise.export.FP32_TOLERANCE", -1.0)  # any difference at all fails
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="does not compute what the model does.*no file was written"):
        export_checkpoint(tiny_checkpoint, out)
    assert list(tmp_path.iterdir()) == []


def test_int8_export_calibrates_on_real_images_and_reports_both_mious(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    lines: list[str] = []
    # The 4-step model's logits are near ties almost everywhere, so its int8 agreement is low;
    # the CamVid checkpoint's is in the README.
    report = export_checkpoint(tiny_checkpoint, out, int8=Int8Options("synthetic::train", images=4, val_images=4,
                                                                      min_agreement=0.5), on_line=lines.append)
    assert report.precision == "int8" and read_metadata(out)["precision"] == "int8"
    assert [path.name for path in tmp_path.iterdir()] == ["int8.onnx"], "one file written, no temporary left"
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert set(report.accuracy) >= {"fp32_miou", "int8_miou", "miou_loss_points"}
    assert any("fp32" in line and "int8" in line and "mIoU" in line for line in lines)
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    loaded = load_predictor(out)
    assert loaded.model.precision == "int8" and loaded.classes.num_classes == 6
    logits = loaded.model(torch.randn(1, 3, 37, 41))
    assert logits.shape == (1, 6, 37, 41)


def test_torchscript_export_runs_at_any_size(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.ts"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "torchscript", "--out", str(out)]) == 0
    files = {"pixelwise.classes": ""}
    traced = torch.jit.load(str(out), _extra_files=files)
    assert json.loads(files["pixelwise.classes"])["names"][0] == "background"
    model = load_predictor(tiny_checkpoint).model
    for shape in SIZES:
        image = torch.randn(*shape)
        with torch.no_grad():
            assert torch.allclose(traced(image), model(image), atol=1e-5)


# Bad input ---------------------------------------------------------------------------------

def test_bad_model_files_are_named_in_the_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    image = _scene(tmp_path / "scene.png", (20, 20))
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 2, 1).eval(), (torch.randn(1, 3, 8, 8),), str(plain), dynamo=True,
                      external_data=False)
    not_checkpoint = tmp_path / "notes.pt"
    not_checkpoint.write_text("these are my notes")
    cases = [(tmp_path / "missing.onnx", "does not exist"), (corrupt, "not an ONNX model"),
             (plain, "without pixelwise metadata"), (not_checkpoint, "not a pixelwise checkpoint")]
    for path, message in cases:
        flag = "--model" if path.suffix == ".onnx" else "--checkpoint"
        assert main(["predict", flag, str(path), str(image), "--out", str(tmp_path / "out")]) == 2
        error = " ".join(capsys.readouterr().out.split())
        assert message in error and path.name in error, error
    assert main(["export", "--checkpoint", str(not_checkpoint), "--out", str(tmp_path / "x.onnx")]) == 2
    assert "not a pixelwise checkpoint" in capsys.readouterr().out
    assert main(["predict", str(image), "--out", str(tmp_path / "out")]) == 2
    assert "--checkpoint" in capsys.readouterr().out and not (tmp_path / "out").exists()


# The file written (issue 32, point 4) -------------------------------------------------------------

def _no_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any work after the target checks fail the test: they must come first."""
    def started(*args, **kwargs):
        raise AssertionError("the export started before its target was checked")

    monkeypatch.setattr("pixelwise.export.read_model_file", started)
    monkeypatch.setattr("pixelwise.export.onnx_proto", started)


def test_export_refuses_an_existing_file_unless_overwrite(tiny_checkpoint: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"a user's file")
    with monkeypatch.context() as patch:
        _no_work(patch)
        assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "safetensors", "--out", str(out)]) == 2
    assert "exists; pass --overwrite to replace it" in " ".join(capsys.readouterr().out.split())
    assert out.read_bytes() == b"a user's file"
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--format", "safetensors", "--out", str(out),
                 "--overwrite"]) == 0
    assert load_predictor(out).classes.num_classes == 6


def test_export_never_replaces_its_own_checkpoint(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = tmp_path / "run" / "best.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(tiny_checkpoint.read_bytes())
    (tmp_path / "link.pt").symlink_to(checkpoint)
    _no_work(monkeypatch)
    for out in (checkpoint, tmp_path / "run" / ".." / "run" / "best.pt", tmp_path / "link.pt"):
        for extra in ([], ["--overwrite"]):
            assert main(["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(out),
                         *extra]) == 2
            assert "is the checkpoint being exported" in " ".join(capsys.readouterr().out.split())
    assert checkpoint.read_bytes() == tiny_checkpoint.read_bytes()


def test_export_refuses_a_folder_or_a_folder_it_cannot_write(tiny_checkpoint: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _no_work(monkeypatch)
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path)]) == 2
    assert "is a folder; name the file to write" in " ".join(capsys.readouterr().out.split())
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "notes.txt" / "m.onnx")]) == 2
    assert "cannot write into the folder of --out" in " ".join(capsys.readouterr().out.split())
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(locked / "m.onnx")]) == 2
        assert "cannot write into the folder" in " ".join(capsys.readouterr().out.split())
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"] + (["locked"] if os.geteuid() else [])


def test_calibration_data_are_checked_before_the_export(tiny_checkpoint: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def started(*args, **kwargs):
        raise AssertionError("the graph was exported before the calibration data were checked")

    monkeypatch.setattr("pixelwise.export.onnx_proto", started)
    out = tmp_path / "int8.onnx"
    for spec, message in (("camvid", "--calibrate takes FORMAT:ROOT:SPLIT"),
                          (f"camvid:{tmp_path / 'nowhere'}:train", "nowhere")):
        assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--int8",
                     "--calibrate", spec]) == 2
        assert message in " ".join(capsys.readouterr().out.split())
    data = tmp_path / "data"  # a folder data set with one split: the comparison split is missing
    for folder, mode in (("images", "RGB"), ("masks", "L")):
        (data / folder).mkdir(parents=True)
        Image.new(mode, (16, 16)).save(data / folder / "a.png")
    (data / "classes.txt").write_text("\n".join(f"c{i}" for i in range(6)))
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--int8",
                 "--calibrate", f"folder:{data}:train", "--val-split", "val"]) == 2
    assert "no split 'val'" in " ".join(capsys.readouterr().out.split())
    assert not out.exists()


def test_a_killed_export_leaves_a_temporary_the_next_one_removes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "model.onnx"
    process = subprocess.Popen([sys.executable, "-m", "pixelwise", "export", "--checkpoint", str(tiny_checkpoint),
                                "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(tmp_path.glob(".model.onnx.*.tmp")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    [orphan] = list(tmp_path.glob(".model.onnx.*.tmp"))
    assert orphan.name == f".model.onnx.fp32.{process.pid}.tmp" and not out.exists()
    unrelated = tmp_path / f".notes.txt.{process.pid}.tmp"  # not a write of the export's file: kept
    unrelated.write_text("x")
    assert main(["export", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--no-parity"]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == [unrelated.name, "model.onnx"]


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_every_export_gets_the_mode_of_a_new_file(exported: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        for export_format in ("safetensors", "torchscript"):
            export_checkpoint(tiny_checkpoint, tmp_path / f"model.{export_format}", export_format, parity=False)
    finally:
        os.umask(umask)
    modes = {path.name: path.stat().st_mode & 0o777 for path in tmp_path.iterdir()}
    assert modes == {"model.safetensors": 0o644, "model.torchscript": 0o644}
    assert exported.stat().st_mode & 0o777 == 0o666 & ~umask
