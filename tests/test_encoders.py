"""Encoders: the contract, dilation identical to torchvision, weight loading from files and its errors."""
from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchvision import models as tvm

import pixelwise
from pixelwise.encoders import WeightsUnavailableError, create_encoder, list_encoders
from pixelwise.io.safe_load import UntrustedFileError

LIGHT_ENCODERS = ["resnet18", "resnet34", "mobilenet_v2", "mobilenet_v3_large", "vgg16_bn"]


@pytest.mark.parametrize("name", list_encoders())
def test_encoder_reports_its_real_channels_and_strides(name: str) -> None:
    encoder = create_encoder(name).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 96))
    assert [f.shape[1] for f in features] == encoder.channels
    assert [64 // f.shape[-2] for f in features] == encoder.reductions == [96 // f.shape[-1] for f in features]
    assert encoder.reductions == sorted(encoder.reductions), "highest resolution first"


@pytest.mark.parametrize("name", LIGHT_ENCODERS)
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_replaces_strides_by_dilation(name: str, output_stride: int) -> None:
    encoder = create_encoder(name, output_stride=output_stride).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 64))
    assert encoder.output_stride == output_stride
    assert [64 // f.shape[-1] for f in features] == encoder.reductions


@pytest.mark.parametrize(("name", "output_stride", "replace"), [
    ("resnet50", 8, [False, True, True]),
    ("resnet50", 16, [False, False, True]),
])
def test_resnet_dilation_equals_torchvision(name: str, output_stride: int, replace: list[bool]) -> None:
    reference = getattr(tvm, name)(replace_stride_with_dilation=replace).eval()
    encoder = create_encoder(name, output_stride=output_stride).eval()
    encoder.load_state_dict(encoder.convert_state_dict(reference.state_dict()))
    x = torch.randn(1, 3, 45, 61)
    with torch.no_grad():
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
        torch.testing.assert_close(encoder(x)[-1], expected, atol=1e-5, rtol=0)


def test_resnet18_output_stride_8_is_supported_although_torchvision_refuses_it() -> None:
    with pytest.raises(NotImplementedError):
        tvm.resnet18(replace_stride_with_dilation=[False, True, True])
    assert create_encoder("resnet18", output_stride=8).reductions == [2, 4, 8, 8, 8]


def test_invalid_output_stride_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="output_stride must be 8, 16 or 32"):
        create_encoder("resnet18", output_stride=12)


def test_unknown_encoder_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        create_encoder("resnet19")


def test_torchvision_classifier_file_loads_into_encoder(tmp_path: Path) -> None:
    classifier = tvm.resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(classifier.state_dict(), path)
    encoder = create_encoder("resnet18", weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = torch.flatten(classifier.avgpool(encoder(x)[-1]), 1)
        torch.testing.assert_close(classifier.fc(features), classifier(x))


@pytest.mark.slow  # writes and reads a 528 MB VGG16 file
def test_vgg_classifier_file_becomes_fully_convolutional(tmp_path: Path) -> None:
    """fc6/fc7 as convolutions compute exactly what the classifier's Linear layers computed."""
    classifier = tvm.vgg16(weights=None).eval()
    path = tmp_path / "vgg16.pth"
    torch.save(classifier.state_dict(), path)
    # paper=True leaves fc6 unpadded; undo its 100-pixel input padding and Caffe pooling to
    # look at the native 224×224 view, where pool5 is exactly fc6's 7×7 window.
    encoder = create_encoder("vgg16", weights=path, fully_conv=True, paper=True).eval()
    torch.testing.assert_close(encoder.fc6.weight, classifier.classifier[0].weight.view(4096, 512, 7, 7))
    encoder.features[0].padding = (1, 1)
    for module in encoder.features:
        if isinstance(module, torch.nn.MaxPool2d):
            module.ceil_mode = False
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = classifier.classifier[:5](torch.flatten(classifier.features(x), 1))
        torch.testing.assert_close(encoder(x)[-1].flatten(1), expected, atol=1e-4, rtol=1e-4)


def test_encoder_own_state_dict_file_loads_back(tmp_path: Path) -> None:
    encoder = create_encoder("mobilenet_v2")
    path = tmp_path / "encoder.pt"
    torch.save(encoder.state_dict(), path)
    loaded = create_encoder("mobilenet_v2", weights=path)
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)


