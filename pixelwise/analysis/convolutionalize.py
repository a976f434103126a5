"""Convolutionalization: a classifier's fully connected layers turned into convolutions.

Long, Shelhamer & Darrell, "Fully Convolutional Networks for Semantic Segmentation" (CVPR 2015),
§3.1: a fully connected layer over a flattened ``C×h×w`` map is an ``h×w`` convolution evaluated
at one place. Evaluated everywhere instead, the classifier returns a map of class scores, one
per window of the input, for any input at least as large as the one it was trained on.

:func:`convolutionalize` works on chain-structured classifiers (torchvision's VGG, AlexNet,
ResNet, MobileNet and the like): it runs the classifier once, records the order in which its
top-level children are called, keeps those before the first fully connected layer as the trunk
and rebuilds the rest with convolutions. It then checks that the result reproduces the
classifier's scores at the native size, and refuses, with the reason, when it does not.

One caveat: pooling *inside* a block (MobileNetV3's squeeze-and-excitation) stays global over
whatever map it is given, so on a larger input such a block sees the whole image rather than one
window; the score map is then not exactly the classifier slid over the image.
"""
from __future__ import annotations

import copy
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from pixelwise.encoders.weights import load_file
from pixelwise.errors import InputError
from pixelwise.layers.convert import linear_to_conv2d

Size = tuple[int, int]
_ADAPTIVE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


@dataclass(frozen=True)
class Replacement:
    """One layer of the classifier and what stands for it in the fully convolutional network.

    Attributes:
        name: the layer's qualified name in the classifier (``"classifier.0"``), or a note where
            the classifier's ``forward`` did the work in code (a functional pooling).
        before: the layer as it was, with the sizes it saw at the native input size.
        after: what replaces it.
    """

    name: str
    before: str
    after: str


class FullyConvolutional(nn.Module):
    """A classifier's convolutional trunk followed by its head rebuilt from convolutions.

    Attributes:
        trunk: the classifier's children before its first fully connected layer, in call order,
            with adaptive poolings fixed to what they do at the native size.
        head: the fully connected layers as convolutions, with the elementwise layers between them
            kept; its modules are named after the classifier's (``classifier_0`` for ``classifier.0``).
        replacements: which layers were converted into what.
        native_size: the input size at which the network reproduces the classifier exactly.
    """

    def __init__(self, trunk: nn.Sequential, head: nn.Sequential, replacements: list[Replacement],
                 native_size: Size) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.replacements = replacements
        self.native_size = native_size

    def forward(self, x: Tensor) -> Tensor:
        """Class scores ``(N, classes, H', W')``: ``1×1`` at the native size, a map on larger inputs."""
        return self.head(self.trunk(x))


@dataclass(frozen=True)
class ConvolutionalizeReport:
    """What :func:`convolutionalize_report` found.

    Attributes:
        replacements: which layers were converted into what.
        native_size: the classifier's input size, where both networks are compared.
        classifier_shape: the classifier's output shape there (``(1, 1000)``).
        native_score_shape: the fully convolutional network's output there (``(1, 1000, 1, 1)``).
        max_abs_difference: the largest absolute difference between the two outputs there.
        max_abs_score: the largest absolute class score there, the scale of that difference.
        test_size: the larger input size tried.
        score_map_shape: the score map's shape at ``test_size`` (``(1, 1000, 6, 6)`` for VGG16
            at 384×384).
        model: the fully convolutional network.
    """

    replacements: list[Replacement]
    native_size: Size
    classifier_shape: tuple[int, ...]
    native_score_shape: tuple[int, ...]
    max_abs_difference: float
    max_abs_score: float
    test_size: Size
    score_map_shape: tuple[int, ...]
    model: FullyConvolutional = field(repr=False, compare=False)


