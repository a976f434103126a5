"""The data checker and ``pixelwise check-data``, on tiny fixtures written here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.cli import main
from pixelwise.data.checks import check_dataset
from pixelwise.data.classes import class_info

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"
H, W = 8, 12


def rgb(seed: int = 0, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None, **params) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path, **params)
    return path


def mask(value: int = 0, height: int = H, width: int = W) -> np.ndarray:
    """Columns 0-3 hold class 0, 4-7 class 1, 8-11 ``value``."""
    array = np.zeros((height, width), np.uint8)
    array[:, 4:8] = 1
    array[:, 8:] = value
    return array


def good_folder(root: Path) -> Path:
    for split, stems in (("train", ["a", "b"]), ("val", ["c"])):
        for stem in stems:
            save(root / "images" / split / f"{stem}.png", rgb())
            save(root / "masks" / split / f"{stem}.png", mask(2 if stem != "b" else 255))
    return root


def bad_folder(root: Path) -> Path:
    """One split with a sample of every problem, and images the checker handles (notes only)."""
    images, masks = root / "images", root / "masks"
    save(images / "ok.png", rgb()), save(masks / "ok.png", mask())
    truncated = save(images / "truncated.png", rgb(height=64, width=64))
    truncated.write_bytes(truncated.read_bytes()[:200])
    save(masks / "truncated.png", mask(height=64, width=64))
    save(images / "lonely.png", rgb())
    save(masks / "orphan.png", mask())
    save(images / "small.png", rgb(height=H - 2)), save(masks / "small.png", mask())
    save(images / "labels.png", rgb()), save(masks / "labels.png", mask(value=9))
    save(images / "colour.png", rgb()), save(masks / "colour.png", rgb(1))
    save(images / "deep.png", np.full((H, W), 40000, np.uint16)), save(masks / "deep.png", mask())
    save(images / "alpha.png", np.zeros((H, W, 4), np.uint8), "RGBA"), save(masks / "alpha.png", mask())
    save(images / "gray.png", np.zeros((H, W), np.uint8)), save(masks / "gray.png", mask())
    rotated = Image.fromarray(rgb())
    exif = rotated.getexif()
    exif[0x0112] = 6
    save(images / "rotated.jpg", rgb(), exif=exif.tobytes()), save(masks / "rotated.png", mask(height=W, width=H))
    return root


def test_clean_data_set_report(tmp_path: Path) -> None:
    report = check_dataset("folder", good_folder(tmp_path), num_classes=3)
    assert report.ok and report.problems == [] and list(report.splits) == ["train", "val"]
    train = report.splits["train"]
    assert train.pairs == 2 and dict(train.sizes) == {(H, W): 2}
    assert train.class_pixels.tolist() == [64, 64, 32] and train.ignore_pixels == 32 and train.invalid_pixels == 0
    assert report.splits["val"].class_pixels.tolist() == [32, 32, 32]
    assert report.classes.num_classes == 3 and report.seconds > 0
    only_val = check_dataset("folder", tmp_path, split="val", num_classes=3, workers=1)
    assert list(only_val.splits) == ["val"]


def test_every_problem_is_collected_with_its_file(tmp_path: Path) -> None:
    report = check_dataset("folder", bad_folder(tmp_path), num_classes=3)
    found = {(p.kind, Path(p.file).name) for p in report.problems}
    assert found == {("unreadable", "truncated.png"), ("unpaired-image", "lonely.png"),
                     ("unpaired-mask", "orphan.png"), ("size-mismatch", "small.png"),
                     ("bad-labels", "labels.png"), ("rgb-mask", "colour.png")}
    messages = {p.kind: p.message for p in report.problems}
    assert "images/small.png: image is 12×6 (W×H) but its mask" in messages["size-mismatch"]
    assert "9: 32 px" in messages["bad-labels"] and "num_classes" in messages["bad-labels"]
    assert "mask_colors" in messages["rgb-mask"]
    assert report.splits["all"].pairs == 9 and report.splits["all"].invalid_pixels == 32
    notes = {note.split(" (")[0]: files for note, files in report.notes.items()}
    assert notes["16-bit image"] == ["images/deep.png"] and notes["RGBA image"] == ["images/alpha.png"]
    assert notes["grayscale image"] == ["images/gray.png"]
    assert notes["EXIF orientation 6 applied"] == ["images/rotated.jpg"]


def test_checker_and_load_agree(tmp_path: Path) -> None:
    from pixelwise.data.io import DataError
    from pixelwise.data.registry import create_dataset

    dataset = create_dataset("folder", root=bad_folder(tmp_path), num_classes=3, strict=False)
    failing = set()
    for index in range(len(dataset)):
        try:
            dataset.load(index)
        except DataError as error:
            failing.add(Path(error.path).name)
    report = check_dataset("folder", tmp_path, num_classes=3)
    assert failing == {Path(p.file).name for p in report.problems if p.kind not in ("unpaired-image", "unpaired-mask")}


def test_unknown_colours_are_reported(tmp_path: Path) -> None:
    info = class_info(["a", "b"], [(0, 0, 0), (255, 255, 255)])
    colours = np.zeros((H, W, 3), np.uint8)
    colours[:, :6] = 255
    colours[0, 0] = (1, 2, 3)
    save(tmp_path / "images" / "x.png", rgb()), save(tmp_path / "masks" / "x.png", colours)
    report = check_dataset("folder", tmp_path, classes=info, mask_colors="palette")
    assert [(p.kind, Path(p.file).name) for p in report.problems] == [("unknown-colors", "x.png")]
    assert "(1, 2, 3): 1 px" in report.problems[0].message
    assert report.splits["all"].class_pixels.tolist() == [0, 0]  # the mask could not be read


def test_empty_split_and_missing_layout(tmp_path: Path) -> None:
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "masks" / "train").mkdir(parents=True)
    report = check_dataset("folder", tmp_path, num_classes=3)
    assert [(p.kind, p.split) for p in report.problems] == [("empty", "train")]
    report = check_dataset("camvid", tmp_path)
    assert [p.kind for p in report.problems] == ["empty"] and "no split" in report.problems[0].message
    (tmp_path / "val").mkdir()
    report = check_dataset("camvid", tmp_path)
    assert [p.kind for p in report.problems] == ["layout"] and "valannot" in report.problems[0].file
    report = check_dataset("camvid", tmp_path / "absent")
    assert [p.kind for p in report.problems] == ["layout"] and "folder not found" in report.problems[0].message


def test_voc_split_list_problems(tmp_path: Path) -> None:
    lists = tmp_path / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for stem in ("a", "b", "c"):
        save(tmp_path / "JPEGImages" / f"{stem}.jpg", rgb())
    save(tmp_path / "SegmentationClass" / "a.png", mask(255))
    save(tmp_path / "SegmentationClass" / "c.png", mask(21))
    (lists / "train.txt").write_text("a\nb\ngone\n")
    (lists / "val.txt").write_text("c\n")
    report = check_dataset("voc", tmp_path)
    assert [(p.split, p.kind, Path(p.file).name) for p in report.problems] == [
        ("train", "unpaired-image", "b.jpg"), ("train", "missing-file", "gone.jpg"), ("val", "bad-labels", "c.png")]
    assert "train.txt" in report.problems[1].message and "21: 32 px" in report.problems[2].message
    assert report.splits["train"].pairs == 1 and report.splits["train"].ignore_pixels == 32


def test_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown data set format 'camvd'.*camvid"):
        check_dataset("camvd", tmp_path)


def test_cli_clean(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["check-data", "--format", "folder", "--root", str(good_folder(tmp_path)), "--num-classes", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "No problems found" in out and "class 2" in out and "12×8: 2" in out


def test_cli_problems(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["check-data", "--format", "folder", "--root", str(bad_folder(tmp_path)), "--num-classes", "3"])
    out = capsys.readouterr().out
    assert code == 1 and "6 problem(s)" in out
    assert str(tmp_path / "images" / "truncated.png") in out and "[all]" in out and "EXIF orientation 6" in out


def test_cli_json_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["check-data", "--format", "folder", "--root", str(bad_folder(tmp_path)), "--num-classes", "3",
                 "--split", "all", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 1 and data["ok"] is False and len(data["problems"]) == 6
    assert data["splits"]["all"]["sizes"] == {"12x6": 1, "12x8": 6, "8x12": 1}  # truncated.png: no size
    assert main(["check-data", "--format", "nope", "--root", str(tmp_path)]) == 2
    assert main(["check-data", "--format", "folder", "--root", str(tmp_path)]) == 2  # no classes given
    assert "classes.txt" in capsys.readouterr().out


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"real CamVid not at {CAMVID}")
def test_real_camvid_val_is_clean() -> None:
    report = check_dataset("camvid", CAMVID, split="val")
    val = report.splits["val"]
    assert report.ok and val.pairs == 101 and dict(val.sizes) == {(360, 480): 101}
    assert val.invalid_pixels == 0 and val.class_pixels.sum() + val.ignore_pixels == 101 * 360 * 480
