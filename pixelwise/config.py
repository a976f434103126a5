"""Training recipes: one YAML file, readable on its own, every key overridable.

A recipe is checked against the typed dataclasses below, so an unknown key or a wrong type is
an error that names the key and lists the valid ones, before any work starts. Command-line
overrides use dotted keys (``optim.lr=0.01``, ``data.crop_size=[256,256]``); values are parsed
as YAML. There are no inheritance chains: what the file and the overrides say is the recipe,
and the resolved recipe is saved in the run folder.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import yaml

from pixelwise.errors import PixelwiseError

R = TypeVar("R")


class ConfigError(PixelwiseError, ValueError):
    """A recipe that cannot be used as written."""


@dataclass
class ModelConfig:
    """Which network to build (see ``pixelwise models``)."""

    name: str = "unet"
    encoder: str | None = "resnet18"
    upsample: str | None = None
    encoder_weights: str | None = None
    options: dict = field(default_factory=dict)  # builder-specific: output_stride, aux, ...


@dataclass
class RareClassConfig:
    """Rare-class sampling (``data.rare_classes``): each training sample is drawn for a class,
    rare classes more often; see :class:`pixelwise.data.transforms.RareClassSampling`."""

    temperature: float = 0.01  # P(class) ∝ exp((1 − its pixel share) / temperature)
    min_pixels: int = 3000  # pixels of the class an image needs to be drawn for it
    min_crop_ratio: float = 0.5  # the crop is redrawn until it holds this share of min_pixels


@dataclass
class ElasticConfig:
    """Elastic deformation (``data.elastic``), U-Net's augmentation: displacements drawn on a coarse
    grid, interpolated bicubically, image and mask warped alike (the mask by nearest neighbour);
    see :class:`pixelwise.data.elastic.ElasticDeformation`."""

    grid: int = 3  # coarse grid points per side (the paper: 3×3)
    sigma: float = 10.0  # standard deviation of the displacements, in pixels (the paper: 10)
    p: float = 1.0  # chance that a training sample is deformed


@dataclass
class WeightMapConfig:
    """The U-Net paper's border weight map (``data.weight_map``) for binary membrane data, computed
    once per training mask and used by ``loss: weighted_ce``; see
    :func:`pixelwise.data.weight_map.border_weight_map`."""

    w0: float = 10.0  # height of the border term w0 · exp(−(d1 + d2)² / 2σ²)
    sigma: float = 5.0  # its width σ, in pixels
    # w_c, the per-mask class balance: true weighs each class's pixels to the same total (the
    # paper); false gives every labelled pixel 1, so only the border term adds weight.
    class_balance: bool = True


@dataclass
class DataConfig:
    """Where the images come from and how they are augmented."""

    format: str = "synthetic"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = field(default_factory=lambda: [256, 256])
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    hflip: float = 0.5  # probability of a horizontal flip; 0 for none
    # Image-only colour jitter: one strength for brightness, contrast and saturation, or
    # [brightness, contrast, saturation, hue]; null or 0 for none.
    color_jitter: float | list[float] | None = 0.3
    # Probability that a training sample gets a box of another sample pasted in, image and mask
    # (CutMix); 0 for none.
    cutmix: float = 0.0
    # Probability that a training image is mixed with a random convolution of itself (texture
    # and colour randomised, shapes kept; Xu et al., 2021); 0 for never.
    random_conv: float = 0.0
    # Elastic deformation of image and mask (U-Net, Ronneberger et al., 2015): null for none,
    # {} for the paper's 3×3 grid and 10-pixel sigma, or some of {grid, sigma, p}.
    elastic: ElasticConfig | None = None
    # Draw each training sample for a class, rare classes more often (DAFormer's rare-class
    # sampling): null for the data set's own order, {} for the defaults, or some of
    # {temperature, min_pixels, min_crop_ratio}.
    rare_classes: RareClassConfig | None = None
    # Per-pixel loss weights of U-Net's border weight map (binary masks, loss: weighted_ce): null
    # for none, {} for the paper's w0 = 10 and sigma = 5 pixels, or some of {w0, sigma}.
    weight_map: WeightMapConfig | None = None
    batch_size: int = 8  # per process: under torchrun the global batch is batch_size × processes
    # Data-loading processes: a number (0: load in the main process), or auto: one per CPU the
    # process may use (affinity, cgroup quota), at most 4.
    workers: int | str = "auto"
    options: dict = field(default_factory=dict)  # format-specific: num_classes, mask_colors, ...


@dataclass
class OptimConfig:
    """Optimiser and gradient clipping."""

    name: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # sgd only
    clip_grad_norm: float | None = None


@dataclass
class ScheduleConfig:
    """Learning-rate schedule over the run's iterations."""

    name: str = "poly"  # poly | cosine | constant
    warmup_iters: int = 0
    power: float = 0.9  # poly only
    min_lr: float = 0.0


