"""The one registry of inpainting methods: name -> :class:`Method` (run, cost, option defaults).

Zero-shot methods (a pure ``method(denoise, y, mask, key, labels=None, **options)`` per file of
this package) are built the same way: :func:`make_inpainter` checks the options, computes the
costs and jits the method over ``denoise_with_params(params, x, sigma[, labels])``, with the
parameters a call argument. A method that brings its own parameters (AID) has a ``build``
instead. Everything a caller needs — option names and defaults (:func:`method_options`), costs
(:func:`method_cost`), the built :class:`~contract.Inpainter` — comes from here.

Latent space: ``"latent/<name>"`` is every registered method run on the latents of a VAE
(``aid_jax.latent``): :func:`get` derives its :class:`Method` from ``<name>``'s (the same options
plus ``aid_jax.latent.OPTIONS``), and :func:`make_inpainter` builds it with the VAE of
``Resources.vae``. The names are derived on demand, not listed in :data:`REGISTRY`.

Adding a method: one file with ``<name>(denoise, y, mask, key, labels=None, *, options)`` and
``cost(**options) -> (nfe, nfe_backward)`` (raising ``ValueError`` for bad option values), and one
line in :data:`REGISTRY`.

The noise schedule is one option, ``schedule`` (a ``sampling.EDMSchedule``). Configs and the
command line give it flat (``sigma_min``, ``sigma_max``, ``rho``): at this boundary
(:func:`merge_options`, and the registered ``run`` of a method) those replace the fields of the
given schedule, else of the method's default; :func:`flat_options` writes options back flat (JSON,
Markdown), so stored files keep the three keys.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax

from aid_jax import sampling
from aid_jax.methods import (
    aid,
    contract,
    ddnm,
    ddnm_plus,
    ddrm,
    deft,
    dps,
    pigdm,
    repaint,
    replacement,
    unguided,
    vipaint,
)
from aid_jax.methods import primitives as prim
from aid_jax.methods.contract import Inpainter, InpaintResult, Resources

__all__ = [
    "LATENT_PREFIX",
    "REGISTRY",
    "Method",
    "flat_options",
    "get",
    "make_inpainter",
    "merge_options",
    "method_cost",
    "method_options",
    "zero_shot_methods",
]


# "latent/<name>": method <name> on a VAE's latents (aid_jax.latent).
LATENT_PREFIX = "latent/"


@dataclasses.dataclass(frozen=True)
class Method:
    """One registered inpainting method.

    Attributes:
        name: The registry name (what configs and the command line use).
        options: Every keyword option with its default.
        cost: ``cost(**options) -> (nfe, nfe_backward)`` per sample; raises ``ValueError`` for
            bad option values (so it is also the option check).
        run: The pure method ``run(denoise, y, mask, key, labels=None, **options) ->
            InpaintResult`` of a zero-shot method; None for a method that brings its own
            parameters.
        build: For a method with its own parameters (AID):
            ``build(options, *, label_dim, resources) -> Inpainter``.
        samples_option: The option a caller sets to the number of sample rows per image when an
            image's rows must share work (VIPaint: ``samples_per_fit``, one fit per image; the
            rows of one image must then be consecutive and batches hold whole images); None.
        wraps: For a derived method (``"latent/<name>"``): the registered method it runs in
            latent space; its ``build`` then also takes ``denoise_with_params``. None otherwise.
    """

    name: str
    options: Mapping[str, Any]
    cost: Callable[..., tuple[int, int]]
    run: Callable[..., InpaintResult] | None = None
    build: Callable[..., Inpainter] | None = None
    samples_option: str | None = None
    wraps: str | None = None

    @property
    def zero_shot(self) -> bool:
        """A pure function of a denoiser (no parameters of its own)."""
        return self.run is not None


def _fold_schedule(options: Mapping[str, Any], default) -> dict[str, Any]:
    """``options`` with flat ``sigma_min``/``sigma_max``/``rho`` folded into ``schedule``: they
    replace those fields of the given ``schedule``, else of ``default`` (validated there)."""
    flat = {k: options[k] for k in sampling.SCHEDULE_FIELDS if k in options}
    if not flat:
        return dict(options)
    rest = {k: v for k, v in options.items() if k not in flat}
    base = rest.get("schedule", default)
    prim.check_schedule(base)
    return {**rest, "schedule": dataclasses.replace(base, **flat)}


def _zero_shot(module, **fields) -> Method:
    """The entry of a method file: its function (named like the file), its ``cost`` and the
    defaults of the function's keyword-only options."""
    name = module.__name__.rsplit(".", 1)[1]
    run = getattr(module, name)
    params = inspect.signature(run).parameters.values()
    options = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return Method(name, MappingProxyType(options), module.cost, run=run, **fields)


