"""Tests of the fleet: registry, keys, provisioning, broker config, rollouts (cloud/orrery/fleet)."""
