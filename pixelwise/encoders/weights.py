"""Loading pretrained encoder weights: torchvision's own loaders, or a local file.

Never falls back to random weights when weights were asked for: a download that cannot happen
raises :class:`WeightsUnavailableError` saying how to pass a local file instead.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from pixelwise.errors import FolderGivenError, InputError, MissingFileError, PixelwiseError
from pixelwise.io.safe_load import file_format, load_torch_file, read_safetensors


class WeightsUnavailableError(PixelwiseError, RuntimeError):
    """Pretrained weights were requested but could not be obtained."""


def is_weights_file(weights: str | os.PathLike[str] | None) -> bool:
    """Whether ``weights`` names a file rather than a named weight set like ``"imagenet"``."""
    if weights is None:
        return False
    text = os.fspath(weights)
    return os.sep in text or text.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(text).exists()


def load_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file (``.pt``/``.pth`` or ``.safetensors``); a checkpoint
    holding ``{"model": state_dict}`` or ``{"state_dict": ...}`` works too."""
    path = Path(path)
    if path.is_dir():
        raise FolderGivenError(f"weights file {str(path)!r} is a folder; pass the state-dict file inside it "
                                f"(.pt, .pth or .safetensors)")
    if not path.is_file():
        raise MissingFileError(f"weights file {str(path)!r} does not exist")
    kind = file_format(path)
    if kind == "safetensors":
        return read_safetensors(path, "weights file")[0]
    if kind == "other":
        raise InputError(f"weights file {str(path)!r} is neither a PyTorch file (written by torch.save) nor "
                         f"safetensors; pass a .pt/.pth state dict or a .safetensors file")
    state: Any = load_torch_file(path, "weights file")
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise InputError(f"{str(path)!r} holds a {type(state).__name__}, not a state dict")
    return state


def download_torchvision_weights(weights_enum: Any, encoder_name: str) -> dict[str, torch.Tensor]:
    """A torchvision weight set: from torch's hub cache, downloaded there first when absent (its
    SHA-256 checked against the prefix in the file name), read with ``weights_only=True`` as every
    file pixelwise loads (torchvision's own loader would unpickle it without that guard)."""
    cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.url).name
    if not cache.is_file():
        digest = torch.hub.HASH_REGEX.search(cache.name)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            # Written beside the cache file, then moved onto it: a cut download leaves no cache file.
            torch.hub.download_url_to_file(weights_enum.url, str(cache), digest.group(1) if digest else None,
                                           progress=False)
        except OSError as error:  # URLError, HTTPError, socket and SSL errors are all OSErrors
            raise WeightsUnavailableError(
                f"could not load ImageNet weights for encoder {encoder_name!r} ({error}).\n"
                f"This machine may be offline. Either download {weights_enum.url}\n"
                f"  and save it as {cache} (torchvision's cache), or\n"
                f"  pass the file directly: encoder_weights='/path/to/{cache.name}'."
            ) from error
        except RuntimeError as error:  # the downloaded file's hash is not the published one
            raise WeightsUnavailableError(f"the ImageNet weights downloaded for encoder {encoder_name!r} from "
                                          f"{weights_enum.url} are not the published file ({error}); nothing "
                                          f"was saved, try again") from error
    return load_torch_file(cache, "torchvision weights file")


def load_into(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str,
              convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None) -> None:
    """Load ``state_dict`` into ``module`` strictly.

    Raises:
        ValueError: naming the missing, unexpected and wrongly shaped keys, so a file that does
            not fit (another model, another class count) is never half-loaded silently.
    """
    if convert is not None:
        state_dict = convert(state_dict)
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    reshaped = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
                for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or reshaped:
        raise InputError(
            f"weights from {source} do not fit {type(module).__name__}: missing {_first(missing)}, "
            f"unexpected {_first(unexpected)}, wrong shape (file vs model) {_first(reshaped)}"
        )
    module.load_state_dict(state_dict)


def _first(items: list[str], count: int = 6) -> str:
    return str(items[:count])[:-1] + (", ...]" if len(items) > count else "]")
