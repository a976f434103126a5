"""The bad-input matrix: what a hostile or careless user does, and what pixelwise answers.

Each case ends in a clear error naming the file or key and the fix, or in a correct result; no
case loses what was already written.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_recipe
from PIL import Image
from rich.console import Console

from pixelwise.cli import main
from pixelwise.config import ConfigError, load_config
from pixelwise.data import DataError, create_dataset
from pixelwise.data.png import write_png_bands
from pixelwise.data.synthetic import SyntheticShapes
from pixelwise.io.atomic import remove_orphan_temporaries
from pixelwise.io.checkpoint import load_checkpoint, non_finite_tensors, save_checkpoint
from pixelwise.inference.predict import label_image, overlay, predict_files
from pixelwise.training.loop import TrainingDiverged, train, worker_message
from pixelwise.training.run_folder import RunFolderInUse
from pixelwise.progress import ProgressReport

# What differs from tiny_recipe: the U-Net keeps its batch norm, and every step is checkpointed.
TINY = ("model.options={base_channels: 4, depth: 2}", "train.checkpoint_every=1")


def _tiny(run_dir: Path, *overrides: str):
    return load_config(None, tiny_recipe(run_dir, *TINY, *overrides))


def _scene(path: Path, size: tuple[int, int] = (40, 48)) -> Path:
    image, _ = SyntheticShapes("test", size=size, length=1).load(0)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return path


# --------------------------------------------------------------------------- 1. run folders

def test_a_new_run_never_replaces_an_earlier_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    train(_tiny(run))
    before = {name: (run / name).read_bytes() for name in ("best.pt", "last.pt", "metrics.jsonl", "config.yaml")}
    with pytest.raises(RunFolderInUse, match=r"not empty.*--resume.*--overwrite.*train.output_dir"):
        train(_tiny(run))
    assert main(["train", *tiny_recipe(run, *TINY)]) == 2
    assert "--overwrite" in capsys.readouterr().out
    assert {name: (run / name).read_bytes() for name in before} == before, "nothing of the first run changed"
    (run / "notes.txt").write_text("mine")
    assert main(["train", "--overwrite", *tiny_recipe(run, *TINY, "train.iterations=1")]) == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in history if "loss" in r] == [1], "one run's history, not two mixed"
    assert (run / "notes.txt").read_text() == "mine", "--overwrite removes the run's files only"
    with pytest.raises(ValueError, match="one of the two"):
        train(_tiny(run), resume=True, overwrite=True)


# --------------------------------------------------------------------------- 2. divergence

def test_a_diverged_model_is_never_written_and_never_loaded(tmp_path: Path) -> None:
    # SGD at lr 1e4: batch-norm running variances overflow while the loss is still finite.
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"running_var.*NaN or infinite.*last checkpoint is kept"):
        train(_tiny(run, "optim.name=sgd", "optim.lr=1e4", "train.iterations=30", "train.eval_every=1"))
    for name in ("best.pt", "last.pt"):
        assert non_finite_tensors(load_checkpoint(run / name)["model"]) == [], f"{name} holds finite values"
    # A checkpoint that holds them (written by something else) is refused by predict and resume.
    state = load_checkpoint(run / "last.pt")
    name = next(key for key in state["model"] if key.endswith("running_var"))
    state["model"][name] = torch.full_like(state["model"][name], float("inf"))
    save_checkpoint(state, run / "last.pt")
    image = _scene(tmp_path / "a.png")
    with pytest.raises(ValueError, match=rf"last.pt.*NaN or infinite values in {name}.*earlier checkpoint"):
        predict_files(run / "last.pt", [image], tmp_path / "out")
    with pytest.raises(TrainingDiverged, match="cannot continue"):
        train(_tiny(run, "optim.name=sgd", "optim.lr=1e4", "train.iterations=30", "train.eval_every=1"),
              resume=True)


# --------------------------------------------------------------------------- 3. predict outputs

def test_predict_never_overwrites_a_file_it_did_not_write(tiny_checkpoint: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    _scene(photos / "IMG_1.jpg")
    Image.new("RGB", (5, 5), "red").save(photos / "IMG_1.png")  # the user's own file, not an input
    mine = (photos / "IMG_1.png").read_bytes()
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), str(photos / "*.jpg"), "--out", str(photos)]) == 2
    out = capsys.readouterr().out
    assert "IMG_1.png" in out and "--overwrite" in out and "another folder" in out
    assert (photos / "IMG_1.png").read_bytes() == mine and not (photos / "IMG_1_overlay.png").exists()
    # Outputs of an earlier prediction may be replaced: a rerun into the same folder works.
    out_dir = tmp_path / "out"
    predict_files(tiny_checkpoint, [photos / "IMG_1.jpg"], out_dir)
    predict_files(tiny_checkpoint, [photos / "IMG_1.jpg"], out_dir)
    # --overwrite replaces the user's file, as asked.
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), str(photos / "IMG_1.jpg"), "--out", str(photos),
                 "--overwrite"]) == 0
    assert np.asarray(Image.open(photos / "IMG_1.png")).shape == (40, 48)


def test_predict_refuses_inputs_whose_outputs_collide(tiny_checkpoint: Path, tmp_path: Path) -> None:
    a, a_overlay = _scene(tmp_path / "a.jpg"), _scene(tmp_path / "a_overlay.png")
    with pytest.raises(ValueError, match=r"a.jpg and .*a_overlay.png would both write a_overlay.png"):
        predict_files(tiny_checkpoint, [a, a_overlay], tmp_path / "out")
    b = _scene(tmp_path / "b.png")
    with pytest.raises(ValueError, match="would overwrite the input"):
        predict_files(tiny_checkpoint, [b], tmp_path)
    assert not (tmp_path / "out").exists(), "refused before any work"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        predict_files(tiny_checkpoint, [b], tmp_path / "file")


def test_banded_png_outputs_equal_pils(tmp_path: Path) -> None:
    """Masks and overlays are written a band at a time; PIL reads back exactly what it would write."""
    from pixelwise.data.classes import class_info
    from pixelwise.inference.predict import write_outputs

    generator = np.random.default_rng(0)
    pixels = generator.integers(0, 256, (37, 29, 3), dtype=np.uint8)
    labels = generator.integers(0, 5, (37, 29)).astype(np.uint8)
    classes = class_info([f"c{i}" for i in range(5)])
    write_outputs(pixels, labels, classes, tmp_path / "m.png", tmp_path / "o.png", alpha=0.4)
    mask, reference = Image.open(tmp_path / "m.png"), label_image(labels, classes)
    assert mask.mode == "P" and np.array_equal(np.asarray(mask), labels)
    assert mask.getpalette()[:15] == reference.getpalette()[:15]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), overlay(pixels, labels, classes, 0.4))
    wide = generator.integers(0, 300, (9, 7)).astype(np.uint16)
    write_png_bands(tmp_path / "w.png", 9, 7, [wide[:4], wide[4:]])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "w.png")).astype(np.uint16), wide)
    with pytest.raises(ValueError, match="bands hold 4 rows, the image 9"):
        write_png_bands(tmp_path / "x.png", 9, 7, [wide[:4]])
    assert not (tmp_path / "x.png").exists() and not list(tmp_path.glob(".x.png*")), "nothing half-written"


# --------------------------------------------------------------------------- 4. recipe values

@pytest.mark.parametrize("override, key", [
    ("data.batch_size=0", "data.batch_size"), ("train.eval_every=0", "train.eval_every"),
    ("train.checkpoint_every=0", "train.checkpoint_every"), ("train.iterations=0", "train.iterations"),
    ("train.iterations=-5", "train.iterations"), ("optim.clip_grad_norm=0", "optim.clip_grad_norm"),
    ("optim.weight_decay=-0.1", "optim.weight_decay"), ("optim.lr=-0.01", "optim.lr"), ("optim.lr=0", "optim.lr"),
    ("optim.momentum=1.5", "optim.momentum"), ("data.workers=-1", "data.workers"),
    ("data.crop_size=[0, 32]", "data.crop_size"), ("data.scale_range=[2.0, 0.5]", "data.scale_range"),
    ("train.amp=fp8", "train.amp"), ("optim.name=adam", "optim.name"), ("schedule.name=step", "schedule.name"),
    ("schedule.warmup_iters=-1", "schedule.warmup_iters"), ("train.time_budget_min=0", "train.time_budget_min"),
    ("optim.lr=.nan", "optim.lr"), ("data.hflip=1.5", "data.hflip"), ("data.color_jitter=-0.2", "data.color_jitter"),
    ("data.color_jitter=[0.2, 0.2]", "data.color_jitter"), ("data.color_jitter=[0.2, 0.2, 0.2, 0.7]", "data.color_jitter"),
])
def test_values_of_the_right_type_that_cannot_work_are_refused_by_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{key} = .* cannot work: it must be"):
        load_config(None, [override])


def test_yaml_numbers_without_a_dot_are_numbers(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("optim:\n  lr: 1e-3\n  weight_decay: 5E-4\n")  # YAML 1.1 reads both as strings
    config = load_config(recipe, ["schedule.min_lr=1e-6"])
    assert (config.optim.lr, config.optim.weight_decay, config.schedule.min_lr) == (0.001, 0.0005, 1e-6)
    with pytest.raises(ConfigError, match="optim.lr = 'fast' should be float"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="schedule.min_lr .* is above optim.lr"):
        load_config(None, ["optim.lr=0.001", "schedule.min_lr=0.01"])


def test_num_classes_that_disagrees_with_classes_txt_is_refused(tmp_path: Path) -> None:
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "masks" / "a.png")
    (tmp_path / "classes.txt").write_text("road\nsky\ncar\n")
    with pytest.raises(ValueError, match=r"classes.txt names 3 classes but num_classes=4"):
        create_dataset("folder", root=tmp_path, num_classes=4)
    assert create_dataset("folder", root=tmp_path, num_classes=3).classes.names == ("road", "sky", "car")


# --------------------------------------------------------------------------- 5. resume

def test_resume_applies_a_new_length_and_refuses_other_changes(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_tiny(run))
    with pytest.raises(ConfigError, match=r"optim.lr: 0.001 -> 0.01.*--overwrite"):
        train(_tiny(run, "optim.lr=0.01", "train.iterations=4"), resume=True)
    assert load_config(run / "config.yaml").train.iterations == 2, "a refused resume leaves the record alone"
    with pytest.raises(ConfigError, match="below the 2 iterations"):
        train(_tiny(run, "train.iterations=1"), resume=True)
    result = train(_tiny(run, "train.iterations=4"), resume=True)
    assert result.iterations == 4 and load_checkpoint(run / "last.pt")["total_iterations"] == 4
    assert load_config(run / "config.yaml").train.iterations == 4, "config.yaml says what ran"


# --------------------------------------------------------------------------- 6. worker errors

def test_a_data_error_in_a_loader_worker_arrives_as_its_own_message(tmp_path: Path) -> None:
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for stem in ("a", "b", "c", "d"):
        Image.new("RGB", (16, 16)).save(tmp_path / "images" / f"{stem}.png")
        Image.new("L", (16, 16)).save(tmp_path / "masks" / f"{stem}.png")
    (tmp_path / "images" / "c.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    config = load_config(None, tiny_recipe(tmp_path / "run", *TINY, "data.format=folder", f"data.root={tmp_path}",
                                           "data.options={num_classes: 2}", "data.val_split=all",
                                           "data.crop_size=[16, 16]", "data.workers=2", "data.batch_size=4"))
    with pytest.raises(DataError) as raised:
        train(config)
    message = str(raised.value)
    assert message.startswith(str(tmp_path / "images" / "c.png")) and "cannot decode" in message
    assert "Traceback" not in message and "worker" not in message and message.count("\n") == 0


def test_worker_message_keeps_plain_messages() -> None:
    assert worker_message(DataError("a.png: broken")) == "a.png: broken"


# --------------------------------------------------------------------------- 7. checkpoints on disk

def _flip_a_tensor_byte(path: Path) -> None:
    """Change one byte inside the largest tensor of a torch.save zip archive."""
    with zipfile.ZipFile(path) as archive:
        entry = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda i: i.file_size)
    with open(path, "r+b") as handle:
        handle.seek(entry.header_offset + 26)
        name_length, extra_length = (int.from_bytes(handle.read(2), "little") for _ in range(2))
        position = entry.header_offset + 30 + name_length + extra_length + entry.file_size // 2
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0x10]))


def test_a_damaged_checkpoint_is_refused_not_loaded(tiny_checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "best.pt"
    copy.write_bytes(tiny_checkpoint.read_bytes())
    assert load_checkpoint(copy)["checksum"]
    _flip_a_tensor_byte(copy)
    assert torch.load(copy, weights_only=True)["model"], "torch itself loads it without a word"
    with pytest.raises(ValueError, match=r"best.pt' is damaged.*checksum.*other checkpoint"):
        load_checkpoint(copy)


def test_interrupted_writes_leave_no_orphans_behind(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_tiny(run))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    orphan, live = run / f".last.pt.{dead}.tmp", run / f".best.pt.{os.getpid()}.tmp"
    orphan.write_bytes(b"x" * 100)
    live.write_bytes(b"y")
    assert remove_orphan_temporaries(run) == [orphan]
    assert live.exists(), "a write still in progress (its process is alive) is left alone"
    live.unlink()
    orphan.write_bytes(b"x")
    train(_tiny(run, "train.iterations=3"), resume=True)
    assert not orphan.exists(), "the next start cleans them"


# --------------------------------------------------------------------------- 8. smaller things

def test_a_folder_passed_as_a_checkpoint_names_the_file_to_pass(tiny_checkpoint: Path,
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder, image = tiny_checkpoint.parent, _scene(tmp_path / "x.png")
    assert main(["predict", "--checkpoint", str(folder), str(image), "--out", str(tmp_path / "o")]) == 2
    assert f"is a folder, not a file; pass {folder / 'best.pt'}" in capsys.readouterr().out
    assert main(["predict", "--model", str(tmp_path), str(image), "--out", str(tmp_path / "o")]) == 2
    assert "is a folder, not a file" in capsys.readouterr().out


def test_a_hand_made_checkpoint_without_a_palette_predicts(tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = load_checkpoint(tiny_checkpoint)
    state["classes"] = {"names": state["classes"]["names"]}
    save_checkpoint(state, tmp_path / "hand.pt")
    report = predict_files(tmp_path / "hand.pt", [_scene(tmp_path / "a.png")], tmp_path / "out")
    assert report.ok and Image.open(report.images[0].mask).mode == "P"
    state["classes"] = ["road", "sky"]
    save_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="needs a list of class names under 'names'"):
        predict_files(tmp_path / "bad.pt", [tmp_path / "a.png"], tmp_path / "out2")


def test_analysis_commands_with_huge_sizes_answer_without_allocating(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shapes", "unet", "--size", "100000", "100000"]) == 0  # traced on the meta device
    assert "100000×100000" in capsys.readouterr().out
    assert main(["overlap", "--kernel", "3", "--stride", "2", "--size", "1000000"]) == 2
    assert "use a smaller --size" in capsys.readouterr().out
    png = tmp_path / "missing" / "folder" / "map.png"
    assert main(["overlap", "--kernel", "3", "--stride", "2", "--size", "40", "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.is_file() and "(the top-left 64×64 of 81×81)" in out


# --------------------------------------------------------------------------- 9. progress in logs

def test_progress_prints_plain_lines_where_there_is_no_terminal() -> None:
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=False, width=200)
    with ProgressReport(console, "train", interval=0.0) as progress:
        progress.update(total=4)
        for iteration in range(1, 5):
            progress.update(iteration, status=f"loss {1 / iteration:.2f}")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("train: 1/4 · loss 1.00 · 0:00 elapsed")
    assert lines[-1].startswith("train: 4/4 · loss 0.25")
    quiet = io.StringIO()
    with ProgressReport(Console(file=quiet, force_terminal=False), "predict", interval=3600.0) as progress:
        for done in range(1, 4):
            progress.update(done, 3)
    assert quiet.getvalue().splitlines() == [quiet.getvalue().splitlines()[0]] and "predict: 3/3" in quiet.getvalue(), \
        "between intervals nothing; at the end one line"


# --------------------------------------------------------------------------- the command line

def test_the_cli_prints_user_errors_and_keeps_tracebacks_of_bugs(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import pixelwise.cli as cli

    def bug(args) -> int:
        raise RuntimeError("internal failure")

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["encoders"].set_defaults(run=bug)
    with pytest.raises(RuntimeError, match="internal failure"):
        main(["encoders"])
    assert main(["train", "data.batch_size=0"]) == 2
    assert "error: data.batch_size = 0 cannot work" in capsys.readouterr().out
    with pytest.raises(ConfigError):
        main(["--debug", "train", "data.batch_size=0"])
