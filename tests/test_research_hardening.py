"""Hardening of the research code: dataset validation, resumable evaluation, count options, recipes."""

from __future__ import annotations

import gzip
import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model

from at2_rag import AT2Attributor, Estimator, InputError, ModelIdentity
from at2_rag.research.ablation_data import generate_support_data, generate_training_data
from at2_rag.research.data import is_correct, read_dataset, read_jsonl, split_of, write_jsonl
from at2_rag.research.evaluation import make_method, read_rows, run_evaluation
from at2_rag.research.evaluation import runner as runner_module
from at2_rag.research.fitting import fit_estimator, train_estimator
from at2_rag.research.shards import load_records

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    {"id": "a", "title": "Everest", "text": "Mount Everest is the highest mountain on Earth."},
    {"id": "b", "title": "Tokyo", "text": "Tokyo is the capital of Japan. It is a large city."},
    {"id": "c", "title": "Nile", "text": "The Nile is a long river in Africa."},
]


def example(i: int | str = 1, **fields) -> dict:
    """A valid example; ``fields`` override or add keys."""
    ex = {"id": f"q{i}", "question": f"Question {i}?", "documents": [dict(d) for d in DOCS],
          "answers": ["Everest"], "gold_document_ids": ["a"]}
    ex.update(fields)
    return ex


