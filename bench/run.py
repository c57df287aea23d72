"""``make bench``: measure the token service and write docs/benchmarks.md.

Runs, in order: the local-key suite (bare function, token function, peer,
raw signing), the WORKERS x THREADS matrix, the IAM and ``scope`` suite
against the emulators, and cold starts. Prints the targets table and writes
the full report. Traffic goes to 127.0.0.1 only.

    python -m bench.run [--repetitions N] [--duration S] [--output PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench import cold_start, environment, report, throughput, upstream, workload
from bench.report import BenchResults
from bench.servers import (
    BARE_FUNCTION_SOURCE,
    PEER_DIR,
    PRODUCT_SOURCE,
    REPO_ROOT,
    keep_google_auth_offline,
)
from deploy.local.stack import function_environment

DEFAULT_OUTPUT = REPO_ROOT / "docs" / "benchmarks.md"
WORK_DIR = REPO_ROOT / ".local" / "bench"
SUITES = ("local", "matrix", "upstream", "cold")


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--repetitions", type=int, default=3, help="runs per figure (default 3)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=4.0,
        help="seconds per wrk run in the local-key suite (default 4)",
    )
    parser.add_argument(
        "--short-duration",
        type=float,
        default=3.0,
        help="seconds per wrk run in the matrix and IAM suites (default 3)",
    )
    parser.add_argument(
        "--latency-ms",
        type=int,
        default=upstream.EMULATOR_LATENCY_MS,
        help="latency added to every emulator call, in ms (default 20)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        choices=SUITES,
        default=[],
        help="leave out a suite; repeat for several",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help="where to write the report (default docs/benchmarks.md)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when a target is missed",
    )
    args = parser.parse_args(argv)
    if args.repetitions < 1:
        parser.error("--repetitions must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the suites, print the targets table and write the report."""
    args = _parse_args(argv)
    keep_google_auth_offline()
    if shutil.which("wrk") is None:
        print("wrk is not installed; run: apt-get install -y wrk", file=sys.stderr)
        return 2
    started = time.monotonic()
    shutil.rmtree(WORK_DIR / "runs", ignore_errors=True)
    run_dir = WORK_DIR / "runs"
    state_dir = WORK_DIR / "state"
    run_dir.mkdir(parents=True)
    workload.generate_pki(state_dir / "pki")

    results = BenchResults(
        machine=environment.describe_machine(),
        versions=environment.describe_versions(PEER_DIR),
        repetitions=args.repetitions,
        duration_seconds=args.duration,
    )

    def attempt(name: str, suite: Callable[[], None]) -> None:
        if name in args.skip:
            return
        print(f"bench: running the {name} suite", file=sys.stderr, flush=True)
        try:
            suite()
        except Exception as error:
            # Record the failure and run the remaining suites.
            traceback.print_exc()
            results.failures.append(f"{name} suite: {type(error).__name__}: {error}")

    def local_suite() -> None:
        results.local = throughput.run_local_key_suite(
            state_dir,
            run_dir / "local",
            repetitions=args.repetitions,
            duration_seconds=args.duration,
        )

    def matrix_suite() -> None:
        results.matrix = throughput.run_matrix_suite(
            state_dir,
            run_dir / "matrix",
            repetitions=args.repetitions,
            duration_seconds=args.short_duration,
        )

    attempt("local", local_suite)
    attempt("matrix", matrix_suite)
    if "upstream" not in args.skip or "cold" not in args.skip:
        # One attempt for both, because they share one emulator stack; the
        # function itself skips whichever of the two is left out.
        attempt(
            "upstream and cold",
            lambda: _upstream_and_cold(args, state_dir, run_dir, results),
        )

    results.elapsed_seconds = time.monotonic() - started
    results.load_at_end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report.render_markdown(results))
    print(report.render_console(results))
    print(f"\nbench: wrote {args.output} in {results.elapsed_seconds:.0f} s")
    if results.failures:
        return 1
    missed = [c for c in report.target_checks(results) if c.verdict != "met"]
    return 1 if args.strict and missed else 0


def _upstream_and_cold(
    args: argparse.Namespace, state_dir: Path, run_dir: Path, results: BenchResults
) -> None:
    """Run the IAM suite and the cold starts, which share one emulator stack."""
    work_dir = run_dir / "upstream"
    work_dir.mkdir(parents=True, exist_ok=True)
    config = upstream.iam_stack_config(state_dir, work_dir / "stack-logs")
    with upstream.emulator_stack(config, args.latency_ms) as stack:
        if "upstream" not in args.skip:
            with throughput.floor_servers(state_dir, work_dir / "logs") as floors:
                results.upstream = upstream.run_upstream_suite(
                    stack,
                    floors,
                    work_dir,
                    repetitions=args.repetitions,
                    duration_seconds=args.short_duration,
                    latency_ms=args.latency_ms,
                )
        if "cold" not in args.skip:
            print("bench: running the cold start suite", file=sys.stderr, flush=True)
            local_env = throughput.local_key_environment(state_dir)
            modes = {
                "bare": cold_start.ModeSpec(BARE_FUNCTION_SOURCE, local_env),
                "local key": cold_start.ModeSpec(PRODUCT_SOURCE, local_env),
                "IAM": cold_start.ModeSpec(
                    PRODUCT_SOURCE, function_environment(config)
                ),
            }
            results.cold = cold_start.run_cold_start_suite(
                modes,
                config.pki_dir,
                run_dir / "cold",
                repetitions=args.repetitions,
                workers=throughput.PRODUCTION_WORKERS,
                threads=throughput.PRODUCTION_THREADS,
            )


if __name__ == "__main__":
    raise SystemExit(main())