@dataclass
class TrainConfig:
    """Length of the run, precision, checkpoints and logging."""

    iterations: int = 1000
    eval_every: int = 250
    checkpoint_every: int = 100
    amp: str | None = None  # None | bf16 | fp16 | auto (bf16 where the hardware computes it, else fp32)
    # Threads to compute with: null for PyTorch's default, lowered to the CPUs the process may
    # use (affinity, cgroup CPU quota); a number sets it (pixelwise --threads N does the same).
    threads: int | None = None
    channels_last: bool = False
    # Compile the training step's forward and backward with torch.compile (Inductor): tens of
    # seconds at the start (counted in a time budget), then faster steps; a model that cannot
    # compile says why once and trains eagerly. Validation stays eager.
    compile: bool = False
    aux_weight: float = 0.4
    # Decay of an exponential moving average of the weights (e.g. 0.999), which validation,
    # best.pt and last.pt's predicting weights then use; null trains without one.
    ema: float | None = None
    # The validation value that decides best.pt: mean_iou, or on two-class membrane data one of
    # the ISBI 2012 metrics, at p > 0.5 (rand_error, v_info, pixel_error) or at its best
    # threshold (best_rand_error, best_v_info, best_pixel_error).
    best_metric: str = "mean_iou"
    seed: int = 0
    output_dir: str = "runs/default"
    # Under torchrun: batch norms over the global batch (CUDA only; otherwise each process's share).
    sync_batchnorm: bool = False
    # Minutes of wall-clock time: the run measures its speed and sets the iteration count to fit
    # (``iterations`` is then ignored); the chosen total is stored in checkpoints.
    time_budget_min: float | None = None


@dataclass
class InferenceConfig:
    """How the trained network predicts: the test-time augmentation that ``pixelwise evaluate``,
    ``predict`` and ``serve`` apply to its checkpoints unless told otherwise (validation during
    training stays at one scale, unflipped, to stay cheap)."""

    scales: list[float] = field(default_factory=lambda: [1.0])  # the image resized by each; logits averaged
    flip: bool = False  # also predict each scale mirrored


@dataclass
class Config:
    """A whole training recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: str | dict = "ce"  # a name, or weights per loss: {ce: 1.0, dice: 0.5}
    # Cross-entropy / focal class weights: null, median_frequency, inverse_frequency,
    # inverse_sqrt_frequency (counted on the training split, unaugmented), or one number per class.
    class_weights: str | list[float] | None = None
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read a recipe, apply ``key=value`` overrides, and check every key and type.

    Args:
        path: a YAML file; ``None`` starts from the defaults.
        overrides: dotted assignments such as ``"optim.lr=0.01"``.

    Raises:
        ConfigError: an unreadable file, an unknown key (valid keys listed) or a wrong type.
    """
    config = load_recipe(Config, path, overrides)
    check_ranges(config)
    check_weight_map(config)
    return config


def check_weight_map(config: Config) -> None:
    """Refuse ``data.weight_map`` with sampling that would drop it: CutMix pastes masks without
    their weights, and rare-class sampling draws samples of its own.

    Raises:
        ConfigError: naming the setting that clashes.
    """
    data = config.data
    if data.weight_map is None:
        return
    for key, clashes in (("data.cutmix", data.cutmix > 0), ("data.rare_classes", data.rare_classes is not None)):
        if clashes:
            raise ConfigError(f"data.weight_map cannot be combined with {key} (its samples would lose their weight "
                              f"maps): set {key} to {0 if key == 'data.cutmix' else 'null'}, or data.weight_map "
                              "to null")


