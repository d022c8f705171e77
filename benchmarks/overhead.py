"""Cost of attention capture on the default model, measured side by side in one run.

1. generation with capture (AT2 features for every generated token) vs plain SDPA generation;
2. teacher-forced attribution of a given answer vs one plain SDPA forward over the same tokens;
3. peak memory of capture vs eager ``output_attentions`` vs a plain SDPA forward, each in a fresh
   subprocess (CPU: peak RSS above the loaded model; CUDA: peak allocated memory).

    python benchmarks/overhead.py --lengths 512 1024 2048 4096 --reps 5
    python benchmarks/overhead.py --device cuda --dtype bfloat16 --lengths 1024 4096 8192 --reps 10
    python benchmarks/overhead.py --model random:qwen2.5-0.5b --lengths 1024 --reps 3 --skip-memory --contextcite
    python benchmarks/overhead.py --model qwen2.5-coder-0.5b --lengths 512 1024 --reps 3 --contextcite

``--model random:NAME`` times a model with random weights and the layer shapes of a real one (see
``SHAPES``; no weights are needed to time attention capture), with the bundled tokenizer, so its
vocabulary is the bundled 49,152 tokens rather than the real model's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from at2_rag import AT2Attributor, capture, load_model
from at2_rag.prompts import encode

# Five short passages, repeated (with numbered titles) to reach each prompt length.
BENCH_DOCUMENTS = [
    {"id": "everest", "title": "Mount Everest",
     "text": "Mount Everest is Earth's highest mountain above sea level, at 8,849 metres. It lies in the "
             "Mahalangur Himal sub-range of the Himalayas, on the border between Nepal and China."},
    {"id": "k2", "title": "K2",
     "text": "K2 is the second-highest mountain on Earth, at 8,611 metres. It lies in the Karakoram range "
             "on the border between Pakistan and China."},
    {"id": "kilimanjaro", "title": "Mount Kilimanjaro",
     "text": "Mount Kilimanjaro is a dormant volcano in Tanzania. At 5,895 metres it is the highest "
             "mountain in Africa."},
    {"id": "denali", "title": "Denali",
     "text": "Denali, in Alaska, is the highest mountain peak in North America, with a summit elevation "
             "of 6,190 metres above sea level."},
    {"id": "hillary", "title": "First ascent of Everest",
     "text": "Edmund Hillary and Tenzing Norgay made the first confirmed ascent of Mount Everest on "
             "29 May 1953, as members of a British expedition led by John Hunt."},
]

ANSWER = "Mount Everest is the highest mountain on Earth, and it lies in the Himalayas between Nepal and China."


def documents_for(tokenizer, n_tokens: int) -> list[dict]:
    """Enough numbered copies of the benchmark documents for a prompt of about ``n_tokens`` tokens."""
    docs, total = [], 80
    while total < n_tokens - 60:
        d = dict(BENCH_DOCUMENTS[len(docs) % len(BENCH_DOCUMENTS)])
        d["title"] = f"{d['title']} ({len(docs) + 1})"
        total += len(encode(tokenizer, d["text"])) + 12
        docs.append(d)
    from at2_rag.prompts import build_prompt

    while len(docs) > 1 and len(build_prompt(tokenizer, "What is the highest mountain on Earth?", docs)) > n_tokens:
        docs.pop()
    return docs


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


SHAPES = {
    # name: (transformers config class, layer shapes of the public model's config.json)
    "qwen2.5-0.5b": ("Qwen2Config", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                          num_attention_heads=14, num_key_value_heads=2)),
    "llama-3.2-1b": ("LlamaConfig", dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                          num_attention_heads=32, num_key_value_heads=8, head_dim=64)),
    "qwen2.5-1.5b": ("Qwen2Config", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                                          num_attention_heads=12, num_key_value_heads=2)),
    "gemma-3-1b": ("Gemma3TextConfig", dict(hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,
                                             num_attention_heads=4, num_key_value_heads=1, head_dim=256,
                                             sliding_window=512)),
    "llama-3.1-8b": ("LlamaConfig", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                          num_attention_heads=32, num_key_value_heads=8)),
    "mistral-7b": ("MistralConfig", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                          num_attention_heads=32, num_key_value_heads=8, sliding_window=None)),
}


def random_model(name: str, device: str, dtype: str):
    """A random-weight model with the layer shapes of ``SHAPES[name]`` and the bundled tokenizer."""
    import transformers

    _, tok = load_model("default")
    cls_name, shape = SHAPES[name]
    config = getattr(transformers, cls_name)(vocab_size=len(tok), max_position_embeddings=16384,
                                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                             pad_token_id=tok.pad_token_id, **shape)
    torch_dtype = torch.float32 if dtype == "none" else getattr(torch, dtype)
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.set_attn_implementation(capture.ATTENTION_NAME)
    return model.eval(), tok


def contextcite_seconds(att: AT2Attributor, length: int, n: int = 32, batch_size: int = 8) -> float:
    """Seconds of ContextCite's ``n`` ablated passes (batches of ``batch_size``) on the benchmark prompt."""
    from at2_rag.ablation import answer_token_logprobs, random_masks

    docs = documents_for(att.tokenizer, length)
    prompt = att.prompt("What is the highest mountain on Earth?", docs, "sentence")
    masks = random_masks(n, len(prompt.sources), seed=0)
    answer = encode(att.tokenizer, ANSWER)
    return timed(lambda: answer_token_logprobs(att.model, prompt, answer, masks, batch_size=batch_size), att.device)


