"""API models: the one source of truth for the CRDs (pure, no I/O)."""
