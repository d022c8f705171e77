"""Context ablations: drop sources through the attention mask and measure the answer's logit-prob.

A dropped source's tokens get attention-mask 0 (every later token ignores them; positions are
unchanged), the fixed answer is teacher-forced, and each target span τ of the answer gets
``y = log P − log(1 − P)`` with ``P`` the probability of the whole span. Used to train estimators
and to evaluate any attribution method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .prompts import Prompt


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 − exp(x))`` for ``x ≤ 0``, stable at both ends (Mächler's split at −log 2)."""
    x = x.clamp(max=-1e-30)
    return torch.where(
        x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x))
    )


def logit_prob(logp: torch.Tensor) -> torch.Tensor:
    """``log P − log(1 − P)`` from ``log P`` (float64)."""
    logp = logp.to(torch.float64)
    return logp - log1mexp(logp)


def random_masks(n_masks: int, n_sources: int, p_keep: float = 0.5, *, seed: int = 0) -> torch.Tensor:
    """``(n_masks, n_sources)`` boolean keep-masks, each source kept with probability ``p_keep``."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_masks, n_sources, generator=g) < p_keep


@torch.inference_mode()
def answer_token_logprobs(
    model,
    prompt: Prompt,
    answer_ids: Sequence[int],
    masks: torch.Tensor,
    *,
    batch_size: int = 8,
) -> torch.Tensor:
    """Log-probability of every answer token under each keep-mask: ``(n_masks, answer tokens)``.

    ``masks[i, s]`` True keeps source ``s``; dropped sources' tokens are masked out of attention.
    """
    n = len(answer_ids)
    if n == 0:
        raise ValueError("the answer has no tokens")
    ids = torch.tensor(prompt.input_ids + list(answer_ids))
    T = ids.numel()
    device = next(model.parameters()).device
    keep = token_keep(prompt, masks, T)  # (m, T)
    positions = torch.arange(T)
    answer = ids[len(prompt) :].to(device)
    out = []
    for lo in range(0, masks.shape[0], batch_size):
        attn = keep[lo : lo + batch_size].to(device=device, dtype=torch.long)
        b = attn.shape[0]
        logits = model(
            input_ids=ids.expand(b, -1).to(device),
            attention_mask=attn,
            position_ids=positions.expand(b, -1).to(device),
            use_cache=False,
            logits_to_keep=n + 1,
        ).logits[:, :n]
        logp = torch.log_softmax(logits.to(torch.float32), dim=-1)
        out.append(logp.gather(-1, answer.expand(b, -1)[..., None])[..., 0].cpu())
    return torch.cat(out)


def span_targets(token_logprobs: torch.Tensor, spans: Sequence[Sequence[int]]) -> torch.Tensor:
    """``y`` per target span from per-token log-probs: ``(n_masks, n_spans)``, float64."""
    cols = [token_logprobs[:, list(span)].to(torch.float64).sum(dim=1) for span in spans]
    return logit_prob(torch.stack(cols, dim=1))


def token_keep(prompt: Prompt, masks: torch.Tensor, length: int) -> torch.Tensor:
    """Per-token attention keep ``(m, length)`` for source keep-masks ``(m, S)`` (tokens outside every
    source, i.e. template, question and answer, are always kept)."""
    keep = torch.ones(masks.shape[0], length, dtype=torch.bool)
    for src in prompt.sources:
        dropped = ~masks[:, src.index]
        keep[dropped, src.token_start : src.token_end] = False
    return keep
