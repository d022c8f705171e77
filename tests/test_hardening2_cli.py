"""Second hardening round, the command line and its files (issue 26: T1, T2, T6, T7, T8, H1, W7, W10,
W11): hostile options, model paths, corpus files, damaged caches and output files give one line (or
one warning and a rebuild), never a traceback, a hang or lost permissions."""

from __future__ import annotations

import json
import os
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from at2_rag import AT2Attributor, Document, models
from at2_rag.app import cli, retrieval
from at2_rag.app.corpus import SkippedFilesWarning, load_folder
from at2_rag.app.retrieval import VectorIndex, cached_index
from at2_rag.errors import AT2Error, DeviceError, InputError, ModelNotAvailableError
from at2_rag.files import atomic_path, atomic_write_text, json_safe

CUDA = torch.cuda.is_available()


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a command gets as far as loading a model: its checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(AT2Attributor, "from_pretrained", classmethod(refuse))


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("at2-rag: error: "), err
    return lines[0]


def run(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    return code, capsys.readouterr().err


@pytest.fixture
def doc_file(tmp_path) -> Path:
    path = tmp_path / "d.txt"
    path.write_text("Kibo is the summit of Kilimanjaro.", encoding="utf-8")
    return path


class _HashEmbedder:
    """Deterministic unit vectors from the text's hash (no model); ``dimension`` as MiniLMEmbedder has it."""

    dimension = 8

    def encode(self, texts):
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(8) for t in texts]
        vecs = np.array(rows, dtype=np.float32)
        return torch.from_numpy(vecs / np.linalg.norm(vecs, axis=1, keepdims=True))


# -- T1: --device and --dtype ------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["foo", "cuda:abc", "cuda:-1", "meta", True, 2.5, ["cpu"]])
def test_unknown_devices_are_device_errors(device):
    with pytest.raises(DeviceError, match="device"):
        models.resolve_device(device)
    with pytest.raises(DeviceError):  # before anything loads
        models.load_model("default", device=device)


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
def test_absent_cuda_is_a_device_error():
    with pytest.raises(DeviceError, match="CUDA is not available"):
        models.resolve_device("cuda:0")
    assert models.parse_device("cuda:1") == torch.device("cuda:1")  # well formed, only absent


@pytest.mark.parametrize("dtype", ["foo", "int8", "uint8", "bool", "float8_e4m3fn", "__class__", torch.int8, 3])
def test_dtypes_a_model_cannot_run_in_are_input_errors(dtype):
    with pytest.raises(InputError, match="unknown dtype"):
        models.resolve_dtype(dtype, torch.device("cpu"))


def test_float_dtypes_and_their_aliases_resolve():
    cpu = torch.device("cpu")
    assert models.resolve_dtype("half", cpu) == torch.float16
    assert models.resolve_dtype(torch.bfloat16, cpu) == torch.bfloat16
    assert models.resolve_dtype("float64", cpu) == torch.float64


@pytest.mark.parametrize("option", [["--dtype", "foo"], ["--dtype", "int8"], ["--device", "foo"],
                                    ["--device", "cuda:abc"], ["--device", "meta"]])
@pytest.mark.parametrize("command", ["attribute", "ask", "evaluate", "demo", "train-data", "fit-model"])
def test_cli_device_and_dtype_are_one_line_before_anything_runs(command, option, doc_file, tmp_path, capsys,
                                                                 no_model):
    argv = {
        "attribute": ["attribute", "Which?", str(doc_file)],
        "ask": ["ask", "Which?", "--corpus", str(tmp_path / "missing")],  # not read: the option fails first
        "evaluate": ["evaluate", "--data", str(doc_file)],
        "demo": ["demo"],
        "train-data": ["train-data", "--data", str(doc_file), "--out", str(tmp_path / "o")],
        "fit-model": ["fit-model", "--data", str(doc_file), "--out", str(tmp_path / "o.safetensors")],
    }[command]
    code, err = run([*argv, *option], capsys)
    line = one_line_error(err)
    assert code == 2 and option[0][2:] in line and repr(option[1]) in line


