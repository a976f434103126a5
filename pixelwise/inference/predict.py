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
write the same output name (``a.jpg`` and ``a.png``; ``a.jpg``'s overlay and an input
``a_overlay.png``), an output that would overwrite an input, and an output that would replace a
file already in the folder that pixelwise did not write (the folder's ``.pixelwise-predict.json``
lists what it wrote) are errors before any work starts; ``overwrite=True`` allows the last. Images are read as a viewer shows them (EXIF orientation applied), so masks and
overlays line up with what the user sees.

**Unreadable images.** By default the first unreadable image stops the run with a
:class:`~pixelwise.data.DataError` naming the file (outputs already written stay). With
``skip_unreadable=True`` it is listed in the report's ``failures`` and the rest go on; the
command line then exits with status 1 at the end.

**Large images.** An image of more than ``tile_threshold_pixels`` pixels is predicted window by
window (:func:`~pixelwise.inference.logits.predict_large_image`, whatever ``mode``, with the given
window, stride and blend): the model never sees more than a window, and neither full-image
logits nor a float copy of the image are formed. Test-time augmentation is not applied to such
images (the report's notes say so); probabilities, when asked for, go straight into a
memory-mapped ``.npy`` file block by block.
"""
from __future__ import annotations

import glob
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pixelwise.data.classes import ClassInfo
from pixelwise.data.formats import IMAGE_EXTENSIONS
from pixelwise.data.io import DataError, decode_image
from pixelwise.data.png import write_png_bands
from pixelwise.errors import InputError, MissingFileError
from pixelwise.inference.loading import LoadedModel
from pixelwise.inference.logits import (
    InferenceOptions,
    label_dtype,
    normalize_image,
    predict_large_image,
    recorded_augmentation,
)
from pixelwise.inference.loading import load_predictor
from pixelwise.io.atomic import atomic_file

DEFAULT_TILE_THRESHOLD = 4096 * 4096
"""Pixels above which an image is predicted tile by tile. At 16.8 megapixels a whole-image pass
holds 1.4 GB of float32 logits for 21 classes alone, and several times that in activations."""

ProgressCallback = Callable[[int, int], None]
"""``on_image(done, total)``, called after each image."""


# Options ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecordedViews:
    """Inference options whose test-time views are the ones a model records unless given here:
    what prediction and evaluation use by default, so that a recipe's ``inference`` section
    applies (see :func:`~pixelwise.inference.logits.recorded_augmentation`).

    Attributes:
        options: mode, window, stride, blend, batch size and precision (its scales and flip
            give way to the views below).
        scales: factors each image is resized by (``None``: the recorded ones, else ``(1.0,)``).
        flip: also predict the flipped image (``None``: as recorded, else no).
    """

    options: InferenceOptions = field(default_factory=InferenceOptions.create)
    scales: tuple[float, ...] | None = None
    flip: bool | None = None

    def __post_init__(self) -> None:
        if self.scales is not None:  # checked now, before any model loads
            object.__setattr__(self, "scales", InferenceOptions.create(scales=self.scales).scales)
        if self.flip is not None:
            object.__setattr__(self, "flip", bool(self.flip))

    def resolve(self, recorded: Mapping[str, Any] | None) -> InferenceOptions:
        """The options for a model whose record holds the inference options ``recorded``."""
        settings = {name.name: getattr(self.options, name.name) for name in fields(InferenceOptions)}
        return InferenceOptions.create(**settings | recorded_augmentation(recorded, self.scales, self.flip))


def resolve_options(options: InferenceOptions | RecordedViews, recorded: Mapping[str, Any] | None) -> InferenceOptions:
    """``options`` as they are, or resolved against a model's record (:meth:`RecordedViews.resolve`)."""
    return options.resolve(recorded) if isinstance(options, RecordedViews) else options


# Inputs ----------------------------------------------------------------------------------------

def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _expand_one(item: str) -> list[Path]:
    path = Path(item)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _is_image(p))
        if not files:
            raise MissingFileError(f"folder {item!r} holds no image files ({' '.join(IMAGE_EXTENSIONS)})")
        return files
    if path.is_file():
        return [path]
    if any(char in item for char in "*?["):
        files = sorted(p for p in map(Path, glob.glob(item, recursive=True)) if _is_image(p))
        if not files:
            raise MissingFileError(f"pattern {item!r} matched no image files")
        return files
    raise MissingFileError(f"input {item!r} does not exist")


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """The image files that files, folders and glob patterns name, in order, each once.

    Raises:
        FileNotFoundError: no inputs, a missing file, or a folder or pattern with no images.
    """
    if not inputs:
        raise MissingFileError("no inputs given: name image files, folders or glob patterns")
    found: dict[Path, Path] = {}  # resolved → as given: the same file named twice runs once
    for item in inputs:
        for path in _expand_one(str(item)):
            found.setdefault(path.resolve(), path)
    return list(found.values())


