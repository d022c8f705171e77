"""Ablation targets against brute force and against physically removing text."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import tiny_model

from at2_rag import build_prompt, capture
from at2_rag.ablation import answer_token_logprobs, log1mexp, logit_prob, random_masks, span_targets
from at2_rag.prompts import encode


def test_log1mexp_is_stable_and_exact():
    x = torch.tensor([-1e-20, -1e-10, -1e-3, -0.5, -0.7, -1.0, -20.0, -800.0], dtype=torch.float64)
    got = log1mexp(x)
    assert torch.isfinite(got).all()
    for xi, gi in zip(x.tolist(), got.tolist()):
        # mpmath-free reference: log(-expm1) where it is accurate, log1p(-exp) elsewhere
        ref = math.log(-math.expm1(xi)) if xi > -1 else math.log1p(-math.exp(xi))
        assert gi == pytest.approx(ref, rel=1e-12, abs=1e-300)
    # logit of P = 0.5 is 0; of P = e^-1 is -1 - log(1 - e^-1)
    assert float(logit_prob(torch.tensor(math.log(0.5), dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)


def test_random_masks_are_deterministic_and_balanced():
    a = random_masks(400, 30, 0.5, seed=3)
    assert torch.equal(a, random_masks(400, 30, 0.5, seed=3))
    assert not torch.equal(a, random_masks(400, 30, 0.5, seed=4))
    assert abs(a.float().mean().item() - 0.5) < 0.02


def brute_force_logprobs(model, prompt, answer_ids, keep_mask):
    """One sequence at a time, eager attention, one forward per answer token."""
    model.set_attn_implementation("eager")
    ids = prompt.input_ids + list(answer_ids)
    attn = torch.ones(len(ids), dtype=torch.long)
    for s in prompt.sources:
        if not keep_mask[s.index]:
            attn[s.token_start : s.token_end] = 0
    out = []
    with torch.no_grad():
        for k, tok in enumerate(answer_ids):
            end = len(prompt) + k
            logits = model(input_ids=torch.tensor([ids[:end]]), attention_mask=attn[None, :end],
                           position_ids=torch.arange(end)[None]).logits[0, -1]
            out.append(torch.log_softmax(logits.double(), -1)[tok].item())
    capture.prepare_model(model)
    return torch.tensor(out)


def test_batched_ablation_matches_brute_force(tokenizer):
    model = tiny_model("llama", vocab_size=len(tokenizer))
    capture.prepare_model(model)
    prompt = build_prompt(tokenizer, "Who?", ["Alpha one. Beta two.", "Gamma three.", "Delta four."], "sentence")
    answer_ids = encode(tokenizer, "Alpha and gamma.")
    masks = random_masks(5, len(prompt.sources), seed=1)
    got = answer_token_logprobs(model, prompt, answer_ids, masks, batch_size=2)
    assert got.shape == (5, len(answer_ids))
    for i in range(5):
        ref = brute_force_logprobs(model, prompt, answer_ids, masks[i])
        assert torch.allclose(got[i].double(), ref.double(), atol=1e-4)
    # Masks that differ give different log-probs (the ablation is not silently ignored).
    assert not torch.allclose(got[0], got[1], atol=1e-4)


def test_span_targets_sum_token_logprobs():
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.9], [0.1, 1.0, 0.2]], dtype=torch.float64))
    y = span_targets(lp, [[0, 1], [2], [0, 1, 2]])
    P = torch.tensor([[0.25, 0.9, 0.225], [0.1, 0.2, 0.02]], dtype=torch.float64)
    assert torch.allclose(y, torch.log(P) - torch.log1p(-P), atol=1e-9)


def test_masking_and_removing_the_gold_document_agree_in_sign(default_model):
    model, tok = default_model
    question = "What is the capital of Japan?"
    docs = ["Bananas are rich in potassium.", "The capital of Japan is Tokyo.", "The Amazon river flows through Brazil."]
    answer = encode(tok, "The capital of Japan is Tokyo.")
    prompt = build_prompt(tok, question, docs)
    masks = torch.tensor([[True, True, True], [True, False, True], [False, True, False]])
    y = span_targets(answer_token_logprobs(model, prompt, answer, masks), [range(len(answer))])[:, 0]
    removed = build_prompt(tok, question, [docs[0], docs[2]])
    y_removed = span_targets(
        answer_token_logprobs(model, removed, answer, torch.ones(1, 2, dtype=torch.bool)), [range(len(answer))]
    )[0, 0]
    full_masked_drop = y[0] - y[1]
    removed_drop = y[0] - y_removed
    assert full_masked_drop > 0 and removed_drop > 0  # both ablations hurt the answer (same sign)
    assert y[2] > y[1]  # keeping only the gold document beats dropping it
