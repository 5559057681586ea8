"""The public surface the proxy imports from `guards`."""

import subprocess
import sys

import guards

PROXY_NAMES = {
    "Verdict",
    "Stage",
    "GuardModelConfig",
    "FlexGuard",
    "ReasoningShield",
    "GuardBackend",
    "ChatPrompt",
    "ChatMessage",
    "Generation",
    "open_backend",
    "ScriptedBackend",
    "GuardError",
    "GuardBackendError",
    "GuardTimeout",
    "VerdictParseError",
    "FLEXGUARD_CATEGORIES",
    "VerdictCache",
}


def test_public_surface_is_exported():
    assert PROXY_NAMES <= set(guards.__all__)
    for name in guards.__all__:
        assert hasattr(guards, name), name


def test_all_lists_only_public_names():
    assert all(not n.startswith("_") for n in guards.__all__)
    assert len(guards.__all__) == len(set(guards.__all__))


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
    code = (
        "import guards, sys; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'vllm'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_backends_implement_the_protocol():
    from guards.backends._openai import OpenAIBackend

    assert isinstance(guards.ScriptedBackend(lambda p: ""), guards.GuardBackend)
    assert isinstance(OpenAIBackend(guards.GuardModelConfig(model="m")), guards.GuardBackend)
