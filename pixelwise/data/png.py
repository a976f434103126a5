"""PNG files written a band of rows at a time, so writing a huge mask or overlay never holds a
second full-size copy of it (PIL keeps RGB images at 4 bytes a pixel, and encodes from there).

The files are plain PNG (ISO/IEC 15948): ``IHDR``, ``PLTE`` for palette images, ``IDAT`` chunks
of one zlib stream of rows, each row filtered with the "Up" filter (the difference to the row
above, which compresses masks and photographs alike), and ``IEND``. Any reader opens them.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

import numpy as np

from pixelwise.errors import InputError
from pixelwise.io.atomic import atomic_file

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UP = 2  # the PNG filter type "Up"
_IDAT_BYTES = 1 << 20  # compressed bytes per IDAT chunk


def _chunk(handle: BinaryIO, kind: bytes, data: bytes) -> None:
    handle.write(struct.pack(">I", len(data)) + kind + data)
    handle.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png_bands(path: str | Path, height: int, width: int, bands: Iterable[np.ndarray],
                    palette: Sequence[Sequence[int]] | None = None, level: int = 6) -> None:
    """Write an image given as bands of whole rows, top to bottom, without assembling it.

    Args:
        path: the PNG file, written under a temporary name and renamed when complete.
        height, width: the image's size; the bands' rows must add up to ``height``.
        bands: arrays of shape ``(rows, width, 3)`` uint8 (RGB), ``(rows, width)`` uint8
            (palette indices when ``palette`` is given, else grayscale) or ``(rows, width)``
            uint16 (16-bit grayscale).
        palette: RGB colours for a palette image (at most 256).
        level: zlib compression level.

    Raises:
        ValueError: a band of the wrong shape or type, or rows not adding up to ``height``.
    """
    path = Path(path)
    compressor = zlib.compressobj(level)
    previous: np.ndarray | None = None
    header: tuple[int, int] | None = None  # (bit depth, colour type), from the first band
    rows = 0
    with atomic_file(path) as handle:
        handle.write(_SIGNATURE)
        pending = bytearray()
        for band in bands:
            band = np.asarray(band)
            kind = _kind(band, width, palette is not None)
            if header is None:
                header = kind
                _chunk(handle, b"IHDR", struct.pack(">IIBBBBB", width, height, *kind, 0, 0, 0))
                if palette is not None:
                    if len(palette) > 256:
                        raise InputError(f"a PNG palette holds at most 256 colours, got {len(palette)}")
                    _chunk(handle, b"PLTE", np.asarray(palette, dtype=np.uint8).reshape(-1).tobytes())
            elif kind != header:
                raise InputError(f"band of type {band.dtype} and shape {band.shape} differs from the first band's")
            rows += band.shape[0]
            if rows > height:
                raise InputError(f"the bands hold more than the {height} rows of the image")
            data = band.astype(">u2") if band.dtype == np.uint16 else band
            data = data.reshape(band.shape[0], -1).view(np.uint8)
            above = np.zeros_like(data[:1]) if previous is None else previous
            filtered = np.diff(np.concatenate([above, data]), axis=0)  # uint8 wraps: (x - above) mod 256
            previous = data[-1:].copy()
            lines = np.empty((data.shape[0], data.shape[1] + 1), dtype=np.uint8)
            lines[:, 0] = _UP
            lines[:, 1:] = filtered
            pending += compressor.compress(lines.tobytes())
            while len(pending) >= _IDAT_BYTES:
                _chunk(handle, b"IDAT", bytes(pending[:_IDAT_BYTES]))
                del pending[:_IDAT_BYTES]
        if rows != height:
            raise InputError(f"the bands hold {rows} rows, the image {height}")
        pending += compressor.flush()
        _chunk(handle, b"IDAT", bytes(pending))
        _chunk(handle, b"IEND", b"")


def _kind(band: np.ndarray, width: int, indexed: bool) -> tuple[int, int]:
    """(bit depth, PNG colour type) of a band, checking its shape."""
    if band.ndim == 3 and band.shape[1:] == (width, 3) and band.dtype == np.uint8 and not indexed:
        return 8, 2
    if band.ndim == 2 and band.shape[1] == width and band.dtype == np.uint8:
        return 8, 3 if indexed else 0
    if band.ndim == 2 and band.shape[1] == width and band.dtype == np.uint16 and not indexed:
        return 16, 0
    raise InputError(f"cannot write a band of type {band.dtype} and shape {band.shape} as PNG rows of width {width}"
                     f"{' (palette indices must be uint8)' if indexed else ''}")