REGISTRY: Mapping[str, Method] = MappingProxyType(
    {
        m.name: m
        for m in (
            _zero_shot(unguided),
            _zero_shot(replacement),
            _zero_shot(repaint),
            _zero_shot(dps),
            _zero_shot(pigdm),
            _zero_shot(ddrm),
            _zero_shot(ddnm),
            _zero_shot(ddnm_plus),
            _zero_shot(vipaint, samples_option="samples_per_fit"),
            Method("aid", MappingProxyType(aid.OPTIONS), aid.cost, build=aid.build),
            Method("deft", MappingProxyType(deft.OPTIONS), deft.cost, build=deft.build),
        )
    }
)


def zero_shot_methods() -> dict[str, Callable[..., InpaintResult]]:
    """name -> pure method function, for the zero-shot methods (``baselines.METHODS``)."""
    return {name: m.run for name, m in REGISTRY.items() if m.zero_shot}


def get(name: str) -> Method:
    """The registered method ``name`` (or the derived ``"latent/<name>"``, ``aid_jax.latent``);
    ``ValueError`` listing the names for an unknown one."""
    if isinstance(name, str) and name.startswith(LATENT_PREFIX) and name != LATENT_PREFIX:
        from aid_jax import latent  # imports this module: loaded on first use

        return latent.latent_method(get(name[len(LATENT_PREFIX) :]))
    if not isinstance(name, str) or name not in REGISTRY:
        raise ValueError(f"unknown inpainting method {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def method_options(name: str) -> dict[str, Any]:
    """The keyword options of method ``name`` with their defaults.

    A method on the EDM σ grid has the option ``schedule``, a ``sampling.EDMSchedule``
    (default ``EDMSchedule()``: sigma_min 0.002, sigma_max 80, rho 7; read it as
    ``method_options("dps")["schedule"].sigma_max``); its fields may be given flat as options
    (:func:`merge_options`), and :func:`flat_options` gives the three keys instead.
    """
    return dict(get(name).options)


def flat_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with ``schedule`` written as its three fields ``sigma_min``, ``sigma_max``,
    ``rho`` (``dataclasses.asdict``), in its place: what JSON and Markdown records store."""
    out: dict[str, Any] = {}
    for k, v in options.items():
        if k == "schedule" and isinstance(v, sampling.EDMSchedule):
            out.update(dataclasses.asdict(v))
        else:
            out[k] = v
    return out


def merge_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults of ``name`` updated with ``options``; ``ValueError`` for unknown names.

    Flat ``sigma_min``/``sigma_max``/``rho`` replace those fields of the ``schedule`` given, else
    of the default one (``ValueError`` for bad values, from ``EDMSchedule``). Size options
    (``num_steps``, jump and repeat counts, samples, iterations) above
    ``primitives.MAX_COUNT`` are refused here, in O(1), before a method builds anything.
    """
    defaults = method_options(name)
    if "schedule" in defaults:
        options = _fold_schedule(options, defaults["schedule"])
    unknown = sorted(set(options) - set(defaults))
    if "labels" in unknown:
        raise ValueError(
            "labels are not an option: pass them per call, fn(params, y, mask, key, labels=...), "
            "and the number of classes as make_inpainter(..., label_dim=N)"
        )
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for method {name!r}; "
            f"accepted: {', '.join(defaults)}"
            + (" (schedule also as sigma_min, sigma_max, rho)" if "schedule" in defaults else "")
        )
    prim.check_sizes(options)
    return {**defaults, **options}


