"""Split ablation-data generation: ``shard=(i, n)`` / ``--shard i/n`` and Ray workers give one run's files."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tiny_models import tiny_llama_folder

from at2_rag import AT2Attributor
from at2_rag.app import cli
from at2_rag.errors import InputError
from at2_rag.research.ablation_data import generate_support_data, generate_training_data
from at2_rag.research.data import write_jsonl
from at2_rag.research.shards import parse_shard

OPTIONS = dict(split="train", limit=5, k=3, n_masks=4, max_new_tokens=4, shard_size=2, progress=False)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every shard file and the recipe of ``folder``, by name (temporaries left by a killed writer excluded)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.endswith((".safetensors", ".json"))}


@pytest.fixture(scope="module")
def setup(tokenizer, tmp_path_factory):
    """A tiny random Llama saved as a model folder with the default model's tokenizer, and a JSONL dataset."""
    root = tmp_path_factory.mktemp("distributed")
    tiny_llama_folder(root, tokenizer)
    examples = [
        {"id": f"ex{i}", "question": f"Question {i}?", "answers": ["alpha"],
         "documents": [{"id": f"d{j}", "title": f"T{j}", "text": f"Doc {j} says {i}. More text."} for j in range(3)],
         "gold_document_ids": ["d0"]}
        for i in range(20)
    ]
    data = write_jsonl(root / "data.jsonl", examples)
    att = AT2Attributor.from_pretrained(str(root / "model"), None)
    reference = root / "reference"
    generate_training_data(att, data, reference, **OPTIONS)
    return att, root / "model", data, reference


def test_shards_written_by_two_processes_equal_one_run(setup, tmp_path):
    att, _, data, reference = setup
    assert len(list(reference.glob("shard-*.safetensors"))) == 3  # 5 examples, 2 to a file
    first = generate_training_data(att, data, tmp_path, shard=(0, 2), **OPTIONS)
    assert [p.name for p in first] == ["shard-00000.safetensors", "shard-00002.safetensors"]
    second = generate_training_data(att, data, tmp_path, shard=(1, 2), **OPTIONS)
    assert [p.name for p in second] == ["shard-00001.safetensors"]
    assert folder_bytes(tmp_path) == folder_bytes(reference)


def test_support_data_takes_the_same_shard_option(setup, tmp_path):
    att, _, data, _ = setup
    opts = dict(split="train", limit=3, configs=((2, "retriever"),), n_masks=2, shard_size=1, progress=False)
    whole = generate_support_data(att, data, tmp_path / "whole", **opts)
    for i in range(3):
        generate_support_data(att, data, tmp_path / "split", shard=(i, 3), **opts)
    assert len(whole) == 3 and folder_bytes(tmp_path / "split") == folder_bytes(tmp_path / "whole")


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0), ("a", 2), (1,)])
def test_out_of_range_shards_are_refused_before_any_work(setup, tmp_path, shard):
    att, _, data, _ = setup
    with pytest.raises(InputError, match="shard"):
        generate_training_data(att, data, tmp_path / "out", shard=shard, **OPTIONS)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["1", "1/", "a/2", "3/2", "0/0"])
def test_parse_shard_refuses_malformed_text(text):
    with pytest.raises(InputError, match="shard"):
        parse_shard(text)
    assert parse_shard("1/4") == (1, 4)


def test_cli_shard_option_writes_its_part(setup, tmp_path, capsys):
    _, model_dir, data, reference = setup
    argv = ["train-data", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path), "--limit", "5",
            "--k", "3", "--masks", "4", "--max-new-tokens", "4", "--shard-size", "2"]
    assert cli.main([*argv, "--shard", "1/2"]) == 0
    assert "1 shards" in capsys.readouterr().out
    assert folder_bytes(tmp_path)["shard-00001.safetensors"] == folder_bytes(reference)["shard-00001.safetensors"]
    assert cli.main([*argv, "--shard", "2/2"]) != 0
    assert "out of range" in capsys.readouterr().err


