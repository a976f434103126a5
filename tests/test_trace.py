"""The layer tracer: published receptive fields, the FCN/U-Net/DeepLab geometry, parameters and
MACs by hand, gradient-measured receptive fields, valid input sizes, and the ``shapes`` command."""
from __future__ import annotations

import json
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision import models as tvm

import pixelwise.geometry.propagation as propagation
from pixelwise import create_model
from pixelwise.analysis import Trace, TraceError, trace, valid_input_sizes
from pixelwise.cli import main
from pixelwise.models.build import build_model
from pixelwise.models.fcn import PAPER_CROP_OFFSETS
from pixelwise.models.unet import unet_margin, unet_output_size


def both(value: float) -> tuple[Fraction, Fraction]:
    return Fraction(value), Fraction(value)


# --- published receptive fields --------------------------------------------------------------------


@pytest.fixture(scope="module")
def vgg16_trace() -> tuple[nn.Module, Trace]:
    model = tvm.vgg16(weights=None)
    return model, trace(model, 224)


def test_vgg16_pool5_has_stride_32_and_receptive_field_212(vgg16_trace: tuple[nn.Module, Trace]) -> None:
    model, result = vgg16_trace
    pool5 = result["features.30"]
    # Araujo et al. (Distill 2019) tabulate vgg_16: RF 212, effective stride 32, effective padding 90,
    # i.e. pool5's pixel 0 is centred at -90 + (212 - 1)/2 = 15.5.
    assert (pool5.stride, pool5.rf, pool5.center) == (both(32), both(212), both(15.5))
    assert pool5.shape == (1, 512, 7, 7)
    assert result.total_params == sum(p.numel() for p in model.parameters()) == 138_357_544
    assert result.total_macs == 15_470_264_320  # the usual "15.5 GMACs" of VGG16 at 224


def test_alexnet_pool5_receptive_field_195() -> None:
    pool5 = trace(tvm.alexnet(weights=None), 224)["features.12"]
    assert (pool5.stride, pool5.rf) == (both(32), both(195))  # Araujo et al.: alexnet_v2, 195


def test_resnet50_receptive_field_427_before_the_global_pool() -> None:
    # The Distill table's resnet_v1_50 (483) is TF-slim's, with the stride on a block's 1×1
    # convolution. torchvision's v1.5 strides the 3×3, which then sees the finer grid:
    #   conv1 7×7/2: 7 (jump 2); maxpool 3×3/2: 7 + 2·2 = 11 (jump 4)
    #   layer1, 3 blocks of one 3×3 at jump 4:        11 + 3·8  = 35
    #   layer2, its 3×3/2 at jump 4, 3 more at 8:     35 + 8  + 3·16 = 91
    #   layer3, 3×3/2 at jump 8, 5 more at 16:        91 + 16 + 5·32 = 267
    #   layer4, 3×3/2 at jump 16, 2 more at 32:      267 + 32 + 2·64 = 427
    result = trace(tvm.resnet50(weights=None), 224)
    names = [row.name for row in result]
    last = result.rows[names.index("avgpool") - 1]
    assert (last.name, last.stride, last.rf) == ("layer4.2.relu#3", both(32), both(427))
    assert result["avgpool"].rf == both(427 + 6 * 32)  # the global pool over 7×7 adds 6 cells
    assert len(result.merges) == 16 and all(row.aligned for row in result.merges)


# --- the segmentation models ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def fcn8s_trace() -> Trace:
    return trace(create_model("fcn8s", num_classes=21, paper=True), 64)


def test_fcn8s_paper_crops_align_every_skip_and_the_output(fcn8s_trace: Trace) -> None:
    crops = {row.name: row.details["offset"] for row in fcn8s_trace.of_kind("crop")}
    assert crops == {"score_pool4:crop": (5, 5), "score_pool3:crop": (9, 9), "upscore8:crop": (31, 31)}
    assert {k: v[0] for k, v in crops.items()} == {f"{k}:crop": v for k, v in PAPER_CROP_OFFSETS["fcn8s"].items()}
    merges = fcn8s_trace.merges
    assert [(row.name, row.type) for row in merges] == [("upscore2:add", "add"), ("upscore_pool4:add", "add")]
    for merge, stride, center in zip(merges, (16, 8), (-11.5, -23.5)):
        assert merge.aligned and merge.details["misalignment"] == (0, 0)
        for addend in merge.details["inputs"]:
            assert (addend["stride"], addend["center"]) == (both(stride), both(center))
    logits = fcn8s_trace.rows[-1]
    assert (logits.shape, logits.stride, logits.center) == ((1, 21, 64, 64), both(1), both(0))


