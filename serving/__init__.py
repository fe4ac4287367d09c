"""tauforge serving (see ../shared/ARCHITECTURE.md)."""
