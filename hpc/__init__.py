"""SLURM + Optuna orchestration of dualseg training (the only place that knows about clusters).

``python hpc/launch.py`` submits the search, ``hpc.worker`` runs on every rank of every array task,
``hpc.evaluate`` is the dependent evaluation job, ``hpc/logs.py`` and ``hpc/status.py`` watch it.
See docs/hpc.md.
"""
