"""Operating the proxy: telemetry (traces, metrics, the request log), start-up checks,
graceful shutdown, and uvicorn's HTTP protocol with OpenAI-shaped 400s."""