def convolutionalize(classifier: nn.Module, input_size: Size | int = (224, 224)) -> FullyConvolutional:
    """Turn a classifier that ends in fully connected layers into a fully convolutional network.

    Each ``nn.Linear`` after the convolutional trunk becomes a convolution with the same weights
    (the first one ``h×w`` over the trunk's ``C×h×w`` map, later ones ``1×1``); ``nn.Flatten`` is
    dropped; an adaptive pooling of the trunk becomes the fixed pooling it performs at
    ``input_size``. The classifier itself is left untouched: the result owns a copy of its weights.

    Args:
        classifier: a chain-structured classifier (torchvision VGG, AlexNet, ResNet, MobileNet…).
        input_size: the classifier's native input size (height, width), where the two networks
            must agree.

    Returns:
        The fully convolutional network, in eval mode.

    Raises:
        ValueError: the classifier has no fully connected layer, or one whose input is neither
            the flattened feature map nor its channels pooled, or a head layer that only works on
            vectors, or an adaptive pooling whose sizes do not divide.
        RuntimeError: the classifier's ``forward`` is not a chain of its children (skip
            connections or other code between them), so the rebuilt network does not reproduce it.
    """
    return _convert(classifier, _as_size(input_size))[0]


def convolutionalize_report(classifier: nn.Module, native_size: Size | int = (224, 224),
                            test_size: Size | int = (384, 384)) -> ConvolutionalizeReport:
    """Convolutionalize ``classifier``, check it at ``native_size`` and run it at ``test_size``.

    Raises:
        ValueError: as :func:`convolutionalize`, or ``test_size`` is too small for the network.
        RuntimeError: as :func:`convolutionalize`.
    """
    native_size, test_size = _as_size(native_size), _as_size(test_size)
    model, reference, native_scores, difference = _convert(classifier, native_size)
    try:
        with torch.no_grad():
            score_map = model(_probe(model, test_size))
    except RuntimeError as error:
        raise InputError(f"{test_size[0]}×{test_size[1]} is too small an input for this network: {error}") from error
    return ConvolutionalizeReport(model.replacements, native_size, tuple(reference.shape), tuple(native_scores.shape),
                                  difference, reference.abs().max().item(), test_size, tuple(score_map.shape),
                                  model)


def torchvision_classifier(spec: str, weights: str | os.PathLike[str] | None = None) -> tuple[str, nn.Module, Size]:
    """Build a torchvision classifier named ``"torchvision:NAME"`` (or just ``"NAME"``).

    Args:
        spec: the model name, with or without the ``torchvision:`` prefix.
        weights: a local state-dict file to load; ``None`` leaves the weights random.

    Returns:
        The bare name, the classifier in eval mode, and its native input size (the crop size of
        torchvision's weights, 224×224 for most).
    """
    from torchvision import models as tvm

    name = spec.removeprefix("torchvision:")
    available = tvm.list_models(module=tvm)  # image classifiers only, no detection or segmentation
    if ":" in name or name not in available:
        raise InputError(f"unknown classifier {spec!r}; use torchvision:NAME with NAME one of {', '.join(available)}")
    classifier = tvm.get_model(name, weights=None)
    if weights is not None:
        classifier.load_state_dict(load_file(weights))
    return name, classifier.eval(), _native_size(name)


def _native_size(name: str) -> Size:
    """The crop size of torchvision's weights for ``name`` (299 for Inception, 224 for most)."""
    from torchvision import models as tvm

    try:
        crop = tvm.get_model_weights(name).DEFAULT.transforms().crop_size
    except (AttributeError, ValueError):  # no weights, or transforms without a crop: the common default
        return (224, 224)
    return (crop[0], crop[-1])


def _convert(classifier: nn.Module, native_size: Size) -> tuple[FullyConvolutional, Tensor, Tensor, float]:
    """The fully convolutional network, the classifier's and its outputs at the native size,
    and their largest difference."""
    model = copy.deepcopy(classifier).eval()  # the result must not share layers with the caller's model
    x = _probe(model, native_size)
    with torch.no_grad():
        calls, reference = _record_calls(model, x)
        trunk, trunk_replacements, features, split = _build_trunk(calls, x)
        head, head_replacements = _build_head(calls[split:], features)
        network = FullyConvolutional(trunk, head, trunk_replacements + head_replacements, native_size).eval()
        scores, difference = _check_equivalent(network, x, reference)
    return network, reference, scores, difference


@dataclass
class _Call:
    """One call of a top-level child during the recording run."""

    name: str
    module: nn.Module
    input: Tensor | None
    output: Any


