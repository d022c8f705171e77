"""Attention capture: per-source attention sums for chosen query rows, computed beside SDPA.

The model keeps running transformers' own SDPA attention for its output. Our attention function,
registered under ``ATTENTION_NAME``, additionally recomputes ``softmax(Q Kᵀ · scale + mask)`` for the
few query rows AT2 needs and reduces them at once, in float32, to per-source sums for every head.
It receives Q and K after the model's own projections, norms and rotary embeddings, so it works for
any architecture whose attention goes through ``AttentionInterface``.

Capture state lives in a :class:`AttentionCapture` bound to the current context (a ``ContextVar``),
so concurrent threads or asyncio tasks attributing on one shared model never see each other's rows.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import torch
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .errors import UnsupportedModelError

ATTENTION_NAME = "at2_capture"
"""Name of the capturing attention implementation (SDPA output + AT2 rows as a side effect)."""

# Upper bound on the float32 score block (rows × keys × heads) built at once; bounds peak memory.
_MAX_BLOCK_ELEMENTS = 1 << 24

_ACTIVE: contextvars.ContextVar[AttentionCapture | None] = contextvars.ContextVar(
    "at2_rag_active_capture", default=None
)


class AttentionCapture:
    """Collects, for one call, per-source attention sums of selected query rows in every layer.

    Args:
        membership: ``(batch, positions, sources)`` 0/1 float tensor; entry ``[b, k, s]`` says that
            absolute key position ``k`` belongs to source ``s`` of batch item ``b``. Positions past its
            end (generated tokens) belong to no source.
        rows: absolute query positions to capture (sorted).
        capture_from: also capture every query position at or after this one (used during generation,
            where the number of rows is not known in advance).
        num_layers: number of decoder layers of the model.
    """

    def __init__(
        self,
        membership: torch.Tensor,
        rows: Sequence[int] = (),
        capture_from: int | None = None,
        num_layers: int = 0,
    ) -> None:
        if membership.dim() != 3:
            raise ValueError("membership must have shape (batch, positions, sources)")
        self.membership = membership.to(torch.float32)
        self.rows = frozenset(int(r) for r in rows)
        self.capture_from = capture_from
        self.num_layers = num_layers
        self._seen: dict[int, int] = {}
        self._layer_of: dict[int, int] = {}
        self._chunks: dict[int, list[torch.Tensor]] = {}
        self._positions: dict[int, list[torch.Tensor]] = {}
        self.calls = 0

    # -- called from inside the attention function -------------------------------------------------
    def _layer_index(self, module: torch.nn.Module) -> int:
        idx = getattr(module, "layer_idx", None)
        if isinstance(idx, int):
            return idx
        return self._layer_of.setdefault(id(module), len(self._layer_of))

    def record(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None,
        softcap: float | None,
    ) -> None:
        """Reduce the captured rows of one attention call to per-source sums and store them."""
        self.calls += 1
        layer = self._layer_index(module)
        q_len, k_len = query.shape[2], key.shape[2]
        end = self._seen.get(layer, 0) + q_len
        self._seen[layer] = end
        start = end - q_len
        local = self._wanted(start, end)
        if local.numel() == 0:
            return
        if attention_mask is None and 1 < q_len < k_len:
            raise UnsupportedModelError(
                "attention capture does not support pre-allocated (static) caches; use the default "
                "dynamic cache"
            )
        batch, n_heads, _, head_dim = query.shape
        n_kv = key.shape[1]
        group = n_heads // n_kv
        scale = head_dim**-0.5 if scaling is None else scaling
        # Keys always end at the current query's last position, so key j is position end - Tk + j;
        # only keys that lie inside the membership (the prompt) can belong to a source.
        first = end - k_len
        n_in = max(0, min(end, self.membership.shape[1]) - first)
        member = self.membership[:, first : first + n_in].to(query.device)
        if member.shape[0] != batch:
            member = member.expand(batch, -1, -1)
        keys = key.to(torch.float32)
        block = max(1, _MAX_BLOCK_ELEMENTS // max(1, k_len * n_heads))
        for lo in range(0, local.numel(), block):
            idx = local[lo : lo + block].to(query.device)
            q = query.index_select(2, idx).to(torch.float32)  # (B, Hq, r, D)
            r = q.shape[2]
            # Group query heads with their shared key head: (B, Hkv, group*r, D) @ (B, Hkv, D, Tk).
            q = q.reshape(batch, n_kv, group * r, head_dim)
            scores = torch.matmul(q, keys.transpose(-1, -2)).mul_(scale)
            scores = scores.reshape(batch, n_heads, r, k_len)
            if softcap is not None:
                scores = torch.tanh(scores / softcap) * softcap
            scores = _apply_mask(scores, attention_mask, idx, q_len, k_len)
            probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)
            sums = torch.matmul(probs[..., :n_in], member[:, None])  # (B, Hq, r, S)
            # Kept on the model's device: no synchronisation inside the forward pass.
            self._chunks.setdefault(layer, []).append(sums)
            self._positions.setdefault(layer, []).append(local[lo : lo + block] + start)

    def _wanted(self, start: int, end: int) -> torch.Tensor:
        """Local indices of the query rows in ``[start, end)`` that are to be captured."""
        cf = self.capture_from
        if end - start <= 64:  # decode steps: plain Python beats several tiny tensor ops
            hits = [p - start for p in range(start, end) if p in self.rows or (cf is not None and p >= cf)]
            return torch.tensor(hits, dtype=torch.long)
        positions = torch.arange(start, end)
        wanted = torch.isin(positions, torch.tensor(sorted(self.rows), dtype=torch.long))
        if cf is not None:
            wanted |= positions >= cf
        return torch.nonzero(wanted).flatten()

    # -- results -----------------------------------------------------------------------------------
    def positions(self) -> torch.Tensor:
        """Absolute query positions captured, in the order of :meth:`features`' row axis."""
        if not self._positions:
            return torch.zeros(0, dtype=torch.long)
        first = min(self._positions)
        return torch.cat(self._positions[first])

    def features(self) -> torch.Tensor:
        """Captured sums as ``(batch, layers, heads, rows, sources)`` float32."""
        if self.calls == 0:
            raise UnsupportedModelError(
                "no attention call went through at2-rag's capture: the model's attention does not "
                "use transformers' AttentionInterface"
            )
        layers = sorted(self._chunks)
        if not layers:
            return torch.zeros(self.membership.shape[0], self.num_layers, 0, 0, self.membership.shape[2])
        if self.num_layers and len(layers) != self.num_layers:
            raise UnsupportedModelError(
                f"captured attention from {len(layers)} of {self.num_layers} layers: some layers do "
                "not route attention through transformers' AttentionInterface"
            )
        return torch.stack([torch.cat(self._chunks[layer], dim=2) for layer in layers], dim=1).cpu()


