"""Second hardening round, core: hostile ranks and fusion weights (T9, W2), shipped estimator names
of the wrong kind (W3), non-finite refine strength (W5), Pruner arguments checked at construction,
linear token windows (H2) and linear ``overflow="drop_last"`` fitting (H3), and a property-based
test of the estimator metadata reader."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from at2_rag import (
    AT2Attributor,
    ContextTooLongError,
    Estimator,
    EstimatorError,
    InputError,
    KeepPolicy,
    ModelIdentity,
    Pruner,
    fused_scores,
)
from at2_rag.documents import as_documents
from at2_rag.prompts import build_prompt, decode, encode, sentence_tokens, token_char_starts
from at2_rag.ranking import retriever_ranks
from at2_rag.refine import refine_attribution, refine_scores
from at2_rag.sentences import split_sentences

TESTS = Path(__file__).parent
IDENT = ModelIdentity("LlamaForCausalLM", 3, 4, 256, "tiny")
WEIGHTS = torch.ones(3, 4) / 12


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert message and "\n" not in message, message
    return message


# -- T9: hostile retrieval ranks -------------------------------------------------------------------
BAD_RANKS = [10**400, 2**53 + 1, -1, True, 1.5, float("nan"), float("inf"), "3", [1]]


@pytest.mark.parametrize("rank", BAD_RANKS, ids=lambda r: type(r).__name__ + ":" + str(r)[:12])
def test_a_hostile_retrieval_rank_is_an_input_error_before_the_model_pass(monkeypatch, rank):
    def no_model_pass(*args, **kwargs):
        raise AssertionError("the model ran before the ranks were checked")

    monkeypatch.setattr(Pruner, "attribute", no_model_pass)
    docs = [{"text": "Everest is 8,849 m high.", "metadata": {"retrieval_rank": 0}},
            {"text": "Kilimanjaro is in Tanzania.", "metadata": {"retrieval_rank": rank}}]
    with pytest.raises(InputError, match="document 1.*retrieval_rank") as info:
        Pruner(SimpleNamespace(), rank_weight=1.0).prune("How high is Everest?", docs)  # type: ignore[arg-type]
    assert "0-based" in _one_line(info.value)  # names the fix
    with pytest.raises(InputError, match="document 1"):
        as_documents(docs)


def test_good_ranks_still_fuse_and_absent_ranks_fall_back_to_the_order():
    docs = as_documents([{"text": t, "metadata": {"retrieval_rank": r}} for t, r in (("a", 2), ("b", 0), ("c", 2**53))])
    assert retriever_ranks(docs) == [2, 0, 2**53]
    assert retriever_ranks(as_documents(["a", {"text": "b", "metadata": {"retrieval_rank": None}}])) is None
    got = fused_scores([0.3, 0.1, 0.2], 1.0, retriever_ranks(docs))
    assert all(math.isfinite(g) for g in got)
    with pytest.raises(InputError, match="rank"):
        fused_scores([0.3, 0.1], 1.0, [0, 10**400])  # direct callers get the same rule


# -- T9 + W2: the fusion recipe and one rank-weight rule ---------------------------------------------
BAD_RANK_WEIGHTS = [float("nan"), float("inf"), -float("inf"), -50.0, -1e-9, 1e7, 10**400, True, "abc", None, [1.0]]
_ids = [repr(v)[:12] for v in BAD_RANK_WEIGHTS]


def _write(path: Path, recipe: object) -> Path:
    """An estimator file with ``recipe`` in its metadata, written as a tampered file would be."""
    meta = Estimator(WEIGHTS, IDENT, "query").metadata() | {"recipe": recipe}
    save_file({"weights": WEIGHTS.contiguous()}, str(path), metadata={"at2_rag": json.dumps(meta)})
    return path


@pytest.mark.parametrize("weight", BAD_RANK_WEIGHTS, ids=_ids)
def test_one_rank_weight_rule_for_the_pruner_the_estimator_and_its_file(tmp_path, weight):
    if weight is not None:  # None means "the estimator's own weight" to the pruner; a recipe needs a number
        with pytest.raises(InputError, match="rank_weight") as info:
            Pruner(SimpleNamespace(), rank_weight=weight)  # type: ignore[arg-type]
        _one_line(info.value)
    recipe = {"fusion": {"rank_weight": weight}}
    with pytest.raises(EstimatorError, match="fusion.rank_weight") as info:
        Estimator(WEIGHTS, IDENT, "query", recipe)
    _one_line(info.value)
    path = _write(tmp_path / "e.safetensors", recipe)
    with pytest.raises(EstimatorError, match="fusion.rank_weight") as info:
        Estimator.load(path)
    assert str(path) in _one_line(info.value)


@pytest.mark.parametrize("fusion", ["abc", [1, 2], 3, None])
def test_a_fusion_that_is_not_an_object_is_refused_at_load_not_at_prune_time(tmp_path, fusion):
    with pytest.raises(EstimatorError, match="fusion") as info:
        Estimator.load(_write(tmp_path / "e.safetensors", {"fusion": fusion}))
    _one_line(info.value)
    with pytest.raises(EstimatorError, match="fusion"):
        Estimator(WEIGHTS, IDENT, "query", {"fusion": fusion})


def test_sane_rank_weights_are_kept():
    from at2_rag.estimator import check_rank_weight

    assert check_rank_weight(0) == 0.0 and check_rank_weight(3.19) == 3.19 and check_rank_weight(10**6) == 1e6
    est = Estimator(WEIGHTS, IDENT, "query", {"fusion": {"rank_weight": 3.19, "instances": 9}})
    assert est.rank_weight == 3.19
    assert Estimator(WEIGHTS, IDENT, "query", {"fusion": {}}).rank_weight == 0.0
    assert Estimator(WEIGHTS, IDENT).rank_weight == 0.0
    assert Estimator.load("default-support").rank_weight > 0


def test_the_pruner_uses_the_estimators_rank_weight(monkeypatch):
    est = Estimator(WEIGHTS, IDENT, "query", {"fusion": {"rank_weight": 2.5}})
    att = SimpleNamespace(query_estimator=lambda name: est)
    assert Pruner(att, query_estimator=est)._rank_weight() == 2.5  # type: ignore[arg-type]
    assert Pruner(att, query_estimator=est, rank_weight=0)._rank_weight() == 0.0  # type: ignore[arg-type]


# -- W3: shipped names go through the kind check ------------------------------------------------------
@pytest.mark.parametrize("name, kind", [("default-query", "answer"), ("default-support", "answer"),
                                        ("default", "query")])
def test_a_shipped_estimator_of_the_wrong_kind_is_refused(default_model, name, kind):
    model, tok = default_model
    if name == "default":  # "default" means the default estimator of the kind asked: always fits
        assert Estimator.resolve(name, model, kind).kind == kind
        return
    with pytest.raises(EstimatorError, match="'query' estimator") as info:
        Estimator.resolve(name, model, kind)  # type: ignore[arg-type]
    _one_line(info.value)
    with pytest.raises(EstimatorError, match="'query' estimator"):
        AT2Attributor(model, tok, name)  # what from_pretrained(estimator=name) builds


def test_shipped_names_of_the_right_kind_still_resolve(default_model):
    model, _ = default_model
    assert Estimator.resolve("default", model, "answer").kind == "answer"
    assert Estimator.resolve("default-query", model, "query").kind == "query"
    assert Estimator.resolve("default-support", model, "query").rank_weight > 0


# -- W5: refine strength ---------------------------------------------------------------------------
@pytest.mark.parametrize("strength", [float("nan"), float("inf"), -float("inf"), -0.5, 1e13, True, "0.1", 10**400],
                         ids=lambda v: repr(v)[:12])
def test_a_bad_refine_strength_is_an_input_error_before_any_pass(strength):
    attribution = SimpleNamespace(answer_ids=[1, 2], scores=torch.ones(3))  # never scored: the check is first
    with pytest.raises(InputError, match="strength") as info:
        refine_attribution(None, attribution, 4, strength=strength)  # type: ignore[arg-type]
    _one_line(info.value)
    with pytest.raises(InputError, match="strength"):
        refine_scores(torch.ones(3), torch.ones(4, 3), torch.arange(4.0), strength=strength)


def test_finite_strengths_still_refine():
    prior, masks = torch.tensor([1.0, 0.5, 0.0]), torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0.0]])
    y = torch.tensor([3.0, 1.0, 2.5, 2.9])
    for strength in (0, 0.01, 1e6):
        assert torch.isfinite(refine_scores(prior, masks, y, strength=strength)).all()


# -- Minor: Pruner arguments are checked at construction --------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"policy": "x"}, "policy"), ({"policy": {"top_k": 1}}, "policy"), ({"sentence_policy": "x"}, "sentence_policy"),
    ({"mode": "fast"}, "mode"), ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 2.5}, "max_new_tokens"),
])
def test_pruner_arguments_are_checked_before_any_work(kwargs, match):
    with pytest.raises(InputError, match=match) as info:
        Pruner(SimpleNamespace(), **kwargs)  # type: ignore[arg-type]
    _one_line(info.value)
    assert Pruner(SimpleNamespace(), policy=KeepPolicy(top_k=2)).policy.top_k == 2  # type: ignore[arg-type]


# -- H2: token windows from one linear pass ---------------------------------------------------------
def _prefix_starts(tokenizer, ids, text):
    """The former quadratic reference: decode every prefix."""
    out = []
    for k in range(len(ids)):
        prefix = decode(tokenizer, ids[:k])
        out.append(len(prefix) if text.startswith(prefix) else None)
    return out


def _reference_sentence_tokens(tokenizer, ids, text):
    """The former sentence_tokens: every (sentence, token) pair tested."""
    starts = _prefix_starts(tokenizer, ids, text)
    clean: list[int] = []
    for s in starts:
        clean.append(s if s is not None else (clean[-1] if clean else 0))
    ends = clean[1:] + [len(text)]
    out = []
    for s0, s1 in split_sentences(text):
        toks = [k for k, (a, b) in enumerate(zip(clean, ends)) if a < s1 and b > s0]
        if toks:
            out.append(((s0, s1), toks))
    return out


def _sentencepiece_like():
    """A Llama-style tokenizer (Metaspace, byte fallback, a leading-space Strip decoder), trained here."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    specials = ["<unk>"] + [f"<0x{i:02X}>" for i in range(256)]
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog. é ü 中文"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")


