"""tauforge pipelines (see ../shared/ARCHITECTURE.md)."""
