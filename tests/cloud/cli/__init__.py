"""Tests of the orrery command line (cloud/orrery/cli)."""