@pytest.mark.skipif(CUDA, reason="needs a machine without CUDA")
def test_ray_workers_devices_are_not_required_here(tmp_path, capsys, no_model):
    """``train-data --ray``: only the workers load the model, so a GPU absent here is not an error (a
    malformed device still is)."""
    base = ["train-data", "--data", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o"), "--ray", "auto"]
    code, err = run([*base, "--device", "cuda"], capsys)
    assert code == 2 and "does not exist" in one_line_error(err)
    code, err = run([*base, "--device", "cuda:abc"], capsys)
    assert code == 2 and "unknown device 'cuda:abc'" in one_line_error(err)


# -- T2: --model that is not a model -----------------------------------------------------------------
def _bad_model(tmp_path: Path, kind: str) -> Path:
    if kind == "empty folder":
        (tmp_path / "m").mkdir()
        return tmp_path / "m"
    if kind == "folder without weights":
        (tmp_path / "m").mkdir()
        (tmp_path / "m" / "config.json").write_text('{"model_type": "llama"}')
        return tmp_path / "m"
    if kind == "junk .gguf":
        (tmp_path / "m.gguf").write_bytes(b"hello world")  # 11 bytes
        return tmp_path / "m.gguf"
    if kind == "text file":
        (tmp_path / "m.txt").write_text('{"model_type": "llama"}')
        return tmp_path / "m.txt"
    assert kind == "fifo"
    os.mkfifo(tmp_path / "m.gguf")
    return tmp_path / "m.gguf"


@pytest.mark.parametrize("kind, message", [
    ("empty folder", "holds no config.json"), ("folder without weights", "holds no weights"),
    ("junk .gguf", "is not a GGUF model file"), ("text file", "is not a GGUF model file"),
    ("fifo", "is not a regular file"),
])
def test_model_paths_that_hold_no_model_are_one_line(kind, message, tmp_path, doc_file, capsys, no_model):
    path = _bad_model(tmp_path, kind)
    code, err = run(["attribute", "Which?", str(doc_file), "--model", str(path)], capsys)
    assert code == 2 and message in one_line_error(err) and str(path) in err
    with pytest.raises(ModelNotAvailableError, match=message):
        models.load_model(path)


def test_train_model_folder_needs_a_config_not_weights(tmp_path, capsys):
    code, err = run(["train", "--model", str(_bad_model(tmp_path, "empty folder")), "--data", str(tmp_path),
                     "--out", str(tmp_path / "o.safetensors")], capsys)
    assert code == 2 and "holds no config.json" in one_line_error(err)
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "config.json").write_text("{}")  # a config the loader cannot read: one line too
    code, err = run(["train", "--model", str(folder), "--data", str(tmp_path), "--out", str(tmp_path / "o.safetensors")],
                    capsys)
    assert code == 2 and f"model {str(folder)!r} cannot be loaded" in one_line_error(err)


