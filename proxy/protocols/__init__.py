"""One adapter per generation API: chat completions (``.chat``), the Responses API
(``.responses``), legacy completions (``.completions``).

Each parses its requests, reads its upstream's events into per-output deltas and writes
the pipeline's releases, stops and errors in its own format; the pipeline decides. This
package's top level names only the interface (``_base``), so that the request modules the
adapters build on can import it without a cycle.
"""

from ._base import Adapter, ApiRequest, JsonBuilder, OutputDelta, Turn, UpstreamEvent

__all__ = ["Adapter", "ApiRequest", "JsonBuilder", "OutputDelta", "Turn", "UpstreamEvent"]