def test_fcn8s_trace_reproduces_the_derivation_in_fcn_py(fcn8s_trace: Trace) -> None:
    # fcn.py: pool3 at 8x - 95.5, pool4 at 16x - 91.5, score_fr at 32x + 12.5, upscore8 at y - 31.
    expected = {"encoder.features.16": (8, -95.5), "encoder.features.23": (16, -91.5), "score_fr": (32, 12.5),
                "upscore2": (16, -11.5), "upscore_pool4": (8, -23.5), "upscore8": (1, -31)}
    for name, (stride, center) in expected.items():
        assert (fcn8s_trace[name].stride, fcn8s_trace[name].center) == (both(stride), both(center)), name


@pytest.fixture(scope="module")
def unet_model() -> nn.Module:
    return create_model("unet", num_classes=2, base_channels=4)


def test_unet_core_maps_572_to_388_with_aligned_crop_and_concatenate(unet_model: nn.Module) -> None:
    result = trace(unet_model, 572, forward=unet_model.forward_core)
    assert result["classifier"].shape == (1, 2, 388, 388)
    assert result["classifier"].center == both(unet_margin())  # output pixel 0 sees input pixel 92
    skip_crops = [result[f"expanding.{i}:crop"] for i in range(4)]
    # The paper's figure: 64→56, 136→104, 280→200, 568→392.
    assert [(row.details["input"][0], row.shape[-1]) for row in skip_crops] == \
        [(64, 56), (136, 104), (280, 200), (568, 392)]
    assert [row.details["offset"] for row in skip_crops] == [(4, 4), (16, 16), (40, 40), (88, 88)]
    concats = result.merges
    assert [row.name for row in concats] == [f"expanding.{i}:concat" for i in range(4)]
    assert all(row.type == "concat" and row.aligned for row in concats)


def test_unet_overlap_tile_mirrors_92_pixels_and_lines_the_output_up(unet_model: nn.Module) -> None:
    result = trace(unet_model, 388)
    pads = result.of_kind("pad")[:2]  # the mirror padding, one axis at a time
    assert [(row.details["mode"], row.details["top"], row.details["bottom"]) for row in pads][0] == \
        ("reflect", 92, 92)
    assert (pads[1].details["left"], pads[1].details["right"]) == (92, 92)
    assert pads[1].shape[-2:] == (572, 572) and result["classifier"].shape[-2:] == (388, 388)
    assert result.rows[-1].center == both(0) and result.rows[-1].stride == both(1)
    assert len(result.merges) == 4 and all(row.aligned for row in result.merges)


@pytest.mark.parametrize("aligned", [True, False])
def test_deeplabv3plus_decoder_concat_is_aligned_unless_built_half_pixel(aligned: bool) -> None:
    result = trace(create_model("deeplabv3plus", num_classes=3, encoder="resnet18", aligned=aligned), 64)
    aspp = result["aspp:concat"]
    assert aspp.type == "concat" and len(aspp.details["inputs"]) == 5 and aspp.aligned
    assert {inp["stride"] for inp in aspp.details["inputs"]} == {both(16)}
    decoder = result["decoder:concat"]
    if aligned:
        assert decoder.aligned and [inp["center"] for inp in decoder.details["inputs"]] == [both(0), both(0)]
        assert result.rows[-1].center == both(0)
        return
    # ResNet's "same"-padded stride-2 layers centre pixel y of a stride-s map on input s·y;
    # resizing with half-pixel centres (the geometry of aligned=False) assumes s·y + (s - 1)/2.
    # From stride 16 to 4 that is 7.5 - 1.5 = 6 input pixels of shift (measured with gradients in
    # test_resnet_style_downsampling_then_resizing_shifts_the_grid).
    assert not decoder.aligned and decoder.details["misalignment"] == both(6)
    assert [inp["center"] for inp in decoder.details["inputs"]] == [both(-6), both(0)]
    assert result.rows[-1].center == both(-7.5)  # the logits sit 7.5 pixels up and left


# --- the cross-check, parameters and MACs ----------------------------------------------------------


