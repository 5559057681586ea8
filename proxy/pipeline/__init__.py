"""The decisions of one guarded request, whatever its API.

- ``_relay``: the exchange (one request's state and report), the prompt check, the relay
  loop and its release gate, and ``request_outcome``, the one place that names how a
  request ended;
- ``_monitor``: incremental checks of one growing text; ``_channels``: where reasoning
  ends and the answer begins;
- ``_policy``: the one place where a verdict becomes an action;
- ``_guardset``: the checks the pipeline calls, and the bound on the guards' work;
- ``_annotations`` and ``_categories``: how verdicts reach the client;
- ``_response``: the ASGI app that writes the pipeline's events through the API's adapter.
"""
