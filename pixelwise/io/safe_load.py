"""Reading tensors from files without ever running code from them.

``torch.load`` unpickles, and a pickle can call any function: a shared checkpoint could run code
on the machine of whoever opens it. Every PyTorch file pixelwise reads (checkpoints, resume,
weight files) goes through :func:`load_torch_file`, which allows only tensors and plain values
(``weights_only=True``); safetensors files (:func:`read_safetensors`) hold nothing but tensors
and string metadata. torch's own advice to retry with ``weights_only=False`` never reaches a
user: it is the one thing never to do with a file from elsewhere.
"""
from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from pixelwise.errors import InputError, PixelwiseError


# What torch.save writes first: a zip archive (PyTorch >= 1.6) or a pickle (the legacy format).
TORCH_FILE_MAGIC = (b"PK\x03\x04", b"\x80")


def file_format(path: Path) -> str:
    """What a weights or checkpoint file holds, judged by its first bytes rather than its name.

    Returns:
        ``"safetensors"`` (also for any file named ``.safetensors``: such a file is never unpickled),
        ``"torch"`` (what ``torch.save`` writes; also an empty file, a write cut short) or ``"other"``.
    """
    if path.suffix == ".safetensors":
        return "safetensors"
    with open(path, "rb") as handle:
        head = handle.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header. Checked first, as
    # that length may begin with the byte 0x80, like a pickle.
    if len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") <= path.stat().st_size - 8:
        return "safetensors"
    return "torch" if not head or head.startswith(TORCH_FILE_MAGIC) else "other"


class UntrustedFileError(PixelwiseError, ValueError):
    """A file holds Python objects that loading would have to execute; it was not loaded."""


class TorchScriptFileError(PixelwiseError, ValueError):
    """A TorchScript program (``torch.jit.save``) was given where tensors were expected."""


def load_torch_file(path: str | Path, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that name the file.

    Args:
        path: the file.
        what: how to name it in messages (``"checkpoint"``, ``"weights file"``).

    Raises:
        UntrustedFileError: the file holds objects other than tensors and plain values (its
            pickle would have to run code to rebuild them); nothing of it ran.
        TorchScriptFileError: the file is a TorchScript program, not tensors.
        ValueError: the file is truncated or not a PyTorch file.
    """
    if is_torchscript(path):
        raise torchscript_error(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Only the name of what it would call: torch's own message goes on to suggest allowlisting it.
        named = re.search(r"GLOBAL ([\w.]+)", str(error))
        detail = f"it calls {named.group(1)}" if named else "objects besides tensors and plain values"
        raise UntrustedFileError(
            f"{what} {str(path)!r} was refused: it holds Python objects that loading would have to run code to "
            f"rebuild ({detail}), and pixelwise never runs code from a file it loads. If you made the file "
            f"yourself, save only tensors and plain values (torch.save(model.state_dict(), path)), or export "
            f"safetensors (pixelwise export --format safetensors); a checkpoint written by pixelwise train "
            f"never needs this") from error
    except (RuntimeError, EOFError) as error:  # a cut zip archive, an empty file, a legacy pickle cut short
        reason = str(error).splitlines()[0] if str(error) else "it ends too early"
        if "weights_only" in reason:  # torch's advice to load it unsafely: never passed on
            reason = "torch refused it as anything but tensors and plain values"
        raise InputError(f"{what} {str(path)!r} is unreadable ({reason}); it may be truncated or not a PyTorch "
                         f"file") from error


def torchscript_error(path: str | Path, what: str) -> TorchScriptFileError:
    """The error for a TorchScript program given where tensors were expected, with what to do."""
    return TorchScriptFileError(
        f"{what} {str(path)!r} is a TorchScript program (what pixelwise export --format torchscript writes), "
        f"which pixelwise does not load: run it with torch.jit.load or LibTorch; to predict with pixelwise "
        f"pass the run's checkpoint (--checkpoint best.pt) or an ONNX export (--model model.onnx)")


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip with the program's ``constants.pkl``)."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/constants.pkl") or name == "constants.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def read_safetensors(path: str | Path, what: str = "file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the string metadata of a safetensors file.

    Raises:
        ValueError: the file is not a readable safetensors file.
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}, dict(handle.metadata() or {})
    except SafetensorError as error:
        raise InputError(f"{what} {str(path)!r} is not a readable safetensors file ({error})") from error