@pytest.mark.parametrize("size", [11, 100, 5000])
def test_truncated_gguf_is_one_line(size, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(models.default_gguf_path().read_bytes()[:size])  # starts with the GGUF magic
    with pytest.raises(ModelNotAvailableError, match="cannot be loaded") as exc:
        models.load_model(path)
    assert "\n" not in str(exc.value)


# -- T6: a corpus file name that is not UTF-8 ------------------------------------------------------------
def test_undecodable_corpus_file_names_are_shown_and_indexed(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    with open(os.path.join(os.fsencode(corpus), b"caf\xe9.txt"), "wb") as fh:
        fh.write(b"Kibo is the summit of Kilimanjaro.")
    docs = load_folder(corpus)
    assert [d.id for d in docs] == ["caf\\xe9.txt#0"] and docs[0].metadata["source"] == "caf\\xe9.txt"
    index = cached_index(docs, tmp_path / "cache", _HashEmbedder())  # was UnicodeEncodeError in the cache key
    assert index.search("Kibo", 1)[0][0].text == docs[0].text
    assert cached_index(docs, tmp_path / "cache", _HashEmbedder()).documents == docs  # and read back


def test_index_cache_survives_surrogates_in_metadata(tmp_path):
    docs = [Document(text="alpha", id="a", metadata={"source": "caf\udce9.txt"})]
    cached_index(docs, tmp_path, _HashEmbedder())
    assert cached_index(docs, tmp_path, _HashEmbedder()).documents == docs


# -- T7: damaged caches ------------------------------------------------------------------------------
def _damage_index(folder: Path, how: str) -> None:
    vectors = folder / "vectors.npy"
    if how == "wrong width":
        np.save(vectors, np.ones((3, 5), dtype=np.float32) / np.sqrt(5))
    elif how == "one dimension":
        np.save(vectors, np.ones(3, dtype=np.float32))
    elif how == "wrong rows":
        np.save(vectors, np.ones((2, 8), dtype=np.float32))
    elif how == "nan":
        np.save(vectors, np.full((3, 8), np.nan, dtype=np.float32))
    elif how == "truncated vectors":
        vectors.write_bytes(vectors.read_bytes()[:40])
    elif how == "no vectors":
        vectors.unlink()
    else:
        assert how == "junk json"
        (folder / "index.json").write_text("{[")


@pytest.mark.parametrize("how", ["wrong width", "one dimension", "wrong rows", "nan", "truncated vectors",
                                 "no vectors", "junk json"])
def test_damaged_index_cache_warns_once_and_is_rebuilt(how, tmp_path):
    docs = [Document(text="alpha"), Document(text="beta"), Document(text="gamma")]
    cached_index(docs, tmp_path, _HashEmbedder())
    [folder] = [p for p in tmp_path.iterdir() if p.is_dir()]
    _damage_index(folder, how)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        index = cached_index(docs, tmp_path, _HashEmbedder())
    messages = [str(w.message) for w in record if "damaged" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0] and str(folder) in messages[0], messages
    assert [index.search(d.text, 1)[0][0].text for d in docs] == ["alpha", "beta", "gamma"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rebuilt cache is whole: no second warning
        assert cached_index(docs, tmp_path, _HashEmbedder()).vectors.shape == (3, 8)


def test_non_finite_or_misshapen_vectors_are_input_errors():
    docs = [Document(text="alpha"), Document(text="beta")]
    for vectors in (np.full((2, 4), np.nan), np.ones(2), np.ones((2, 0)), np.ones((3, 4))):
        with pytest.raises(InputError, match="vectors are unusable"):
            VectorIndex(docs, vectors)


@pytest.mark.parametrize("k", [0, -1, True, 2.5, "3", None])
def test_search_k_below_one_or_not_a_count_is_an_input_error(k):
    index = VectorIndex.build([Document(text="alpha"), Document(text="beta")], _HashEmbedder())
    with pytest.raises(InputError, match="k must be"):
        index.search("alpha", k)
    assert len(index.search("alpha", np.int64(5))) == 2  # more than there are: all of them


def test_search_with_another_embedder_width_is_an_input_error():
    index = VectorIndex(
        [Document(text="alpha")], np.ones((1, 3), dtype=np.float32) / np.sqrt(3), _HashEmbedder()
    )
    with pytest.raises(InputError, match="the embedder gives vectors"):
        index.search("alpha", 1)


def _fake_cache(folder: Path, weights: bytes) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(weights)


def _safetensors_bytes() -> bytes:
    from safetensors.torch import save

    return save({"w": torch.arange(64, dtype=torch.float32)})


def test_safetensors_damage_is_found_from_the_header(tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(_safetensors_bytes())
    assert models.safetensors_damage(path) is None
    real = models._default_cache_folder() / "model.safetensors"
    if real.is_file():
        assert models.safetensors_damage(real) is None  # what the dequantiser writes passes
    whole = path.read_bytes()
    for cut in (whole[:5], whole[:60], whole[:-4], whole + b"x", b"\xff" * 16):
        path.write_bytes(cut)
        assert models.safetensors_damage(path) is not None


def test_truncated_model_cache_warns_once_and_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("AT2_RAG_CACHE", str(tmp_path))
    gguf = models.default_gguf_path()
    folder = models._dequantised_folder(gguf, models.DEFAULT_STEM)
    _fake_cache(folder, _safetensors_bytes()[:-100])  # a copy cut short (disk full, killed cp)
    rebuilt = []

    def dequantise(source: Path, target: Path) -> None:
        assert not target.exists()  # the damaged copy is gone, or it would be kept over the new one
        rebuilt.append(source)
        _fake_cache(target, _safetensors_bytes())

    monkeypatch.setattr(models, "_dequantise", dequantise)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert models._cached_dequantised(gguf, models.DEFAULT_STEM) == folder
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and "damaged" in messages[0] and str(folder) in messages[0], messages
    assert "\n" not in messages[0] and rebuilt == [gguf]
    assert models.safetensors_damage(folder / "model.safetensors") is None
    assert models._cached_dequantised(gguf, models.DEFAULT_STEM) == folder and rebuilt == [gguf]  # once


# -- T8 / H1: devices and FIFOs as a corpus --------------------------------------------------------------
def _returns_within(seconds: float, call, unblock: Path | None = None):
    """``call()``'s result or exception, failing the test if it blocks longer than ``seconds``."""
    box: dict = {}

    def target():
        try:
            box["value"] = call()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock is not None:  # let the blocked reader go: a writer that closes at once
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"blocked for more than {seconds} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


@pytest.mark.parametrize("corpus", ["/dev/zero", "/dev/null", "fifo"])
def test_special_file_as_corpus_is_refused_unread(corpus, tmp_path):
    if corpus == "fifo":
        corpus = str(tmp_path / "fifo")
        os.mkfifo(corpus)
    elif not os.path.exists(corpus):
        pytest.skip(f"no {corpus} here")
    with pytest.raises(InputError, match="is not a folder or a regular file"):
        _returns_within(20, lambda: load_folder(corpus), Path(corpus) if "fifo" in corpus else None)


def test_cli_fifo_corpus_is_one_line(tmp_path, capsys, no_model):
    os.mkfifo(tmp_path / "fifo")
    code, err = _returns_within(20, lambda: run(["ask", "Which?", "--corpus", str(tmp_path / "fifo")], capsys),
                                tmp_path / "fifo")
    assert code == 2 and "not a folder or a regular file" in one_line_error(err.splitlines()[-1])


def test_special_files_inside_the_corpus_are_skipped_unread(tmp_path):
    (tmp_path / "a.txt").write_text("Kibo is the summit of Kilimanjaro.")
    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "zero.txt").symlink_to("/dev/zero")
    with pytest.warns(SkippedFilesWarning) as record:
        docs = _returns_within(20, lambda: load_folder(tmp_path, follow_links=True), tmp_path / "pipe.txt")
    assert [d.metadata["source"] for d in docs] == ["a.txt"]
    assert sorted(record[0].message.skipped) == [("pipe.txt", "not a regular file"),
                                                  ("zero.txt", "not a regular file")]


def test_a_fifo_swapped_in_after_the_walk_is_not_read(tmp_path):
    from at2_rag.app import corpus

    os.mkfifo(tmp_path / "late.txt")
    assert _returns_within(20, lambda: corpus._read_text(tmp_path / "late.txt"), tmp_path / "late.txt") == (
        None, "not a regular file")


# -- W7: escape sequences and bidi controls never reach the terminal ----------------------------------------
HOSTILE_TEXT = "Kibo\x1b]0;pwned\x07 is the \u202esummit\x1b[2J of Kilimanjaro.\u2066"


def test_printable_strips_bidi_controls_and_undecodable_bytes():
    from at2_rag.app.terminal import printable

    assert printable("a\u202eb\u2066c\u200fd\u061ce\x1b[2Jf \udcff") == "abcde[2Jf \\xff"


def test_attribute_without_json_prints_no_control_sequences(attributor, tmp_path, capsys, monkeypatch):
    path = tmp_path / "d.txt"
    path.write_text(HOSTILE_TEXT, encoding="utf-8")
    monkeypatch.setattr(cli, "_attributor", lambda args, estimator=None, **kwargs: attributor)
    code = cli.main(["attribute", "Which\x1b[2J is the summit?", str(path), "--answer", "Kibo\u202e"])
    out = capsys.readouterr().out
    assert code == 0 and "Kibo" in out and "summit" in out
    assert not any(c in out for c in "\x1b\x07\u202e\u2066"), repr(out)


# -- W10: undecodable arguments -----------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["ask", "Q?", "--corpus", "c", "--reference-answer", "Tanz\udcffania", "--json"],
    ["ask", "Where \udcff?", "--corpus", "c"],
    ["attribute", "Where \udcff?", "d.txt"],
    ["attribute", "Where?", "d.txt", "--answer", "Tanz\udcffania"],
])
def test_undecodable_text_arguments_are_refused_by_the_parser(argv, capsys, no_model):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and "is not valid UTF-8 text" in capsys.readouterr().err


def test_json_output_is_always_valid_utf8():
    data = json_safe({"corpus": "caf\udce9", "caf\udce9": ["x\ud800", 1.5]})
    text = json.dumps(data, ensure_ascii=False)
    assert text.encode("utf-8").decode("utf-8") == text  # no lone surrogate left
    assert data == {"corpus": "caf\\xe9", "caf\\xe9": ["x\\ud800", 1.5]}


def test_error_lines_are_one_line_without_controls(monkeypatch, capsys):
    def boom(args):
        raise InputError("first\nsecond \x1b]0;title\x07 caf\udce9")

    monkeypatch.setattr(cli, "cmd_demo", boom)
    code, err = run(["demo"], capsys)
    assert code == 2 and one_line_error(err) == "at2-rag: error: first second ]0;title caf\\xe9"


# -- W11: rewriting a file keeps its mode and its symbolic link -------------------------------------------
def test_rewrite_keeps_the_files_mode(tmp_path):
    path = tmp_path / "estimator.safetensors"
    path.write_bytes(b"old")
    path.chmod(0o600)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o640)
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"newer")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_rewrite_through_a_symlink_writes_its_target(tmp_path):
    target = tmp_path / "store" / "report.html"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o600)
    link = tmp_path / "report.html"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new" and stat.S_IMODE(target.stat().st_mode) == 0o600
    dangling = tmp_path / "later.html"
    dangling.symlink_to(tmp_path / "store" / "later.html")
    with pytest.raises(FileExistsError, match="symbolic link to no regular file"):
        atomic_write_text(dangling, "made")  # only an existing regular file is written through
    assert not (tmp_path / "store" / "later.html").exists()


