"""Offline tools behind the CLI: ``guardproxy calibrate`` (``_calibrate``: threshold sweep
over a labelled dev set; ``_from_audit``: the same from the audit log's labels) and
``guardproxy check`` (``_check``: one text's verdict)."""
