"""Reading images and masks, with errors that name the file and say what to do.

Images come back as uint8 RGB ``tv_tensors.Image`` (3×H×W) whatever their storage: 16-bit
(scaled, not clipped), RGBA and LA (alpha dropped), grayscale (replicated), palette and CMYK
(converted). Masks come back as int64 ``tv_tensors.Mask`` (H×W) of class indices: 8- or 16-bit
grayscale PNGs as they are, palette PNGs as their *indices* (not their colours), and RGB colour
masks only through a colour table.

EXIF orientation rule (see :func:`decode_image`): an image is turned upright as a viewer shows
it, unless its mask was evidently drawn on the stored, un-rotated pixels. With the mask's size
as ``target_size``: rotate when the rotated size matches it, keep the stored pixels when the
stored size matches it (square images, where both match, are rotated: annotation tools show
the upright view), and otherwise keep the stored pixels so the size check reports a mismatch.
"""
from __future__ import annotations

import struct
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision import tv_tensors

from pixelwise.data.classes import ClassInfo
from pixelwise.errors import InputError, PixelwiseError

Color = tuple[int, int, int]
ColorTable = Mapping[Color, int]
ColorTableLike = Union[Mapping, ClassInfo, Sequence[Sequence[int]]]

EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = {5, 6, 7, 8}  # orientations that rotate by 90°, swapping width and height
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


class DataError(PixelwiseError, ValueError):
    """A problem in the data on disk: the message names the file and what to do.

    Attributes:
        path: the offending file (or folder), when there is one.
        kind: a short problem code (``"unreadable"``, ``"size-mismatch"``, ``"bad-labels"``,
            ``"rgb-mask"``, ``"unknown-colors"``, ``"unpaired-image"``, ``"unpaired-mask"``,
            ``"empty"``, ``"layout"``), so that the data checker can group problems.
    """

    def __init__(self, message: str, path: str | Path | None = None, kind: str = "data") -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.kind = kind


def open_decoded(path: str | Path) -> Image.Image:
    """Open an image file and decode all of its pixels, so truncation shows here.

    Raises:
        DataError: the file is missing, not an image, truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found. Check the data set root and split lists.", path, "unreadable")
    try:
        image = Image.open(path)
        # PIL decodes lazily: without load() a truncated file passes unnoticed (and so it does if
        # someone sets PIL.ImageFile.LOAD_TRUNCATED_IMAGES, which this module never does)
        image.load()
    except Image.DecompressionBombError as error:
        raise DataError(f"{path}: {error} Tile the image, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust "
                        "the file.", path, "unreadable") from error
    except _DECODE_ERRORS as error:
        raise DataError(f"{path}: cannot decode the image ({error}). The file is truncated, corrupt or "
                        "not an image: re-download or re-export it, or remove the pair.", path, "unreadable") from error
    return image


# ---------------------------------------------------------------------------- images

def _to_rgb_array(image: Image.Image, path: Path, notes: list[str]) -> np.ndarray:
    """Pixels of any PIL mode as uint8 H×W×3, noting conversions that were not plain RGB."""
    mode = image.mode
    if mode == "RGB":
        return _rgb_rows(image)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale (PIL reads 16-bit PNGs as I;16 or I): scale the full range to 8 bits
        values = np.asarray(image).astype(np.int64).clip(0, 65535)
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        notes.append("16-bit image (scaled to 8 bits)")
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append(f"{mode} image (alpha dropped)")
        return np.asarray(image.convert("RGBA" if mode == "PA" else mode).convert("RGB"))
    if mode in ("L", "1"):
        notes.append("grayscale image (copied to R, G and B)")
        return np.asarray(image.convert("RGB"))
    if mode == "P":
        notes.append("palette image (converted to RGB)")
        return np.asarray(image.convert("RGBA").convert("RGB"))  # via RGBA: palette transparency is legal
    if mode in ("CMYK", "YCbCr"):
        notes.append(f"{mode} image (converted to RGB)")
        return np.asarray(image.convert("RGB"))
    raise DataError(f"{path}: unsupported image mode {mode!r}. Convert the image to 8-bit RGB "
                    "(for example with PIL: Image.open(f).convert('RGB').save(f)).", path, "unreadable")


def _rgb_rows(image: Image.Image, rows_per_band: int = 512) -> np.ndarray:
    """An RGB image's pixels as a writable uint8 H×W×3 array, copied a band of rows at a time:
    ``np.asarray`` of the whole image would first assemble all of its bytes in a second buffer."""
    width, height = image.size
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, rows_per_band):
        bottom = min(top + rows_per_band, height)
        pixels[top:bottom] = np.asarray(image.crop((0, top, width, bottom)))
    return pixels


def _orient(image: Image.Image, target_size: tuple[int, int] | None, notes: list[str]) -> Image.Image:
    """Apply the EXIF orientation by the module's rule; ``target_size`` is the mask's (H, W)."""
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    if orientation not in range(2, 9):
        return image
    width, height = image.size
    upright = (width, height) if orientation in _SWAPS_AXES else (height, width)  # as (H, W)
    if target_size is None or tuple(target_size) == upright:
        why = "as a viewer shows it" if target_size is None else "the mask follows the upright view"
        notes.append(f"EXIF orientation {orientation} applied ({why})")
        return ImageOps.exif_transpose(image)
    if tuple(target_size) == (height, width):
        notes.append(f"EXIF orientation {orientation} ignored (the mask follows the stored pixels)")
    return image


def decode_image(path: str | Path, target_size: tuple[int, int] | None = None) -> tuple[np.ndarray, list[str]]:
    """Decode an image to uint8 H×W×3 RGB.

    Args:
        path: image file.
        target_size: the mask's (H, W), to decide the EXIF orientation (module docstring);
            ``None`` applies the orientation as a viewer would.

    Returns:
        The pixels and notes on what was converted (16-bit, alpha, grayscale, EXIF, ...).
    """
    notes: list[str] = []
    image = _orient(open_decoded(path), target_size, notes)
    return _to_rgb_array(image, Path(path), notes), notes


@contextmanager
def _decoding(name: str, max_pixels: int) -> Iterator[None]:
    """Decoding errors as :class:`DataError` naming the upload."""
    try:
        yield
    except Image.DecompressionBombError as error:  # PIL's own guard, for headers claiming billions
        raise DataError(f"{name}: {error} The most accepted is {max_pixels} pixels; downscale or tile it.", name,
                        "too-large") from error
    except _DECODE_ERRORS as error:
        raise DataError(f"{name}: cannot decode the image ({error}); the file is truncated, corrupt or not an "
                        f"image (PNG, JPEG, ...)", name, "unreadable") from error


def _open_upload(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The upload opened, its header read and its size checked: nothing is decoded yet."""
    from io import BytesIO

    if not data:
        raise DataError(f"{name}: the upload is empty; send the image file's bytes", name, "unreadable")
    with _decoding(name, max_pixels):
        image = Image.open(BytesIO(data))
        width, height = image.size
    if width * height > max_pixels:
        raise DataError(f"{name}: the image claims {width}×{height} = {width * height} pixels, more than the "
                        f"{max_pixels} accepted; downscale or tile it", name, "too-large")
    return image


