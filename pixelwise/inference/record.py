"""The record of a trained model (model spec, classes, normalisation, inference options),
checked whenever a model file is opened.

Model files are shared, so a record may be damaged, edited by hand or written to mislead. Every
file opened to predict (read by :func:`~pixelwise.io.model_file.read_model_file`, then made a
model or a runtime by :mod:`pixelwise.inference.loading`) passes its record through
:func:`check_record`, which refuses, naming the file and the field, what would make prediction
wrong or costly:

- ``model_spec``: a registered model name, ``num_classes`` an integer from 1 to
  :data:`MAX_CLASSES` equal to the outputs of the graph or weights, ``options`` a mapping. Its
  weight sources (``encoder_weights``, ``weights``) are dropped: the file's own weights replace
  them, and opening a trained model never downloads or reads other weights.
- ``classes``: one name (a string) per output channel, one colour of three integers 0–255 per
  class, an integer ignore index.
- ``normalization``: ``mean`` and ``std`` each three finite numbers (one per RGB channel) with
  the mean in :data:`MEAN_RANGE` and the std in :data:`STD_RANGE`: images are scaled to [0, 1]
  before normalisation, so values outside these ranges normalise nothing a camera makes.
- ``inference``: values :meth:`~pixelwise.inference.logits.InferenceOptions.create` accepts,
  with 1 to :data:`MAX_SCALES` test-time scales in (0, :data:`MAX_SCALE`], window and stride
  sides of at most :data:`MAX_WINDOW` pixels and a batch size of at most :data:`MAX_BATCH_SIZE`.
"""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, Mapping

from pixelwise.data.classes import IGNORE_INDEX, ClassInfo
from pixelwise.inference.logits import InferenceOptions
from pixelwise.errors import InputError, PixelwiseError
from pixelwise.models import model_info

MAX_CLASSES = 4096
"""The most classes a model file may declare (ADE20K-full has 3,688): the head, the logits and
the service's buffers grow with it."""
MEAN_RANGE = (-10.0, 10.0)
STD_RANGE = (1e-3, 10.0)
MAX_SCALE = 4.0
MAX_SCALES = 8
MAX_WINDOW = 8192
MAX_BATCH_SIZE = 256
WEIGHT_SOURCES = ("encoder_weights", "weights")
"""Options of a model spec that would load weights; a trained file carries its own."""


class ModelFileError(PixelwiseError, ValueError):
    """A model file's record or weights do not describe a model that can predict."""


def check_record(record: Mapping[str, Any], source: str, output_channels: int | None = None,
                 remedy: str = "export it again with pixelwise export") -> dict[str, Any]:
    """The record, checked; its spec without weight sources and its normalisation as floats.

    Args:
        record: the file's ``model_spec``, ``classes``, ``normalization`` and (optionally)
            ``inference``.
        source: how to name the file in messages (its quoted path).
        output_channels: the channels the file's graph outputs, where known (ONNX); a
            checkpoint's weights are checked against the spec when loaded.
        remedy: what the user should do, ending every message.

    Raises:
        ModelFileError: one line naming the file, the field and what is wrong with it.
    """
    try:
        spec = _checked_spec(record.get("model_spec"))
        classes = _checked_classes(record.get("classes"))
        _check_counts(spec["num_classes"], classes.num_classes, output_channels)
        normalization = _checked_normalization(record.get("normalization"))
        inference = _checked_inference(record.get("inference"))
    except ValueError as error:
        raise ModelFileError(f"{source}: {error}; {remedy}") from None
    return {**record, "model_spec": spec, "normalization": normalization, "inference": inference}


def _kind(value: Any) -> str:
    return f"a {type(value).__name__} ({_short(value)})"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _checked_spec(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping):
        raise InputError(f"model_spec is {_kind(spec)}, not a mapping of name, num_classes and options")
    name, num_classes, options = spec.get("name"), spec.get("num_classes"), spec.get("options", {})
    if not isinstance(name, str) or not _registered(name):
        raise InputError(f"model_spec.name {_short(spec.get('name'))} is not a registered model "
                         f"(pixelwise.list_models())")
    if not _is_int(num_classes) or not 1 <= num_classes <= MAX_CLASSES:
        raise InputError(f"model_spec.num_classes is {_short(num_classes)}, not an integer from 1 to {MAX_CLASSES}")
    if not isinstance(options, Mapping) or not all(isinstance(key, str) for key in options):
        raise InputError(f"model_spec.options is {_kind(options)}, not a mapping of option names to values")
    kept = {key: value for key, value in options.items() if key not in WEIGHT_SOURCES}
    return {**spec, "options": kept}


def _registered(name: str) -> bool:
    try:
        model_info(name)
    except KeyError:  # UnknownNameError
        return False
    return True


