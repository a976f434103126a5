"""An exponential moving average of a model's weights and batch-norm statistics (``train.ema``).

After each optimiser step the average moves towards the trained weights by ``1 - decay``, so it
is a mean over roughly the last ``1 / (1 - decay)`` steps: a smoother, usually better-generalising
model than the last step's, at the cost of one more copy of the weights. As in TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``, the decay starts low and rises to ``decay``
(``min(decay, (1 + n) / (10 + n))`` after ``n`` updates), so the average follows the fast early
changes instead of staying near the random initialisation for thousands of steps. Batch-norm
running statistics are averaged with the weights (torchvision's ``--model-ema`` does the same);
integer buffers (``num_batches_tracked``) are copied.

The same average as :class:`torch.optim.swa_utils.AveragedModel` with ``use_buffers=True`` and
``get_ema_multi_avg_fn`` (the tests compare them), plus the warm-up, with a plain state dict.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from pixelwise.errors import InputError


def warmed_decay(decay: float, updates: int) -> float:
    """The decay applied at an update after ``updates`` earlier ones."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightAverage:
    """The moving average of ``model``, starting as a copy of it.

    Args:
        model: the network being trained (unwrapped from DistributedDataParallel).
        decay: in (0, 1); 0.999 averages over about the last thousand steps.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise InputError(f"an exponential moving average needs a decay in (0, 1), got {decay!r}")
        self.decay = decay
        self.updates = 0  # how many steps have been averaged
        self.module = copy.deepcopy(model).requires_grad_(False)  # the average: evaluate it, save its state_dict

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards ``model``'s current weights and statistics."""
        averaged, current = _tensors(self.module), _tensors(model)
        floats = [index for index, tensor in enumerate(averaged) if tensor.is_floating_point()]
        others = [index for index, tensor in enumerate(averaged) if not tensor.is_floating_point()]
        weight = 1.0 if self.updates == 0 else 1.0 - warmed_decay(self.decay, self.updates)
        torch._foreach_lerp_([averaged[i] for i in floats], [current[i] for i in floats], weight)
        if others:
            torch._foreach_copy_([averaged[i] for i in others], [current[i] for i in others])
        self.updates += 1

    def load(self, weights: dict[str, Tensor], updates: int) -> None:
        """Continue an average saved as its ``module.state_dict()`` after ``updates`` steps."""
        self.module.load_state_dict(weights)
        self.updates = updates


def _tensors(model: nn.Module) -> list[Tensor]:
    return [tensor.detach() for tensor in (*model.parameters(), *model.buffers())]
