"""Orrery's companion: the CPython side that runs the fleet."""
