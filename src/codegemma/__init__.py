"""codegemma: run Google's CodeGemma models locally for completion, generation and chat."""

from codegemma.acceleration import KernelOptions
from codegemma.config import PRESETS, GemmaConfig, preset
from codegemma.engine import CodeGemma, TextStream, load
from codegemma.errors import (
    CheckpointError,
    CodeGemmaError,
    InvalidRequestError,
    ModelNotFoundError,
    PromptTooLongError,
)
from codegemma.fim import FIM_STOP_TOKENS, ContextFile, fim_prompt, reassemble
from codegemma.generation import Completion, Usage

__all__ = [
    "PRESETS",
    "CheckpointError",
    "CodeGemma",
    "CodeGemmaError",
    "Completion",
    "ContextFile",
    "FIM_STOP_TOKENS",
    "GemmaConfig",
    "InvalidRequestError",
    "KernelOptions",
    "ModelNotFoundError",
    "PromptTooLongError",
    "TextStream",
    "Usage",
    "fim_prompt",
    "load",
    "preset",
    "reassemble",
]
