"""The settings tree turned into running processes: the one home of the builders.

``trainer.py`` (settings → a ready ``Trainer`` or ``LockstepTrainer``: model, optimizer, source,
checkpoints, publisher), ``server.py`` (settings → a ``ServingWorker``: slot, engine, verifier,
snapshot source and cache, prediction log, gRPC, app), ``join.py`` (settings → a running join:
policy, clients, group member). The top layer under ``cli/``: it may import every other unit,
and only ``cli/`` and the process entry points (tests, benchmarks) import it, so no process
kind knows how another one is put together.
"""
