"""Attribution methods behind one interface: AT2 and the baselines it is judged against.

Every method maps an :class:`EvalExample` (question, sources, a fixed answer) to one score per
source and reports what it cost in forward passes. Higher score = the source mattered more.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ...ablation import answer_token_logprobs, random_masks, span_targets
from ...attributor import AT2Attributor
from ...errors import InputError
from ...estimator import Estimator
from ...prompts import Prompt
from ...refine import DEFAULT_DESIGN, DEFAULT_STRENGTH, DESIGNS, ablation_masks, design_split, refine_scores
from ...seeds import stable_hash


@dataclass
class EvalExample:
    """One question with its sources and the answer being attributed (a fixed token sequence)."""

    id: str
    question: str
    prompt: Prompt
    answer: str
    answer_ids: list[int]
    retrieval_rank: list[int] = field(default_factory=list)
    """Retriever rank of each prompt document (0 = first retrieved)."""
    gold_documents: list[int] = field(default_factory=list)
    """Indices of the prompt documents that hold the gold passage."""
    surrogate: SurrogateAblations | None = field(default=None, repr=False, compare=False)
    """Surrogate ablations computed so far (shared by the ContextCite methods on this example)."""


@dataclass
class MethodResult:
    scores: torch.Tensor
    forward_passes: int
    seconds: float


class Method:
    """Base class: ``name`` and :meth:`attribute`."""

    name: str = "method"

    def attribute(self, att: AT2Attributor, ex: EvalExample) -> MethodResult:
        t = time.perf_counter()
        scores, passes = self._score(att, ex)
        return MethodResult(scores.to(torch.float64), passes, time.perf_counter() - t)

    def _score(self, att: AT2Attributor, ex: EvalExample) -> tuple[torch.Tensor, int]:
        raise NotImplementedError


class AT2(Method):
    """AT2 with a trained estimator: one teacher-forced pass with attention capture.

    (When the attributing model wrote the answer itself, the features come free with generation.)
    """

    def __init__(self, estimator: Estimator | str | None = "default", name: str = "at2") -> None:
        self.estimator, self.name = estimator, name
        self._scorers: dict[int, AT2Attributor] = {}

    def _scorer(self, att: AT2Attributor) -> AT2Attributor:
        """``att``'s model with this method's estimator, loaded once per model (not per example)."""
        if id(att) not in self._scorers:
            self._scorers[id(att)] = att.with_estimator(self.estimator)
        return self._scorers[id(att)]

    def _score(self, att, ex):
        scorer = att if self.estimator == "default" else self._scorer(att)
        result = scorer.attribute(ex.question, ex.prompt.documents, ex.answer, granularity=ex.prompt.granularity)
        if result.answer_ids != ex.answer_ids:
            raise RuntimeError("the answer re-tokenized differently; attribute the exact answer ids")
        return result.scores, 1


class AverageAttention(AT2):
    """Uniform head weights: the answer's attention to each source, averaged over layers and heads."""

    def __init__(self) -> None:
        super().__init__(estimator=None, name="avg_attention")


class LeaveOneOut(Method):
    """Drop one source at a time: score = fall in the answer's logit-probability (S + 1 passes)."""

    name = "loo"

    def __init__(self, batch_size: int = 8) -> None:
        self.batch_size = batch_size

    def _score(self, att, ex):
        n = len(ex.prompt.sources)
        masks = torch.ones(n + 1, n, dtype=torch.bool)
        masks[torch.arange(1, n + 1), torch.arange(n)] = False
        y = whole_answer_targets(att, ex, masks, self.batch_size)
        return y[0] - y[1:], n + 1


class ContextCiteSurrogate(Method):
    """ContextCite: LASSO regression of ablation targets on random keep-masks (``n`` passes).

    Surrogates with different ``n`` on one example share its ablation passes (the masks are one fixed
    sequence, see :class:`SurrogateAblations`); each is charged the seconds its own first ``n``
    targets took plus its own fit, i.e. what it would cost alone.
    """

    def __init__(self, n_ablations: int = 32, alpha: float = 0.01, p_keep: float = 0.5, batch_size: int = 8) -> None:
        self.n, self.alpha, self.p_keep, self.batch_size = n_ablations, alpha, p_keep, batch_size
        self.name = f"contextcite:{n_ablations}"

    def attribute(self, att: AT2Attributor, ex: EvalExample) -> MethodResult:
        masks, y, target_seconds = surrogate_data(att, ex, self.n, self.p_keep, self.batch_size)
        t = time.perf_counter()
        weights, _ = fit_surrogate(masks.numpy(), y.numpy(), len(ex.answer_ids), self.alpha)
        seconds = target_seconds + time.perf_counter() - t
        return MethodResult(torch.from_numpy(weights).to(torch.float64), self.n, seconds)


