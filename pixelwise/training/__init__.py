"""The training loop (time budget, evaluate-and-save, atomic checkpoints, resume, progress, DDP)
and what it stands on: a recipe turned into objects, run folders and resume, rare-class
sampling, the weights' moving average, the run log."""
from pixelwise.training.loop import TrainingDiverged, TrainResult, train
from pixelwise.training.run_folder import RunFolderInUse

__all__ = ["RunFolderInUse", "TrainResult", "TrainingDiverged", "train"]
