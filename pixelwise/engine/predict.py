"""Prediction on image files from a checkpoint alone: class-index PNGs, overlays, probabilities.

``predict_files(checkpoint, inputs, out_dir)`` writes, for each input image ``<stem>.<ext>``:

- ``<stem>.png``: the class indices as a palette PNG (mode ``"P"``): viewers show the data
  set's colours while the pixel values stay the class indices (``np.asarray(Image.open(f))``
  gives them back). Palette entries past the last class are black, the ignore index included.
  Above 256 classes a palette cannot hold them: the PNG is then 16-bit grayscale indices.
- ``<stem>_overlay.png``: the image blended with the colour mask (``overlay_alpha`` of colour).
- ``<stem>_probs.npy`` (``save_probabilities=True``): softmax probabilities ``(C, H, W)``,
  float16 by default; with test-time augmentation, the mean over the views.

**Inputs.** Files, folders (their image files, not recursively) and glob patterns (``**``
allowed; they too expand to image files only). A folder or pattern with no images, or a file
that does not exist, is an error; a file named twice is predicted once; two inputs that would
write the same output name, or an output that would overwrite an input, are errors before any
work starts. Images are read as a viewer shows them (EXIF orientation applied), so masks and
overlays line up with what the user sees.

**Unreadable images.** By default the first unreadable image stops the run with a
:class:`~pixelwise.data.DataError` naming the file (outputs already written stay). With
``skip_unreadable=True`` it is listed in the report's ``failures`` and the rest go on; the
command line then exits with status 1 at the end.

**Large images.** An image of more than ``tile_threshold_pixels`` pixels is predicted window by
window (:func:`~pixelwise.engine.inference.predict_large_image`, whatever ``mode``, with the given
window, stride and blend): the model never sees more than a window, and neither full-image
logits nor a float copy of the image are formed. Test-time augmentation is not applied to such
images (the report's notes say so); probabilities, when asked for, go straight into a
memory-mapped ``.npy`` file block by block.
"""
from __future__ import annotations

import glob
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pixelwise.data.classes import ClassInfo
from pixelwise.data.formats import IMAGE_EXTENSIONS
from pixelwise.data.io import DataError, decode_image
from pixelwise.engine.checkpoint import LoadedModel
from pixelwise.engine.inference import (
    Blend,
    InferenceOptions,
    Mode,
    Size,
    label_dtype,
    normalize_image,
    predict_large_image,
)
from pixelwise.engine.loading import load_predictor

DEFAULT_TILE_THRESHOLD = 4096 * 4096
"""Pixels above which an image is predicted tile by tile. At 16.8 megapixels a whole-image pass
holds 1.4 GB of float32 logits for 21 classes alone, and several times that in activations."""

ProgressCallback = Callable[[int, int], None]
"""``on_image(done, total)``, called after each image."""


# Inputs ----------------------------------------------------------------------------------------

