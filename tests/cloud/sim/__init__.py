"""Tests of the simulator (cloud/orrery/sim)."""
