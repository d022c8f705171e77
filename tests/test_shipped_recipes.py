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
