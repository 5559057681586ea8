"""Live reload: the config file read again (SIGHUP, or the console's reload), validated
whole, then swapped in at once.

What changes live: ``[policy]`` and ``[[tenants]]`` (strictness, thresholds, actions,
release modes, shadow mode...), the keys (``server.api_keys_env`` and the tenants'
keys, read again from the environment), ``[endpoints]``, and the request log's switches
(``telemetry.log_requests``, ``telemetry.log_message_text``). Everything else was built
into the running process (the listening socket, the limits and the guard queue of
``[server]``, the upstream connections and their health checks, the guard backends,
the tracer, the ``/metrics`` route...): a reload that changes it says so in its result
and its log line, and keeps the running value until a restart.

Requests in flight finish under the config they started with: a request reads
``state.config`` and ``state.keyring`` once, before its first ``await``, and keeps its
policy, upstream and telemetry objects to its end. The swap below assigns both with no
``await`` between them or anywhere in a reload, so a request sees the old pair or the
new one, never half of each, and two reloads never interleave.

With ``serve --workers N`` the supervisor checks the file too and passes SIGHUP to every
worker (ops/_workers.py); a reload asked of one worker (the console) asks the
supervisor, so that all of them reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from .._auth import KeyRing, check_secrets
from .._config import ProxyConfig, _keypath, load_config
from ..exceptions import ConfigError
from ._logging import RequestLog

__all__ = [
    "LIVE_OPTIONS",
    "SUPERVISOR_PID_ENV",
    "ConfigSource",
    "ReloadResult",
    "hangup_held",
    "listen_for_hangup",
    "live_config",
    "reload",
    "reload_now",
]

logger = logging.getLogger("guardproxy")

# The options a reload applies; every other one keeps its running value until a restart.
LIVE_OPTIONS = (
    "policy",
    "tenants",
    "endpoints",
    "server.api_keys_env",
    "telemetry.log_requests",
    "telemetry.log_message_text",
)

# Set by the supervisor for its workers: the process to ask for a reload of all of them.
SUPERVISOR_PID_ENV = "GUARDPROXY_SUPERVISOR_PID"


class ConfigSource:
    """Where the running config came from, to be read again: a file, and with ``serve``
    the command line's flags laid over it (``load``; picklable, for the workers)."""

    def __init__(self, path: str | os.PathLike[str], load: Callable[[], ProxyConfig] | None = None) -> None:
        self.path = str(Path(path))
        self._load = load

    def load(self) -> ProxyConfig:
        return self._load() if self._load is not None else load_config(self.path)


class ReloadResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a reload did. ``changed``: the options now in effect with a new value;
    ``kept``: options the file changes that only a restart applies (their running value
    stays); ``error``: why nothing changed (the running config stays whole). Option
    names only, never values: a tenant's key digest or a variable's content is not
    repeated here."""

    ok: bool
    source: str | None = None
    changed: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()
    error: str | None = None

    def message(self) -> str:
        """The log line's text."""
        where = f" from {self.source}" if self.source else ""
        if not self.ok:
            return f"config reload{where} failed; the running config is unchanged: {self.error}"
        text = f"config reloaded{where}: " + (f"changed {', '.join(self.changed)}" if self.changed else "no change")
        if self.kept:
            text += f"; kept until a restart (cannot change live): {', '.join(self.kept)}"
        return text


def live_config(running: ProxyConfig, new: ProxyConfig, source: str = "config") -> tuple[ProxyConfig, list[str], list[str]]:
    """``running`` with ``new``'s live options, validated as a whole; and the option
    paths that changed live and that were kept. Raises ConfigError."""
    old_doc = msgspec.to_builtins(running)
    new_doc = msgspec.to_builtins(new)
    changed: list[str] = []
    kept: list[str] = []
    for path in _diff(old_doc, new_doc):
        (changed if _is_live(path) else kept).append(path)
    doc = copy.deepcopy(old_doc)
    for option in LIVE_OPTIONS:
        *tables, key = option.split(".")
        target, given = doc, new_doc
        for name in tables:
            target, given = target[name], given[name]
        target[key] = copy.deepcopy(given[key])
    try:
        effective = msgspec.convert(doc, ProxyConfig)
    except msgspec.ValidationError as exc:  # the new policy does not fit what is kept (its guards)
        raise ConfigError(f"{source}: {_keypath(str(exc))} (with the running, kept options)") from exc
    return effective, changed, kept