def test_every_row_shape_is_the_real_output_shape() -> None:
    model = create_model("deeplabv3plus", num_classes=3, encoder="resnet18", upsample="transposed")
    real: dict[str, tuple[int, ...]] = {}

    def record(name: str, output: Tensor) -> None:  # a hook returning a value would replace the output
        real.setdefault(name, tuple(output.shape))

    hooks = [module.register_forward_hook(lambda m, i, out, name=name: record(name, out))
             for name, module in model.named_modules() if next(module.children(), None) is None]
    result = trace(model, (48, 80))
    for hook in hooks:
        hook.remove()
    layers = [row for row in result if row.kind == "layer" and "#" not in row.name]
    assert layers and all(real[row.name] == row.shape for row in layers)


def test_a_wrong_formula_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(propagation, "conv_output_size", lambda *args: 1)
    with pytest.raises(TraceError, match="analytic shape"):
        trace(nn.Conv2d(3, 4, 3), 16)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.reduce = nn.Conv2d(8, 4, 1, bias=False)
        self.up = nn.ConvTranspose2d(4, 2, 4, stride=2, padding=1, bias=False)
        self.fc = nn.Linear(2 * 8 * 8, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduce(self.grouped(self.pool(torch.relu(self.bn(self.conv(x))))))
        return self.fc(torch.flatten(self.up(x), 1))


def test_parameters_and_macs_by_hand() -> None:
    result = trace(TinyNet(), 8)
    expected = {  # name: (parameters, MACs)
        "conv": (3 * 8 * 9 + 8, 8 * 8 * 8 * (3 * 9)),  # each output value: 3 channels × 3×3
        "bn": (16, 0),
        "pool": (0, 0),
        "grouped": (8 * 2 * 9 + 8, 8 * 4 * 4 * (2 * 9)),  # 4 groups: 2 input channels each
        "reduce": (4 * 8, 4 * 4 * 4 * 8),
        "up": (4 * 2 * 16, 4 * 4 * 4 * (2 * 16)),  # each input value scatters 2 × 4×4 products
        "fc": (128 * 10 + 10, 128 * 10),
    }
    assert {row.name: (row.params, row.macs) for row in result if row.kind == "layer"} == expected
    assert result.total_params == sum(p.numel() for p in TinyNet().parameters()) == 1842
    assert result.total_macs == sum(macs for _, macs in expected.values())
    # RF 3, pooled 4 (stride 2), grouped 3×3 8, transposed (2 inputs per output) 10 at stride 1;
    # flattening 8 such pixels reaches 7 more.
    assert result["up"].rf == both(10) and result["up:flatten"].flattened and result["fc"].rf == both(17)


def test_unknown_operations_pass_through_marked_approximate() -> None:
    class Rolled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, stride=2)

        def forward(self, x: Tensor) -> Tensor:
            return torch.roll(self.conv(x), 1, dims=2) * 2

    result = trace(Rolled(), 17)
    rolled = result["conv:roll"]
    assert rolled.approximate and rolled.stride == both(2) and rolled.shape == (1, 4, 8, 8)
    assert "≈" in result.to_table()


def test_trace_is_json_able_and_looks_up_by_name() -> None:
    result = trace(TinyNet(), 8)
    data = json.loads(json.dumps(result.to_dict()))
    assert [row["name"] for row in data["rows"]] == [row.name for row in result]
    assert data["total_params"] == result.total_params and data["rows"][2]["center"] == [0.5, 0.5]
    assert "conv" in result and result["pool"].type == "MaxPool2d"
    with pytest.raises(KeyError, match="rows containing it"):
        result["po"]


def test_models_built_on_the_meta_device_trace_without_compute() -> None:
    with torch.device("meta"):
        model = tvm.vgg16()
    assert trace(model, 224)["features.30"].rf == both(212)


# --- geometry measured with gradients ---------------------------------------------------------------


def _ones(module: nn.Module) -> nn.Module:
    """All weights one and biases zero: a positive linear map whose gradients show every tap."""
    for name, param in module.named_parameters():
        nn.init.ones_(param) if name.endswith("weight") else nn.init.zeros_(param)
    return module


class Resize(nn.Module):
    def __init__(self, scale: int, mode: str) -> None:
        super().__init__()
        self.scale, self.mode = scale, mode

    def forward(self, x: Tensor) -> Tensor:
        extra = {"align_corners": False} if self.mode == "bilinear" else {}
        return F.interpolate(x, scale_factor=self.scale, mode=self.mode, **extra)


