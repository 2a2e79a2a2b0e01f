"""The companion's tests, laid out as cloud/orrery is."""