# -- the argument layer under generated hostile values -------------------------------------------------------
class _Reached(Exception):
    """Raised where a command would start real work (load a model, embed a corpus): the input was accepted."""


_ODD = st.sampled_from([
    "", " ", "-", "--", "0", "-1", "1e400", "nan", "inf", "-inf", "1" * 5000, "[" * 10000, "\x00", "\udcff",
    "caf\udce9", "\x1b[2J", "\u202e", "cuda:abc", "int8", "auto", "cpu", "float16", ".", "/", "/dev/zero",
    "default", "x.gguf", "a/b", "9" * 400, "0x10", "1_000", "²", "１", "True", "None", "{}", "at2:", "1/0",
])
_VALUES = st.one_of(_ODD, st.text(max_size=30), st.integers().map(str), st.floats().map(repr),
                    st.text(st.characters(codec="utf-8"), max_size=8).map(lambda s: s + "\udcff"))
_OPTIONS = {
    "attribute": ["--dtype", "--device", "--model", "--refine", "--granularity", "--estimator", "--answer"],
    "ask": ["--dtype", "--device", "--model", "--top-k", "--keep", "--chunk-words", "--max-new-tokens", "--refine",
            "--reference-answer", "--mode", "--estimator", "--html"],
    "evaluate": ["--dtype", "--device", "--model", "--k", "--limit", "--masks", "--max-new-tokens", "--methods",
                 "--split", "--shard", "--on-error", "--estimator", "--out"],
    "train-data": ["--dtype", "--device", "--model", "--k", "--limit", "--masks", "--p-keep", "--shard-size",
                   "--batch-size", "--seed", "--max-new-tokens", "--shard"],
    "train": ["--model", "--steps", "--batch-size", "--seed", "--kind"],
}


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    (root / "corpus").mkdir()
    (root / "corpus" / "a.txt").write_text("Kibo is the summit of Kilimanjaro.")
    (root / "d.txt").write_text("Kibo is the summit of Kilimanjaro.")
    (root / "data.jsonl").write_text("")
    return {"root": str(root), "corpus": str(root / "corpus"), "doc": str(root / "d.txt"),
            "data": str(root / "data.jsonl")}


