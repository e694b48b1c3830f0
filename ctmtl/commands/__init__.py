"""Sub-commands of the ``ctmtl`` CLI (one module each)."""