_PIECES = list("abc de f gh  ij\n\t.") + ["the ", " fox", "é", "ü", "中", "文", "😀", "👍🏽", "\u0301", "ß", "İ",
                                          "ﬁ", "  ", "\r\n", "▁", " ▁ ", "中文中文", "Zq", "<|im_end|>", ". The"]


def _lowercasing():
    """A tokenizer whose decode does not reproduce the text (BERT's lowercasing WordPiece)."""
    from transformers import AutoTokenizer

    from at2_rag.embeddings import minilm_path

    return AutoTokenizer.from_pretrained(minilm_path())


def _tokenizer(which: str, default):
    return {"default": lambda: default, "sentencepiece-like": _sentencepiece_like, "lowercasing": _lowercasing}[which]()


TOKENIZERS = ["default", "sentencepiece-like", "lowercasing"]


@pytest.mark.parametrize("which", TOKENIZERS)
def test_linear_token_starts_equal_prefix_decoding(tokenizer, which):
    tok = _tokenizer(which, tokenizer)
    rng = random.Random(0)
    for _ in range(300):
        text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 50)))
        ids = encode(tok, text)
        assert token_char_starts(tok, ids, text) == _prefix_starts(tok, ids, text), text
        answer = decode(tok, ids)
        assert sentence_tokens(tok, ids, answer) == _reference_sentence_tokens(tok, ids, answer), text


