"""``distribute.strategy: data_parallel``: ``keras.distribution.DataParallel`` on JAX,
in one process or across several (one per host, as a cluster scheduler launches them).

A job is described by Keras' own environment variables, or by the same keys under
``distribute:`` (the environment wins, since a launcher sets it per process)::

    KERAS_DISTRIBUTION_JOB_ADDRESSES   host0:port[,host1:port,...]  (the first is the coordinator)
    KERAS_DISTRIBUTION_NUM_PROCESSES   N
    KERAS_DISTRIBUTION_PROCESS_ID      0 .. N-1

Before JAX's own start-up, the processes meet at the coordinator's port for a short
handshake written here: JAX's coordination service aborts the whole process (a C++
fatal error and a core dump) on an unreachable coordinator or a wrong process count,
whereas the handshake turns both into one line and exit code 2, and also refuses
processes that were started with different recipes. Keras offers no such check.

Every process feeds its own contiguous share of every global batch, in the sampler's
order (:class:`kcnn.data.pipeline.EpochFeeder` with ``shard``); Keras assembles the
global batch with ``jax.make_array_from_process_local_data``, so batch statistics,
dropout masks and gradients are those of one process training on the global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
from typing import Any

from kcnn.errors import JobFailed, KcnnError

ENV_ADDRESSES = "KERAS_DISTRIBUTION_JOB_ADDRESSES"
ENV_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
ENV_PROCESS_ID = "KERAS_DISTRIBUTION_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """Where this process stands in a data-parallel job."""

    addresses: tuple[str, ...]  # empty for a one-process job
    num_processes: int
    process_id: int
    timeout: float  # seconds: handshake, JAX start-up, heartbeat of the other processes

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1

    @property
    def coordinator(self) -> tuple[str, int]:
        host, _, port = self.addresses[0].rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def is_chief(self) -> bool:
        return self.process_id == 0


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise KcnnError(f"{name}: expected an integer (got {raw!r})") from None


def job_spec(cfg) -> JobSpec:
    """The job this process belongs to, from the environment, else the recipe's keys."""
    raw = os.environ.get(ENV_ADDRESSES) or cfg.job_addresses or ""
    addresses = tuple(a.strip() for a in raw.split(",") if a.strip())
    num = _env_int(ENV_PROCESSES)
    num = num if num is not None else cfg.num_processes
    pid = _env_int(ENV_PROCESS_ID)
    pid = pid if pid is not None else cfg.process_id
    if num is None:
        num = len(addresses) if len(addresses) > 1 else 1
    if num < 1:
        raise KcnnError(f"distribute.num_processes: must be >= 1 (got {num})")
    if num == 1:
        if pid not in (None, 0):
            raise KcnnError(f"distribute.process_id: {pid} is not a process of a 1-process job")
        return JobSpec((), 1, 0, cfg.timeout)
    if pid is None:
        raise KcnnError(f"distribute: a {num}-process data_parallel job needs this process's id: "
                        f"set {ENV_PROCESS_ID} (0 .. {num - 1}) or distribute.process_id")
    if not 0 <= pid < num:
        raise KcnnError(f"distribute.process_id: must be in 0 .. {num - 1} for a {num}-process "
                        f"job (got {pid})")
    if not addresses:
        raise KcnnError(f"distribute: a {num}-process job needs the coordinator's address: set "
                        f"{ENV_ADDRESSES}=host:port or distribute.job_addresses")
    if len(addresses) > 1 and len(addresses) != num:
        raise KcnnError(f"distribute.job_addresses: {len(addresses)} addresses for "
                        f"{num} processes")
    host, _, port = addresses[0].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise KcnnError(f"distribute.job_addresses: expected host:port (got {addresses[0]!r})")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise KcnnError(f"distribute.job_addresses: write an IPv6 address in brackets, e.g. "
                        f"[{host}]:{port} (got {addresses[0]!r})")
    return JobSpec(addresses, num, pid, cfg.timeout)


# The multi-process job this process belongs to, once JAX's distributed runtime started:
# from then on an error must end the process at once (see :func:`leave_job`).
_ACTIVE: dict[str, JobSpec | None] = {"spec": None}


def in_multi_process_job() -> bool:
    return _ACTIVE["spec"] is not None


