"""Reading tensors from files without ever running code from them.

``torch.load`` unpickles, and a pickle can call any function: a shared checkpoint could run code
on the machine of whoever opens it. Every PyTorch file pixelwise reads (checkpoints, resume,
weight files) goes through :func:`load_torch_file`, which allows only tensors and plain values
(``weights_only=True``); safetensors files (:func:`read_safetensors`) hold nothing but tensors
and string metadata.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch


class UntrustedFileError(ValueError):
    """A file holds Python objects that loading would have to execute; it was not loaded."""


def load_torch_file(path: str | Path, what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with errors that name the file.

    Args:
        path: the file.
        what: how to name it in messages (``"checkpoint"``, ``"weights file"``).

    Raises:
        UntrustedFileError: the file holds objects other than tensors and plain values (its
            pickle would have to run code to rebuild them); nothing of it ran.
        ValueError: the file is truncated or not a PyTorch file.
    """
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
        raise ValueError(f"{what} {str(path)!r} is unreadable ({reason}); it may be truncated or not a PyTorch "
                         f"file") from error


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
        raise ValueError(f"{what} {str(path)!r} is not a readable safetensors file ({error})") from error