class AT2Refined(AT2):
    """AT2+N: AT2's scores as the prior of a surrogate fitted on N ablated passes and the unablated answer
    (:mod:`at2_rag.refine`); the design's random masks are the example's first ContextCite masks.
    Charged AT2's pass plus every pass of the surrogate."""

    def __init__(self, n_ablations: int, design: str = DEFAULT_DESIGN, strength: float | None = None,
                 batch_size: int = 8) -> None:
        design_split(n_ablations, design)  # an unknown design fails here
        super().__init__("default", name=f"at2+{n_ablations}" + ("" if design == DEFAULT_DESIGN else f":{design}"))
        self.n, self.design, self.batch_size = n_ablations, design, batch_size
        self.strength = DEFAULT_STRENGTH[design] if strength is None else strength

    def _score(self, att, ex):
        prior, _ = super()._score(att, ex)
        _, n_random = design_split(self.n, self.design)
        masks = ablation_masks(prior, self.n, self.design, random=surrogate_data(att, ex, n_random, 0.5, self.batch_size)[0])
        y = whole_answer_targets(att, ex, masks, self.batch_size)
        scores = refine_scores(prior, masks, y, strength=self.strength)
        return scores, 1 + masks.shape[0]  # AT2's own pass, the unablated answer, the ablations


class EmbeddingSimilarity(Method):
    """Cosine similarity between the answer and each source (bundled all-MiniLM-L6-v2); no LM pass."""

    name = "embedding"

    def __init__(self, embedder=None) -> None:
        self._embedder = embedder

    def _score(self, att, ex):
        if self._embedder is None:
            from ...embeddings import MiniLMEmbedder

            self._embedder = MiniLMEmbedder()
        vecs = self._embedder.encode([ex.answer] + [s.text for s in ex.prompt.sources])
        return vecs[1:] @ vecs[0], 0


class RetrieverOrder(Method):
    """The retriever's ranking: every source of the first-retrieved document outranks the next's."""

    name = "retriever"

    def _score(self, att, ex):
        ranks = ex.retrieval_rank or list(range(len(ex.prompt.documents)))
        return torch.tensor([-float(ranks[s.document]) for s in ex.prompt.sources]), 0


def make_method(spec: str) -> Method:
    """A method from its command-line name: ``at2``, ``at2+N`` (``at2+N:top``, ``at2+N:random`` for
    another ablation design),
    ``avg_attention``, ``loo``, ``contextcite:N``, ``embedding``, ``retriever``, or ``at2:PATH`` for
    another estimator file."""
    name, _, arg = spec.partition(":")
    if name.startswith("at2+"):
        n = name[4:]
        if not n.isdigit() or int(n) < 2 or (arg and arg not in DESIGNS):
            raise InputError(
                f"at2+N takes a number of ablations N >= 2 and optionally a design ({', '.join(DESIGNS)}), "
                f"e.g. at2+8 or at2+8:random (got {spec!r})"
            )
        return AT2Refined(int(n), arg or DEFAULT_DESIGN)
    if name == "at2":
        return AT2(arg or "default", name=spec)
    if name == "contextcite":
        if arg and not arg.isdigit() or arg == "0":
            raise InputError(f"contextcite takes a positive number of ablations, e.g. contextcite:32 (got {spec!r})")
        return ContextCiteSurrogate(int(arg or 32))
    table = {"avg_attention": AverageAttention, "loo": LeaveOneOut, "embedding": EmbeddingSimilarity,
             "retriever": RetrieverOrder}
    if name not in table or arg:
        raise InputError(
            f"unknown method {spec!r}; use at2, at2:FILE, at2+N[:DESIGN], avg_attention, loo, contextcite:N, "
            "embedding, retriever"
        )
    return table[name]()


# -- shared pieces ---------------------------------------------------------------------------------
def evaluation_seed(example_id: str, salt: str) -> int:
    """The seed of an example's masks for one purpose (``salt``: "contextcite", "lds"): 32 bits of
    ``sha256(f"{salt}:{example_id}")`` read little-endian.

    Little-endian, unlike the training seeds, only because the committed evaluation numbers were
    made with it: another byte order would draw other masks and change them.
    """
    return stable_hash(salt, example_id, byteorder="little")


