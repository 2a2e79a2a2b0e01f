"""``python -m cloud.orrery.cli``: the ``orrery`` command (the tests and benchmarks start
``orrery serve`` workers this way)."""

from cloud.orrery.cli import main

main()
