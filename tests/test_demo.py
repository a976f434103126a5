"""The demo: train → evaluate on held-out images → predict files → report, on synthetic data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.demo import run_demo_pipeline

# A few steps of a much smaller network: the pipeline, not the learning.
QUICK = ("model.options={base_channels: 4, depth: 2}", "train.iterations=3", "train.eval_every=3",
         "data.workers=0", "data.options={size: 32, length: 8}")


def test_demo_pipeline_leaves_every_result_in_the_run_folder(tmp_path: Path) -> None:
    result = run_demo_pipeline(tmp_path / "demo", QUICK)
    run = result.run_dir
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.jsonl", "report.md", "loss.png", "miou.png",
                 "evaluation/metrics.json", "evaluation/confusion_matrix.png", "predictions/sheet.png"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert metrics["data"]["split"] == "test"
    assert metrics["summary"]["mean_iou"] == pytest.approx(result.evaluation.summary()["mean_iou"])
    assert len(result.predictions.images) == 4
    for item in result.predictions.images:
        assert Image.open(item.mask).mode == "P" and Image.open(item.overlay).size == Image.open(item.source).size
    report = (run / "report.md").read_text()
    assert f"{metrics['summary']['mean_iou']:.4f}" in report and "predictions/sheet.png" in report


def test_demo_command_prints_where_the_results_are(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["demo", "--out", str(tmp_path / "demo"), *QUICK])
    out = capsys.readouterr().out
    assert code == 0
    assert "report.md" in out and "misses" in out  # three steps cannot reach the target, and it says so


def test_models_run_checks_every_model_returns_the_input_size(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "--run", "--size", "33", "47"]) == 0
    assert "every model returned logits at the input size" in capsys.readouterr().out
