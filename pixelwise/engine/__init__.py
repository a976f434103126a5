"""Running models: inference optimisation now; training, evaluation and prediction next."""
from pixelwise.engine.optimize import conv_bn_pairs, fold_batch_norms, optimize_for_inference

__all__ = ["conv_bn_pairs", "fold_batch_norms", "optimize_for_inference"]