def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _expand_one(item: str) -> list[Path]:
    path = Path(item)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_image(p))
        if not files:
            raise FileNotFoundError(f"folder {item!r} holds no image files ({' '.join(IMAGE_EXTENSIONS)})")
        return files
    if path.is_file():
        return [path]
    if any(char in item for char in "*?["):
        files = sorted(p for p in map(Path, glob.glob(item, recursive=True)) if _is_image(p))
        if not files:
            raise FileNotFoundError(f"pattern {item!r} matched no image files")
        return files
    raise FileNotFoundError(f"input {item!r} does not exist")


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files that files, folders and glob patterns name, in order, each once.

    Raises:
        FileNotFoundError: no inputs, a missing file, or a folder or pattern with no images.
    """
    if not inputs:
        raise FileNotFoundError("no inputs given: name image files, folders or glob patterns")
    found: dict[Path, Path] = {}  # resolved → as given: the same file named twice runs once
    for item in inputs:
        for path in _expand_one(str(item)):
            found.setdefault(path.resolve(), path)
    return list(found.values())


def output_paths(image: Path, out_dir: Path) -> dict[str, Path]:
    """Where the outputs of ``image`` go: keys ``mask``, ``overlay``, ``probabilities``."""
    return {"mask": out_dir / f"{image.stem}.png", "overlay": out_dir / f"{image.stem}_overlay.png",
            "probabilities": out_dir / f"{image.stem}_probs.npy"}


def _check_outputs(images: Sequence[Path], out_dir: Path) -> None:
    """Refuse runs whose outputs would collide with each other or overwrite an input."""
    inputs = {path.resolve() for path in images}
    owners: dict[str, Path] = {}
    for image in images:
        if image.stem in owners:
            raise ValueError(f"{owners[image.stem]} and {image} would both write {image.stem}.png; "
                             "predict them into separate output folders")
        owners[image.stem] = image
        clashes = [path for path in output_paths(image, out_dir).values() if path.resolve() in inputs]
        if clashes:
            raise ValueError(f"writing the outputs of {image} would overwrite the input {clashes[0]}; "
                             "choose another output folder")


# Outputs ---------------------------------------------------------------------------------------

def colour_table(classes: ClassInfo) -> np.ndarray:
    """``(max(256, C), 3)`` uint8 colours by class index: the palette, then black (the ignore
    index among them), so any uint8 label map can be looked up."""
    table = np.zeros((max(256, classes.num_classes), 3), dtype=np.uint8)
    table[:classes.num_classes] = np.asarray(classes.palette, dtype=np.uint8)
    return table


def label_image(labels: np.ndarray, classes: ClassInfo) -> Image.Image:
    """Class indices as a palette PNG image (16-bit grayscale above 256 classes)."""
    if classes.num_classes > 256:
        return Image.fromarray(labels.astype(np.uint16))
    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(colour_table(classes)[:256].ravel().tolist())
    return image


def overlay(pixels: np.ndarray, labels: np.ndarray, classes: ClassInfo, alpha: float = 0.5,
            rows_per_chunk: int = 1024) -> np.ndarray:
    """The image ``(H, W, 3)`` uint8 blended with the colours of ``labels`` ``(H, W)``.

    Blended a band of rows at a time, so a huge image costs one float copy of a band, not of
    the whole image.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha must be in [0, 1], got {alpha}")
    table = colour_table(classes)
    blended = np.empty_like(pixels)
    for top in range(0, pixels.shape[0], rows_per_chunk):
        rows = slice(top, top + rows_per_chunk)
        mixed = pixels[rows] * (1.0 - alpha) + table[labels[rows]] * alpha
        blended[rows] = np.rint(mixed).astype(np.uint8)
    return blended


# Predicting one image --------------------------------------------------------------------------

def predict_whole(loaded: LoadedModel, pixels: np.ndarray, options: InferenceOptions,
                  ) -> tuple[np.ndarray, Tensor]:
    """Class indices ``(H, W)`` and softmax probabilities ``(C, H, W)`` (CPU) of one image,
    with the options' mode and test-time augmentation."""
    logits = options.logits(loaded.model, normalize_image(pixels, loaded.normalization)[None])[0]
    labels = logits.argmax(0).cpu().numpy().astype(label_dtype(loaded.classes.num_classes))
    return labels, logits.softmax(0).cpu()


# Predicting files ------------------------------------------------------------------------------

@dataclass
class PredictedImage:
    """What was written for one input image.

    Attributes:
        source: the input file.
        mask: the class-index PNG.
        overlay: the image blended with the colour mask.
        probabilities: the ``.npy`` of softmax probabilities, when asked for.
        size: ``(height, width)``.
        tiled: predicted window by window (above the pixel threshold).
        seconds: time spent on the image, reading and writing included.
        notes: anything done differently from what was asked (e.g. no augmentation when tiled).
    """

    source: Path
    mask: Path
    overlay: Path
    probabilities: Path | None
    size: tuple[int, int]
    tiled: bool
    seconds: float
    notes: list[str] = field(default_factory=list)


