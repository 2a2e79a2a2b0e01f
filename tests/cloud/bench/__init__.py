"""Tests of the benchmarks (cloud/orrery/bench)."""
