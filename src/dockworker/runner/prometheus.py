"""The metrics of a process that runs containers (``runner/metering.py`` measures them): under
``dockworker up`` on the API's ``/metrics``; for ``dockworker runner`` (store-attached or remote)
on a port of its own (``--metrics-port``), since it serves no API."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.process_collector import ProcessCollector

# The calls MeteredEngine names (runner/metering.py).
OPERATIONS = ("ping", "create", "start", "attach", "wait", "kill", "remove", "list", "inspect", "usage")
CONTAINER_START_BOUNDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class RunnerMetrics:
    """``dockworker_container_start_seconds`` and ``dockworker_engine_errors_total``: the
    ``EngineMeter`` the runner's engine reports to."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.container_start_seconds = Histogram(
            "dockworker_container_start_seconds",
            "Time the engine took to create and start a task's container",
            buckets=CONTAINER_START_BOUNDS,
            registry=registry,
        )
        self.engine_errors = Counter(
            "dockworker_engine_errors_total",
            "Engine calls that failed for the infrastructure's reasons (unreachable, 5xx), by call",
            ["operation"],
            registry=registry,
        )
        for operation in OPERATIONS:  # present at zero from the start: rate() needs the series
            self.engine_errors.labels(operation)

    def container_started(self, seconds: float) -> None:
        self.container_start_seconds.observe(seconds)

    def engine_error(self, operation: str) -> None:
        self.engine_errors.labels(operation).inc()


def serve_runner_metrics(host: str, port: int) -> RunnerMetrics:
    """``GET /metrics`` on ``host:port`` in a thread of its own (no token: bind it to an address
    only the monitoring reaches; it shows engine timings and error counts, no project's data)."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    metrics = RunnerMetrics(registry)
    start_http_server(port, addr=host, registry=registry)
    return metrics