def output_paths(image: Path, out_dir: Path) -> dict[str, Path]:
    """Where the outputs of ``image`` go: keys ``mask``, ``overlay``, ``probabilities``."""
    return {"mask": out_dir / f"{image.stem}.png", "overlay": out_dir / f"{image.stem}_overlay.png",
            "probabilities": out_dir / f"{image.stem}_probs.npy"}


# Written into the output folder: the names of the files pixelwise wrote there, which a later run
# may replace. Any other file already there is the user's, and is never overwritten silently.
OUTPUTS_RECORD = ".pixelwise-predict.json"


def planned_outputs(images: Sequence[Path], out_dir: Path, save_probabilities: bool,
                    overwrite: bool = False) -> list[Path]:
    """Every file the run will write, checked before any work starts.

    Raises:
        ValueError: two images would write the same file (``a.jpg`` and ``a.png``; ``a.jpg``'s
            overlay and an input ``a_overlay.png``), an output would overwrite an input, or (unless
            ``overwrite``) a file not written by an earlier prediction is already there.
    """
    inputs = {path.resolve() for path in images}
    owners: dict[Path, Path] = {}
    for image in images:
        for kind, path in output_paths(image, out_dir).items():
            if kind == "probabilities" and not save_probabilities:
                continue
            key = path.resolve()
            if key in owners:
                raise InputError(f"{owners[key]} and {image} would both write {path.name}; predict them into "
                                 f"separate output folders")
            if key in inputs:
                raise InputError(f"writing the outputs of {image} would overwrite the input {path}; choose another "
                                 f"output folder")
            owners[key] = image
    if not overwrite:
        ours = _recorded_outputs(out_dir)
        foreign = [path for path in owners if path.exists() and path.name not in ours]
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise InputError(f"{out_dir} already holds {foreign[0].name}{more}, not written by pixelwise predict, "
                             f"which this run would replace (the outputs of {owners[foreign[0]].name}); predict into "
                             f"another folder (--out), or pass --overwrite to replace such files")
    return list(owners)


def _recorded_outputs(out_dir: Path) -> set[str]:
    record = out_dir / OUTPUTS_RECORD
    if not record.is_file():
        return set()
    try:
        names = json.loads(record.read_text()).get("written", [])
    except (OSError, ValueError, AttributeError):
        return set()  # unreadable: treat every existing file as the user's
    return {name for name in names if isinstance(name, str)}


def _record_outputs(out_dir: Path, outputs: Sequence[Path]) -> None:
    """Add ``outputs`` to the folder's record, before they are written (a run cut short leaves
    names claimed, which a rerun replaces)."""
    names = sorted(_recorded_outputs(out_dir) | {path.name for path in outputs})
    with atomic_file(out_dir / OUTPUTS_RECORD, "w") as handle:
        json.dump({"written": names}, handle)


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


# Pixels per band when outputs are computed and written a band of rows at a time.
BAND_PIXELS = 1 << 20


def _band_rows(width: int) -> int:
    return max(1, BAND_PIXELS // max(1, width))


def overlay(pixels: np.ndarray, labels: np.ndarray, classes: ClassInfo, alpha: float = 0.5) -> np.ndarray:
    """The image ``(H, W, 3)`` uint8 blended with the colours of ``labels`` ``(H, W)``."""
    return np.concatenate(list(overlay_bands(pixels, labels, classes, alpha)))


def overlay_bands(pixels: np.ndarray, labels: np.ndarray, classes: ClassInfo,
                  alpha: float = 0.5) -> Iterator[np.ndarray]:
    """:func:`overlay` a band of rows at a time, top to bottom: a huge image costs float copies
    of a band (about :data:`BAND_PIXELS` pixels), not of the whole image."""
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"overlay alpha must be in [0, 1], got {alpha}")
    table = colour_table(classes)
    rows_per_chunk = _band_rows(pixels.shape[1])
    for top in range(0, pixels.shape[0], rows_per_chunk):
        rows = slice(top, top + rows_per_chunk)
        yield np.rint(pixels[rows] * (1.0 - alpha) + table[labels[rows]] * alpha).astype(np.uint8)


