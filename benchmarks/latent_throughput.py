"""The latent pipeline's speed (issue 18): the VAE forward and the latent sampler, images/s.

    taskset -c 0 python benchmarks/latent_throughput.py                 # the embedded default
    taskset -c 0 python benchmarks/latent_throughput.py --full-size     # + sd-vae-ft-mse / EDM2-XS

Embedded default: the VAE of configs/vae_fashion_mnist.py (32×32×1 <-> 8×8×4) and the EDM2 of
configs/edm2_fashion_mnist.py, with their shipped weights when ported_weights/ has them (else
random weights of the same architecture: speed does not depend on the values). Per batch size:
encoder and decoder images/s, the latent denoiser's latents/s, and whole latent inpainting calls
("latent/<method>": encode once, sample in latent space, decode once) in images/s with the share
of their time spent in the VAE.

``--full-size``: the ImageNet-512 pipeline's networks with random weights — sd-vae-ft-mse's
architecture (83.7 M parameters) encoding/decoding one 512×512 image and EDM2-XS (124.7 M) on one
64×64×4 latent — and the implied seconds per image of a 32-NFE latent sampler (32 denoiser
calls + one encode + one decode).

Timing: jit-compiled programs, the first call (compilation) excluded; the median of ≥ ``--reps``
calls and ≥ ``--min-seconds``. Pin the process (``taskset``) for figures that mean one core.
Output: a Markdown table on stdout; ``--json`` writes the rows with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from aid_jax import backbones, latent, methods  # noqa: E402
from aid_jax.backbones import sd_vae, vae_loader  # noqa: E402

VAE_SHIPPED = ROOT / "ported_weights" / "vae_fashion_mnist"
EDM2_SHIPPED = ROOT / "ported_weights" / "edm2_fashion_mnist_latent"
# EDM2-XS at ImageNet-512 (EDM_REFERENCE.md: 124,713,253 parameters).
EDM2_XS = dict(
    img_resolution=64,
    img_channels=4,
    label_dim=1000,
    model_channels=128,
    channel_mult=(1, 2, 3, 4),
    num_blocks=3,
    attn_resolutions=(16, 8),
    dropout=0.0,
)


def timed(reps: int, min_seconds: float, fn, *args) -> tuple[float, float]:
    """(first call s, median s of the later calls) of ``fn(*args)``."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times: list[float] = []
    while len(times) < reps or sum(times) < min_seconds:
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def embedded_networks():
    """(LatentSpace, Backbone, weights record) of the embedded latent default."""
    from configs import edm2_fashion_mnist, vae_fashion_mnist

    if (VAE_SHIPPED / "manifest.json").is_file():
        vae, vae_from = vae_loader.load_vae(VAE_SHIPPED), "shipped"
    else:
        vcfg = sd_vae.VAEConfig(**vae_fashion_mnist.get_config().vae.to_dict())
        vae = sd_vae.VAE(sd_vae.init_params(jax.random.key(0), vcfg), vcfg, {})
        vae_from = "random"
    if (EDM2_SHIPPED / "manifest.json").is_file():
        bb, bb_from = backbones.load_backbone(EDM2_SHIPPED), "shipped"
    else:
        kwargs = edm2_fashion_mnist.get_config().model.to_dict()
        bcfg = backbones.config_from_checkpoint("Precond", kwargs)
        bb = backbones.Backbone(backbones.init_params(jax.random.key(1), bcfg), bcfg, {})
        bb_from = "random"
    return latent.LatentSpace.from_vae(vae), bb, dict(vae=vae_from, edm2=bb_from)


