"""Inference: whole image, sliding window (:mod:`~pixelwise.inference.windows`), test-time
augmentation, and images larger than memory; the options every caller shares
(:class:`InferenceOptions`).

**Test-time augmentation.** Each scale resizes the image (bilinear), optionally also flipped
horizontally; each view is predicted, its logits flipped back and resized to the input size,
and the views' softmax *probabilities* are averaged, as DeepLab and mmsegmentation do: averaging
logits would let one over-confident view (logit scales differ across input scales) outvote the
rest. The result is returned as the log of the mean probability, i.e. logits of the averaged
prediction (``softmax`` gives the mean back), so callers treat one view and many alike.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from pixelwise.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from pixelwise.errors import InputError
from pixelwise.inference.windows import (Blend, LabelSink, Mode, Normalization, Predictor, RegionReader, Size,
                                         TiledStats, as_pair, as_runtime, forward_logits, run_windows, window_starts)
from pixelwise.layers.resize import resize_bilinear, scaled_size
from pixelwise.runtimes.base import Runtime, check_precision

IMAGENET_NORMALIZATION: Normalization = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
"""The normalisation of ImageNet-trained encoders, the default of :func:`predict_large_image`."""


# Whole-image and sliding-window logits, with test-time augmentation ---------------------------

def _slide(runtime: Runtime, images: Tensor, window: Size, stride: Size, blend: Blend, batch_size: int) -> Tensor:
    """Sliding-window logits of each image of a batch."""
    outputs = []
    for image in images:
        canvas: list[Tensor] = []

        def paste(top: int, left: int, block: Tensor) -> None:
            if not canvas:  # the number of classes is known at the first block
                canvas.append(block.new_empty(block.shape[0], *image.shape[-2:]))
            canvas[0][:, top:top + block.shape[1], left:left + block.shape[2]] = block

        def read(top: int, left: int, height: int, width: int) -> Tensor:
            return image[:, top:top + height, left:left + width]

        run_windows(runtime, read, image.shape[-2:], paste, window, stride, blend, batch_size)
        outputs.append(canvas[0])
    return torch.stack(outputs)


def _predict_view(runtime: Runtime, images: Tensor, mode: Mode, window: Size, stride: Size, blend: Blend,
                  batch_size: int) -> Tensor:
    if mode == "whole":
        return forward_logits(runtime, images, None)
    if mode == "slide":
        return _slide(runtime, images, window, stride, blend, batch_size)
    raise InputError(f"mode must be 'whole' or 'slide', got {mode!r}")


@torch.inference_mode()
def predict_logits(model: Predictor, image: Tensor, mode: Mode = "whole", window: Size = (512, 512),
                   stride: Size = (341, 341), blend: Blend = "gaussian", batch_size: int = 4,
                   scales: Sequence[float] = (1.0,), flip: bool = False, precision: str | None = None) -> Tensor:
    """Logits of a batch of images at their size: whole, sliding window, multi-scale and flip.

    Runs under ``torch.inference_mode()``; a module runs in eval mode (its training flag is
    restored afterwards), on its device.

    Args:
        model: a runtime, or a module mapping ``(N, channels, H, W)`` to logits
            ``(N, classes, H, W)``.
        image: normalised images ``(N, channels, H, W)``.
        mode: ``"whole"`` (one forward pass) or ``"slide"`` (overlapping windows, blended).
        window: window size for ``"slide"``, in pixels of the (rescaled) image.
        stride: largest step between windows for ``"slide"`` (at most the window).
        blend: ``"gaussian"`` or ``"uniform"`` weighting of overlapping windows.
        batch_size: windows per forward pass for ``"slide"``.
        scales: factors the image is resized by before prediction (test-time augmentation).
        flip: also predict the horizontally flipped image at each scale.
        precision: autocast precision of a module (``None``: fp32; see :func:`as_runtime`).

    Returns:
        Logits ``(N, classes, H, W)`` (float32) on the runtime's device: the network's own for a
        single view (``scales=(1.0,)``, no flip); for several views, the log of their mean
        softmax probability.
    """
    if image.dim() != 4:
        raise InputError(f"expected images (N, C, H, W), got shape {tuple(image.shape)}")
    if not scales:
        raise InputError("scales must name at least one scale")
    runtime = as_runtime(model, precision)
    size = image.shape[-2:]
    image = image.to(runtime.device)
    views = [(scale, flipped) for scale in scales for flipped in ((False, True) if flip else (False,))]
    if len(views) == 1 and views[0][0] == 1.0:
        return _predict_view(runtime, image, mode, window, stride, blend, batch_size)
    mean_probs = None
    for scale, flipped in views:
        view = resize_bilinear(image, scaled_size(size, scale))
        view = view.flip(-1) if flipped else view
        logits = _predict_view(runtime, view, mode, window, stride, blend, batch_size)
        probs = resize_bilinear(logits.flip(-1) if flipped else logits, size).softmax(1)
        mean_probs = probs if mean_probs is None else mean_probs.add_(probs)
    # Clamped so a class no view gives any probability stays finite (-87, not -inf).
    return mean_probs.div_(len(views)).clamp_min_(torch.finfo(mean_probs.dtype).tiny).log_()


# The options every caller shares -------------------------------------------------------------

def default_stride(window: Size) -> tuple[int, int]:
    """Two thirds of the window on each side (341 for 512): every pixel away from the border is
    seen by at least two windows, so blending has a centre to prefer over an edge."""
    height, width = as_pair(window)
    return max(1, round(height * 2 / 3)), max(1, round(width * 2 / 3))


@dataclass(frozen=True)
class InferenceOptions:
    """How logits are computed, shared by training validation, evaluation, prediction and the
    service (see :func:`predict_logits`).

    Build with :meth:`create`, which checks every value before any work starts. ``precision``
    is the autocast precision of a PyTorch model (``None``: fp32, or a runtime's own).
    """

    mode: Mode = "whole"
    window: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    blend: Blend = "gaussian"
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    batch_size: int = 4
    precision: str | None = None

    @classmethod
    def create(cls, mode: Mode = "whole", window: Size = 512, stride: Size | None = None,
               blend: Blend = "gaussian", scales: Sequence[float] = (1.0,), flip: bool = False,
               batch_size: int = 4, precision: str | None = None) -> InferenceOptions:
        """Checked options; ``stride=None`` is :func:`default_stride` of the window."""
        if mode not in ("whole", "slide"):
            raise InputError(f"mode must be 'whole' or 'slide', got {mode!r}")
        if blend not in ("gaussian", "uniform"):
            raise InputError(f"blend must be 'gaussian' or 'uniform', got {blend!r}")
        if not scales or any(scale <= 0 for scale in scales):
            raise InputError(f"scales must be one or more positive factors, got {list(scales)}")
        if batch_size < 1:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        if precision is not None:
            check_precision(precision)
        window = as_pair(window)
        stride = default_stride(window) if stride is None else as_pair(stride)
        for side, step in zip(window, stride):
            window_starts(side, side, step)  # raises unless 1 <= stride <= window
        return cls(mode, window, stride, blend, tuple(float(s) for s in scales), bool(flip), batch_size, precision)

    @property
    def augmented(self) -> bool:
        """Whether test-time augmentation (several scales, or flips) is on."""
        return self.flip or self.scales != (1.0,)

    def logits(self, model: Predictor, images: Tensor) -> Tensor:
        """Logits ``(N, classes, H, W)`` of normalised images ``(N, 3, H, W)``."""
        return predict_logits(model, images, self.mode, self.window, self.stride, self.blend, self.batch_size,
                              self.scales, self.flip, self.precision)

    @classmethod
    def following(cls, recorded: Mapping[str, Any] | None, scales: Sequence[float] | None = None,
                  flip: bool | None = None, **settings: Any) -> InferenceOptions:
        """:meth:`create` with ``settings``, and the test-time ``scales`` and ``flip`` asked for
        or, where ``None``, those a model records (see :func:`recorded_augmentation`);
        ``recorded=None`` checks the values before a model is loaded."""
        return cls.create(**settings, **recorded_augmentation(recorded, scales, flip))

    def pass_areas(self, size: tuple[int, int], geometry: nn.Module | None = None) -> list[int]:
        """The area one forward pass computes on, for each view of an image of ``size``
        (height, width): what whole-image inference of it costs, view by view (memory goes with
        the largest, time with the sum; a sliding window counts a batch of windows).

        Args:
            size: the image's height and width.
            geometry: the network, for the size it really computes on
                (:meth:`~pixelwise.models.base.SegmentationModel.padded_size`: its padding and
                input scale); ``None`` or another module: the size as given.
        """
        padded = getattr(geometry, "padded_size", lambda view: view)
        areas = []
        for scale in self.scales:
            height, width = (int(side) for side in scaled_size(size, scale))
            if self.mode == "slide":
                height, width = min(height, self.window[0]), min(width, self.window[1])
            height, width = padded((height, width))
            areas += [height * width * (self.batch_size if self.mode == "slide" else 1)] * (2 if self.flip else 1)
        return areas

    def to_dict(self) -> dict:
        """JSON-able form, for metrics files and checkpoints."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


def recorded_augmentation(recorded: Mapping[str, Any] | None, scales: Sequence[float] | None = None,
                          flip: bool | None = None) -> dict[str, Any]:
    """The test-time ``scales`` and ``flip`` to predict with: those asked for; where one is
    ``None``, the one a checkpoint or exported file records (its recipe's ``inference``
    section); for files that record none, one scale and no flip."""
    recorded = recorded or {}
    return {"scales": tuple(recorded.get("scales", (1.0,)) if scales is None else scales),
            "flip": bool(recorded.get("flip", False) if flip is None else flip)}


# Images larger than memory --------------------------------------------------------------------

def label_dtype(num_classes: int) -> type:
    """The dtype of class-index maps: uint8 up to 256 classes, else int32."""
    return np.uint8 if num_classes <= 256 else np.int32


def _label_writer(sink: LabelSink, image_size: tuple[int, int]) -> Callable[[int, int, np.ndarray], None]:
    if callable(sink):
        return sink
    if tuple(sink.shape) != tuple(image_size):
        raise InputError(f"label array has shape {sink.shape}, expected the image size {tuple(image_size)}")

    def write(top: int, left: int, labels: np.ndarray) -> None:
        sink[top:top + labels.shape[0], left:left + labels.shape[1]] = labels
    return write


def predict_tiled(model: Predictor, read_region: RegionReader, image_size: Size, num_classes: int,
                  window: Size = (512, 512), stride: Size = (341, 341), blend: Blend = "gaussian",
                  batch_size: int = 4, write_labels: LabelSink | None = None,
                  write_probs: Callable[[int, int, Tensor], None] | None = None, band: int | None = 4096,
                  ) -> TiledStats:
    """Segment an image too large for memory, a window at a time, with bounded memory.

    The image is read one window at a time; blended results leave as soon as they are final, as
    blocks of class indices (and optionally probabilities). Besides the windows in flight, the
    only buffer is the strip of overlaps between two rows of windows, about ``band`` pixels
    long at most (reported as ``peak_blend_bytes``); full-image logits are never formed. The result
    equals ``predict_logits(model, image, mode="slide", ...).argmax(1)`` with the same window,
    stride and blend.

    Args:
        model: a runtime, or a module (run in fp32), mapping ``(N, channels, h, w)`` to logits
            ``(N, num_classes, h, w)``.
        read_region: ``read_region(top, left, height, width)`` gives the normalised image there,
            ``(channels, height, width)``: from a file, a memory map, or generated.
        image_size: ``(height, width)``.
        num_classes: number of classes the model predicts (checked).
        window: window size.
        stride: largest step between windows (at most the window).
        blend: ``"gaussian"`` or ``"uniform"`` weighting of overlapping windows.
        batch_size: windows per forward pass.
        write_labels: where class indices go: an array ``(height, width)`` (a ``np.memmap``
            keeps even the output out of memory), or ``write_labels(top, left, labels)``
            called with each finished block ``(h, w)`` (see :func:`label_dtype`).
        write_probs: called as ``write_probs(top, left, probs)`` with each finished block's
            softmax probabilities ``(num_classes, h, w)`` on the CPU.
        band: about the longest strip of overlaps held, in pixels across the image's shorter
            side: a longer side is cut into ``ceil(side / band)`` bands done one at a time, the
            windows on each cut run once per band (``None``: never cut).

    Returns:
        Counts of the work done and the memory held for blending.
    """
    height, width = as_pair(image_size)
    dtype = label_dtype(num_classes)
    write = _label_writer(write_labels, (height, width)) if write_labels is not None else None

    def emit(top: int, left: int, logits: Tensor) -> None:
        if write is not None:
            write(top, left, logits.argmax(0).cpu().numpy().astype(dtype))
        if write_probs is not None:
            write_probs(top, left, logits.softmax(0).cpu())

    return run_windows(model, read_region, (height, width), emit, window, stride, blend, batch_size, num_classes,
                       band)


def normalize_image(pixels: np.ndarray, normalization: Normalization | None = None) -> Tensor:
    """``(H, W, C)`` uint8 pixels → float ``(C, H, W)`` scaled to [0, 1] and normalised: the
    operations of the validation transform (:func:`~pixelwise.data.transforms.val_transform`),
    so prediction sees what evaluation saw.

    Args:
        pixels: the image (or a window of it).
        normalization: ``{"mean": [...], "std": [...]}`` per channel; ``None``: only scaled.
    """
    # A copy: decoded images are read-only arrays, which torch.from_numpy warns about; the uint8
    # copy of one window (or image) costs a quarter of the float tensor made from it anyway.
    image = TF.to_dtype(torch.from_numpy(np.array(pixels, copy=True)).permute(2, 0, 1), torch.float32, scale=True)
    if normalization is None:
        return image
    return TF.normalize(image, list(normalization["mean"]), list(normalization["std"]))


def predict_large_image(model: Predictor, image: np.ndarray | Image.Image, num_classes: int,
                        options: InferenceOptions | None = None,
                        normalization: Normalization | None = IMAGENET_NORMALIZATION, band: int | None = 4096,
                        out: np.ndarray | None = None, probabilities: np.ndarray | None = None) -> np.ndarray:
    """Class indices of a large ``(H, W, 3)`` uint8 image, predicted window by window with
    bounded memory: the one large-image route of prediction and the service.

    Each window is normalised as it is read; no float copy of the image is ever made, and no
    full-image logits (see :func:`predict_tiled`). The options' mode and test-time augmentation
    do not apply (a window at a time is the point).

    Args:
        model: a runtime, or a module (run at the options' precision).
        image: the image, ``(H, W, 3)`` uint8; a ``np.memmap`` keeps it on disk.
        num_classes: number of classes the model predicts.
        options: window, stride, blend, batch size and precision (default: 512 windows).
        normalization: ``{"mean": [...], "std": [...]}`` per channel, applied after scaling to
            [0, 1]; ``None`` only scales.
        band: the longest strip of overlaps held, see :func:`predict_tiled`.
        out: array ``(H, W)`` to write into (for example a ``np.memmap``); by default a new
            array of :func:`label_dtype`.
        probabilities: an array ``(C, H, W)`` (a memory map, typically) to fill with the softmax
            probabilities, block by block.

    Returns:
        The class-index map ``(H, W)``.
    """
    options = options or InferenceOptions.create()
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if image.ndim != 3 or image.dtype != np.uint8:
        raise InputError(f"expected a (H, W, C) uint8 image, got shape {image.shape} and dtype {image.dtype}")
    size = image.shape[:2]
    if out is None:
        out = np.empty(size, dtype=label_dtype(num_classes))

    def read(top: int, left: int, height: int, width: int) -> Tensor:
        return normalize_image(image[top:top + height, left:left + width], normalization)

    def write_probs(top: int, left: int, block: Tensor) -> None:
        probabilities[:, top:top + block.shape[1], left:left + block.shape[2]] = block.numpy()

    predict_tiled(as_runtime(model, options.precision), read, size, num_classes, options.window, options.stride,
                  options.blend, options.batch_size, write_labels=out,
                  write_probs=write_probs if probabilities is not None else None, band=band)
    return out
