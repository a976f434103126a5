"""Training runs on tiny synthetic data: exact resume, atomic checkpoints, divergence, sampling."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pixelwise.config import load_config
from pixelwise.engine.checkpoint import load_checkpoint, save_checkpoint
from pixelwise.engine.sampling import ResumableBatchSampler
from pixelwise.engine.train import TrainingDiverged, learning_rate, train


def _tiny(tmp_path: Path, *overrides: str) -> object:
    return load_config(None, [
        "model.name=deeplabv3plus", "model.encoder=resnet18", "model.options={aux: true}",
        "data.options={size: [48, 48], length: 12}", "data.crop_size=[32, 32]", "data.batch_size=2",
        "data.workers=0", "train.iterations=6", "train.eval_every=3", "train.checkpoint_every=3",
        f"train.output_dir={tmp_path}", *overrides,
    ])


class _Interrupt(Exception):
    pass


def _stop_at(iteration: int):
    def on_step(step: int, loss: float) -> None:
        if step == iteration:
            raise _Interrupt
    return on_step


def test_interrupted_and_resumed_run_reaches_the_same_weights(tmp_path: Path) -> None:
    """Dropout, augmentation, data order and the schedule all continue exactly."""
    straight = train(_tiny(tmp_path / "straight"))
    with pytest.raises(_Interrupt):
        train(_tiny(tmp_path / "resumed"), on_step=_stop_at(4))  # killed after the checkpoint at 3
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["iteration"] == 3
    resumed = train(_tiny(tmp_path / "resumed"), resume=True)
    assert resumed.iterations == straight.iterations == 6
    expected = load_checkpoint(straight.run_dir / "last.pt")["model"]
    actual = load_checkpoint(resumed.run_dir / "last.pt")["model"]
    for key, value in expected.items():
        assert torch.equal(actual[key], value), f"{key} differs after resuming"


def test_run_folder_holds_what_prediction_needs(tmp_path: Path) -> None:
    result = train(_tiny(tmp_path, "train.iterations=3"))
    state = load_checkpoint(result.run_dir / "best.pt")
    assert state["model_spec"]["name"] == "deeplabv3plus"
    assert state["classes"]["names"][0] == "background"
    assert set(state["normalization"]) == {"mean", "std"}
    assert (result.run_dir / "config.yaml").is_file()
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # three steps and one evaluation
    assert 0.0 <= result.best_miou <= 1.0


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import pixelwise.engine.train as engine

    real = engine.loss_with_aux
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 5 else loss

    monkeypatch.setattr(engine, "loss_with_aux", poisoned)
    with pytest.raises(TrainingDiverged, match="lower optim.lr"):
        train(_tiny(tmp_path))
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 3


def test_checkpoint_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed in the middle of writing

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"model": {"w": torch.zeros(2)}}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "no temporary file left behind"


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="unreadable .* truncated"):
        load_checkpoint(path)


def test_batches_depend_only_on_seed_and_iteration() -> None:
    whole = ResumableBatchSampler(10, 4, seed=1, start=0, total=7)
    tail = ResumableBatchSampler(10, 4, seed=1, start=4, total=7)
    assert list(whole)[4:] == list(tail)
    epoch = [index for batch in list(whole)[:5] for index, _ in batch][:10]
    assert sorted(epoch) == list(range(10)), "each epoch is a permutation"
    ranks = [ResumableBatchSampler(10, 2, 1, 0, 3, rank=r, world_size=2) for r in (0, 1)]
    assert [a + b for a, b in zip(*ranks)] == list(ResumableBatchSampler(10, 4, 1, 0, 3))


def test_schedule_warms_up_then_decays() -> None:
    config = load_config(None, ["optim.lr=0.1", "schedule.warmup_iters=10", "schedule.name=poly"])
    assert learning_rate(0, 100, config) == pytest.approx(0.01)
    assert learning_rate(10, 100, config) == pytest.approx(0.1)
    assert learning_rate(99, 100, config) < 0.01
    cosine = load_config(None, ["optim.lr=0.1", "schedule.name=cosine", "schedule.min_lr=0.001"])
    assert learning_rate(50, 100, cosine) == pytest.approx(0.001 + 0.099 * 0.5)


def test_cli_trains_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pixelwise.cli import main

    overrides = ["model.encoder=resnet18", "data.options={size: [40, 40], length: 8}", "data.crop_size=[32, 32]",
                 "data.batch_size=2", "data.workers=0", "train.iterations=2", "train.eval_every=2",
                 f"train.output_dir={tmp_path}"]
    assert main(["train", *overrides]) == 0
    assert "best mIoU" in capsys.readouterr().out
    assert main(["train", "--resume", *overrides]) == 0  # already complete: resumes to the end at once
    assert main(["train", "optim.lrr=3"]) == 2
    assert "valid keys of optim" in capsys.readouterr().out
