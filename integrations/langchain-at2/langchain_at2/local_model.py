"""The local AT2 model shared by the compressor and the cited-answer runnable, loaded on first use."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from at2_rag import AT2Attributor, LazyAttributor


class LocalModelFields(BaseModel):
    """Settings of the local attributing model, and the model itself, created lazily and once.

    Pass ``attributor=`` to share an already loaded :class:`~at2_rag.AT2Attributor` (one model can
    serve many components and threads); otherwise one is loaded from these fields on first use.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    model: str = "default"
    """Model to load: ``"default"`` (bundled SmolLM2-135M-Instruct), a hub id or a local folder."""
    estimator: str | None = "default"
    """Answer estimator: ``"default"`` (shipped), a ``.safetensors`` path, or None (uniform weights)."""
    device: str | None = None
    """Device for the local model (None: the core's default, the CPU)."""
    max_new_tokens: int | None = Field(default=None, gt=0)
    """Length of the local model's answers and drafts (None: the attributor's default, 64)."""
    overflow: Literal["error", "drop_last"] = "error"
    """Over-long prompts: raise ``ContextTooLongError``, or drop the last documents with a warning."""
    title_key: str | None = "title"
    """Metadata key whose string value is shown to the model as the document's title."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further keyword arguments for ``AT2Attributor.from_pretrained`` (e.g. ``dtype``)."""

    _lazy: LazyAttributor = PrivateAttr()

    def __init__(self, attributor: AT2Attributor | None = None, **data: Any) -> None:
        super().__init__(**data)
        if attributor is not None and not isinstance(attributor, AT2Attributor):
            raise TypeError(f"attributor must be an at2_rag.AT2Attributor, got {type(attributor).__name__}")
        self._lazy = LazyAttributor(
            attributor, model=self.model, estimator=self.estimator, device=self.device,
            overflow=self.overflow, **self.model_kwargs,
        )

    @property
    def attributor_loaded(self) -> bool:
        """Whether the local model is in memory (it is loaded only when first needed)."""
        return self._lazy.loaded

    def get_attributor(self) -> AT2Attributor:
        """The local attributor, loading it on first call (thread-safe: loaded once)."""
        return self._lazy.get()
