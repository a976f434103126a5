"""Joint image+mask transforms for training and evaluation, on ``torchvision.transforms.v2``.

v2 transforms dispatch on the input's type: a ``tv_tensors.Mask`` is resized with nearest
neighbour, padded with its own fill value, flipped and cropped with the image, and left alone
by colour jitter, ``ToDtype`` and ``Normalize``. So the train preset is the torchvision
references' one (random scale, crop padded with the ignore index, flip) plus colour jitter,
with a single custom step, :class:`RandomScale`.

Reproducibility: v2 draws every random parameter from torch's global generator. One call is
reproduced by ``torch.manual_seed(seed)`` before it; in a ``DataLoader``, torch seeds each
worker from the loader's base seed (``base_seed + worker_id``), so passing
``generator=torch.Generator().manual_seed(seed)`` to the loader makes the whole augmented
stream repeat.

Example:
    >>> transform = train_transform(crop_size=(360, 480))
    >>> image, mask = transform(image_uint8, mask_int64)  # float 3×360×480, int64 360×480
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image as PILImage
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pixelwise.data.classes import IGNORE_INDEX

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ColorJitterSpec = float | tuple[float, float, float, float] | None


class RandomScale(v2.Transform):
    """Resize by a random factor: relative to the image, or of the short side to a base size.

    Without ``base_size`` the factor is drawn uniformly from ``scale_range``, so images of any
    size keep their scale statistics. With ``base_size`` the short side becomes a random integer
    in ``[lo * base_size, hi * base_size]``, as v2's ``RandomResize`` in the torchvision
    references, which brings images of different sizes to a common scale.

    Masks use ``NEAREST_EXACT`` (pixel-centre aligned, like the image's bilinear resize) rather
    than the legacy ``NEAREST`` that v2 coerces masks to, which shifts them by up to half an
    input pixel against the image. Both only copy values, so no class index is ever invented.

    Args:
        scale_range: lowest and highest scale factor.
        base_size: reference short side, or ``None`` for factors relative to each image.
    """

    def __init__(self, scale_range: tuple[float, float], base_size: int | None = None) -> None:
        super().__init__()
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
        self.scale_range = (float(low), float(high))
        self.base_size = base_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        low, high = self.scale_range
        if self.base_size is None:
            factor = low + float(torch.rand(())) * (high - low)
        else:
            short = int(torch.randint(int(low * self.base_size), int(high * self.base_size) + 1, ()))
            factor = short / min(height, width)
        return {"size": [max(1, round(height * factor)), max(1, round(width * factor))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            return TF.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return self._call_kernel(TF.resize, inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR,
                                 antialias=True)


class SegmentationTransform:
    """Callable ``(image, mask) -> (float image 3×H×W, int64 mask H×W)`` around a v2 pipeline.

    Accepts uint8 or float tensors, ``tv_tensors`` or PIL images, wraps them as
    ``tv_tensors.Image`` / ``tv_tensors.Mask`` so v2 treats each correctly, and returns plain
    tensors (collation and models need no tv_tensor subclass).

    Args:
        pipeline: the v2 transform applied jointly to the pair.
    """

    def __init__(self, pipeline: v2.Transform) -> None:
        self.pipeline = pipeline

    def __call__(self, image: Any, mask: Any) -> tuple[Tensor, Tensor]:
        image, mask = self.pipeline(_as_image(image), _as_mask(mask))
        return image.as_subclass(Tensor), mask.as_subclass(Tensor).to(torch.int64)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pipeline})"


def train_transform(crop_size: int | tuple[int, int], scale_range: tuple[float, float] = (0.5, 2.0),
                    hflip: float = 0.5, color_jitter: ColorJitterSpec = 0.3,
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    ignore_index: int = IGNORE_INDEX, base_size: int | None = None) -> SegmentationTransform:
    """The training preset: random scale, random crop, flip, colour jitter, normalisation.

    Args:
        crop_size: output height and width (an int for a square). Smaller (scaled) images are
            padded: 0 for the image, ``ignore_index`` for the mask, so padding costs no loss.
        scale_range: scale factors drawn uniformly; relative to each image, or to ``base_size``.
        hflip: probability of a horizontal flip (0 disables it).
        color_jitter: brightness, contrast and saturation strength (one float for all three),
            a ``(brightness, contrast, saturation, hue)`` tuple, or ``None``/0 for none. Only
            the image is jittered.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided by.
        ignore_index: mask value of padded pixels.
        base_size: short side that ``scale_range`` is relative to (torchvision references'
            ``RandomResize``); ``None`` scales each image relative to itself.

    Returns:
        A callable on ``(image, mask)`` pairs; see :class:`SegmentationTransform`.
    """
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    steps: list[v2.Transform] = [
        RandomScale(scale_range, base_size),
        v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}),
    ]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    jitter = _color_jitter(color_jitter)
    if jitter is not None:
        steps.append(jitter)
    steps += _to_normalized_float(mean, std)
    return SegmentationTransform(v2.Compose(steps))


def val_transform(mean: Sequence[float] = IMAGENET_MEAN,
                  std: Sequence[float] = IMAGENET_STD) -> SegmentationTransform:
    """The evaluation preset: the full image, only converted to float and normalised."""
    return SegmentationTransform(v2.Compose(_to_normalized_float(mean, std)))


def denormalize(image: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """Undo ``Normalize`` for display.

    Args:
        image: normalised image ``3×H×W`` or batch ``N×3×H×W``.
        mean: the mean used to normalise.
        std: the standard deviation used to normalise.

    Returns:
        The image in [0, 1] (clamped), same shape.
    """
    shape = (-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(shape)
    std_t = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(shape)
    return (image.as_subclass(Tensor) * std_t + mean_t).clamp(0, 1)


def _to_normalized_float(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    # With a plain dtype, ToDtype converts only images (and videos): the mask keeps int64.
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def _color_jitter(spec: ColorJitterSpec) -> v2.ColorJitter | None:
    if spec is None or spec == 0:
        return None
    if isinstance(spec, (int, float)):
        return v2.ColorJitter(brightness=spec, contrast=spec, saturation=spec)
    brightness, contrast, saturation, hue = spec
    return v2.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue)


def _as_image(image: Any) -> tv_tensors.Image:
    if isinstance(image, tv_tensors.Image):
        return image
    if isinstance(image, PILImage.Image):
        return TF.pil_to_tensor(image.convert("RGB"))  # already a tv_tensors.Image
    return tv_tensors.Image(torch.as_tensor(image))


def _as_mask(mask: Any) -> tv_tensors.Mask:
    if isinstance(mask, PILImage.Image):
        mask = np.array(mask)  # a writable copy (torch warns on read-only arrays)
    mask = torch.as_tensor(mask)
    if mask.ndim == 3 and mask.shape[0] == 1:  # a 1×H×W mask from a single-channel loader
        mask = mask[0]
    return tv_tensors.Mask(mask.to(torch.int64) if mask.dtype != torch.int64 else mask)
