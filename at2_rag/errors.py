"""Exception types: each names what went wrong and how to fix it."""

from __future__ import annotations


class AT2Error(Exception):
    """Base class of every error raised by at2-rag."""


class InputError(AT2Error, ValueError):
    """The question, documents or answer cannot be attributed as given."""


class ContextTooLongError(InputError):
    """Prompt plus answer exceed the model's context window."""


class ModelNotAvailableError(AT2Error, ImportError):
    """The requested model (or the package that carries it) is not installed."""


class UnsupportedModelError(AT2Error, TypeError):
    """The model's attention does not run through transformers' attention interface."""


class EstimatorError(AT2Error, ValueError):
    """An estimator file is corrupt, of another format, or made for another model."""


class DeviceError(AT2Error, RuntimeError):
    """The requested device is not available on this machine."""
