"""The AT2 estimator: one learned weight per (layer, head) over attention features.

``score(s) = Σ_{l,h} θ[l,h] · φ[l,h](s)``. Uniform θ is the "average attention" baseline. Saved as
one safetensors file holding the weights and, in its header, JSON metadata (model identity, feature
kind, training recipe, format version). Loading never unpickles anything.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import EstimatorError
from .files import atomic_path

FORMAT_VERSION = 1
FeatureKind = Literal["answer", "query"]
CALIBRATIONS: tuple[str | None, ...] = (None, "content-free")
"""How query features are calibrated before scoring: not at all, or minus the features of the same
prompt asked a content-free question (its positional prior; see ``AT2Attributor.query_features``)."""
_ESTIMATORS_DIR = Path(__file__).parent / "estimators"
SHIPPED_ESTIMATORS = ("default", "default-query", "default-support")
"""Estimators shipped for the default model: answer rows, question rows (the model's own answers),
and question rows trained on reference answers (which sources support the right answer)."""


@dataclass(frozen=True)
class ModelIdentity:
    """What an estimator must match: the attention layout and vocabulary of its model."""

    architecture: str
    num_layers: int
    num_heads: int
    vocab_size: int
    name: str = ""

    @classmethod
    def of(cls, model) -> ModelIdentity:
        """Identity of a loaded transformers model."""
        name = str(getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", ""))
        return cls.from_config(model.config, type(model).__name__, name)

    @classmethod
    def from_config(cls, config, model_class: str, name: str = "") -> ModelIdentity:
        """Identity from a model's config (no weights needed); ``model_class`` names the architecture
        when the config does not list one."""
        text = config.get_text_config()
        archs = getattr(config, "architectures", None) or [model_class]
        return cls(
            architecture=archs[0],
            num_layers=int(text.num_hidden_layers),
            num_heads=int(text.num_attention_heads),
            vocab_size=int(text.vocab_size),
            name=name,
        )

    def mismatch(self, other: ModelIdentity) -> str | None:
        """A description of the first difference that makes weights unusable, or None."""
        for key in ("architecture", "num_layers", "num_heads", "vocab_size"):
            if getattr(self, key) != getattr(other, key):
                return f"{key} {getattr(self, key)!r} != {getattr(other, key)!r}"
        return None


@dataclass
class Estimator:
    """Per-head linear weights ``(layers, heads)`` plus what they were made for."""

    weights: torch.Tensor
    model: ModelIdentity
    kind: FeatureKind = "answer"
    recipe: dict[str, Any] = field(default_factory=dict)
    calibration: str | None = None
    """For query estimators: ``"content-free"`` when trained on question-row features minus those
    of the same prompt with a content-free question (see :data:`CALIBRATIONS`); None: raw features."""

    def __post_init__(self) -> None:
        w = torch.as_tensor(self.weights, dtype=torch.float32)
        if w.shape != (self.model.num_layers, self.model.num_heads):
            raise EstimatorError(
                f"weights of shape {tuple(w.shape)} do not match the model's "
                f"({self.model.num_layers} layers, {self.model.num_heads} heads)"
            )
        self.weights = w
        if self.calibration not in CALIBRATIONS:
            raise EstimatorError(
                f"unknown calibration {self.calibration!r}; expected one of {sorted(map(str, CALIBRATIONS))}"
            )
        if self.calibration is not None and self.kind != "query":
            raise EstimatorError("only query estimators can be calibrated (answer rows need no calibration)")

    @classmethod
    def uniform(cls, model_or_identity, kind: FeatureKind = "answer") -> Estimator:
        """Uniform weights 1/(L·H): the average-attention baseline."""
        ident = model_or_identity if isinstance(model_or_identity, ModelIdentity) else ModelIdentity.of(model_or_identity)
        n = ident.num_layers * ident.num_heads
        w = torch.full((ident.num_layers, ident.num_heads), 1.0 / n)
        return cls(w, ident, kind, {"method": "uniform"})

    @classmethod
    def resolve(cls, estimator: Estimator | str | os.PathLike | None, model, kind: FeatureKind) -> Estimator:
        """The ``kind`` estimator for ``model`` from an Estimator, a path, a shipped name, or None
        (uniform). A shipped name falls back to uniform weights, with a warning, when it is missing
        or made for another model; anything else that does not fit raises :class:`EstimatorError`."""
        if estimator is None:
            return cls.uniform(model, kind)
        if isinstance(estimator, str) and estimator in SHIPPED_ESTIMATORS:
            name = "default-query" if estimator == "default" and kind == "query" else estimator
            try:
                est = cls.load(name)
            except FileNotFoundError:
                warnings.warn(
                    f"no trained {kind} estimator is installed; using uniform weights (average "
                    "attention), which is less faithful",
                    stacklevel=3,
                )
                return cls.uniform(model, kind)
            if est.model.mismatch(ModelIdentity.of(model)):
                warnings.warn(
                    f"the shipped {kind} estimator was trained for {est.model.name}; the loaded model "
                    "differs, so uniform weights (average attention) are used instead",
                    stacklevel=3,
                )
                return cls.uniform(model, kind)
            return est
        est = estimator if isinstance(estimator, Estimator) else cls.load(estimator)
        est.check_model(model)
        if est.kind != kind:
            raise EstimatorError(
                f"this is a {est.kind!r} estimator but {kind!r} features are being scored; use a "
                f"{kind!r} estimator"
            )
        return est

    def source_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Scores from features ``(layers, heads, ..., sources)`` → ``(..., sources)``, float32."""
        w = self.weights.to(features.device)
        return torch.einsum("lh...,lh->...", features.to(torch.float32), w)

    def check_model(self, model) -> None:
        """Raise if this estimator was made for a model of another shape or vocabulary."""
        problem = self.model.mismatch(ModelIdentity.of(model))
        if problem:
            raise EstimatorError(
                f"this estimator was trained for {self.model.name or self.model.architecture} and does "
                f"not fit the loaded model ({problem}); train one for this model with "
                "`at2-rag train`, or use Estimator.uniform(model)"
            )

    # -- files -------------------------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return {
            "format": "at2-rag-estimator",
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "model": asdict(self.model),
            "recipe": self.recipe,
            "calibration": self.calibration,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically as safetensors with the JSON metadata in its header."""
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(
                {"weights": self.weights.contiguous()},
                str(tmp),
                metadata={"at2_rag": json.dumps(self.metadata(), sort_keys=True)},
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Estimator:
        """Read an estimator file (or a shipped name such as ``"default"``/``"default-query"``)."""
        path = resolve(path)
        try:
            tensors = load_file(str(path))
            with open(path, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            meta = json.loads(header["__metadata__"]["at2_rag"])
        except FileNotFoundError:
            raise
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
            raise EstimatorError(
                f"{path} is not a valid at2-rag estimator file ({type(exc).__name__}: {exc}); "
                "it may be truncated, corrupt, or another kind of file — re-create it with "
                "Estimator.save or `at2-rag train`"
            ) from exc
        if meta.get("format") != "at2-rag-estimator" or "weights" not in tensors:
            raise EstimatorError(f"{path} is a safetensors file but not an at2-rag estimator")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise EstimatorError(
                f"{path} uses estimator format {meta['format_version']}, newer than this at2-rag "
                f"supports ({FORMAT_VERSION}); upgrade at2-rag"
            )
        try:
            ident = ModelIdentity(**meta["model"])
        except (KeyError, TypeError) as exc:
            raise EstimatorError(f"{path} has incomplete model metadata: {exc}") from exc
        try:
            return cls(
                tensors["weights"], ident, meta.get("kind", "answer"), meta.get("recipe", {}),
                meta.get("calibration"),
            )
        except EstimatorError as exc:
            raise EstimatorError(f"{path}: {exc}") from exc


def resolve(name: str | os.PathLike) -> Path:
    """Path of an estimator given as a file path or as the name of a shipped estimator."""
    path = Path(name)
    if path.suffix == ".safetensors" or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"estimator file {path} does not exist")
        return path
    shipped = _ESTIMATORS_DIR / f"{name}.safetensors"
    if shipped.exists():
        return shipped
    available = sorted(p.stem for p in _ESTIMATORS_DIR.glob("*.safetensors"))
    raise FileNotFoundError(
        f"no estimator named {str(name)!r}: pass a .safetensors path or one of {available or 'the shipped names (none installed)'}"
    )
