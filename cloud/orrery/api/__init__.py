"""``orrery api``: the fleet's HTTP API (FastAPI), on the same functions the CLI calls."""