def leave_job(code: int) -> None:
    """End this process now, skipping the interpreter's exit handlers: JAX's would wait in
    a shutdown barrier for processes that are still waiting in a collective for this one.
    Closing its connections makes the others fail fast with :class:`JobFailed`."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def chief_of(cfg) -> bool:
    """Whether this process writes the run dir (cheap: nothing is started)."""
    return cfg.strategy != "data_parallel" or job_spec(cfg).is_chief


# ----------------------------------------------------------------------------- handshake
def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


def _receive(conn: socket.socket, deadline: float) -> dict[str, Any] | None:
    buf = b""
    while not buf.endswith(b"\n"):
        conn.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = conn.recv(4096)
        except (TimeoutError, OSError):
            return None
        if not chunk or len(buf) > 65536:
            return None
        buf += chunk
    try:
        message = json.loads(buf)
    except json.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def handshake(spec: JobSpec, fingerprint: str) -> None:
    """Meet every process of the job at the coordinator's port, or fail in one line."""
    if not spec.multi_process:
        return
    if spec.is_chief:
        _gather(spec, fingerprint)
    else:
        _join(spec, fingerprint)


def _gather(spec: JobSpec, fingerprint: str) -> None:
    host, port = spec.coordinator
    where = f"{host}:{port}"
    try:
        if socket.has_dualstack_ipv6():  # IPv6 and IPv4 coordinators alike
            server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True,
                                          backlog=spec.num_processes)
        else:
            server = socket.create_server(("", port), backlog=spec.num_processes)
    except OSError as err:
        raise KcnnError(f"distribute: the coordinator (process 0) cannot listen on port {port} "
                        f"of {where} ({err.strerror or err}); is another job using it?") from None
    deadline = time.monotonic() + spec.timeout
    peers: dict[int, socket.socket] = {}
    problem = None
    try:
        while len(peers) < spec.num_processes - 1 and problem is None:
            server.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                break
            # A port scanner or a health check sends nothing kcnn understands: ignore it.
            hello = _receive(conn, min(deadline, time.monotonic() + 5.0))
            if hello is None or not isinstance(hello.get("process_id"), int):
                conn.close()
                continue
            problem = _check_hello(hello, spec, fingerprint, peers)
            if problem is None:
                peers[int(hello["process_id"])] = conn
            else:
                with contextlib.suppress(OSError):
                    _send(conn, {"ok": False, "error": problem})
                conn.close()
        if problem is None and len(peers) < spec.num_processes - 1:
            missing = sorted(set(range(1, spec.num_processes)) - set(peers))
            problem = (f"only {len(peers) + 1} of {spec.num_processes} processes reached the "
                       f"coordinator {where} within {spec.timeout:g} s (missing process ids: "
                       f"{', '.join(map(str, missing))}); check distribute.num_processes and "
                       f"that every process was started")
        for conn in peers.values():
            with contextlib.suppress(OSError):
                _send(conn, {"ok": problem is None, "error": problem})
    finally:
        for conn in peers.values():
            conn.close()
        server.close()
    if problem is not None:
        raise KcnnError(f"distribute: {problem}")


def _check_hello(hello, spec: JobSpec, fingerprint: str, peers) -> str | None:
    pid, num = hello["process_id"], hello.get("num_processes")
    if num != spec.num_processes:
        return (f"process {pid} says the job has {num} processes, process 0 says "
                f"{spec.num_processes}; give every process the same num_processes")
    if pid in peers or pid == 0:
        return f"two processes claim process_id {pid}"
    if hello.get("fingerprint") != fingerprint:
        return (f"process {pid} was started with a different recipe than process 0; every "
                f"process must run the same recipe (and --set overrides)")
    return None


def _join(spec: JobSpec, fingerprint: str) -> None:
    host, port = spec.coordinator
    where = f"{host}:{port}"
    deadline = time.monotonic() + spec.timeout
    hello = {"process_id": spec.process_id, "num_processes": spec.num_processes,
             "fingerprint": fingerprint}
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0) as conn:
                _send(conn, hello)
                # Process 0 answers within its own timeout, which began before this connection.
                reply = _receive(conn, time.monotonic() + spec.timeout + 5.0)
        except OSError:
            reply = None
            if time.monotonic() >= deadline:
                raise KcnnError(f"distribute: cannot reach the coordinator {where} (process 0) "
                                f"within {spec.timeout:g} s; check the address, that process 0 "
                                f"is running, and the firewall") from None
            time.sleep(0.2)
            continue
        if reply is None:
            raise KcnnError(f"distribute: the coordinator {where} did not answer within "
                            f"{spec.timeout:g} s")
        if not reply.get("ok"):
            raise KcnnError(f"distribute: {reply.get('error') or 'the coordinator refused this process'}")
        return


