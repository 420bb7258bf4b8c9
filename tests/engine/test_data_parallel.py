"""``distribute.strategy: data_parallel``: keras.distribution.DataParallel on JAX, in one
process and across two processes on 127.0.0.1 (JAX CPU collectives over gloo)."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from kcnn.engine import data_parallel as dp
from kcnn.errors import KcnnError
from kcnn.recipes.schema import Distribute
from tests.conftest import noise_lines, write_recipe

# Unoptimised XLA code compiles in a fraction of the time; these models are tiny.
JAX_ENV = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2",
           "XLA_FLAGS": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"}
for _key in (dp.ENV_ADDRESSES, dp.ENV_PROCESSES, dp.ENV_PROCESS_ID):
    JAX_ENV.pop(_key, None)
KCNN = [sys.executable, "-m", "kcnn.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def clean_env(monkeypatch):
    for key in (dp.ENV_ADDRESSES, dp.ENV_PROCESSES, dp.ENV_PROCESS_ID):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


# ----------------------------------------------------------------------------- job settings
def test_job_spec_reads_keras_environment_before_recipe_keys(clean_env):
    cfg = Distribute(strategy="data_parallel", job_addresses="10.0.0.1:1234", num_processes=4,
                     process_id=3)
    assert dp.job_spec(cfg) == dp.JobSpec(("10.0.0.1:1234",), 4, 3, 120.0)
    clean_env.setenv(dp.ENV_ADDRESSES, "h0:99,h1:99")
    clean_env.setenv(dp.ENV_PROCESSES, "2")
    clean_env.setenv(dp.ENV_PROCESS_ID, "1")
    spec = dp.job_spec(cfg)
    assert (spec.addresses, spec.num_processes, spec.process_id) == (("h0:99", "h1:99"), 2, 1)
    assert spec.coordinator == ("h0", 99) and not spec.is_chief
    assert dp.job_spec(Distribute(strategy="data_parallel")).num_processes == 2  # all from env


@pytest.mark.parametrize("keys, env, match", [
    ({"num_processes": 2}, {dp.ENV_PROCESS_ID: "0"}, "needs the coordinator's address"),
    ({"num_processes": 2, "job_addresses": "h:1"}, {}, "needs this process's id"),
    ({"num_processes": 2, "job_addresses": "h:1"}, {dp.ENV_PROCESS_ID: "2"}, r"must be in 0 \.\. 1"),
    ({"num_processes": 3, "job_addresses": "a:1,b:1"}, {dp.ENV_PROCESS_ID: "0"}, "2 addresses for 3"),
    ({"num_processes": 2, "job_addresses": "nohost"}, {dp.ENV_PROCESS_ID: "0"}, "expected host:port"),
    ({}, {dp.ENV_PROCESSES: "two"}, "KERAS_DISTRIBUTION_NUM_PROCESSES: expected an integer"),
    ({"process_id": 1}, {}, "is not a process of a 1-process job"),
    ({"num_processes": 2, "job_addresses": "::1:80"}, {dp.ENV_PROCESS_ID: "0"}, r"in brackets, e.g. \[::1\]:80"),
])
def test_job_spec_errors_are_one_line(clean_env, keys, env, match):
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(KcnnError, match=match):
        dp.job_spec(Distribute(strategy="data_parallel", **keys))


# ----------------------------------------------------------------------------- handshake
def _handshake_all(specs, fingerprints):
    """Run every process's handshake in a thread: {process id: None or the error}."""
    errors = {}

    def run(spec, fp):
        try:
            dp.handshake(spec, fp)
            errors[spec.process_id] = None
        except KcnnError as err:
            errors[spec.process_id] = str(err)

    threads = [threading.Thread(target=run, args=a) for a in zip(specs, fingerprints)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return errors


def _specs(n, ids, timeout=5.0):
    address = (f"127.0.0.1:{free_port()}",)
    return [dp.JobSpec(address, n, i, timeout) for i in ids]


def test_handshake_meets_every_process():
    assert _handshake_all(_specs(3, [0, 1, 2]), ["r"] * 3) == {0: None, 1: None, 2: None}


def test_handshake_ignores_a_stray_connection():
    """A port scanner or health check on the coordinator's port does not end the job."""
    specs = _specs(2, [0, 1], timeout=10.0)
    host, port = specs[0].coordinator
    results = {}
    chief = threading.Thread(target=lambda: results.update(_handshake_all(specs[:1], ["r"])))
    chief.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1) as stray:
                stray.sendall(b"GET / HTTP/1.0\r\n\r\n")
            break
        except OSError:
            time.sleep(0.05)
    results.update(_handshake_all(specs[1:], ["r"]))
    chief.join(30)
    assert results == {0: None, 1: None}


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 on this machine")
def test_handshake_over_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError:
        pytest.skip("no IPv6 loopback")
    specs = [dp.JobSpec((f"[::1]:{port}",), 2, i, 5.0) for i in (0, 1)]
    assert _handshake_all(specs, ["r", "r"]) == {0: None, 1: None}