def upload_size(data: bytes, name: str, max_pixels: int) -> tuple[int, int]:
    """An uploaded image's ``(height, width)`` as its header states it, before any decoding (EXIF
    orientation may swap the two), so what it would cost can be judged first.

    Raises:
        DataError: as :func:`decode_image_bytes`, for what the header alone shows.
    """
    width, height = _open_upload(data, name, max_pixels).size
    return height, width


def decode_image_bytes(data: bytes, name: str, max_pixels: int) -> np.ndarray:
    """Decode an uploaded image to uint8 H×W×3 RGB (EXIF orientation applied, as a viewer shows
    it), refusing it *before* decoding when its header claims more than ``max_pixels`` pixels.

    Args:
        data: the file's bytes.
        name: how to name it in messages (the upload's file name).
        max_pixels: the most pixels accepted (a decompression bomb claims billions in a few bytes).

    Raises:
        DataError: empty, not an image, truncated or corrupt (``kind="unreadable"``), or too large
            (``kind="too-large"``).
    """
    image = _open_upload(data, name, max_pixels)
    with _decoding(name, max_pixels):
        image.load()
    notes: list[str] = []
    return _to_rgb_array(_orient(image, None, notes), Path(name), notes)


def read_image(path: str | Path, target_size: tuple[int, int] | None = None) -> tv_tensors.Image:
    """Read an image as a uint8 ``tv_tensors.Image`` 3×H×W (see :func:`decode_image`)."""
    pixels, _ = decode_image(path, target_size)
    return tv_tensors.Image(torch.from_numpy(pixels.transpose(2, 0, 1).copy()))


# ---------------------------------------------------------------------------- colour tables

def _parse_color(key: object) -> Color:
    """A colour key as (r, g, b): a 3-sequence, "r,g,b" or "#rrggbb"."""
    if isinstance(key, str):
        text = key.strip()
        parts = [text[i:i + 2] for i in (1, 3, 5)] if text.startswith("#") else text.split(",")
        values = [int(p, 16) if text.startswith("#") else int(p) for p in parts]
    else:
        values = [int(v) for v in key]  # type: ignore[union-attr]
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise InputError(f"colour {key!r} is not an RGB triple of 0-255 values; write (r, g, b), 'r,g,b' or '#rrggbb'")
    return values[0], values[1], values[2]