def speed(att: AT2Attributor, length: int, reps: int, new_tokens: int) -> dict:
    model, tok, device = att.model, att.tokenizer, att.device
    docs = documents_for(tok, length)
    prompt = att.prompt("What is the highest mountain on Earth?", docs)
    ids = torch.tensor([prompt.input_ids], device=device)
    full = torch.tensor([prompt.input_ids + encode(tok, ANSWER)], device=device)
    gen_kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                      temperature=None, top_p=None, top_k=None, pad_token_id=tok.eos_token_id)

    def plain_generate():
        model.set_attn_implementation("sdpa")
        try:
            with torch.inference_mode():
                model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **gen_kwargs)
        finally:
            model.set_attn_implementation(capture.ATTENTION_NAME)

    def plain_forward():
        model.set_attn_implementation("sdpa")
        try:
            with torch.inference_mode():
                model(input_ids=full, use_cache=False, logits_to_keep=1)
        finally:
            model.set_attn_implementation(capture.ATTENTION_NAME)

    def capture_generate():
        att.generate(prompt.question, docs, max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    def capture_forward():
        att.attribute(prompt.question, docs, ANSWER)

    for fn in (plain_generate, capture_generate, plain_forward, capture_forward):
        fn()  # warm-up
    g_ratio, f_ratio, t = [], [], {"plain_generate": [], "capture_generate": [], "plain_forward": [], "capture_forward": []}
    for _ in range(reps):  # interleaved, so drifts in machine load hit both sides
        a, b = timed(plain_generate, device), timed(capture_generate, device)
        c, d = timed(plain_forward, device), timed(capture_forward, device)
        for k, v in zip(t, (a, b, c, d)):
            t[k].append(v)
        g_ratio.append(b / a)
        f_ratio.append(d / c)
    med = {k: statistics.median(v) for k, v in t.items()}
    return {"prompt_tokens": len(prompt), "answer_tokens": full.shape[1] - len(prompt), "new_tokens": new_tokens,
            "generate_ratio_median": statistics.median(g_ratio), "forward_ratio_median": statistics.median(f_ratio),
            "seconds_median": med, "reps": reps}


MEMORY_CHILD = r"""
import json, os, resource, sys, torch
sys.path.insert(0, os.getcwd())
from benchmarks.overhead import documents_for, ANSWER
from at2_rag import AT2Attributor, load_model
from at2_rag.capture import capturing
from at2_rag.prompts import encode
mode, length, device, dtype = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
model, tok = load_model("default", device=device, dtype=None if dtype == "none" else dtype)
att = AT2Attributor(model, tok, estimator=None)
docs = documents_for(tok, length)
prompt = att.prompt("What is the highest mountain on Earth?", docs)
answer_ids = encode(tok, ANSWER)
ids = torch.tensor([prompt.input_ids + answer_ids], device=device)
# The capture for an attribution of ANSWER (its rows), built before the measured region like ids.
cap = att._capture(prompt, rows=range(len(prompt) - 1, len(prompt) + len(answer_ids) - 1))
def status(key):
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith(key))
def rss():
    return status("VmHWM")
cuda = device.startswith("cuda")
with torch.inference_mode():  # warm-up on a few tokens, so lazy one-off allocations are not counted
    model(input_ids=ids[:, :16], use_cache=False, logits_to_keep=1)
if cuda:
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak-RSS mark to the current RSS
    base = status("VmRSS")
with torch.inference_mode():
    if mode == "capture":
        with capturing(cap):
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
    elif mode == "eager":
        model.set_attn_implementation("eager")
        model(input_ids=ids, use_cache=False, output_attentions=True, logits_to_keep=1)
    else:
        model.set_attn_implementation("sdpa")
        model(input_ids=ids, use_cache=False, logits_to_keep=1)
peak = (torch.cuda.max_memory_allocated() if cuda else rss()) - base
print(json.dumps({"mode": mode, "tokens": ids.shape[1], "peak_bytes": peak}))
"""


def memory(length: int, mode: str, device: str, dtype: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, mode, str(length), device, dtype],
                         capture_output=True, text=True, cwd=os.getcwd())
    if out.returncode != 0:
        return {"mode": mode, "error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    ap.add_argument("--memory-lengths", type=int, nargs="+", default=None)
    ap.add_argument("--eager-max", type=int, default=2048, help="skip eager output_attentions above this")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--memory-reps", type=int, default=3, help="fresh processes per memory point (median)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="none")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", default="benchmarks/out/overhead.json")
    ap.add_argument("--model", default="default",
                    help="'default', a fetched model's name (e.g. qwen2.5-coder-0.5b), or random:NAME with NAME in SHAPES")
    ap.add_argument("--contextcite", action="store_true", help="also time ContextCite's 32 ablated passes")
    args = ap.parse_args()
    if args.model.startswith("random:"):
        model, tok = random_model(args.model.split(":", 1)[1], args.device, args.dtype)
        args.skip_memory = True  # the memory children load the default model
    else:
        model, tok = load_model(args.model, device=args.device, dtype=None if args.dtype == "none" else args.dtype)
        args.skip_memory = args.skip_memory or args.model != "default"  # the memory children load the default model
    att = AT2Attributor(model, tok, estimator=None)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({os.cpu_count()} cores)"
    results = {"device": device_name, "dtype": str(model.dtype), "torch": torch.__version__, "model": args.model,
               "parameters": sum(p.numel() for p in model.parameters()), "speed": [], "memory": []}
    for n in [] if args.skip_speed else args.lengths:
        r = speed(att, n, args.reps, args.new_tokens)
        if args.contextcite:
            cc = contextcite_seconds(att, n)
            r["contextcite32_seconds"] = cc
            r["contextcite32_vs_attribution"] = cc / r["seconds_median"]["capture_forward"]
        results["speed"].append(r)
        print(f"{r['prompt_tokens']:>6} tok  generate x{r['generate_ratio_median']:.3f}  forward x{r['forward_ratio_median']:.3f}  "
              f"{ {k: round(v, 3) for k, v in r['seconds_median'].items()} }", flush=True)
    del att, model
    for n in [] if args.skip_memory else (args.memory_lengths or args.lengths):
        for mode in ("sdpa", "capture", "eager"):
            if mode == "eager" and n > args.eager_max:
                results["memory"].append({"mode": mode, "tokens": n, "skipped": True})
                continue
            runs = [memory(n, mode, args.device, args.dtype) for _ in range(args.memory_reps)]
            m = dict(runs[0])
            if all("peak_bytes" in r for r in runs):  # median over fresh processes: RSS peaks are noisy
                m["peak_bytes_runs"] = [r["peak_bytes"] for r in runs]
                m["peak_bytes"] = statistics.median(m["peak_bytes_runs"])
            results["memory"].append(m)
            print(f"memory {n:>6} {mode:<8} {m.get('peak_bytes', 0) / 2**20:10.1f} MiB {m.get('error', '')}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
