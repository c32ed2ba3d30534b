"""The one module that talks to the Kubernetes API (STYLE.md: only one module does)."""
