"""Any timm model as an encoder (``encoder="timm:NAME"``), when timm is installed."""
from __future__ import annotations

import torch
from torch import Tensor

from pixelwise.encoders.base import Encoder
from pixelwise.encoders.weights import WeightsUnavailableError, is_weights_file, load_file


class TimmEncoder(Encoder):
    """Wraps ``timm.create_model(name, features_only=True)``.

    Channels and strides are measured with one small forward pass at construction, because
    timm's ``feature_info`` reports nominal strides that ignore ``output_stride`` dilation.
    """

    def __init__(self, model_name: str, output_stride: int = 32, weights: str | None = None) -> None:
        super().__init__()
        try:
            import timm
        except ImportError as error:
            raise ImportError(
                f"encoder 'timm:{model_name}' needs timm: pip install 'pixelwise[timm]'"
            ) from error
        kwargs: dict = {"features_only": True}
        if output_stride != 32:
            kwargs["output_stride"] = output_stride
        if weights is not None:
            kwargs["pretrained"] = True
            if is_weights_file(weights):
                # Read first by pixelwise's own loader, for its checks and errors (a missing file, not a
                # weights file, Python objects refused), whatever timm's version does when it loads it.
                load_file(weights)
                kwargs["pretrained_cfg_overlay"] = {"file": str(weights)}
        try:
            self.model = timm.create_model(model_name, **kwargs)
        except (OSError, RuntimeError, ValueError) as error:
            if weights is None or is_weights_file(weights):
                raise
            raise WeightsUnavailableError(
                f"could not load pretrained weights for timm model {model_name!r} ({error}).\n"
                f"This machine may be offline. Download the model's weights file elsewhere and pass "
                f"encoder_weights='/path/to/file.safetensors' (or .pth)."
            ) from error
        self.channels, self.reductions = self._probe()

    @torch.no_grad()
    def _probe(self, size: int = 64) -> tuple[list[int], list[int]]:
        was_training = self.model.training
        self.model.eval()
        features = self.model(torch.zeros(1, 3, size, size))
        self.model.train(was_training)
        return [f.shape[1] for f in features], [size // f.shape[-1] for f in features]

    def forward(self, x: Tensor) -> list[Tensor]:
        return list(self.model(x))