def lines_file(path: Path, *rows: object) -> Path:
    """One JSON value (or raw string) per line."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


# -- item 4: dataset validation -----------------------------------------------------------------------
def test_answers_must_be_a_list_of_strings_and_is_correct_refuses_a_string(tmp_path):
    path = lines_file(tmp_path / "d.jsonl", example(1), example(2, answers="Paris"))
    with pytest.raises(InputError) as e:
        read_jsonl(path)
    msg = one_line_error(e)
    assert f"{path}:2" in msg and "'q2'" in msg and "answers" in msg and "list" in msg
    lines_file(path, example(1, answers=["Paris", 3]))
    with pytest.raises(InputError, match=r"d\.jsonl:1: .*'q1'.*answers"):
        read_jsonl(path)
    with pytest.raises(TypeError, match="list"):
        is_correct("a P", "Paris")  # would match the single letter "p"
    assert read_jsonl(lines_file(path, example(1, answers=None)))[0]["answers"] is None


def test_gold_document_ids_must_be_a_list_of_strings(tmp_path):
    path = lines_file(tmp_path / "d.jsonl", example(1, gold_document_ids="a"))
    with pytest.raises(InputError, match=r"d\.jsonl:1: .*'q1'.*gold_document_ids"):
        read_jsonl(path)
    lines_file(path, example(1, gold_document_ids=[1]))
    with pytest.raises(InputError, match="gold_document_ids"):
        read_jsonl(path)


def test_duplicate_example_ids_are_rejected_naming_both_lines(tmp_path):
    path = lines_file(tmp_path / "d.jsonl", example(1), example(2), example(1))
    with pytest.raises(InputError) as e:
        read_jsonl(path)
    msg = one_line_error(e)
    assert f"{path}:3" in msg and f"{path}:1" in msg and "'q1'" in msg
    # An int id and its string form are the same id.
    lines_file(path, example(1, id=7), example(2, id="7"))
    with pytest.raises(InputError, match=r"d\.jsonl:2"):
        read_jsonl(path)


def test_duplicate_document_ids_within_an_example_are_rejected(tmp_path):
    docs = [dict(DOCS[0]), dict(DOCS[1], id="a")]
    path = lines_file(tmp_path / "d.jsonl", example(1, documents=docs))
    with pytest.raises(InputError, match=r"d\.jsonl:1: .*'q1'.*'a'"):
        read_jsonl(path)


def test_documents_without_id_get_stable_generated_ids(tmp_path):
    docs = [{"text": "First."}, dict(DOCS[1]), {"title": None, "text": "Third."}]
    path = lines_file(tmp_path / "d.jsonl", example(1, documents=docs))
    ex = read_jsonl(path)[0]
    assert [d["id"] for d in ex["documents"]] == ["q1#0", "b", "q1#2"]
    assert read_jsonl(path) == [ex]  # the same ids on every read


def test_lone_surrogates_are_rejected_with_path_and_line(tmp_path):
    bad = "x\udc80y"
    cases = [
        example(1, question=bad),
        example(1, documents=[dict(DOCS[0], text=bad)]),
        example(1, documents=[dict(DOCS[0], title=bad)]),
        example(1, answers=["ok", bad]),
    ]
    path = tmp_path / "d.jsonl"
    for case in cases:
        lines_file(path, example(0), json.dumps(case))  # json.dumps writes the surrogate as "\udc80"
        assert "\\udc80" in path.read_text()
        with pytest.raises(InputError, match="surrogate") as e:
            read_jsonl(path)
        assert f"{path}:2" in one_line_error(e) and "'q1'" in str(e.value)


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"question": ""}, "question"),
        ({"question": 3}, "question"),
        ({"id": True}, "'id'"),
        ({"id": 1.5}, "'id'"),
        ({"id": ""}, "'id'"),
        ({"documents": "text"}, "documents"),
        ({"documents": []}, "documents"),
        ({"documents": ["plain string"]}, "document 0"),
        ({"documents": [{"id": "a", "text": ""}]}, "document 0"),
        ({"documents": [{"id": "a", "text": 5}]}, "document 0"),
        ({"documents": [{"id": "a", "text": "x", "title": 3}]}, "title"),
        ({"documents": [{"id": 3, "text": "x"}]}, "document 0"),
    ],
)
def test_field_types_are_checked_with_path_line_and_id(tmp_path, fields, needle):
    path = lines_file(tmp_path / "d.jsonl", example(1), example(2, **fields))
    with pytest.raises(InputError) as e:
        read_jsonl(path)
    msg = one_line_error(e)
    assert f"{path}:2" in msg and needle in msg


def test_integer_ids_are_read_as_strings(tmp_path):
    ex = read_jsonl(lines_file(tmp_path / "d.jsonl", example(1, id=42)))[0]
    assert ex["id"] == "42"


def test_bad_rows_can_be_skipped_and_are_counted_in_one_warning(tmp_path):
    path = lines_file(tmp_path / "d.jsonl", example(1), example(2, answers="Paris"), "{not json",
                      example(3), example(1), example(4, question=""))
    with pytest.warns(UserWarning) as caught:
        data = read_dataset(path, on_error="skip")
    assert [e["id"] for e in data.examples] == ["q1", "q3"]
    assert len(data.skipped) == 4 and data.skipped[0].startswith(f"{path}:2: ")
    assert [s.split(": ")[0] for s in data.skipped] == [f"{path}:{n}" for n in (2, 3, 5, 6)]
    assert len(caught) == 1 and "4" in str(caught[0].message) and f"{path}:2" in str(caught[0].message)
    with pytest.warns(UserWarning):
        assert [e["id"] for e in read_jsonl(path, on_error="skip")] == ["q1", "q3"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_dataset(lines_file(tmp_path / "ok.jsonl", example(1)), on_error="skip").skipped == []
    with pytest.raises(ValueError, match="on_error"):
        read_jsonl(path, on_error="ignore")


def test_file_level_problems_are_one_line_input_errors(tmp_path):
    cases = {}
    cases["missing"] = tmp_path / "missing.jsonl"
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(json.dumps(example(1, question="Qu'est-ce que Zürich?"), ensure_ascii=False).encode("latin-1"))
    cases["latin"] = latin
    whole = write_jsonl(tmp_path / "whole.jsonl.gz", [example(i) for i in range(50)])
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    cases["cut"] = cut
    fake = lines_file(tmp_path / "fake.jsonl.gz", example(1))
    cases["fake"] = fake
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    cases["folder"] = folder
    for on_error in ("raise", "skip"):
        for name, path in cases.items():
            with pytest.raises(InputError) as e:
                read_jsonl(path, on_error=on_error)
            assert str(path) in one_line_error(e), name


def test_a_cut_off_last_line_is_an_error_or_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(example(1)) + "\n" + json.dumps(example(2))[:40], encoding="utf-8")
    with pytest.raises(InputError) as e:
        read_jsonl(path)
    assert f"{path}:2" in one_line_error(e)
    with pytest.warns(UserWarning):
        assert [e["id"] for e in read_jsonl(path, on_error="skip")] == ["q1"]


def test_unknown_split_is_refused(tmp_path):
    path = lines_file(tmp_path / "d.jsonl", example(1))
    with pytest.raises(InputError, match="split"):
        read_jsonl(path, split="tset")


def test_committed_data_reads_unchanged():
    path = ROOT / "data" / "nq_rag.jsonl.gz"
    if not path.exists():
        pytest.skip("data/nq_rag.jsonl.gz is not built")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        raw = [json.loads(line) for line in fh]
    assert read_jsonl(path) == raw


# -- item 3: evaluation resume ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_att(tokenizer):
    return AT2Attributor(tiny_model("llama", vocab_size=len(tokenizer)), tokenizer, estimator=None)


@pytest.fixture()
def eval_data(tmp_path):
    return write_jsonl(tmp_path / "data.jsonl", [example(i) for i in range(4)])


def evaluate(att, data, out, methods=("retriever", "avg_attention"), **kw):
    options = dict(split=None, k=3, n_masks=4, max_new_tokens=4, progress=False)
    options.update(kw)
    return run_evaluation(att, str(data), [make_method(m) for m in methods], str(out), **options)


def count_examples(monkeypatch) -> list[str]:
    """Spy: the ids of the examples the runner evaluates (not those it resumes)."""
    seen: list[str] = []
    real = runner_module.make_example

    def spy(att, raw, *a, **k):
        seen.append(raw["id"])
        return real(att, raw, *a, **k)

    monkeypatch.setattr(runner_module, "make_example", spy)
    return seen


def test_evaluate_refuses_to_mix_rows_made_with_other_options(tiny_att, eval_data, tmp_path):
    out = tmp_path / "res.json"
    evaluate(tiny_att, eval_data, out, limit=2)
    others = [
        dict(k=2), dict(n_masks=6), dict(max_new_tokens=5), dict(split=split_of("q0")),
        dict(methods=("retriever",)), dict(methods=("retriever", "avg_attention", "loo")),
    ]
    for change in others:
        with pytest.raises(InputError) as e:
            evaluate(tiny_att, eval_data, out, limit=2, **change)
        msg = one_line_error(e)
        assert "--k 3" in msg and "another --out or the same options" in msg, msg
    # Another answer estimator behind the attributor (what --estimator sets).
    g = torch.Generator().manual_seed(0)
    other = tiny_att.with_estimator(Estimator(torch.rand(3, 4, generator=g), ModelIdentity.of(tiny_att.model)))
    with pytest.raises(InputError, match="--estimator"):
        evaluate(other, eval_data, out, limit=2)
    # The same data file name with other contents.
    changed = write_jsonl(tmp_path / "moved" / "data.jsonl", [example(i, question=f"Other {i}?") for i in range(4)])
    with pytest.raises(InputError, match="--data"):
        evaluate(tiny_att, changed, out, limit=2)
    # The summary of the first run was not overwritten by any refused run.
    assert json.loads(out.read_text())["summary"]["retriever"]["n"] == 2


def test_evaluate_detects_a_changed_estimator_file(tiny_att, eval_data, tmp_path):
    ident = ModelIdentity.of(tiny_att.model)
    est = Estimator(torch.rand(3, 4, generator=torch.Generator().manual_seed(1)), ident).save(tmp_path / "e.safetensors")
    out = tmp_path / "res.json"
    methods = ("retriever", f"at2:{est}")
    evaluate(tiny_att, eval_data, out, methods=methods, limit=1)
    Estimator(torch.rand(3, 4, generator=torch.Generator().manual_seed(2)), ident).save(est)
    with pytest.raises(InputError, match="sha256"):
        evaluate(tiny_att, eval_data, out, methods=methods, limit=1)


def test_evaluate_resumes_across_limits_and_summarises_the_selection(tiny_att, eval_data, tmp_path, monkeypatch):
    out = tmp_path / "res.json"
    seen = count_examples(monkeypatch)
    evaluate(tiny_att, eval_data, out, limit=1)
    summary = evaluate(tiny_att, eval_data, out, limit=3)
    assert seen == ["q0", "q1", "q2"]
    assert sum(s["n"] for s in summary.values()) + len(_skipped(out)) * 2 == 6
    summary = evaluate(tiny_att, eval_data, out, limit=1)
    assert seen == ["q0", "q1", "q2"]  # nothing recomputed
    written = json.loads(out.read_text())
    assert [r["id"] for r in written["rows"]] == ["q0"]
    assert read_rows(str(out) + ".rows.jsonl").options["k"] == 3


def _skipped(out: Path) -> list[dict]:
    return [r for r in read_rows(str(out) + ".rows.jsonl").rows if "skipped" in r]


def test_evaluate_recovers_from_a_cut_off_last_row(tiny_att, eval_data, tmp_path, monkeypatch):
    out = tmp_path / "res.json"
    rows_path = Path(str(out) + ".rows.jsonl")
    evaluate(tiny_att, eval_data, out, limit=2)
    whole = rows_path.read_bytes()
    rows_path.write_bytes(whole[:-15])  # a crash mid-append
    seen = count_examples(monkeypatch)
    with pytest.warns(UserWarning, match="cut off"):
        evaluate(tiny_att, eval_data, out, limit=2)
    assert seen == ["q1"]
    again = rows_path.read_bytes()
    assert again.split(b"\n")[:2] == whole.split(b"\n")[:2] and again.endswith(b"\n")  # header and q0 kept
    assert [r["id"] for r in read_rows(str(rows_path)).rows] == ["q0", "q1"]


def test_evaluate_refuses_a_damaged_middle_row(tiny_att, eval_data, tmp_path):
    out = tmp_path / "res.json"
    rows_path = Path(str(out) + ".rows.jsonl")
    evaluate(tiny_att, eval_data, out, limit=2)
    lines = rows_path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:20] + "\n"
    rows_path.write_text("".join(lines))
    with pytest.raises(InputError, match=r"rows\.jsonl:2"):
        evaluate(tiny_att, eval_data, out, limit=2)


def test_rows_from_before_the_options_header_still_resume(tiny_att, eval_data, tmp_path, monkeypatch):
    out = tmp_path / "res.json"
    rows_path = Path(str(out) + ".rows.jsonl")
    evaluate(tiny_att, eval_data, out, limit=2)
    rows_path.write_text("".join(rows_path.read_text().splitlines(keepends=True)[1:]))  # no header
    assert read_rows(str(rows_path)).options is None
    with pytest.raises(InputError, match="--methods"):
        evaluate(tiny_att, eval_data, out, limit=2, methods=("retriever",))
    seen = count_examples(monkeypatch)
    with pytest.warns(UserWarning, match="header"):
        evaluate(tiny_att, eval_data, out, limit=3)
    assert seen == ["q2"]
    assert read_rows(str(rows_path)).options["methods"] == ["retriever", "avg_attention"]
    assert [r["id"] for r in read_rows(str(rows_path)).rows] == ["q0", "q1", "q2"]


@pytest.mark.parametrize("name", ["evaluate-gpu.json.rows.jsonl", "evaluate-test.json.rows.jsonl"])
def test_committed_benchmark_rows_still_read(name):
    path = ROOT / "benchmarks" / "out" / name
    rows = read_rows(str(path))
    n_lines = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    assert rows.options is None and len(rows.rows) == n_lines and all("id" in r for r in rows.rows)


def test_evaluate_writes_the_summary_atomically(tiny_att, eval_data, tmp_path, monkeypatch):
    out = tmp_path / "res.json"
    written = []
    real = runner_module.atomic_write_text
    monkeypatch.setattr(runner_module, "atomic_write_text", lambda p, text: written.append(p) or real(p, text))
    evaluate(tiny_att, eval_data, out, limit=1)
    assert str(out) in [str(p) for p in written]
    assert json.loads(out.read_text())["summary"]


@pytest.mark.parametrize(
    "change",
    [dict(k=0), dict(n_masks=0), dict(n_masks=1), dict(max_new_tokens=0), dict(limit=0), dict(methods=()),
     dict(methods=("retriever", "retriever"))],
)
def test_evaluate_checks_its_counts_before_any_work(tiny_att, eval_data, tmp_path, monkeypatch, change):
    seen = count_examples(monkeypatch)
    with pytest.raises(InputError) as e:
        evaluate(tiny_att, eval_data, tmp_path / "res.json", **change)
    one_line_error(e)
    assert seen == [] and not (tmp_path / "res.json").exists()


# -- items 5 and 8: training data, support data, fitting ----------------------------------------------
@pytest.fixture()
def train_data(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", [example(i) for i in range(12)])


def make_training(att, data, out, **kw):
    options = dict(split="train", limit=2, k=3, n_masks=4, max_new_tokens=4, shard_size=1, progress=False)
    options.update(kw)
    return generate_training_data(att, data, out, **options)


@pytest.mark.parametrize(
    "change",
    [dict(n_masks=0), dict(n_masks=1), dict(p_keep=1.5), dict(p_keep=0.0), dict(p_keep=1.0), dict(limit=0),
     dict(shard_size=0), dict(batch_size=0), dict(max_new_tokens=0), dict(k=0), dict(split="tset")],
)
def test_training_data_checks_its_counts(tiny_att, train_data, tmp_path, change):
    with pytest.raises(InputError) as e:
        make_training(tiny_att, train_data, tmp_path / "shards", **change)
    one_line_error(e)
    assert not (tmp_path / "shards").exists()


@pytest.mark.parametrize(
    "change",
    [dict(n_masks=0), dict(p_keep=1.5), dict(limit=0), dict(shard_size=0), dict(batch_size=0),
     dict(configs=((0, "retriever"),)), dict(configs=((3, "sideways"),)), dict(configs=())],
)
def test_support_data_checks_its_counts(tiny_att, train_data, tmp_path, change):
    options = dict(split=None, limit=2, configs=((3, "retriever"),), n_masks=4, shard_size=1, progress=False)
    options.update(change)
    with pytest.raises(InputError) as e:
        generate_support_data(tiny_att, train_data, tmp_path / "shards", **options)
    one_line_error(e)
    assert not (tmp_path / "shards").exists()


def test_an_empty_selection_says_so_instead_of_writing_empty_shards(tiny_att, tmp_path):
    data = write_jsonl(tmp_path / "one.jsonl", [example("only")])
    other = next(s for s in ("train", "validation", "test") if s != split_of("qonly"))
    with pytest.raises(InputError, match="no examples"):
        make_training(tiny_att, data, tmp_path / "a", split=other)
    with pytest.raises(InputError, match="no examples"):
        generate_support_data(tiny_att, data, tmp_path / "b", split=other, configs=((3, "retriever"),),
                              n_masks=4, progress=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_training_on_a_missing_or_empty_folder_names_it(tmp_path, tiny_att, train_data):
    ident = ModelIdentity.of(tiny_att.model)
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        with pytest.raises(InputError, match="no shards in") as e:
            train_estimator(folder, ident, steps=2, log=None)
        assert str(folder) in one_line_error(e) and "train-data" in str(e.value)
    make_training(tiny_att, train_data, tmp_path / "shards")
    with pytest.raises(InputError, match="no shards in .*missing"):
        train_estimator(tmp_path / "shards", ident, validation_dir=tmp_path / "missing", steps=2, log=None)
    with pytest.raises(InputError, match="no shards in"):
        load_records(tmp_path / "missing")


@pytest.mark.parametrize("change", [dict(batch_size=0), dict(steps=0), dict(lr=0.0)])
def test_fit_options_are_checked(change):
    inst = make_instances_stub()
    with pytest.raises(InputError):
        fit_estimator(inst, log=None, **change)


def make_instances_stub():
    from at2_rag.research.fitting import Instances

    g = torch.Generator().manual_seed(0)
    return Instances(torch.rand(4, 6, 3, generator=g), torch.ones(4, 5, 3), torch.rand(4, 5, generator=g), (2, 3))


def test_recipes_record_the_data_file_name_and_hash_not_its_path(tiny_att, train_data, tmp_path):
    sha = hashlib.sha256(train_data.read_bytes()).hexdigest()
    make_training(tiny_att, train_data, tmp_path / "shards")
    recipe = json.loads((tmp_path / "shards" / "recipe.json").read_text())
    assert recipe["data"] == "train.jsonl" and recipe["data_sha256"] == sha
    assert str(tmp_path) not in (tmp_path / "shards" / "recipe.json").read_text()
    est, _ = train_estimator(tmp_path / "shards", ModelIdentity.of(tiny_att.model), steps=2, log=None)
    assert est.recipe["data"]["data"] == "train.jsonl" and est.recipe["data"]["data_sha256"] == sha
    generate_support_data(tiny_att, train_data, tmp_path / "support", split=None, limit=2,
                          configs=((3, "retriever"),), n_masks=4, shard_size=1, progress=False)
    support = json.loads((tmp_path / "support" / "recipe.json").read_text())
    assert support["data"] == "train.jsonl" and support["data_sha256"] == sha


def test_shard_folders_from_before_the_hash_still_resume(tiny_att, train_data, tmp_path):
    out = tmp_path / "shards"
    make_training(tiny_att, train_data, out)
    manifest = out / "recipe.json"
    old = json.loads(manifest.read_text())
    old["data"] = str(train_data.resolve())  # what older versions stored: the absolute path, no hash
    del old["data_sha256"]
    manifest.write_text(json.dumps(old, indent=1, sort_keys=True))
    shards = make_training(tiny_att, train_data, out, limit=3)  # resumes and adds one
    assert len(shards) == 3
    assert json.loads(manifest.read_text())["data"] == "train.jsonl"
    # With the hash recorded, other contents under the same name are refused.
    write_jsonl(train_data, [example(i, question=f"Changed {i}?") for i in range(12)])
    with pytest.raises(InputError, match="another recipe"):
        make_training(tiny_att, train_data, out, limit=3)


def test_a_rows_file_with_only_its_header_takes_the_new_options(tiny_att, eval_data, tmp_path):
    out = tmp_path / "res.json"
    rows_path = Path(str(out) + ".rows.jsonl")
    evaluate(tiny_att, eval_data, out, limit=1)
    rows_path.write_text(rows_path.read_text().splitlines(keepends=True)[0])  # a crash before the first row
    evaluate(tiny_att, eval_data, out, limit=1, k=2)  # nothing to mix: no refusal
    stored = read_rows(str(rows_path))
    assert stored.options["k"] == 2 and [r["id"] for r in stored.rows] == ["q0"]
