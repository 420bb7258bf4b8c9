"""Keep TensorFlow's, absl's and LiteRT's own log lines off the user's terminal.

Loading TensorFlow prints lines that are not the user's business before kcnn says
anything: absl's ``All log messages before absl::InitializeLog() …``, CUDA stub
and ``cuInit`` errors on a machine without a GPU, ``oneDNN custom operations are
on``; a tf.data map logs a C++ ``NodeDef mentions attribute …`` error; the TFLite
converter prints its settings (``fully_quantize: 0, …``) and LiteRT announces its
XNNPACK delegate; ``tf.function`` warns about retracing. Some of these ignore
``TF_CPP_MIN_LOG_LEVEL``, because they are written before TensorFlow's logging
is set up or by libraries with logging of their own.

:func:`install` (the CLI calls it before any heavy import) silences them at
their source, in this order of preference:

1. log levels set before TensorFlow loads (``TF_CPP_MIN_LOG_LEVEL=3`` and its
   absl and gRPC counterparts), and Python's ``tensorflow`` and ``absl``
   loggers at ERROR (the retracing notices are WARNING);
2. warning filters for the warnings that library internals raise about
   themselves;
3. where nothing else works, the C-level stderr (file descriptor 2) goes to a
   temporary file only while TensorFlow is imported and its devices are first
   listed (:class:`_MuteFirstImport`), while the TFLite converter runs and while
   a LiteRT interpreter is created (:func:`native_stderr_muted`). What was written
   there is dropped, unless the block fails with something other than a
   :class:`~kcnn.errors.KcnnError` (a bug): then it is replayed, so a crash keeps
   its context.

``KCNN_DEBUG=1`` or ``kcnn --verbose`` leaves everything as it is. Library use
(``import kcnn`` without :func:`install`) is never muted.

Standard library only: the CLI imports this module before ``--help``.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import os
import sys
import threading
from collections.abc import Iterator

# Read by TensorFlow's (and XLA's) C++ logging when its library loads; setdefault,
# so a user's own setting wins.
ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # FATAL only: no INFO/WARNING/ERROR lines from C++
    "TF_CPP_MAX_VLOG_LEVEL": "-1",
    "ABSL_MIN_LOG_LEVEL": "3",
    "GRPC_VERBOSITY": "ERROR",
}

# Python loggers whose WARNING lines are about library internals.
LOGGERS = ("tensorflow", "absl", "h5py", "jax._src.xla_bridge")

# (category, message regex) of warnings that library internals raise about themselves.
WARNINGS = (
    (Warning, r".*tf\.function retracing.*"),
    (UserWarning, r".*Do not pass an `input_shape`.*"),
    (UserWarning, r".*`build\(\)` was called on layer.*"),
    (UserWarning, r".*Skipping variable loading for optimizer.*"),
    (UserWarning, r".*compiled metrics have yet to be built.*"),
    (UserWarning, r".*Compiled the loaded model, but.*"),
    (UserWarning, r".*Your input ran out of data.*"),
    (UserWarning, r".*The structure of `inputs` doesn't match the expected structure.*"),
    (UserWarning, r".*tf\.lite\.Interpreter is deprecated.*"),
    (DeprecationWarning, r".*"),
    (FutureWarning, r".*"),
)

# Imported first with fd 2 muted (their C++ libraries print as they load).
MUTED_IMPORTS = ("tensorflow",)

_state = {"installed": False, "verbose": False, "depth": 0}
_lock = threading.RLock()


def verbose() -> bool:
    """True when the user asked to see everything (``--verbose`` or ``KCNN_DEBUG=1``)."""
    return _state["verbose"] or os.environ.get("KCNN_DEBUG") == "1"


def active() -> bool:
    """True when the CLI installed the silencing and the user did not ask for everything."""
    return _state["installed"] and not verbose()


def install(verbose_flag: bool = False) -> None:
    """Silence the libraries' own log lines for this process (before TensorFlow loads).

    With ``verbose_flag`` (``kcnn --verbose``) or ``KCNN_DEBUG=1`` nothing is changed.
    """
    _state["verbose"] = _state["verbose"] or verbose_flag
    if verbose():
        return
    import logging
    import warnings

    _state["installed"] = True
    for key, value in ENV.items():
        os.environ.setdefault(key, value)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category, message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if not any(isinstance(f, _MuteFirstImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _MuteFirstImport(MUTED_IMPORTS))


def uninstall() -> None:
    """Undo :func:`install`'s import hook and muting (for tests)."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _MuteFirstImport)]
    _state["installed"] = False
    _state["verbose"] = False


@contextlib.contextmanager
def native_stderr_muted() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file while the block runs (see the module
    docstring). A no-op unless :func:`install` ran and the user did not ask for
    everything; nested uses mute once."""
    if not active():
        yield
        return
    with _lock:
        outer = _state["depth"] == 0
        if outer:
            import tempfile

            sys.stderr.flush()
            try:  # no temporary file (full or read-only TMPDIR): run unmuted rather than fail
                sink = tempfile.TemporaryFile()
            except OSError:
                sink = None
            if sink is None:
                outer = False
            else:
                saved = os.dup(2)
                os.dup2(sink.fileno(), 2)
        _state["depth"] += 1
    try:
        yield
    except BaseException as err:
        if outer:
            _restore(saved, sink, replay=not _is_user_error(err))
            outer = False
        raise
    finally:
        with _lock:
            _state["depth"] -= 1
        if outer:
            _restore(saved, sink, replay=False)


def _restore(saved: int, sink, replay: bool) -> None:
    os.dup2(saved, 2)
    os.close(saved)
    try:
        if replay:
            sink.seek(0)
            text = sink.read()
            if text:
                sys.stderr.flush()
                os.write(2, text)
    finally:
        sink.close()


def _is_user_error(err: BaseException) -> bool:
    from kcnn.errors import KcnnError

    return isinstance(err, KcnnError)


def _first_device_query(module) -> None:
    """TensorFlow looks for GPUs (and logs ``cuInit`` failures) on its first device query;
    make that query now, while fd 2 is still muted."""
    import logging

    try:
        module.config.list_physical_devices()
    except Exception:  # noqa: BLE001 - a broken install shows up on first real use
        pass
    for name in LOGGERS:  # TensorFlow and absl may have reset their loggers on import
        logging.getLogger(name).setLevel(logging.ERROR)


class _MuteFirstImport(importlib.abc.MetaPathFinder):
    """Runs the first import of each of ``names`` with fd 2 muted.

    It asks the finders after it for the real spec and wraps only its loader's
    ``exec_module``; the module keeps its real loader.
    """

    def __init__(self, names: tuple[str, ...]):
        self.pending = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _MutedLoader(spec.loader, fullname)
                return spec
        return None


class _MutedLoader(importlib.abc.Loader):
    def __init__(self, loader, name: str):
        self.loader, self.name = loader, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        module.__loader__ = self.loader
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        with native_stderr_muted():
            self.loader.exec_module(module)
            if self.name == "tensorflow":
                _first_device_query(module)

    def __getattr__(self, name):
        return getattr(self.loader, name)