# ----------------------------------------------------------------------------- the job
class DataParallelJob:
    """A started ``keras.distribution.DataParallel`` over every device of every process."""

    def __init__(self, spec: JobSpec, distribution):
        self.spec = spec
        self.distribution = distribution

    @property
    def num_replicas_in_sync(self) -> int:
        import jax

        return jax.device_count()

    def scope(self):
        return self.distribution.scope()

    def shard(self) -> tuple[int, int, int]:
        """(this pipeline, pipelines, replicas per pipeline) for the EpochFeeder: a process
        feeds one contiguous share of each global batch; Keras splits it over its devices."""
        return self.spec.process_id, self.spec.num_processes, 1

    @contextlib.contextmanager
    def guard(self):
        """A collective that fails because another process died becomes :class:`JobFailed`."""
        import jax

        try:
            yield
        except jax.errors.JaxRuntimeError as err:
            if not self.spec.multi_process:
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
            raise JobFailed(
                f"data_parallel: process {self.spec.process_id} of {self.spec.num_processes} lost "
                f"contact with the job ({first}); another process probably died (its log says "
                f"why).") from None

    def broadcast_text(self, text: str | None) -> str:
        """Process 0's ``text`` on every process (e.g. the run dir it created)."""
        if not self.spec.multi_process:
            return text or ""
        import numpy as np
        from jax.experimental import multihost_utils

        buf = np.zeros(4096, dtype=np.uint8)
        raw = (text or "").encode()
        if self.spec.is_chief and len(raw) > len(buf):
            raise KcnnError(f"data_parallel: the run dir path is longer than {len(buf)} bytes")
        if self.spec.is_chief:
            buf[:len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        with self.guard():
            out = np.asarray(multihost_utils.broadcast_one_to_all(buf))
        return bytes(out).rstrip(b"\0").decode()


def start(cfg, fingerprint: str) -> DataParallelJob:
    """Meet the other processes, start JAX's distributed runtime and set the distribution."""
    import keras

    if keras.backend.backend() != "jax":
        raise KcnnError(f"distribute.strategy 'data_parallel' needs the JAX backend (KERAS_BACKEND "
                        f"is {keras.backend.backend()!r}); run with KERAS_BACKEND=jax, or use "
                        f"'mirrored' / 'multi_worker' on TensorFlow")
    spec = job_spec(cfg)
    handshake(spec, fingerprint)
    if spec.multi_process:
        _initialize_jax(spec)
    distribution = keras.distribution.DataParallel(auto_shard_dataset=False)
    if spec.multi_process:
        print(f"data_parallel: process {spec.process_id} of {spec.num_processes}, "
              f"coordinator {spec.addresses[0]}", file=sys.stderr)
    return DataParallelJob(spec, distribution)


def _initialize_jax(spec: JobSpec) -> None:
    import jax

    # Arrays on CPU devices are reduced across processes through gloo (JAX's default CPU
    # collectives stay inside one process); GPU arrays use NCCL whatever this says.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeout = max(1, int(round(spec.timeout)))
    try:
        # Called directly rather than through keras.distribution.initialize, which reads the
        # same three settings but cannot pass JAX's start-up and heartbeat timeouts.
        jax.distributed.initialize(
            coordinator_address=spec.addresses[0], num_processes=spec.num_processes,
            process_id=spec.process_id, initialization_timeout=timeout,
            heartbeat_timeout_seconds=timeout,
            # The others wait at exit while process 0 alone evaluates and writes the run.
            shutdown_timeout_seconds=max(3600, timeout))
    except RuntimeError as err:
        raise KcnnError(f"distribute: JAX could not start the job ({str(err).splitlines()[0]})") from None
    _ACTIVE["spec"] = spec

