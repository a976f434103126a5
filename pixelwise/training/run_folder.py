"""The run folder and resuming from it: what a run writes there, refusing to start over an
earlier run unless told, the state a resumed run reads back, and the settings it may change."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

import torch

from pixelwise.config import Config, ConfigError, config_to_dict
from pixelwise.errors import PixelwiseError
from pixelwise.io.atomic import remove_orphan_temporaries
from pixelwise.io.checkpoint import load_checkpoint
from pixelwise.models import saved_options
from pixelwise.training.distributed import DistributedContext, broadcast_object
from pixelwise.training.sampling import mix_seeds

logger = logging.getLogger(__name__)


class RunFolderInUse(PixelwiseError, ValueError):
    """A new run would replace the files of an earlier one."""


# What a run writes into its folder (``--overwrite`` removes these, and only these).
RUN_FILES = ("config.yaml", "metrics.jsonl", "best.pt", "last.pt", "loss.png", "miou.png", "tensorboard",
             "evaluation")


# Settings a resumed run may change: they alter neither the model nor the data it sees (the data
# set may move: data.root).
RESUMABLE_CHANGES = ("train.iterations", "train.eval_every", "train.checkpoint_every", "train.output_dir",
                     "train.threads", "train.compile", "data.root", "data.workers")


def prepare_run_folder(run_dir: Path, resume: bool, overwrite: bool, run_files: Sequence[str] = RUN_FILES) -> None:
    """Create the folder, refusing to start a new run over an earlier one's files; remove the
    temporary files of interrupted checkpoint writes. ``overwrite`` removes ``run_files``."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RunFolderInUse(f"train.output_dir {str(run_dir)!r} is a file, not a folder; choose another "
                             f"train.output_dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_orphan_temporaries(run_dir)
    if resume:
        return
    if overwrite:
        for name in run_files:
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        return
    present = sorted(entry.name for entry in run_dir.iterdir())
    if present:
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise RunFolderInUse(f"run folder {str(run_dir)!r} is not empty ({shown}): a new run would replace its "
                             f"files. Pass --resume to continue the run there, --overwrite to replace it, or "
                             f"choose another folder with train.output_dir=...")


def check_resume_config(config: Any, recorded: dict, allowed: Sequence[str] = RESUMABLE_CHANGES) -> None:
    """Refuse to resume with settings other than the run's, except ``allowed`` (dotted keys or
    sections).

    Raises:
        ConfigError: naming each changed key with its recorded and new values.
    """
    before, now = _flatten(recorded), _flatten(config_to_dict(config))
    changed = [key for key in now if key in before and now[key] != before[key]
               and not any(key == name or key.startswith(name + ".") for name in allowed)]
    if changed:
        listing = "; ".join(f"{key}: {before[key]!r} -> {now[key]!r}" for key in changed)
        raise ConfigError(f"--resume continues the run as it was set up, but these settings differ from its "
                          f"config.yaml: {listing}. Resume with the run's settings (only "
                          f"{', '.join(allowed)} may change), or start a new run (--overwrite, or "
                          f"another train.output_dir)")


def _flatten(record: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def load_resume_state(run_dir: Path, context: DistributedContext) -> dict:
    """``last.pt``, read by rank 0 and sent to the others (their nodes need not see the file)."""
    state = load_checkpoint(run_dir / "last.pt") if context.is_main else None
    return broadcast_object(state, context)


def keep_earlier_defaults(config: Config, state: dict) -> None:
    """A run started before a builder default changed (see
    :data:`~pixelwise.models.registry.EARLIER_DEFAULTS`) continues with the model it started with:
    its recipe gets that default written out, so ``config.yaml`` says what runs."""
    saved = state.get("model_spec")
    if saved is None or saved.get("name") != config.model.name:
        return
    for key, value in saved_options(saved["name"], saved["options"]).items():
        if key not in saved["options"] and key not in config.model.options:
            logger.info("the run was started with model.options.%s = %r (the default then); it continues so",
                        key, value)
            config.model.options[key] = value


def restore_rng(state: dict | None, config: Config, context: DistributedContext) -> None:
    """This process's random state: the checkpoint's, or (fresh, distributed) one per rank."""
    if state is not None:
        saved = state.get("rng_per_rank") or [state["rng"]]
        if len(saved) == context.world_size:
            torch.set_rng_state(saved[context.rank])
            return
        logger.warning("resuming with %d processes from a checkpoint of %d: the global batch and the random "
                       "state change, so the run continues but does not replay exactly", context.world_size,
                       len(saved))
    if context.distributed:
        # Distinct dropout masks per process, as distinct as separate machines' would be.
        torch.manual_seed(mix_seeds(config.train.seed, context.rank, state["iteration"] if state else 0))