def parse_color_table(table: ColorTableLike) -> dict[Color, int]:
    """Normalise a colour→class table.

    Args:
        table: a mapping colour→class index (colours as (r, g, b), "r,g,b" or "#rrggbb"; map a
            void colour to the ignore index), a :class:`ClassInfo` (its palette, colour ``i``
            → class ``i``), or a palette (a sequence of colours).

    Raises:
        ValueError: a malformed colour, or one colour given for two classes.
    """
    if isinstance(table, ClassInfo):
        table = table.palette
    pairs = table.items() if isinstance(table, Mapping) else ((colour, index) for index, colour in enumerate(table))
    result: dict[Color, int] = {}
    for key, index in pairs:
        colour = _parse_color(key)
        if colour in result and result[colour] != int(index):
            raise InputError(f"colour {colour} is given for classes {result[colour]} and {index}: "
                             "a colour table needs a distinct colour per class")
        result[colour] = int(index)
    if not result:
        raise InputError("the colour table is empty; give at least one colour → class index")
    return result


def _pack(rgb: np.ndarray) -> np.ndarray:
    """(…, 3) uint8 colours as one int32 code per pixel, for fast look-ups."""
    rgb = rgb.astype(np.int32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def map_colors(rgb: np.ndarray, table: ColorTable, path: str | Path) -> np.ndarray:
    """Map an H×W×3 colour mask to class indices through ``table``.

    Raises:
        DataError: colours that the table lacks, with their pixel counts.
    """
    codes = _pack(rgb)
    keys = np.array(sorted(_pack(np.array(c, dtype=np.uint8)) for c in table), dtype=np.int32)
    values = np.array([table[((k >> 16) & 255, (k >> 8) & 255, k & 255)] for k in keys.tolist()], dtype=np.int64)
    where = np.searchsorted(keys, codes).clip(0, len(keys) - 1)
    known = keys[where] == codes
    if not known.all():
        unknown, counts = np.unique(codes[~known], return_counts=True)
        order = np.argsort(-counts)[:5]
        listed = ", ".join(f"({u >> 16 & 255}, {u >> 8 & 255}, {u & 255}): {c} px"
                           for u, c in zip(unknown[order].tolist(), counts[order].tolist()))
        raise DataError(f"{path}: {len(unknown)} colour(s) not in the colour table: {listed}"
                        f"{' ...' if len(unknown) > 5 else ''}. Add them to mask_colors (map void colours to "
                        "the ignore index), or fix the mask (anti-aliased edges or JPEG artefacts?).",
                        path, "unknown-colors")
    return values[where]


# ---------------------------------------------------------------------------- masks

def _rgb_mask_error(path: Path, rgb: np.ndarray) -> DataError:
    gray = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    hint = (" Its three channels are equal, so it is probably a class-index mask saved as RGB: re-save it "
            "as a single-channel (mode 'L') PNG." if gray else
            " Pass a colour table (the mask_colors option: {(r, g, b): class index}, or the classes' "
            "palette) to map colours to classes, or convert the masks to class-index PNGs.")
    return DataError(f"{path}: RGB mask where a class-index mask was expected.{hint}", path, "rgb-mask")


def decode_mask(path: str | Path, colors: ColorTable | None = None) -> np.ndarray:
    """Decode a mask to an H×W integer array of raw label values (no label mapping yet).

    Palette PNGs give their indices, unless ``colors`` is given: then, as for RGB masks, their
    colours are mapped through it (an editor may renumber a palette but keeps its colours).

    Raises:
        DataError: unreadable file, RGB mask without ``colors``, colours not in ``colors``.
    """
    path = Path(path)
    image = open_decoded(path)
    mode = image.mode
    if mode in ("L", "1", "I", "I;16", "I;16L", "I;16B", "I;16N") or (mode == "P" and colors is None):
        return np.asarray(image)
    if mode in ("LA", "La"):
        return np.asarray(image.getchannel(0))
    if mode in ("P", "PA", "RGB", "RGBA", "RGBa", "CMYK"):
        rgb = np.asarray(image.convert("RGBA").convert("RGB") if mode != "RGB" else image)
        if colors is None:
            raise _rgb_mask_error(path, rgb)
        return map_colors(rgb, colors, path)
    raise DataError(f"{path}: unsupported mask mode {mode!r}. Save masks as 8- or 16-bit single-channel "
                    "PNGs of class indices.", path, "unreadable")


def read_mask(path: str | Path, color_table: ColorTableLike | None = None) -> tv_tensors.Mask:
    """Read a class-index mask as an int64 ``tv_tensors.Mask`` H×W.

    Args:
        path: mask file (PNG: 8/16-bit grayscale, palette, or RGB with ``color_table``).
        color_table: colour→class table for colour masks (see :func:`parse_color_table`).
    """
    table = None if color_table is None else parse_color_table(color_table)
    return tv_tensors.Mask(torch.from_numpy(decode_mask(path, table).astype(np.int64)))


# ---------------------------------------------------------------------------- labels

def apply_label_map(raw: np.ndarray, label_map: np.ndarray | None) -> np.ndarray:
    """Map raw mask values through a look-up table, as int64.

    Values beyond the table pass through unchanged, so that label validation reports them.
    """
    raw = raw.astype(np.int64, copy=False)
    if label_map is None:
        return raw
    if raw.size and 0 <= raw.min() and raw.max() < len(label_map):
        return label_map[raw]
    inside = (raw >= 0) & (raw < len(label_map))
    return np.where(inside, label_map[np.where(inside, raw, 0)], raw)


def invalid_labels(mask: np.ndarray, num_classes: int, ignore_index: int) -> dict[int, int]:
    """Values of ``mask`` outside [0, num_classes) other than ``ignore_index``, with pixel counts."""
    bad = ((mask < 0) | (mask >= num_classes)) & (mask != ignore_index)
    if not bad.any():
        return {}
    values, counts = np.unique(mask[bad], return_counts=True)
    return dict(zip(values.tolist(), counts.tolist()))


def label_error(path: str | Path, bad: Mapping[int, int], num_classes: int, ignore_index: int) -> DataError:
    """The error for out-of-range label values (``bad``: value → pixel count)."""
    shown = sorted(bad.items(), key=lambda item: -item[1])[:10]
    listed = ", ".join(f"{value}: {count} px" for value, count in shown)
    more = f" (and {len(bad) - 10} more values)" if len(bad) > 10 else ""
    return DataError(f"{path}: label values outside [0, {num_classes}) that are not the ignore index "
                     f"{ignore_index}: {listed}{more}. Set num_classes (or the class list) to cover them, set "
                     "ignore_index to the void value, or map the labels (a label mapping / reduce-zero-label).",
                     path, "bad-labels")


def check_labels(mask: np.ndarray | torch.Tensor, num_classes: int, ignore_index: int, path: str | Path) -> None:
    """Raise :class:`DataError` when ``mask`` holds values outside [0, num_classes) ∪ {ignore_index}."""
    values = mask.numpy() if isinstance(mask, torch.Tensor) else mask
    bad = invalid_labels(values, num_classes, ignore_index)
    if bad:
        raise label_error(path, bad, num_classes, ignore_index)


def size_error(image_path: str | Path, image_size: tuple[int, int], mask_path: str | Path,
               mask_size: tuple[int, int]) -> DataError:
    """The error for an image and a mask of different sizes (sizes as (H, W))."""
    return DataError(f"{image_path}: image is {image_size[1]}×{image_size[0]} (W×H) but its mask {mask_path} is "
                     f"{mask_size[1]}×{mask_size[0]}. Re-export the mask at the image's size (resize masks only "
                     "with nearest-neighbour), or remove the pair.", image_path, "size-mismatch")


def read_pair(image_path: str | Path, mask_path: str | Path, num_classes: int, ignore_index: int = 255,
              color_table: ColorTableLike | None = None,
              label_map: np.ndarray | None = None) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
    """Read an image and its mask, orient the image by the EXIF rule, and validate both.

    Args:
        image_path: image file.
        mask_path: mask file.
        num_classes: valid class indices are [0, num_classes).
        ignore_index: the one other value a mask may hold.
        color_table: colour→class table for colour masks.
        label_map: look-up table raw value → class index (applied before validation).

    Raises:
        DataError: unreadable files, size mismatch, labels out of range, unmapped colours.
    """
    table = None if color_table is None else parse_color_table(color_table)
    mask = apply_label_map(decode_mask(mask_path, table), label_map)
    pixels, _ = decode_image(image_path, target_size=mask.shape)
    if pixels.shape[:2] != mask.shape:
        raise size_error(image_path, pixels.shape[:2], mask_path, mask.shape)
    check_labels(mask, num_classes, ignore_index, mask_path)
    image = torch.from_numpy(pixels.transpose(2, 0, 1).copy())
    return tv_tensors.Image(image), tv_tensors.Mask(torch.from_numpy(mask))