def _apply_mask(
    scores: torch.Tensor, mask: torch.Tensor | None, idx: torch.Tensor, q_len: int, k_len: int
) -> torch.Tensor:
    """Apply the mask SDPA would apply: None (causal), boolean (True = attend) or additive float."""
    if mask is None:
        if q_len == 1:
            return scores  # a single decode row attends to every cached key
        # Prefill without a mask: keys and queries coincide, plain lower-triangular causality.
        allowed = torch.arange(k_len, device=scores.device)[None, :] <= idx[:, None]
        return scores.masked_fill(~allowed[None, None], float("-inf"))
    m = mask[..., :k_len].index_select(-2, idx) if mask.shape[-2] == q_len else mask[..., :k_len]
    if m.dtype == torch.bool:
        return scores.masked_fill(~m, float("-inf"))
    return scores + m.to(torch.float32)


def _attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """SDPA attention that also feeds the active :class:`AttentionCapture`, if any."""
    capture = _ACTIVE.get()
    softcap = kwargs.pop("softcap", None)
    if capture is not None:
        capture.record(module, query, key, attention_mask, scaling, softcap)
    if softcap is not None:
        return _softcapped_attention(module, query, key, value, attention_mask, scaling, softcap)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )


def _softcapped_attention(module, query, key, value, attention_mask, scaling, softcap):
    """Plain attention with logit soft-capping (SDPA has no soft-capping; e.g. Gemma-2)."""
    group = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(group, dim=1)
    value = value.repeat_interleave(group, dim=1)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scale
    scores = torch.tanh(scores / softcap) * softcap
    idx = torch.arange(query.shape[2], device=query.device)
    scores = _apply_mask(scores.float(), attention_mask, idx, query.shape[2], key.shape[2])
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register the capturing attention (and its mask builder) with transformers; idempotent."""
    AttentionInterface.register(ATTENTION_NAME, _attention)
    # Without a registered mask function the model would pass no mask at all (padding and ablation
    # masks silently dropped), so the SDPA mask builder is registered under the same name.
    AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)
    return ATTENTION_NAME


def prepare_model(model: PreTrainedModel) -> PreTrainedModel:
    """Switch ``model`` to the capturing attention; clear error if its attention cannot be captured."""
    if not getattr(model, "_supports_attention_backend", False):
        raise UnsupportedModelError(
            f"{type(model).__name__} does not route attention through transformers' "
            "AttentionInterface, so AT2 cannot capture it; use a model class that supports "
            "attn_implementation='sdpa' through the attention interface (Llama, Qwen2, Mistral, "
            "Gemma, Phi-3, ...)"
        )
    register()
    if model.config._attn_implementation != ATTENTION_NAME:
        model.set_attn_implementation(ATTENTION_NAME)
    return model


def num_layers(model: PreTrainedModel) -> int:
    """Number of decoder layers (text config for multimodal wrappers)."""
    return int(model.config.get_text_config().num_hidden_layers)


@contextlib.contextmanager
def capturing(capture: AttentionCapture) -> Iterator[AttentionCapture]:
    """Make ``capture`` the active capture for forward passes run in this context."""
    if _ACTIVE.get() is not None:
        raise RuntimeError("an attention capture is already active in this context")
    token = _ACTIVE.set(capture)
    try:
        yield capture
    finally:
        _ACTIVE.reset(token)
