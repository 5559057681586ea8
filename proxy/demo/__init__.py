"""``guardproxy demo``: the whole pipeline on a machine with no GPU, shown at work.

Owns the tiny models that ship in ``models/`` (a reasoning upstream, and FlexGuard and
ReasoningShield stand-ins trained to answer in the real formats to a few made-up words:
``_models``), starting them beside the proxy (``_stack``), the start-up display
(``_progress``), and the tour of five scenes through the OpenAI SDK (``_tour``). The
models demonstrate the pipeline, not real moderation. Importing this package is cheap:
vLLM, transformers and the OpenAI SDK are imported when the demo runs.
"""

from ._models import MODELS_DIR
from ._run import run_demo

__all__ = ["MODELS_DIR", "run_demo"]
