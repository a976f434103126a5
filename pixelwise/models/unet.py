"""U-Net.

Paper: "U-Net: Convolutional Networks for Biomedical Image Segmentation", Ronneberger, Fischer
and Brox, MICCAI 2015 (https://arxiv.org/abs/1505.04597).

Two variants behind one builder:

- ``encoder=None``: the paper's network. A contracting path of two *valid* (unpadded) 3×3
  convolutions and a 2×2 max-pool per level, an expanding path that upsamples by 2 while
  halving the channels, **crops the centre** of the skip feature and concatenates it, then two
  more valid convolutions. Every valid convolution eats a one-pixel border, so the output is
  smaller than the input (572×572 in, 388×388 out at depth 4) and only some input sizes are
  possible. The paper's *overlap-tile strategy* mirrors the image outwards so that the
  network's output covers all of it; :class:`UNet` does this, so it segments an image of any
  size. :func:`unet_output_size` and :func:`unet_input_size` give the size arithmetic.
  ``padding="same"`` gives the same network with zero-padded convolutions instead (the form
  most reimplementations use): no mirroring and no cropping, so it computes on the image alone,
  several times cheaper on small images (64×64 at depth 3 is 156×156 after mirroring).
- ``encoder="resnet18"`` (or any encoder name): the common modern form, an encoder's features
  as the contracting path and padded convolutions in the decoder, so sizes are kept and the
  skip features are concatenated whole.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from pixelwise.encoders import Encoder, EncoderWeights, create_encoder
from pixelwise.errors import InputError
from pixelwise.layers import IMAGE_GRID, ConvNormAct, Grid, LayerSpec, make_upsampler, mirror_pad, upsampler_between
from pixelwise.layers.conv import standardize_per_image
from pixelwise.models.base import DesignedSizes, SegmentationModel, size_listing
from pixelwise.models.registry import register_model

# Size arithmetic of the paper's network --------------------------------------------------------
#
# This is for ``padding="valid"``; with ``"same"`` every convolution keeps its size and the
# network's output is its (padded) input's size. Call ``bottom`` the side of the deepest feature
# after its two valid convolutions. Going up the contracting path each level's input is
# ``2·s + 4`` (undo the pool, then the two convolutions' borders); going up the expanding path
# each level's output is ``2·o - 4``. Solving both
# recurrences at depth d:
#   input  = 2^d · bottom + 2^(d+3) - 4        (depth 4: 16·bottom + 124)
#   output = 2^d · (bottom - 4) + 4            (depth 4: 16·bottom - 60)
# so every valid input differs from its output by the same border, 3·2^(d+2) - 8 (184 at depth 4).


def _check_depth(depth: int) -> None:
    if not isinstance(depth, int) or depth < 1:
        raise InputError(f"U-Net depth (number of poolings) must be a positive integer, got {depth!r}")


def _input_for_bottom(bottom: int, depth: int) -> int:
    return 2**depth * bottom + 2 ** (depth + 3) - 4


def _output_for_bottom(bottom: int, depth: int) -> int:
    return 2**depth * (bottom - 4) + 4


def _smallest_bottom(depth: int) -> int:
    """The smallest deepest-feature side for which every expanding level keeps at least one pixel.

    Below 4 the expanding path shrinks (``2·o - 4 < o``), fastest at its last level, so checking
    the final output is enough.
    """
    bottom = 1
    while _output_for_bottom(bottom, depth) < 1:
        bottom += 1
    return bottom


def unet_margin(depth: int = 4) -> int:
    """The border the paper's network eats on each side: ``(input - output) / 2`` (92 at depth 4)."""
    _check_depth(depth)
    return 3 * 2 ** (depth + 1) - 4


def unet_output_size(input_size: int, depth: int = 4) -> int:
    """Output side of the paper's (valid-convolution) network for an input side.

    Args:
        input_size: height or width of the input.
        depth: number of 2×2 max-poolings (4 in the paper).

    Returns:
        The height or width of the output (388 for 572 at depth 4).

    Raises:
        ValueError: some max-pooling would get an odd size, or the output would be empty; the
            message names the nearest valid input sizes.
    """
    _check_depth(depth)
    offset = input_size - _input_for_bottom(0, depth)
    bottom, remainder = divmod(offset, 2**depth)
    if remainder or bottom < _smallest_bottom(depth):
        reason = "a 2×2 max-pooling would get an odd size" if remainder else "nothing would be left of the output"
        nearest = " or ".join(map(str, _nearest_valid_inputs(input_size, depth)))
        raise InputError(
            f"{input_size} is not a valid input size for the depth-{depth} U-Net without padding "
            f"({reason}); the nearest valid sizes are {nearest}"
        )
    return _output_for_bottom(bottom, depth)


