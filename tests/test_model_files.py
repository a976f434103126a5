"""Model files whose record lies or does not fit (issue 32, point 3): every file's record is
checked when it is opened, against its graph or weights, with one-line errors naming the file
and the field; the checksum covers the whole record; a TorchScript file is named for what it is.
The hostile files are made here, from the tiny trained checkpoint."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import onnx
import pytest
import torch
from PIL import Image

from pixelwise.cli import main
from pixelwise.data.classes import class_info
from pixelwise.io.checkpoint import load_checkpoint, save_checkpoint, save_safetensors
from pixelwise.inference.loading import load_model
from pixelwise.inference.loading import load_predictor
from pixelwise.inference.record import ModelFileError
from pixelwise.export import export_checkpoint
from pixelwise.inference.loading import CHECKSUM_KEY, metadata_digest, read_metadata
from pixelwise.io.safe_load import TorchScriptFileError


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model_files") / "model.onnx"
    export_checkpoint(tiny_checkpoint, out, parity=False)
    return out


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "scene.png"
    Image.new("RGB", (24, 20), (200, 30, 30)).save(path)
    return path


def _predict_fails(flag: str, model: Path, image: Path, capsys: pytest.CaptureFixture) -> str:
    """``pixelwise predict`` with ``model``: exit code 2, one error, no traceback; the message."""
    assert main(["predict", flag, str(model), str(image), "--out", str(image.parent / "out")]) == 2
    output = capsys.readouterr()
    assert "Traceback" not in output.out + output.err
    message = " ".join(output.out.split())
    assert message.startswith("error: ") and model.name in message, message
    assert not (image.parent / "out").exists() or not list((image.parent / "out").iterdir())
    return message


def _edited_onnx(source: Path, target: Path, checksum: str = "rewrite", **changes: Any) -> Path:
    """``source`` with pixelwise metadata ``changes``; its checksum rewritten to match (a file
    that lies consistently), kept (an edit) or dropped (an export from before the checksum)."""
    proto = onnx.load(str(source))
    props = {prop.key: prop.value for prop in proto.metadata_props}
    props.update({f"pixelwise.{key}": json.dumps(value) for key, value in changes.items()})
    if checksum == "drop":
        del props[CHECKSUM_KEY]
    if checksum == "rewrite":
        props[CHECKSUM_KEY] = metadata_digest(props)
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(target))
    return target


def _names(count: int) -> dict[str, Any]:
    return {"names": [f"class{i}" for i in range(count)]}


# ONNX: the record against the graph ------------------------------------------------------------

def test_onnx_class_names_must_match_the_graphs_output_channels(exported: Path, image: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    for count in (3, 10):
        lying = _edited_onnx(exported, tmp_path / f"names{count}.onnx", classes=_names(count))
        message = _predict_fails("--model", lying, image, capsys)
        assert f"classes lists {count} names but the graph outputs 6 channels" in message
        assert "export it again with pixelwise export" in message
        with pytest.raises(ModelFileError, match=f"names{count}.onnx': classes lists {count} names"):
            load_predictor(lying)
    spec = read_metadata(exported)["model_spec"]
    lying = _edited_onnx(exported, tmp_path / "spec.onnx", model_spec={**spec, "num_classes": 10**9})
    assert "model_spec.num_classes is 1000000000, not an integer from 1 to" in \
        _predict_fails("--model", lying, image, capsys)


def test_edited_onnx_metadata_is_called_edited_and_old_exports_still_load(exported: Path, image: Path,
                                                                         tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    classes = read_metadata(exported)["classes"]
    renamed = {**classes, "names": ["sky", *classes["names"][1:]]}
    edited = _edited_onnx(exported, tmp_path / "edited.onnx", checksum="keep", classes=renamed)
    assert "is damaged or was edited" in _predict_fails("--model", edited, image, capsys)
    older = _edited_onnx(exported, tmp_path / "older.onnx", checksum="drop")
    assert read_metadata(older)["classes"] == classes  # exported before the checksum: loads


def test_onnx_spec_weight_sources_are_dropped(exported: Path, tmp_path: Path) -> None:
    spec = read_metadata(exported)["model_spec"]
    options = {**spec["options"], "encoder_weights": "imagenet", "weights": "/etc/passwd"}
    edited = _edited_onnx(exported, tmp_path / "weights.onnx", model_spec={**spec, "options": options})
    assert read_metadata(edited)["model_spec"]["options"] == spec["options"]


# Every field of the record, in a checkpoint and in an ONNX file ---------------------------------

HOSTILE_RECORDS = [
    ("normalization", {"mean": [100.0, 100.0, 100.0], "std": [0.2, 0.2, 0.2]}, r"normalization\.mean .*outside"),
    ("normalization", {"mean": [0.5, 0.5, 0.5], "std": [1e-6, 1e-6, 1e-6]}, r"normalization\.std .*outside"),
    ("normalization", {"mean": [0.5], "std": [0.2]}, r"normalization\.mean is \[0\.5\], not three finite"),
    ("normalization", {"mean": [0.5, float("nan"), 0.5], "std": [0.2] * 3}, "normalization.mean .*not three finite"),
    ("normalization", [0.5, 0.2], "normalization is a list"),
    ("classes", {"names": [f"c{i}" for i in range(6)], "palette": [[999, -5, 3]] * 6},
     r"classes\.palette\[0\] is \[999, -5, 3\], not three integers 0–255"),
    ("classes", {"names": [f"c{i}" for i in range(6)], "palette": [[1, 2, 3]] * 5},
     "classes: 6 class names but 5 palette"),
    ("classes", {"names": [1, 2, 3, 4, 5, 6]}, r"classes\.names .*not a list of class names"),
    ("inference", {"scales": [1e6]}, r"inference\.scales is \[1000000\.0\], not 1 to 8 test-time scales"),
    ("inference", {"scales": "big"}, r"inference\.scales"),
    ("inference", {"window": [10**6, 10**6]}, r"inference\.window .*not a size of 1 to 8192"),
    ("inference", {"batch_size": 10**6}, r"inference\.batch_size"),
    ("inference", {"mode": "everything"}, r"inference: mode must be"),
    ("inference", {"precision": "fp64"}, r"inference: precision must be"),
]


@pytest.mark.parametrize("field, value, message", HOSTILE_RECORDS, ids=lambda case: str(case)[:30])
def test_a_checkpoint_whose_record_lies_is_refused_in_one_line(tiny_checkpoint: Path, tmp_path: Path, image: Path,
                                                               capsys: pytest.CaptureFixture, field: str,
                                                               value: Any, message: str) -> None:
    state = load_checkpoint(tiny_checkpoint)
    state[field] = value
    save_checkpoint(state, tmp_path / "lying.pt")  # its checksum matches: it lies consistently
    with pytest.raises(ModelFileError, match=rf"^'.*lying\.pt': {message}.*; use the file as pixelwise wrote it"):
        load_model(tmp_path / "lying.pt")
    _predict_fails("--checkpoint", tmp_path / "lying.pt", image, capsys)


@pytest.mark.parametrize("field, value, message", HOSTILE_RECORDS[:1] + HOSTILE_RECORDS[5:6] + HOSTILE_RECORDS[8:9],
                         ids=["mean", "palette", "scales"])
def test_an_onnx_file_whose_record_lies_is_refused(exported: Path, tmp_path: Path, field: str, value: Any,
                                                   message: str) -> None:
    with pytest.raises(ModelFileError, match=rf"lying\.onnx': {message}"):
        load_predictor(_edited_onnx(exported, tmp_path / "lying.onnx", **{field: value}))


SPEC_CASES = [
    (lambda spec: [spec["name"], spec["num_classes"]], r"model_spec is a list"),
    (lambda spec: {**spec, "num_classes": "6"}, r"model_spec\.num_classes is '6', not an integer"),
    (lambda spec: {**spec, "num_classes": 10**9}, r"model_spec\.num_classes is 1000000000"),
    (lambda spec: {**spec, "num_classes": 10}, r"classes lists 6 names but model_spec\.num_classes is 10"),
    (lambda spec: {**spec, "name": "no_such_model"}, r"model_spec\.name 'no_such_model' is not a registered model"),
    (lambda spec: {**spec, "options": {**spec["options"], "colour": "blue"}}, r"model_spec does not build a model"),
    (lambda spec: {**spec, "options": "fast"}, r"model_spec\.options is a str"),
]


@pytest.mark.parametrize("edit, message", SPEC_CASES, ids=lambda case: str(case)[:20])
def test_a_spec_of_the_wrong_type_or_size_is_refused(tiny_checkpoint: Path, tmp_path: Path, edit: Any,
                                                     message: str) -> None:
    state = load_checkpoint(tiny_checkpoint)
    state["model_spec"] = edit(state["model_spec"])
    save_checkpoint(state, tmp_path / "spec.pt")
    with pytest.raises(ModelFileError, match=rf"spec\.pt': {message}"):
        load_model(tmp_path / "spec.pt")


def test_palette_values_outside_0_255_are_refused_where_classes_are_made() -> None:
    with pytest.raises(ValueError, match=r"palette colour 0 is \[999, -5, 3\], not three values 0–255"):
        class_info(["road"], [[999, -5, 3]])


# Weights: the spec's weight sources, and safetensors that do not fit ---------------------------

def test_loading_a_trained_model_never_reaches_for_other_weights(tiny_checkpoint: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("loading a trained model reached for the network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr("pixelwise.encoders.weights.download_torchvision_weights", no_network)
    state = load_checkpoint(tiny_checkpoint)
    state["model_spec"]["options"].update(encoder_weights="imagenet", weights=str(tmp_path / "missing.pth"))
    save_checkpoint(state, tmp_path / "pretrained.pt")
    loaded, original = load_model(tmp_path / "pretrained.pt"), load_model(tiny_checkpoint)
    batch = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        assert torch.equal(loaded.model(batch), original.model(batch))


def _safetensors(tiny_checkpoint: Path, path: Path, edit_tensors: Any = None, **metadata: Any) -> Path:
    """The tiny model as safetensors written by hand (no checksum), tensors and metadata edited."""
    from safetensors.torch import save_file

    state = load_checkpoint(tiny_checkpoint)
    tensors = {key: value.clone().contiguous() for key, value in state["model"].items()}
    if edit_tensors is not None:
        edit_tensors(tensors)
    record = {key: json.dumps(state[key]) for key in ("model_spec", "classes", "normalization")}
    record.update({key: json.dumps(value) for key, value in metadata.items()})
    save_file(tensors, str(path), metadata={"format": "pixelwise", **record})
    return path


def test_safetensors_that_do_not_fit_the_spec_are_one_line_errors(tiny_checkpoint: Path, tmp_path: Path,
                                                                  image: Path, capsys: pytest.CaptureFixture) -> None:
    first = next(iter(load_checkpoint(tiny_checkpoint)["model"]))

    def reshape(tensors: dict) -> None:
        tensors[first] = torch.zeros(7, 7)

    cases = [
        (lambda tensors: tensors.pop(first), {}, rf"weights do not fit .* \(missing: {first}\)"),
        (lambda tensors: tensors.update(extra=torch.ones(2)), {}, r"\(unexpected: extra\)"),
        (reshape, {}, rf"\(wrong shape: {first} \(7, 7\) \(the model's: "),
        (None, {"model_spec": ["unet", 6]}, "model_spec is a list"),
        (None, {"model_spec": {"name": "unet", "num_classes": "six", "options": {}}}, "num_classes is 'six'"),
    ]
    for index, (edit, metadata, message) in enumerate(cases):
        path = _safetensors(tiny_checkpoint, tmp_path / f"bad{index}.safetensors", edit, **metadata)
        with pytest.raises(ModelFileError, match=rf"bad{index}\.safetensors': .*{message}"):
            load_model(path)
    assert "weights do not fit" in _predict_fails("--checkpoint", tmp_path / "bad0.safetensors", image, capsys)


# The checksum over the whole record ----------------------------------------------------------------

def test_an_edited_checkpoint_record_is_called_edited(tiny_checkpoint: Path, tmp_path: Path, image: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    state = torch.load(tiny_checkpoint, weights_only=True)
    assert state["record_checksum"] and state["checksum"]
    for field, value in (("classes", {**state["classes"], "names": ["sky", *state["classes"]["names"][1:]]}),
                         ("normalization", {"mean": [0.0] * 3, "std": [1.0] * 3})):
        torch.save({**state, field: value}, tmp_path / "edited.pt")
        with pytest.raises(ValueError, match=r"edited\.pt' is damaged or was edited: its record"):
            load_checkpoint(tmp_path / "edited.pt")
    assert "is damaged or was edited" in _predict_fails("--checkpoint", tmp_path / "edited.pt", image, capsys)
    older = {key: value for key, value in state.items() if key != "record_checksum"}
    torch.save({**older, "classes": {**state["classes"], "names": ["sky", *state["classes"]["names"][1:]]}},
               tmp_path / "older.pt")
    assert load_model(tmp_path / "older.pt").classes.names[0] == "sky"  # written before the record checksum


def test_edited_safetensors_metadata_is_called_edited(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from pixelwise.io.safe_load import read_safetensors

    save_safetensors(load_checkpoint(tiny_checkpoint), tmp_path / "model.safetensors")
    tensors, metadata = read_safetensors(tmp_path / "model.safetensors")
    assert metadata["pixelwise.checksum"]
    load_model(tmp_path / "model.safetensors")
    classes = json.loads(metadata["pixelwise.classes"])
    metadata["pixelwise.classes"] = json.dumps({**classes, "names": ["sky", *classes["names"][1:]]})
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=metadata)
    with pytest.raises(ValueError, match=r"edited\.safetensors' is damaged or was edited"):
        load_checkpoint(tmp_path / "edited.safetensors")


# TorchScript passed as a checkpoint ----------------------------------------------------------------

def test_a_torchscript_file_is_named_for_what_it_is(tmp_path: Path, image: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    traced = torch.jit.trace(torch.nn.Conv2d(3, 2, 1).eval(), torch.randn(1, 3, 8, 8))
    torch.jit.save(traced, str(tmp_path / "model.ts.pt"))
    with pytest.raises(TorchScriptFileError, match=r"model\.ts\.pt' is a TorchScript program .*torch\.jit\.load"):
        load_checkpoint(tmp_path / "model.ts.pt")
    message = _predict_fails("--checkpoint", tmp_path / "model.ts.pt", image, capsys)
    assert "TorchScript" in message and "--model model.onnx" in message and "weights_only" not in message
    assert main(["export", "--checkpoint", str(tmp_path / "model.ts.pt"), "--out", str(tmp_path / "m.onnx")]) == 2
    message = capsys.readouterr().out
    assert "TorchScript" in message and "weights_only" not in message
