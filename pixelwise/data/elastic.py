"""Elastic deformation of an image and its mask, as in U-Net (Ronneberger et al., 2015, "U-Net:
Convolutional Networks for Biomedical Image Segmentation", section 3.1).

Random displacement vectors on a coarse grid (the paper: 3×3, drawn from a Gaussian of 10 pixels'
standard deviation) are interpolated bicubically to one displacement per pixel, and every image
and mask of a sample is resampled along that one field: images bilinearly, masks
(``tv_tensors.Mask`` and its subclasses) by nearest neighbour, so a mask only ever holds values it
held before — class indices are never blended and the ignore index survives. Points that fall
outside the image read its mirror image (reflection about the border pixels' centres, as
``numpy.pad(mode="reflect")``), for images and masks alike: the paper's EM slices have no border
class, and mirroring is how its overlap-tile strategy extends them too.

Cost: the field is drawn at the coarse grid and interpolated once per sample; each tensor is then
one ``grid_sample``.

Example:
    >>> deform = ElasticDeformation(grid=3, sigma=10.0)
    >>> image, mask = deform(tv_tensors.Image(image_uint8), tv_tensors.Mask(mask_int64))
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image as PILImage
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from pixelwise.errors import InputError


class ElasticDeformation(v2.Transform):
    """Warp an image and its masks along one smooth random displacement field.

    Displacements of each coarse grid point are drawn from ``N(0, sigma²)`` pixels, per axis,
    from torch's global generator (so ``torch.manual_seed`` reproduces a call, and a seeded
    ``DataLoader`` its stream); the grid's corner points sit on the image's corner pixels. The
    per-pixel field is their bicubic interpolation (``align_corners=True``). Images (``Image``,
    ``Video`` or plain tensors) are sampled bilinearly, and integer images rounded back to their
    dtype; masks by nearest neighbour. Outside the image, both read its reflection. Integer
    masks are sampled through ``float32``, exact for values below 2²⁴.

    Args:
        grid: coarse grid points per side (an int for a square grid, or ``(rows, columns)``),
            each at least 2.
        sigma: standard deviation of the displacements in pixels, >= 0; 0 is the identity.
        p: chance that a sample is deformed, in [0, 1]; otherwise it is returned unchanged.

    Raises:
        InputError: a grid below 2 points per side, a negative sigma or ``p`` out of [0, 1].
    """

    def __init__(self, grid: int | tuple[int, int] = 3, sigma: float = 10.0, p: float = 1.0) -> None:
        super().__init__()
        rows, columns = (grid, grid) if isinstance(grid, int) else tuple(grid)
        if min(rows, columns) < 2:
            raise InputError(f"the elastic deformation grid needs at least 2 points per side, got {grid}")
        if not 0 <= sigma < float("inf"):
            raise InputError(f"the elastic deformation sigma must be a finite number of pixels >= 0, got {sigma}")
        if not 0 <= p <= 1:
            raise InputError(f"the elastic deformation probability must be in [0, 1], got {p}")
        self.grid, self.sigma, self.p = (int(rows), int(columns)), float(sigma), float(p)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        if float(torch.rand(())) >= self.p or self.sigma == 0:
            return {"sampling_grid": None}
        height, width = v2.query_size(flat_inputs)
        return {"sampling_grid": sampling_grid(height, width, torch.randn(2, *self.grid) * self.sigma)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        grid = params["sampling_grid"]
        if grid is None:
            return inpt
        if isinstance(inpt, PILImage.Image):
            return TF.to_pil_image(self.transform(TF.pil_to_tensor(inpt), params), mode=inpt.mode)
        if isinstance(inpt, tv_tensors.Mask):
            return tv_tensors.wrap(warp(inpt.as_subclass(Tensor), grid, "nearest"), like=inpt)
        if isinstance(inpt, (tv_tensors.BoundingBoxes, tv_tensors.KeyPoints)):
            raise TypeError(f"ElasticDeformation warps images and masks, not {type(inpt).__name__}")
        warped = warp(inpt.as_subclass(Tensor), grid, "bilinear")
        return tv_tensors.wrap(warped, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else warped

    def extra_repr(self) -> str:
        return f"grid={self.grid}, sigma={self.sigma}, p={self.p}"


def sampling_grid(height: int, width: int, displacements: Tensor) -> Tensor:
    """Where each output pixel reads from, for ``grid_sample(align_corners=True)``.

    The per-pixel field is the bicubic interpolation of the coarse displacements, as
    ``F.interpolate(mode="bicubic", align_corners=True)`` computes it, written as the separable
    product ``W_y · D · W_xᵀ`` of its 1-D weight matrices: the same numbers for a fraction of the
    cost of the 2-D upsampling.

    Args:
        height: image height in pixels.
        width: image width in pixels.
        displacements: ``2 × rows × columns`` displacements in pixels at the coarse grid points,
            ``(x, y)`` first; the corner points sit on the corner pixels.

    Returns:
        ``1 × height × width × 2`` sampling positions (x, y) in [-1, 1] coordinates: each pixel's
        own position plus its bicubically interpolated displacement.
    """
    rows, columns = displacements.shape[-2:]
    along_y, along_x = bicubic_weights(rows, height), bicubic_weights(columns, width)
    dx, dy = displacements.float()
    grid = torch.empty(height, width, 2)
    # Pixels to normalised coordinates: pixel i of n sits at -1 + 2i / (n - 1).
    grid[..., 0] = along_y @ (dx * (2 / max(width - 1, 1))) @ along_x.T + _positions(width)
    grid[..., 1] = along_y @ (dy * (2 / max(height - 1, 1))) @ along_x.T + _positions(height)[:, None]
    return grid[None]


def bicubic_weights(points: int, size: int) -> Tensor:
    """The ``size × points`` matrix that upsamples ``points`` values to ``size`` as
    ``F.interpolate(mode="bicubic", align_corners=True)`` does along one axis."""
    basis = torch.eye(points).view(1, points, points, 1)
    return F.interpolate(basis, size=(size, 1), mode="bicubic", align_corners=True)[0, :, :, 0].T


def _positions(size: int) -> Tensor:
    return torch.linspace(-1, 1, size) if size > 1 else torch.zeros(1)


def warp(tensor: Tensor, grid: Tensor, mode: str) -> Tensor:
    """Resample ``tensor`` (``… × H × W``: any leading dimensions, or none) along ``grid`` with
    reflection at the border; an integer tensor comes back in its dtype (rounded where
    ``mode`` blends). One ``grid_sample`` for all leading dimensions together."""
    shape, dtype = tensor.shape, tensor.dtype
    work = tensor if tensor.is_floating_point() else tensor.float()
    flat = work.reshape(1, -1, *shape[-2:])
    out = F.grid_sample(flat, grid.to(work.dtype), mode=mode, padding_mode="reflection", align_corners=True)
    out = out.reshape(shape)
    if dtype.is_floating_point:
        return out
    if mode != "nearest":
        out = out.round()
    return out.to(dtype)