def _nearest_valid_inputs(input_size: int, depth: int) -> list[int]:
    """The valid input sizes just below (when there is one) and just above ``input_size``."""
    smallest = _smallest_bottom(depth)
    above = max(smallest, -(-(input_size - _input_for_bottom(0, depth)) // 2**depth))
    below = [_input_for_bottom(above - 1, depth)] if above - 1 >= smallest else []
    return below + [_input_for_bottom(above, depth)]


def unet_input_size(output_size: int, depth: int = 4) -> int:
    """The smallest valid input side whose output side is at least ``output_size``.

    Args:
        output_size: height or width the output must cover.
        depth: number of 2×2 max-poolings.

    Returns:
        An input size accepted by :func:`unet_output_size` (572 for 388 at depth 4).
    """
    _check_depth(depth)
    if output_size < 1:
        raise InputError(f"output size must be at least 1, got {output_size}")
    bottom = max(_smallest_bottom(depth), 4 + -(-(output_size - 4) // 2**depth))
    return _input_for_bottom(bottom, depth)


UNET_PADDINGS = {"valid": 0, "same": 1}  # the paper's U-Net's padding choices: conv padding of each


# Building blocks -----------------------------------------------------------------------------


class DoubleConv(nn.Sequential):
    """Two 3×3 conv-norm-ReLU layers: valid (``padding=0``, as in the paper) or size-keeping."""

    def __init__(self, in_channels: int, out_channels: int, norm: LayerSpec, padding: int = 0) -> None:
        super().__init__(
            ConvNormAct(in_channels, out_channels, 3, padding=padding, norm=norm),
            ConvNormAct(out_channels, out_channels, 3, padding=padding, norm=norm),
        )


def center_crop(x: Tensor, height: int, width: int) -> Tensor:
    """The central ``height × width`` window of ``x`` (the paper's crop of the skip feature)."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top:top + height, left:left + width]


class ExpandingBlock(nn.Module):
    """One level of the paper's expanding path: upsample ×2 halving the channels (the paper's
    2×2 up-convolution), concatenate the skip feature, two 3×3 convolutions. With
    ``padding=0`` (the paper's valid convolutions) the skip is centre-cropped to the upsampled
    map first; with ``padding=1`` (same) both already have the same size."""

    def __init__(self, in_channels: int, upsample: str, norm: LayerSpec, padding: int = 0) -> None:
        super().__init__()
        out_channels = in_channels // 2
        self.up = make_upsampler(upsample, in_channels, out_channels, 2)
        # The skip has out_channels too: concatenation restores in_channels.
        self.convs = DoubleConv(in_channels, out_channels, norm, padding)
        self.crop_skip = padding == 0  # size-keeping convolutions leave nothing to crop

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        if self.crop_skip:
            # Valid convolutions only (same-padded ones never get here): they left the skip
            # larger than the upsampled map; the border it has in excess has no counterpart
            # below, so the paper keeps only the centre.
            skip = center_crop(skip, x.shape[-2], x.shape[-1])
        return self.convs(torch.cat([skip, x], dim=1))


class DecoderBlock(nn.Module):
    """One level of the encoder-backed decoder: upsample onto the skip's grid, concatenate the
    skip (if any), two padded 3×3 conv-norm-ReLU.

    Args:
        source: the grid of the map coming in.
        target: the grid of the skip (the input image's for the last block of an encoder whose
            finest feature is below full resolution).
        aligned: put the upsampled pixels on ``target``'s centres; ``False``: half-pixel
            centres whatever the grids (models built before pixelwise aligned its decoders).
    """

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, source: Grid, target: Grid,
                 upsample: str, norm: LayerSpec, aligned: bool = True) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.up = upsampler_between(upsample, in_channels, out_channels, source, target, aligned)
        self.convs = DoubleConv(out_channels + skip_channels, out_channels, norm, padding=1)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        x = self.up(x)
        if skip is not None:
            x = torch.cat([skip, x], dim=1)
        return self.convs(x)


# Models --------------------------------------------------------------------------------------


class UNet(SegmentationModel):
    """The paper's U-Net: valid convolutions with the overlap-tile strategy (``padding="valid"``),
    or the same network with zero-padded convolutions on the image itself (``padding="same"``).

    With valid convolutions: the paper's 2×2 stride-2 up-convolution needs no pixel beyond its
    input, so its network is valid throughout and tiles shifted by multiples of ``2^depth``
    agree exactly. The upsamplers of :func:`~pixelwise.layers.make_upsampler` (the transposed
    one included: its kernel is 4, bilinear-initialised) look one or two pixels past the
    borders of their input through padding, so a tile's logits depend slightly on where the
    tile ends within a band along its edges (up to 30 pixels at depth 4); one tile for the
    whole image, as :meth:`forward` does, is unaffected.

    Args:
        num_classes: number of classes.
        upsample: upsampler kind for the expanding path.
        base_channels: channels of the first level; level ``i`` has ``base_channels·2^i``.
        depth: number of 2×2 max-poolings (4 in the paper).
        norm: norm layer after each convolution; ``None`` gives the paper's exact network.
        padding: ``"valid"`` (the paper: unpadded convolutions and overlap-tile) or ``"same"``
            (zero-padded convolutions on the image as given, padded to a multiple of
            ``2^depth``).
    """

    def __init__(self, num_classes: int, upsample: str = "transposed", base_channels: int = 64,
                 depth: int = 4, norm: LayerSpec = "batchnorm", padding: str = "valid") -> None:
        super().__init__()
        _check_depth(depth)
        if padding not in UNET_PADDINGS:
            raise InputError(f"U-Net padding must be one of {list(UNET_PADDINGS)}, got {padding!r}")
        self.num_classes = num_classes
        self.padding = padding
        # Overlap-tile handles every size; same-padded levels need sides divisible by 2^depth.
        self.size_divisor = 1 if padding == "valid" else 2**depth
        self.depth = depth
        conv_padding = UNET_PADDINGS[padding]
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.contracting = nn.ModuleList([DoubleConv(c_in, c_out, norm, conv_padding)
                                          for c_in, c_out in zip([self.in_channels] + widths[:-1], widths)])
        self.pool = nn.MaxPool2d(2)
        self.expanding = nn.ModuleList(
            [ExpandingBlock(width, upsample, norm, conv_padding) for width in reversed(widths[1:])]
        )
        self.classifier = nn.Conv2d(base_channels, num_classes, 1)

    def forward_core(self, x: Tensor) -> Tensor:
        """The network itself, without overlap-tile: logits for the centre of ``x``.

        Args:
            x: images whose height and width are valid input sizes (see :func:`unet_output_size`;
                with ``padding="same"``: multiples of ``2^depth``).

        Returns:
            Logits of size ``unet_output_size(H) × unet_output_size(W)`` (388×388 for 572×572;
            with ``padding="same"``: ``H × W``).
        """
        if self.padding == "valid":
            for side in x.shape[-2:]:
                unet_output_size(side, self.depth)  # a clear error instead of a failing crop
        return self._forward_levels(x)

    def _forward_levels(self, x: Tensor) -> Tensor:
        skips = []
        for level, convs in enumerate(self.contracting):
            x = convs(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in self.expanding:
            x = block(x, skips.pop())
        return self.classifier(x)

    def forward_padded(self, x: Tensor, return_aux: bool) -> tuple[Tensor, None]:
        """Overlap-tile: mirror the image outwards until the core's output covers all of it
        (``padding="same"``: the core runs on the image itself)."""
        if self.padding == "same":
            return self.forward_core(x), None
        height, width = x.shape[-2:]
        margin = unet_margin(self.depth)
        # The output starts `margin` pixels into the input, so padding the top and left by the
        # margin aligns output pixel (0, 0) with image pixel (0, 0); the bottom and right get
        # whatever reaches the next valid input size, and the excess output is cropped.
        bottom = unet_input_size(height, self.depth) - height - margin
        right = unet_input_size(width, self.depth) - width - margin
        logits = self.forward_core(mirror_pad(x, margin, bottom, margin, right))
        return logits[..., :height, :width], None

    @property
    def context_margin(self) -> int:
        """The valid network's margin (:func:`unet_margin`): windowed inference reads real image
        context around each window (:meth:`context_region`). 0 when same-padded, or at an
        ``input_scale`` other than 1 (each window is then predicted on its own, by :meth:`forward`)."""
        if self.padding == "same" or self.input_scale != 1.0:
            return 0
        return unet_margin(self.depth)

    def context_region(self, region: Sequence[int], image_size: Sequence[int]) -> tuple[int, int, int, int]:
        """Overlap-tile for one window of a larger image.

        Along each side, :meth:`forward` runs the core on the image mirrored onto
        ``[-margin, unet_input_size(side) - margin)``. The region read here is a stretch of that
        same mirrored input which starts on one of its multiples of ``2^depth`` (so every
        max-pooling pairs the same pixels as the whole image's), gives logits ``2^(depth+1)``
        pixels past the window on each side (the upsamplers pad their input's borders, which
        changes a band of up to ``2·(2^depth - 1)`` logits along every edge of a stretch that the
        whole input does not share), and is equally long for every window of one size (so
        windows batch). The window's logits are then those of :meth:`forward` on the whole
        image, to rounding, wherever the window lies.
        """
        if not self.context_margin:
            return super().context_region(region, image_size)
        top, left, height, width = (int(value) for value in region)
        first_row, rows = self._context_span(top, height, int(image_size[0]))
        first_col, cols = self._context_span(left, width, int(image_size[1]))
        return first_row, first_col, rows, cols

    def _context_span(self, start: int, length: int, side: int) -> tuple[int, int]:
        """First pixel and length of the stretch :meth:`context_region` reads along one side."""
        grid = 2**self.depth
        margin, reach = unet_margin(self.depth), 2 * grid
        whole = unet_input_size(side, self.depth)
        span = min(whole, unet_input_size(length + grid - 1 + 2 * reach, self.depth))
        first = (start - reach) // grid * grid - margin
        return min(max(first, -margin), whole - margin - span), span

    def forward_context(self, x: Tensor) -> Tensor:
        """The core on a region read for :meth:`context_region` (after the input norm and layout
        :meth:`forward` applies): logits starting ``context_margin`` pixels inside it."""
        if not self.context_margin:
            return super().forward_context(x)
        self._check_input(x)
        if self.input_norm == "instance":
            x = standardize_per_image(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.forward_core(x)

    def designed_sizes(self, min_size: int, max_size: int) -> DesignedSizes:
        """Overlap-tile mirrors the margin onto every side; the sizes whose mirrored image is a
        valid input of the network need nothing more. A same-padded U-Net pads to its size
        divisor instead, like any other model."""
        if self.padding == "same":
            return super().designed_sizes(min_size, max_size)
        margin = unet_margin(self.depth)
        sizes = tuple(n for n in range(min_size, max_size + 1) if unet_input_size(n, self.depth) - n == 2 * margin)
        return DesignedSizes(sizes, (
            f"The paper U-Net (depth {self.depth}) always mirrors {margin} pixels onto each side (overlap-tile); "
            f"sizes {size_listing(sizes)} need nothing more (its valid network then sees "
            f"{size_listing(tuple(n + 2 * margin for n in sizes))})."))


class EncoderUNet(SegmentationModel):
    """U-Net decoder with padded convolutions over any encoder's features.

    Args:
        num_classes: number of classes.
        encoder: the contracting path; its features are the skips.
        upsample: upsampler kind for every decoder block.
        decoder_channels: output channels of the decoder blocks, deepest first; the first
            ``len(encoder.channels) - 1`` (one more if the finest feature is below full
            resolution) are used.
        norm: norm layer of the decoder's convolutions.
        aligned: every upsampling lands on the grid of the map it is concatenated with, and the
            logits on the input's pixels (the encoder's :attr:`~pixelwise.encoders.Encoder.grids`);
            ``False``: half-pixel upsampling, the geometry of earlier pixelwise versions.
    """

    def __init__(self, num_classes: int, encoder: Encoder, upsample: str = "transposed",
                 decoder_channels: Sequence[int] = (256, 128, 64, 32, 16), norm: LayerSpec = "batchnorm",
                 aligned: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = encoder
        self.size_divisor = encoder.reductions[-1]
        self.decoder = nn.ModuleList(_decoder_blocks(encoder, upsample, list(decoder_channels), norm, aligned))
        self.classifier = nn.Conv2d(self.decoder[-1].out_channels, num_classes, 1)

    def forward_padded(self, x: Tensor, return_aux: bool) -> tuple[Tensor, None]:
        features = self.encoder(x)
        y = features[-1]
        skips = features[-2::-1]
        for index, block in enumerate(self.decoder):
            # A block past the skips (ResNet's stem is at stride 2) only upsamples to full size.
            y = block(y, skips[index] if index < len(skips) else None)
        return self.classifier(y), None


def _decoder_blocks(encoder: Encoder, upsample: str, decoder_channels: list[int],
                    norm: LayerSpec, aligned: bool) -> list[DecoderBlock]:
    """Decoder blocks from the deepest feature to full resolution."""
    channels, grids = encoder.channels, encoder.grids
    # (skip channels, source grid, target grid) per block, deepest first; a dilated encoder
    # repeats a reduction, which makes that block's scale 1.
    plan = [(channels[i], grids[i + 1], grids[i]) for i in reversed(range(len(channels) - 1))]
    if encoder.reductions[0] > 1:
        plan.append((0, grids[0], IMAGE_GRID))
    if len(decoder_channels) < len(plan):
        raise InputError(
            f"decoder_channels needs {len(plan)} entries for this encoder (one per decoder block), "
            f"got {len(decoder_channels)}: {decoder_channels}"
        )
    blocks, in_channels = [], channels[-1]
    for (skip_channels, source, target), out_channels in zip(plan, decoder_channels):
        blocks.append(DecoderBlock(in_channels, skip_channels, out_channels, source, target, upsample, norm, aligned))
        in_channels = out_channels
    return blocks


# Registered builders -------------------------------------------------------------------------


@register_model(family="U-Net")
def unet(
    num_classes: int = 21,
    encoder: str | None = None,
    upsample: str = "transposed",
    encoder_weights: EncoderWeights = None,
    base_channels: int = 64,
    depth: int = 4,
    decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
    norm: str | None = "batchnorm",
    output_stride: int = 32,
    padding: str | None = None,
    aligned: bool = True,
) -> SegmentationModel:
    """U-Net (Ronneberger et al., 2015): the paper's valid-convolution network, or an encoder-backed one.

    Args:
        num_classes: number of classes.
        encoder: ``None`` for the paper's own contracting path (with ``padding="valid"``: valid
            convolutions, crop-and-concatenate, overlap-tile inference; with ``"same"``:
            zero-padded convolutions, nothing cropped or mirrored); an encoder name for padded
            convolutions over that encoder's features.
        upsample: ``"transposed"`` (the paper's up-convolution), ``"nearest"``, ``"bilinear"``
            or ``"pixelshuffle"``.
        encoder_weights: ``None``, ``"imagenet"`` or a local file (encoder-backed variant only).
        base_channels: first-level channels of the paper's network (64 in the paper).
        depth: number of poolings of the paper's network (4 in the paper).
        decoder_channels: decoder block channels of the encoder-backed variant, deepest first.
        norm: norm layer name, or ``None`` (with ``encoder=None``: the paper's exact network,
            which predates batch norm).
        output_stride: the encoder's output stride (encoder-backed variant only; 8 or 16 dilate).
        padding: the paper's network only: ``"valid"`` (default, the paper) or ``"same"``
            (zero-padded convolutions, no overlap-tile: cheaper on small images). The
            encoder-backed variant is always same-padded.
        aligned: the encoder-backed variant's upsamplings land on the grids of the maps they
            meet and its logits on the input's pixels; ``False`` builds the half-pixel geometry
            of earlier versions (their checkpoints load with it). The paper's network is aligned
            by construction and ignores it.
    """
    if encoder is None:
        if encoder_weights is not None:
            raise InputError("the paper's U-Net has no pretrained encoder weights; pass encoder='resnet18' "
                             "(or another encoder name) to use encoder_weights")
        if output_stride != 32:
            raise InputError("output_stride applies to an encoder; the paper's U-Net (encoder=None) has none")
        return UNet(num_classes, upsample, base_channels, depth, norm, padding or "valid")
    if padding not in (None, "same"):
        raise InputError(f"padding={padding!r} applies to the paper's U-Net (encoder=None); the "
                         f"encoder-backed U-Net always uses same-padded convolutions")
    backbone = create_encoder(encoder, weights=encoder_weights, output_stride=output_stride)
    return EncoderUNet(num_classes, backbone, upsample, decoder_channels, norm, aligned)
