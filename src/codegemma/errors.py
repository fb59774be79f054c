"""Exceptions the package raises for bad input. Each carries a message meant for the user."""


class CodeGemmaError(Exception):
    """Base class: a problem the user can fix, reported without a traceback by the CLI."""


class CheckpointError(CodeGemmaError):
    """A model path, checkpoint file or config that cannot be used."""


class ModelNotFoundError(CheckpointError):
    """The model path or Hub id does not resolve to files on this machine."""


class PromptTooLongError(CodeGemmaError):
    """A prompt that does not fit in the context window."""


class InvalidRequestError(CodeGemmaError, ValueError):
    """Arguments to a generation call that make no sense (bad sampling values, bad messages)."""


class MissingExtraError(CodeGemmaError):
    """A feature whose optional extra (`pip install 'codegemma[extra]'`) is not installed."""
