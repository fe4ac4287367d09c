"""tauforge components (see ../shared/ARCHITECTURE.md)."""
