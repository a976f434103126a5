"""A training recipe turned into objects: data sets and the samples drawn from them, class
weights, the model and its spec, the optimiser and its schedule, the inference options."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from pixelwise.config import Config
from pixelwise.data import ClassInfo, DataSpec, SegmentationDataset
from pixelwise.data.elastic import ElasticDeformation
from pixelwise.data.transforms import CutMix, RareClassSampling, train_transform, val_transform
from pixelwise.data.weight_map import WeightMapSamples
from pixelwise.errors import InputError
from pixelwise.inference.logits import InferenceOptions
from pixelwise.losses import ClassPixelCounts, image_class_pixels, inverse_frequency_weights, median_frequency_weights
from pixelwise.models import SegmentationModel, create_model, spec_options


def build_datasets(config: Config) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The training set (with the training augmentation) and the validation set (full images)."""
    data = config.data
    train_split = data_spec(config, data.train_split)
    ignore_index = train_split.create_dataset().classes.ignore_index
    jitter = tuple(data.color_jitter) if isinstance(data.color_jitter, list) else data.color_jitter
    spec = data.elastic
    elastic = None if spec is None else ElasticDeformation(spec.grid, spec.sigma, spec.p)
    augment = train_transform(tuple(data.crop_size), tuple(data.scale_range), hflip=data.hflip,
                              color_jitter=jitter, ignore_index=ignore_index, random_conv=data.random_conv,
                              elastic=elastic)
    train_set = train_split.create_dataset(augment)
    val_set = data_spec(config, data.val_split).create_dataset(val_transform())
    return train_set, val_set


def data_spec(config: Config, split: str) -> DataSpec:
    """A split of the recipe's data set: its format, folder and the format's options."""
    return DataSpec(config.data.format, config.data.root, split, config.data.options)


def _unaugmented_train_set(config: Config) -> SegmentationDataset:
    """The training split as stored: what class statistics are counted on (crops change them)."""
    return data_spec(config, config.data.train_split).create_dataset()


def train_class_pixels(config: Config, classes: ClassInfo) -> Tensor:
    """Pixels of each class in each image of the unaugmented training split
    (:func:`~pixelwise.losses.image_class_pixels`): what class weights and rare-class sampling
    are computed from."""
    return image_class_pixels(_unaugmented_train_set(config), classes.num_classes, classes.ignore_index)


def training_samples(config: Config, train_set: SegmentationDataset, table: Tensor | None = None) -> Dataset:
    """What the loader draws from: the training set, drawn for rare classes (``data.rare_classes``)
    and mixed by CutMix (``data.cutmix``) where the recipe asks, or with each mask's border weight
    map (``data.weight_map``: ``(image, mask, weights)`` samples; maps computed up front when
    loader workers would otherwise each compute their own). ``table``: the training split's
    :func:`train_class_pixels`, when already counted."""
    maps = config.data.weight_map
    if maps is not None:
        weighted = WeightMapSamples(train_set, maps.w0, maps.sigma, maps.class_balance)
        if config.data.workers > 0:
            weighted.fill_cache()
        return weighted
    samples: Dataset = train_set
    spec = config.data.rare_classes
    if spec is not None:
        classes = train_set.classes
        counts = train_class_pixels(config, classes) if table is None else table
        samples = RareClassSampling(train_set, counts, spec.temperature, spec.min_pixels, spec.min_crop_ratio)
    return CutMix(samples, config.data.cutmix) if config.data.cutmix > 0 else samples


CLASS_WEIGHTINGS = ("median_frequency", "inverse_frequency", "inverse_sqrt_frequency")


def class_weights(config: Config, classes: ClassInfo, table: Tensor | None = None) -> Tensor | None:
    """The loss's class weights: as listed in the recipe, or counted on the unaugmented training
    split (random crops would change the counts; ``table``: its :func:`train_class_pixels`, when
    already counted)."""
    spec = config.class_weights
    if spec is None:
        return None
    if not isinstance(spec, str):
        if len(spec) != classes.num_classes:
            raise InputError(f"class_weights lists {len(spec)} numbers for {classes.num_classes} classes")
        return torch.tensor(spec, dtype=torch.float32)
    if spec not in CLASS_WEIGHTINGS:
        raise InputError(f"class_weights {spec!r} is not supported; choose {', '.join(CLASS_WEIGHTINGS)}, "
                         "a list of one number per class, or null")
    counts = ClassPixelCounts.of(train_class_pixels(config, classes) if table is None else table)
    if spec == "median_frequency":
        return median_frequency_weights(*counts)
    return inverse_frequency_weights(counts.class_pixels, power=1.0 if spec == "inverse_frequency" else 0.5)


def build_model(config: Config, num_classes: int) -> SegmentationModel:
    """The network the recipe names, for ``num_classes`` classes."""
    spec = model_spec(config, num_classes)
    return create_model(spec["name"], num_classes=num_classes, encoder_weights=config.model.encoder_weights,
                        **spec["options"])


def model_spec(config: Config, num_classes: int) -> dict:
    """What a checkpoint records to rebuild the model without the recipe (no weights source:
    the checkpoint carries the weights)."""
    options = dict(config.model.options)
    if config.model.encoder is not None:
        options["encoder"] = config.model.encoder
    if config.model.upsample is not None:
        options["upsample"] = config.model.upsample
    return {"name": config.model.name, "num_classes": num_classes, "options": spec_options(config.model.name, options)}


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW; no weight decay on norms and biases."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    name = config.optim.name.lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=config.optim.lr, momentum=config.optim.momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=config.optim.lr)
    raise InputError(f"optim.name {config.optim.name!r} is not supported; choose 'sgd' or 'adamw'")


def learning_rate(iteration: int, total: int | None, config: Config) -> float:
    """Linear warm-up, then poly or cosine decay from ``optim.lr`` to ``schedule.min_lr``.

    ``total=None`` (a time budget still measuring) holds the schedule at its start.
    """
    base, schedule = config.optim.lr, config.schedule
    if iteration < schedule.warmup_iters:
        return base * (iteration + 1) / schedule.warmup_iters
    if total is None:
        return base
    progress = (iteration - schedule.warmup_iters) / max(1, total - schedule.warmup_iters)
    if schedule.name == "poly":
        factor = (1 - progress) ** schedule.power
    elif schedule.name == "cosine":
        factor = 0.5 * (1 + math.cos(math.pi * progress))
    elif schedule.name == "constant":
        factor = 1.0
    else:
        raise InputError(f"schedule.name {schedule.name!r} is not supported; choose poly, cosine or constant")
    return schedule.min_lr + (base - schedule.min_lr) * factor


def validation_inference(amp: str | None) -> InferenceOptions:
    """How validation computes logits: whole image, one scale, the training precision."""
    return InferenceOptions.create(precision=amp or "fp32")


def recipe_inference(config: Config) -> InferenceOptions:
    """How the recipe's checkpoints predict, as they record it: validation's whole image and
    precision, with the test-time scales and flip of the recipe's ``inference`` section. With
    that section at its defaults ``pixelwise evaluate`` on ``best.pt`` reproduces the logged
    validation mIoU."""
    return InferenceOptions.create(scales=config.inference.scales, flip=config.inference.flip,
                                   precision=config.train.amp or "fp32")
