"""Main-mode `sample`: draw images from a frozen backbone with an EDM sampler, write a PNG grid."""

from __future__ import annotations

import json
import math
import pathlib
import time

import jax
import numpy as np
from tqdm.auto import tqdm

from aid_jax import backbones, images, sampling, sharding


def sampler_config(config) -> sampling.SamplerConfig:
    """`config.sampler` (ConfigDict) -> the frozen SamplerConfig the samplers take."""
    return sampling.SamplerConfig(**{k: v for k, v in config.sampler.items()})


def run(config, workdir: str) -> dict:
    """Sample `config.sample.num_images` images; write samples.png, samples.npz, summary.json."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    backbone = backbones.load_backbone(config.backbone.path)
    scfg = sampler_config(config)
    if backbone.sigma_max < scfg.sigma_max or backbone.sigma_min > scfg.sigma_min:
        # EDM clamps the schedule to the network's σ range (VP/VE preconditioning).
        scfg = sampling.SamplerConfig(
            **{
                **scfg.__dict__,
                "sigma_min": max(scfg.sigma_min, backbone.sigma_min),
                "sigma_max": min(scfg.sigma_max, backbone.sigma_max),
            }
        )
    labels = None
    label_dim = backbone.config.label_dim
    if label_dim:
        cls = config.sample.class_label
        if not 0 <= cls < label_dim:
            raise ValueError(f"sample.class_label={cls}: this backbone has {label_dim} classes")
        labels = np.eye(label_dim, dtype=np.float32)[[cls]]
    # Data parallel: parameters replicated, latents split over the mesh's "data" axis.
    mesh = sharding.make_mesh()
    params = sharding.replicate(backbone.params, mesh)
    fn = backbones.make_sampler(backbone.config, scfg, labels)

    key = jax.random.key(config.seed)
    batch = config.sample.batch_size
    if batch % mesh.devices.size:
        raise ValueError(
            f"sample.batch_size={batch} must be a multiple of the {mesh.devices.size} devices"
        )
    num = config.sample.num_images
    shape = backbone.image_shape
    outputs = []
    start = time.perf_counter()
    for i in tqdm(range(0, num, batch), desc="sampling", unit="batch"):
        latents = sharding.shard_batch(
            jax.random.normal(jax.random.fold_in(key, i), (batch, *shape)), mesh
        )
        sample_key = jax.random.fold_in(jax.random.fold_in(key, i), 1)
        outputs.append(np.asarray(fn(params, latents, sample_key if scfg.stochastic else None)))
    seconds = time.perf_counter() - start
    x = np.concatenate(outputs)[:num]
    u8 = images.to_uint8(x)
    images.save_png(images.grid(u8), workdir / "samples.png", upscale=config.sample.png_upscale)
    np.savez_compressed(workdir / "samples.npz", x=x)
    summary = {
        "backbone": backbone.manifest.get("source_name"),
        "num_images": int(num),
        "nfe": sampling.nfe(scfg),
        # Strict JSON has no Infinity (S_max defaults to ∞): write non-finite floats as strings.
        "sampler": {
            k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in scfg.__dict__.items()
        },
        "seconds": seconds,
        "finite": bool(np.isfinite(x).all()),
    }
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    print(f"wrote {workdir / 'samples.png'} ({num} images, NFE {summary['nfe']}, {seconds:.1f} s)")
    return summary
