"""The shipped estimators say how they were made without naming any machine's paths."""

from __future__ import annotations

import json

import pytest

from at2_rag import Estimator
from at2_rag.estimator import SHIPPED_ESTIMATORS, installed_names


def test_the_default_models_estimators_are_installed():
    assert set(SHIPPED_ESTIMATORS) <= set(installed_names())


@pytest.mark.parametrize("name", installed_names())
def test_recipes_name_files_not_paths(name):
    recipe = Estimator.load(name).recipe
    assert recipe, "a shipped estimator records its recipe"
    text = json.dumps(recipe)
    assert "/tmp/" not in text and "/home/" not in text and "/work/" not in text and "\\\\" not in text
    data = recipe.get("data", {})
    if isinstance(data, dict) and "data" in data:
        assert "/" not in data["data"], data["data"]


@pytest.mark.parametrize("name", ["qwen2.5-coder-0.5b", "qwen2.5-coder-0.5b-query", "qwen2.5-coder-0.5b-support"])
def test_the_05b_estimators_are_made_for_the_05b_layout(name):
    """Qwen2.5-Coder-0.5B's GGUF header: 24 layers of 14 heads, a 151,936-token vocabulary; where the model
    is fetched, its identity read from the config must match too."""
    from at2_rag import ModelIdentity
    from at2_rag.errors import ModelNotAvailableError
    from at2_rag.models import model_identity

    est = Estimator.load(name)
    assert est.model.mismatch(ModelIdentity("Qwen2ForCausalLM", 24, 14, 151936)) is None
    assert est.kind == ("answer" if name == "qwen2.5-coder-0.5b" else "query")
    if name.endswith("-support"):  # a support estimator says so, and carries the rank weight Pruner fuses
        assert est.recipe["target"] == "reference answer (support)"
        assert est.recipe["fusion"]["rank_weight"] > 0
    try:
        ident = model_identity("qwen2.5-coder-0.5b")
    except ModelNotAvailableError:
        return
    assert est.model.mismatch(ident) is None
