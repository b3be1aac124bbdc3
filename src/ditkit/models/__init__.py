from .config import ARITHMETICS, ModelConfig
from .dit import DiT, forward_flops
from .embed import drop_labels

__all__ = ["ARITHMETICS", "DiT", "ModelConfig", "drop_labels", "forward_flops"]
