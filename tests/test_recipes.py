"""The shipped recipes in configs/: each reads on its own and trains on real CamVid (when present)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pixelwise.config import load_config
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.training.loop import train

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "datasets" / "camvid"
RECIPES = sorted((REPO / "configs").glob("camvid_*.yaml"))


def test_a_recipe_per_required_architecture() -> None:
    names = {load_config(path).model.name for path in RECIPES}
    assert {"unet", "deeplabv3plus", "fcn8s"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_reads_and_fits_the_hour(recipe: Path) -> None:
    config = load_config(recipe)
    assert config.data.format == "camvid"
    assert config.train.time_budget_min is not None and config.train.time_budget_min <= 60


@pytest.mark.slow
@pytest.mark.skipif(not (CAMVID / "train").is_dir(), reason="CamVid not found at ../shared/datasets/camvid")
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: path.stem)
def test_recipe_trains_two_steps_on_camvid(recipe: Path, tmp_path: Path) -> None:
    # Real frames and the recipe's own loss, weights and model; small crops, two steps and a
    # two-frame validation split (links into the real copy) keep it to seconds.
    root = tmp_path / "camvid"
    for split in ("train", "trainannot"):
        (root / split).parent.mkdir(parents=True, exist_ok=True)
        (root / split).symlink_to(CAMVID / split)
    for split in ("val", "valannot"):
        (root / split).mkdir()
        for frame in sorted((CAMVID / split).iterdir())[:2]:
            (root / split / frame.name).symlink_to(frame)
    config = load_config(recipe, [f"data.root={root}", "data.crop_size=[64, 96]", "data.batch_size=2",
                                  "data.workers=0", "train.time_budget_min=null", "train.iterations=2",
                                  "train.eval_every=1000", f"train.output_dir={tmp_path / 'run'}"])
    result = train(config)
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert result.iterations == 2 and state["model_spec"]["num_classes"] == 11
    assert state["classes"]["names"][:3] == ["Sky", "Building", "Pole"]


@pytest.mark.slow
def test_recipe_ab_trains_variants_side_by_side_and_completes_on_rerun(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("model: {name: unet, options: {base_channels: 4, depth: 2}}\n"
                      "data: {format: synthetic, crop_size: [32, 32], batch_size: 2, workers: 0,"
                      " options: {size: 32, length: 4}}\n"
                      "train: {iterations: 2, eval_every: 2, checkpoint_every: 1}\n")
    command = [sys.executable, str(REPO / "benchmarks" / "recipe_ab.py"), "--config", str(recipe),
               "--out", str(tmp_path / "ab"), "--threads", "1", "--classes", "disc", "ring",
               "--output", str(tmp_path / "ab.json"), "--variant", "plain", "data.hflip=0",
               "--variant", "fast", "optim.lr=0.01"]
    stale = tmp_path / "ab" / "fast"  # a run stopped before its first checkpoint: started afresh
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text("")
    first = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stderr
    report = json.loads((tmp_path / "ab.json").read_text())
    assert report["variants"] == {"plain": ["data.hflip=0"], "fast": ["optim.lr=0.01"]}
    for name in ("plain", "fast"):
        result = report["results"][name]
        assert result["iteration"] == 2 and set(result["class_iou"]) == {"disc", "ring"}
        assert 0 <= result["mean_iou"] <= 1 and result["trimap_accuracy"] is not None
        assert list(result["val_history"]) == ["2"]
        assert load_checkpoint(tmp_path / "ab" / name / "last.pt")["config"]["train"]["seed"] == 0
    assert load_checkpoint(tmp_path / "ab" / "plain" / "last.pt")["config"]["data"]["hflip"] == 0
    assert "| plain | 2 |" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 0, again.stderr
    assert "plain: " in again.stdout and "is finished; not trained again" in again.stdout
    assert json.loads((tmp_path / "ab.json").read_text())["results"] == report["results"]


def test_recipe_ab_reports_the_membrane_metrics_of_two_class_runs(tmp_path: Path) -> None:
    from conftest import tiny_recipe

    binary = "data.options={size: 32, length: 4, num_classes: 2}"
    train(load_config(None, tiny_recipe(tmp_path / "ab" / "binary", binary)))
    command = [sys.executable, str(REPO / "benchmarks" / "recipe_ab.py"), "--config", "unused.yaml", "--evaluate-only",
               "--out", str(tmp_path / "ab"), "--variant", "binary", "--classes", "disc",
               "--output", str(tmp_path / "ab.json")]
    run = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    membrane = json.loads((tmp_path / "ab.json").read_text())["results"]["binary"]["membrane"]
    assert 0 <= membrane["rand_error"] <= 1 and 0 <= membrane["best_pixel_error"] <= membrane["pixel_error"]
    assert 0 <= membrane["best_v_info_threshold"] <= 1
    assert "Rand error (p > 0.5 / best)" in run.stdout and f"{membrane['rand_error']:.3f} / " in run.stdout
