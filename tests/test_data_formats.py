"""Reading images and masks, and every data set format, on tiny fixtures written here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps
from torchvision import tv_tensors

from pixelwise.cli import main
from pixelwise.data import formats  # noqa: F401  (registers the formats)
from pixelwise.data.classes import class_info, default_palette
from pixelwise.data.io import (DataError, check_labels, decode_image, parse_color_table, read_image, read_mask,
                               read_pair)
from pixelwise.data.registry import create_dataset, list_datasets

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "camvid"
H, W = 8, 12


def rgb(seed: int = 0, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def labels(num_classes: int, seed: int = 0, height: int = H, width: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, num_classes, (height, width), dtype=np.uint8)


def save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def save_palette_mask(path: Path, array: np.ndarray, palette=default_palette(256)) -> Path:
    image = Image.fromarray(array, "L").convert("P")
    image.putpalette([v for colour in palette for v in colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def exif_jpeg(path: Path, orientation: int = 6) -> Path:
    """A 12×8 (W×H) JPEG of four flat quadrants, stored un-rotated with an EXIF orientation tag."""
    array = np.zeros((H, W, 3), dtype=np.uint8)
    array[: H // 2, : W // 2] = (255, 0, 0)
    array[: H // 2, W // 2:] = (0, 255, 0)
    array[H // 2:, : W // 2] = (0, 0, 255)
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif.tobytes(), quality=100)
    return path


# ---------------------------------------------------------------------------- images

def test_rgb_png_round_trip(tmp_path: Path) -> None:
    array = rgb()
    image = read_image(save(tmp_path / "a.png", array))
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, H, W)
    assert np.array_equal(image.permute(1, 2, 0).numpy(), array)


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16).repeat(2, axis=0)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    pixels, notes = decode_image(path)
    assert pixels[0].tolist() == [[0] * 3, [1] * 3, [128] * 3, [255] * 3]
    assert any("16-bit" in note for note in notes)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    array = np.concatenate([rgb(), np.full((H, W, 1), 7, np.uint8)], axis=2)
    pixels, notes = decode_image(save(tmp_path / "a.png", array, "RGBA"))
    assert np.array_equal(pixels, array[..., :3]) and any("alpha" in note for note in notes)


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    gray = rgb()[..., 0]
    pixels, _ = decode_image(save(tmp_path / "g.png", gray, "L"))
    assert np.array_equal(pixels, np.repeat(gray[..., None], 3, axis=2))


def test_palette_image_gives_colours(tmp_path: Path) -> None:
    indices = labels(4)
    pixels, _ = decode_image(save_palette_mask(tmp_path / "p.png", indices))
    assert np.array_equal(pixels, np.array(default_palette(256), np.uint8)[indices])


def test_cmyk_image_converts(tmp_path: Path) -> None:
    path = tmp_path / "c.tif"
    Image.fromarray(rgb()).convert("CMYK").save(path)
    pixels, notes = decode_image(path)
    assert np.array_equal(pixels, np.asarray(Image.open(path).convert("RGB"))) and "CMYK" in notes[0]


def test_exif_rotation_follows_the_mask(tmp_path: Path) -> None:
    path = exif_jpeg(tmp_path / "r.jpg")
    stored = np.asarray(Image.open(path).convert("RGB"))
    upright = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert stored.shape[:2] == (H, W) and upright.shape[:2] == (W, H)
    # mask drawn on the upright view (as any viewer shows it): rotate
    assert np.array_equal(read_image(path, target_size=(W, H)).permute(1, 2, 0).numpy(), upright)
    # mask drawn on the stored pixels: leave them
    assert np.array_equal(read_image(path, target_size=(H, W)).permute(1, 2, 0).numpy(), stored)
    # no mask: as a viewer shows it
    assert read_image(path).shape == (3, W, H)
    _, notes = decode_image(path, target_size=(H, W))
    assert "ignored" in notes[0]


def test_exif_rotated_pair_with_neither_size_is_a_mismatch(tmp_path: Path) -> None:
    image = exif_jpeg(tmp_path / "r.jpg")
    mask = save(tmp_path / "r.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DataError, match="r.jpg.*12×8.*r.png.*5×5") as caught:
        read_pair(image, mask, num_classes=2)
    assert caught.value.kind == "size-mismatch"
    upright_mask = save(tmp_path / "u.png", np.zeros((W, H), np.uint8))
    assert read_pair(image, upright_mask, num_classes=2)[0].shape == (3, W, H)


@pytest.mark.parametrize("content", [b"not an image at all", b""], ids=["text", "empty"])
def test_non_image_file_is_a_data_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"x\.png: cannot decode.*re-download") as caught:
        read_image(path)
    assert isinstance(caught.value, ValueError) and caught.value.path == str(path)


def test_truncated_file_is_caught(tmp_path: Path) -> None:
    for name in ("t.png", "t.jpg"):
        path = tmp_path / name
        Image.fromarray(rgb(height=64, width=64)).save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        with pytest.raises(DataError, match=f"{name}: cannot decode"):
            read_image(path)
    assert not ImageFile.LOAD_TRUNCATED_IMAGES


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.png: file not found"):
        read_mask(tmp_path / "nope.png")


# ---------------------------------------------------------------------------- masks

def test_palette_mask_gives_indices_not_colours(tmp_path: Path) -> None:
    indices = labels(21)
    indices[0, 0] = 255
    mask = read_mask(save_palette_mask(tmp_path / "m.png", indices))
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64
    assert np.array_equal(mask.numpy(), indices)


def test_16_bit_mask_keeps_values(tmp_path: Path) -> None:
    values = np.array([[0, 1, 300, 1000]], dtype=np.uint16)
    path = tmp_path / "m16.png"
    Image.fromarray(values).save(path)
    assert read_mask(path).tolist() == [[0, 1, 300, 1000]]


def test_rgb_mask_without_table_is_an_error(tmp_path: Path) -> None:
    path = save(tmp_path / "colour.png", rgb())
    with pytest.raises(DataError, match="colour.png: RGB mask where a class-index mask was expected.*mask_colors"):
        read_mask(path)
    gray = save(tmp_path / "gray.png", np.repeat(labels(3)[..., None], 3, axis=2))
    with pytest.raises(DataError, match="channels are equal"):
        read_mask(gray)


def test_rgb_mask_with_colour_table(tmp_path: Path) -> None:
    info = class_info(["a", "b", "c"], [(0, 0, 0), (255, 0, 0), (0, 0, 255)])
    indices = labels(3)
    colours = np.array(info.palette, np.uint8)[indices]
    colours[0, 0] = (9, 9, 9)
    path = save(tmp_path / "m.png", colours)
    table = {"0,0,0": 0, "#ff0000": 1, (0, 0, 255): 2, (9, 9, 9): 255}
    expected = indices.astype(np.int64)
    expected[0, 0] = 255
    assert np.array_equal(read_mask(path, table).numpy(), expected)
    with pytest.raises(DataError, match=r"m.png: 1 colour\(s\) not in the colour table: \(9, 9, 9\): 1 px"):
        read_mask(path, info)  # the palette alone lacks the void colour
    rgba = save(tmp_path / "rgba.png", np.concatenate([colours, np.full((H, W, 1), 255, np.uint8)], 2), "RGBA")
    assert np.array_equal(read_mask(rgba, table).numpy(), expected)


def test_colour_table_rejects_ambiguity() -> None:
    with pytest.raises(ValueError, match="classes 0 and 1"):
        parse_color_table({(1, 2, 3): 0, "1,2,3": 1})
    with pytest.raises(ValueError, match="not an RGB triple"):
        parse_color_table({(1, 2): 0})


def test_check_labels_lists_bad_values() -> None:
    mask = np.zeros((4, 4), np.int64)
    mask[0, :3] = 12
    mask[1, 0] = -1
    mask[2, 0] = 255
    check_labels(np.zeros((2, 2), np.int64), 3, 255, "ok.png")
    with pytest.raises(DataError, match=r"m.png: label values outside \[0, 3\).*12: 3 px, -1: 1 px.*num_classes"):
        check_labels(mask, 3, 255, "m.png")


# ---------------------------------------------------------------------------- formats

def test_all_formats_are_registered() -> None:
    assert {"folder", "voc", "cityscapes", "ade20k", "camvid"} <= set(list_datasets())


def _folder(root: Path, stems: list[str], num_classes: int = 3, sub: str = "") -> dict[str, tuple]:
    written = {}
    for seed, stem in enumerate(stems):
        image, mask = rgb(seed), labels(num_classes, seed)
        save(root / "images" / sub / f"{stem}.png", image)
        save(root / "masks" / sub / f"{stem}.png", mask)
        written[stem] = (image, mask)
    return written


def _assert_sample(dataset, index: int, image: np.ndarray, mask: np.ndarray) -> None:
    x, y = dataset[index]
    assert x.dtype == torch.float32 and x.shape == (3, *mask.shape) and type(x) is torch.Tensor
    assert y.dtype == torch.int64 and y.shape == mask.shape
    assert torch.allclose(x, torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    assert np.array_equal(y.numpy(), mask)


def test_folder_flat(tmp_path: Path) -> None:
    written = _folder(tmp_path, ["a", "b"])
    dataset = create_dataset("folder", root=tmp_path, classes=["sky", "road", "car"])
    assert len(dataset) == 2 and dataset.classes.names == ("sky", "road", "car")
    assert dataset.name(1) == "images/b.png" and dataset.classes.ignore_index == 255
    _assert_sample(dataset, 1, *written["b"])
    assert len(create_dataset("folder", root=tmp_path, split="all", num_classes=3)) == 2


def test_folder_split_lists_and_jpeg_images(tmp_path: Path) -> None:
    written = _folder(tmp_path, ["a", "b", "c"])
    save(tmp_path / "images" / "c.jpg", rgb(9))
    (tmp_path / "images" / "c.png").unlink()
    (tmp_path / "train.txt").write_text("a\nb\n\n")
    (tmp_path / "val.txt").write_text("c\n")
    (tmp_path / "classes.txt").write_text("x\ny\nz\n")
    train = create_dataset("folder", root=tmp_path, split="train")
    val = create_dataset("folder", root=tmp_path, split="val")
    assert len(train) == 2 and val.name(0) == "images/c.jpg" and train.classes.names == ("x", "y", "z")
    assert np.array_equal(val[0][1].numpy(), written["c"][1])
    assert formats.FolderDataset.available_splits(tmp_path) == ["train", "val"]


def test_folder_split_folders(tmp_path: Path) -> None:
    written = _folder(tmp_path, ["a", "b"], sub="train")
    _folder(tmp_path, ["c"], sub="val")
    dataset = create_dataset("folder", root=tmp_path, split="train", num_classes=3)
    assert len(dataset) == 2 and len(create_dataset("folder", root=tmp_path, split="val", num_classes=3)) == 1
    _assert_sample(dataset, 0, *written["a"])
    with pytest.raises(DataError, match="no split 'test'.*Splits here: \\['train', 'val'\\]"):
        create_dataset("folder", root=tmp_path, split="test", num_classes=3)


def test_folder_colour_masks(tmp_path: Path) -> None:
    info = class_info(["a", "b", "c"], [(10, 0, 0), (0, 20, 0), (0, 0, 30)])
    image, indices = rgb(), labels(3)
    save(tmp_path / "images" / "a.png", image)
    save(tmp_path / "masks" / "a.png", np.array(info.palette, np.uint8)[indices])
    dataset = create_dataset("folder", root=tmp_path, classes=info, mask_colors="palette")
    _assert_sample(dataset, 0, image, indices)
    with pytest.raises(DataError, match="RGB mask where a class-index mask was expected"):
        create_dataset("folder", root=tmp_path, classes=info).load(0)


def test_folder_needs_classes(tmp_path: Path) -> None:
    _folder(tmp_path, ["a"])
    with pytest.raises(ValueError, match="classes=.*num_classes=.*classes.txt"):
        create_dataset("folder", root=tmp_path)


def test_folder_unpaired_files_are_listed(tmp_path: Path) -> None:
    _folder(tmp_path, ["a", "b"])
    save(tmp_path / "images" / "lonely.png", rgb())
    save(tmp_path / "masks" / "orphan.png", labels(3))
    with pytest.raises(DataError, match=r"2 problems(?s:.*)lonely.png: image with no mask(?s:.*)orphan.png: mask "
                                        "with no image"):
        create_dataset("folder", root=tmp_path, num_classes=3)
    dataset = create_dataset("folder", root=tmp_path, num_classes=3, strict=False)
    assert len(dataset) == 2 and [p.kind for p in dataset.problems] == ["unpaired-image", "unpaired-mask"]


def test_folder_empty_and_missing(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(DataError, match="no image/mask pairs") as caught:
        create_dataset("folder", root=tmp_path, num_classes=3)
    assert caught.value.kind == "empty"
    with pytest.raises(DataError, match="folder not found"):
        create_dataset("folder", root=tmp_path / "absent", num_classes=3)


def test_load_raises_on_size_mismatch_and_bad_labels(tmp_path: Path) -> None:
    save(tmp_path / "images" / "a.png", rgb())
    save(tmp_path / "masks" / "a.png", labels(3, height=H + 1))
    save(tmp_path / "images" / "b.png", rgb())
    save(tmp_path / "masks" / "b.png", np.full((H, W), 7, np.uint8))
    dataset = create_dataset("folder", root=tmp_path, num_classes=3)
    with pytest.raises(DataError, match="a.png: image is 12×8.*masks/a.png is 12×9.*nearest"):
        dataset.load(0)
    with pytest.raises(DataError, match=r"b.png: label values outside \[0, 3\).*7: 96 px"):
        dataset.load(1)


def test_transform_is_applied(tmp_path: Path) -> None:
    _folder(tmp_path, ["a"])
    dataset = create_dataset("folder", root=tmp_path, num_classes=3, transform=lambda x, y: (x.flip(-1), y))
    x, _ = dataset[0]
    assert x.dtype == torch.uint8 and np.array_equal(x.numpy(), np.flip(rgb().transpose(2, 0, 1), -1))


def _voc(root: Path) -> dict[str, np.ndarray]:
    masks = {}
    for seed, stem in enumerate(["2007_000032", "2007_000039", "2008_000001"]):
        save(root / "JPEGImages" / f"{stem}.jpg", rgb(seed))
        mask = labels(21, seed)
        mask[0] = 255  # the object boundary
        save_palette_mask(root / "SegmentationClass" / f"{stem}.png", mask)
        masks[stem] = mask
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n2007_000039\n")
    (lists / "val.txt").write_text("2008_000001\n")
    return masks


def test_voc(tmp_path: Path) -> None:
    masks = _voc(tmp_path / "VOCdevkit" / "VOC2012")
    train = create_dataset("voc", root=tmp_path, split="train")
    assert len(train) == 2 and len(create_dataset("voc", root=tmp_path, split="val")) == 1
    x, y = train[1]
    assert x.shape == (3, H, W) and np.array_equal(y.numpy(), masks["2007_000039"]) and (y == 255).any()
    assert train.classes.num_classes == 21 and train.classes.names[15] == "person"
    assert train.classes.palette[1] == (128, 0, 0) and train.classes.palette[15] == (192, 128, 128)


def test_voc_train_aug(tmp_path: Path) -> None:
    root = tmp_path / "VOC2012"
    _voc(root)
    aug = labels(21, 5)
    save(root / "SegmentationClassAug" / "2007_000032.png", aug)
    save(root / "SegmentationClassAug" / "2007_000039.png", aug)
    (root / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("2007_000032\n2007_000039\n")
    dataset = create_dataset("voc", root=root, split="train_aug")
    assert len(dataset) == 2 and np.array_equal(dataset[0][1].numpy(), aug)
    assert formats.VOCDataset.available_splits(root) == ["train", "val", "train_aug"]
    with pytest.raises(DataError, match="trainval.txt: split list not found"):
        create_dataset("voc", root=root, split="trainval")


def test_cityscapes_maps_ids_to_train_ids(tmp_path: Path) -> None:
    ids = np.array([[0, 7, 8, 26, 33, 9, 1, 24, 31, 23, 4, 255]], np.uint8).repeat(H, axis=0)
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        stem = f"{city}_000000_000019"
        save(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rgb())
        save(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
        save(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_color.png", rgb())  # not a mask to read
    dataset = create_dataset("cityscapes", root=tmp_path, split="val")
    assert len(dataset) == 1 and dataset.name(0) == "leftImg8bit/val/frankfurt/frankfurt_000000_000019_leftImg8bit.png"
    assert dataset[0][1][0].tolist() == [255, 0, 1, 13, 18, 255, 255, 11, 16, 10, 255, 255]
    assert formats.CityscapesDataset.available_splits(tmp_path) == ["train", "val"]


def test_cityscapes_classes_match_the_official_table() -> None:
    from torchvision.datasets import Cityscapes

    official = sorted((c.train_id, c.name, c.color, c.id) for c in Cityscapes.classes if 0 <= c.train_id < 255)
    ours = [(i, name, colour, label_id) for i, (label_id, name, colour) in enumerate(formats.CITYSCAPES_TRAIN_CLASSES)]
    assert ours == official
    table = formats.cityscapes_label_map()
    assert all(table[c.id] == (c.train_id if 0 <= c.train_id < 255 else 255) for c in Cityscapes.classes if c.id >= 0)


def test_ade20k_reduces_zero_label(tmp_path: Path) -> None:
    root = tmp_path / "ADEChallengeData2016"
    values = np.array([[0, 1, 2, 150] * 3], np.uint8).repeat(H, axis=0)
    save(root / "images" / "validation" / "ADE_val_00000001.jpg", rgb())
    save(root / "annotations" / "validation" / "ADE_val_00000001.png", values)
    dataset = create_dataset("ade20k", root=tmp_path, split="val")
    assert dataset[0][1][0, :4].tolist() == [255, 0, 1, 149]
    assert dataset.classes.num_classes == 150 and len(set(dataset.classes.names)) == 150
    assert dataset.classes.names[:3] == ("wall", "building", "sky") and dataset.classes.names[-1] == "flag"
    assert formats.ADE20KDataset.available_splits(tmp_path) == ["val"]
    bad = values.copy()
    bad[0, 0] = 200
    save(root / "annotations" / "validation" / "ADE_val_00000001.png", bad)
    with pytest.raises(DataError, match=r"ADE_val_00000001.png: label values.*199: 1 px"):
        dataset.load(0)


def test_camvid_fixture_maps_void_to_ignore(tmp_path: Path) -> None:
    mask = labels(12)
    mask[0, :2] = 11
    image = rgb()
    save(tmp_path / "train" / "0001TP_006690.png", image)
    save(tmp_path / "trainannot" / "0001TP_006690.png", mask)
    dataset = create_dataset("camvid", root=tmp_path)
    expected = mask.astype(np.int64)
    expected[expected == 11] = 255
    _assert_sample(dataset, 0, image, expected)
    assert dataset.classes.names[0] == "Sky" and dataset.classes.palette[4] == (60, 40, 222)
    assert formats.CamVidDataset.available_splits(tmp_path) == ["train"]


def test_camvid_holdout_validates_on_sequences_training_never_sees(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    frames = {"train": ["0001TP_006690", "0006R0_f01", "0006R0_f02", "0016E5_00390"], "val": ["0016E5_07959"]}
    for split, stems in frames.items():
        for stem in stems:
            save(tmp_path / split / f"{stem}.png", rgb())
            save(tmp_path / f"{split}annot" / f"{stem}.png", labels(11))

    def stems(split: str, **options) -> list[str]:
        return [image.stem for image, _ in create_dataset("camvid", root=tmp_path, split=split, **options).pairs]

    assert stems("val") == ["0016E5_07959"], "without holdout: the released splits"
    assert stems("train", holdout="0006R0") == ["0001TP_006690", "0016E5_00390", "0016E5_07959"]
    assert stems("val", holdout="0006R0") == ["0006R0_f01", "0006R0_f02"]
    assert stems("val", holdout=["0001TP", "0016E5"]) == ["0001TP_006690", "0016E5_00390", "0016E5_07959"]
    with pytest.raises(ValueError, match=r"holdout \['0005VD'\] names no sequence.*'0001TP', '0006R0', '0016E5'"):
        create_dataset("camvid", root=tmp_path, split="val", holdout="0005VD")
    with pytest.raises(ValueError, match="the test split is never redrawn"):
        create_dataset("camvid", root=tmp_path, split="test", holdout="0006R0")
    # Train and val together, for a final model measured on the test split.
    assert stems("trainval") == sorted(frames["train"] + frames["val"])
    assert formats.CamVidDataset.available_splits(tmp_path) == ["train", "val"], "the checker scans each frame once"
    with pytest.raises(ValueError, match="split 'trainval' is not one of them"):
        create_dataset("camvid", root=tmp_path, split="trainval", holdout="0006R0")
    assert main(["check-data", "--format", "camvid", "--root", str(tmp_path), "--split", "trainval"]) == 0
    out = capsys.readouterr().out
    assert "trainval" in out and "No problems found" in out


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"real CamVid not at {CAMVID}")
def test_real_camvid() -> None:
    train = create_dataset("camvid", root=CAMVID, split="train")
    val = create_dataset("camvid", root=CAMVID, split="val")
    assert (len(train), len(val)) == (367, 101) and train.classes.num_classes == 11
    for dataset in (train, val):
        for index in (0, len(dataset) - 1):
            x, y = dataset[index]
            assert x.shape == (3, 360, 480) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
            assert y.shape == (360, 480) and set(y.unique().tolist()) <= set(range(11)) | {255}
    # Cross-sequence validation: 0006R0 (101 frames, all in train) against the other two.
    held_out = create_dataset("camvid", root=CAMVID, split="val", holdout="0006R0")
    rest = create_dataset("camvid", root=CAMVID, split="train", holdout="0006R0")
    assert (len(rest), len(held_out)) == (367, 101)
    assert {image.stem[:6] for image, _ in held_out.pairs} == {"0006R0"}
    assert {image.stem[:6] for image, _ in rest.pairs} == {"0001TP", "0016E5"}
    assert len(create_dataset("camvid", root=CAMVID, split="trainval")) == 468
