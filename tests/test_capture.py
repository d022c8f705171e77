"""Captured per-source attention sums equal sums of eager ``output_attentions`` rows."""

from __future__ import annotations

import pytest
import torch
from tiny_models import TINY_ARCHS, tiny_model

from at2_rag import capture
from at2_rag.errors import UnsupportedModelError

TOL = 1e-5


def random_sources(batch: int, length: int, n_sources: int, seed: int = 0) -> torch.Tensor:
    """Membership (batch, length, sources): random contiguous spans plus scattered tokens."""
    g = torch.Generator().manual_seed(seed)
    member = torch.zeros(batch, length, n_sources)
    cuts = torch.sort(torch.randperm(length - 2, generator=g)[: n_sources - 1] + 1).values.tolist()
    bounds = [0, *cuts, length]
    for s in range(n_sources - 1):
        member[:, bounds[s] : bounds[s + 1], s] = 1.0
    # The last source is a scattered set of tokens (token-level sources need not be contiguous).
    member[:, torch.randint(0, length, (5,), generator=g), -1] = 1.0
    return member


def eager_sums(model, ids, member, rows, attention_mask=None) -> torch.Tensor:
    """Reference: full eager attention matrices, rows selected and summed per source."""
    model.set_attn_implementation("eager")
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=attention_mask, output_attentions=True)
    att = torch.stack(out.attentions, dim=1).to(torch.float64)  # (B, L, H, T, T)
    att = att[:, :, :, rows]
    return torch.einsum("blhrk,bks->blhrs", att, member.to(torch.float64)).to(torch.float32)


def captured_sums(model, ids, member, rows, attention_mask=None):
    capture.prepare_model(model)
    cap = capture.AttentionCapture(member, rows=rows, num_layers=capture.num_layers(model))
    with torch.no_grad(), capture.capturing(cap):
        out = model(input_ids=ids, attention_mask=attention_mask)
    return cap.features(), cap.positions(), out.logits


def check_teacher_forced(model, T: int, n_sources: int, rows: list[int], seed: int):
    """Captured sums equal eager sums, and the model's own output is unchanged by the capture."""
    ids = torch.randint(3, 256, (1, T), generator=torch.Generator().manual_seed(seed))
    member = random_sources(1, T, n_sources)
    expected = eager_sums(model, ids, member, rows)
    with torch.no_grad():
        eager_logits = model(input_ids=ids).logits
    got, positions, logits = captured_sums(model, ids, member, rows)
    assert positions.tolist() == rows
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < TOL
    assert (logits - eager_logits).abs().max() < 1e-4
    return got


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_teacher_forced_matches_eager(arch):
    got = check_teacher_forced(tiny_model(arch), T=24, n_sources=4, rows=list(range(14, 23)), seed=1)
    assert got.shape == (1, 3, 4, 9, 4)


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_generation_with_cache_matches_eager(arch):
    model = tiny_model(arch)
    T, new = 20, 7
    ids = torch.randint(3, 256, (1, T), generator=torch.Generator().manual_seed(2))
    member = random_sources(1, T, 3)
    capture.prepare_model(model)
    cap = capture.AttentionCapture(member, capture_from=T - 1, num_layers=capture.num_layers(model))
    with torch.no_grad(), capture.capturing(cap):
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
            min_new_tokens=new, do_sample=False, use_cache=True,
        )
    full = out[:, : T + new]
    assert full.shape[1] == T + new
    rows = list(range(T - 1, T + new - 1))
    got = cap.features()
    assert cap.positions().tolist() == rows
    # Generated positions belong to no source: pad the membership with zeros for the reference.
    member_full = torch.cat([member, torch.zeros(1, new, 3)], dim=1)
    expected = eager_sums(model, full, member_full, rows)
    assert (got - expected).abs().max() < TOL


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_batch_with_left_padding_matches_eager(arch):
    model = tiny_model(arch)
    T = 22
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, 256, (2, T), generator=g)
    mask = torch.ones(2, T, dtype=torch.long)
    mask[1, :5] = 0  # second prompt is 5 tokens shorter, left-padded
    ids[1, :5] = 0
    member = random_sources(2, T, 4, seed=4)
    member[1, :5] = 0.0
    rows = list(range(12, 21))
    expected = eager_sums(model, ids, member, rows, attention_mask=mask)
    got, _, _ = captured_sums(model, ids, member, rows, attention_mask=mask)
    assert (got - expected).abs().max() < TOL


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_masked_token_cannot_change_output(arch):
    """The capturing attention must honour attention masks (padding and ablations)."""
    model = tiny_model(arch)
    capture.prepare_model(model)
    T = 16
    ids = torch.randint(3, 256, (1, T), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(1, T, dtype=torch.long)
    mask[0, 6] = 0
    other = ids.clone()
    other[0, 6] = (ids[0, 6] + 7) % 256
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask).logits
        b = model(input_ids=other, attention_mask=mask).logits
        c = model(input_ids=other).logits
    assert (a[0, 7:] - b[0, 7:]).abs().max() < 1e-5
    # Without the mask the changed token does change later logits (so the check above can fail).
    assert (a[0, 7:] - c[0, 7:]).abs().max() > 1e-3


def test_softcapped_attention_matches_eager():
    """Logit soft-capping (Gemma-2 style) is applied in both the output and the captured rows."""
    import transformers as tf

    config = tf.Gemma2Config(
        vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, attn_logit_softcapping=2.0,
        sliding_window=8, max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model = tf.Gemma2ForCausalLM._from_config(config, attn_implementation="eager").eval()
    check_teacher_forced(model, T=18, n_sources=3, rows=list(range(10, 17)), seed=6)


def test_chunked_rows_match_unchunked(monkeypatch):
    """Bounded-memory chunking of query rows gives the same sums as one block."""
    model = tiny_model("llama")
    T = 30
    ids = torch.randint(3, 256, (1, T), generator=torch.Generator().manual_seed(7))
    member = random_sources(1, T, 5)
    rows = list(range(5, 29))
    whole, _, _ = captured_sums(model, ids, member, rows)
    monkeypatch.setattr(capture, "_MAX_BLOCK_ELEMENTS", 3 * T * 4)  # 3 rows per block
    chunked, _, _ = captured_sums(model, ids, member, rows)
    assert torch.equal(whole, chunked)


def test_model_without_attention_interface_is_rejected():
    import transformers as tf

    # BLOOM computes attention (with ALiBi) in its own code, outside the attention interface.
    config = tf.BloomConfig(n_layer=1, n_head=2, hidden_size=16, vocab_size=64)
    model = tf.BloomForCausalLM(config)
    with pytest.raises(UnsupportedModelError, match="BloomForCausalLM"):
        capture.prepare_model(model)


def test_no_capture_outside_context_and_nested_capture_rejected():
    model = tiny_model("llama")
    capture.prepare_model(model)
    member = torch.ones(1, 8, 1)
    cap = capture.AttentionCapture(member, rows=[3], num_layers=3)
    ids = torch.randint(3, 256, (1, 8))
    with torch.no_grad():
        model(input_ids=ids)  # no active capture: plain SDPA, nothing recorded
    assert cap.calls == 0
    with capture.capturing(cap):
        with pytest.raises(RuntimeError, match="already active"):
            with capture.capturing(capture.AttentionCapture(member, rows=[3])):
                pass