def _is_live(path: str) -> bool:
    return any(path == o or path.startswith((f"{o}.", f"{o}[")) for o in LIVE_OPTIONS)


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted paths of the leaves that differ; lists of named tables by name."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            out += _diff(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    if _named(old) and _named(new):
        olds = {t["name"]: t for t in old}
        news = {t["name"]: t for t in new}
        out = []
        for name in list(olds) + [n for n in news if n not in olds]:
            if name not in olds or name not in news:
                out.append(f"{prefix}[{name}]")
            else:
                out += _diff(olds[name], news[name], f"{prefix}[{name}]")
        return out
    return [] if old == new else [prefix]


def _named(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in value)


def check_reload(running: ProxyConfig, source: ConfigSource, opened: set[str]) -> tuple[ProxyConfig, KeyRing, ReloadResult]:
    """The config and keys a reload would put in place, and its result; raises
    ConfigError when the file, or the file with what is kept, is not valid."""
    from .._app import guards_needed  # the app imports this module's users

    try:
        new = source.load()
    except (OSError, ValueError, msgspec.DecodeError) as exc:  # the file vanished or changed under a flag check
        raise ConfigError(f"{source.path}: {exc}") from exc
    effective, changed, kept = live_config(running, new, source.path)
    missing = [g for g, on in guards_needed(effective).items() if on and g not in opened]
    if missing:
        raise ConfigError(
            f"{source.path}: the policy needs guards.{missing[0]}, which this process did not open at start "
            "(guards cannot be added live): restart to apply it"
        )
    check_secrets(effective)
    keyring = KeyRing.from_config(effective)
    return effective, keyring, ReloadResult(ok=True, source=source.path, changed=tuple(changed), kept=tuple(kept))


def reload_now(state: Any, *, ask_supervisor: bool = False) -> ReloadResult:
    """Read the config again and apply it to the app's ``state``, or keep the running
    one whole and say why. Logs the result. Never awaits (see the module docstring)."""
    source: ConfigSource | None = state.get("config_source")
    if source is None:
        result = ReloadResult(
            ok=False, error="the proxy was started without a config file (serve --config): nothing to read again"
        )
        logger.warning("guardproxy (pid %d): %s", os.getpid(), result.message())
        return result
    try:
        config, keyring, result = check_reload(state.config, source, set(state.get("guard_backends") or ()))
    except ConfigError as exc:
        result = ReloadResult(ok=False, source=source.path, error=str(exc).removeprefix(f"{source.path}: "))
        logger.warning("guardproxy (pid %d): %s", os.getpid(), result.message())
        return result
    state.config = config
    state.keyring = keyring
    telemetry = state.get("telemetry")
    if telemetry is not None:
        telemetry.config = config.telemetry
        telemetry.log = RequestLog(message_text=config.telemetry.log_message_text) if config.telemetry.log_requests else None
    (logger.warning if result.kept else logger.info)("guardproxy (pid %d): %s", os.getpid(), result.message())
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if ask_supervisor and supervisor:
        os.kill(int(supervisor), signal.SIGHUP)  # it checks the file and passes the signal to every worker
    return result


async def reload(state: Any) -> ReloadResult:
    """The console's reload: as SIGHUP, and with several workers all of them reload."""
    return reload_now(state, ask_supervisor=True)


@contextlib.contextmanager
def hangup_held() -> Iterator[None]:
    """Hold SIGHUP until a handler is in place: its default action ends the process, and
    the mask is inherited by the processes started from here (the workers). The mask
    before it is restored when the block ends, so that a serve that returns (or fails
    to start) leaves no signal held for what runs after it in the same process."""
    if not hasattr(signal, "SIGHUP"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def listen_for_hangup(state: Any) -> None:
    """Reload on SIGHUP from now on (the main thread's running loop), then take a SIGHUP
    that arrived while it was held."""
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_now, state)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
