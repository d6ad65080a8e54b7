"""EViP training: stage presets (delta tuning), the loop, FSDP2, exact resume."""

from .config import TrainConfig
from .stages import STAGE_NAMES, StagePreset, apply_stage, get_stage, parameter_summary

__all__ = ["TrainConfig", "StagePreset", "STAGE_NAMES", "apply_stage", "get_stage", "parameter_summary"]
