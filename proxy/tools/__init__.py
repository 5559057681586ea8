"""Offline tools behind the CLI: ``guardproxy calibrate`` (threshold sweep) and
``guardproxy check``."""
