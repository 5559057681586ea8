"""Operating the proxy: telemetry (traces, metrics, the request log), the dependencies'
readiness (``_readiness``: at start and for ``/readyz``), the guards opened at start
(``_open_guards``), the garbage collector tuned once started (``_heap``), live reload,
graceful shutdown, workers, and uvicorn's HTTP protocol with OpenAI-shaped refusals."""