def test_ray_option_without_ray_says_how_to_install(setup, tmp_path, monkeypatch, capsys):
    from at2_rag.research.distributed import generate_with_ray

    _, model_dir, data, _ = setup
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(InputError, match=r'pip install "at2-rag\[ray\]"'):
        generate_with_ray(str(model_dir), data, tmp_path, **OPTIONS)
    argv = ["train-data", "--model", str(model_dir), "--data", str(data), "--out", str(tmp_path), "--ray", "auto"]
    assert cli.main(argv) != 0
    assert 'pip install "at2-rag[ray]"' in capsys.readouterr().err


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local two-CPU Ray cluster whose workers die once, mid-write of a shard, while ``armed`` exists."""
    ray = pytest.importorskip("ray")
    armed = str(tmp_path_factory.mktemp("crash") / "armed")

    def crash_once_when_armed() -> None:
        """In each worker: the first shard save after ``armed`` appears writes half its file, then exits."""
        import os

        from at2_rag.research import shards

        real = shards.save_file

        def save_file(tensors, path, metadata=None):
            real(tensors, path, metadata=metadata)
            try:
                os.rename(armed, armed + ".fired")  # only one worker wins the rename
            except OSError:
                return
            os._exit(1)

        shards.save_file = save_file

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={
        "worker_process_setup_hook": crash_once_when_armed, "env_vars": {"OMP_NUM_THREADS": "1"},
    })
    yield ray, Path(armed)
    ray.shutdown()


@pytest.mark.parametrize("workers", [1, 2])
def test_ray_workers_write_the_single_process_files(setup, ray_cluster, tmp_path, workers):
    from at2_rag.research.distributed import generate_with_ray

    _, model_dir, data, reference = setup
    paths = generate_with_ray(str(model_dir), data, tmp_path, workers=workers, **OPTIONS)
    assert [p.name for p in paths] == sorted(p.name for p in reference.glob("shard-*.safetensors"))
    assert folder_bytes(tmp_path) == folder_bytes(reference)


def test_a_worker_killed_mid_shard_is_retried_to_the_same_files(setup, ray_cluster, tmp_path):
    from at2_rag.research.distributed import generate_with_ray

    _, model_dir, data, reference = setup
    _, armed = ray_cluster
    armed.touch()
    generate_with_ray(str(model_dir), data, tmp_path, workers=2, **OPTIONS)
    assert Path(f"{armed}.fired").exists() and not armed.exists()  # a worker did die mid-write
    assert folder_bytes(tmp_path) == folder_bytes(reference)


def test_ray_workers_write_the_single_process_outcome_shards(setup, ray_cluster, tmp_path):
    """The batched engine's outcome shards (what fit-model makes) spread over Ray equal one process's."""
    from at2_rag.research.distributed import generate_with_ray
    from at2_rag.research.outcomes import generate_outcomes

    att, model_dir, data, _ = setup
    opts = dict(split="train", limit=5, k=3, n_masks=4, max_new_tokens=4, shard_size=2)
    generate_outcomes(att, data, tmp_path / "one", kind="train", progress=False, **opts)
    paths = generate_with_ray(str(model_dir), data, tmp_path / "ray", kind="outcomes", workers=2, **opts)
    assert [p.name for p in paths] == ["shard-00000.jsonl.gz", "shard-00001.jsonl.gz", "shard-00002.jsonl.gz"]
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").iterdir()}
    assert {p.name: p.read_bytes() for p in (tmp_path / "ray").iterdir()} == one


EVAL = dict(split="train", limit=4, k=3, n_masks=4, max_new_tokens=4, progress=False)


def _rows(path: Path) -> dict[str, dict]:
    import json

    return {r["id"]: r["methods"] for r in json.loads(path.read_text())["rows"] if "methods" in r}


def test_evaluate_shards_then_a_plain_run_give_the_single_run_summary(setup, tmp_path):
    from at2_rag.research.evaluation import make_method, run_evaluation

    att, _, data, _ = setup
    methods = [make_method("at2"), make_method("contextcite:4")]
    run_evaluation(att, str(data), methods, str(tmp_path / "one.json"), **EVAL)
    for i in range(2):
        run_evaluation(att, str(data), methods, str(tmp_path / "split.json"), shard=(i, 2), **EVAL)
    assert not (tmp_path / "split.json").exists()  # shards write rows only
    assert len(list(tmp_path.glob("split.json.rows.*-of-2.jsonl"))) == 2
    run_evaluation(att, str(data), methods, str(tmp_path / "split.json"), **EVAL)  # summary only: every row done
    one, split = _rows(tmp_path / "one.json"), _rows(tmp_path / "split.json")
    assert one.keys() == split.keys() and len(one) == 4
    for key in one:
        for name in ("at2", "contextcite:4"):
            assert split[key][name]["lds"] == one[key][name]["lds"]


def test_evaluate_on_ray_workers_gives_the_single_run_rows(setup, ray_cluster, tmp_path):
    from at2_rag.research.distributed import evaluate_with_ray
    from at2_rag.research.evaluation import make_method, run_evaluation

    att, model_dir, data, _ = setup
    specs = ["at2", "contextcite:4"]
    opts = {k: v for k, v in EVAL.items() if k != "progress"}
    assert evaluate_with_ray(str(model_dir), data, specs, str(tmp_path / "ray.json"), estimator=None, workers=2,
                             **opts) == 4
    methods = [make_method(s) for s in specs]
    run_evaluation(att, str(data), methods, str(tmp_path / "ray.json"), **EVAL)
    run_evaluation(att, str(data), methods, str(tmp_path / "one.json"), **EVAL)
    ray_rows, one = _rows(tmp_path / "ray.json"), _rows(tmp_path / "one.json")
    assert ray_rows.keys() == one.keys()
    assert all(ray_rows[i][m]["lds"] == one[i][m]["lds"] for i in one for m in specs)
