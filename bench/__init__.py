"""Benchmark and soak harness of the token service; see bench/README.md."""
