"""pixelwise: semantic segmentation with PyTorch, real and inspectable."""
from pixelwise.openmp import choose_wait_policy

choose_wait_policy()  # before PyTorch loads OpenMP: sleeping idle threads where the machine is busy

from pixelwise.encoders import create_encoder, list_encoders
from pixelwise.inference.loading import from_pretrained
from pixelwise.models import create_model, list_models, model_info
from pixelwise.runtimes import optimize_for_inference

__version__ = "0.1.0"
__all__ = ["create_encoder", "create_model", "from_pretrained", "list_encoders", "list_models", "model_info",
           "optimize_for_inference", "__version__"]
