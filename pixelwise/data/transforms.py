"""Joint image+mask transforms for training and evaluation, on ``torchvision.transforms.v2``.

v2 transforms dispatch on the input's type: a ``tv_tensors.Mask`` is resized with nearest
neighbour, padded with its own fill value, flipped and cropped with the image, and left alone
by colour jitter, ``ToDtype`` and ``Normalize``. So the train preset is the torchvision
references' one (random scale, crop padded with the ignore index, flip) plus colour jitter,
with a single custom step, :class:`RandomScale`; optionally U-Net's elastic deformation
(:class:`~pixelwise.data.elastic.ElasticDeformation`) and a random convolution.

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

import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image as PILImage
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pixelwise.data.base import SegmentationDataset
from pixelwise.data.classes import IGNORE_INDEX
from pixelwise.data.elastic import ElasticDeformation
from pixelwise.errors import InputError

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
            raise InputError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
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


class RandomConvolution(v2.Transform):
    """At a given chance, mix the image with a random convolution of itself (Xu et al., 2021,
    "Robust and Generalizable Visual Representation Learning via Random Convolutions", RC-mix).

    A kernel size is drawn from ``kernel_sizes`` and a ``C × C × k × k`` kernel from
    ``N(0, 1 / (C·k²))``; the convolved image (reflect-padded, so its pixels stay on the image's)
    is brought back to the image's per-channel mean and standard deviation, and mixed with the
    image by a weight ``α ~ U(0, 1)``. Shapes survive and local texture and colour do not, so a
    network trained on it leans on shape, which is what carries to scenes of another light,
    camera or place. The mask is left alone. Runs on the float image (after ``Normalize``).

    Args:
        probability: chance that an image is changed, in [0, 1].
        kernel_sizes: odd kernel sizes to draw from.
    """

    def __init__(self, probability: float, kernel_sizes: Sequence[int] = (1, 3, 5, 7)) -> None:
        super().__init__()
        if not 0 <= probability <= 1:
            raise InputError(f"the random-convolution probability must be in [0, 1], got {probability}")
        if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise InputError(f"kernel sizes must be odd and positive (the image must not shift), got {kernel_sizes}")
        self.probability, self.kernel_sizes = float(probability), tuple(int(k) for k in kernel_sizes)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if float(torch.rand(())) >= self.probability:
            return {"weight": None}
        channels = next(inpt.shape[-3] for inpt in flat_inputs if isinstance(inpt, tv_tensors.Image))
        size = self.kernel_sizes[int(torch.randint(len(self.kernel_sizes), ()))]
        weight = torch.randn(channels, channels, size, size) / math.sqrt(channels * size * size)
        return {"weight": weight, "alpha": float(torch.rand(()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        weight = params["weight"]
        if weight is None or not isinstance(inpt, tv_tensors.Image):
            return inpt
        if not inpt.is_floating_point():
            raise TypeError("RandomConvolution works on float images: put it after ToDtype/Normalize")
        image = inpt.as_subclass(Tensor)
        pad = weight.shape[-1] // 2
        batch = image.reshape(-1, *image.shape[-3:])
        padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad), mode="reflect") if pad else batch
        convolved = torch.nn.functional.conv2d(padded, weight.to(image.dtype))
        dims = (-2, -1)
        mean, std = batch.mean(dims, keepdim=True), batch.std(dims, keepdim=True)
        convolved = (convolved - convolved.mean(dims, keepdim=True)) / convolved.std(dims, keepdim=True).clamp(
            min=1e-6) * std + mean
        mixed = params["alpha"] * batch + (1 - params["alpha"]) * convolved
        return tv_tensors.wrap(mixed.reshape(image.shape), like=inpt)


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
                    ignore_index: int = IGNORE_INDEX, base_size: int | None = None,
                    random_conv: float = 0.0, elastic: ElasticDeformation | None = None) -> SegmentationTransform:
    """The training preset: random scale, optionally an elastic deformation, random crop, flip,
    colour jitter, normalisation, and optionally a random convolution.

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
        random_conv: chance that the normalised image is mixed with a random convolution of
            itself (:class:`RandomConvolution`); 0 for never.
        elastic: an elastic deformation applied to the scaled image and mask before the crop
            (so the field spans the whole image, as in U-Net, and the crop's borders hold real
            neighbours rather than mirrored ones); ``None`` for none.

    Returns:
        A callable on ``(image, mask)`` pairs; see :class:`SegmentationTransform`.
    """
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    steps: list[v2.Transform] = [RandomScale(scale_range, base_size)]
    if elastic is not None:
        steps.append(elastic)
    steps.append(v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}))
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    jitter = _color_jitter(color_jitter)
    if jitter is not None:
        steps.append(jitter)
    steps += _to_normalized_float(mean, std)
    if random_conv > 0:
        steps.append(RandomConvolution(random_conv))
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


def cutmix_box(height: int, width: int, alpha: float = 1.0) -> tuple[int, int, int, int]:
    """A CutMix box ``(x1, y1, x2, y2)`` (Yun et al., 2019), drawn from torch's global generator
    as ``torchvision.transforms.v2.CutMix`` draws it: a mixing ratio ``λ ~ Beta(α, α)``, a
    centre uniform over the pixels, sides ``√(1 − λ)`` of the image's, clipped to the image (so
    the box covers ``1 − λ`` of it on average before clipping, less after)."""
    lam = float(torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha)).sample(()))
    centre_x = int(torch.randint(width, size=(1,)))
    centre_y = int(torch.randint(height, size=(1,)))
    half = 0.5 * math.sqrt(1.0 - lam)
    half_w, half_h = int(half * width), int(half * height)
    return (max(centre_x - half_w, 0), max(centre_y - half_h, 0),
            min(centre_x + half_w, width), min(centre_y + half_h, height))


class CutMix(Dataset):
    """Training samples with, at a given probability, a box of another sample pasted in: image
    and mask alike, so every pixel keeps its own label (CutMix for segmentation, as French et
    al., 2020). The partner is drawn uniformly from the data set and augmented as any sample;
    every draw comes from torch's global generator, so under
    :class:`~pixelwise.training.sampling.SeededSamples` a sample and its partner are a function of
    the sample's seed (resumed and distributed runs see the same mixes).

    Args:
        dataset: yields ``(image, mask)`` pairs of one size (training crops).
        probability: chance that a sample is mixed, in [0, 1].
        alpha: the Beta distribution's parameter for the box's share (1: uniform).
    """

    def __init__(self, dataset: Dataset, probability: float, alpha: float = 1.0) -> None:
        if not 0 <= probability <= 1:
            raise InputError(f"the CutMix probability must be in [0, 1], got {probability}")
        self.dataset, self.probability, self.alpha = dataset, probability, alpha

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.dataset[index]
        if float(torch.rand(())) >= self.probability:
            return image, mask
        other_image, other_mask = self.dataset[int(torch.randint(len(self), size=()))]
        if other_image.shape != image.shape or other_mask.shape != mask.shape:
            raise InputError(f"CutMix needs samples of one size (training crops): sample {index} is "
                             f"{tuple(image.shape)}, its partner {tuple(other_image.shape)}; set data.crop_size")
        x1, y1, x2, y2 = cutmix_box(image.shape[-2], image.shape[-1], self.alpha)
        image, mask = image.clone(), mask.clone()
        image[..., y1:y2, x1:x2] = other_image[..., y1:y2, x1:x2]
        mask[..., y1:y2, x1:x2] = other_mask[..., y1:y2, x1:x2]
        return image, mask


class RareClassSampling(Dataset):
    """Training samples drawn for a class rather than for an image: rare-class sampling (Hoyer
    et al., 2022, "DAFormer", section 3.3).

    Each sample first draws a class ``c`` with probability ``P(c) ∝ exp((1 − f_c) / T)``, where
    ``f_c`` is the class's share of the labelled pixels of the unaugmented images; then an image
    uniformly among those holding at least ``min_pixels`` pixels of ``c``; then augments it
    (its random crop redrawn, up to ``redraws`` times, until the crop holds at least
    ``min_crop_ratio × min_pixels`` pixels of ``c``). A rare class is then seen about as often as
    a common one, and its images are not left to the chance of an epoch's order. A small ``T``
    draws the rare classes almost exclusively; a large one draws every class alike. Every draw
    comes from torch's global generator, so under
    :class:`~pixelwise.training.sampling.SeededSamples` a sample is a function of its seed (resumed
    and distributed runs see the same samples); the index asked for is not used.

    Args:
        dataset: the training set, with its random augmentation.
        image_class_pixels: ``(images, classes)`` pixels of each class in each unaugmented image
            (:func:`pixelwise.losses.image_class_pixels`).
        temperature: ``T`` above, > 0.
        min_pixels: pixels of a class an image needs to be drawn for it, ≥ 1.
        min_crop_ratio: share of ``min_pixels`` the crop needs; 0 takes the first crop.
        redraws: most augmentations tried for one sample.

    Raises:
        ValueError: a setting out of range, a table that does not match the data set, or no
            image holding ``min_pixels`` of any class.
    """

    def __init__(self, dataset: Dataset, image_class_pixels: Tensor, temperature: float = 0.01,
                 min_pixels: int = 3000, min_crop_ratio: float = 0.5, redraws: int = 10) -> None:
        counts = torch.as_tensor(image_class_pixels)
        if not temperature > 0:
            raise InputError(f"the rare-class sampling temperature must be > 0, got {temperature}")
        if min_pixels < 1 or min_crop_ratio < 0 or redraws < 1:
            raise InputError(f"rare-class sampling needs min_pixels >= 1, min_crop_ratio >= 0 and redraws >= 1, "
                             f"got {min_pixels}, {min_crop_ratio} and {redraws}")
        if counts.dim() != 2 or counts.shape[0] != len(dataset):  # type: ignore[arg-type]
            raise InputError(f"rare-class sampling needs one row of class pixel counts per image: "
                             f"{tuple(counts.shape)} for {len(dataset)} images")  # type: ignore[arg-type]
        eligible = counts >= min_pixels
        drawable = eligible.any(0)
        if not drawable.any():
            largest = int(counts.max()) if counts.numel() else 0
            raise InputError(f"no training image holds {min_pixels} pixels of any class: lower the rare-class "
                             f"sampling's min_pixels (the largest count is {largest})")
        share = counts.sum(0).double() / counts.sum().clamp(min=1)
        weights = ((1 - share) / temperature).masked_fill(~drawable, -math.inf)
        self.class_probability = weights.softmax(0)
        self.images_of = [eligible[:, c].nonzero().flatten() for c in range(counts.shape[1])]
        self.dataset, self.min_crop = dataset, min_crop_ratio * min_pixels
        self.redraws = redraws

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        c = int(torch.multinomial(self.class_probability, 1))
        images = self.images_of[c]
        draws = self._augmentations(int(images[int(torch.randint(len(images), size=()))]))
        for _ in range(self.redraws):
            image, mask = next(draws)
            if int((mask == c).sum()) >= self.min_crop:
                break
        return image, mask

    def _augmentations(self, index: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Augmented draws of one sample; a :class:`SegmentationDataset`'s files are read once."""
        dataset = self.dataset
        if isinstance(dataset, SegmentationDataset) and dataset.transform is not None:
            image, mask = dataset.load(index)
            while True:
                yield dataset.transform(image, mask)
        while True:
            yield dataset[index]
