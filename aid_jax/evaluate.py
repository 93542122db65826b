"""Main-mode `evaluate`: every chosen method × mask × step count on one frozen backbone, one fixed
seeded test set, one set of metrics.

    python -m aid_jax.main --config=configs/eval_fashion_mnist.py --workdir=runs/eval

Flow: :func:`plan` (every config error, including the methods' option names and values, before
anything is loaded) → ``_setup`` (backbone, test set, labels, masks, metric networks, reference
features, mesh) → ``_evaluate`` (reference rows, then per (mask, method, steps) ``_inpaint`` and
``_score``) → ``_write``. Every method, AID included (its ``checkpoint`` option), is built by
``aid_jax.methods.make_inpainter`` into an ``Inpainter``; :func:`evaluation_config` turns an AID
run's config into the harness config.

Writes to the workdir:
  results.json           config, provenance (backbone, metric networks, device) and one row per
                         (mask, method, steps): NFE forward/backward, seconds per image, every
                         metric with its 95% bootstrap CI (per-image metrics) or ± std (KID)
  results.md             the same as Markdown tables, one per mask
  per_image.npz          every per-image metric, so tables can be regenerated
  masks/<mask>.npz/.png  the exact masks used (aid_jax.masks.save_masks)
  outputs/               (eval.save_outputs) every raw output, <mask>__<method>__<steps>.npz
  jobs/                  every finished (mask, method, steps) job with a fingerprint of its inputs:
                         an interrupted run resumes where it stopped (eval.resume, default True)
  png/                   (eval.export_png) composited outputs as PNG folders
  grid_<mask>.png        rows = test images; columns = observed, mask, every method, ground truth
  quality_vs_nfe.png     the headline metric against network passes per image, one panel per mask

Metrics (docs/EVALUATION.md): PSNR / SSIM / LPIPS on the hole and on the full image, the full-image
ones both for the raw output and for the composite m⊙y + (1 − m)⊙x ("paste-back"); PSNR of the raw
output on the known pixels (how well a method keeps what it was given); FID/KID with the in-domain
classifier's features ("_lenet") and optionally InceptionV3 ("_inception"), against a reference
set, with the ground truth and the observed (hole = grey) images as reference rows; class accuracy
of the frozen classifier; diversity (mean pairwise LPIPS in the hole) when samples_per_image > 1.

Class labels (`eval.use_labels`): on a class-conditional backbone (label_dim > 0) every method
gets the test images' labels (`labels=`, one-hot rows; each image's label on all its sample
rows). None (default) = on when the backbone is conditional and the data has labels for every
chosen image; True = on (an error if the backbone is unconditional or the data unlabelled);
False = off: a conditional backbone then gets its zero class vector (explicit zero rows), as
before labels were wired in. An unconditional backbone never gets labels. results.json records
the choice under data.labels.

Latent backbones (`config.vae`, docs/LATENT.md): with `config.vae.path` (or `.random`) set, the
backbone denoises the VAE's latents and every method entry runs as `"latent/<method>"`
(aid_jax.latent: the observation encoded once, the method in latent space, decoded once); data,
masks and metrics stay in pixels (a `vae_latents` data source is unwrapped to its images), and
each row also records the VAE encoder/decoder passes per sample.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import itertools
import json
import math
import pathlib
import platform
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from aid_jax import backbones, latent, masks, methods, report, sharding
from aid_jax import images as image_lib
from aid_jax.data import pipeline, sources
from aid_jax.metrics import fid as fid_lib
from aid_jax.metrics import image_quality

REFERENCE_ROWS = ("ground truth", "observed")


class EvaluationError(ValueError):
    """A bad evaluation config (unknown method or mask, impossible batch, ...)."""


# ---------------------------------------------------------------------------------------------
# Config: the harness config of an AID run, checks (before anything is loaded or compiled)


def evaluation_config(config, workdir: str | None = None):
    """The harness config of a run: ``data`` = ``eval_data`` (the test split) when the config has
    one, and every ``aid`` method without a checkpoint pointed at ``workdir`` (the AID run just
    trained). Configs without ``eval_data`` and ``methods`` (e.g. configs/eval_fashion_mnist.py
    has no ``eval_data``) are returned unchanged."""
    if "eval_data" not in config and "methods" not in config:
        return config
    out = config.copy_and_resolve_references()
    with out.unlocked():
        if "eval_data" in out:
            out.data = out.eval_data
        for entry in out.methods.values():
            aid = entry.get("method") == "aid"
            if aid and workdir is not None and not entry.options.get("checkpoint"):
                entry.options.checkpoint = str(workdir)
    return out


def _names(value, available, what: str) -> list[str]:
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value)]
    names = [n for n in names if n]
    if not names:
        raise EvaluationError(f"no {what} chosen; available: {', '.join(available)}")
    unknown = [n for n in names if n not in available]
    if unknown:
        raise EvaluationError(
            f"unknown {what} {', '.join(map(repr, unknown))}; defined in the config: "
            f"{', '.join(available)} (add an entry under config.{what} or fix the name)"
        )
    return names


def latent_config(config) -> bool:
    """Whether the config runs a latent backbone (``config.vae`` with a path or a recipe)."""
    vae = config.get("vae")
    return bool(vae) and bool(vae.get("path") or vae.get("random"))


def registry_name(config, name: str) -> str:
    """The registry name entry ``name`` runs: its ``method``, as ``"latent/<method>"`` when the
    config has a VAE (:func:`latent_config`)."""
    method = config.methods[name].method
    from aid_jax.methods.registry import LATENT_PREFIX as prefix

    if latent_config(config) and not method.startswith(prefix):
        return prefix + method
    return method


def method_options(config, name: str, steps: int) -> dict[str, Any]:
    """The options the harness passes to method entry ``name`` at ``steps`` steps: the entry's
    options, ``num_steps``, and (for a method whose sample rows share work, e.g. VIPaint's one
    fit per image) its samples option = ``eval.samples_per_image``."""
    entry = config.methods[name]
    options = dict(entry.options.to_dict()) if "options" in entry else {}
    options["num_steps"] = steps
    samples_option = methods.get(registry_name(config, name)).samples_option
    if samples_option:
        options[samples_option] = int(config.eval.samples_per_image)
    return options


def _check_method_entry(config, name: str) -> None:
    entry = config.methods[name]
    try:
        registered = methods.get(registry_name(config, name))
    except ValueError as e:
        raise EvaluationError(
            f"config.methods.{name}.method={entry.method!r} is not an inpainting method ({e}); "
            f"known: {', '.join(sorted(methods.REGISTRY))}"
        ) from e
    samples_option = registered.samples_option
    if samples_option:
        if samples_option in entry.get("options", {}):
            raise EvaluationError(
                f"config.methods.{name}.options.{samples_option} is set by the harness "
                "(= eval.samples_per_image: an image's sample rows share its fit); remove it"
            )
        if config.eval.batch_size % config.eval.samples_per_image:
            raise EvaluationError(
                f"method {entry.method!r} shares one fit among an image's samples "
                f"({samples_option}): "
                f"eval.batch_size={config.eval.batch_size} must be a multiple of "
                f"eval.samples_per_image={config.eval.samples_per_image}"
            )
    steps = tuple(entry.steps)
    if not steps or any(int(s) < 1 for s in steps):
        raise EvaluationError(f"config.methods.{name}.steps must be positive ints, got {steps}")
    for s in steps:  # option names and values (the method's cost checks them)
        try:
            methods.method_cost(registry_name(config, name), **method_options(config, name, int(s)))
        except ValueError as e:
            raise EvaluationError(f"config.methods.{name}: {e}") from e


def plan(config) -> list[tuple[str, str, int]]:
    """The (mask, method entry, steps) triples this config evaluates, checked up front."""
    mask_names = _names(config.eval.masks, list(config.masks.keys()), "masks")
    method_names = _names(config.eval.methods, list(config.methods.keys()), "methods")
    if config.eval.samples_per_image < 1:
        raise EvaluationError("eval.samples_per_image must be >= 1")
    for name in method_names:
        _check_method_entry(config, name)
    for name in mask_names:
        if "kind" not in config.masks[name]:
            raise EvaluationError(f"config.masks.{name} has no 'kind'")
    if config.eval.batch_size % jax.device_count():
        raise EvaluationError(
            f"eval.batch_size={config.eval.batch_size} must be a multiple of the "
            f"{jax.device_count()} devices"
        )
    return [
        (mask, method, int(steps))
        for mask in mask_names
        for method in method_names
        for steps in config.methods[method].steps
    ]


# ---------------------------------------------------------------------------------------------
# Metric networks


def _lpips(config):
    if not config.metrics.lpips:
        return None
    from aid_jax.metrics import lpips

    return lpips.LPIPS.load(net=config.metrics.lpips)


def _classifier(config, image_shape):
    """The in-domain feature classifier when it fits the data (else None, with the reason)."""
    if not config.metrics.classifier:
        return None, "disabled"
    from aid_jax.metrics import features

    extractor = features.FeatureExtractor.load(config.metrics.classifier)
    if tuple(extractor.input_shape) != tuple(image_shape):
        return None, (
            f"classifier input {extractor.input_shape} != image shape {image_shape}: "
            "in-domain FID/KID and class accuracy skipped"
        )
    return extractor, ""


def _inception(config):
    if not config.metrics.inception:
        return None
    from aid_jax.metrics import inception

    return inception.InceptionFeatures.load()


# ---------------------------------------------------------------------------------------------
# The run


def _load_eval_set(config, image_shape):
    source = sources.make_source(latent.pixel_data_config(config.data))
    if tuple(source.image_shape) != tuple(image_shape):
        raise EvaluationError(
            f"data {source.name} has images {source.image_shape}, the backbone expects "
            f"{image_shape}; set config.data (e.g. pad_to) to match"
        )
    subset = str(config.eval.get("subset", "all"))
    try:
        idx = pipeline.eval_indices(
            len(source), int(config.eval.num_images), int(config.eval.seed), subset=subset
        )
    except ValueError as e:
        raise EvaluationError(f"eval.num_images / eval.subset: {e}") from e
    images_u8, labels = source.get(idx)
    return source, idx, pipeline.to_model_range(images_u8), labels


def _reference_features(extractor, source, config, cache: pathlib.Path, tag: str) -> np.ndarray:
    """Features of the reference set (the first `metrics.reference_num` images of a seeded
    permutation of the whole split), cached next to the run and keyed by network and data."""
    n = min(int(config.metrics.reference_num), len(source))
    key = f"{tag}-{extractor.sha256[:12]}-{source.name.replace('/', '_')}-{n}"
    path = cache / f"reference_{key}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["features"]
    idx = pipeline.eval_indices(len(source), n, seed=int(config.metrics.reference_seed))
    feats = []
    for start in range(0, n, 1000):
        u8, _ = source.get(idx[start : start + 1000])
        feats.append(extractor(pipeline.to_model_range(u8)))
    feats = np.concatenate(feats)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, features=feats)
    return feats


@jax.jit
def _paired_metrics(x, gt, mask):
    """Per-image PSNR/SSIM on the hole, the full image and the known pixels (all [B])."""
    hole = 1.0 - mask
    comp = mask * gt + hole * x
    return {
        "psnr_hole": image_quality.psnr(x, gt, region=hole),
        "ssim_hole": image_quality.ssim(x, gt, region=hole),
        "psnr_full": image_quality.psnr(comp, gt),
        "ssim_full": image_quality.ssim(comp, gt),
        "psnr_full_raw": image_quality.psnr(x, gt),
        "ssim_full_raw": image_quality.ssim(x, gt),
        "psnr_known_raw": image_quality.psnr(x, gt, region=mask),
    }


def _per_image_metrics(x, gt, mask, lpips_net, batch: int) -> dict[str, np.ndarray]:
    out: dict[str, list] = {}
    for start in range(0, x.shape[0], batch):
        sl = slice(start, start + batch)
        res = _paired_metrics(x[sl], gt[sl], mask[sl])
        if lpips_net is not None:
            comp = mask[sl] * gt[sl] + (1.0 - mask[sl]) * x[sl]
            res["lpips_hole"] = lpips_net(x[sl], gt[sl], region=1.0 - mask[sl])
            res["lpips_full"] = lpips_net(comp, gt[sl])
            res["lpips_full_raw"] = lpips_net(x[sl], gt[sl])
        for k, v in res.items():
            out.setdefault(k, []).append(np.asarray(v, np.float64))
    return {k: np.concatenate(v) for k, v in out.items()}


def _diversity(x, mask, k: int, lpips_net) -> np.ndarray:
    """Mean pairwise distance between the k samples of each image, inside the hole: LPIPS when
    available, else the RMS difference over hole pixels. x: [N·k, H, W, C] grouped by image."""
    n = x.shape[0] // k
    xs = x.reshape(n, k, *x.shape[1:])
    hole = (1.0 - mask).reshape(n, k, *mask.shape[1:])[:, 0]
    vals = np.zeros(n)
    pairs = list(itertools.combinations(range(k), 2))
    for i, j in pairs:
        if lpips_net is not None:
            d = np.asarray(lpips_net(xs[:, i], xs[:, j], region=hole), np.float64)
        else:
            diff2 = ((xs[:, i] - xs[:, j]) ** 2 * hole).sum(axis=(1, 2, 3))
            d = np.sqrt(diff2 / np.maximum(hole.sum(axis=(1, 2, 3)) * x.shape[-1], 1))
        vals += d
    return vals / len(pairs)


def _set_metrics(feats, ref_feats, tag: str, config) -> dict:
    mu, sig = fid_lib.feature_stats(feats)
    mu_r, sig_r = fid_lib.feature_stats(ref_feats)
    kid_mean, kid_std = fid_lib.kid(
        feats, ref_feats, num_subsets=int(config.metrics.kid_subsets), subset_size=1000
    )
    return {
        f"fid_{tag}": {"value": fid_lib.fid_from_stats(mu, sig, mu_r, sig_r)},
        # KID ×1e3 (the usual reporting scale)
        f"kid_{tag}": {"value": 1e3 * kid_mean, "std": 1e3 * kid_std},
    }


def _summaries(per_image: dict[str, np.ndarray], k: int, config) -> dict:
    out = {}
    for name, vals in per_image.items():
        v = vals.reshape(-1, k).mean(axis=1) if vals.shape[0] % k == 0 and k > 1 else vals
        out[name] = report.bootstrap_ci(
            v, num_resamples=int(config.eval.bootstrap), seed=int(config.eval.seed)
        )
    return out


def _eval_labels(config, backbone, source, labels, rows_per_image):
    """(labels of every output row, float32 one-hot [N·k, label_dim] or None; whether they are the
    images' classes; a note for the report).

    Checked before anything is compiled: `eval.use_labels=True` on an unconditional backbone or
    unlabelled data, class ids outside the backbone's range."""
    use = config.eval.get("use_labels", None)
    if use is not None and not isinstance(use, bool | np.bool_):
        raise EvaluationError(f"eval.use_labels must be True, False or None (auto), got {use!r}")
    label_dim = int(getattr(backbone.config, "label_dim", 0) or 0)
    labelled = labels is not None and int(source.num_classes) > 0 and bool((labels >= 0).all())
    if not label_dim:
        if use:
            raise EvaluationError(
                "eval.use_labels=True but the backbone is unconditional (label_dim 0): set "
                "eval.use_labels=None (auto) or False"
            )
        return None, False, "none (unconditional backbone)"
    if use and not labelled:
        raise EvaluationError(
            f"eval.use_labels=True but data {source.name} has no class label for every chosen "
            "image: use labelled data or set eval.use_labels=False"
        )
    if not (labelled if use is None else use):
        why = "eval.use_labels=False" if use is False else f"data {source.name} has no labels"
        zeros = np.zeros((len(rows_per_image), label_dim), np.float32)
        return zeros, False, f"off ({why}): the {label_dim}-class backbone's zero class vector"
    try:
        rows = backbones.prepare_labels(labels[rows_per_image], label_dim, len(rows_per_image))
    except backbones.BackboneError as e:
        raise EvaluationError(f"data {source.name}: {e}") from e
    return np.asarray(rows), True, f"on (the images' classes, {label_dim}-class backbone)"


def _device_description() -> str:
    d = jax.devices()[0]
    return f"{jax.device_count()}× {d.platform}:{getattr(d, 'device_kind', '')} ({platform.node()})"


# ---------------------------------------------------------------------------------------------
# The run: plan -> set-up -> reference rows -> per (mask, method, steps) inpaint and score -> write


def run(config, workdir: str) -> dict:
    """Evaluate; returns the results dict also written to results.json."""
    todo = plan(config)  # all config errors before anything heavy happens
    ev = _setup(config, pathlib.Path(workdir), todo)
    rows, per_image_all, grid_outputs = _evaluate(ev, todo)
    return _write(ev, rows, per_image_all, grid_outputs)


@dataclasses.dataclass
class _Setup:
    """What every (mask, method, steps) job of one evaluation shares, loaded once."""

    config: Any
    workdir: pathlib.Path
    backbone: Any
    source: Any
    idx: np.ndarray  # indices of the test images in the source
    gt: np.ndarray  # [N, H, W, C] test images in [-1, 1]
    labels: np.ndarray | None  # their class ids
    k: int  # samples per image: sample j of image i sits at row i·k + j
    label_rows: np.ndarray | None  # labels of every output row (one-hot) or None
    labels_used: bool
    labels_note: str
    mask_sets: dict[str, np.ndarray]  # name -> [N, H, W, 1]
    lpips_net: Any
    extractor: Any  # the in-domain classifier's features (or None)
    classifier_note: str
    inception_net: Any
    feature_nets: list[tuple[str, Any]]  # (tag, network) of the set-level metrics
    ref_source: Any
    references: dict[str, np.ndarray]  # feature network tag -> reference features
    mesh: Any
    params: Any  # the backbone's parameters, replicated on the mesh
    space: Any = None  # latent.LatentSpace (VAE parameters replicated) of a latent backbone
    vae_sha256: str = ""  # of the VAE's parameters (job fingerprints)
    paired: dict = dataclasses.field(default_factory=dict)  # filled by _write (_paired)

    @property
    def label_dim(self) -> int:
        return int(getattr(self.backbone.config, "label_dim", 0) or 0)

    @property
    def rows_per_image(self) -> np.ndarray:
        return np.repeat(np.arange(self.gt.shape[0]), self.k)

    @property
    def total_rows(self) -> int:
        return self.gt.shape[0] * self.k

    @property
    def batch(self) -> int:
        return int(self.config.eval.batch_size)

    @property
    def num_batches(self) -> int:
        return math.ceil(self.total_rows / self.batch)


def _setup(config, workdir: pathlib.Path, todo) -> _Setup:
    """Backbone, test images and labels, masks (saved and checked), metric networks and their
    reference features, the mesh and the replicated parameters."""
    workdir.mkdir(parents=True, exist_ok=True)
    backbone = backbones.backbone_from_config(config.backbone)
    shape, space = backbone.image_shape, None
    if latent_config(config):  # pixel images of the latent shape × the VAE's factor
        space = latent.space_from_config(config.vae)
        data_shape = sources.make_source(latent.pixel_data_config(config.data)).image_shape
        latent.check_pipeline(shape, space, data_shape)
        shape = space.image_shape(shape)
    source, idx, gt, labels = _load_eval_set(config, shape)
    k = int(config.eval.samples_per_image)
    label_rows, labels_used, labels_note = _eval_labels(
        config, backbone, source, labels, np.repeat(np.arange(gt.shape[0]), k)
    )
    mask_sets = _make_masks(config, workdir, dict.fromkeys(m for m, _, _ in todo), gt, shape)
    lpips_net = _lpips(config)
    extractor, classifier_note = _classifier(config, shape)
    inception_net = _inception(config)
    feature_nets = [(t, net) for t, net in (("lenet", extractor), ("inception", inception_net))]
    feature_nets = [(t, net) for t, net in feature_nets if net is not None]
    ref_source = sources.make_source(
        latent.pixel_data_config(config.metrics.reference_data or config.data)
    )
    cache = pathlib.Path(config.metrics.cache_dir or workdir / "cache")
    references = {
        t: _reference_features(net, ref_source, config, cache, t) for t, net in feature_nets
    }
    # This process's devices: an evaluation runs in one process (process 0 of a training run).
    mesh = sharding.make_mesh(jax.local_devices())
    vae_sha256 = "" if space is None else _tree_sha256(space.params)
    if space is not None:
        space = dataclasses.replace(space, params=sharding.replicate(space.params, mesh))
    return _Setup(
        config=config,
        workdir=workdir,
        backbone=backbone,
        source=source,
        idx=idx,
        gt=gt,
        labels=labels,
        k=k,
        label_rows=label_rows,
        labels_used=labels_used,
        labels_note=labels_note,
        mask_sets=mask_sets,
        lpips_net=lpips_net,
        extractor=extractor,
        classifier_note=classifier_note,
        inception_net=inception_net,
        feature_nets=feature_nets,
        ref_source=ref_source,
        references=references,
        mesh=mesh,
        params=sharding.replicate(backbone.params, mesh),
        space=space,
        vae_sha256=vae_sha256,
    )


def _make_masks(config, workdir: pathlib.Path, names, gt, shape) -> dict[str, np.ndarray]:
    """One fixed, seeded set per mask entry, shared by every method; saved, then every method's
    input checks (hole and observed pixels in every image, ranges, shapes) run on the host
    before anything is compiled."""
    mask_sets = {}
    (workdir / "masks").mkdir(exist_ok=True)
    for name in names:
        spec = config.masks[name].to_dict()
        seed = int(config.eval.mask_seed)
        m = masks.from_config(spec, gt.shape[0], shape[:2], seed=seed)
        masks.save_masks(workdir / "masks" / f"{name}.npz", m, seed=seed, **spec)
        methods.validate_inputs(m * gt, m, shape)
        mask_sets[name] = m
    return mask_sets


def _reference_rows(ev: _Setup) -> list[dict]:
    """Per mask: the set-level metrics of the ground truth and of the observed image (hole =
    grey), the rows every method is compared with."""
    rows = []
    for mask_name, m in ev.mask_sets.items():
        for ref in REFERENCE_ROWS:
            x = ev.gt if ref == "ground truth" else image_lib.observed_view(ev.gt, m)
            row = {"mask": mask_name, "method": ref, "steps": 0, "nfe": 0, "nfe_backward": 0}
            row["seconds_per_image"] = 0.0
            row["metrics"] = {}
            for t, net in ev.feature_nets:
                row["metrics"].update(_set_metrics(net(x), ev.references[t], t, ev.config))
            rows.append(row)
    return rows


class _Programs:
    """The built inpainters (``methods.make_inpainter``) and their ahead-of-time compiled
    executables, one per (method entry, steps), shared by every mask."""

    def __init__(self, ev: _Setup):
        self.ev = ev
        self.resources = methods.Resources(
            backbone=ev.backbone, place=lambda p: sharding.replicate(p, ev.mesh), vae=ev.space
        )
        self.inpainters: dict[tuple[str, int], methods.Inpainter] = {}
        self.executables: dict[tuple[str, int], Any] = {}
        self.compile_seconds: dict[tuple[str, int], float] = {}

    def inpainter(self, name: str, steps: int) -> methods.Inpainter:
        if (name, steps) not in self.inpainters:
            bconfig = self.ev.backbone.config

            def denoise_with_params(p, x, sigma, class_labels=None):
                return backbones.denoise(p, x, sigma, class_labels, config=bconfig)

            self.inpainters[(name, steps)] = methods.make_inpainter(
                registry_name(self.ev.config, name),
                denoise_with_params,
                label_dim=self.ev.label_dim,
                resources=self.resources,
                **method_options(self.ev.config, name, steps),
            )
        return self.inpainters[(name, steps)]

    def executable(self, name: str, steps: int, *args):
        """Compiled on first use and timed on its own, so that no batch runs twice."""
        if (name, steps) not in self.executables:
            t0 = time.perf_counter()
            lowered = self.inpainter(name, steps).jitted.lower(*args)
            self.executables[(name, steps)] = lowered.compile()
            self.compile_seconds[(name, steps)] = time.perf_counter() - t0
        return self.executables[(name, steps)]


def _evaluate(ev: _Setup, todo) -> tuple[list[dict], dict, dict]:
    """Reference rows, then every job: (rows, per-image metrics by key, grid columns)."""
    rows = _reference_rows(ev)
    programs = _Programs(ev)
    per_image_all, grid_outputs = {}, {}
    bar = tqdm(total=len(todo) * ev.num_batches, desc="evaluate", unit="batch")
    for mask_name, method_name, steps in todo:
        fingerprint = _job_fingerprint(ev, programs, mask_name, method_name, steps)
        done = _load_job(ev, mask_name, method_name, steps, fingerprint)
        if done is not None:  # finished by an earlier (interrupted) run with the same inputs
            row, per_image, grid = done
            rows.append(row)
            for name, v in per_image.items():
                per_image_all[f"{mask_name}/{method_name}/{steps}/{name}"] = v
            if grid is not None:
                grid_outputs[(mask_name, method_name)] = grid
            bar.update(ev.num_batches)
            continue
        x, seconds = _inpaint(ev, programs, mask_name, method_name, steps, bar)
        x = _displayable(x, f"{method_name} ({steps} steps, {mask_name})")
        if ev.config.eval.save_outputs:
            (ev.workdir / "outputs").mkdir(exist_ok=True)
            np.savez_compressed(
                ev.workdir / "outputs" / f"{mask_name}__{method_name}__{steps}.npz",
                x=x,
                rows_per_image=ev.rows_per_image,
            )
        if ev.config.eval.get("export_png", False):
            _export_png(ev, x, mask_name, method_name, steps)
        fn = programs.inpainter(method_name, steps)
        row = {
            "mask": mask_name,
            "method": method_name,
            "family": str(ev.config.methods[method_name].get("family", method_name)),
            "steps": steps,
            "nfe": int(fn.nfe),
            "nfe_backward": int(fn.nfe_backward),
            "seconds_per_image": seconds / (ev.num_batches * ev.batch),
            "compile_seconds": programs.compile_seconds[(method_name, steps)],
        }
        if ev.space is not None:  # VAE passes per sample (aid_jax.latent)
            row.update(
                encoder_calls=int(fn.encoder_calls),
                decoder_calls=int(fn.decoder_calls),
                decoder_backward=int(fn.decoder_backward),
            )
        per_image, row["metrics"], composites = _score(ev, x, mask_name)
        rows.append(row)
        for name, v in per_image.items():
            per_image_all[f"{mask_name}/{method_name}/{steps}/{name}"] = v
        # Keep the first images (sample 0) of the largest step count for the grids.
        grid = None
        if steps == max(ev.config.methods[method_name].steps):
            grid = composites[: int(ev.config.eval.grid_images)]
            grid_outputs[(mask_name, method_name)] = grid
        _save_job(ev, row, per_image, grid, fingerprint)
    bar.close()
    return rows, per_image_all, grid_outputs


# ---------------------------------------------------------------------------------------------
# Resumption: every finished (mask, method, steps) job is stored under <workdir>/jobs/ with a
# fingerprint of everything its numbers depend on; a rerun reads it instead of recomputing.


def _tree_sha256(tree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


def _job_fingerprint(ev: _Setup, programs, mask_name: str, method_name: str, steps: int) -> str:
    """sha256 of what a job's numbers depend on: backbone, images, labels, mask, method options
    and the parameters a method brings (AID: a retrained module is a new job), metrics, seeds.
    Not the batch size or device count (per-row keys make the outputs independent of them)."""
    config = ev.config
    fn = programs.inpainter(method_name, steps)
    entry = config.methods[method_name]
    payload = dict(
        version=1,
        backbone=[str(config.backbone.get("path", "")), ev.backbone.manifest.get("params_sha256")],
        backbone_params=None if ev.backbone.manifest.get("params_sha256") else "unhashed",
        data=ev.source.name,
        indices=hashlib.sha256(np.asarray(ev.idx, np.int64).tobytes()).hexdigest(),
        samples=ev.k,
        labels=ev.labels_note,
        seed=int(config.seed),
        eval_seed=int(config.eval.seed),
        bootstrap=int(config.eval.bootstrap),
        mask=[mask_name, config.masks[mask_name].to_dict(), int(config.eval.mask_seed)],
        method=[entry.method, entry.get("options", {}) and entry.options.to_dict(), steps],
        own_params=None if fn.params is None else _tree_sha256(fn.params),
        metrics=config.metrics.to_dict(),
        grid_images=int(config.eval.grid_images),
    )
    if ev.space is not None:  # a latent run: the VAE and the pipeline's options
        payload["vae"] = [str(config.vae.get("path", "")), ev.vae_sha256]
        payload["method"].append(fn.method)
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _job_path(ev: _Setup, mask_name: str, method_name: str, steps: int) -> pathlib.Path:
    return ev.workdir / "jobs" / f"{mask_name}__{method_name}__{steps}.npz"


def _save_job(ev: _Setup, row: dict, per_image: dict, grid, fingerprint: str) -> None:
    path = _job_path(ev, row["mask"], row["method"], row["steps"])
    path.parent.mkdir(exist_ok=True)
    arrays = {f"per_image/{k}": v for k, v in per_image.items()}
    if grid is not None:
        arrays["grid"] = grid
    meta = json.dumps(_json_safe(dict(fingerprint=fingerprint, row=row)))
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez_compressed(tmp, meta=np.array(meta), **arrays)
    tmp.replace(path)  # atomic: a job file is complete or absent


def _load_job(ev: _Setup, mask_name: str, method_name: str, steps: int, fingerprint: str):
    """(row, per-image metrics, grid or None) of a finished job with this fingerprint, else None
    (absent, damaged, or computed from other inputs — then it is recomputed and replaced)."""
    if not ev.config.eval.get("resume", True):
        return None
    path = _job_path(ev, mask_name, method_name, steps)
    if not path.exists():
        return None
    try:
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
            per_image = {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith("per_image/")}
            grid = f["grid"] if "grid" in f.files else None
    except (OSError, ValueError, KeyError) as e:
        print(f"warning: {path} is damaged ({e}); recomputing")
        return None
    if meta.get("fingerprint") != fingerprint:
        print(f"note: {path.name} was computed from other inputs; recomputing")
        return None
    return _json_restore(meta["row"]), per_image, grid


def _json_restore(obj):
    """Inverse of :func:`_json_safe` for metric values ('inf', '-inf', 'nan' back to floats)."""
    if isinstance(obj, dict):
        return {k: _json_restore(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_restore(v) for v in obj]
    if obj in ("inf", "-inf", "nan"):
        return float(obj)
    return obj


def row_keys(seed: int, mask_name: str, indices: np.ndarray, k: int) -> jax.Array:
    """One PRNG key per output row: row i·k + j (sample j of the test image with dataset index
    ``indices[i]``) gets fold_in(fold_in(fold_in(key(seed), crc32(mask name)), index), j).

    A row's noise depends on its image, sample and mask name only — not on the batch size, the
    device count, the other images chosen or the order of the masks — and every method sees the
    same key for the same row (paired comparisons)."""
    base = jax.random.key(seed)
    mask_key = jax.random.fold_in(base, zlib.crc32(mask_name.encode()) & 0x7FFFFFFF)
    image_keys = jax.vmap(jax.random.fold_in, (None, 0))(mask_key, np.asarray(indices, np.uint32))
    rows = jax.vmap(lambda key: jax.vmap(jax.random.fold_in, (None, 0))(key, np.arange(k)))(
        image_keys
    )
    return rows.reshape(-1)


def _inpaint(ev: _Setup, programs: _Programs, mask_name, method_name, steps, bar):
    """One method on every image row under one mask, batch by batch on the mesh: (raw outputs
    ``[N·k, H, W, C]``, seconds of execution)."""
    fn = programs.inpainter(method_name, steps)
    fn_params = fn.call_params(ev.params)  # the backbone's, or the bundle a method brings
    m_rows = ev.mask_sets[mask_name][ev.rows_per_image]
    y_rows = (m_rows * ev.gt[ev.rows_per_image]).astype(np.float32)
    keys = row_keys(int(ev.config.seed), mask_name, ev.idx, ev.k)
    outputs, seconds = [], 0.0
    for b in range(ev.num_batches):
        sl = np.arange(b * ev.batch, (b + 1) * ev.batch) % ev.total_rows  # pad the tail by wrapping
        y_b = sharding.shard_batch(y_rows[sl], ev.mesh)
        m_b = sharding.shard_batch(m_rows[sl], ev.mesh)
        key_b = sharding.shard_batch(keys[sl], ev.mesh)
        # Labels ride along only for a conditional backbone (unconditional: the 4-argument
        # call, exactly as without labels).
        extra = () if ev.label_rows is None else (sharding.shard_batch(ev.label_rows[sl], ev.mesh),)
        exe = programs.executable(method_name, steps, fn_params, y_b, m_b, key_b, *extra)
        t0 = time.perf_counter()
        res = exe(fn_params, y_b, m_b, key_b, *extra)
        x_b = np.asarray(jax.block_until_ready(res.x))
        seconds += time.perf_counter() - t0
        outputs.append(x_b)
        bar.update(1)
        bar.set_postfix_str(f"{mask_name}/{method_name}/{steps}")
    return np.concatenate(outputs)[: ev.total_rows], seconds


def _displayable(x: np.ndarray, what: str) -> np.ndarray:
    """Non-finite values replaced (with a warning) and clipped to [-1, 1]: metrics on
    displayable images, as after saving to PNG."""
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(axis=(1, 2, 3)).sum())
        print(f"warning: {what} gave {bad} non-finite images")
        x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    return np.clip(x, -1.0, 1.0)


def _score(ev: _Setup, x: np.ndarray, mask_name: str) -> tuple[dict, dict, np.ndarray]:
    """(per-image metrics, summarised metrics, composites of sample 0 of every image)."""
    config, k = ev.config, ev.k
    m_rows = ev.mask_sets[mask_name][ev.rows_per_image]
    gt_rows = ev.gt[ev.rows_per_image]
    per_image = _per_image_metrics(x, gt_rows, m_rows, ev.lpips_net, ev.batch)
    if k > 1:
        per_image["diversity"] = _diversity(x, m_rows, k, ev.lpips_net)
    metrics = _summaries(per_image, k, config)
    comp = m_rows * gt_rows + (1.0 - m_rows) * x
    first = np.arange(0, ev.total_rows, k)  # one sample per image for set-level metrics
    for t, net in ev.feature_nets:
        metrics.update(_set_metrics(net(comp[first]), ev.references[t], t, config))
        raw = _set_metrics(net(x[first]), ev.references[t], t, config)
        metrics.update({f"{name}_raw": v for name, v in raw.items()})
    labels = ev.labels
    if ev.extractor is not None and labels is not None and (labels >= 0).all():
        from aid_jax.metrics import classifier as clf

        logits = clf.logits(ev.extractor.params, comp[first])
        correct = (logits.argmax(axis=1) == labels).astype(np.float64)
        per_image["class_acc"] = correct
        metrics["class_acc"] = report.bootstrap_ci(
            correct, int(config.eval.bootstrap), seed=int(config.eval.seed)
        )
    return per_image, metrics, comp[first]


# ---------------------------------------------------------------------------------------------
# Writing: per_image.npz, grids, the quality-vs-NFE plot, results.md, results.json


def _headline(ev: _Setup) -> str:
    headline = ev.config.report.headline_metric
    if ev.lpips_net is None and headline.startswith("lpips"):
        headline = "psnr_hole"
    return headline


def _per_image_of(ev: _Setup, per_image_all: dict, mask: str, method: str, steps: int, metric):
    """One value per test image (the mean over its samples), or None if not measured."""
    v = per_image_all.get(f"{mask}/{method}/{steps}/{metric}")
    if v is None:
        return None
    return v.reshape(-1, ev.k).mean(axis=1) if v.shape[0] == ev.total_rows else v


def _paired(ev: _Setup, rows: list[dict], per_image_all: dict) -> dict:
    """Per mask, for the headline metric: every pair of method rows' paired-bootstrap difference
    (row − column, same images, masks and noise), and on each row the difference to the best
    row (``delta_<metric>_vs_best``, shown in the tables next to the means)."""
    metric = _headline(ev)
    lower = metric.startswith(report.LOWER_IS_BETTER)
    boot = dict(num_resamples=int(ev.config.eval.bootstrap), seed=int(ev.config.eval.seed))
    out = {}
    for mask in ev.mask_sets:
        values = {}
        for r in rows:
            if r["mask"] == mask and r["method"] not in REFERENCE_ROWS:
                v = _per_image_of(ev, per_image_all, mask, r["method"], r["steps"], metric)
                if v is not None:
                    values[(r["method"], r["steps"], id(r))] = (r, v)
        if not values:
            continue
        means = {key: float(np.mean(v)) for key, (_, v) in values.items()}
        best = min(means, key=means.get) if lower else max(means, key=means.get)
        names = {key: f"{key[0]}@{key[1]}" for key in values}
        for r, v in values.values():
            d = report.paired_bootstrap(v, values[best][1], **boot)
            r["metrics"][f"delta_{metric}_vs_best"] = d
        out[mask] = {
            "metric": metric,
            "best": names[best],
            "pairs": {
                f"{names[a]} - {names[b]}": report.paired_bootstrap(va, vb, **boot)
                for a, (_, va) in values.items()
                for b, (_, vb) in values.items()
                if a != b
            },
            "matrix_markdown": report.paired_matrix_markdown(
                [names[key] for key in values],
                {names[key]: v for key, (_, v) in values.items()},
                metric,
                **boot,
            ),
        }
    return out


def _export_png(ev: _Setup, x: np.ndarray, mask_name: str, method_name: str, steps: int):
    """Composited outputs as PNG files for external FID tools:
    ``png/<mask>/<method>_<steps>/<dataset index>_<sample>.png`` (ground truth once per mask in
    ``png/<mask>/ground_truth/``)."""
    m_rows = ev.mask_sets[mask_name][ev.rows_per_image]
    comp = m_rows * ev.gt[ev.rows_per_image] + (1.0 - m_rows) * x
    names = [f"{ev.idx[i]:06d}_{j}" for i in range(ev.gt.shape[0]) for j in range(ev.k)]
    folder = ev.workdir / "png" / mask_name
    image_lib.save_png_folder(comp, names, folder / f"{method_name}_{steps}")
    if not (folder / "ground_truth").exists():
        image_lib.save_png_folder(ev.gt, [f"{i:06d}" for i in ev.idx], folder / "ground_truth")


def _write(ev: _Setup, rows: list[dict], per_image_all: dict, grid_outputs: dict) -> dict:
    np.savez_compressed(ev.workdir / "per_image.npz", **per_image_all)
    _write_grids(ev, grid_outputs)
    headline = _headline(ev)
    ev.paired = _paired(ev, rows, per_image_all)
    method_rows = [r for r in rows if r["method"] not in REFERENCE_ROWS]
    report.quality_vs_nfe_plot(
        method_rows, headline, ev.workdir / "quality_vs_nfe.png", title=backbone_name(ev.backbone)
    )
    (ev.workdir / "results.md").write_text(_markdown(ev, rows))
    results = _results(ev, rows)
    (ev.workdir / "results.json").write_text(
        json.dumps(_json_safe(results), indent=1, allow_nan=False) + "\n"
    )
    print(f"wrote {ev.workdir / 'results.md'} and {ev.workdir / 'results.json'}")
    return results


def _write_grids(ev: _Setup, grid_outputs: dict) -> None:
    """Per mask: rows = test images; columns = observed, mask, every method, ground truth."""
    g = int(ev.config.eval.grid_images)
    for mask_name, m in ev.mask_sets.items():
        cols = [
            ("observed", image_lib.observed_view(ev.gt[:g], m[:g])),
            ("mask", image_lib.mask_as_image(m[:g])),
        ]
        cols += [(meth, grid_outputs[(mm, meth)]) for (mm, meth) in grid_outputs if mm == mask_name]
        cols.append(("ground truth", ev.gt[:g]))
        img, names = image_lib.comparison_grid(cols)
        upscale = ev.config.eval.png_upscale
        image_lib.save_png(img, ev.workdir / f"grid_{mask_name}.png", upscale=upscale)
        (ev.workdir / f"grid_{mask_name}.txt").write_text("columns: " + ", ".join(names) + "\n")


# What the report calls the images of each eval.subset (pipeline.eval_indices).
_SUBSET_WORDS = {
    "all": "images",
    "test": "test images (the validation block excluded)",
    "validation": "validation-block images (selection, not a test)",
}


def _markdown(ev: _Setup, rows: list[dict]) -> str:
    config = ev.config
    table_metrics = [m for m in config.report.table_metrics if any(m in r["metrics"] for r in rows)]
    md = [
        f"# Inpainting evaluation — {backbone_name(ev.backbone)}",
        "",
        f"{ev.gt.shape[0]} {_SUBSET_WORDS[str(config.eval.get('subset', 'all'))]} of "
        f"`{ev.source.name}` (seeded subset, seed "
        f"{config.eval.seed}), {ev.k} sample(s) per image; masks seed {config.eval.mask_seed}; "
        + (f"class labels {ev.labels_note}; " if ev.label_dim else "")
        + f"device {_device_description()}; {datetime.date.today().isoformat()}.",
        "Per-image metrics: mean [95% bootstrap CI over images]; KID ×1e3 ± std over subsets. "
        "`_full` = composited (paste-back) output, `_raw` = the method's own output.",
        "",
    ]
    if ev.classifier_note:
        md += [f"Note: {ev.classifier_note}.", ""]
    md += [f"Note: {w}", ""] if (w := small_n_warning(ev.gt.shape[0])) else []
    delta = f"delta_{_headline(ev)}_vs_best"
    if any(delta in r["metrics"] for r in rows):
        table_metrics.append(delta)
        md += [
            f"`{delta}`: the row's per-image difference to the best row of its mask, mean [95% "
            "paired bootstrap CI] (same images, masks and noise); an interval excluding 0 ranks "
            "the row below the best. Every pair: the matrix under each table.",
            "",
        ]
    for mask_name, m in ev.mask_sets.items():
        hole = float(1.0 - m.mean())
        md.append(
            report.markdown_table(
                [r for r in rows if r["mask"] == mask_name],
                table_metrics,
                title=f"mask `{mask_name}` (hole fraction {hole:.3f})",
            )
        )
        if mask_name in ev.paired:
            md += ["Paired differences (★: the 95% interval excludes 0):", ""]
            md.append(ev.paired[mask_name]["matrix_markdown"])
    return "\n".join(md)


# Below this many test images FID/KID cannot rank methods (docs/EVALUATION.md).
MIN_IMAGES_FOR_FID = 1000


def small_n_warning(num_images: int) -> str:
    """The report's warning for a run too small to rank methods by FID/KID ('' from N ≥ 1,000)."""
    if num_images >= MIN_IMAGES_FOR_FID:
        return ""
    return (
        f"{num_images} test images: FID/KID at this N rank nothing (the ground truth itself "
        f"scores far from 0); use N ≥ {MIN_IMAGES_FOR_FID:,} per mask "
        "(--config.eval.num_images=1000) and the paired intervals for per-image metrics."
    )


def _results(ev: _Setup, rows: list[dict]) -> dict:
    config = ev.config
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": _device_description(),
        "backbone": {
            "path": str(config.backbone.get("path", "")),
            "name": backbone_name(ev.backbone),
            "params_sha256": ev.backbone.manifest.get("params_sha256"),
        },
        "data": {
            "name": ev.source.name,
            "indices": ev.idx.tolist(),
            "samples_per_image": ev.k,
            "labels": {"used": ev.labels_used, "note": ev.labels_note},
        },
        "masks": {
            name: {"hole_fraction": float(1.0 - m.mean()), **config.masks[name].to_dict()}
            for name, m in ev.mask_sets.items()
        },
        "metric_networks": {
            "lpips": config.metrics.lpips or None,
            "classifier_sha256": ev.extractor.sha256 if ev.extractor is not None else None,
            "inception_sha256": ev.inception_net.sha256 if ev.inception_net is not None else None,
            "reference": {
                "data": ev.ref_source.name,
                "num": int(min(config.metrics.reference_num, len(ev.ref_source))),
            },
            "note": ev.classifier_note,
        },
        "config": json.loads(config.to_json_best_effort()),
        "warnings": [w for w in [small_n_warning(ev.gt.shape[0])] if w],
        "paired": {
            mask: {k: v for k, v in entry.items() if k != "matrix_markdown"}
            for mask, entry in ev.paired.items()
        },
        "rows": rows,
    }


def backbone_name(backbone) -> str:
    return str(backbone.manifest.get("source_name") or backbone.manifest.get("name") or "backbone")


def _json_safe(obj):
    """Strict JSON: non-finite floats become the strings 'inf', '-inf', 'nan'."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float | np.floating):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, jnp.ndarray | np.ndarray):
        return _json_safe(np.asarray(obj).tolist())
    return obj
