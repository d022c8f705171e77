"""The local AT2 model shared by the components (compressor, cited answer, chat model), loaded on first use."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from at2_rag import AT2Attributor, LazyAttributor

from .documents import Count


class LocalModelBase(BaseModel):
    """Which local model to load (``model``, ``device``, ``dtype``), and the model itself, created lazily and once.

    Pass ``attributor=`` to share an already loaded :class:`~at2_rag.AT2Attributor` (one model can
    serve many components and threads); otherwise one is loaded from these fields on first use.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str = "default"
    """Model to load: ``"default"`` (bundled SmolLM2-135M-Instruct), a hub id or a local folder."""
    device: str | None = None
    """Device for the local model (None: the core's default, the CPU)."""
    dtype: str | None = None
    """Weights' dtype, e.g. ``"bfloat16"`` (None: float32; ``"auto"``: bfloat16 on CUDA)."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments for ``AT2Attributor.from_pretrained`` (e.g. ``trust_remote_code``)."""

    _lazy: LazyAttributor = PrivateAttr()

    def __init__(self, attributor: AT2Attributor | None = None, **data: Any) -> None:
        super().__init__(**data)
        if attributor is not None and not isinstance(attributor, AT2Attributor):
            raise TypeError(f"attributor must be an at2_rag.AT2Attributor, got {type(attributor).__name__}")
        self._lazy = LazyAttributor(attributor, **self._load_kwargs(), **self.model_kwargs)

    @model_validator(mode="after")
    def _check_model_kwargs(self) -> Self:
        fields = set(self._load_kwargs()) | {"model"}
        if clash := sorted(fields & set(self.model_kwargs)):
            raise ValueError(f"pass {', '.join(clash)} as field(s), not in model_kwargs")
        return self

    def _load_kwargs(self) -> dict[str, Any]:
        """The fields passed to ``AT2Attributor.from_pretrained``."""
        return {"model": self.model, "device": self.device, "dtype": self.dtype}

    @property
    def attributor_loaded(self) -> bool:
        """Whether the local model is in memory (it is loaded only when first needed)."""
        return self._lazy.loaded

    def get_attributor(self) -> AT2Attributor:
        """The local attributor, loading it on first call (thread-safe: loaded once)."""
        return self._lazy.get()


class LocalModelFields(LocalModelBase):
    """The local model plus how it attributes: estimator, answer length, over-long prompts, titles."""

    estimator: str | None = "default"
    """Answer estimator: ``"default"`` (shipped), a ``.safetensors`` path, or None (uniform weights)."""
    overflow: Literal["error", "drop_last"] = "error"
    """Over-long prompts: raise ``ContextTooLongError``, or drop the last documents with a warning."""
    max_new_tokens: Count | None = Field(default=None, gt=0)
    """Length of the local model's answers and drafts (None: the attributor's default, 64)."""
    title_key: str | None = "title"
    """Metadata key whose string value is shown to the model as the document's title."""

    def _load_kwargs(self) -> dict[str, Any]:
        return {**super()._load_kwargs(), "estimator": self.estimator, "overflow": self.overflow}