def load_recipe(recipe_type: type[R], path: str | Path | None = None, overrides: Sequence[str] = ()) -> R:
    """Read a YAML file into the dataclass ``recipe_type`` (sections are nested dataclasses),
    apply overrides, and check every key and type (not ranges: see :func:`check_ranges`)."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.constructor.ConstructorError as error:  # !!python/... tags: safe_load builds none, runs nothing
            raise ConfigError(f"cannot read config {str(path)!r}: recipes are plain YAML; tags such as "
                              f"!!python/... are refused and nothing in them ran ({error})") from error
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"cannot read config {str(path)!r}: {error}") from error
        if not isinstance(raw, dict):
            raise ConfigError(f"config {str(path)!r} must be a mapping of sections, got {type(raw).__name__}")
    for override in overrides:
        _apply_override(raw, override)
    return _build(recipe_type, raw, "")


# Values that pass the type check but cannot work: (key, test, what the key needs).
RANGES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("data.batch_size", lambda v: v >= 1, "at least 1"),
    ("data.workers", lambda v: v == "auto" or (isinstance(v, int) and v >= 0),
     "0 (load in the main process), more, or auto"),
    ("data.crop_size", lambda v: len(v) == 2 and min(v) >= 1, "two positive sizes [height, width]"),
    ("data.scale_range", lambda v: len(v) == 2 and 0 < v[0] <= v[1], "[low, high] with 0 < low <= high"),
    ("data.hflip", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("data.color_jitter", lambda v: v is None or (isinstance(v, float) and 0 <= v < math.inf)
     or (isinstance(v, list) and len(v) == 4 and all(0 <= x < math.inf for x in v[:3]) and 0 <= v[3] <= 0.5),
     "null, one strength >= 0, or [brightness, contrast, saturation, hue] with each >= 0 and hue <= 0.5"),
    ("data.cutmix", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("data.random_conv", lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    ("data.elastic", lambda v: v is None or (v.grid >= 2 and 0 <= v.sigma < math.inf and 0 <= v.p <= 1),
     "null, or grid >= 2 points per side, sigma >= 0 pixels and p in [0, 1]"),
    ("data.rare_classes", lambda v: v is None or (0 < v.temperature < math.inf and v.min_pixels >= 1
                                                  and 0 <= v.min_crop_ratio < math.inf),
     "null, or temperature > 0, min_pixels >= 1 and min_crop_ratio >= 0"),
    ("data.weight_map", lambda v: v is None or (0 <= v.w0 < math.inf and 0 < v.sigma < math.inf),
     "null, or w0 >= 0 and sigma > 0 pixels"),
    ("optim.name", lambda v: v.lower() in ("sgd", "adamw"), "sgd or adamw"),
    ("optim.lr", lambda v: 0 < v < math.inf, "a positive number"),
    ("optim.weight_decay", lambda v: 0 <= v < math.inf, "0 or more"),
    ("optim.momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.clip_grad_norm", lambda v: v is None or 0 < v < math.inf, "a positive norm, or null for no clipping"),
    ("schedule.name", lambda v: v in ("poly", "cosine", "constant"), "poly, cosine or constant"),
    ("schedule.warmup_iters", lambda v: v >= 0, "0 or more"),
    ("schedule.power", lambda v: 0 <= v < math.inf, "0 or more"),
    ("schedule.min_lr", lambda v: 0 <= v < math.inf, "0 or more (and below optim.lr)"),
    ("train.iterations", lambda v: v >= 1, "at least 1"),
    ("train.eval_every", lambda v: v >= 1, "at least 1 (evaluate every N iterations)"),
    ("train.checkpoint_every", lambda v: v >= 1, "at least 1 (write last.pt every N iterations)"),
    ("train.threads", lambda v: v is None or v >= 1, "at least 1, or null"),
    ("train.amp", lambda v: v in (None, "bf16", "fp16", "auto"), "null, bf16, fp16 or auto"),
    ("train.aux_weight", lambda v: 0 <= v < math.inf, "0 or more"),
    ("train.ema", lambda v: v is None or 0 < v < 1, "a decay in (0, 1) such as 0.999, or null for no average"),
    ("train.time_budget_min", lambda v: v is None or 0 < v < math.inf, "a positive number of minutes, or null"),
    ("inference.scales", lambda v: len(v) >= 1 and all(0 < x < math.inf for x in v), "one or more positive factors"),
)


def check_ranges(config: Any, ranges: Sequence[tuple[str, Callable[[Any], bool], str]] = RANGES) -> None:
    """Refuse values of the right type that cannot work (a batch of 0, a negative learning rate, ...).

    Args:
        config: a recipe with ``optim`` and ``schedule`` sections.
        ranges: ``(section.key, test, what the key needs)`` triples.

    Raises:
        ConfigError: naming the key, the value and what it needs.
    """
    for key, test, needs in ranges:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if not test(value):
            raise ConfigError(f"{key} = {value!r} cannot work: it must be {needs}")
    if config.schedule.min_lr > config.optim.lr:
        raise ConfigError(f"schedule.min_lr = {config.schedule.min_lr!r} is above optim.lr = {config.optim.lr!r}: "
                          f"the schedule decays from optim.lr down to schedule.min_lr")


def config_to_dict(config: Config) -> dict:
    """The recipe as plain data (for YAML, JSON and checkpoints)."""
    return dataclasses.asdict(config)


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved recipe as YAML."""
    Path(path).write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))


def _apply_override(raw: dict, override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like section.key=value (e.g. optim.lr=0.01)")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[leaf] = yaml.safe_load(text) if text.strip() else None


def _build(cls: type, raw: dict, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"unknown key {_join(where, unknown[0])!r}; valid keys{' of ' + where if where else ''}: "
                          f"{', '.join(valid)}")
    values = {name: _coerce(raw[name], hints[name], _join(where, name)) for name in valid if name in raw}
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint`` (ints are accepted where floats are expected)."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        section = [option for option in typing.get_args(hint) if dataclasses.is_dataclass(option)]
        if section and isinstance(value, dict):  # a section: its own errors name the key at fault
            return _build(section[0], value, where)
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where} = {value!r} should be {_describe(hint)}")
    if hint is type(None):
        if value is None:
            return None
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (item,) = typing.get_args(hint)
            return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        number = _yaml_number(value)
        if number is not None:
            return number
    elif hint is dict or origin is dict:
        if isinstance(value, dict):
            return value
    elif isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{where} = {value!r} should be {_describe(hint)}")


def _yaml_number(value: Any) -> float | None:
    """A number YAML read as text: YAML 1.1 takes ``1e-3`` (no dot) for a string, not a float."""
    if not isinstance(value, str) or not re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*", value):
        return None
    return float(value)


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint)).replace("list", "a list")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name
