"""Guard backends: one small async interface, several ways to run a guard model.

``open_backend(config)`` picks one; ``ScriptedBackend`` answers from a test's script.
The in-process backends (transformers, vllm) import their heavy packages only when
opened.
"""

from ._base import ChatMessage, ChatPrompt, Generation, GuardBackend
from ._factory import open_backend
from ._render import render_chat, tokenize_rendered
from ._scripted import ScriptedBackend

__all__ = [
    "ChatMessage",
    "ChatPrompt",
    "Generation",
    "GuardBackend",
    "ScriptedBackend",
    "open_backend",
    "render_chat",
    "tokenize_rendered",
]
