"""The registries behind every by-name choice: one type, one unknown-name error."""
from __future__ import annotations

import inspect
import re
from typing import Callable

import pytest

import pixelwise
from pixelwise.data import create_dataset
from pixelwise.data.registry import DATASETS
from pixelwise.encoders.torchvision_encoders import TORCHVISION_ENCODERS
from pixelwise.layers import make_act, make_norm, make_upsampler
from pixelwise.layers.conv import ACTIVATIONS, NORMS
from pixelwise.layers.upsample import UPSAMPLERS
from pixelwise.losses import LOSSES, create_loss
from pixelwise.models.registry import MODELS, register_model
from pixelwise.registry import Registry, UnknownNameError

# (registry, the public call that looks a name up in it, a misspelt name, the name it should suggest)
LOOKUPS: list[tuple[Registry, Callable[[str], object], str, str]] = [
    (MODELS, pixelwise.create_model, "unet34", "unet"),
    (TORCHVISION_ENCODERS, pixelwise.create_encoder, "mobilenet_v3_larg", "mobilenet_v3_large"),
    (DATASETS, create_dataset, "camvd", "camvid"),
    (LOSSES, create_loss, "lovaz", "lovasz"),
    (UPSAMPLERS, lambda name: make_upsampler(name, 3, 3, 2), "pixelshufle", "pixelshuffle"),
    (NORMS, lambda name: make_norm(name, 4), "instance_nrom", "instancenorm"),
    (ACTIVATIONS, make_act, "hardswich", "hardswish"),
]


@pytest.mark.parametrize(("registry", "lookup", "typo", "close"), LOOKUPS, ids=[r.what for r, *_ in LOOKUPS])
def test_every_unknown_name_error_has_one_form_and_suggests_the_close_name(
        registry: Registry, lookup: Callable[[str], object], typo: str, close: str) -> None:
    with pytest.raises(UnknownNameError) as raised:
        lookup(typo)
    error = raised.value
    assert isinstance(error, KeyError) and isinstance(error, ValueError)
    match = re.fullmatch(rf"unknown {registry.what} '{typo}'; did you mean '{close}'(, '[^']+')*( or '[^']+')?\? "
                         r"\(known: (?P<known>.*)\)", str(error))
    assert match, str(error)
    assert match["known"].split(", ")[:len(registry)] == registry.names()


def test_a_name_with_nothing_close_lists_the_known_names_only() -> None:
    with pytest.raises(UnknownNameError, match=r"^unknown loss 'xyzzy' \(known: ce, dice, focal, lovasz, ohem, weighted_ce\)$"):
        create_loss("xyzzy")


def test_registry_registers_by_decorator_under_names_or_the_function_name() -> None:
    colours: Registry[Callable[[], str]] = Registry("colour", normalize=str.lower)

    @colours.register()
    def red() -> str:
        return "red"

    @colours.register("grey", "gray")
    def _grey() -> str:
        return "grey"

    assert colours.names() == ["gray", "grey", "red"] and len(colours) == 3
    assert colours["RED"] is red and colours["gray"] is colours["grey"] is _grey
    assert "Grey" in colours and "blue" not in colours and 3 not in colours
    assert colours.get("blue") is None
    with pytest.raises(ValueError, match="colour 'Red' is already registered"):
        colours.register("Red")(red)


def test_encoder_patterns_are_listed_after_the_names() -> None:
    with pytest.raises(UnknownNameError, match=r"vgg16_bn, timm:NAME\)$"):
        pixelwise.create_encoder("nope")


def test_default_encoder_is_the_builders_encoder_default() -> None:
    for name in pixelwise.list_models():
        info = pixelwise.model_info(name)
        parameter = inspect.signature(info.builder).parameters.get("encoder")
        if parameter is not None:
            assert info.default_encoder == parameter.default
        else:
            assert info.default_encoder == info.fixed_encoder


def test_register_model_refuses_a_fixed_encoder_for_a_builder_that_takes_one() -> None:
    def not_registered(num_classes: int = 21, encoder: str = "resnet18") -> None:
        raise AssertionError("never built")

    with pytest.raises(ValueError, match="its default, not fixed_encoder='resnet50'"):
        register_model("FCN", fixed_encoder="resnet50")(not_registered)
    assert "not_registered" not in pixelwise.list_models()
