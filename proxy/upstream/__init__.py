"""The upstream model servers: which one serves a request (``_router``: routing by
model), the one client that talks to each (``_client``: transports, streams, pass-through
requests, the translation of httpx's errors), and the replicas behind one base URL
(``_replicas``: least outstanding, health checks)."""
