"""The docs, kept in step with the code: links resolve, every config option is documented,
and what users read speaks of the product only."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import msgspec
import pytest

from proxy._config import ProxyConfig, UpstreamConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *DOCS]
CONFIGURATION = ROOT / "docs" / "configuration.md"

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_LINK = re.compile(r"(?<!\\)\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _links(path: Path) -> list[str]:
    return _LINK.findall(_prose(path.read_text()))


def test_the_docs_exist_and_the_readme_is_short() -> None:
    names = {p.name for p in DOCS}
    for name in (
        "architecture.md",
        "configuration.md",
        "security.md",
        "performance.md",
        "operations.md",
        "deploy.md",
        "design-decisions.md",
    ):
        assert name in names
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]


def test_the_link_walk_finds_links_and_anchors() -> None:
    assert "docs/configuration.md" in _links(ROOT / "README.md")
    assert "what-is-screened" in _anchors(ROOT / "docs" / "security.md")
    assert _slug("[[tenants]]") == "tenants"
    assert _slug("Docker Compose: one host, one 80 GB GPU") == "docker-compose-one-host-one-80-gb-gpu"
    assert _slug("The guards' compute") == "the-guards-compute"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in _links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert broken == []


def _options(struct: type[msgspec.Struct], prefix: str = "") -> list[tuple[str, str]]:
    """(table, option) for every option of the config, as written in TOML."""
    out = []
    for field in msgspec.structs.fields(struct):
        table = f"{prefix}.{field.encode_name}" if prefix else field.encode_name
        element = typing.get_args(field.type)[0] if typing.get_origin(field.type) is list else None
        if table == "tenants.policy":
            out.append(("tenants", "policy"))  # the [policy] table again
        elif isinstance(field.type, type) and issubclass(field.type, msgspec.Struct):
            out += _options(field.type, table)
        elif isinstance(element, type) and issubclass(element, UpstreamConfig):
            # An [[upstreams]] entry is [upstream] again with a name, its models and where it is.
            own = {f.encode_name for f in msgspec.structs.fields(element)} - {
                f.encode_name for f in msgspec.structs.fields(UpstreamConfig)
            }
            out += [(table, name) for name in sorted(own | {"base_url", "base_urls"})]
        elif isinstance(element, type) and issubclass(element, msgspec.Struct):
            out += _options(element, table)
        else:
            out.append((prefix, field.encode_name))
    return out


def _documented_options() -> set[tuple[str, str]]:
    """(table, option) for each table row of docs/configuration.md, under the tables its
    heading names (``## [guards.flexguard] and [guards.reasoningshield]`` names two)."""
    documented = set()
    tables: list[str] = []
    for line in _FENCE.sub("", CONFIGURATION.read_text()).splitlines():
        if line.startswith("#"):
            tables = re.findall(r"\[\[?([A-Za-z0-9_.]+)\]\]?", line)
            continue
        row = re.match(r"\|\s*`([A-Za-z0-9_]+)`\s*\|", line)
        if row:
            documented |= {(table, row.group(1)) for table in tables}
    return documented


def test_every_config_option_is_documented() -> None:
    options = _options(ProxyConfig)
    assert len(options) > 100  # the walk reached the leaves of both guards and every table
    documented = _documented_options()
    assert [f"[{table}] {name}" for table, name in options if (table, name) not in documented] == []


def test_the_configuration_page_documents_no_option_the_config_lacks() -> None:
    options = set(_options(ProxyConfig))
    assert sorted(f"[{table}] {name}" for table, name in _documented_options() - options) == []


# Words about how the project was made, not about the product.
_BUILD_HISTORY = re.compile(
    r"issue [0-9]|issue's|issues were silent|outside probe|(?-i:DESIGN)|the probe found|(?<!own )\bsession\b(?!Storage)|\bhelpers?\b(?! read to the end)"
    r"|this project|this work|before this|as before\b",
    re.I,
)


def _user_texts() -> list[Path]:
    bench = sorted((ROOT / "bench").glob("*.py"))
    return [*PAGES, ROOT / "bench" / "README.md", ROOT / "config.example.toml", *bench]


@pytest.mark.parametrize("path", _user_texts(), ids=lambda p: str(p.relative_to(ROOT)))
def test_what_users_read_speaks_of_the_product_only(path: Path) -> None:
    text = path.read_text()
    if path.suffix == ".py":  # bench scripts: the docstrings and help texts, not the code
        text = "\n".join(re.findall(r'"""(.*?)"""', text, re.S) + re.findall(r'help="([^"]*)"', text))
    found = [m.group(0) for m in _BUILD_HISTORY.finditer(text)]
    assert found == []
