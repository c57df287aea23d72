"""One load run against a server, with the server's CPU and connections read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench.load import WrkResult, run_wrk
from bench.servers import ProcessTree


@dataclass(frozen=True)
class Sample:
    """Measurements of one run: wrk's summary and the server's CPU and connections.

    Attributes:
        cpu_ms_per_request: CPU time of the master and all workers, divided
            by the completed requests.
        server_cores: Server CPU seconds per second of wall time.
        wrk_cores: The load generator's CPU seconds per second of wall time,
            taken from the same two cores.
        worker_connections: Established connections per worker, sampled
            halfway through, largest first.
        busiest_worker_share: The busiest worker's fraction of the workers'
            CPU time; 1/workers is an even spread.
    """

    wrk: WrkResult
    cpu_ms_per_request: float
    server_cores: float
    wrk_cores: float
    worker_connections: tuple[int, ...]
    busiest_worker_share: float

    @property
    def requests_per_second(self) -> float:
        """Completed requests per second."""
        return self.wrk.requests_per_second

    @property
    def p50_ms(self) -> float:
        """Median latency in milliseconds."""
        return self.wrk.p50_ms

    @property
    def p99_ms(self) -> float:
        """99th percentile latency in milliseconds."""
        return self.wrk.p99_ms


def measure(
    tree: ProcessTree,
    request_file: Path,
    *,
    connections: int,
    duration_seconds: float,
    url: str | None = None,
) -> Sample:
    """Run wrk against ``tree`` (or ``url``) and read the server's CPU around it."""
    connection_counts: list[list[int]] = []
    workers_before = tree.worker_cpu_seconds()
    cpu_before = tree.cpu_seconds()
    result = run_wrk(
        url or tree.url,
        request_file,
        connections=connections,
        duration_seconds=duration_seconds,
        during=lambda: connection_counts.append(tree.worker_connections()),
    )
    cpu_after = tree.cpu_seconds()
    workers_after = tree.worker_cpu_seconds()

    worker_deltas = [
        workers_after[pid] - workers_before.get(pid, 0.0) for pid in workers_after
    ]
    total_worker_cpu = sum(worker_deltas)
    busiest = max(worker_deltas) / total_worker_cpu if total_worker_cpu > 0 else 0.0
    server_cpu = cpu_after - cpu_before
    return Sample(
        wrk=result,
        cpu_ms_per_request=1000 * server_cpu / max(result.requests, 1),
        server_cores=server_cpu / result.duration_seconds,
        wrk_cores=result.wrk_cpu_seconds / result.duration_seconds,
        worker_connections=tuple(connection_counts[0] if connection_counts else ()),
        busiest_worker_share=busiest,
    )
