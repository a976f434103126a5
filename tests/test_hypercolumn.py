"""HyperColumn: the hypercolumn as a concatenation of per-stage columns, stage subsets, the
registry defaults. (Logits at any input size with any upsampler, in train and eval mode, and
gradients everywhere are the registry-wide contract: tests/test_models.py.)"""
from __future__ import annotations

import pytest
import torch

from pixelwise import create_model, model_info

COLUMN = 8


@pytest.mark.parametrize(("stages", "column_reduction"), [(None, 2), ((2, 4), 8), ((1, -1), 4), ((4,), 32)])
def test_hypercolumn_concatenates_one_column_per_stage(stages: tuple[int, ...] | None, column_reduction: int) -> None:
    model = create_model("hypercolumn", num_classes=3, encoder="resnet18", column_channels=COLUMN,
                         stages=stages).eval()
    count = 5 if stages is None else len(stages)
    fed_to_classifier = []
    model.fuse.register_forward_hook(lambda module, inputs, output: fed_to_classifier.append(inputs[0]))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        logits = model(x)
        column = model.hypercolumn(x)
    assert logits.shape == (1, 3, 64, 96)
    assert model.column_reduction == column_reduction
    assert column.shape == (1, count * COLUMN, 64 // column_reduction, 96 // column_reduction)
    torch.testing.assert_close(fed_to_classifier[0], column)


def test_each_block_of_the_column_is_its_own_stage_upsampled() -> None:
    # Concatenation, not addition: every stage keeps its own channels in the hypercolumn.
    model = create_model("hypercolumn", num_classes=3, encoder="resnet18", column_channels=COLUMN,
                         stages=(1, 3)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.encoder(x)
        column = model.hypercolumn(x)
        for block, stage in enumerate((1, 3)):
            expected = model.upsamplers[block](model.projections[block](features[stage]))
            torch.testing.assert_close(column[:, block * COLUMN:(block + 1) * COLUMN], expected)


@pytest.mark.parametrize(("stages", "message"), [((), "at least one"), ((0, 5), "out of range"),
                                                  ((4, -1), "same feature twice")])
def test_invalid_stages_raise(stages: tuple[int, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        create_model("hypercolumn", encoder="resnet18", stages=stages)


def test_registry_defaults_to_vgg16() -> None:
    info = model_info("hypercolumn")
    assert info.family == "HyperColumn" and info.default_encoder == "vgg16"
    model = create_model("hypercolumn", num_classes=2, column_channels=4).eval()
    assert model.size_divisor == 32
    with torch.no_grad():
        assert model(torch.randn(1, 3, 21, 30)).shape == (1, 2, 21, 30)
