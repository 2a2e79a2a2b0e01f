"""The ingest: the MQTT service, message handling, reconciliation, and what it stored."""