@dataclass
class PredictionReport:
    """The outcome of :func:`predict_files`.

    Attributes:
        out_dir: the output folder.
        images: one entry per image predicted.
        failures: ``(file, message)`` of each unreadable image skipped.
    """

    out_dir: Path
    images: list[PredictedImage] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every input was predicted."""
        return not self.failures


def _predict_one(loaded: LoadedModel, source: Path, out_dir: Path, options: InferenceOptions,
                 save_probabilities: bool, probability_dtype: str, tile_threshold_pixels: int,
                 overlay_alpha: float) -> PredictedImage:
    start = time.perf_counter()
    pixels, _ = decode_image(source)
    height, width = pixels.shape[:2]
    paths = output_paths(source, out_dir)
    probs_path = paths["probabilities"] if save_probabilities else None
    tiled, notes = height * width > tile_threshold_pixels, []
    if tiled:
        notes.append(f"{height}×{width} is above {tile_threshold_pixels} pixels: predicted window by window "
                     f"({options.window[0]}×{options.window[1]}, stride {options.stride[0]}×{options.stride[1]})")
        if options.augmented:
            notes.append("test-time augmentation (scales, flip) is not applied to tiled images")
        probs = None if probs_path is None else np.lib.format.open_memmap(
            probs_path, mode="w+", dtype=probability_dtype, shape=(loaded.classes.num_classes, height, width))
        labels = predict_large_image(loaded.model, pixels, loaded.classes.num_classes, options,
                                     loaded.normalization, probabilities=probs)
        if probs is not None:
            probs.flush()
            del probs  # closes the memory map
    else:
        labels, probs_tensor = predict_whole(loaded, pixels, options)
        if probs_path is not None:
            np.save(probs_path, probs_tensor.numpy().astype(probability_dtype))
    label_image(labels, loaded.classes).save(paths["mask"])
    Image.fromarray(overlay(pixels, labels, loaded.classes, overlay_alpha)).save(paths["overlay"])
    return PredictedImage(source, paths["mask"], paths["overlay"], probs_path, (height, width), tiled,
                          time.perf_counter() - start, notes)


def predict_files(checkpoint: str | Path | LoadedModel, inputs: Sequence[str | Path], out_dir: str | Path,
                  mode: Mode = "whole", window: Size = 512, stride: Size | None = None, blend: Blend = "gaussian",
                  scales: Sequence[float] = (1.0,), flip: bool = False, batch_size: int = 4,
                  device: str | torch.device = "cpu", runtime: str | None = None, precision: str | None = None,
                  save_probabilities: bool = False,
                  probability_dtype: str = "float16", tile_threshold_pixels: int = DEFAULT_TILE_THRESHOLD,
                  overlay_alpha: float = 0.5, skip_unreadable: bool = False,
                  on_image: ProgressCallback | None = None) -> PredictionReport:
    """Segment image files with a trained model and write masks, overlays and probabilities.

    See the module docstring for the outputs, inputs, errors and large images.

    Args:
        checkpoint: a checkpoint written by ``pixelwise train``, an ONNX file written by
            ``pixelwise export``, or a model already loaded (:func:`~pixelwise.engine.loading.load_predictor`).
        inputs: image files, folders and glob patterns.
        out_dir: the output folder (created).
        mode: ``"whole"`` (one forward pass per image) or ``"slide"`` (overlapping windows).
        window: window size for ``"slide"`` and for tiled images.
        stride: largest step between windows (default: two thirds of the window).
        blend: ``"gaussian"`` or ``"uniform"`` weighting of overlapping windows.
        scales: test-time augmentation: factors the image is resized by.
        flip: test-time augmentation: also predict the horizontally flipped image.
        batch_size: windows per forward pass.
        device: where the model runs (ignored when ``checkpoint`` is a loaded model).
        runtime: ``"torch"``, ``"torch-optimized"`` or ``"onnxruntime"`` (see
            :func:`~pixelwise.engine.loading.load_predictor`).
        precision: ``"fp32"``, ``"bf16"``, ``"fp16"`` (default: what the run validated with).
        save_probabilities: also write ``<stem>_probs.npy``.
        probability_dtype: ``"float16"`` (half the disk) or ``"float32"``.
        tile_threshold_pixels: images with more pixels than this are predicted tile by tile.
        overlay_alpha: weight of the class colours in the overlay.
        skip_unreadable: list unreadable images in the report and go on, instead of raising.
        on_image: progress callback ``on_image(done, total)``.

    Raises:
        DataError: an unreadable image (unless ``skip_unreadable``), naming the file.
        FileNotFoundError: a missing input, or a folder or pattern with no images.
        ValueError: bad options, or outputs that would collide or overwrite an input.
    """
    options = InferenceOptions.create(mode, window, stride, blend, scales, flip, batch_size)
    if probability_dtype not in ("float16", "float32"):
        raise ValueError(f"probability_dtype must be 'float16' or 'float32', got {probability_dtype!r}")
    images = expand_inputs(inputs)
    out_dir = Path(out_dir)
    _check_outputs(images, out_dir)
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_predictor(checkpoint, runtime, precision,
                                                                                     device)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = PredictionReport(out_dir)
    for done, source in enumerate(images, start=1):
        try:
            report.images.append(_predict_one(loaded, source, out_dir, options, save_probabilities,
                                              probability_dtype, tile_threshold_pixels, overlay_alpha))
        except DataError as error:
            if not skip_unreadable:
                raise
            report.failures.append((source, str(error)))
        if on_image is not None:
            on_image(done, len(images))
    return report