# name: (layers, whether every output pixel's field sits exactly where the trace says; after an
# upsampling the place varies with the pixel's phase, and the trace gives the average).
CHAINS = {
    "strided convs": ([nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.Conv2d(1, 1, 3, stride=2, padding=1)], True),
    "dilated, pooled, valid": ([nn.Conv2d(1, 1, 5, padding=2, dilation=2), nn.AvgPool2d(2), nn.Conv2d(1, 1, 3)],
                               True),
    "ceil-mode pooling": ([nn.AvgPool2d(3, stride=2, ceil_mode=True), nn.Conv2d(1, 1, 3, stride=2)], True),
    "transposed": ([nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.ConvTranspose2d(1, 1, 4, stride=2, padding=1)],
                   False),
    "transposed k3 s2": ([nn.AvgPool2d(2), nn.ConvTranspose2d(1, 1, 3, stride=2)], False),
    "bilinear": ([nn.AvgPool2d(2), Resize(2, "bilinear"), nn.Conv2d(1, 1, 3, padding=1)], False),
    "nearest": ([nn.Conv2d(1, 1, 3, stride=2, padding=1), Resize(2, "nearest")], False),
    "pixel shuffle": ([nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.PixelShuffle(2)], False),
    "bilinear ×4": ([nn.Conv2d(1, 1, 3, stride=2, padding=1), nn.Conv2d(1, 1, 3, stride=2, padding=1),
                     Resize(4, "bilinear")], False),
}


def _measured(model: nn.Module, size: int, row: int, column: int) -> tuple[int, int, float]:
    """First and last input row reaching output pixel (row, column), and the weighted centre."""
    x = torch.ones(1, 1, size, size, requires_grad=True)
    model(x)[0, :, row, column].sum().backward()
    weights = x.grad[0, 0].abs().sum(dim=1).double()
    rows = torch.nonzero(weights).flatten()
    centre = (weights * torch.arange(size, dtype=torch.float64)).sum() / weights.sum()
    return int(rows[0]), int(rows[-1]), float(centre)


