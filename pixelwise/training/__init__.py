"""The training loop (time budget, evaluate-and-save, atomic checkpoints, resume, progress, DDP)
and what it stands on: rare-class sampling, the weights' moving average, the run log."""
from pixelwise.training.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
