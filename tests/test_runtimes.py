"""Runtimes behind the one inference path, and evaluation reproducing what validation logged."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe

import pixelwise
from pixelwise.config import load_config
from pixelwise.inference.evaluation import evaluate_checkpoint
from pixelwise.inference.logits import InferenceOptions, as_runtime, predict_logits
from pixelwise.inference.loading import load_predictor
from pixelwise.training.loop import train
from pixelwise.runtimes import OnnxRuntime, TorchRuntime


def _model() -> torch.nn.Module:
    model = pixelwise.create_model("fcn8s", num_classes=4, encoder="resnet18").eval()
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():  # non-trivial statistics: folding them must matter
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model


def test_pytorch_runtimes_keep_the_contract_and_agree() -> None:
    model = _model()
    image = torch.randn(1, 3, 45, 61)
    reference = predict_logits(model, image)
    for runtime in (TorchRuntime(model), TorchRuntime(model, optimize=True), TorchRuntime(model, "bf16")):
        for mode in ("whole", "slide"):
            logits = predict_logits(runtime, image, mode=mode, window=32, stride=24)
            assert logits.shape == (1, 4, 45, 61) and logits.dtype == torch.float32
        logits = predict_logits(runtime, image)
        scale = reference.abs().max().item()
        # bf16 keeps 8 bits of mantissa: about 1% of the scale per layer, a few % at the end.
        tolerance = 0.1 if runtime.precision == "bf16" else 1e-4
        assert (logits - reference).abs().max().item() <= tolerance * scale, runtime.name
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in TorchRuntime(model, optimize=True).model.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()), "the original must stay untouched"


def test_runtime_restores_the_training_flag() -> None:
    model = _model().train()
    TorchRuntime(model)(torch.randn(1, 3, 16, 16))
    assert model.training


def test_precisions_that_cannot_run_say_what_to_do() -> None:
    model = _model()
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device; on CPU use bf16"):
        TorchRuntime(model, "fp16")
    with pytest.raises(ValueError, match="int8 runs in ONNX Runtime.*--int8"):
        TorchRuntime(model, "int8")
    with pytest.raises(ValueError, match="precision must be one of"):
        InferenceOptions.create(precision="fp8")
    with pytest.raises(ValueError, match="computes in fp32, not bf16"):
        as_runtime(TorchRuntime(model), "bf16")


def test_onnx_runtime_from_a_checkpoint(tiny_checkpoint: Path) -> None:
    torch_model = load_predictor(tiny_checkpoint)
    onnx_model = load_predictor(tiny_checkpoint, runtime="onnxruntime")
    assert isinstance(onnx_model.model, OnnxRuntime) and onnx_model.classes == torch_model.classes
    image = torch.randn(2, 3, 37, 53)
    expected, actual = torch_model.model(image), onnx_model.model(image)
    assert actual.shape == expected.shape and (actual - expected).abs().max() <= 1e-3 * expected.abs().max()
    with pytest.raises(ValueError, match="fp32, not bf16"):
        load_predictor(tiny_checkpoint, runtime="onnxruntime", precision="bf16")


def test_evaluate_reproduces_the_logged_validation_miou_at_the_recorded_precision(tmp_path: Path) -> None:
    """A run validating under bf16 autocast records it; evaluate then computes the same numbers
    (bit for bit: the same path, the same precision) without being told."""
    train(load_config(None, tiny_recipe(
        tmp_path, "model.encoder=resnet18", "model.options={decoder_channels: [16, 16, 8, 8, 8]}",
        "data.options={size: 48, length: 4, shapes_per_image: [2, 4]}", "optim.lr=0.003", "train.iterations=3",
        "train.eval_every=3", "train.checkpoint_every=3", "train.amp=bf16",
    )))
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    [evaluation] = [record["eval"] for record in logged if "eval" in record]
    result = evaluate_checkpoint(tmp_path / "best.pt")
    assert result.runtime == {"runtime": "torch", "precision": "bf16"}
    assert result.summary()["mean_iou"] == evaluation["mean_iou"]
    assert result.summary()["iou"] == evaluation["iou"]
    fp32 = evaluate_checkpoint(tmp_path / "best.pt", precision="fp32")
    assert fp32.runtime["precision"] == "fp32" and fp32.matrix.num_pixels == result.matrix.num_pixels
    # A checkpoint from before the record: the recipe's train.amp says what validation ran at.
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    del state["inference"], state["record_checksum"]
    torch.save(state, tmp_path / "older.pt")
    older = evaluate_checkpoint(tmp_path / "older.pt")
    assert older.runtime["precision"] == "bf16" and older.summary()["iou"] == evaluation["iou"]
