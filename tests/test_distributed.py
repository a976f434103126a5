"""Distributed data-parallel training under torchrun (two CPU processes, Gloo) and its helpers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_recipe
from torch import nn

from pixelwise.config import load_config
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.training.distributed import DistributedContext, convert_sync_batchnorm, distributed_session, unwrap
from pixelwise.training.loop import build_datasets, build_model, evaluate, train

# The paper's U-Net without batch norm: per-process batch norm would make N processes at batch b
# differ from one process at batch N·b; with none, the two are the same computation. The moving
# average of the weights (train.ema) must follow the same way. On tiny_recipe's; each run names
# its own batch size.
RECIPE = ("model.options={base_channels: 4, depth: 2, norm: null}", "data.options={size: 32, length: 16}",
          "data.scale_range=[1.0, 1.0]", "optim.name=sgd", "optim.lr=0.1", "train.iterations=4",
          "train.checkpoint_every=2", "train.ema=0.5", "data.cutmix=0.5")

# Stops a run after step 3, as a crash would, on every process (torchrun then reports failure).
INTERRUPTED = textwrap.dedent("""
    import sys
    from pixelwise.config import load_config
    from pixelwise.training.loop import train

    def stop(iteration, loss):
        if iteration == 3:
            raise SystemExit(3)

    train(load_config(None, sys.argv[1:]), on_step=stop)
""")


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    # --standalone: a rendezvous on a free local port, so parallel test runs never collide.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)


@pytest.mark.slow
def test_two_processes_train_like_one_at_double_batch_and_resume(tmp_path: Path) -> None:
    """2 processes × batch 2 = 1 process × batch 4 (same samples, averaged gradients), through an
    interruption and a resume; only rank 0 writes, and the checkpoint loads into a plain model."""
    reference = train(load_config(None, tiny_recipe(tmp_path / "one", *RECIPE, "data.batch_size=4")))
    run_dir = tmp_path / "two"
    overrides = tiny_recipe(run_dir, *RECIPE, "data.batch_size=2")
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    interrupted = _torchrun(str(script), *overrides)
    assert interrupted.returncode != 0
    assert load_checkpoint(run_dir / "last.pt")["iteration"] == 2

    resumed = _torchrun("-m", "pixelwise.cli", "train", "--resume", *overrides)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.stdout.count("best mIoU") == 1, "only rank 0 reports"
    state = load_checkpoint(run_dir / "last.pt")
    assert state["iteration"] == 4 and len(state["rng_per_rank"]) == 2
    reference_state = load_checkpoint(reference.run_dir / "last.pt")
    assert state["ema_updates"] == reference_state["ema_updates"] == 4
    for weights in ("model", "training_model"):  # the moving average (train.ema) and the trained weights
        expected = reference_state[weights]
        assert set(state[weights]) == set(expected), "no 'module.' prefix"
        for key, value in expected.items():
            torch.testing.assert_close(state[weights][key], value, rtol=1e-4, atol=1e-6, msg=f"{weights}.{key}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], "eval" in r) for r in records] == [(1, False), (2, False), (2, True), (3, False),
                                                                (4, False), (4, True)], "each record once"
    one_process = [json.loads(line) for line in (reference.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["eval"]["num_pixels"] == one_process[-1]["eval"]["num_pixels"], "all of the validation set"
    assert records[-1]["eval"]["mean_iou"] == pytest.approx(one_process[-1]["eval"]["mean_iou"], abs=1e-3)
    assert {p.name for p in run_dir.iterdir()} == {"best.pt", "last.pt", "config.yaml", "metrics.jsonl",
                                                  "tensorboard", "loss.png", "miou.png"}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == [1, 2, 3, 4], "step 3 of the crash purged"
    model = build_model(load_config(None, tiny_recipe(run_dir, *RECIPE)), state["model_spec"]["num_classes"])
    model.load_state_dict(state["model"])


def test_sync_batchnorm_on_cpu_is_a_clear_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    two_cpus = DistributedContext(rank=0, world_size=2)
    with pytest.raises(ValueError, match="sync_batchnorm needs CUDA"):
        convert_sync_batchnorm(model, two_cpus)
    assert convert_sync_batchnorm(model, DistributedContext()) is model, "one process: nothing to synchronise"


def test_single_process_session_needs_no_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with distributed_session("cpu") as context:
        assert (context.rank, context.world_size, context.is_main, context.distributed) == (0, 1, True, False)
        assert not torch.distributed.is_initialized()
    model = nn.Linear(2, 2)
    assert unwrap(model) is model


def test_validation_shards_add_up_to_the_whole_set(tmp_path: Path) -> None:
    """Each rank scores every world_size-th image; summed over ranks, that is the whole set."""
    config = load_config(None, tiny_recipe(tmp_path, *RECIPE, "data.options={size: 32, length: 5}"))
    _, val_set = build_datasets(config)
    model = build_model(config, val_set.classes.num_classes)
    device = torch.device("cpu")
    whole = evaluate(model, val_set, device).matrix
    shards = [evaluate(model, val_set, device, context=DistributedContext(rank, 3)).matrix for rank in range(3)]
    assert torch.equal(sum(shards), whole)
    assert all(shard.sum() > 0 for shard in shards)
