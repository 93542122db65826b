"""Multi-process (multi-host) runs: ``jax.distributed.initialize`` when the config or the
environment asks for it, once, before anything touches a device.

What asks for it (the environment wins over the config, field by field, since a launcher sets
the per-process values there):

    config.distributed.enabled / AID_JAX_DISTRIBUTED=1   on ("0" in the environment: off)
    config.distributed.coordinator / AID_JAX_COORDINATOR  "host:port" of process 0's coordinator
                                                          ("" = detected: Cloud TPU pod, SLURM,
                                                          Open MPI, or JAX_COORDINATOR_ADDRESS)
    config.distributed.num_processes / AID_JAX_NUM_PROCESSES   0 = detected
    config.distributed.process_id / AID_JAX_PROCESS_ID          -1 = detected
    config.distributed.timeout_s / AID_JAX_DISTRIBUTED_TIMEOUT  seconds to wait for the others

Setting any of AID_JAX_COORDINATOR, AID_JAX_NUM_PROCESSES or AID_JAX_PROCESS_ID turns it on as
well. ``python -m aid_jax.main`` calls :func:`initialize` with its config before any mode runs;
code that trains through the library (a notebook, a script) calls it itself, first thing.

Two things JAX does not report as exceptions are checked first, because JAX aborts the process
on them with a bare ``DEADLINE_EXCEEDED`` or nothing at all: a coordinator that no process is
listening on (process ``i > 0`` waits up to ``timeout_s`` for a TCP connection, then raises a
``DistributedError`` saying what to check), and, on process 0, a coordinator port already taken
on this host.

In a multi-process run every process runs the same program on its own rows of each batch
(``train_loop.host_images``, ``train_loop.process_rows``); the update step, the validation and
Orbax's checkpoints are collective, and everything else that writes to the workdir (lock,
config.json, parameters.txt, metrics, grids, manifests, ``best/``) is done by process 0 only
(:func:`is_main_process`). The workdir must be one shared folder (the same path on every host).
Only the training modes run in several processes: ``evaluate``, ``tune``, ``sample`` and
``export`` refuse (``aid_jax.main.SINGLE_PROCESS_MODES``), and the train-then-evaluate modes
``aid`` / ``deft`` evaluate on process 0 alone, on its own devices.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import socket
import sys
import time
from collections.abc import Mapping

import jax

ENV_ENABLED = "AID_JAX_DISTRIBUTED"
ENV_COORDINATOR = "AID_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "AID_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "AID_JAX_PROCESS_ID"
ENV_TIMEOUT = "AID_JAX_DISTRIBUTED_TIMEOUT"
DEFAULT_TIMEOUT_S = 300


class DistributedError(RuntimeError):
    """The multi-process set-up cannot start; the message says what to change or check."""


@dataclasses.dataclass(frozen=True)
class Settings:
    enabled: bool = False
    coordinator: str = ""  # "" = detected by JAX
    num_processes: int = 0  # 0 = detected
    process_id: int = -1  # -1 = detected
    timeout_s: int = DEFAULT_TIMEOUT_S


def settings(config=None, environ: Mapping[str, str] | None = None) -> Settings:
    """The multi-process settings of ``config.distributed`` (absent: off), overridden by the
    environment; checked (``DistributedError`` naming the field and what it must be)."""
    environ = os.environ if environ is None else environ
    group = None
    if config is not None and "distributed" in config:
        group = config.distributed
    values = dataclasses.asdict(Settings())
    if group is not None:
        unknown = set(group.keys()) - set(values)
        if unknown:
            raise DistributedError(
                f"config.distributed has unknown fields {sorted(unknown)}; the fields are "
                f"{sorted(values)}"
            )
        values.update({k: group[k] for k in group.keys()})
    env_fields = {
        ENV_COORDINATOR: ("coordinator", str),
        ENV_NUM_PROCESSES: ("num_processes", int),
        ENV_PROCESS_ID: ("process_id", int),
        ENV_TIMEOUT: ("timeout_s", int),
    }
    for name, (field, kind) in env_fields.items():
        raw = environ.get(name, "").strip()
        if not raw:
            continue
        try:
            values[field] = kind(raw)
        except ValueError:
            raise DistributedError(f"{name}={raw!r} is not an integer") from None
        if name != ENV_TIMEOUT:
            values["enabled"] = True
    switch = environ.get(ENV_ENABLED, "").strip()
    if switch:
        if switch not in ("0", "1"):
            raise DistributedError(f"{ENV_ENABLED}={switch!r}: use 1 (on) or 0 (off)")
        values["enabled"] = switch == "1"
    s = Settings(
        enabled=bool(values["enabled"]),
        coordinator=str(values["coordinator"] or "").strip(),
        num_processes=int(values["num_processes"]),
        process_id=int(values["process_id"]),
        timeout_s=int(values["timeout_s"]),
    )
    _check(s)
    return s


def _check(s: Settings) -> None:
    if s.timeout_s < 1:
        raise DistributedError(f"distributed.timeout_s={s.timeout_s}: give at least 1 second")
    if s.num_processes < 0:
        raise DistributedError(
            f"distributed.num_processes={s.num_processes}: give the number of processes (or 0 "
            "to have it detected)"
        )
    if s.process_id < -1 or (s.num_processes and s.process_id >= s.num_processes):
        raise DistributedError(
            f"distributed.process_id={s.process_id} with num_processes={s.num_processes}: each "
            "process needs its own id in 0..num_processes-1 (or -1 to have it detected)"
        )
    if s.coordinator:
        _host_port(s.coordinator)


def _host_port(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedError(
            f"distributed.coordinator={address!r}: give process 0's address as host:port, e.g. "
            "10.0.0.2:1234 (the same on every process)"
        )
    return host.strip("[]"), int(port)


def initialize(config=None, environ: Mapping[str, str] | None = None) -> bool:
    """``jax.distributed.initialize`` when ``config.distributed`` or the environment asks for it
    (module docstring); returns whether this is a multi-process run set up by JAX's distributed
    runtime. Call it once, before anything touches a device; a second call is a no-op.

    Raises:
      DistributedError: bad settings; devices already in use (call this first); the coordinator
        cannot be reached within ``timeout_s``, or (process 0) its port is taken.
    """
    s = settings(config, environ)
    if not s.enabled:
        return False
    if jax.distributed.is_initialized():  # by an earlier call (or by the caller, directly)
        return True
    from jax._src import xla_bridge  # no public way to ask whether a backend has started

    if xla_bridge.backends_are_initialized():
        raise DistributedError(
            "multi-process training was asked for (config.distributed / AID_JAX_*), but JAX's "
            "devices are already in use in this process: call "
            "aid_jax.distributed.initialize(config) first, before any JAX computation, "
            "jax.devices() or training"
        )
    if s.coordinator and s.process_id == 0:
        _check_port_free(s.coordinator)
    elif s.coordinator and s.process_id > 0:
        _wait_for_coordinator(s.coordinator, s.process_id, s.timeout_s)
    print(
        f"aid_jax: joining {s.num_processes or 'the detected number of'} processes as process "
        f"{s.process_id if s.process_id >= 0 else '(detected)'}, coordinator "
        f"{s.coordinator or '(detected)'}; JAX aborts with DEADLINE_EXCEEDED if not all "
        f"processes join within {s.timeout_s} s",
        file=sys.stderr,
        flush=True,
    )
    try:
        jax.distributed.initialize(
            coordinator_address=s.coordinator or None,
            num_processes=s.num_processes or None,
            process_id=s.process_id if s.process_id >= 0 else None,
            initialization_timeout=s.timeout_s,
        )
    except (RuntimeError, ValueError, TypeError) as e:  # e.g. nothing to detect the cluster from
        if jax.distributed.is_initialized():
            jax.distributed.shutdown()
        raise DistributedError(
            f"jax.distributed.initialize failed ({type(e).__name__}: {e}). Outside a Cloud TPU "
            "pod, SLURM or Open MPI, set distributed.coordinator (host:port of process 0), "
            "distributed.num_processes and distributed.process_id (or AID_JAX_COORDINATOR, "
            "AID_JAX_NUM_PROCESSES, AID_JAX_PROCESS_ID) on every process"
        ) from e
    return True


def _wait_for_coordinator(address: str, process_id: int, timeout_s: int) -> None:
    """Wait until something accepts TCP connections at ``address`` (JAX's own wait ends the
    process with a bare DEADLINE_EXCEEDED instead of an exception)."""
    host, port = _host_port(address)
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
                return
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    raise DistributedError(
        f"process {process_id} could not reach the coordinator {address} within {timeout_s} s "
        f"({type(last).__name__}: {last}). Check that process 0 has been started with the same "
        f"coordinator, that {host} is process 0's address as seen from this host (not "
        f"localhost on another machine) and that port {port} is open between the hosts "
        f"(firewall); raise distributed.timeout_s ({ENV_TIMEOUT}) if process 0 starts late"
    )


def _check_port_free(address: str) -> None:
    """Process 0 serves the coordinator on ``address``'s port on every interface; a port taken
    by another program makes JAX end the process without a message."""
    _, port = _host_port(address)
    for family, bind in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:  # no IPv6 on this host
            continue
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((bind, port))
            except OSError as e:
                if family == socket.AF_INET6 and e.errno != errno.EADDRINUSE:
                    continue  # IPv6 present but not bindable: try IPv4
                raise DistributedError(
                    f"process 0 serves the coordinator on port {port}, but that port is in use "
                    f"on this host ({e.strerror or e}); choose a free port in "
                    "distributed.coordinator (the same on every process)"
                ) from None
        return


def is_main_process() -> bool:
    """Whether this process writes the run's files (process 0; always true in one process)."""
    return jax.process_index() == 0


__all__ = [
    "DistributedError",
    "Settings",
    "initialize",
    "is_main_process",
    "settings",
]
