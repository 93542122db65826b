"""A teacher for AID's terminal cost: a strong registered sampler run from the rollout's own start.

Ψ's teacher term ‖x_K − T‖²/d (``AIDConfig.psi_teacher``; docs/AID_DESIGN.md, "Objectives that
sample the posterior") needs T to be a function of the rollout's start X_0 — then the optimal
deterministic guidance maps each X_0 to its own sharp sample instead of every X_0 to the
posterior mean. Any zero-shot method of :mod:`aid_jax.methods` serves: it starts from
x = σ_max·normal(k_init) with ``k_init, k_steps = split(key)`` (the methods' noise rule,
:mod:`aid_jax.methods.primitives`), so giving the teacher one key per row and drawing the
rollout's X_0 from the same keys (:meth:`Teacher.starts`) makes both start from the same X_0;
a stochastic teacher's later noise comes from ``k_steps`` of the same key, so T is still a
function of the key and hence of X_0. Per-row keys (``methods.contract.per_row_keys``) make each
row's T independent of the batch it sits in.

The teacher runs inside the jitted training step, forward (and backward, for ΠGDM/DPS) through
the frozen backbone, under ``stop_gradient``; its cost per step is its NFE on the batch's
distinct observations (``Teacher.nfe``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from aid_jax import sampling
from aid_jax.methods import contract, registry

__all__ = ["Teacher", "make_teacher"]


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A registered method with fixed options, run with one key per row.

    Attributes:
        method: Registry name (``'pigdm'``, ``'ddnm'``, ``'repaint'``, ...).
        options: Its options (``num_steps`` and the schedule included).
        nfe, nfe_backward: Its cost per sample.
    """

    method: str
    options: Mapping
    nfe: int
    nfe_backward: int

    @property
    def sigma_max(self) -> float:
        return float(self.options["schedule"].sigma_max)

    def starts(self, keys: jax.Array, shape) -> jax.Array:
        """X_0 of every row, exactly as the teacher draws it: σ_max·normal(split(key)[0]).

        Args:
            keys: One PRNG key per row, ``[B]``.
            shape: One image's shape (H, W, C).
        """
        # The float32 σ_0 of the teacher's own grid, the value the methods multiply by.
        sigma_max = self.options["schedule"].sigmas(int(self.options["num_steps"]))[0]

        def one(key):
            k_init, _ = jax.random.split(key)
            return sigma_max * jax.random.normal(k_init, (1, *shape), jnp.float32)

        return jax.vmap(one)(keys)[:, 0]

    def __call__(self, denoise, y, mask, keys, labels=None) -> jax.Array:
        """T ``[B, H, W, C]``: the method on (y, mask), row i from ``keys[i]``; no gradient."""
        run = registry.get(self.method).run
        options = dict(self.options)

        def core(params, y_, mask_, key_, labels_):
            del params
            return run(denoise, y_, mask_, key_, labels_, **options)

        out = contract.per_row_keys(core)(None, y, mask, keys, labels).x
        return jax.lax.stop_gradient(out.astype(jnp.float32))


def make_teacher(spec, schedule: sampling.EDMSchedule) -> Teacher | None:
    """The :class:`Teacher` of ``config.train.teacher`` (``method``, ``num_steps``, ``options``),
    or None when ``method`` is empty. Its schedule must start at AID's σ_max (same X_0); it
    defaults to AID's. Bad names and options fail here, before anything compiles, naming the
    option (the registry's checks)."""
    spec = dict(spec or {})
    name = str(spec.get("method", "") or "")
    if not name:
        return None
    unknown = sorted(set(spec) - {"method", "num_steps", "options"})
    if unknown:
        raise ValueError(
            f"train.teacher has unknown keys {unknown}: use method, num_steps, options"
        )
    try:
        method = registry.get(name)
    except ValueError as e:
        raise ValueError(f"train.teacher.method={name!r}: {e}") from None
    if method.run is None:
        raise ValueError(
            f"train.teacher.method={name!r} brings its own parameters; a teacher must be a "
            "zero-shot method of the registry (pigdm, ddnm, repaint, dps, ...)"
        )
    given = dict(spec.get("options") or {})
    if spec.get("num_steps"):
        given["num_steps"] = int(spec["num_steps"])
    if not any(k in given for k in ("schedule", *sampling.SCHEDULE_FIELDS)):
        given["schedule"] = schedule
    options = registry.merge_options(name, given)
    if float(options["schedule"].sigma_max) != float(schedule.sigma_max):
        raise ValueError(
            f"train.teacher's schedule starts at sigma_max={options['schedule'].sigma_max} but "
            f"AID's at {schedule.sigma_max}: they must start from the same X_0"
        )
    nfe, nfe_backward = method.cost(**options)  # also checks the option values
    return Teacher(method=name, options=options, nfe=int(nfe), nfe_backward=int(nfe_backward))
