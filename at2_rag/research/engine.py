"""The batched ablation engine: many examples' answers in one padded ``generate``, and ablated
teacher-forced passes packed across examples.

Per-example processing leaves a GPU idle (a 135M model's pass of one prompt is launch-bound); here
the passes of every example in a chunk are sorted by length and cut into batches under a token
budget, left-padded so every answer ends at the last position (one ``logits_to_keep`` serves the
whole batch), and the log-probabilities stay on the device until the chunk is done (no per-batch
host sync). Results equal :func:`~at2_rag.research.ablation.answer_token_logprobs` up to float
rounding (``tests/test_engine.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..ablation import token_keep
from ..attributor import AT2Attributor
from ..prompts import Prompt, decode


@dataclass(frozen=True)
class AblatedPass:
    """One teacher-forced pass: prompt + answer ids, and which prompt tokens attention may see."""

    input_ids: list[int]
    """Prompt ids followed by the answer ids."""
    keep: torch.Tensor
    """``(len(input_ids),)`` bool: False drops a token from attention (its position is unchanged)."""
    answer_tokens: int


def ablated_passes(prompt: Prompt, answer_ids: Sequence[int], masks: torch.Tensor) -> list[AblatedPass]:
    """The passes of one example under each source keep-mask (``masks[i, s]`` True keeps source ``s``)."""
    ids = prompt.input_ids + list(answer_ids)
    keep = token_keep(prompt, masks, len(ids))
    return [AblatedPass(ids, row, len(answer_ids)) for row in keep]


def length_batches(lengths: Sequence[int], *, max_batch: int, max_batch_tokens: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` sorted by length and cut into batches of at most ``max_batch`` rows with
    ``rows × longest ≤ max_batch_tokens`` (a lone longer one gets a batch of its own; ``None``: rows only).

    The one batching rule of padded passes: the budget bounds the padded work (every row is as long as
    the longest) and the memory of a batch.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    lo = 0
    while lo < len(order):
        hi = lo + 1
        while (hi < len(order) and hi - lo < max_batch
               and (max_batch_tokens is None or (hi - lo + 1) * lengths[order[hi]] <= max_batch_tokens)):
            hi += 1
        batches.append(order[lo:hi])
        lo = hi
    return batches


@torch.inference_mode()
def answer_logprobs(
    model, passes: Sequence[AblatedPass], *, max_batch_tokens: int = 16384, max_batch: int = 256
) -> list[torch.Tensor]:
    """Log-probability of every answer token in each pass: one float32 ``(answer_tokens,)`` per pass.

    Passes are sorted by length and batched while ``rows × longest ≤ max_batch_tokens`` (a lone
    longer pass gets a batch of its own); the vocabulary is scored only at answer positions.
    """
    if any(p.answer_tokens < 1 for p in passes):
        raise ValueError("every pass needs at least one answer token")
    device = next(model.parameters()).device
    pending: list[tuple[list[int], torch.Tensor]] = []
    for idx in length_batches([len(p.input_ids) for p in passes], max_batch=max_batch, max_batch_tokens=max_batch_tokens):
        pending.append((idx, _batch_logprobs(model, [passes[i] for i in idx], device)))
    out: list[torch.Tensor] = [torch.empty(0)] * len(passes)
    for idx, logp in pending:
        logp = logp.cpu()  # one host sync per batch, after every batch was queued
        for row, i in enumerate(idx):
            n = passes[i].answer_tokens
            out[i] = logp[row, logp.shape[1] - n :]
    return out


def _batch_logprobs(model, batch: Sequence[AblatedPass], device: torch.device) -> torch.Tensor:
    """``(rows, longest answer)`` log-probs of one left-padded batch, right-aligned, on the device."""
    width = max(len(p.input_ids) for p in batch)
    n_max = max(p.answer_tokens for p in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    attn = torch.zeros(len(batch), width, dtype=torch.long)
    pos = torch.ones(len(batch), width, dtype=torch.long)
    targets = torch.zeros(len(batch), n_max, dtype=torch.long)
    for r, p in enumerate(batch):
        t = len(p.input_ids)
        ids[r, width - t :] = torch.tensor(p.input_ids)
        attn[r, width - t :] = p.keep.to(torch.long)
        pos[r, width - t :] = torch.arange(t)
        targets[r, n_max - p.answer_tokens :] = torch.tensor(p.input_ids[t - p.answer_tokens :])
    logits = model(
        input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device),
        use_cache=False, logits_to_keep=n_max + 1,
    ).logits[:, :n_max].to(torch.float32)
    picked = logits.gather(-1, targets.to(device)[..., None])[..., 0]
    return picked - torch.logsumexp(logits, dim=-1)


@torch.inference_mode()
def batched_answers(
    att: AT2Attributor,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    max_batch_tokens: int | None = None,
    progress: bool = False,
) -> list[str]:
    """Greedy answers to token-id prompts, batched with left padding (shortest prompts together; at most
    ``batch_size`` rows and, when given, ``rows × longest prompt ≤ max_batch_tokens``).

    Same settings as :meth:`AT2Attributor.generate` (greedy, header-echo suppression, stop tokens);
    batching may differ from one-by-one generation only by float rounding. On a CPU the token budget
    pays where prompt lengths are mixed: every row of a batch is prefilled at the longest one's length.
    """
    from tqdm.auto import tqdm

    batches = length_batches([len(p) for p in prompts], max_batch=batch_size, max_batch_tokens=max_batch_tokens)
    answers: list[str] = [""] * len(prompts)
    pad = att.pad_token_id()
    pad = 0 if pad is None else pad
    kwargs = {
        "do_sample": False, "max_new_tokens": max_new_tokens, "pad_token_id": pad,
        "temperature": None, "top_p": None, "top_k": None,
    }
    if att.suppress_header_echo:
        kwargs["begin_suppress_tokens"] = att.header_start_tokens()
    for idx in tqdm(batches, desc="answers", disable=not progress):
        width = max(len(prompts[i]) for i in idx)
        ids = torch.tensor([[pad] * (width - len(prompts[i])) + list(prompts[i]) for i in idx])
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in idx])
        out = att.model.generate(
            input_ids=ids.to(att.device), attention_mask=mask.to(att.device), use_cache=True, **kwargs
        )
        for row, i in zip(out[:, width:].tolist(), idx):
            answers[i] = decode(att.tokenizer, att.strip_stop_tokens(row))
    return answers


__all__ = ["AblatedPass", "ablated_passes", "answer_logprobs", "batched_answers", "length_batches"]