def _check_counts(num_classes: int, num_names: int, output_channels: int | None) -> None:
    """Names, spec and graph agree on the number of classes."""
    if output_channels is not None and num_names != output_channels:
        raise InputError(f"classes lists {num_names} names but the graph outputs {output_channels} channels")
    if output_channels is not None and num_classes != output_channels:
        raise InputError(f"model_spec.num_classes is {num_classes} but the graph outputs {output_channels} channels")
    if num_names != num_classes:
        raise InputError(f"classes lists {num_names} names but model_spec.num_classes is {num_classes}")


def _checked_classes(classes: Any) -> ClassInfo:
    if not isinstance(classes, Mapping) or not isinstance(classes.get("names"), (list, tuple)):
        raise InputError(f"classes is {_short(classes)}; it needs a list of class names under 'names' (and "
                         f"optionally 'palette' and 'ignore_index')")
    names = classes["names"]
    if not names or not all(isinstance(name, str) for name in names):
        raise InputError(f"classes.names is {_short(names)}, not a list of class names (strings)")
    palette = classes.get("palette")
    if palette is not None:
        if not isinstance(palette, (list, tuple)):
            raise InputError(f"classes.palette is {_kind(palette)}, not a list of RGB colours")
        for index, colour in enumerate(palette):
            if not (isinstance(colour, (list, tuple)) and len(colour) == 3
                    and all(_is_int(value) and 0 <= value <= 255 for value in colour)):
                raise InputError(f"classes.palette[{index}] is {_short(colour)}, not three integers 0–255")
    if not _is_int(classes.get("ignore_index", IGNORE_INDEX)):
        raise InputError(f"classes.ignore_index is {_short(classes.get('ignore_index'))}, not an integer")
    try:
        return ClassInfo.from_dict(dict(classes))
    except ValueError as error:
        raise InputError(f"classes: {error}") from None


def _checked_normalization(normalization: Any) -> dict[str, list[float]]:
    if not isinstance(normalization, Mapping):
        raise InputError(f"normalization is {_kind(normalization)}, not a mapping of mean and std")
    checked = {}
    for key, (low, high) in (("mean", MEAN_RANGE), ("std", STD_RANGE)):
        values = normalization.get(key)
        if not isinstance(values, (list, tuple)) or len(values) != 3 or not all(map(_is_number, values)):
            raise InputError(f"normalization.{key} is {_short(values)}, not three finite numbers (one per RGB "
                             f"channel)")
        if not all(low <= value <= high for value in values):
            raise InputError(f"normalization.{key} {list(values)} is outside [{low:g}, {high:g}], which no "
                             f"normalisation of images scaled to [0, 1] needs")
        checked[key] = [float(value) for value in values]
    return checked


def _checked_inference(inference: Any) -> dict[str, Any] | None:
    if inference is None:
        return None
    if not isinstance(inference, Mapping):
        raise InputError(f"inference is {_kind(inference)}, not a mapping of inference options")
    known = {option.name for option in fields(InferenceOptions)}
    settings = {key: value for key, value in inference.items() if key in known}
    scales = settings.get("scales", [1.0])
    if not isinstance(scales, (list, tuple)) or not 1 <= len(scales) <= MAX_SCALES \
            or not all(_is_number(scale) and 0 < scale <= MAX_SCALE for scale in scales):
        raise InputError(f"inference.scales is {_short(scales)}, not 1 to {MAX_SCALES} test-time scales in "
                         f"(0, {MAX_SCALE:g}]")
    for key in ("window", "stride"):
        sides = settings.get(key)
        sides = [sides, sides] if _is_int(sides) else sides
        if sides is not None and not (isinstance(sides, (list, tuple)) and len(sides) == 2
                                      and all(_is_int(side) and 1 <= side <= MAX_WINDOW for side in sides)):
            raise InputError(f"inference.{key} is {_short(settings[key])}, not a size of 1 to {MAX_WINDOW} pixels "
                             f"(or a pair of them)")
    batch_size = settings.get("batch_size", 1)
    if not _is_int(batch_size) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InputError(f"inference.batch_size is {_short(batch_size)}, not an integer from 1 to {MAX_BATCH_SIZE}")
    if not isinstance(settings.get("flip", False), bool):
        raise InputError(f"inference.flip is {_short(settings['flip'])}, not true or false")
    for key in ("mode", "blend", "precision"):
        if key in settings and settings[key] is not None and not isinstance(settings[key], str):
            raise InputError(f"inference.{key} is {_kind(settings[key])}, not a string")
    try:
        InferenceOptions.create(**settings)
    except ValueError as error:
        raise InputError(f"inference: {error}") from None
    return dict(inference)
