"""``at2-rag --help`` without torch: the package's names load on first use, the CLI's modules per command.

Speed itself is measured in ``benchmarks/cli_startup.py``; these tests check the cause (which modules a
help request imports) and that the lazy package still offers every public name.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import at2_rag
from at2_rag import pruning
from at2_rag.app import cli

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")


def _fresh(code: str) -> str:
    """stdout of ``code`` run in a new interpreter (nothing imported yet), from the repository root."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_help_of_every_command_leaves_torch_and_transformers_unloaded():
    loaded = json.loads(_fresh(
        "import json, sys\n"
        "import at2_rag.app.cli as cli\n"
        "parser = cli.build_parser()\n"
        "parser.format_help()\n"
        "for name, p in parser._subparsers._group_actions[0].choices.items():\n"
        "    p.format_help()\n"
        "for argv in (['--help'], ['--version'], ['ask', '--help']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, e.code\n"
        f"print(json.dumps({{m: m in sys.modules for m in {HEAVY!r}}}))\n"
    ).splitlines()[-1])
    assert loaded == {m: False for m in HEAVY}


def test_the_check_is_able_to_see_torch():
    """Guard for the test above: a public name that needs torch does load it in a fresh interpreter."""
    out = _fresh("import sys, at2_rag\nat2_rag.AT2Attributor\nprint('torch' in sys.modules)")
    assert out.split() == ["True"]


def test_every_public_name_resolves_in_a_fresh_interpreter():
    out = _fresh(
        "import at2_rag\n"
        "names = list(at2_rag.__all__)\n"
        "ns = {}\n"
        "exec('from at2_rag import *', ns)\n"
        "missing = [n for n in names if n not in ns or getattr(at2_rag, n) is not ns[n]]\n"
        "print(len(names), missing, sorted(set(names) - set(dir(at2_rag))))\n"
    )
    assert out.split() == [str(len(at2_rag.__all__)), "[]", "[]"]


def test_each_name_is_the_object_its_module_defines():
    for name in at2_rag.__all__:
        module = importlib.import_module(_exports()[name], "at2_rag")
        assert getattr(at2_rag, name) is getattr(module, name), name


def _exports() -> dict[str, str]:
    """The package's name → module table (read from the source, so the test needs no private import)."""
    tree = ast.parse((ROOT / "at2_rag" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "_EXPORTS":
            return ast.literal_eval(node.value)
    raise AssertionError("at2_rag/__init__.py has no _EXPORTS table")


def _type_checking_imports() -> dict[str, str]:
    """name → module of the imports under ``if TYPE_CHECKING:`` in the package's ``__init__``."""
    tree = ast.parse((ROOT / "at2_rag" / "__init__.py").read_text(encoding="utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING")
    return {alias.asname or alias.name: "." * node.level + (node.module or "")
            for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names}


def test_the_lazy_table_the_type_checkers_view_and_all_agree():
    exports, static = _exports(), _type_checking_imports()
    assert set(exports) == set(at2_rag.__all__)
    assert static == exports  # the same name from the same module, for type checkers as at run time


def test_an_unknown_name_is_an_attribute_error_and_submodules_still_resolve():
    with pytest.raises(AttributeError, match="has no attribute 'no_such_name'"):
        at2_rag.no_such_name  # noqa: B018
    assert not hasattr(at2_rag, "_private_thing")
    assert at2_rag.sentences.split_sentences is at2_rag.split_sentences


def test_the_cli_offers_the_pruning_modes():
    assert tuple(cli.MODE_CHOICES) == tuple(pruning.MODES)


@pytest.mark.parametrize(("argv", "message"), [
    (["ask", "Q?", "--corpus", ".", "--top-k", "0"], "argument --top-k"),
    (["ask", "Q?", "--corpus", ".", "--refine", "1"], "argument --refine"),
    (["ask", "Q?", "--corpus", ".", "--mode", "nope"], "invalid choice: 'nope'"),
    (["train-data", "--data", "x", "--out", "y", "--p-keep", "1.5"], "argument --p-keep"),
    (["ask", "Q?", "--corpus", ".", "--top-k", "two"], "must be a whole number, got 'two'"),
])
def test_the_deferred_argument_checks_still_refuse_bad_values(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err