@pytest.mark.parametrize("name", list(CHAINS))
def test_receptive_fields_and_centres_match_gradients(name: str) -> None:
    layers, exact = CHAINS[name]
    model, size = _ones(nn.Sequential(*layers)), 48
    axis = trace(model, size).rows[-1].axes[0]
    out = model(torch.ones(1, 1, size, size)).shape[-1]
    spans, offsets = [], []
    for y in range(out):
        low, high = axis.interval()
        low, high = low + y * axis.stride, high + y * axis.stride
        if low < 1 or high > size - 2:
            continue  # near the border, padding and clamping cut the field
        first, last, centre = _measured(model, size, y, out // 2)
        if exact:
            assert low <= first and last <= high, f"row {y} reads {first}..{last} outside {low}..{high}"
        spans.append(last - first + 1)
        offsets.append(centre - float(y * axis.stride))
    period = 4  # a whole number of phases of every upsampling here
    offsets = offsets[:len(offsets) // period * period]
    assert len(offsets) >= period and max(spans) == axis.rf
    assert sum(offsets) / len(offsets) == pytest.approx(float(axis.center), abs=1e-9)


def test_resnet_style_downsampling_then_resizing_shifts_the_grid() -> None:
    # Two "same" 3×3/2 convolutions (ResNet's kind) then bilinear ×4: the output row y is computed
    # around input row y - 1.5, so adding an identity skip would mix neighbouring places.
    axis = trace(_ones(nn.Sequential(*CHAINS["bilinear ×4"][0])), 48).rows[-1].axes[0]
    assert (axis.stride, axis.center) == (1, Fraction(-3, 2))


# --- valid input sizes ----------------------------------------------------------------------------------


def test_vgg16_needs_multiples_of_32(vgg16_trace: tuple[nn.Module, Trace]) -> None:
    model, result = vgg16_trace
    sizes = valid_input_sizes(model, max_size=512, traced=result)
    assert sizes.sizes == tuple(range(32, 513, 32)) and (sizes.period, sizes.offset) == (32, 32)
    assert "multiples of 32" in sizes.explanation


def test_generic_sizes_come_from_the_traced_strides() -> None:
    alexnet = valid_input_sizes(tvm.alexnet(weights=None), max_size=300)
    # torchvision pads conv1 by 2, so its exact sizes are 223 + 32k (Caffe's unpadded AlexNet: 227).
    assert 223 in alexnet and 224 not in alexnet and 227 not in alexnet and alexnet.period == 32
    resnet = valid_input_sizes(tvm.resnet18(weights=None), max_size=600)
    # "Same"-padded stride-2 layers tile odd sizes exactly: 32k + 1, as DeepLab's 513.
    assert resnet.sizes[:3] == (1, 33, 65) and 513 in resnet and 512 not in resnet
    assert "1 + 32·k" in resnet.explanation


def test_unet_core_sizes_found_generically_match_unet_py(unet_model: nn.Module) -> None:
    class Core(nn.Module):
        def __init__(self, unet: nn.Module) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, x: Tensor) -> Tensor:
            return self.unet.forward_core(x)

    found = valid_input_sizes(Core(unet_model), max_size=700, probe_size=188)
    expected = tuple(n for n in range(1, 701) if _valid_unet(n))
    assert found.sizes == expected and 572 in found


def _valid_unet(size: int) -> bool:
    try:
        unet_output_size(size)
    except ValueError:
        return False
    return True


def test_pixelwise_models_answer_by_their_design(unet_model: nn.Module) -> None:
    deeplab = valid_input_sizes(create_model("deeplabv3plus", num_classes=3, encoder="resnet18"), max_size=128)
    assert deeplab.sizes == (16, 32, 48, 64, 80, 96, 112, 128) and "multiple of 16" in deeplab.explanation
    unet = valid_input_sizes(unet_model, max_size=400)
    assert unet.sizes[:3] == (4, 20, 36) and 388 in unet and unet.period == 16
    assert "92" in unet.explanation and "572" not in unet.sizes


def test_paper_fcn_takes_every_size() -> None:
    with torch.device("meta"):  # no need for 134M real parameters to read the rule
        model = create_model("fcn32s", num_classes=21, paper=True)
    sizes = valid_input_sizes(model, max_size=50)
    assert sizes.sizes == tuple(range(1, 51)) and "100 pixels" in sizes.explanation


# --- the command line --------------------------------------------------------------------------------


def test_shapes_command_prints_the_table_totals_and_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shapes", "unet", "--model-args", "base_channels=2", "norm=None", "--size", "20", "20"]) == 0
    out = capsys.readouterr().out
    for text in ("expanding.0:concat", "aligned", "input:pad", "reflect", "parameters", "MACs", "mirrors 92"):
        assert text in out, text


def test_shapes_command_json_for_torchvision(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shapes", "torchvision:alexnet", "--size", "64", "64", "--num-classes", "7", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"][-1]["shape"] == [1, 7] and data["model"] == "AlexNet"
    assert data["total_params"] == sum(p.numel() for p in tvm.alexnet(weights=None, num_classes=7).parameters())


def test_shapes_command_model_args_and_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["shapes", "deeplabv3plus", "--model-args", "encoder=resnet18", "--size", "32", "32"]) == 0
    assert "MISALIGNED" not in capsys.readouterr().out
    assert main(["shapes", "deeplabv3plus", "--model-args", "encoder=resnet18", "aligned=False",
                 "--size", "32", "32"]) == 0
    assert "MISALIGNED by 6 px" in capsys.readouterr().out
    assert main(["shapes", "torchvision:not_a_model", "--size", "32", "32"]) == 2
    assert main(["shapes", "unet", "--model-args", "base_channels", "--size", "32", "32"]) == 2
    assert "key=value" in capsys.readouterr().out


def test_build_model_refuses_weights() -> None:
    with pytest.raises(ValueError, match="weights=None"):
        build_model("torchvision:resnet18", weights="IMAGENET1K_V1")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_large", "vgg16_bn", "timm:resnet18"])
def test_feature_geometry_finds_where_each_encoder_map_sits(name: str) -> None:
    """ResNet's and MobileNet's even-padded strides centre pixel y of a stride-s map on input s·y;
    VGG's 2×2 pooling on s·y + (s - 1)/2. Traced, not tabulated: timm encoders included."""
    from pixelwise.analysis import feature_geometry
    from pixelwise.encoders import create_encoder

    if name.startswith("timm:"):
        pytest.importorskip("timm")
    for output_stride in (32, 8):
        encoder = create_encoder(name, output_stride=output_stride).to("meta")
        geometry = feature_geometry(encoder, (64, 96))
        assert [axes[0].stride for axes in geometry] == encoder.reductions
        assert all((h.stride, h.center) == (w.stride, w.center) for h, w in geometry), "the same on both axes"
        natural = [2, 4, 8, 16, 32]
        expected = [Fraction(s - 1, 2) if name.startswith("vgg") else Fraction(0)
                    for s in natural[:len(encoder.reductions)]]
        # A dilated stage keeps the grid of the last strided one.
        expected = [expected[min(i, natural.index(r))] for i, r in enumerate(encoder.reductions)]
        assert [axes[0].center for axes in geometry] == expected
