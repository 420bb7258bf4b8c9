"""kcnn.quiet: the C-level stderr is muted only inside its blocks, replayed for a bug, and
TensorFlow's first import is silent once the CLI installed it."""

import os
import subprocess
import sys

import pytest

from kcnn import quiet
from kcnn.errors import KcnnError
from tests.conftest import noise_lines


@pytest.fixture
def installed(monkeypatch):
    monkeypatch.setattr(quiet, "_state", {"installed": True, "verbose": False, "depth": 0})
    monkeypatch.delenv("KCNN_DEBUG", raising=False)


def test_muted_block_drops_native_output_and_restores_fd_2(installed, capfd):
    with quiet.native_stderr_muted():
        os.write(2, b"I0000 native chatter\n")
        with quiet.native_stderr_muted():  # nested: muted once
            os.write(2, b"more chatter\n")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"


def test_muted_block_replays_for_a_bug_but_not_for_a_user_error(installed, capfd):
    with pytest.raises(ValueError), quiet.native_stderr_muted():
        os.write(2, b"context of a crash\n")
        raise ValueError("bug")
    assert capfd.readouterr().err == "context of a crash\n"
    with pytest.raises(KcnnError), quiet.native_stderr_muted():
        os.write(2, b"chatter\n")
        raise KcnnError("bad input")
    assert capfd.readouterr().err == ""


def test_not_muted_without_install_or_with_debug(monkeypatch, capfd):
    monkeypatch.setattr(quiet, "_state", {"installed": False, "verbose": False, "depth": 0})
    with quiet.native_stderr_muted():
        os.write(2, b"library use\n")
    monkeypatch.setattr(quiet, "_state", {"installed": True, "verbose": False, "depth": 0})
    monkeypatch.setenv("KCNN_DEBUG", "1")
    with quiet.native_stderr_muted():
        os.write(2, b"debug\n")
    assert capfd.readouterr().err == "library use\ndebug\n"


PROBE = """
from kcnn import quiet
quiet.install()
import tensorflow as tf
ds = tf.data.Dataset.range(8).map(lambda x: x * 2, num_parallel_calls=2).batch(4)
print(sum(int(b.numpy().sum()) for b in ds))
f = tf.function(lambda x: x + 1)
for n in range(8):
    f(tf.zeros((n,)))  # a new shape each call: tf.function retracing
"""


def test_tensorflow_import_and_first_use_are_silent():
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KCNN_DEBUG")}
    res = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "56"
    assert res.stderr == "", noise_lines(res.stderr) or res.stderr
