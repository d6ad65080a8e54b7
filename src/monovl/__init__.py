"""monovl: monolithic multimodal LLMs (Mono-InternVL v1 and v1.5) in plain PyTorch."""

from .model.config import LLMConfig, MonoConfig, VisionConfig
from .model.mono_internvl import MonoInternVL

__version__ = "0.1.0"
__all__ = ["MonoInternVL", "MonoConfig", "LLMConfig", "VisionConfig", "__version__"]
