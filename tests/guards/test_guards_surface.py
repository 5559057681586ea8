"""The public surface of `guards`: what the proxy and other users import from it."""

import ast
import subprocess
import sys
import types
from pathlib import Path

import guards

ROOT = Path(__file__).resolve().parents[2]

# The guards, what they answer, the backends that run them and what can go wrong; the
# types of their public fields and return values with them. Prompts, parsing and context
# fitting are internals, imported from their modules.
PUBLIC = {
    "FlexGuard",
    "ReasoningShield",
    "GrowingChecks",
    "GuardModelConfig",
    "BackendKind",
    "Verdict",
    "Stage",
    "GuardName",
    "CacheResult",
    "FLEXGUARD_CATEGORIES",
    "VerdictCache",
    "GuardBackend",
    "ChatPrompt",
    "ChatMessage",
    "Generation",
    "open_backend",
    "ScriptedBackend",
    "GuardError",
    "GuardBackendError",
    "GuardTimeout",
    "GuardUnreachable",
    "VerdictParseError",
    "VerdictTruncated",
}


def test_all_is_the_public_surface():
    assert set(guards.__all__) == PUBLIC
    assert len(guards.__all__) == len(set(guards.__all__))
    for name in guards.__all__:
        assert hasattr(guards, name), name


def test_the_package_exports_nothing_beyond_all():
    """As httpx checks its own: every public name at the top level is in ``__all__``
    (submodules aside), so nothing internal leaks into ``from guards import ...``."""
    exported = {
        name
        for name, value in vars(guards).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType) and name != "annotations"
    }
    assert exported == set(guards.__all__)


def _names_imported_from_guards(package: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "guards" and node.level == 0:
                for alias in node.names:
                    found.setdefault(alias.name, []).append(str(path.relative_to(ROOT)))
    return found


def test_the_proxy_imports_only_the_public_surface():
    """What ``proxy/`` takes from ``guards`` itself is public; an internal it needs comes
    from its underscore module (``from guards._parse import ...``), in plain sight."""
    imported = _names_imported_from_guards("proxy")
    internal = {name: where for name, where in imported.items() if name not in PUBLIC and not name.startswith("_")}
    assert not internal, internal
    assert {"FlexGuard", "ReasoningShield", "Verdict", "GuardError", "open_backend"} <= set(imported)


def test_categories():
    assert list(guards.FLEXGUARD_CATEGORIES) == ["VIO", "ILG", "SEX", "INF", "DIS", "MIS", "JAIL"]


def test_exception_tree():
    assert issubclass(guards.GuardTimeout, guards.GuardBackendError)
    assert issubclass(guards.GuardBackendError, guards.GuardError)
    assert issubclass(guards.VerdictParseError, guards.GuardError)
    # A cut answer is a guard error of the parse kind (the guard answered), not an outage.
    assert issubclass(guards.VerdictTruncated, guards.VerdictParseError)
    assert not issubclass(guards.VerdictTruncated, guards.GuardBackendError)


def test_import_is_light():
    # Heavy engines load only when a backend that needs them is opened.
    code = "import guards, sys; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'vllm'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_backends_implement_the_protocol():
    from guards.backends._openai import OpenAIBackend

    assert isinstance(guards.ScriptedBackend(lambda p: ""), guards.GuardBackend)
    assert isinstance(OpenAIBackend(guards.GuardModelConfig(model="m")), guards.GuardBackend)
