"""Training runs on tiny synthetic data: exact resume, atomic checkpoints, divergence, sampling."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe

from pixelwise.config import load_config
from pixelwise.training.budget import MEASURED_STEPS, WARMUP_STEPS, iterations_for_budget
from pixelwise.io.checkpoint import load_checkpoint, save_checkpoint
from pixelwise.inference.loading import load_model
from pixelwise.training.run_log import plot_curves, read_metrics
from pixelwise.training.sampling import ResumableBatchSampler, SeededSamples
from pixelwise.training.loop import TrainingDiverged, learning_rate, train


def _tiny(tmp_path: Path, *overrides: str) -> object:
    return load_config(None, tiny_recipe(
        tmp_path, "model.name=deeplabv3plus", "model.encoder=resnet18", "model.options={aux: true}",
        "data.options={size: [48, 48], length: 12}", "train.iterations=6", "train.eval_every=3",
        "train.checkpoint_every=3", *overrides,
    ))


def _small(tmp_path: Path, *overrides: str) -> object:
    """A much faster recipe: the paper's U-Net at 4 channels and depth 2, no batch norm."""
    return load_config(None, tiny_recipe(tmp_path, "train.iterations=4", "train.checkpoint_every=2", *overrides))


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


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
    # Steps 4 ran twice (before the interruption and after resuming) but are recorded once.
    lines = [json.loads(line) for line in (resumed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]
    straight_losses = [(r["iteration"], r["loss"]) for r in read_metrics(straight.run_dir / "metrics.jsonl")[0]]
    assert [(r["iteration"], r["loss"]) for r in lines if "loss" in r] == straight_losses
    assert [step for step, _ in _scalars(resumed.run_dir, "train/loss")] == [1, 2, 3, 4, 5, 6]


def test_run_folder_holds_what_prediction_needs(tmp_path: Path) -> None:
    result = train(_tiny(tmp_path, "train.iterations=3"))
    state = load_checkpoint(result.run_dir / "best.pt")
    assert state["model_spec"]["name"] == "deeplabv3plus"
    assert state["classes"]["names"][0] == "background"
    assert set(state["normalization"]) == {"mean", "std"}
    assert (result.run_dir / "config.yaml").is_file()
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4  # three steps and one evaluation
    assert 0.0 <= result.best <= 1.0 and result.best_metric == "mean_iou"


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import pixelwise.training.loop as engine

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


def test_a_sample_is_drawn_under_its_own_seed_and_leaves_the_callers_state_alone() -> None:
    class Draws(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, index: int) -> torch.Tensor:
            return torch.rand(4) + index

    samples = SeededSamples(Draws())
    torch.manual_seed(5)
    expected_next = torch.rand(2)
    torch.manual_seed(5)
    first, again = samples[(1, 123)], samples[(1, 123)]
    assert torch.equal(first, again) and not torch.equal(first, samples[(1, 124)])
    torch.manual_seed(123)
    assert torch.equal(first, torch.rand(4) + 1), "the seed is torch.manual_seed's on the CPU generator"
    torch.manual_seed(5)
    samples[(2, 9)]
    assert torch.equal(torch.rand(2), expected_next)


def test_schedule_warms_up_then_decays() -> None:
    config = load_config(None, ["optim.lr=0.1", "schedule.warmup_iters=10", "schedule.name=poly"])
    assert learning_rate(0, 100, config) == pytest.approx(0.01)
    assert learning_rate(10, 100, config) == pytest.approx(0.1)
    assert learning_rate(99, 100, config) < 0.01
    cosine = load_config(None, ["optim.lr=0.1", "schedule.name=cosine", "schedule.min_lr=0.001"])
    assert learning_rate(50, 100, cosine) == pytest.approx(0.001 + 0.099 * 0.5)


def test_cli_trains_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pixelwise.cli import main

    overrides = tiny_recipe(tmp_path, "model.encoder=resnet18", "model.options={}",
                            "data.options={size: [40, 40], length: 8}")
    assert main(["train", *overrides]) == 0
    assert "best mIoU" in capsys.readouterr().out
    assert main(["train", "--resume", *overrides]) == 0  # already complete: resumes to the end at once
    assert main(["train", "optim.lrr=3"]) == 2
    assert "valid keys of optim" in capsys.readouterr().out


def test_run_writes_tensorboard_events_and_plots(tmp_path: Path) -> None:
    result = train(_small(tmp_path))
    steps, evaluations = read_metrics(result.run_dir / "metrics.jsonl")
    losses = _scalars(result.run_dir, "train/loss")
    assert [step for step, _ in losses] == [1, 2, 3, 4]
    assert [value for _, value in losses] == pytest.approx([s["loss"] for s in steps], rel=1e-6)
    assert [step for step, _ in _scalars(result.run_dir, "train/lr")] == [1, 2, 3, 4]
    miou = _scalars(result.run_dir, "val/mIoU")
    assert miou == [(2, pytest.approx(evaluations[0]["eval"]["mean_iou"])),
                    (4, pytest.approx(evaluations[1]["eval"]["mean_iou"]))]
    assert len(_scalars(result.run_dir, "val/pixel_accuracy")) == 2
    assert [p.name for p in result.plots] == ["loss.png", "miou.png"]
    _assert_png(result.run_dir / "loss.png")
    _assert_png(result.run_dir / "miou.png")


def _assert_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        image.verify()


def test_plot_curves_reads_the_whole_history_once(tmp_path: Path) -> None:
    records = [{"iteration": 1, "loss": 2.0, "lr": 0.1, "step_s": 0.1},
               {"iteration": 2, "loss": 9.0, "lr": 0.1, "step_s": 0.1},  # replaced by the resumed run's line
               {"iteration": 2, "time_budget": {"total_iterations": 3}},
               {"iteration": 2, "loss": 1.5, "lr": 0.1, "step_s": 0.1},
               {"iteration": 2, "eval": {"mean_iou": 0.25}}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    steps, evaluations = read_metrics(path)
    assert [(s["iteration"], s["loss"]) for s in steps] == [(1, 2.0), (2, 1.5)]
    assert [e["eval"]["mean_iou"] for e in evaluations] == [0.25]
    written = plot_curves(path, tmp_path / "plots")
    assert [p.name for p in written] == ["loss.png", "miou.png"]
    for png in written:
        _assert_png(png)
    path.write_text(json.dumps(records[0]) + "\n")
    assert [p.name for p in plot_curves(path, tmp_path / "only_loss")] == ["loss.png"]


def test_iterations_for_budget_pays_for_steps_and_evaluations() -> None:
    # 100 s budget, 10 s spent, 8 s kept for the final evaluation: 82 s at 1 s per step plus
    # an 8 s evaluation every 4 steps (2 s per step) buys 27 more steps.
    assert iterations_for_budget(100.0, 10.0, 13, step_s=1.0, eval_s=8.0, eval_every=4) == 13 + 27
    assert iterations_for_budget(100.0, 120.0, 13, step_s=1.0, eval_s=8.0, eval_every=4) == 13, "spent: stop"
    assert iterations_for_budget(60.0, 0.0, 0, step_s=0.5, eval_s=0.0, eval_every=100) == 120


def test_time_budget_sets_the_total_and_resume_keeps_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pixelwise.cli import main

    # train.iterations stays at its default: the time budget sets the length.
    overrides = tiny_recipe(tmp_path, "train.iterations=1000", "train.eval_every=1000", "train.checkpoint_every=1000",
                            "optim.lr=0.01")
    assert main(["train", "--time-budget", "0.05", *overrides]) == 0
    assert "time budget 0.05 min:" in capsys.readouterr().out
    state = load_checkpoint(tmp_path / "last.pt")
    total = state["total_iterations"]
    assert state["iteration"] == total == state["time_budget"]["total_iterations"]
    assert total >= WARMUP_STEPS + MEASURED_STEPS
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    (plan,) = [r for r in lines if "time_budget" in r]
    assert plan["iteration"] == WARMUP_STEPS + MEASURED_STEPS
    rates = [r["lr"] for r in lines if "lr" in r]
    assert len(rates) == total and rates[:plan["iteration"]] == [0.01] * plan["iteration"], "held while measuring"
    if total > plan["iteration"] + 1:
        assert rates[-1] < 0.01, "then the schedule decays over the chosen total"
    # Another budget on resume is refused (config.yaml says what ran); the same budget keeps the total.
    assert main(["train", "--resume", "--time-budget", "10", *overrides]) == 2
    assert "train.time_budget_min: 0.05 -> 10.0" in capsys.readouterr().out
    assert main(["train", "--resume", "--time-budget", "0.05", *overrides]) == 0
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == total


def test_time_budget_is_refitted_when_the_machine_slows_down(tmp_path: Path) -> None:
    import time

    config = load_config(None, tiny_recipe(tmp_path, "train.iterations=1000", "train.eval_every=5",
                                           "train.checkpoint_every=1000", "train.time_budget_min=0.1"))
    measured = WARMUP_STEPS + MEASURED_STEPS

    def slow_after_planning(iteration: int, loss: float) -> None:
        if iteration > measured:
            time.sleep(0.05)  # several times a tiny step: the first plan no longer fits

    result = train(config, on_step=slow_after_planning)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    (plan,) = [r["time_budget"] for r in lines if "time_budget" in r]
    revisions = [r["time_budget_revised"] for r in lines if "time_budget_revised" in r]
    assert revisions and revisions[-1]["total_iterations"] < plan["total_iterations"]
    assert result.iterations == revisions[-1]["total_iterations"]
    assert load_checkpoint(tmp_path / "last.pt")["total_iterations"] == result.iterations


def test_median_frequency_class_weights_are_counted_on_the_training_split(tmp_path: Path) -> None:
    from pixelwise.data import create_dataset
    from pixelwise.training.loop import class_weights
    from pixelwise.losses import class_pixel_counts, median_frequency_weights

    config = _tiny(tmp_path, "class_weights=median_frequency")
    dataset = create_dataset("synthetic", split="train", size=[48, 48], length=12)
    expected = median_frequency_weights(*class_pixel_counts(dataset, dataset.classes.num_classes))
    weights = class_weights(config, dataset.classes)
    assert torch.equal(weights, expected)
    assert weights.min() < 1 < weights.max()  # background is frequent, shapes are rare


def test_class_weights_must_match_the_classes(tmp_path: Path) -> None:
    from pixelwise.data import create_dataset
    from pixelwise.training.loop import class_weights

    classes = create_dataset("synthetic", split="train", length=2).classes
    with pytest.raises(ValueError, match="3 numbers for 6 classes"):
        class_weights(_tiny(tmp_path, "class_weights=[1, 2, 3]"), classes)
    with pytest.raises(ValueError, match="median_frequency"):
        class_weights(_tiny(tmp_path, "class_weights=median"), classes)
    run = train(_tiny(tmp_path, "class_weights=inverse_sqrt_frequency", "train.iterations=2"))
    assert run.iterations == 2


def test_input_scale_and_norm_from_the_recipe_travel_with_the_checkpoint(tmp_path: Path) -> None:
    train(_small(tmp_path, "model.options={base_channels: 4, depth: 2, norm: null, input_scale: 0.5,"
                 " input_norm: instance}", "train.iterations=2"))
    loaded = load_model(tmp_path / "last.pt")
    assert loaded.model.input_scale == 0.5 and loaded.model.input_norm == "instance"
    assert loaded.model(torch.randn(1, 3, 30, 42)).shape == (1, loaded.model.num_classes, 30, 42)


def test_bf16_on_a_cpu_without_bf16_units_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    from pixelwise.runtimes import torch_runtime

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch_runtime, "cpu_has_bf16", lambda: False)
    assert "train.amp: null" in torch_runtime.slow_precision_warning("bf16", cpu)
    assert torch_runtime.slow_precision_warning(None, cpu) is None
    monkeypatch.setattr(torch_runtime, "cpu_has_bf16", lambda: True)
    assert torch_runtime.slow_precision_warning("bf16", cpu) is None


def test_auto_precision_follows_the_hardware(monkeypatch: pytest.MonkeyPatch) -> None:
    from pixelwise.runtimes import torch_runtime

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(torch_runtime, "cpu_has_bf16", lambda: True)
    assert torch_runtime.choose_precision("auto", cpu) == ("bf16", "this CPU computes bf16 natively (AVX512-BF16 or AMX)")
    assert torch_runtime.choose_precision(None, cpu)[0] is None and torch_runtime.choose_precision("bf16", cpu)[0] == "bf16"
    monkeypatch.setattr(torch_runtime, "cpu_has_bf16", lambda: False)
    chosen, reason = torch_runtime.choose_precision("auto", cpu)
    assert chosen is None and "emulated" in reason
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert torch_runtime.choose_precision("auto", gpu)[0] == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert torch_runtime.choose_precision("auto", gpu)[0] is None


@pytest.mark.parametrize("bf16_units", [True, False])
def test_a_run_at_auto_precision_records_what_it_chose_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   bf16_units: bool) -> None:
    from pixelwise.runtimes import torch_runtime

    monkeypatch.setattr(torch_runtime, "cpu_has_bf16", lambda: bf16_units)
    chosen = "bf16" if bf16_units else None
    with pytest.raises(_Interrupt):
        train(_small(tmp_path, "train.amp=auto"), on_step=_stop_at(3))
    assert load_config(tmp_path / "config.yaml").train.amp == chosen  # what ran, not "auto"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    precision = next(record["precision"] for record in records if "precision" in record)
    assert precision["requested"] == "auto" and precision["chosen"] == (chosen or "fp32") and precision["reason"]
    result = train(_small(tmp_path, "train.amp=auto"), resume=True)
    assert result.iterations == 4
    assert load_checkpoint(tmp_path / "last.pt")["inference"]["precision"] == (chosen or "fp32")