def test_handshake_refuses_a_different_recipe():
    errors = _handshake_all(_specs(2, [0, 1]), ["r", "other"])
    assert "process 1 was started with a different recipe" in errors[0]
    assert "different recipe" in errors[1]


def test_handshake_refuses_a_wrong_process_count():
    port = free_port()
    specs = [dp.JobSpec((f"127.0.0.1:{port}",), 2, 0, 5.0), dp.JobSpec((f"127.0.0.1:{port}",), 3, 1, 5.0)]
    errors = _handshake_all(specs, ["r", "r"])
    assert "process 1 says the job has 3 processes, process 0 says 2" in errors[0]
    assert "3 processes" in errors[1]


def test_handshake_names_the_missing_processes_after_the_timeout():
    start = time.monotonic()
    errors = _handshake_all(_specs(3, [0, 2], timeout=1.5), ["r", "r"])
    assert time.monotonic() - start < 10
    assert "only 2 of 3 processes reached the coordinator" in errors[0]
    assert "missing process ids: 1" in errors[0]


def test_unreachable_coordinator_fails_within_the_timeout():
    start = time.monotonic()
    errors = _handshake_all(_specs(2, [1], timeout=1.0), ["r"])
    assert time.monotonic() - start < 10
    assert "cannot reach the coordinator" in errors[1] and "within 1 s" in errors[1]


