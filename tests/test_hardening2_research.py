"""Hardening, second round (issue 26), research side: build-nq sources (T3, W8), the JSONL reader's
limits (T4, and a property test), train's options and files (T5), train-data resume (W1).

No test here loads a real model: build-nq gets a small hashing embedder, train-data a tiny random
model whose records are faked, train a folder of fake shards."""

from __future__ import annotations

import gzip
import json
import math
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from at2_rag import AT2Error, InputError, ModelIdentity
from at2_rag.app.cli import main
from at2_rag.app.nq_rag import build_nq_rag, read_nq_open
from at2_rag.research import ablation_data, fitting
from at2_rag.research.data import read_dataset, read_jsonl, split_of, write_jsonl
from at2_rag.research.fitting import fit_estimator, train_estimator
from at2_rag.research.shards import load_records, save_shard, write_shards
from at2_rag.seeds import stable_hash


def one_line(excinfo) -> str:
    """The error's message, which must be one line."""
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def example(i: int | str, **fields) -> dict:
    """A valid dataset example; ``fields`` override keys."""
    ex = {"id": f"q{i}", "question": f"Question {i}?", "answers": ["x"],
          "documents": [{"id": "a", "title": "T", "text": f"Text {i}."}]}
    ex.update(fields)
    return ex


# -- T3, W8: build-nq --------------------------------------------------------------------------------
def nq_row(i: int, **fields) -> dict:
    """A valid NQ-Open row (question, answers and its gold passage)."""
    row = {"id": f"n{i}", "question": f"Where is thing {i}?", "answers": [f"place {i}"],
           "title": f"Thing {i}", "text": f"Thing {i} lies in place {i}, far away."}
    row.update(fields)
    return row


class HashEmbedder:
    """A tiny deterministic bag-of-words embedder (unit vectors), so build-nq runs without MiniLM."""

    def encode(self, texts: list[str]) -> torch.Tensor:
        out = torch.full((len(texts), 32), 1e-3)
        for i, text in enumerate(texts):
            for word in text.lower().replace(",", " ").replace(".", " ").split():
                out[i, stable_hash(word) % 32] += 1.0
        return torch.nn.functional.normalize(out, dim=1)


class NoEmbedder:
    """An embedder that must never be reached: bad sources are refused before any embedding."""

    def encode(self, texts):
        raise AssertionError("the source was embedded before it was checked")