def whole_answer_targets(att: AT2Attributor, ex: EvalExample, masks: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """The whole answer's logit-probability under each keep-mask, ``(m,)`` float64."""
    logp = answer_token_logprobs(att.model, ex.prompt, ex.answer_ids, masks, batch_size=batch_size)
    return span_targets(logp, [range(len(ex.answer_ids))])[:, 0]


class SurrogateAblations:
    """One example's surrogate keep-masks and their targets, extended batch by batch on demand.

    The masks are a fixed sequence per example (the first ``n`` never change with ``n``), so the
    targets of the first 16 are also the first 16 of 128. The cumulative seconds after every batch
    are kept, so a surrogate fitted on the first ``n`` is charged the time those ``n`` took.
    """

    def __init__(self, example_id: str, n_sources: int, p_keep: float) -> None:
        self.seed, self.n_sources, self.p_keep = evaluation_seed(example_id, "contextcite"), n_sources, p_keep
        self.targets = torch.zeros(0, dtype=torch.float64)
        self.boundaries: list[tuple[int, float]] = [(0, 0.0)]
        """``(masks done, cumulative seconds)`` after each batch."""

    def masks(self, n: int) -> torch.Tensor:
        return random_masks(n, self.n_sources, self.p_keep, seed=self.seed)

    def extend(self, att: AT2Attributor, ex: EvalExample, n: int, batch_size: int) -> None:
        """Compute targets up to mask ``n`` (only the ones not computed yet)."""
        masks = self.masks(n)
        while len(self.targets) < n:
            start = len(self.targets)
            # Batches stay on the batch-size grid, so what n masks cost never depends on which
            # surrogate asked first.
            stop = min(n, (start // batch_size + 1) * batch_size)
            t = time.perf_counter()
            y = whole_answer_targets(att, ex, masks[start:stop], batch_size)
            self.targets = torch.cat([self.targets, y.to(torch.float64)])
            self.boundaries.append((stop, self.boundaries[-1][1] + time.perf_counter() - t))

    def seconds(self, n: int) -> float:
        """Seconds the first ``n`` targets took (linear within the batch that holds mask ``n``)."""
        for (n0, s0), (n1, s1) in zip(self.boundaries, self.boundaries[1:]):
            if n <= n1:
                return s0 + (s1 - s0) * (n - n0) / (n1 - n0)
        raise ValueError(f"only {len(self.targets)} targets were computed, not {n}")


def surrogate_data(att, ex: EvalExample, n: int, p_keep: float = 0.5, batch_size: int = 8):
    """The first ``n`` of this example's surrogate masks, their targets, and the seconds they took."""
    if ex.surrogate is None or ex.surrogate.p_keep != p_keep:
        ex.surrogate = SurrogateAblations(ex.id, len(ex.prompt.sources), p_keep)
    ex.surrogate.extend(att, ex, n, batch_size)
    return ex.surrogate.masks(n), ex.surrogate.targets[:n], ex.surrogate.seconds(n)


def fit_surrogate(masks: np.ndarray, targets: np.ndarray, num_tokens: int, alpha: float = 0.01,
                  iters: int = 2000, tol: float = 1e-10) -> tuple[np.ndarray, float]:
    """ContextCite's surrogate: LASSO on standardised masks with targets per answer token.

    Minimises ``1/(2n)·‖y − Xw − b‖² + α‖w‖₁`` by coordinate descent (the objective scikit-learn's
    ``Lasso`` uses), then maps the weights back to the unstandardised masks and the total answer.
    """
    X = masks.astype(np.float64)
    y = targets.astype(np.float64) / num_tokens
    n, d = X.shape
    mean, scale = X.mean(axis=0), X.std(axis=0)
    scale[scale == 0] = 1.0
    Z = (X - mean) / scale
    yc = y - y.mean()
    w = np.zeros(d)
    col_sq = (Z**2).sum(axis=0) / n
    resid = yc.copy()
    for _ in range(iters):
        biggest = 0.0
        for j in range(d):
            if col_sq[j] == 0:
                continue
            old = w[j]
            rho = Z[:, j] @ resid / n + col_sq[j] * old
            new = math.copysign(max(abs(rho) - alpha, 0.0), rho) / col_sq[j]
            if new != old:
                resid -= Z[:, j] * (new - old)
                w[j] = new
                biggest = max(biggest, abs(new - old))
        if biggest < tol:
            break
    weight = w / scale
    bias = y.mean() - (mean / scale) @ w
    return weight * num_tokens, float(bias * num_tokens)
