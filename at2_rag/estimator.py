"""The AT2 estimator: one learned weight per (layer, head) over attention features.

``score(s) = Σ_{l,h} θ[l,h] · φ[l,h](s)``. Uniform θ is the "average attention" baseline. Saved as
one safetensors file holding the weights and, in its header, JSON metadata (model identity, feature
kind, training recipe, format version). Loading never unpickles anything.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import stat
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from .errors import AT2Error, EstimatorError, InputError
from .files import atomic_path

FORMAT_VERSION = 1
FeatureKind = Literal["answer", "query"]
FEATURE_KINDS: tuple[str, ...] = get_args(FeatureKind)
MAX_WEIGHT_SUM = 1e6
"""Largest Σ|θ| accepted. Each feature is one head's attention summed over a source's tokens: a
sum of softmax probabilities, so it lies in [0, 1] (calibrated query features, a difference of
two such sums, in [-1, 1]), and a score Σθ·φ is at most Σ|θ| in size. Uniform and trained weights
have Σ|θ| ≈ 1 (only the order of scores matters, so training has no reason to grow them); 1e6
leaves six orders of magnitude of headroom, yet keeps every score, and sums and differences of
scores, finite and far from float32's overflow (3.4e38), so a tampered file cannot turn the
scores into inf/NaN."""
MAX_FILE_BYTES = 64 * 2**20
"""Largest estimator file read: one float per (layer, head) is kilobytes even for huge models, so
anything bigger (a model's weights passed by mistake) is refused before it is read into memory."""
CALIBRATIONS: tuple[str | None, ...] = (None, "content-free")
"""How query features are calibrated before scoring: not at all, or minus the features of the same
prompt asked a content-free question (its positional prior; see ``AT2Attributor.query_features``)."""
_ESTIMATORS_DIR = Path(__file__).parent / "estimators"
LABEL_ATTRIBUTE = "at2_rag_label"
"""Attribute of a loaded model holding its display name (the bundled model's), when it has one;
``name_or_path`` keeps the real folder so other libraries can reuse the model."""
MAX_RANK_WEIGHT = 1e6
"""Largest retriever-rank weight accepted (:func:`check_rank_weight`). Fitted weights are a few units;
with ranks below 2**53 (``log1p`` < 37) the rank term stays below 4e7, so keep scores stay finite and
keep their order, where a huge weight would turn every rank but the first into -inf."""
SHIPPED_ESTIMATORS = ("default", "default-query", "default-support")
"""Estimators shipped for the default model: answer rows, question rows (the model's own answers),
and question rows trained on reference answers (which sources support the right answer)."""
SHIPPED_RUNGS = ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b")
"""Fetchable models whose estimators may ship beside the default's as ``<name>``, ``<name>-query`` and
``<name>-support``: a shipped name (``"default"``, ...) resolves to the one made for the loaded model."""


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
        name = str(getattr(model, LABEL_ATTRIBUTE, "") or getattr(model, "name_or_path", "")
                   or getattr(model.config, "_name_or_path", ""))
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
        _check_weights(w)
        self.weights = w
        if self.kind not in FEATURE_KINDS:
            raise EstimatorError(f"unknown kind {self.kind!r}; expected one of {list(FEATURE_KINDS)}")
        if not isinstance(self.recipe, dict):
            raise EstimatorError(f"recipe must be a dict, not {type(self.recipe).__name__}")
        _fusion_rank_weight(self.recipe)
        if self.calibration not in CALIBRATIONS:
            raise EstimatorError(
                f"unknown calibration {self.calibration!r}; expected one of {sorted(map(str, CALIBRATIONS))}"
            )
        if self.calibration is not None and self.kind != "query":
            raise EstimatorError("only query estimators can be calibrated (answer rows need no calibration)")

    @property
    def rank_weight(self) -> float:
        """The retriever-rank weight fitted with this estimator (``recipe["fusion"]["rank_weight"]``; 0 if none)."""
        return _fusion_rank_weight(self.recipe)

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
            est.check_kind(kind)  # before the model check: a wrong kind is wrong for every model
            ident = ModelIdentity.of(model)
            if est.model.mismatch(ident):
                own = cls._shipped_for(ident, kind, name[len("default"):])
                if own is not None:
                    return own
                warnings.warn(
                    f"the shipped {kind} estimator was trained for {est.model.name}; the loaded model "
                    "differs, so uniform weights (average attention) are used instead",
                    stacklevel=3,
                )
                return cls.uniform(model, kind)
            return est
        est = estimator if isinstance(estimator, Estimator) else cls.load(estimator)
        est.check_model(model)
        est.check_kind(kind)
        return est

    @classmethod
    def _shipped_for(cls, ident: ModelIdentity, kind: FeatureKind, suffix: str) -> Estimator | None:
        """The shipped ``kind`` estimator of a fetchable model (``<rung><suffix>``) whose layout is
        ``ident``'s, or None when none is installed."""
        for rung in SHIPPED_RUNGS:
            try:
                est = cls.load(rung + suffix)
            except FileNotFoundError:
                continue
            if est.kind == kind and not est.model.mismatch(ident):
                return est
        return None

    def check_kind(self, kind: str) -> None:
        """Raise unless this estimator scores ``kind`` features (answer rows or question rows)."""
        if self.kind != kind:
            raise EstimatorError(
                f"this is a {self.kind!r} estimator but {kind!r} features are being scored; use a "
                f"{kind!r} estimator"
            )

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
            tensors, meta = _parse(_read_regular_file(path))
            if not isinstance(meta, dict) or meta.get("format") != "at2-rag-estimator" or "weights" not in tensors:
                raise EstimatorError(f"it is a safetensors file but not an at2-rag estimator; {_REMAKE}")
            ident, kind, recipe, calibration = _metadata_fields(meta)
            return cls(tensors["weights"], ident, kind, recipe, calibration)
        except EstimatorError as exc:
            raise EstimatorError(f"{path}: {exc}") from exc
        except FileNotFoundError:
            raise
        except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise EstimatorError(
                f"{path} is not a valid at2-rag estimator file ({type(exc).__name__}: {exc}); "
                "it may be truncated, corrupt, or another kind of file — re-create it with "
                "Estimator.save or `at2-rag train`"
            ) from exc


_REMAKE = "re-create it with Estimator.save or `at2-rag train`"
_NOT_REGULAR = "it is not a regular file (a folder, FIFO or device); pass the path of an estimator file"
_RETRAIN = "train a new estimator with `at2-rag train` (or use Estimator.uniform)"


def _check_weights(w: torch.Tensor) -> None:
    """Raise unless every weight is finite and Σ|θ| is within :data:`MAX_WEIGHT_SUM`, so every score is
    finite (a NaN or inf weight makes every score NaN/inf and pruning keep arbitrary chunks)."""
    if not bool(torch.isfinite(w).all()):
        raise EstimatorError(f"the weights are not all finite (NaN or ±inf); {_RETRAIN}")
    total = float(w.abs().sum(dtype=torch.float32))
    if not math.isfinite(total) or total > MAX_WEIGHT_SUM:
        raise EstimatorError(
            f"the weights' absolute sum {total:.3g} exceeds {MAX_WEIGHT_SUM:.0e}, so scores could "
            f"overflow (trained weights sum to about 1); {_RETRAIN}"
        )


def check_rank_weight(
    value: object, what: str = "rank_weight", error: type[AT2Error] = InputError
) -> float:
    """``value`` as a retriever-rank weight, a real number in [0, :data:`MAX_RANK_WEIGHT`], else ``error``
    naming ``what``: the one rule for ``Pruner(rank_weight=...)`` and an estimator's fusion recipe (NaN
    would make every keep score NaN, inf NaN/-inf, a negative weight invert the retriever's ranking)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):  # numpy numbers too
        weight = float(value) if abs(value) <= MAX_RANK_WEIGHT else math.inf  # no float() of a huge int
        if 0 <= weight <= MAX_RANK_WEIGHT:
            return weight
    raise error(
        f"{what} must be a finite number from 0 to {MAX_RANK_WEIGHT:.0e} (the weight of the retriever "
        f"rank; 0 ignores it), not {_shown(value)}"
    )


def _fusion_rank_weight(recipe: dict[str, Any]) -> float:
    """The checked ``fusion.rank_weight`` of ``recipe`` (0 when it records no fusion)."""
    fusion = recipe.get("fusion", {})
    if not isinstance(fusion, dict):
        raise _field_error("recipe.fusion", "a JSON object", fusion)
    try:
        return check_rank_weight(fusion.get("rank_weight", 0.0), "recipe field 'fusion.rank_weight'", EstimatorError)
    except EstimatorError as exc:
        raise EstimatorError(f"{exc}; {_RETRAIN}") from None


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path``, refused unless it is a regular file of estimator size: a FIFO would
    block ``open`` forever, so the file is opened non-blocking and checked on the open descriptor."""
    if not path.is_file():  # before opening: where O_NONBLOCK is missing, open() would block
        raise EstimatorError(_NOT_REGULAR)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        info = os.fstat(fd)  # the file actually opened, in case it was swapped since the check
        if not stat.S_ISREG(info.st_mode):
            raise EstimatorError(_NOT_REGULAR)
        if info.st_size > MAX_FILE_BYTES:
            raise EstimatorError(
                f"it holds {info.st_size} bytes, too many for an estimator (one float per layer and "
                "head); pass an estimator file, not a model's weights"
            )
        with open(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def _parse(data: bytes) -> tuple[dict[str, torch.Tensor], Any]:
    """The tensors of a safetensors file and the JSON decoded from its ``at2_rag`` metadata entry."""
    tensors = load_bytes(data)
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    return tensors, json.loads(header["__metadata__"]["at2_rag"])


def _metadata_fields(meta: dict[str, Any]) -> tuple[ModelIdentity, FeatureKind, dict[str, Any], str | None]:
    """The model identity, kind, recipe and calibration recorded in ``meta``, each type-checked so a
    tampered header is an :class:`EstimatorError` naming the field, never a stray TypeError."""
    version = meta.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        raise _field_error("format_version", "a positive integer", version)
    if version > FORMAT_VERSION:
        raise EstimatorError(
            f"it uses estimator format {version}, newer than this at2-rag supports ({FORMAT_VERSION}); "
            "upgrade at2-rag"
        )
    kind = meta.get("kind", "answer")
    if kind not in FEATURE_KINDS:
        raise _field_error("kind", " or ".join(map(repr, FEATURE_KINDS)), kind)
    recipe = meta.get("recipe", {})
    if not isinstance(recipe, dict):
        raise _field_error("recipe", "a JSON object", recipe)
    calibration = meta.get("calibration")
    if calibration not in CALIBRATIONS:
        raise _field_error("calibration", " or ".join(map(json.dumps, CALIBRATIONS)), calibration)
    return _model_identity(meta.get("model")), kind, recipe, calibration


def _model_identity(model: Any) -> ModelIdentity:
    """The ``model`` metadata field as a :class:`ModelIdentity`, every entry type-checked."""
    if not isinstance(model, dict):
        raise _field_error("model", "a JSON object", model)
    fields = {"architecture": str, "num_layers": int, "num_heads": int, "vocab_size": int, "name": str}
    unknown = sorted(set(model) - set(fields))
    if unknown:
        raise EstimatorError(f"metadata field 'model' has unknown entries {unknown}; {_REMAKE}")
    missing = sorted(set(fields) - set(model) - {"name"})
    if missing:
        raise EstimatorError(f"metadata field 'model' lacks {missing}; {_REMAKE}")
    for key, kind in fields.items():
        value = model.get(key, "")
        if kind is int and not (_is_int(value) and value > 0):
            raise _field_error(f"model.{key}", "a positive integer", value)
        if kind is str and not isinstance(value, str):
            raise _field_error(f"model.{key}", "a string", value)
    return ModelIdentity(**model)


def _is_int(value: Any) -> bool:
    """True for a JSON integer (``bool`` is an ``int`` subclass in Python but not in JSON)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _field_error(name: str, expected: str, value: Any) -> EstimatorError:
    """The error for metadata field ``name`` holding ``value`` instead of ``expected``."""
    return EstimatorError(f"metadata field {name!r} must be {expected}, not {_shown(value)}; {_REMAKE}")


def _shown(value: Any) -> str:
    """``value`` as JSON for a one-line message, at most 60 characters (a type name when it cannot be
    written: an integer beyond Python's 4,300-digit limit, nesting too deep, a non-JSON object)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    try:
        shown = json.dumps(value)
    except (TypeError, ValueError, RecursionError):
        return f"a {type(value).__name__}"
    return shown if len(shown) <= 60 else shown[:57] + "..."


def installed_names() -> list[str]:
    """Names of the estimators shipped with the package: the default model's and any fetchable model's."""
    return sorted(p.stem for p in _ESTIMATORS_DIR.glob("*.safetensors"))


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
    available = installed_names()
    raise FileNotFoundError(
        f"no estimator named {str(name)!r}: pass a .safetensors path or one of {available or 'the shipped names (none installed)'}"
    )