def _base(command: str, files: dict[str, str]) -> list[str]:
    root = files["root"]
    return {
        "attribute": ["attribute", "Which?", files["doc"]],
        "ask": ["ask", "Which?", "--corpus", files["corpus"]],
        "evaluate": ["evaluate", "--data", files["data"], "--out", f"{root}/r.json"],
        "train-data": ["train-data", "--data", files["data"], "--out", f"{root}/shards"],
        "train": ["train", "--data", f"{root}/missing", "--out", f"{root}/e.safetensors"],
    }[command]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(command=st.sampled_from(sorted(_OPTIONS)), data=st.data())
def test_hostile_cli_arguments_give_one_line_or_run(command, data, cli_files, monkeypatch, capsys):
    """Whatever the values, the CLI answers with a usage error (exit 2), one ``at2-rag: error:`` line, or
    gets as far as real work (stubbed here), never another exception."""

    def reached(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(cli, "_attributor", reached)
    monkeypatch.setattr(retrieval, "cached_index", reached)
    monkeypatch.setattr(models, "load_model", reached)
    options = data.draw(st.lists(st.sampled_from(_OPTIONS[command]), min_size=1, max_size=4, unique=True))
    argv = _base(command, cli_files)
    for option in options:
        argv += [option, data.draw(_VALUES)]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse: usage and one error line
        assert e.code == 2
        assert capsys.readouterr().err.splitlines()[-1].startswith("at2-rag")
        return
    except _Reached:
        return
    err = capsys.readouterr().err
    if code != 0:
        progress = ("Reading and chunking ", "Indexing ", "Loading ", "Preparing ")
        assert code == 2 and one_line_error("\n".join(ln for ln in err.splitlines() if not ln.startswith(progress)))


def test_property_test_stubs_would_see_real_work(cli_files, monkeypatch, capsys):
    """The stubs above are where real work starts: valid arguments reach them."""

    def reached(*args, **kwargs):
        raise _Reached

    monkeypatch.setattr(cli, "_attributor", reached)
    monkeypatch.setattr(retrieval, "cached_index", reached)
    for command in ("attribute", "ask"):
        with pytest.raises(_Reached):
            cli.main([*_base(command, cli_files), "--dtype", "bfloat16", "--device", "cpu"])
    assert issubclass(InputError, AT2Error)


def test_a_device_or_fifo_is_never_replaced(tmp_path, capsys, no_model):
    fifo = tmp_path / "out.html"
    os.mkfifo(fifo)
    with pytest.raises(FileExistsError, match="not a regular file"):
        with atomic_path(fifo) as tmp:
            tmp.write_text("x")
    assert stat.S_ISFIFO(fifo.stat().st_mode) and [p.name for p in tmp_path.iterdir()] == ["out.html"]
    code, err = run(["demo", "--html", str(fifo)], capsys)
    assert code == 2 and "is not a regular file" in one_line_error(err)


@pytest.mark.parametrize("command", [["attribute", "What?", "README.md"], ["evaluate", "--data", "README.md"],
                                     ["evaluate", "--data", "README.md", "--methods", "at2,at2:{name}", "--estimator"]])
@pytest.mark.parametrize("name", ["default-query", "default-support"])
def test_a_shipped_estimator_name_of_another_kind_is_refused_before_the_model_loads(command, name, capsys, monkeypatch):
    from at2_rag.app import cli as cli_module

    monkeypatch.setattr(cli_module, "_attributor", lambda *a, **k: pytest.fail("the model was loaded"))
    args = [c.format(name=name) for c in command]
    assert cli_module.main([*args, "default"] if args[-1] == "--estimator" else [*args, "--estimator", name]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a 'query' estimator but 'answer' features" in err


def test_a_dangling_or_looping_symlink_is_never_written_through(tmp_path):
    """Following a link whose target does not exist would let whoever planted it pick the file written."""
    from at2_rag.files import atomic_write_text

    victim = tmp_path / "elsewhere" / "victim.txt"
    (tmp_path / "dangling").symlink_to(victim)
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    for name in ("dangling", "loop1"):
        with pytest.raises(FileExistsError, match="symbolic link to no regular file"):
            atomic_write_text(tmp_path / name, "x")
        assert (tmp_path / name).is_symlink()
    assert not (tmp_path / "elsewhere").exists()