class _Counting:
    """A tokenizer wrapper that counts the token ids it decodes (the work, free of timing noise)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.decoded = tokenizer, 0

    def decode(self, ids, **kwargs) -> str:
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, **kwargs)


@pytest.mark.parametrize("which", TOKENIZERS)
def test_token_starts_decode_linear_work(tokenizer, which):
    tok = _tokenizer(which, tokenizer)
    work = []
    for n in (300, 1200):  # one sentence; "Zq" diverges from the lowercasing tokenizer's decode at once
        text = "Zq " + " ".join(f"word{i % 97} 中文 é" for i in range(n))
        counting = _Counting(tok)
        token_char_starts(counting, encode(tok, text), text)
        work.append(counting.decoded)
    assert work[1] < 6 * work[0], work  # prefix decoding: 16x


def test_token_windows_tile_a_long_multilingual_document(tokenizer):
    text = " ".join(f"Wort{i} 中文 é😀" for i in range(400))  # one long sentence
    prompt = build_prompt(tokenizer, "Was?", [text], 16)
    assert "".join(s.text for s in prompt.sources) == text
    assert all(s.token_end - s.token_start <= 16 + 3 for s in prompt.sources)  # + a split 4-byte character
    for s in prompt.sources:  # each window's tokens decode to exactly its text
        assert decode(tokenizer, prompt.input_ids[s.token_start:s.token_end]) == prompt.text[s.prompt_start:s.prompt_end]


def _ratio_in_subprocess(script: str, timeout: float) -> dict:
    """Run a timing script in its own process (killed after ``timeout``: a regression cannot hang
    the suite) and return the JSON it prints last."""
    code = textwrap.dedent(script)
    path = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path})
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s: superlinear again")
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


_TOKENIZER = """
import json, time, warnings
warnings.simplefilter("ignore")
from transformers import AutoTokenizer
from at2_rag.models import _cached_default
tok = AutoTokenizer.from_pretrained(_cached_default())
def best(f, n=5):
    times = []
    for _ in range(n):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    return min(times)
