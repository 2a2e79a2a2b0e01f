"""The tests' Mosquitto: see tools/dev/mosquitto.py (the benchmarks start theirs the same way)."""

from tools.dev.mosquitto import Broker, free_port, mosquitto_binary

__all__ = ["Broker", "free_port", "mosquitto_binary"]