def test_a_run_started_before_alignment_resumes_with_its_own_geometry(tmp_path: Path) -> None:
    """A checkpoint whose model spec has no ``aligned`` (written before decoders were aligned)
    resumes with the half-pixel model its weights belong to, and config.yaml says so."""
    overrides = ("model.name=unet", "model.options={decoder_channels: [8, 8, 8, 8, 8]}", "model.upsample=transposed",
                 "train.iterations=4", "train.checkpoint_every=2", "train.eval_every=2")
    with pytest.raises(_Interrupt):
        train(_tiny(tmp_path, *overrides, "model.options={decoder_channels: [8, 8, 8, 8, 8], aligned: false}"),
              on_step=_stop_at(3))
    last = tmp_path / "last.pt"
    state = load_checkpoint(last)
    del state["model_spec"]["options"]["aligned"]  # as an earlier version wrote it
    state["config"]["model"]["options"].pop("aligned")
    save_checkpoint(state, last)
    (tmp_path / "config.yaml").write_text((tmp_path / "config.yaml").read_text().replace("aligned: false", ""))
    result = train(_tiny(tmp_path, *overrides), resume=True)
    assert result.iterations == 4
    assert "aligned: false" in (tmp_path / "config.yaml").read_text()
    assert load_checkpoint(tmp_path / "last.pt")["model_spec"]["options"]["aligned"] is False