def test_wrong_weights_file_names_the_mismatched_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save(tvm.mobilenet_v2(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="do not fit ResNetEncoder: missing"):
        create_encoder("resnet18", weights=path)


def test_missing_weights_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_encoder("resnet18", weights=tmp_path / "nope.pth")
    with pytest.raises(IsADirectoryError, match="is a folder; pass the state-dict file inside it"):
        create_encoder("resnet18", weights=tmp_path)


def test_offline_imagenet_request_says_how_to_pass_a_local_file(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as raised:
        create_encoder("resnet18", weights="imagenet")
    message = str(raised.value)
    assert "offline" in message and "encoder_weights='/path/to/resnet18-f37072fd.pth'" in message
    assert str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth") in message
    with pytest.raises(WeightsUnavailableError):
        pixelwise.create_model("unet", encoder="resnet18", weights="imagenet")


def test_imagenet_weights_come_through_torchvision_from_its_cache(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    """With the file in torch's hub cache (as after one online download), no network is needed."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    reference = tvm.resnet18(weights=None)
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    encoder = create_encoder("resnet18", weights="imagenet")
    torch.testing.assert_close(encoder.conv1.weight, reference.conv1.weight)


class _Payload:
    """Rebuilding it from a pickle would call ``print``: what a weights-only load must refuse."""

    def __reduce__(self) -> tuple:
        return print, ("this ran",)


def test_a_cached_torchvision_file_is_read_weights_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    """torchvision's own loader unpickles without ``weights_only``: a file planted in the hub cache
    would run code. pixelwise reads it as it reads every file, and refuses it."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    torch.save({"conv1.weight": _Payload()}, tmp_path / "checkpoints" / "resnet18-f37072fd.pth")
    with pytest.raises(UntrustedFileError, match="resnet18-f37072fd.pth.*it calls print"):
        create_encoder("resnet18", weights="imagenet")
    assert "this ran" not in capsys.readouterr().out


def test_a_download_is_checked_against_the_published_hash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    asked = []

    def corrupted(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        asked.append((url, dst, hash_prefix))
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "00")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", corrupted)
    with pytest.raises(WeightsUnavailableError, match="not the published file .*try again"):
        create_encoder("resnet18", weights="imagenet")
    url, dst, hash_prefix = asked[0]
    assert url.endswith("/resnet18-f37072fd.pth") and hash_prefix == "f37072fd"
    assert dst == str(tmp_path / "checkpoints" / "resnet18-f37072fd.pth")


timm = pytest.importorskip("timm")


def test_timm_model_as_encoder() -> None:
    encoder = create_encoder("timm:resnet18").eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == encoder.channels
    assert encoder.reductions == [2, 4, 8, 16, 32]
    dilated = create_encoder("timm:resnet18", output_stride=16)
    assert dilated.reductions[-1] == 16


def test_a_timm_encoder_loads_a_local_weights_file(tmp_path: Path) -> None:
    reference = timm.create_model("resnet18")  # the classifier, as timm's weight files hold it
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    encoder = create_encoder("timm:resnet18", weights=tmp_path / "resnet18.pth")
    torch.testing.assert_close(encoder.model.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(encoder.model.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_a_timm_weights_file_is_read_weights_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    planted = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": _Payload()}, planted)
    with pytest.raises(UntrustedFileError, match="resnet18.pth.*it calls print"):
        create_encoder("timm:resnet18", weights=planted)
    assert "this ran" not in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_encoder("timm:resnet18", weights=tmp_path / "absent.pth")


def test_timm_encoder_offline_error_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; fail its download the way an
    # offline machine does instead of waiting for real network retries.
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr("timm.models._hub.hf_hub_download", offline)
    with pytest.raises(WeightsUnavailableError, match="encoder_weights="):
        create_encoder("timm:resnet18", weights="imagenet")