# ----------------------------------------------------------------------------- the CLI
def test_data_parallel_on_tensorflow_is_one_line(tiny_recipe, tmp_path):
    env = {**JAX_ENV, "KERAS_BACKEND": "tensorflow"}
    res = subprocess.run([*KCNN, "train", str(tiny_recipe), "--set", "distribute.strategy=data_parallel",
                          "--run-dir", str(tmp_path / "run")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith(
        "error: distribute.strategy 'data_parallel' needs the JAX backend")
    assert not (tmp_path / "run").exists()


def test_unreachable_coordinator_exits_2_with_one_line(tiny_recipe, tmp_path):
    env = {**JAX_ENV, dp.ENV_ADDRESSES: f"127.0.0.1:{free_port()}", dp.ENV_PROCESSES: "2",
           dp.ENV_PROCESS_ID: "1"}
    res = subprocess.run([*KCNN, "train", str(tiny_recipe), "--set",
                          "distribute={strategy: data_parallel, timeout: 2}",
                          "--run-dir", str(tmp_path / "run")], env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.strip().splitlines() == [
        f"error: distribute: cannot reach the coordinator {env[dp.ENV_ADDRESSES]} (process 0) within "
        f"2 s; check the address, that process 0 is running, and the firewall"]
    assert not (tmp_path / "run").exists()


def test_process_0_refuses_a_used_run_dir_before_the_job_starts(tiny_recipe, tmp_path):
    """Found before the handshake, so the other processes are not left waiting in the job."""
    used = tmp_path / "run"
    used.mkdir()
    (used / "old.txt").write_text("x")
    env = {**JAX_ENV, dp.ENV_ADDRESSES: f"127.0.0.1:{free_port()}", dp.ENV_PROCESSES: "2",
           dp.ENV_PROCESS_ID: "0"}
    res = subprocess.run([*KCNN, "train", str(tiny_recipe), "--set", "distribute.strategy=data_parallel",
                          "--run-dir", str(used)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: {used}: run dir already exists and is not empty (use --resume to continue it)"]


# ----------------------------------------------------------------------------- two processes
def dp_recipe(tmp_path, tiny_recipe_dict, epochs):
    """BatchNorm, dropout and augmentation: what a real run has."""
    d = tiny_recipe_dict
    d["data"].update(samples_per_class=24, augment={"translate": 0.1, "rotate": 10, "flip": True})
    d["model"].update(batch_norm=True, dropout=0.3)
    # SGD: Adam divides by the root of tiny second moments, which turns float rounding
    # (the two processes sum gradients in another order) into visible drift within epochs.
    d["train"].update(batch_size=16, epochs=epochs, verbose=2,
                      optimizer={"type": "sgd", "lr": 0.05, "momentum": 0.9})
    d["evaluate"]["split"] = "test"
    d["distribute"] = {"strategy": "data_parallel", "timeout": 20}
    return write_recipe(tmp_path / "dp.yaml", d)


def launch(args, env, out_dir, pid):
    out, err = open(out_dir / f"p{pid}.out", "w"), open(out_dir / f"p{pid}.err", "w")
    return subprocess.Popen([*KCNN, *args], env=env, stdout=out, stderr=err, text=True)


def history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_processes_match_one_and_survive_a_dead_worker(tmp_path, tiny_recipe_dict):
    """One process and a two-process job (same global batch) give the same history and
    test metrics; killing a worker mid-run stops the other within the timeout with one
    clear line; the job then resumes to the same result."""
    recipe = dp_recipe(tmp_path, tiny_recipe_dict, epochs=3)
    one = tmp_path / "one"
    res = subprocess.run([*KCNN, "train", str(recipe), "--run-dir", str(one)], env=JAX_ENV,
                         capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]

    two = tmp_path / "two"
    env = {**JAX_ENV, dp.ENV_ADDRESSES: f"127.0.0.1:{free_port()}", dp.ENV_PROCESSES: "2"}
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = [launch(["train", str(recipe), "--run-dir", str(two)], {**env, dp.ENV_PROCESS_ID: str(i)},
                    logs, i) for i in (0, 1)]
    try:
        deadline = time.monotonic() + 300
        while "Epoch 2/3" not in (logs / "p0.out").read_text() and time.monotonic() < deadline:
            assert procs[0].poll() is None, (logs / "p0.err").read_text()[-3000:]
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        rc = procs[0].wait(timeout=60)
        waited = time.monotonic() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    err0 = (logs / "p0.err").read_text()
    assert rc == 1, err0[-3000:]
    assert waited < 20  # distribute.timeout
    errors = [line for line in err0.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "process 0 of 2 lost contact with the job" in errors[0]
    assert f"kcnn train --resume {two}" in errors[0]
    done = json.loads((two / "checkpoints" / "state.json").read_text())["epoch"]
    assert 1 <= done < 3  # killed mid-run, the finished epochs committed

    procs = [launch(["train", "--resume", str(two)], {**env, dp.ENV_PROCESS_ID: str(i)}, logs, i)
             for i in (0, 1)]
    for p in procs:
        assert p.wait(timeout=400) == 0, (logs / "p0.err").read_text()[-3000:]
    for i in (0, 1):  # every process names the run process 0 wrote
        assert (logs / f"p{i}.out").read_text().strip().splitlines()[-1] == str(two)
    assert not noise_lines((logs / "p0.err").read_text())

    h1, h2 = history(one), history(two)
    assert len(h1) == len(h2) == 3
    for a, b in zip(h1, h2):
        for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
            assert float(b[key]) == pytest.approx(float(a[key]), rel=1e-4), (key, a, b)
    m1, m2 = (json.loads((r / "metrics.json").read_text()) for r in (one, two))
    assert m2["accuracy"] == pytest.approx(m1["accuracy"], abs=1e-9)
    assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-4)
    saved = (two / "recipe.yaml").read_text()
    assert "process_id" not in saved and "strategy: data_parallel" in saved
