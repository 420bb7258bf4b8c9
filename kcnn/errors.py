"""Errors that reach the user as one line.

The CLI catches :class:`KcnnError`, prints ``str(err)`` to stderr and exits with
code 2. Anything else escaping a command is a bug and keeps its traceback.
"""

from __future__ import annotations


class KcnnError(Exception):
    """A problem caused by the user's input (a file, a key, a value)."""


class RecipeError(KcnnError, ValueError):
    """A problem in a recipe, located by file and dotted key path.

    ``str(err)`` reads ``recipes/x.yaml: train.optimizer.lr: must be > 0 (got -1)``.
    """

    def __init__(self, message: str, file: str | None = None, key: str | None = None):
        self.message = message
        self.file = file
        self.key = key
        super().__init__(self.__str__())

    def __str__(self) -> str:
        parts = [p for p in (self.file, self.key) if p]
        return ": ".join([*parts, self.message])


class DataError(KcnnError, ValueError):
    """Data that cannot be loaded or does not match the recipe."""


class RunDirError(KcnnError):
    """A folder that is not a kcnn run, or a run in an unusable state."""


class TrainingError(KcnnError):
    """Training stopped for a reason the user must act on (e.g. a NaN loss)."""


class JobFailed(Exception):
    """Another process of a multi-process job died. The CLI prints the message and exits
    at once with code 1, skipping the interpreter's exit handlers (JAX's would wait for
    the dead process and then abort with a core dump)."""

    exit_code = 1


class Interrupted(Exception):
    """Training stopped by SIGINT or SIGTERM. The run keeps its last complete epoch;
    the CLI prints :attr:`message` and exits with :attr:`exit_code` (128 + signal)."""

    def __init__(self, signum: int, message: str = "", run_path: str | None = None):
        self.signum = signum
        self.run_path = run_path
        self.exit_code = 128 + signum
        self.message = message
        super().__init__(message or f"interrupted by signal {signum}")