def _record_calls(model: nn.Module, x: Tensor) -> tuple[list[_Call], Tensor]:
    """Run ``model`` once, recording its top-level children's calls in order, and its output.

    Inputs and outputs are copied as they pass: a later in-place layer or in-place code
    (DenseNet's ``F.relu(features, inplace=True)``) must not rewrite what was recorded.
    """
    calls: list[_Call] = []
    running: list[_Call] = []

    def before(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            first = args[0].clone() if args and isinstance(args[0], Tensor) else None
            running.append(_Call(name, module, first, None))
            calls.append(running[-1])
        return hook

    def after(module: nn.Module, args: tuple, output: Any) -> None:
        running.pop().output = output.clone() if isinstance(output, Tensor) else output

    handles = []
    for name, child in model.named_children():
        handles += [child.register_forward_pre_hook(before(name)), child.register_forward_hook(after)]
    try:
        reference = model(x)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(reference, Tensor):
        raise InputError(f"the classifier returns a {type(reference).__name__}, not a tensor of class scores")
    return calls, reference


def _build_trunk(calls: list[_Call], x: Tensor) -> tuple[nn.Sequential, list[Replacement], Tensor, int]:
    """The trunk: the children called before the head, in call order, each checked to be fed its
    predecessor's output.

    The head starts at the first child holding a fully connected layer, or flattening, or fed its
    predecessor's output flattened (GoogLeNet flattens in code before its dropout).

    Returns:
        The trunk, its replaced poolings, its output at the native size, and the index of the
        head's first call.
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    replacements: list[Replacement] = []
    previous, previous_name = x, "the input"
    for index, call in enumerate(calls):
        starts_head = _holds_head(call.module) or isinstance(call.module, nn.Flatten)
        if starts_head or _is_flattened(call.input, previous):
            if not (_same(call.input, previous) or _is_flattened(call.input, previous)
                    or _is_pooled(call.input, previous)):
                raise _not_a_chain(call.name, previous_name)
            return nn.Sequential(layers), replacements, previous, index
        if not _same(call.input, previous):
            raise _not_a_chain(call.name, previous_name)
        module = call.module
        if isinstance(module, _ADAPTIVE_POOLS):
            module, replacement = _fixed_pool(call.name, module, tuple(call.input.shape[-2:]))
            replacements.append(replacement)
        layers[_unique_key(call.name, layers)] = module
        previous, previous_name = call.output, repr(call.name)
    hidden = [c.name for c in calls if any(isinstance(m, nn.Linear) for m in c.module.modules())]
    raise InputError("the classifier has no fully connected head to convert"
                     + (f": its nn.Linear layers sit inside {', '.join(hidden)}, which are no nn.Sequential heads" if hidden
                        else " (it calls no nn.Linear: is it already fully convolutional?)"))


def _holds_head(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Linear`` or holds one through ``nn.Sequential`` containers only.

    Linear layers deeper inside a block (ConvNeXt's, applied channels-last at every position)
    are the block's business: the block stays in the trunk.
    """
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Sequential) and any(_holds_head(child) for child in module.children())


def _is_flattened(value: Any, previous: Any) -> bool:
    """Whether ``value`` is the feature map ``previous`` flattened to ``(N, C·h·w)``."""
    return (isinstance(value, Tensor) and isinstance(previous, Tensor) and previous.dim() == 4
            and value.dim() == 2 and _same(value, previous.flatten(1)))


def _not_a_chain(name: str, previous_name: str) -> RuntimeError:
    return RuntimeError(
        f"{name!r} is not fed the output of {previous_name}: the classifier's forward() is not a chain of its "
        "children (skip connections or code between them), which convolutionalize cannot follow")


def _same(value: Any, previous: Any) -> bool:
    """Whether ``value`` equals the tensor ``previous``."""
    return (isinstance(value, Tensor) and isinstance(previous, Tensor) and value.shape == previous.shape
            and torch.equal(value, previous))


def _is_pooled(value: Any, previous: Any) -> bool:
    """Whether ``value`` is the feature map ``previous`` averaged over all places (MobileNetV2
    pools in code), flattened or not."""
    if not (isinstance(value, Tensor) and isinstance(previous, Tensor) and previous.dim() == 4):
        return False
    pooled = previous.mean((2, 3))
    return value.numel() == pooled.numel() and torch.allclose(value.reshape(pooled.shape), pooled, rtol=1e-4,
                                                              atol=1e-6 * pooled.abs().max().item())


