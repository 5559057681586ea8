"""The decisions of one guarded request, whatever its API.

- ``_report``: what the pipeline reports about a request (decisions, stage, choice and
  request reports), read by the writers, telemetry and the console; it imports only
  ``guards`` and msgspec;
- ``_observer``: the hooks the pipeline calls while a request runs, which ``ops``
  implements, and how a shutdown reaches a running response;
- ``_relay``: the exchange (one request's inputs and report), the prompt check, the relay
  loop and its release gate, ``ending``, the one place where a stop becomes how the
  request ends, and ``request_outcome``, the one place that names how it ended;
- ``_monitor``: incremental checks of one growing text; ``_channels``: where reasoning
  ends and the answer begins;
- ``_policy``: the one place where a verdict becomes an action;
- ``_guardset``: the checks the pipeline calls, and the bound on the guards' work;
- ``_response``: the ASGI app that writes the pipeline's events through the response's
  writer (the adapter's; how verdicts look on the wire is ``protocols``' business).
"""
