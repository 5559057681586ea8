"""One adapter per generation API: chat completions (``.chat``), the Responses API
(``.responses``), legacy completions (``.completions``).

Each parses its requests, reads its upstream's events into per-output deltas, and makes
per response a writer that formats the pipeline's releases, stops and errors in its own
format; the pipeline decides. Verdicts on the wire (Azure-style annotations, category
names, headers) are ``_annotations`` and ``_categories``. This
package's top level names only the interface (``_base``), so that the request modules the
adapters build on can import it without a cycle.
"""

from ._base import Adapter, ApiRequest, JsonBuilder, OutputDelta, ResponseWriter, Turn, UpstreamEvent

__all__ = ["Adapter", "ApiRequest", "JsonBuilder", "OutputDelta", "ResponseWriter", "Turn", "UpstreamEvent"]