def _text(rows: list) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def _truncated_gz(path: Path) -> Path:
    data = gzip.compress(_text([nq_row(i) for i in range(20)]).encode())
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_SOURCES = {
    # name: (make the file in a folder, the line named (None: the file), words the message holds)
    "truncated gz": (lambda d: _truncated_gz(d / "nq.jsonl.gz"), None, "truncated"),
    "not gzip": (lambda d: _write(d / "nq.jsonl.gz", _text([nq_row(1)]).encode()), None, "gzip"),
    "latin-1": (lambda d: _write(d / "nq.jsonl", json.dumps(nq_row(1, title="Café"), ensure_ascii=False).encode("latin-1") + b"\n"),
                1, "UTF-8"),
    "latin-1 raw": (lambda d: _write(d / "nq.jsonl", _text([nq_row(0)]).encode() + b'{"id": "caf\xe9"}\n'),
                    2, "UTF-8"),
    "bad json": (lambda d: _write(d / "nq.jsonl", _text([nq_row(0), "{not json"]).encode()), 2, "JSON"),
    "missing title": (lambda d: _write(d / "nq.jsonl", _text([_without(nq_row(0), "title")]).encode()), 1, "title"),
    "text 123": (lambda d: _write(d / "nq.jsonl", _text([nq_row(0), nq_row(1, text=123)]).encode()), 2, "text"),
    "array row": (lambda d: _write(d / "nq.jsonl", _text([nq_row(0), [1, 2]]).encode()), 2, "object"),
    "answers a string": (lambda d: _write(d / "nq.jsonl", _text([nq_row(0, answers="climber 0")]).encode()),
                         1, "answers"),
    "answers missing": (lambda d: _write(d / "nq.jsonl", _text([_without(nq_row(0), "answers")]).encode()),
                        1, "answers"),
    "duplicate id": (lambda d: _write(d / "nq.jsonl", _text([nq_row(0), nq_row(0)]).encode()), 2, "n0"),
    "empty question": (lambda d: _write(d / "nq.jsonl", _text([nq_row(0, question=" ")]).encode()), 1, "question"),
    "deep nesting": (lambda d: _write(d / "nq.jsonl", _text([nq_row(0), "[" * 200_000]).encode()), 2, "nested"),
    "huge int": (lambda d: _write(d / "nq.jsonl", _text([nq_row(0), '{"id": ' + "7" * 5000 + "}"]).encode()),
                 2, "digits"),
    "no rows": (lambda d: _write(d / "nq.jsonl", b"\n\n"), None, "no rows"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _without(row: dict, key: str) -> dict:
    return {k: v for k, v in row.items() if k != key}


@pytest.mark.parametrize("case", sorted(BAD_SOURCES))
def test_build_nq_refuses_a_bad_source_in_one_line_naming_path_and_line(tmp_path, case):
    make, line, words = BAD_SOURCES[case]
    source = make(tmp_path)
    with pytest.raises(InputError) as e:
        build_nq_rag(source, tmp_path / "out.jsonl", k=2, embedder=NoEmbedder())
    msg = one_line(e)
    assert str(source) in msg and words in msg, msg
    if line is not None:
        assert f"{source}:{line}:" in msg or f"{source}:{line} " in msg, msg
    assert not (tmp_path / "out.jsonl").exists()


def test_build_nq_cli_names_the_path_of_a_non_gzip_gz(tmp_path, capsys):
    source = _write(tmp_path / "nq.jsonl.gz", _text([nq_row(1)]).encode())
    assert main(["build-nq", "--source", str(source), "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("at2-rag: error:") and "\n" not in err and str(source) in err and "gzip" in err


def test_build_nq_writes_a_dataset_evaluate_reads(tmp_path):
    rows = [nq_row(i) for i in range(6)] + [nq_row(6, id=7)]  # an integer id becomes "7"
    source = tmp_path / "nq.jsonl.gz"
    with gzip.open(source, "wt", encoding="utf-8") as fh:
        fh.write(_text(rows))
    stats = build_nq_rag(source, tmp_path / "out.jsonl", k=3, embedder=HashEmbedder())
    examples = read_jsonl(tmp_path / "out.jsonl")  # the dataset reader's own validation
    assert stats["examples"] == len(examples) == 7 and stats["pool"] == 7
    assert [e["id"] for e in examples] == [f"n{i}" for i in range(6)] + ["7"]
    assert examples[-1]["split"] == split_of("7")
    assert all(isinstance(e["answers"], list) and len(e["documents"]) == 3 for e in examples)
    assert [r["id"] for r in read_nq_open(source)] == [f"n{i}" for i in range(6)] + ["7"]


# -- T4: the JSONL reader's limits -------------------------------------------------------------------
HOSTILE_LINES = {
    "deep nesting": ("[" * 200_000, "nested"),
    "deep objects": ('{"a": ' * 5_000 + "1" + "}" * 5_000, "nested"),
    "huge int": ('{"id": ' + "9" * 4_400 + ', "question": "Q?", "documents": [{"text": "T."}]}', "digits"),
    "huge int inside": (json.dumps(example("h"))[:-1] + ', "extra": [' + "1" * 10_000 + "]}", "digits"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_LINES))
def test_hostile_lines_are_bad_rows_naming_path_and_line(tmp_path, case):
    line, words = HOSTILE_LINES[case]
    path = tmp_path / "d.jsonl"
    path.write_text(_text([example(1), line, example(3)]), encoding="utf-8")
    with pytest.raises(InputError) as e:
        read_jsonl(path)
    msg = one_line(e)
    assert f"{path}:2:" in msg and words in msg, msg
    with pytest.warns(UserWarning, match="skipped 1 invalid row"):
        data = read_dataset(path, on_error="skip")
    assert [x["id"] for x in data.examples] == ["q1", "q3"] and len(data.skipped) == 1
    assert data.skipped[0].startswith(f"{path}:2:")


# -- the property test: hostile files through the JSONL reader and the build-nq reader --------------
_scalars = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
            | st.text(max_size=8) | st.sampled_from(["\\ud800", "\x00", "\u202e", ""]))
_values = st.recursive(_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                       max_leaves=8)
_documents = st.lists(st.fixed_dictionaries({"text": _values | st.text(min_size=1, max_size=8)},
                                            optional={"id": _values, "title": _values}), max_size=3) | _values


def _row_line(draw) -> bytes:
    """A row whose fields are drawn valid or hostile, as JSON text (NaN / Infinity tokens included)."""
    row = draw(st.fixed_dictionaries(
        {}, optional={"id": _values | st.text(min_size=1, max_size=5), "question": _values | st.just("Q?"),
                      "documents": _documents, "answers": _values, "gold_document_ids": _values,
                      "title": _values, "text": _values}))
    return json.dumps(row, allow_nan=True).encode()


@st.composite
def hostile_line(draw) -> bytes:
    kind = draw(st.sampled_from(["row", "value", "deep", "huge", "constant", "bytes", "valid"]))
    if kind == "row":
        return _row_line(draw)
    if kind == "value":
        return json.dumps(draw(_values)).encode()
    if kind == "deep":
        n, opener = draw(st.integers(500, 30_000)), draw(st.sampled_from(["[", '{"a":', '{"id": "d", "x": [']))
        return (opener * n).encode() + draw(st.sampled_from([b"", b"1" + b"]" * n, b"0"]))
    if kind == "huge":
        digits = str(draw(st.integers(1, 9))) * draw(st.integers(4_000, 12_000))
        return draw(st.sampled_from([f'{{"id": {digits}}}', f'[{digits}]', json.dumps(example("h"))[:-1]
                                     + f', "n": -{digits}}}'])).encode()
    if kind == "constant":
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-0", "1E400"]))
        return json.dumps(example("c"))[:-1].encode() + f', "score": {token}, "answers": [{token}]}}'.encode()
    if kind == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b" ")
    return json.dumps(example(draw(st.integers(0, 3)))).encode()


@st.composite
def hostile_file(draw) -> tuple[str, bytes]:
    """A file name and its bytes: a few hostile lines, maybe gzip, maybe cut anywhere."""
    body = b"\n".join(draw(st.lists(hostile_line(), min_size=1, max_size=4))) + draw(st.sampled_from([b"\n", b""]))
    if not draw(st.booleans()):
        return "d.jsonl", body
    packed = gzip.compress(body)
    return "d.jsonl.gz", packed[: draw(st.integers(0, len(packed)))]


def _only_project_errors(call) -> None:
    """``call()`` succeeds or raises an AT2Error of one line; any other exception fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    except AT2Error as exc:
        assert "\n" not in str(exc) and str(exc).strip(), repr(exc)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(hostile_file(), st.sampled_from(["raise", "skip"]))
def test_readers_give_success_or_one_project_error_on_hostile_files(file, on_error):
    name, data = file
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        _only_project_errors(lambda: read_dataset(path, on_error=on_error))
        _only_project_errors(lambda: read_dataset(path, split="train", limit=1, on_error=on_error))
        _only_project_errors(lambda: read_nq_open(path))


# -- T5: train's options and files -------------------------------------------------------------------
def fake_tensors(seed: int, n_src: int = 3, m: int = 6, spans: int = 2) -> dict[str, torch.Tensor]:
    """The tensors of one answer record (L=2 layers, H=2 heads), random but with signal across masks."""
    g = torch.Generator().manual_seed(seed)
    return {
        "features": torch.rand(2, 2, spans, n_src, generator=g), "query": torch.rand(2, 2, n_src, generator=g),
        "masks": (torch.rand(m, n_src, generator=g) > 0.5).to(torch.uint8),
        "targets": torch.rand(m, spans, generator=g), "base": torch.rand(spans, generator=g),
        "logp": torch.rand(1 + m, generator=g, dtype=torch.float64),
    }


@pytest.fixture()
def shards(tmp_path) -> Path:
    """A folder of two fake answer shards and its recipe.json."""
    out = tmp_path / "shards"
    examples = [{"id": f"q{i}"} for i in range(4)]
    write_shards(out, examples, {"kind": "fake"}, lambda ex: [(fake_tensors(int(ex["id"][1:])), {"id": ex["id"]})],
                 2, "fake", False)
    return out


IDENT = ModelIdentity(architecture="LlamaForCausalLM", num_layers=2, num_heads=2, vocab_size=256)


def test_fake_shards_train(shards):
    est, history = train_estimator(shards, IDENT, steps=3, log=None, weight_decay=0.1)
    assert est.weights.shape == (2, 2) and est.recipe["data"]["kind"] == "fake" and history


@pytest.mark.parametrize("decay", [-1, -1e-9, math.nan, math.inf, True, "0.1", None])
def test_weight_decay_is_checked_before_any_work(shards, monkeypatch, decay):
    monkeypatch.setattr(fitting, "load_records", lambda *a: pytest.fail("records were loaded"))
    with pytest.raises(InputError, match="weight_decay") as e:
        train_estimator(shards, IDENT, steps=3, log=None, weight_decay=decay)
    one_line(e)
    inst = fitting.Instances(torch.rand(2, 4, 3), torch.ones(2, 5, 3), torch.rand(2, 5), (2, 2))
    with pytest.raises(InputError, match="weight_decay"):
        fit_estimator(inst, steps=2, log=None, weight_decay=decay)


@pytest.mark.parametrize("recipe", [b"{not json", b"[1, 2]", b"\xff\xfe junk", b""])
def test_a_corrupt_recipe_json_is_refused_before_the_fit(shards, monkeypatch, recipe):
    (shards / "recipe.json").write_bytes(recipe)
    monkeypatch.setattr(fitting, "fit_estimator", lambda *a, **k: pytest.fail("the fit ran"))
    with pytest.raises(InputError) as e:
        train_estimator(shards, IDENT, steps=3, log=None)
    assert str(shards / "recipe.json") in one_line(e)
    # The writer reads the same file: resuming into the folder names it too.
    with pytest.raises(InputError) as e:
        write_shards(shards, [{"id": "q0"}], {"kind": "fake"}, lambda ex: [], 2, "fake", False)
    assert str(shards / "recipe.json") in one_line(e)


def _junk(path: Path) -> None:
    path.write_bytes(b"junk" * 4)


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-40])


def _foreign(path: Path) -> None:
    save_shard(path, {"x": torch.zeros(2)}, {"format": "other"})  # a safetensors file, not at2-rag's


def _no_tensors(path: Path) -> None:
    save_shard(path, {"0.query": torch.zeros(2, 2, 3)}, {"format": "at2-rag-ablation-shard", "examples": [{"id": 1}]})


@pytest.mark.parametrize("damage", [_junk, _truncated, _foreign, _no_tensors])
def test_a_damaged_shard_is_one_line_naming_the_file(shards, monkeypatch, damage):
    bad = shards / "shard-00001.safetensors"
    damage(bad)
    monkeypatch.setattr(fitting, "fit_estimator", lambda *a, **k: pytest.fail("the fit ran"))
    with pytest.raises(InputError) as e:
        train_estimator(shards, IDENT, steps=3, log=None)
    msg = one_line(e)
    assert str(bad) in msg and "train-data" in msg, msg
    with pytest.raises(InputError, match="shard-00001"):
        load_records(shards)


def test_train_cli_refuses_a_negative_weight_decay_in_one_line(shards, tmp_path, fake_att, capsys):
    fake_att.model.config.save_pretrained(tmp_path / "model")  # only the config is read
    code = main(["train", "--data", str(shards), "--out", str(tmp_path / "e.safetensors"), "--weight-decay", "-1",
                 "--model", str(tmp_path / "model")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("at2-rag: error:") and "weight_decay" in err and "\n" not in err


# -- W1: train-data resume -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fake_att():
    """An attributor stand-in: only its model's identity is read (records are faked)."""
    from tiny_models import tiny_model

    return SimpleNamespace(model=tiny_model("llama"))


@pytest.fixture()
def built(monkeypatch) -> list[str]:
    """The ids of the examples whose record was made, in order (``build_record`` faked)."""
    seen: list[str] = []

    def fake_record(att, ex, **kw):
        seen.append(ex["id"])
        return fake_tensors(int(ex["id"][1:])), {"id": ex["id"]}

    monkeypatch.setattr(ablation_data, "build_record", fake_record)
    return seen


def train_data(att, data, out, **kw):
    options = dict(split=None, k=1, n_masks=4, max_new_tokens=4, progress=False)
    return ablation_data.generate_training_data(att, data, out, **{**options, **kw})


@pytest.fixture()
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "data.jsonl", [example(i) for i in range(8)])


def stored_ids(folder: Path) -> list[str]:
    return [meta["id"] for _, meta in load_records(folder)]


def test_a_larger_limit_makes_the_missing_examples(fake_att, data, tmp_path, built):
    out = tmp_path / "shards"
    assert len(train_data(fake_att, data, out, limit=3, shard_size=2)) == 2
    assert built == ["q0", "q1", "q2"]
    assert len(train_data(fake_att, data, out, limit=4, shard_size=2)) == 2
    assert built == ["q0", "q1", "q2", "q3"]  # only the fourth is made; the third is kept
    assert stored_ids(out) == ["q0", "q1", "q2", "q3"]
    assert len(train_data(fake_att, data, out, limit=7, shard_size=2)) == 4
    assert stored_ids(out) == [f"q{i}" for i in range(7)] and len(built) == 7
    fresh = train_data(fake_att, data, tmp_path / "fresh", limit=7, shard_size=2)  # one run gives the same files
    assert [p.read_bytes() for p in fresh] == [p.read_bytes() for p in sorted(out.glob("shard-*"))]


def test_a_folder_from_before_the_shard_size_was_recorded_still_resumes(fake_att, data, tmp_path, built):
    out = tmp_path / "shards"
    train_data(fake_att, data, out, limit=2, shard_size=1)
    recipe = json.loads((out / "recipe.json").read_text())
    del recipe["shard_size"]
    (out / "recipe.json").write_text(json.dumps(recipe))
    assert len(train_data(fake_att, data, out, limit=3, shard_size=1)) == 3 and built == ["q0", "q1", "q2"]
    assert json.loads((out / "recipe.json").read_text())["shard_size"] == 1


def test_a_smaller_limit_resumes_without_remaking(fake_att, data, tmp_path, built):
    out = tmp_path / "shards"
    train_data(fake_att, data, out, limit=4, shard_size=2)
    before = [p.read_bytes() for p in sorted(out.glob("shard-*"))]
    assert len(train_data(fake_att, data, out, limit=3, shard_size=2)) == 2
    assert len(built) == 4 and [p.read_bytes() for p in sorted(out.glob("shard-*"))] == before


def test_another_shard_size_is_refused_naming_the_recorded_one(fake_att, data, tmp_path, built):
    out = tmp_path / "shards"
    train_data(fake_att, data, out, limit=3, shard_size=2)
    with pytest.raises(InputError) as e:
        train_data(fake_att, data, out, limit=3, shard_size=1)
    msg = one_line(e)
    assert "shard_size" in msg and "2" in msg and str(out) in msg
    assert len(built) == 3 and stored_ids(out) == ["q0", "q1", "q2"]
    assert json.loads((out / "recipe.json").read_text())["shard_size"] == 2


def test_a_shard_of_other_examples_is_refused(tmp_path):
    out = tmp_path / "shards"
    make = lambda ex: [(fake_tensors(0), {"id": ex["id"]})]  # noqa: E731
    write_shards(out, [{"id": "a"}, {"id": "b"}], {"kind": "fake"}, make, 2, "fake", False)
    with pytest.raises(InputError) as e:
        write_shards(out, [{"id": "a"}, {"id": "c"}], {"kind": "fake"}, make, 2, "fake", False)
    assert "shard-00000" in one_line(e)