def method_cost(name: str, **options) -> tuple[int, int]:
    """``(nfe, nfe_backward)`` per sample of method ``name`` with these options (host only).

    Also checks the option values, raising ``ValueError`` for bad ones.
    """
    return get(name).cost(**merge_options(name, options))


def make_inpainter(
    method: str,
    denoise_with_params: Callable[..., jax.Array] | None = None,
    *,
    label_dim: int = 0,
    resources: Resources | None = None,
    **options,
) -> Inpainter:
    """The :class:`~contract.Inpainter` ``fn(params, y, mask, key, labels=None)`` running
    ``method`` with ``options``.

    ``denoise_with_params(params, x, sigma)`` is the backbone of an unconditional model
    (``label_dim=0``), e.g. ``lambda p, x, s: backbones.denoise(p, x, s, config=cfg)``; with
    ``label_dim > 0`` (a class-conditional backbone, ``cfg.label_dim``) it is called as
    ``denoise_with_params(params, x, sigma, labels)`` with ``labels`` float32 one-hot rows
    ``[rows, label_dim]``, e.g. ``lambda p, x, s, l=None: backbones.denoise(p, x, s, l,
    config=cfg)`` (that form serves both). The parameters stay a jit argument (never baked in as
    constants). The method name and options are checked here (``ValueError`` for an unknown name,
    option or bad value); every call then runs ``contract.validate_inputs``, a key check and
    ``backbones.prepare_labels`` on the host before the jitted core.

    Args:
        method: A name in :data:`REGISTRY`, or ``"latent/<name>"`` (then ``resources.vae`` is
            the VAE and ``denoise_with_params`` the latent denoiser; ``aid_jax.latent``).
        denoise_with_params: The backbone denoiser with its parameters as first argument (not
            used by a method that brings its own parameters, e.g. ``"aid"``).
        label_dim: The backbone's number of classes (``config.label_dim``; 0 = unconditional).
            With ``label_dim > 0`` every call needs ``labels``; with 0 none may be given.
        resources: What a method with its own parameters may use to load them (the loaded
            backbone, where to place them, a cache); see :class:`~contract.Resources`.
        **options: Keyword options of the method (see :func:`method_options`).

    Returns:
        An :class:`~contract.Inpainter` (``jitted``, ``method``, ``options`` with defaults,
        ``nfe``, ``nfe_backward``, ``label_dim``, ``params``).
    """
    entry = get(method)
    prim.check_int("label_dim", label_dim, lo=0)
    label_dim = int(label_dim)
    opts = merge_options(method, options)
    if entry.wraps is not None:  # "latent/<name>": the VAE comes from resources.vae
        return entry.build(
            opts,
            label_dim=label_dim,
            resources=resources or Resources(),
            denoise_with_params=denoise_with_params,
        )
    if entry.build is not None:
        return entry.build(opts, label_dim=label_dim, resources=resources or Resources())
    if denoise_with_params is None:
        raise ValueError(f"method {method!r} needs denoise_with_params (the backbone denoiser)")
    nfe, nfe_backward = entry.cost(**opts)
    fn = entry.run

    def core(params, y, mask, key, labels=None) -> InpaintResult:
        if labels is None:  # unconditional: exactly the method on the 3-argument denoiser

            def denoise(x, sigma):
                return denoise_with_params(params, x, sigma)

            return fn(denoise, y, mask, key, **opts)

        def denoise_labelled(x, sigma, rows):
            return denoise_with_params(params, x, sigma, rows)

        return fn(denoise_labelled, y, mask, key, labels, **opts)

    group = int(opts[entry.samples_option]) if entry.samples_option else 1
    core = jax.jit(contract.per_row_keys(core, group))

    return Inpainter(
        jitted=core,
        method=method,
        options=opts,
        nfe=nfe,
        nfe_backward=nfe_backward,
        label_dim=label_dim,
    )
