"""The one client that talks to the upstream model server (``_client``): transports,
streams, pass-through requests, and the translation of httpx's errors."""
