"""data.cutmix: a box of another training sample pasted into image and mask, against torchvision's
CutMix, seeded as every augmentation is, in a run and resumed."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe
from torch.utils.data import Dataset
from torchvision.transforms import v2
from test_train import _Interrupt, _stop_at

from pixelwise.cli import main
from pixelwise.config import ConfigError, load_config
from pixelwise.data import create_dataset
from pixelwise.data.transforms import CutMix, cutmix_box, train_transform
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.training.sampling import SeededSamples
from pixelwise.training.loop import train

# On tiny_recipe's: 40×40 scenes, six steps, and CutMix on most samples.
RUN = ("data.options={size: [40, 40], length: 8}", "optim.lr=0.05", "train.iterations=6", "train.eval_every=3",
       "train.checkpoint_every=3", "data.cutmix=0.7")


class _Flat(Dataset):
    """Sample ``i``: an image and a mask filled with ``i``, and how often each was read."""

    def __init__(self, length: int, size: tuple[int, int] = (20, 30)) -> None:
        self.length, self.size, self.reads = length, size, [0] * length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads[index] += 1
        return torch.full((3, *self.size), float(index)), torch.full(self.size, index, dtype=torch.int64)


@pytest.mark.parametrize("size", [(32, 32), (24, 40), (7, 5)])
def test_the_box_is_drawn_as_torchvisions_cutmix_draws_it(size: tuple[int, int]) -> None:
    first, second = torch.rand(2, 3, *size).unbind(0)
    for seed in range(20):
        torch.manual_seed(seed)
        peer, _ = v2.CutMix(num_classes=2)(torch.stack([first, second]), torch.tensor([0, 1]))
        torch.manual_seed(seed)
        x1, y1, x2, y2 = cutmix_box(*size)
        expected = first.clone()
        expected[:, y1:y2, x1:x2] = second[:, y1:y2, x1:x2]  # v2.CutMix pastes the batch rolled by one
        assert torch.equal(peer[0], expected), seed


def test_a_mixed_sample_keeps_each_pixels_own_label() -> None:
    data = _Flat(6)
    mixed, shares = 0, []
    for seed in range(200):
        torch.manual_seed(seed)
        image, mask = CutMix(data, 0.5)[2]
        values = set(mask.unique().tolist())
        assert torch.equal(image, mask.to(image.dtype).expand_as(image)), seed  # image and mask cut alike
        if values != {2}:
            mixed += 1
            (partner,) = values - {2}
            box = mask == partner
            rows, cols = box.any(1).nonzero(), box.any(0).nonzero()
            assert box.sum() == len(rows) * len(cols)  # one axis-aligned box
            shares.append(box.float().mean().item())
    assert 70 <= mixed <= 100  # half the samples drawn for a mix, a few of whom paste an empty box or themselves
    assert 0.2 < sum(shares) / len(shares) < 0.5  # 1 - λ, uniform, less what clipping cuts off


def test_no_mix_reads_nothing_else_and_a_size_mismatch_says_what_to_set() -> None:
    data = _Flat(4)
    image, mask = CutMix(data, 0.0)[1]
    assert data.reads == [0, 1, 0, 0] and torch.equal(mask, torch.ones(20, 30, dtype=torch.int64))

    class _Uneven(_Flat):
        def __getitem__(self, index):
            self.size = (20, 30) if index == 0 else (20, 31)
            return super().__getitem__(index)

    torch.manual_seed(0)
    with pytest.raises(ValueError, match="CutMix needs samples of one size.*data.crop_size"):
        for _ in range(20):
            CutMix(_Uneven(3), 1.0)[0]
    with pytest.raises(ValueError, match=r"probability must be in \[0, 1\]"):
        CutMix(data, 1.5)


def test_a_seeded_sample_and_its_partner_are_a_function_of_the_seed() -> None:
    augment = train_transform((24, 24), (0.75, 1.5))
    samples = SeededSamples(CutMix(create_dataset("synthetic", size=[32, 32], length=5, transform=augment), 1.0))
    for key in [(0, 11), (3, 12), (4, 13)]:
        first, again = samples[key], samples[key]
        assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(samples[(0, 11)][1], samples[(0, 14)][1])


def test_a_run_with_cutmix_trains_on_the_mixes_and_resumes_exactly(tmp_path: Path) -> None:
    straight = train(load_config(None, tiny_recipe(tmp_path / "straight", *RUN)))
    plain = train(load_config(None, tiny_recipe(tmp_path / "plain", *RUN, "data.cutmix=0")))
    last = load_checkpoint(straight.run_dir / "last.pt")["model"]
    assert any(not torch.equal(value, load_checkpoint(plain.run_dir / "last.pt")["model"][name])
               for name, value in last.items())

    resumed_dir = tmp_path / "resumed"
    with pytest.raises(_Interrupt):
        train(load_config(None, tiny_recipe(resumed_dir, *RUN, "data.workers=2")), on_step=_stop_at(4))
    train(load_config(None, tiny_recipe(resumed_dir, *RUN, "data.workers=2")), resume=True)
    resumed = load_checkpoint(resumed_dir / "last.pt")["model"]
    for name, value in last.items():
        assert torch.equal(resumed[name], value), f"{name} differs after resuming with other workers"


def test_the_cli_trains_with_cutmix_and_refuses_a_probability_that_cannot_work(tmp_path: Path) -> None:
    assert main(["train", *tiny_recipe(tmp_path, *RUN, "train.iterations=2", "train.eval_every=2")]) == 0
    assert load_checkpoint(tmp_path / "last.pt")["config"]["data"]["cutmix"] == 0.7
    for probability in ("1.5", "-0.1"):
        with pytest.raises(ConfigError, match=r"data.cutmix = .* must be a probability in \[0, 1\]"):
            load_config(None, [f"data.cutmix={probability}"])
