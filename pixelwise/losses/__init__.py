"""Segmentation losses: cross-entropy (also over hard pixels only, OHEM, or weighted pixel by pixel),
Dice, focal, Lovász-Softmax, their weighted sums, class weights.

Every loss is an ``nn.Module`` called as ``loss(logits, target)`` with logits ``(N, C, H, W)``
(any number of spatial dimensions works) and an int64 target ``(N, H, W)`` of class indices in
which ``ignore_index`` marks pixels that no loss counts. It returns a scalar. ``weighted_ce`` also takes per-pixel weights, ``loss(logits, target, weights)``
(:func:`takes_pixel_weights` says which losses do).

A batch whose target is entirely ``ignore_index`` (a random crop of a void region, say) gives a
loss of exactly 0.0 that is still connected to ``logits``, so ``.backward()`` works and leaves zero
gradients. PyTorch's ``F.cross_entropy(reduction="mean")`` returns NaN there (0 / 0); here every
mean divides by a count that is replaced by 1 when it is 0, with the numerator then 0 as well.
This is done with tensor operations, not ``if count == 0``, so no loss synchronises a GPU with the
host, and the same code runs under ``torch.compile``.

References:
    Eigen & Fergus, "Predicting Depth, Surface Normals and Semantic Labels with a Common
    Multi-Scale Convolutional Architecture", ICCV 2015 (median frequency balancing).
    Milletari et al., "V-Net", 3DV 2016 (soft Dice loss).
    Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017.
    Shrivastava et al., "Training Region-based Object Detectors with Online Hard Example
    Mining", CVPR 2016; Wu et al., "Bridging Category-level and Instance-level Semantic Image
    Segmentation", 2016 (OHEM over pixels, with a probability threshold and a minimum kept).
    Berman et al., "The Lovász-Softmax loss: A tractable surrogate for the optimization of the
    intersection-over-union measure in neural networks", CVPR 2018.
    Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017 (auxiliary loss weight 0.4).
"""
from __future__ import annotations

# Importing the loss modules registers their losses in LOSSES; combined.py builds from it.
from pixelwise.losses.base import (LOSSES, ClassPixelCounts, class_pixel_counts, image_class_pixels,
                                   inverse_frequency_weights, median_frequency_weights)
from pixelwise.losses.combined import CombinedLoss, create_loss, list_losses, loss_with_aux, takes_pixel_weights
from pixelwise.losses.lovasz import LovaszSoftmaxLoss, lovasz_grad
from pixelwise.losses.pixelwise_losses import (CrossEntropyLoss, DiceLoss, FocalLoss, OhemCrossEntropyLoss,
                                               WeightedCrossEntropyLoss)

__all__ = [
    "ClassPixelCounts", "CombinedLoss", "CrossEntropyLoss", "DiceLoss", "FocalLoss", "LOSSES",
    "LovaszSoftmaxLoss", "OhemCrossEntropyLoss", "WeightedCrossEntropyLoss", "class_pixel_counts", "create_loss",
    "image_class_pixels", "inverse_frequency_weights", "list_losses", "loss_with_aux", "lovasz_grad",
    "median_frequency_weights", "takes_pixel_weights",
]
