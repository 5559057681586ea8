"""How to reach one guard model: the typed config the proxy reads from TOML."""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["BackendKind", "GuardModelConfig"]

BackendKind = Literal["openai", "vllm", "transformers"]


class GuardModelConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One guard model and the backend that runs it.

    ``openai``: a ``vllm serve`` (or any OpenAI-compatible) server at ``base_url``.
    ``vllm``: an in-process vLLM engine loading ``model`` (a path or hub id).
    ``transformers``: an in-process Hugging Face model, for CPU and small models.
    """

    enabled: bool = True
    backend: BackendKind = "openai"
    model: str = ""
    base_url: str = "http://127.0.0.1:8001/v1"
    # Replicas of the guard server (openai backend; base_url: the first). The proxy
    # balances checks over them and retries a refused connection on another replica
    # within the check's deadline.
    base_urls: list[str] = msgspec.field(default_factory=list)
    # Name of the environment variable holding the guard server's API key; the key
    # itself never appears in config files, logs or errors.
    api_key_env: str | None = None
    # Deadline of one check, retries included (seconds).
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    max_retries: int = 2
    max_tokens: int | None = None  # None: the model card's value (2048 / 1024)
    # Constrain the verdict lines with vLLM structured outputs so that they always parse.
    structured_output: bool = False
    # Cap FlexGuard's <think> block at about this many tokens (None: uncapped); needs
    # structured_output, see guards/_structured.py. The guard's costliest output: a
    # trade of check time and guard compute against the verdicts the model was
    # evaluated with (a cut reasoning may change the verdict).
    max_thinking_tokens: int | None = None
    # The same for ReasoningShield's "Analysis" (its output before the Judgment). Unset:
    # max_thinking_tokens, which then caps the analysis too.
    max_analysis_tokens: int | None = None
    # In-process backends.
    device: str = "auto"
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.4
    max_batch_size: int = 8
    # The guard's context in tokens. In-process backends start their engine with it; for
    # a guard server it caps what the server lists (GET /v1/models), or stands in where
    # the server lists none (unset there: 32768). Every check's prompt fits it: a longer
    # text is screened in overlapping windows (guards/_context.py).
    max_model_len: int | None = None
    # At most this many tokens of judged text per check (unset: as many as fit the
    # context). Smaller windows: more, cheaper checks of long texts, nearer the lengths
    # the guard was trained on.
    window_tokens: int | None = None

    @property
    def replica_urls(self) -> list[str]:
        """Every replica's base URL; the first is base_url."""
        return self.base_urls or [self.base_url]

    def __post_init__(self) -> None:
        self.base_urls = [u.rstrip("/") for u in self.base_urls]
        if self.base_urls:
            self.base_url = self.base_urls[0]
        if self.enabled and not self.model:
            raise ValueError("`model` is required for an enabled guard")
        if self.timeout_s <= 0:
            raise ValueError("`timeout_s` must be > 0")
        if self.max_retries < 0:
            raise ValueError("`max_retries` must be >= 0")
        for name in ("max_thinking_tokens", "max_analysis_tokens"):
            cap = getattr(self, name)
            if cap is not None:
                if cap <= 0:
                    raise ValueError(f"`{name}` must be > 0")
                if not self.structured_output:
                    raise ValueError(f"`{name}` needs `structured_output = true`")
        if self.structured_output and self.backend == "transformers":
            raise ValueError("`structured_output` needs the openai (vLLM server) or vllm backend")
        for name in ("max_model_len", "window_tokens"):
            value = getattr(self, name)
            if value is not None and value < 256:
                raise ValueError(f"`{name}` must be >= 256")
        if self.max_batch_size < 1:
            raise ValueError("`max_batch_size` must be >= 1")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError("`gpu_memory_utilization` must be in (0, 1]")
