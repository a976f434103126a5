"""The data set contract: ``(image, mask)`` pairs with their class metadata."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from pixelwise.data.classes import ClassInfo

JointTransform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[Tensor, Tensor]]


class SegmentationDataset(Dataset):
    """Base class of every data set.

    Subclasses implement :meth:`__len__`, :meth:`load` (an uint8 ``tv_tensors.Image`` 3×H×W
    and an int64 ``tv_tensors.Mask`` H×W holding class indices and ``classes.ignore_index``)
    and :meth:`name` (a file name or id, for error messages). ``__getitem__`` applies the joint
    transform, or, without one, converts the image to float in [0, 1].

    Attributes:
        classes: names, palette and ignore index of the classes.
        transform: joint image+mask transform (see :mod:`pixelwise.data.transforms`).
    """

    classes: ClassInfo
    transform: JointTransform | None = None

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        raise NotImplementedError

    def name(self, index: int) -> str:
        return str(index)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.load(index)
        if self.transform is not None:
            return self.transform(image, mask)
        return TF.to_dtype(image, torch.float32, scale=True).as_subclass(Tensor), mask.as_subclass(Tensor)
