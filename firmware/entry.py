"""The deploy tool copies this file to ``/main.py``, which MicroPython runs after ``/boot.py``
(``firmware/slots.py``) has put the chosen app slot first on ``sys.path``: it starts that
slot's app, ``firmware/main.py``.
"""

from firmware import main

main.main()
