"""Export: every model to ONNX with dynamic sizes, ONNX Runtime fp32 / int8 parity, the exported
file predicting without its checkpoint, TorchScript, and the errors a user meets."""
from __future__ import annotations

import json
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
from pixelwise.engine.checkpoint import save_checkpoint
from pixelwise.engine.inference import InferenceOptions, normalize_image, predict_large_image, predict_logits
from pixelwise.engine.loading import load_predictor
from pixelwise.export import (
    ExportError,
    Int8Options,
    export_checkpoint,
    load_onnx,
    onnx_proto,
    read_metadata,
)
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
