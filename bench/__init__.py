"""Benchmarks: the whole pipeline against the sandbox, reporting throughput and API economy."""
