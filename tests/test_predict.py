"""Prediction on image files: masks, overlays and probabilities from a real (tiny) trained model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pixelwise.cli import main
from pixelwise.data import DataError, read_image
from pixelwise.data.synthetic import SyntheticShapes
from pixelwise.data.transforms import val_transform
from pixelwise.inference.loading import LoadedModel, load_model
from pixelwise.inference.logits import InferenceOptions, predict_logits
from pixelwise.inference.predict import RecordedViews, colour_table, expand_inputs, predict_files


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint: Path) -> LoadedModel:
    return load_model(tiny_checkpoint)


def _save_scene(path: Path, size: tuple[int, int], index: int = 0) -> Path:
    """A synthetic scene (shapes on textures: several classes to predict) as an image file."""
    image, _ = SyntheticShapes("test", size=size, length=index + 1).load(index)
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
    return path


def _logits(loaded: LoadedModel, path: Path, **options) -> torch.Tensor:
    """The model's logits on an image file, read and normalised independently of predict.py."""
    image = read_image(path)
    normalised, _ = val_transform(**loaded.normalization)(image, torch.zeros(image.shape[-2:], dtype=torch.int64))
    return predict_logits(loaded.model, normalised[None], **options)[0]


def _crop_to(image: Image.Image, top: int, left: int, path: Path, size: int = 128) -> Path:
    image.crop((left, top, left + size, top + size)).save(path)
    return path


def _indices(path: Path) -> np.ndarray:
    with Image.open(path) as mask:
        assert mask.mode == "P"
        return np.asarray(mask)


def test_mask_is_a_palette_png_of_the_models_argmax(tiny_checkpoint: Path, loaded: LoadedModel,
                                                    tmp_path: Path) -> None:
    source = _save_scene(tmp_path / "scene.png", (50, 70))
    report = predict_files(tiny_checkpoint, [source], tmp_path / "out", save_probabilities=True,
                           probability_dtype="float32")
    [result] = report.images
    assert report.ok and result.size == (50, 70) and not result.tiled
    reference = _logits(loaded, source).argmax(0).numpy()
    assert np.array_equal(_indices(result.mask), reference)
    assert len(np.unique(reference)) > 1, "the tiny model should not predict one class everywhere"
    with Image.open(result.mask) as mask:
        palette = np.array(mask.getpalette()).reshape(-1, 3)
    classes = loaded.classes
    assert np.array_equal(palette[:classes.num_classes], np.array(classes.palette))
    assert not palette[classes.num_classes:].any()  # the ignore index (255) among them: black
    probs = np.load(result.probabilities)
    assert probs.shape == (classes.num_classes, 50, 70) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(probs.argmax(0), reference)


def test_overlay_blends_the_image_with_the_class_colours(tiny_checkpoint: Path, loaded: LoadedModel,
                                                         tmp_path: Path) -> None:
    source = _save_scene(tmp_path / "scene.jpg", (40, 56))
    [result] = predict_files(tiny_checkpoint, [source], tmp_path, overlay_alpha=0.5).images
    assert result.probabilities is None and not (tmp_path / "scene_probs.npy").exists()
    with Image.open(result.overlay) as overlay:
        assert overlay.mode == "RGB" and overlay.size == (56, 40)
        blended = np.asarray(overlay).astype(float)
    pixels = read_image(source).permute(1, 2, 0).numpy().astype(float)
    colours = colour_table(loaded.classes)[_indices(result.mask)]
    assert np.abs(blended - (0.5 * pixels + 0.5 * colours)).max() <= 0.5


