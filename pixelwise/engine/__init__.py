"""Running models: inference (whole, sliding window, TTA, tiled), optimisation, training."""
from pixelwise.engine.inference import TiledStats, predict_large_image, predict_logits, predict_tiled
from pixelwise.engine.optimize import conv_bn_pairs, fold_batch_norms, optimize_for_inference

__all__ = [
    "TiledStats", "conv_bn_pairs", "fold_batch_norms", "optimize_for_inference", "predict_large_image",
    "predict_logits", "predict_tiled",
]
