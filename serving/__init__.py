"""The KServe predictor: scoring a version, canary and shadow routing, the event-log writer and
Prometheus metrics. See docs/design.md."""