def write_outputs(pixels: np.ndarray, labels: np.ndarray, classes: ClassInfo, mask_path: Path,
                  overlay_path: Path, alpha: float = 0.5) -> None:
    """Write the class-index PNG (:func:`label_image`'s format) and the overlay PNG, a band of rows
    at a time (no full-size copy of either is formed)."""
    height, width = labels.shape
    rows_per_chunk = _band_rows(width)
    bands = range(0, height, rows_per_chunk)
    if classes.num_classes > 256:
        write_png_bands(mask_path, height, width, (labels[top:top + rows_per_chunk].astype(np.uint16) for top in bands))
    else:
        write_png_bands(mask_path, height, width, (labels[top:top + rows_per_chunk].astype(np.uint8) for top in bands),
                        palette=colour_table(classes)[:256])
    write_png_bands(overlay_path, height, width, overlay_bands(pixels, labels, classes, alpha))


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
    write_outputs(pixels, labels, loaded.classes, paths["mask"], paths["overlay"], overlay_alpha)
    return PredictedImage(source, paths["mask"], paths["overlay"], probs_path, (height, width), tiled,
                          time.perf_counter() - start, notes)


def predict_files(checkpoint: str | Path | LoadedModel, inputs: Sequence[str | Path], out_dir: str | Path,
                  options: InferenceOptions | RecordedViews = RecordedViews(), *, device: str | torch.device = "cpu",
                  runtime: str | None = None, precision: str | None = None, save_probabilities: bool = False,
                  probability_dtype: str = "float16", tile_threshold_pixels: int = DEFAULT_TILE_THRESHOLD,
                  overlay_alpha: float = 0.5, skip_unreadable: bool = False,
                  on_image: ProgressCallback | None = None, overwrite: bool = False) -> PredictionReport:
    """Segment image files with a trained model and write masks, overlays and probabilities.

    See the module docstring for the outputs, inputs, errors and large images.

    Args:
        checkpoint: a checkpoint written by ``pixelwise train``, an ONNX file written by
            ``pixelwise export``, or a model already loaded (:func:`~pixelwise.inference.loading.load_predictor`).
        inputs: image files, folders and glob patterns.
        out_dir: the output folder (created).
        options: how logits are computed (window, stride and blend also serve tiled images); by
            default whole images with the test-time views the model records (:class:`RecordedViews`).
        device: where the model runs (ignored when ``checkpoint`` is a loaded model).
        runtime: ``"torch"``, ``"torch-optimized"``, ``"torch-compiled"`` or ``"onnxruntime"``, and
            ``precision``: ``"fp32"``, ``"bf16"``, ``"fp16"`` (default: what the run validated with); see
            :func:`~pixelwise.inference.loading.load_predictor`.
        save_probabilities: also write ``<stem>_probs.npy``, as ``probability_dtype``:
            ``"float16"`` (half the disk) or ``"float32"``.
        tile_threshold_pixels: images with more pixels than this are predicted tile by tile.
        overlay_alpha: weight of the class colours in the overlay.
        skip_unreadable: list unreadable images in the report and go on, instead of raising.
        on_image: progress callback ``on_image(done, total)``.
        overwrite: replace files in ``out_dir`` that an earlier prediction did not write (by
            default such files are never overwritten: the run is refused before it starts).

    Raises:
        DataError: an unreadable image (unless ``skip_unreadable``), naming the file.
        FileNotFoundError: a missing input, or a folder or pattern with no images.
        ValueError: bad options, or outputs that would collide, overwrite an input, or (unless
            ``overwrite``) replace a file pixelwise did not write.
    """
    if probability_dtype not in ("float16", "float32"):
        raise InputError(f"probability_dtype must be 'float16' or 'float32', got {probability_dtype!r}")
    images = expand_inputs(inputs)
    out_dir = _output_folder(out_dir)
    outputs = planned_outputs(images, out_dir, save_probabilities, overwrite)
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_predictor(checkpoint, runtime, precision,
                                                                                     device)
    resolved = resolve_options(options, loaded.inference)
    out_dir.mkdir(parents=True, exist_ok=True)
    _record_outputs(out_dir, outputs)

    def predict(source: Path) -> PredictedImage:
        return _predict_one(loaded, source, out_dir, resolved, save_probabilities, probability_dtype,
                            tile_threshold_pixels, overlay_alpha)
    return _predict_each(images, predict, PredictionReport(out_dir), skip_unreadable, on_image)


def _output_folder(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output folder {str(out_dir)!r} is a file; choose a folder with --out")
    return out_dir


def _predict_each(images: Sequence[Path], predict: Callable[[Path], PredictedImage], report: PredictionReport,
                  skip_unreadable: bool, on_image: ProgressCallback | None) -> PredictionReport:
    """``predict`` each image into the report; an unreadable one raises, or with
    ``skip_unreadable`` is listed in the report's failures."""
    for done, source in enumerate(images, start=1):
        try:
            report.images.append(predict(source))
        except DataError as error:
            if not skip_unreadable:
                raise
            report.failures.append((source, str(error)))
        if on_image is not None:
            on_image(done, len(images))
    return report
