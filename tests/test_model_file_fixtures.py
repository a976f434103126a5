"""Model files written by an earlier pixelwise keep opening, and predict what they predicted
then. The files under ``fixtures/model_files`` were written once by ``make_fixtures.py`` and are
never regenerated here; ``expected.npz`` holds the logits each gave for ``image.png`` when it
was written (``model_folder``, written later from ``checkpoint.pt`` by ``pixelwise export
--format folder``, holds the checkpoint's weights, so it must give the checkpoint's logits)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelwise.inference.loading import load_predictor
from pixelwise.inference.logits import normalize_image, predict_logits
from pixelwise.io.safe_load import TorchScriptFileError

FIXTURES = Path(__file__).parent / "fixtures" / "model_files"
EXPECTED = np.load(FIXTURES / "expected.npz")
PIXELS = np.asarray(Image.open(FIXTURES / "image.png").convert("RGB"))


def _logits(path: Path) -> np.ndarray:
    loaded = load_predictor(path, precision=None if path.suffix == ".onnx" else "fp32")
    return predict_logits(loaded.model, normalize_image(PIXELS, loaded.normalization)[None])[0].numpy()


@pytest.mark.parametrize("name", ["checkpoint.pt", "model.safetensors", "model.onnx", "model_folder"])
def test_an_old_model_file_predicts_what_it_did_when_written(name: str) -> None:
    expected = EXPECTED[name.replace(".", "_") if "." in name else "checkpoint_pt"]  # a folder holds its weights
    logits = _logits(FIXTURES / name)
    assert logits.shape == expected.shape == (6, 20, 24)
    np.testing.assert_allclose(logits, expected, atol=1e-4 * float(np.abs(expected).max()))
    assert (logits.argmax(0) == expected.argmax(0)).mean() > 0.99


def test_an_old_torchscript_export_is_still_named_for_what_it_is() -> None:
    with pytest.raises(TorchScriptFileError, match="TorchScript program"):
        load_predictor(FIXTURES / "model.torchscript")
