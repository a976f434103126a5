"""Running models: inference (whole, sliding window, TTA, tiled), optimisation, training."""
from pixelwise.engine.checkpoint import LoadedModel, load_model
from pixelwise.engine.evaluation import EvaluationResult, evaluate_checkpoint
from pixelwise.engine.inference import TiledStats, predict_large_image, predict_logits, predict_tiled
from pixelwise.engine.optimize import conv_bn_pairs, fold_batch_norms, optimize_for_inference
from pixelwise.engine.predict import InferenceOptions, PredictedImage, PredictionReport, predict_files

__all__ = [
    "TiledStats", "conv_bn_pairs", "fold_batch_norms", "optimize_for_inference", "predict_large_image",
    "predict_logits", "predict_tiled",
    "EvaluationResult", "InferenceOptions", "LoadedModel", "PredictedImage", "PredictionReport", "evaluate_checkpoint",
    "load_model", "predict_files",
]
