"""Padding helpers that let every model accept any input size."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pad_to_multiple(x: Tensor, divisor: int, min_size: int = 1) -> Tensor:
    """Zero-pad the bottom and right of ``x`` so height and width are multiples of ``divisor``
    and at least ``min_size``.

    The top-left stays in place, so cropping ``[..., :H, :W]`` of an output at the padded
    size gives back the original region. The sizes are shape arithmetic (``torch.sym_max``, no
    branch on them while exporting), so an exported model pads every input size as eager does.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = _pad_amount(height, divisor, min_size), _pad_amount(width, divisor, min_size)
    if torch.compiler.is_exporting() or torch.jit.is_tracing():
        return F.pad(x, (0, pad_w, 0, pad_h))  # no branch on the size: the graph pads every size
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h))


def _pad_amount(size: int, divisor: int, min_size: int) -> int:
    """``max(size rounded up to the divisor, min_size) - size``, as shape arithmetic: a SymInt
    under ``torch.export``, a traced tensor under ``torch.jit.trace``."""
    if isinstance(size, Tensor):
        return torch.maximum(-size % divisor, min_size - size)
    return torch.sym_max(-size % divisor, min_size - size)


def replicate_pad(x: Tensor, pads: tuple[int, int, int, int]) -> Tensor:
    """``F.pad(x, pads, mode="replicate")`` (``pads`` = left, right, top, bottom, each >= 0) that
    also compiles.

    Eager and exported graphs use PyTorch's replication padding. Under ``torch.compile`` the
    border rows and columns are concatenated instead: Inductor's meta kernel of
    ``replication_pad2d_backward`` assumes other strides than the kernel returns (an assertion
    at the first backward pass), and the concatenation's backward is plain slicing. Both copy
    the same pixels, so the output is identical.
    """
    if not torch.compiler.is_compiling():
        return F.pad(x, pads, mode="replicate")
    left, right, top, bottom = pads
    height, width = x.shape[-2:]
    rows = [x[..., :1, :].expand(*x.shape[:-2], top, width)] if top else []
    rows += [x] + ([x[..., -1:, :].expand(*x.shape[:-2], bottom, width)] if bottom else [])
    x = torch.cat(rows, dim=-2) if len(rows) > 1 else x
    height = x.shape[-2]
    columns = [x[..., :1].expand(*x.shape[:-2], height, left)] if left else []
    columns += [x] + ([x[..., -1:].expand(*x.shape[:-2], height, right)] if right else [])
    return torch.cat(columns, dim=-1) if len(columns) > 1 else x


def mirror_pad(x: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Mirror ``x`` outwards by any amount (U-Net's overlap-tile padding).

    ``F.pad(mode="reflect")`` refuses a pad as large as the image, so this reflects repeatedly
    (a 30-pixel tile can be padded by 92). A side one pixel long has nothing to reflect and is
    repeated instead.
    """
    x = _mirror_axis(x, top, bottom, horizontal=False)
    return _mirror_axis(x, left, right, horizontal=True)


def _mirror_axis(x: Tensor, before: int, after: int, horizontal: bool) -> Tensor:
    while before or after:
        length = x.shape[-1] if horizontal else x.shape[-2]
        if length == 1:
            pads = (before, after, 0, 0) if horizontal else (0, 0, before, after)
            return replicate_pad(x, pads)
        step_before, step_after = min(before, length - 1), min(after, length - 1)
        pads = (step_before, step_after, 0, 0) if horizontal else (0, 0, step_before, step_after)
        x = F.pad(x, pads, mode="reflect")
        before, after = before - step_before, after - step_after
    return x
