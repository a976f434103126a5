"""Running models: inference (whole, sliding window, TTA, tiled), optimisation, training."""
from pixelwise.engine.checkpoint import LoadedModel, load_model
from pixelwise.engine.evaluation import EvaluationResult, evaluate_checkpoint
from pixelwise.engine.inference import (
    InferenceOptions,
    TiledStats,
    normalize_image,
    predict_large_image,
    predict_logits,
    predict_tiled,
)
from pixelwise.engine.loading import load_predictor
from pixelwise.engine.optimize import conv_bn_pairs, fold_batch_norms, optimize_for_inference
from pixelwise.engine.predict import PredictedImage, PredictionReport, predict_files

__all__ = [
    "InferenceOptions", "TiledStats", "conv_bn_pairs", "fold_batch_norms", "normalize_image", "optimize_for_inference",
    "predict_large_image", "predict_logits", "predict_tiled",
    "EvaluationResult", "LoadedModel", "PredictedImage", "PredictionReport", "evaluate_checkpoint", "load_model",
    "load_predictor", "predict_files",
]
