"""What every segmentation model shares: any input size in, logits at that size out."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from pixelwise.errors import InputError
from pixelwise.layers.conv import standardize_per_image
from pixelwise.layers.padding import pad_to_multiple
from pixelwise.layers.resize import resize_bilinear, scaled_size


@dataclass(frozen=True)
class DesignedSizes:
    """The input sizes a model takes with no padding by its design, and why
    (see :meth:`SegmentationModel.designed_sizes`).

    Attributes:
        sizes: the sizes, heights and widths alike, in the range asked about.
        explanation: the rule, in a sentence.
        period: the spacing of the sizes where the design fixes it (1: every size); ``None``:
            read it off ``sizes``.
    """

    sizes: tuple[int, ...]
    explanation: str
    period: int | None = None


def size_listing(sizes: Sequence[int], head: int = 4) -> str:
    """Sizes for a sentence: the first ``head``, then the last (``4, 20, 36, 52, …, 1012``)."""
    if not sizes:
        return "none in range"
    shown = ", ".join(map(str, sizes[:head]))
    return shown + (f", …, {sizes[-1]}" if len(sizes) > head else "")


INPUT_NORMS = (None, "instance")


class SegmentationModel(nn.Module):
    """Base class of every model.

    Subclasses implement :meth:`forward_padded` on inputs whose height and width are multiples
    of ``size_divisor`` (and at least twice it for a training batch of one image); :meth:`forward`
    pads any input (bottom and right, zeros) and crops the logits back, so users never resize to
    a multiple of 32. :meth:`padded_size` says what size the network computes on.

    Attributes:
        num_classes: number of output channels.
        in_channels: channels the model expects (3 for RGB).
        size_divisor: input multiple the architecture needs (1: none).
        min_train_size: smallest side a training batch of one image is padded to (models with
            ``size_divisor == 1`` only).
        channels_last: convert inputs to the channels-last layout; set, with the weights'
            layout, by :meth:`to_channels_last`.
        input_scale: the network runs on the input resized by this factor (bilinear,
            antialiased) and its logits are resized back to the input's size: a cheaper model
            at the same output size (1: no resizing); set by :meth:`set_input_scale`
            (``create_model(..., input_scale=0.5)`` calls it).
        input_norm: ``"instance"``: every image's channels are standardised over its own pixels
            (zero mean, unit variance) before the network sees them, so a per-channel change
            of brightness, contrast or white balance leaves the logits unchanged; ``None``: the
            input as given. Set by :meth:`set_input_norm` (``create_model(...,
            input_norm="instance")`` calls it).

    These three change how :meth:`forward` treats its input, not the weights' meaning; they
    are set only through those three methods.
    """

    num_classes: int
    in_channels: int = 3
    size_divisor: int = 1
    min_train_size: int = 1
    channels_last: bool = False
    input_scale: float = 1.0
    input_norm: str | None = None

    def forward(self, x: Tensor, return_aux: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``(N, num_classes, H, W)`` at the input's size.

        Args:
            x: images ``(N, in_channels, H, W)``, any ``H`` and ``W``.
            return_aux: also return the auxiliary head's logits (training only; models
                without an auxiliary head raise).
        """
        self._check_input(x)
        if return_aux and not self.has_aux:
            raise InputError(f"{type(self).__name__} has no auxiliary head; build it with aux=True")
        size = x.shape[-2:]
        if self.input_norm == "instance":
            x = standardize_per_image(x)
        if self.input_scale != 1.0:
            x = resize_bilinear(x, scaled_size(size, self.input_scale), antialias=True)
        height, width = x.shape[-2:]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        padded = pad_to_multiple(x, self.size_divisor, self._min_padded_size(x.shape[0]))
        logits, aux = self.forward_padded(padded, return_aux)
        outputs = [logits[..., :height, :width]] + ([aux[..., :height, :width]] if return_aux else [])
        if self.input_scale != 1.0:
            outputs = [resize_bilinear(output, size) for output in outputs]
        return tuple(outputs) if return_aux else outputs[0]

    def set_input_scale(self, scale: float) -> SegmentationModel:
        """Run the network on inputs resized by ``scale`` (in ``(0, 4]``) and resize its logits
        back to the input's size; returns the model itself."""
        if not 0 < scale <= 4:
            raise InputError(f"input_scale must be in (0, 4], got {scale}")
        self.input_scale = float(scale)
        return self

    def set_input_norm(self, kind: str | None) -> SegmentationModel:
        """Standardise every input image per channel before the network (``"instance"``) or not
        (``None``); returns the model itself."""
        if kind not in INPUT_NORMS:
            raise InputError(f"input_norm must be null (the input as given) or 'instance' (each image "
                             f"standardised per channel), got {kind!r}")
        self.input_norm = kind
        return self

    def to_channels_last(self) -> SegmentationModel:
        """Store the 4-D weights in the channels-last layout and convert inputs to it in
        :meth:`forward`, so convolutions see one layout; returns the model itself."""
        self.to(memory_format=torch.channels_last)
        self.channels_last = True
        return self

    def _min_padded_size(self, batch: int) -> int:
        """A 1×1 deepest map leaves batch norm one value per channel, which a training batch of
        one image cannot normalise: such a batch is padded to two cells of the coarsest grid, or
        (models that do not pad to a grid, ``size_divisor == 1``) to ``min_train_size``.
        Anywhere else one cell is enough: inference never pads further than the grid needs."""
        if not (self.training and batch == 1):
            return 1
        return 2 * self.size_divisor if self.size_divisor > 1 else self.min_train_size

    def padded_size(self, size: Sequence[int]) -> tuple[int, int]:
        """The height and width the network computes on, in eval mode, for an input of ``size``
        (height, width): after ``input_scale`` and the padding of :meth:`forward`. What an input
        costs in time and memory goes with this area, not with the input's own (a 1×60000 image
        computes on 32×60000 at a ``size_divisor`` of 32)."""
        height, width = (int(side) for side in scaled_size(size, self.input_scale)) if self.input_scale != 1.0 \
            else (int(size[0]), int(size[1]))
        divisor = self.size_divisor
        return -(-height // divisor) * divisor, -(-width // divisor) * divisor

    def forward_padded(self, x: Tensor, return_aux: bool) -> tuple[Tensor, Tensor | None]:
        """Logits (and auxiliary logits when asked, else ``None``) at the padded input size."""
        raise NotImplementedError

    @property
    def context_margin(self) -> int:
        """How far inside its input :meth:`forward_context` starts its logits, in pixels: a model
        that needs real image context around a region it predicts (the valid-convolution U-Net)
        says so here and windowed inference reads that context; 0 (every other model): a window
        is predicted from its own pixels, with :meth:`forward`."""
        return 0

    def context_region(self, region: Sequence[int], image_size: Sequence[int]) -> tuple[int, int, int, int]:
        """The region ``(top, left, height, width)`` to read, and give :meth:`forward_context`, to
        predict ``region`` (the same form) of an image of ``image_size``; it may reach outside the
        image, where the image is mirrored as :func:`~pixelwise.layers.mirror_pad` mirrors it."""
        return tuple(int(value) for value in region)

    def forward_context(self, x: Tensor) -> Tensor:
        """Logits of the input read for :meth:`context_region`: their pixel ``(0, 0)`` is the
        input's pixel ``(context_margin, context_margin)``, and they cover the region asked for."""
        return self(x)

    def designed_sizes(self, min_size: int, max_size: int) -> DesignedSizes | None:
        """The input sizes from ``min_size`` to ``max_size`` that need no padding, by design;
        ``None`` when the design does not say (the layers decide, see
        :func:`pixelwise.analysis.valid_input_sizes`).

        A model that pads to a multiple of ``size_divisor`` needs none at its multiples (in
        inference; a training batch of one image is padded to at least twice it).
        """
        if self.size_divisor <= 1:
            return None
        divisor = self.size_divisor
        sizes = tuple(n for n in range(min_size, max_size + 1) if n % divisor == 0)
        return DesignedSizes(sizes, (
            f"{type(self).__name__} pads every input to a multiple of {divisor}; its multiples "
            f"({size_listing(sizes)}) need no padding."))

    @property
    def has_aux(self) -> bool:
        """Whether the model has an auxiliary head (used only for the training loss)."""
        return getattr(self, "aux_classifier", None) is not None

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise InputError(f"expected a batch of images (N, C, H, W), got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise InputError(
                f"{type(self).__name__} expects {self.in_channels}-channel images, got {x.shape[1]} channels "
                f"(shape {tuple(x.shape)})"
            )
        if x.shape[-2] < 1 or x.shape[-1] < 1:
            raise InputError(f"image height and width must be at least 1, got shape {tuple(x.shape)}")
