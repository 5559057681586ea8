"""proxy._config: TOML configuration, validated at start; config.example.toml kept in step."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import msgspec
import pytest

from proxy._config import STRICTNESS_THRESHOLDS, PolicyConfig, ProxyConfig, load_config, parse_config, threshold_of
from proxy.exceptions import ConfigError

EXAMPLE = Path(__file__).resolve().parents[3] / "config.example.toml"


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ('[server]\nport = "8080"', ["`server.port`"]),
        ("[server]\nport = 0", ["`port`", "`server`"]),
        ("[server]\nport = 65536", ["`port`", "`server`"]),
        ("[server]\nmax_body_bytes = 0", ["`max_body_bytes`", "`server`"]),
        ("[server]\nfoo = 1", ["`foo`", "`server`"]),
        ("bar = 1", ["`bar`"]),
        ("[policy.answer]\nspeed = 1", ["`speed`", "`policy.answer`"]),
        ('[policy]\nstrictness = "extreme"', ["`strictness`", "`policy`", "'extreme'"]),
        ("[policy]\nstrictness = 101", ["`strictness`", "`policy`"]),
        ("[policy]\nstrictness = -1", ["`strictness`", "`policy`"]),
        ("[policy]\nstrictness = true", ["`policy.strictness`"]),
        ("[policy]\nstrictness = 40.5", ["`policy.strictness`"]),
        ('[policy]\non_guard_error = "ignore"', ["`policy.on_guard_error`"]),
        ('[policy.reasoning]\nrelease = "later"', ["`policy.reasoning.release`"]),
        ('[policy.answer]\nrelease = "hidden"', ["`policy.answer.release`"]),
        ('[policy.answer]\naction = "drop"', ["`policy.answer.action`"]),
        ('[policy.prompt]\nmode = "after"', ["`policy.prompt.mode`"]),
        ("[policy.reasoning]\ncheck_every_tokens = 0", ["`check_every_tokens`", "`policy.reasoning`"]),
        ("[policy.answer]\ncheck_every_tokens = 0", ["`check_every_tokens`", "`policy.answer`"]),
        ('[upstream]\nbase_url = "ftp://x/v1"', ["`base_url`", "`upstream`"]),
        ('[upstream]\nbase_url = "127.0.0.1:8000"', ["`base_url`", "`upstream`"]),
        ('[upstream]\nauth = "both"', ["`upstream.auth`"]),
        ("[upstream.timeouts]\nread_s = -1", ["`read_s`", "`upstream.timeouts`"]),
        ('[guards.flexguard]\nmodel = ""', ["`model`", "`guards.flexguard`"]),
        ('[guards.reasoningshield]\nmodel = ""', ["`model`", "`guards.reasoningshield`"]),
        ('[guards.flexguard]\nbackend = "onnx"', ["`guards.flexguard.backend`"]),
        ("[guards.flexguard]\nenabled = false", ["`guards.flexguard`"]),
        ("[guards.reasoningshield]\nenabled = false", ["`guards.reasoningshield`"]),
        ("[guards]\ncache_entries = -1", ["`cache_entries`", "`guards`"]),
        ("[guards]\ncache_ttl_s = 0", ["`cache_ttl_s`", "`guards`"]),
        ("[guards]\ncache_ttl_s = inf", ["`cache_ttl_s`", "`guards`"]),
        ('[guards]\ncache_entries = "many"', ["`guards.cache_entries`"]),
        ("[server]\nport = [", ["not valid TOML"]),
        ("[policy.reasoning]\nflag_at = 0.7", ["`flag_at`", "0.5 or 1", "`policy.reasoning`"]),
        ("[policy.reasoning]\nflag_at = 0", ["`flag_at`", "`policy.reasoning`"]),
        ('[policy.reasoning]\nflag_at = "1"', ["`policy.reasoning.flag_at`"]),
    ],
)
def test_parse_config_error_names_the_key(toml: str, names: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(toml, source="my.toml")
    message = str(info.value)
    assert message.startswith("my.toml: ")
    assert "$" not in message  # msgspec's JSON path is turned into TOML keys
    for name in names:
        assert name in message


def test_disabled_guard_without_model_is_fine_when_its_stages_are_off() -> None:
    config = parse_config("[policy.reasoning]\nenabled = false\n[guards.reasoningshield]\nenabled = false\nmodel = ''\n")
    assert not config.guards.reasoningshield.enabled


@pytest.mark.parametrize(
    ("toml", "flag_at"),
    [
        ("", 0.5),  # moderate
        ('[policy]\nstrictness = "strict"', 0.5),
        ('[policy]\nstrictness = "loose"', 1.0),
        ("[policy]\nstrictness = 73", 0.5),  # a number is FlexGuard's: the authors' 0.5
        ("[policy]\nstrictness = 5", 0.5),
        ('[policy]\nstrictness = "loose"\n[policy.reasoning]\nflag_at = 0.5', 0.5),
        ("[policy]\nstrictness = 10\n[policy.reasoning]\nflag_at = 1", 1.0),
    ],
)
def test_reasoning_flag_at_is_read_or_derived(toml: str, flag_at: float) -> None:
    assert parse_config(toml).policy.reasoning_flag_at == flag_at


def test_reasoning_flag_at_per_tenant() -> None:
    config = parse_config(
        "[policy]\nstrictness = 55\n"
        '[[tenants]]\nname = "a"\nkey_sha256 = "' + "a" * 64 + '"\n'
        "[tenants.policy.reasoning]\nflag_at = 1\n"
        '[[tenants]]\nname = "b"\nkey_sha256 = "' + "b" * 64 + '"\n'
        '[tenants.policy]\nstrictness = "loose"\n'
    )
    a, b = config.tenants
    assert config.policy.reasoning_flag_at == 0.5
    assert (a.policy.threshold, a.policy.reasoning_flag_at) == (55, 1.0)
    assert (b.policy.threshold, b.policy.reasoning_flag_at) == (60, 1.0)


def test_empty_config_is_the_default() -> None:
    assert parse_config("") == ProxyConfig()
    assert parse_config(b"") == ProxyConfig()


def test_values_are_read() -> None:
    config = parse_config(
        '[upstream]\nbase_url = "https://api.example.com/v1/"\n'
        "[upstream.timeouts]\nread_s = 0\n"
        "[policy]\nstrictness = 35\n"
        '[policy.answer]\nrelease = "final"\ncheck_every_tokens = 1\n'
    )
    assert config.upstream.base_url == "https://api.example.com/v1"  # trailing slash dropped
    assert config.upstream.timeouts.read_s == 0
    assert config.policy.threshold == 35
    assert config.policy.answer.release == "final"
    assert config.policy.answer.check_every_tokens == 1


@pytest.mark.parametrize(
    ("strictness", "threshold"),
    [("strict", 20), ("moderate", 40), ("loose", 60), (0, 0), (37, 37), (100, 100)],
)
def test_threshold_of(strictness: str | int, threshold: int) -> None:
    assert threshold_of(strictness) == threshold
    assert PolicyConfig(strictness=strictness).threshold == threshold


def test_strictness_names_match_the_documented_thresholds() -> None:
    assert STRICTNESS_THRESHOLDS == {"strict": 20, "moderate": 40, "loose": 60}


@pytest.mark.parametrize("strictness", [101, -1, True, False, "Strict", "", "40"])
def test_threshold_of_rejects(strictness: object) -> None:
    with pytest.raises(ValueError, match="strictness"):
        threshold_of(strictness)  # type: ignore[arg-type]


def test_load_config_of_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_load_config_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[policy]\nstrictness = 'x'\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")


def test_load_config_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[policy]\nstrictness = "loose"\n')
    assert load_config(path).policy.threshold == 60
    assert load_config(str(path)).policy.threshold == 60


# --- config.example.toml ---


def test_example_config_parses_to_the_defaults() -> None:
    assert load_config(EXAMPLE) == ProxyConfig()


def _example_sections() -> dict[str, str]:
    sections: dict[str, list[str]] = {"": []}
    current = ""
    for line in EXAMPLE.read_text().splitlines():
        # Tables and arrays of tables, also commented out ("# [[tenants]]").
        header = re.fullmatch(r"\s*(?:# )?\[\[?([A-Za-z0-9_.]+)\]\]?\s*", line)
        if header:
            current = header.group(1)
            sections.setdefault(current, [])
        else:
            sections[current].append(line)
    return {name: "\n".join(lines) for name, lines in sections.items()}


def _options(struct: type[msgspec.Struct], prefix: str = "") -> list[tuple[str, str]]:
    """(section, option) for every leaf option, recursing into nested structs."""
    out = []
    for field in msgspec.structs.fields(struct):
        section = f"{prefix}.{field.encode_name}" if prefix else field.encode_name
        element = typing.get_args(field.type)[0] if typing.get_origin(field.type) is list else None
        if section == "tenants.policy":
            # A tenant's policy is the [policy] table again: its header is the doc.
            out.append(("tenants", "[tenants.policy]"))
        elif section == "upstreams":
            # An entry is [upstream] again with a name, its models and where it is.
            out += [("upstreams", name) for name in ("name", "models", "base_url", "base_urls")]
        elif isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            out += _options(field.type, section)
        elif isinstance(element, type) and issubclass(element, msgspec.Struct):
            out += _options(element, section)
        else:
            out.append((prefix, field.encode_name))
    return out


def test_example_config_documents_every_option() -> None:
    sections = _example_sections()
    options = _options(ProxyConfig)
    assert len(options) > 30  # the walk reached the leaves
    missing = []
    for section, name in options:
        body = sections.get(section)
        if name.startswith("["):
            documented = name[1:-1] in sections
        else:
            documented = body is not None and re.search(rf"^#? ?{re.escape(name)} =", body, re.MULTILINE)
        if not documented:
            missing.append(f"[{section}] {name}")
    assert missing == []


def test_example_config_has_no_section_the_config_lacks() -> None:
    sections = {s for s in _example_sections() if s}
    known = {section for section, _ in _options(ProxyConfig)} | {"tenants.policy", "tenants.policy.answer"}
    assert sections <= known


def test_a_cap_the_guard_has_no_output_for_is_refused() -> None:
    from proxy._config import ProxyConfig

    doc = {"guards": {"flexguard": {"model": "f", "structured_output": True, "max_analysis_tokens": 8}}}
    with pytest.raises(msgspec.ValidationError, match="FlexGuard has no analysis"):
        msgspec.convert(doc, ProxyConfig)
