"""The one path from images to logits — whole image, sliding window, tiled, multi-scale and
flip, under one :class:`InferenceOptions` — and what drives it: prediction of files, evaluation
of a model file on a data set, and loading a model file into the runtime that runs it."""
from pixelwise.inference.evaluation import EvaluationResult, evaluate_checkpoint
from pixelwise.inference.loading import load_predictor
from pixelwise.inference.logits import (
    InferenceOptions,
    normalize_image,
    predict_large_image,
    predict_logits,
    predict_tiled,
)
from pixelwise.inference.predict import PredictedImage, PredictionReport, RecordedViews, predict_files
from pixelwise.inference.windows import TiledStats

__all__ = [
    "EvaluationResult", "InferenceOptions", "PredictedImage", "PredictionReport", "RecordedViews", "TiledStats",
    "evaluate_checkpoint",
    "load_predictor", "normalize_image", "predict_files", "predict_large_image", "predict_logits", "predict_tiled",
]
