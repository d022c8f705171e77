"""Small random causal LMs of several architectures, for exact-math tests without the real model."""

from __future__ import annotations

import torch

TINY_ARCHS = ["llama", "qwen2", "mistral", "phi3", "gemma3"]


def tiny_model(arch: str, vocab_size: int = 256, attn: str = "eager", seed: int = 0):
    """A small random causal LM of the given architecture (float32, eval mode)."""
    import transformers as tf

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "llama":
        config = tf.LlamaConfig(**common)
        cls = tf.LlamaForCausalLM
    elif arch == "qwen2":
        config = tf.Qwen2Config(**common)
        cls = tf.Qwen2ForCausalLM
    elif arch == "mistral":
        config = tf.MistralConfig(**common, sliding_window=7)
        cls = tf.MistralForCausalLM
    elif arch == "phi3":
        config = tf.Phi3Config(**common)
        cls = tf.Phi3ForCausalLM
    elif arch == "gemma3":
        # Sliding-window layers (window 6) interleaved with full-attention layers.
        config = tf.Gemma3TextConfig(
            **common,
            head_dim=16,
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        )
        cls = tf.Gemma3ForCausalLM
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = cls._from_config(config, attn_implementation=attn, dtype=torch.float32)
    # Random init has tiny weights and near-uniform attention; sharpen it so errors would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj" in name or "k_proj" in name:
                p.mul_(4.0)
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model.eval()


def tiny_llama_folder(root, tokenizer):
    """A tiny random Llama saved with ``tokenizer`` as a model folder under ``root`` (its path)."""
    model = tiny_model("llama", vocab_size=len(tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"