def bench_embedded(batches, reps, min_seconds, method_specs) -> list[dict]:
    space, bb, weights = embedded_networks()
    label_dim = int(bb.config.label_dim or 0)
    enc = jax.jit(space.encode)
    dec = jax.jit(space.decode)
    den = jax.jit(lambda p, x, s, lab: backbones.denoise(p, x, s, lab, config=bb.config))
    latent_shape = tuple(bb.image_shape)
    image_shape = space.image_shape(latent_shape)
    rows = []

    def add(what, batch, first, per_call, **extra):
        rows.append(
            dict(
                part="embedded",
                what=what,
                batch=batch,
                seconds_per_call=per_call,
                images_per_s=batch / per_call,
                first_call_s=first,
                weights=weights,
                **extra,
            )
        )

    def denoise_with_params(p, x, s, lab=None):
        return backbones.denoise(p, x, s, lab, config=bb.config)

    res = methods.Resources(backbone=bb, vae=space)
    for batch in batches:
        key = jax.random.key(batch)
        x = jax.random.uniform(key, (batch, *image_shape), jnp.float32, -1.0, 1.0)
        z = jax.random.normal(key, (batch, *latent_shape), jnp.float32)
        sigma = jnp.full((batch,), 1.0, jnp.float32)
        labels = jnp.eye(label_dim, dtype=jnp.float32)[np.arange(batch) % label_dim]
        t_enc = timed(reps, min_seconds, enc, space.params, x)
        t_dec = timed(reps, min_seconds, dec, space.params, z)
        t_den = timed(reps, min_seconds, den, bb.params, z, sigma, labels)
        add("VAE encode", batch, *t_enc)
        add("VAE decode", batch, *t_dec)
        add("EDM2 forward (one NFE)", batch, *t_den)
        mask = np.ones((batch, *image_shape[:2], 1), np.float32)
        h, w = image_shape[:2]
        mask[:, h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 0.0
        ids = np.arange(batch) % label_dim
        for name, opts in method_specs:
            fn = methods.make_inpainter(
                "latent/" + name, denoise_with_params, label_dim=label_dim, resources=res, **opts
            )
            first, per_call = timed(
                reps, min_seconds, fn, fn.call_params(bb.params), x, mask, key, ids
            )
            vae_s = t_enc[1] + t_dec[1] * fn.decoder_calls
            add(
                f"latent/{name} {fn.nfe} NFE",
                batch,
                first,
                per_call,
                nfe=fn.nfe,
                nfe_backward=fn.nfe_backward,
                vae_share=min(1.0, vae_s / per_call),
                options=opts,
            )
    return rows


def bench_full_size(reps, min_seconds, nfe: int = 32) -> list[dict]:
    vcfg = sd_vae.VAEConfig()  # sd-vae-ft-mse's architecture
    vae = sd_vae.VAE(sd_vae.init_params(jax.random.key(0), vcfg), vcfg, {})
    space = latent.LatentSpace.from_vae(vae)
    bcfg = backbones.config_from_checkpoint("Precond", EDM2_XS)
    bb_params = backbones.init_params(jax.random.key(1), bcfg)
    x = jax.random.uniform(jax.random.key(2), (1, 512, 512, 3), jnp.float32, -1.0, 1.0)
    z = jax.random.normal(jax.random.key(3), (1, 64, 64, 4), jnp.float32)
    labels = jnp.eye(1000, dtype=jnp.float32)[:1]
    sigma = jnp.ones((1,), jnp.float32)
    enc = jax.jit(space.encode)
    dec = jax.jit(space.decode)
    den = jax.jit(lambda p, z, s, lab: backbones.denoise(p, z, s, lab, config=bcfg))
    t_enc = timed(reps, min_seconds, enc, space.params, x)
    t_dec = timed(reps, min_seconds, dec, space.params, z)
    t_den = timed(reps, min_seconds, den, bb_params, z, sigma, labels)
    sampler = nfe * t_den[1] + t_enc[1] + t_dec[1]
    rows = []
    for what, (first, s) in (
        ("sd-vae-ft-mse encode 512×512", t_enc),
        ("sd-vae-ft-mse decode 512×512", t_dec),
        ("EDM2-XS forward 64×64×4 (one NFE)", t_den),
    ):
        rows.append(
            dict(
                part="full-size",
                what=what,
                batch=1,
                seconds_per_call=s,
                images_per_s=1.0 / s,
                first_call_s=first,
            )  # fmt: skip
        )
    rows.append(
        dict(
            part="full-size",
            what=f"latent sampler, {nfe} NFE + encode + decode (implied)",
            batch=1,
            seconds_per_call=sampler,
            images_per_s=1.0 / sampler,
            first_call_s=None,
            vae_share=(t_enc[1] + t_dec[1]) / sampler,
        )  # fmt: skip
    )
    return rows


def table(rows) -> str:
    out = [
        "| part | what | batch | s / call | images/s | VAE share | first call s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        share = r.get("vae_share")
        first = r.get("first_call_s")
        out.append(
            f"| {r['part']} | {r['what']} | {r['batch']} | {r['seconds_per_call']:.4g} | "
            f"{r['images_per_s']:.4g} | {'' if share is None else f'{100 * share:.1f} %'} | "
            f"{'' if first is None else f'{first:.1f}'} |"
        )
    return "\n".join(out)


def machine() -> dict:
    cpu = ""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return dict(
        cpu=cpu,
        cores_visible=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        platform=platform.platform(),
        jax=jax.__version__,
        device=str(jax.devices()[0]),
    )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--full-size", action="store_true")
    p.add_argument("--json", type=pathlib.Path, default=None)
    args = p.parse_args(argv)
    specs = [
        ("unguided", dict(num_steps=20)),
        ("ddnm", dict(num_steps=10)),
        ("dps", dict(num_steps=10)),
    ]
    rows = bench_embedded(args.batches, args.reps, args.min_seconds, specs)
    if args.full_size:
        rows += bench_full_size(args.reps, args.min_seconds)
    print(table(rows))
    record = dict(
        date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        machine=machine(),
        rows=rows,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
