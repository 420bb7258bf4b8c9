"""Training, evaluation and the run directory (see docs/ARCHITECTURE.md).

Nothing is imported here: ``kcnn.engine.train`` and friends import Keras, and
``kcnn.engine.rundir`` must stay importable without it.
"""
