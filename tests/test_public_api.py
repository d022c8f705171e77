"""The public surface and the layering: what ``at2_rag`` exports, and who may import whom.

Layers: the core (``at2_rag/*.py``) imports neither the research code (``at2_rag/research``) nor the
application (``at2_rag/app``); research does not import the application; the integrations import
only ``at2_rag``'s top-level names; no module imports another module's private (``_``) name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import at2_rag

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "at2_rag"
INTEGRATIONS = [
    ROOT / "integrations" / "langchain-at2" / "langchain_at2",
    ROOT / "integrations" / "llama-index-postprocessor-at2" / "llama_index" / "postprocessor" / "at2",
]

EXPECTED_ALL = {
    "AT2Attributor", "AT2Error", "AnswerSentence", "Attribution", "CITATION_POLICY", "Citation",
    "CitedSource", "ContextTooLongError", "DEFAULT_INSTRUCTION", "DEFAULT_POLICY", "DeviceError",
    "Document", "DocumentLike", "Estimator", "EstimatorError", "Granularity", "InputError", "KeepPolicy",
    "LazyAttributor", "MODES", "MiniLMEmbedder", "Mode", "ModelIdentity", "ModelNotAvailableError",
    "Prompt", "PruneResult", "Pruner", "QAResult", "RAGPipeline", "RETRIEVAL_RANK_KEY", "SENTENCE_POLICY", "ScoredSource", "TokenStream", "answer_text", "chat_prompt", "check_encodable", "check_new_tokens", "check_refine_ablations", "greedy_generate",
    "prompt_ids",
    "Source", "UnsupportedModelError", "build_prompt", "cite", "format_context", "fused_scores", "keep_policy",
    "load_model", "split_sentences", "with_markers",
}


def test_all_is_pinned_and_importable():
    """Adding or removing a public name is a deliberate change: update this list with it."""
    assert set(at2_rag.__all__) == EXPECTED_ALL
    assert len(at2_rag.__all__) == len(EXPECTED_ALL), "a name is listed twice in __all__"
    for name in at2_rag.__all__:
        assert hasattr(at2_rag, name), name


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT / "integrations").parts if ROOT / "integrations" in path.parents else path.relative_to(ROOT).parts
    parts = list(rel)
    parts[-1] = parts[-1][:-3]
    return ".".join(p for p in parts if p != "__init__")


def imports(path: Path, module: str) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every import in ``path`` (relative ones resolved)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            out.append((target, [a.name for a in node.names]))
    return out


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "tests" not in p.parts)


def test_the_helper_parses_relative_imports():
    """Guard for the checks below: relative imports resolve to the right absolute modules."""
    found = imports(PACKAGE / "app" / "cli.py", "at2_rag.app.cli")
    targets = {t for t, _ in found}
    assert "at2_rag.research.evaluation" in targets and "at2_rag.app.pipeline" in targets
    assert "at2_rag.attributor" in targets


@pytest.mark.parametrize("path", [p for p in _files(PACKAGE) if p.parent == PACKAGE and p.name != "__init__.py"],
                         ids=lambda p: p.name)
def test_core_imports_neither_research_nor_app(path):
    for target, _ in imports(path, f"at2_rag.{path.stem}"):
        assert not target.startswith(("at2_rag.app", "at2_rag.research")), f"{path.name} imports {target}"


@pytest.mark.parametrize("path", _files(PACKAGE / "research"), ids=lambda p: p.name)
def test_research_does_not_import_the_app(path):
    module = _module_name(path)
    for target, _ in imports(path, module):
        assert not target.startswith("at2_rag.app"), f"{module} imports {target}"


@pytest.mark.parametrize("path", [p for d in INTEGRATIONS for p in _files(d)], ids=lambda p: p.name)
def test_integrations_use_only_the_public_names(path):
    module = _module_name(path)
    for target, names in imports(path, module):
        if target.startswith("at2_rag"):
            assert target == "at2_rag", f"{module} imports {target}; use `from at2_rag import ...`"
            assert set(names) <= set(at2_rag.__all__), f"{module} imports non-public {set(names) - set(at2_rag.__all__)}"


@pytest.mark.parametrize(
    "path",
    _files(PACKAGE) + [p for d in INTEGRATIONS for p in _files(d)] + sorted((ROOT / "benchmarks").glob("*.py")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_private_name_crosses_a_module(path):
    module = _module_name(path)
    for target, names in imports(path, module):
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{module} imports private {private} from {target}"


def test_the_input_rules_integrations_share_are_the_cores():
    """The integrations check surrogates and answer lengths with the core's own rules, not copies."""
    import at2_rag

    assert at2_rag.check_encodable("fine", "the query") == "fine"
    with pytest.raises(at2_rag.InputError, match="the query contains a lone surrogate"):
        at2_rag.check_encodable("x \udcff", "the query")
    assert at2_rag.check_new_tokens(3) == 3
    for bad in (0, True, 2.0):
        with pytest.raises(at2_rag.InputError, match="max_new_tokens must be a positive int"):
            at2_rag.check_new_tokens(bad)