"""


def test_token_windows_are_linear_in_a_long_sentence(tokenizer):
    got = _ratio_in_subprocess(_TOKENIZER + """
    from at2_rag.prompts import build_prompt
    def doc(n):  # one sentence of n words: no sentence break to bound the old per-sentence cost
        return " ".join(f"word{i % 97} and" for i in range(n))
    small, large = doc(1000), doc(4000)
    t1 = best(lambda: build_prompt(tok, "What?", [small], 16))
    t4 = best(lambda: build_prompt(tok, "What?", [large], 16))
    print(json.dumps({"t1": t1, "t4": t4}))
    """.replace("\n    ", "\n"), timeout=60)
    assert got["t4"] < 6 * got["t1"], got


def test_a_too_long_prompt_is_refused_before_any_window_is_built(attributor, monkeypatch):
    import at2_rag.prompts as prompts

    def no_windows(*args, **kwargs):
        raise AssertionError("token windows were built for a prompt the window refuses")

    monkeypatch.setattr(prompts, "_token_windows", no_windows)
    big = "Everest is the highest mountain. " * 3000  # ~21k tokens, beyond the 8k window
    with pytest.raises(ContextTooLongError):
        attributor.attribute("How high?", [big], "Very high.", granularity=16)
    with pytest.raises(InputError, match="granularity"):  # a bad granularity is still named first
        attributor.attribute("How high?", [big], "Very high.", granularity=0)


# -- H3: drop_last fitting in one pass --------------------------------------------------------------
class _Windowed(AT2Attributor):
    """An attributor whose window is ``limit`` tokens (the model itself is never run)."""

    limit = 8192

    @property
    def max_length(self) -> int | None:
        return self.limit


def _one_by_one(att: AT2Attributor, question, documents, granularity, extra):
    """The former drop_last: drop the last document and rebuild until it fits."""
    prompt = att.prompt(question, documents, granularity)
    docs = list(prompt.documents)
    while len(prompt) + extra > att.max_length and len(docs) > 1:
        docs.pop()
        prompt = att.prompt(question, docs, granularity)
    return prompt, list(range(len(docs), len(documents)))


DOCS = [{"text": f"Fact {i}: item {i} weighs {i * 7 % 13} kg. It was found in {1900 + i}.", "id": f"d{i}",
         "title": None if i % 3 else f"T{i}"} for i in range(30)]


@pytest.mark.parametrize("limit", [150, 260, 400, 700, 5000])
@pytest.mark.parametrize("granularity", ["document", "sentence", 5])
@pytest.mark.parametrize("extra", [0, 37])
def test_drop_last_in_one_pass_equals_dropping_one_by_one(default_model, limit, granularity, extra):
    model, tok = default_model
    att = _Windowed(model, tok, None, overflow="drop_last")
    att.limit = limit
    want, want_dropped = _one_by_one(att, "Which item is heaviest?", DOCS, granularity, extra)
    if len(want) + extra > limit:
        with pytest.raises(ContextTooLongError, match="first document alone"):
            att._fitted_prompt("Which item is heaviest?", DOCS, granularity, extra, "the answer")
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got, dropped = att._fitted_prompt("Which item is heaviest?", DOCS, granularity, extra, "the answer")
    assert (got, dropped) == (want, want_dropped)
    if dropped:
        assert f"'d{dropped[0]}'" in str(caught[0].message)


def test_drop_last_is_linear_in_the_number_of_documents():
    got = _ratio_in_subprocess(_TOKENIZER + """
    from tiny_models import tiny_model
    from at2_rag import AT2Attributor
    class Small(AT2Attributor):
        max_length = 400
    att = Small(tiny_model("llama"), tok, None, overflow="drop_last")
    def run(n):
        docs = [f"Document {i} says that item {i} weighs {i * 7 % 13} kg." for i in range(n)]
        return lambda: att._fitted_prompt("What does item 3 weigh?", docs, None, 0, "nothing")
    t1, t4 = best(run(60)), best(run(240))
    print(json.dumps({"t1": t1, "t4": t4}))
    """.replace("\n    ", "\n"), timeout=60)
    assert got["t4"] < 6 * got["t1"], got


# -- the estimator metadata reader under generated hostile values -----------------------------------
_GOOD = Estimator(WEIGHTS, IDENT, "query", {"fusion": {"rank_weight": 1.0}}).metadata()
_FIELDS = ["format", "format_version", "kind", "recipe", "calibration", "model", "model.num_layers",
           "model.name", "model.architecture", "recipe.fusion", "recipe.fusion.rank_weight", "recipe.data"]
_RAW = ["[" * 5000 + "]" * 5000, '{"a":' * 3000 + "1" + "}" * 3000, "9" * 5000, "-" + "9" * 400, "1e400",
        "-1e400", "NaN", "Infinity", "-Infinity", '"\\ud800"', '"\\u0000"', '"a\\nb"', "true", "null", "{}", "[]",
        "0", "-1", "1.5", "1e-400", '"' + "x" * 100_000 + '"', "[[[]]]", '{"": {}}']
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _metadata_text(field: str, raw: str) -> str:
    """The good metadata as JSON with ``field`` (dotted: nested) replaced by the raw JSON text ``raw``."""
    meta = json.loads(json.dumps(_GOOD))
    *parents, last = field.split(".")
    node = meta
    for key in parents:
        node = node[key]
    node[last] = "@@HOSTILE@@"
    return json.dumps(meta).replace('"@@HOSTILE@@"', raw)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(_FIELDS),
       raw=st.sampled_from(_RAW) | _json.map(lambda v: json.dumps(v)),
       cut=st.none() | st.integers(min_value=0, max_value=400))
def test_hostile_metadata_loads_or_is_one_estimator_error(tmp_path, field, raw, cut):
    text = _metadata_text(field, raw)
    if cut is not None:
        text = text[:cut]  # truncated or emptied metadata
    path = tmp_path / "e.safetensors"
    save_file({"weights": WEIGHTS.contiguous()}, str(path), metadata={"at2_rag": text})
    try:
        est = Estimator.load(path)
    except EstimatorError as exc:
        assert str(path) in _one_line(exc)
        return
    assert math.isfinite(est.rank_weight) and est.rank_weight >= 0
    Estimator.load(est.save(tmp_path / "again.safetensors"))  # what loads also saves and reloads


def test_metadata_built_in_python_is_checked_the_same_way():
    for recipe in ({"fusion": {"rank_weight": 10**5000}}, {"fusion": [[[]]] * 3}, {"fusion": "x" * 10_000}):
        with pytest.raises(EstimatorError) as info:
            Estimator(WEIGHTS, IDENT, "query", recipe)
        assert len(_one_line(info.value)) < 400
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(EstimatorError) as info:
        Estimator(WEIGHTS, IDENT, "query", {"fusion": {"rank_weight": deep}})
    assert len(_one_line(info.value)) < 400


def test_numpy_ranks_and_weights_are_accepted_like_python_numbers():
    """Ranks and weights often come out of numpy (argsort, a score array): the same rule accepts them."""
    import numpy as np

    from at2_rag import Document, fused_scores
    from at2_rag.documents import as_document

    doc = as_document(Document(text="hi", metadata={"retrieval_rank": np.int64(2)}))
    assert doc.metadata["retrieval_rank"] == 2
    expected = fused_scores([1.0, 2.0, 3.0], 0.5, [0, 1, 2])
    assert fused_scores([1.0, 2.0, 3.0], np.float32(0.5), np.arange(3)) == pytest.approx(expected)
    assert fused_scores([1.0, 2.0, 3.0], np.int64(1), [np.uint8(0), np.int32(1), np.int64(2)]) == pytest.approx(
        fused_scores([1.0, 2.0, 3.0], 1.0, [0, 1, 2]))
    for bad in (np.float64("nan"), np.float32(-1.0)):
        with pytest.raises(InputError, match="rank_weight must be a finite number"):
            fused_scores([1.0, 2.0], bad)
    with pytest.raises(InputError, match="ranks must be ints"):
        fused_scores([1.0, 2.0], 0.5, np.array([0.5, 1.0]))
