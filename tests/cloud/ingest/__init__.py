"""Tests of the ingest (cloud/orrery/ingest)."""
