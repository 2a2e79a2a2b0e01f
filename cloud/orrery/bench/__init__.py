"""Benchmarks of the companion and the shared core: device, ingest, rollout, fleet."""
