"""Runs first on the board: the deploy tool copies this file to /boot.py.

Deliberately empty. A failure here happens before safe mode can help, so everything that can
go wrong (config, board profile, crash counting, the watchdog, the app) is decided by
/main.py (``firmware/main.py``). Replacing MicroPython's default /boot.py keeps it from
starting anything the fleet did not ask for (such as WebREPL).
"""
