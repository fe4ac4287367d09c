"""Prometheus metrics with model, version and role labels (KServe's own carry no version), on
the registry KServe's server exposes at /metrics."""

from prometheus_client import Counter, Histogram

LABELS = ("model", "version", "role")

REQUESTS = Counter("tauforge_requests", "Requests answered, by the model version that answered", LABELS)
ROWS = Counter("tauforge_rows", "Rows scored", LABELS)
ERRORS = Counter("tauforge_errors", "Requests that failed", (*LABELS, "kind"))
LATENCY = Histogram("tauforge_request_latency_seconds",
                    "Seconds from a parsed request to its answer (a shadow: its scoring)", LABELS,
                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
SHADOW_DISAGREEMENT = Histogram(
    "tauforge_shadow_disagreement", "Absolute difference of champion and shadow CATE per row", LABELS,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
SHADOW_ACTION_DISAGREEMENT = Counter("tauforge_shadow_action_disagreements",
                                     "Rows where champion and shadow recommend different actions", LABELS)