def _fixed_pool(name: str, pool: nn.Module, in_size: Size) -> tuple[nn.Module, Replacement]:
    """The fixed pooling an adaptive one performs on ``in_size``.

    An adaptive pooling would squash any larger map back to its output size; a fixed one slides.
    A pooling to 1×1 becomes a stride-1 window of the whole native map, so a larger input gives a
    dense map of pooled windows rather than one window every ``in_size`` pixels.
    """
    out_size = _pool_output_size(pool.output_size, in_size)
    before = f"{type(pool).__name__}({in_size[0]}×{in_size[1]} → {out_size[0]}×{out_size[1]})"
    if any(n_in % n_out for n_in, n_out in zip(in_size, out_size)) or getattr(pool, "return_indices", False):
        raise InputError(f"{name!r}: {before} is no fixed pooling ({in_size[0]}×{in_size[1]} does not divide into "
                         f"{out_size[0]}×{out_size[1]}); choose a native input size where it does")
    kernel = tuple(n_in // n_out for n_in, n_out in zip(in_size, out_size))
    if kernel == (1, 1):
        return nn.Identity(), Replacement(name, before, "identity")
    stride = tuple(1 if n_out == 1 else k for n_out, k in zip(out_size, kernel))
    fixed_type = nn.AvgPool2d if isinstance(pool, nn.AdaptiveAvgPool2d) else nn.MaxPool2d
    fixed = fixed_type(kernel, stride=stride)
    stride_text = str(stride[0]) if stride[0] == stride[1] else _by(stride)
    return fixed, Replacement(name, before, f"{fixed_type.__name__}({_by(kernel)}, stride {stride_text})")


def _pool_output_size(output_size: Any, in_size: Size) -> Size:
    """An adaptive pooling's output size, its ``None`` entries meaning "as the input"."""
    sizes = (output_size, output_size) if isinstance(output_size, int) or output_size is None else output_size
    return tuple(n_in if n_out is None else n_out for n_in, n_out in zip(in_size, sizes))


def _build_head(calls: list[_Call], features: Tensor) -> tuple[nn.Sequential, list[Replacement]]:
    """The head rebuilt as convolutions, walked with a real tensor so every layer knows its input."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    replacements: list[Replacement] = []
    x = features
    for name, module in _head_layers(calls):
        if isinstance(module, nn.Flatten):  # the score map keeps its spatial axes
            replacements.append(Replacement(name, "Flatten", "dropped"))
            continue
        if isinstance(module, nn.Linear):
            converted = _linear_as_conv(name, module, x)
        elif isinstance(module, _ADAPTIVE_POOLS):
            converted = [(name, *_fixed_pool(name, module, tuple(x.shape[-2:])))]
        else:  # ReLU, Dropout, Hardswish…: elementwise, the same on a map as on a vector
            converted = [(name, module, None)]
        for key, layer, replacement in converted:
            layers[_unique_key(key, layers)] = layer
            replacements += [replacement] if replacement else []
            x = _run_on_map(key, layer, x)
    return nn.Sequential(layers), replacements


def _run_on_map(name: str, layer: nn.Module, x: Tensor) -> Tensor:
    """``layer(x)``, or a clear error where a head layer only works on vectors (LayerNorm over
    features, BatchNorm1d)."""
    try:
        return layer(x)
    except RuntimeError as error:
        raise InputError(f"{name!r} ({type(layer).__name__}) of the head cannot run on the {tuple(x.shape)} feature "
                         f"map it would get: {error}") from error


def _head_layers(calls: list[_Call]) -> list[tuple[str, nn.Module]]:
    """The head's layers in order: the called children, with ``nn.Sequential`` containers opened up."""
    layers: list[tuple[str, nn.Module]] = []
    pending = [(call.name, call.module) for call in calls]
    while pending:
        name, module = pending.pop(0)
        if isinstance(module, nn.Sequential):
            pending[:0] = [(f"{name}.{key}", child) for key, child in module.named_children()]
        elif not isinstance(module, nn.Linear) and any(isinstance(m, nn.Linear) for m in module.modules()):
            raise InputError(f"{name!r} ({type(module).__name__}) holds fully connected layers inside its own "
                             "forward(); convolutionalize converts them only in nn.Sequential heads")
        else:
            layers.append((name, module))
    return layers


def _linear_as_conv(name: str, linear: nn.Linear, x: Tensor) -> list[tuple[str, nn.Module, Replacement]]:
    """The convolution for ``linear`` given the map ``x`` that reaches it at the native size.

    Its input is either that map flattened (``in_features == C·h·w``: an ``h×w`` convolution) or
    the map's channels pooled over the whole map by the classifier's own code, as MobileNetV2
    does (``in_features == C``: a stride-1 ``h×w`` average, then a ``1×1`` convolution).

    Returns:
        ``(name, layer, replacement)`` for each layer that stands for ``linear``.
    """
    before = f"Linear({linear.in_features} → {linear.out_features})"
    if x.dim() != 4:
        raise InputError(f"{name!r}: {before} is fed a {x.dim()}-D tensor {tuple(x.shape)}, not a feature map")
    channels, height, width = x.shape[1:]
    if linear.in_features == channels * height * width:
        conv = linear_to_conv2d(linear, channels, (height, width))
        after = f"Conv2d({channels} → {linear.out_features}, {height}×{width})"
        return [(name, conv, Replacement(name, before, after))]
    if linear.in_features == channels:
        pool = nn.AvgPool2d((height, width), stride=1)
        pooling = Replacement("(forward code)", "global average pooling", f"AvgPool2d({height}×{width}, stride 1)")
        conv = linear_to_conv2d(linear, channels, 1)
        after = f"Conv2d({channels} → {linear.out_features}, 1×1)"
        return [("global_pool", pool, pooling), (name, conv, Replacement(name, before, after))]
    raise InputError(
        f"{name!r}: {before} takes neither the {channels}×{height}×{width} feature map before it flattened "
        f"({channels * height * width} values) nor its {channels} channels pooled; its input comes from code "
        "convolutionalize cannot follow")


def _check_equivalent(network: FullyConvolutional, x: Tensor, reference: Tensor) -> tuple[Tensor, float]:
    """The network's scores at the native size and their largest difference from the classifier's.

    Raises:
        RuntimeError: they differ beyond float rounding (1e-4 of the scores' scale).
    """
    hint = ("the classifier's forward() is not a chain of its children and fully connected layers that "
            "convolutionalize understands (code between layers, max instead of average pooling…)")
    try:
        scores = network(x)
    except RuntimeError as error:
        raise RuntimeError(f"the converted network fails at the native size ({error}): {hint}") from error
    if scores.flatten(1).shape != reference.flatten(1).shape:
        raise RuntimeError(f"the converted network gives {tuple(scores.shape)} where the classifier gives "
                           f"{tuple(reference.shape)}: {hint}")
    difference = (scores.flatten(1) - reference.flatten(1)).abs().max().item()
    scale = reference.abs().max().item()
    if difference > 1e-4 * scale + 1e-6:
        raise RuntimeError(f"the converted network's scores differ from the classifier's by up to {difference:.3g} "
                           f"(scores up to {scale:.3g}): {hint}")
    return scores, difference


def _probe(model: nn.Module, size: Size) -> Tensor:
    """A fixed random image batch of one, with the model's input channels, dtype and device."""
    first_conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first_conv.in_channels if first_conv is not None else 3
    parameter = next(model.parameters())
    image = torch.randn(1, channels, *size, generator=torch.Generator().manual_seed(0))
    return image.to(device=parameter.device, dtype=parameter.dtype)


def _as_size(size: Size | int) -> Size:
    height, width = (size, size) if isinstance(size, int) else size
    return (int(height), int(width))


def _unique_key(name: str, taken: OrderedDict[str, nn.Module]) -> str:
    """A module key for ``name`` (no dots allowed) not yet in ``taken`` (a child called twice)."""
    key, index = name.replace(".", "_"), 1
    while key in taken:
        key, index = f"{name.replace('.', '_')}_{index}", index + 1
    return key


def _by(pair: tuple[int, int]) -> str:
    return f"{pair[0]}×{pair[1]}"