def test_test_time_augmentation_matches_predict_logits(tiny_checkpoint: Path, loaded: LoadedModel,
                                                       tmp_path: Path) -> None:
    source = _save_scene(tmp_path / "scene.png", (48, 64))
    [result] = predict_files(tiny_checkpoint, [source], tmp_path / "out",
                             InferenceOptions.create(scales=(0.75, 1.0), flip=True), save_probabilities=True).images
    reference = _logits(loaded, source, scales=(0.75, 1.0), flip=True)
    assert np.array_equal(_indices(result.mask), reference.argmax(0).numpy())
    probs = np.load(result.probabilities)
    assert probs.dtype == np.float16
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=2e-3)


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for index, name in enumerate(("a.png", "b.jpg", "c.PNG")):
        _save_scene(folder / name, (32, 40), index)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_folders_and_globs_expand_to_their_images(tiny_checkpoint: Path, loaded: LoadedModel,
                                                  tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    assert [p.name for p in expand_inputs([folder])] == ["a.png", "b.jpg", "c.PNG"]
    assert [p.name for p in expand_inputs([str(folder / "*.png")])] == ["a.png"]  # glob is case-sensitive
    # The same file through a folder, a glob and by name is predicted once.
    assert len(expand_inputs([folder, str(folder / "*.jpg"), folder / "a.png"])) == 3
    report = predict_files(loaded, [folder], tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".pixelwise-predict.json", "a.png", "a_overlay.png", "b.png", "b_overlay.png", "c.png", "c_overlay.png"]
    assert [image.source.name for image in report.images] == ["a.png", "b.jpg", "c.PNG"]


@pytest.mark.parametrize(("pattern", "message"), [
    ("images/*.tif", "matched no image files"),
    ("images/missing.png", "does not exist"),
    ("empty", "holds no image files"),
])
def test_inputs_that_name_nothing_are_errors(tmp_path: Path, pattern: str, message: str) -> None:
    _folder(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=message):
        expand_inputs([str(tmp_path / pattern)])


def test_colliding_or_overwriting_outputs_are_refused_before_any_work(loaded: LoadedModel, tmp_path: Path) -> None:
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
    _save_scene(tmp_path / "x" / "scene.png", (32, 32))
    _save_scene(tmp_path / "y" / "scene.jpg", (32, 32))
    with pytest.raises(ValueError, match="would both write scene.png"):
        predict_files(loaded, [tmp_path / "x", tmp_path / "y"], tmp_path / "out")
    with pytest.raises(ValueError, match="would overwrite the input"):
        predict_files(loaded, [tmp_path / "x"], tmp_path / "x")
    assert not (tmp_path / "out").exists()


def test_corrupt_image_is_an_error_naming_the_file(tiny_checkpoint: Path, loaded: LoadedModel, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    folder = _folder(tmp_path)
    good = (folder / "a.png").read_bytes()
    (folder / "broken.png").write_bytes(good[: len(good) // 2])  # truncated mid-stream
    with pytest.raises(DataError, match="broken.png"):
        predict_files(loaded, [folder], tmp_path / "out")
    report = predict_files(loaded, [folder], tmp_path / "out", skip_unreadable=True)
    assert [path.name for path, _ in report.failures] == ["broken.png"] and len(report.images) == 3
    assert not report.ok

    argv = ["predict", "--checkpoint", str(tiny_checkpoint), str(folder), "--out", str(tmp_path / "cli")]
    assert main(argv) == 2
    assert "broken.png" in capsys.readouterr().out
    assert main([*argv, "--skip-unreadable"]) == 1
    printed = capsys.readouterr().out
    assert "skipped" in printed and "broken.png" in printed and "of 3 images" in printed


def test_cli_writes_outputs_and_says_where(tiny_checkpoint: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    source = _save_scene(tmp_path / "scene.png", (36, 44))
    out = tmp_path / "predictions"
    assert main(["predict", "--checkpoint", str(tiny_checkpoint), str(source), "--out", str(out),
                 "--probabilities", "--mode", "slide", "--window", "32", "32", "--flip"]) == 0
    assert str(out) in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} == {".pixelwise-predict.json", "scene.png", "scene_overlay.png",
                                               "scene_probs.npy"}


def test_large_image_is_tiled_and_agrees_with_whole_and_sliding_prediction(tiny_checkpoint: Path,
                                                                          loaded: LoadedModel,
                                                                          tmp_path: Path) -> None:
    """300×400 with the threshold at 10 000 pixels goes tiled.

    With the default 512 window, one window covers the image: one forward pass on the whole
    image, emitted unblended, so the mask equals whole-image prediction exactly. With 128×128
    windows the tiled path must equal sliding-window ``predict_logits`` exactly (same windows,
    same blending order), and whole-image prediction on most pixels (windows see less context).
    """
    source = _save_scene(tmp_path / "large.png", (300, 400))
    whole = _logits(loaded, source).argmax(0).numpy()

    [single] = predict_files(loaded, [source], tmp_path / "one", RecordedViews(flip=True),
                             tile_threshold_pixels=10_000).images
    assert single.tiled and any("not applied" in note for note in single.notes)
    assert np.array_equal(_indices(single.mask), whole)

    [tiled] = predict_files(loaded, [source], tmp_path / "tiles", RecordedViews(InferenceOptions.create(
        window=128, stride=96)), tile_threshold_pixels=10_000, save_probabilities=True).images
    sliding = _logits(loaded, source, mode="slide", window=128, stride=96).argmax(0).numpy()
    labels = _indices(tiled.mask)
    assert np.array_equal(labels, sliding)
    probs = np.load(tiled.probabilities, mmap_mode="r")
    assert probs.shape == (loaded.classes.num_classes, 300, 400)
    # Placement: pixels that only the first and the last window cover are those windows' own
    # predictions, put back where the windows were cut. (Agreement with whole-image prediction
    # measures the model, not the tiling: a 4-step network's argmax follows far context, and
    # 45% to 90% of pixels agree, by seed.)
    with Image.open(source) as image:
        for top, left, region in ((0, 0, np.s_[:80, :80]), (172, 272, np.s_[-32:, -32:])):
            window = _logits(loaded, _crop_to(image, top, left, tmp_path / f"window{top}.png")).softmax(0)
            np.testing.assert_allclose(probs[(slice(None), *region)].astype(np.float32),
                                       window[(slice(None), *region)].numpy(), atol=2e-3)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=2e-3)
    with Image.open(tiled.overlay) as overlay:
        assert overlay.size == (400, 300)
