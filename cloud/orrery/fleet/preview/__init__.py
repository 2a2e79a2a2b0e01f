"""Fleet preview: replay each target device's stored readings through the version it runs and
through a new one, with the board's own executor, and say what would change (issue 18).

- ``model``: what a preview is asked (``Target``) and the report it gives (documented there);
- ``engine``: ``run``, the replay of many devices in parallel processes;
- ``bounds``: ``--preview-gate`` bounds, parsed and evaluated against a report;
- ``report``: the summary a person reads in ten seconds.
"""
