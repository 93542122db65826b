"""The latent pipeline (aid_jax.latent; docs/LATENT.md): the mask rule, the registered
"latent/<method>" against pixel-space methods and a hand-written NumPy loop, costs and
paste-back, the real VAE + EDM2 architectures, bad input, and configs/imagenet512.py:smoke."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aid_jax import backbones, latent, methods, sampling
from aid_jax.backbones import sd_vae, vae_loader

SIGMA_DATA = 0.5


def toy_denoise(params, x, sigma, labels=None):
    """D of Gaussian data N(0, σ_d²·I): linear in x (the optimal denoiser)."""
    s = jnp.reshape(sigma, (-1, 1, 1, 1))
    return x * SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2)


def identity_space():
    return latent.LatentSpace(
        params={},
        encode_fn=lambda p, x: x,
        decode_fn=lambda p, z: z,
        factor=1,
        latent_channels=3,
        pixel_range="-1_1",
    )


def pool_space():
    """Encode: 2×2 average pool on [0, 1] pixels; decode: nearest ×2 upsampling."""

    def enc(p, x):
        b, h, w, c = x.shape
        return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))

    def dec(p, z):
        return jnp.repeat(jnp.repeat(z, 2, axis=1), 2, axis=2)

    return latent.LatentSpace({}, enc, dec, factor=2, latent_channels=3, pixel_range="0_1")


def _data(key, b=2, h=8, w=8):
    ky, _ = jax.random.split(key)
    y = np.asarray(jax.random.uniform(ky, (b, h, w, 3), minval=-1.0, maxval=1.0))
    mask = np.ones((b, h, w, 1), np.float32)
    mask[0, 2:7, 1:5] = 0.0
    mask[1, :, 5:] = 0.0
    return y, mask


def test_latent_mask_rule_by_hand():
    rng = np.random.default_rng(0)
    m = (rng.random((2, 6, 8, 3)) > 0.15).astype(np.float32)
    m[0, :4, :4] = 1.0
    f = 2
    want = np.zeros((2, 3, 4, 1), np.float32)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                patch = m[b, i * f : (i + 1) * f, j * f : (j + 1) * f, :]
                want[b, i, j, 0] = float(patch.min() == 1.0)  # ALL pixels and channels known
    got = np.asarray(latent.latent_mask(m, f))
    np.testing.assert_array_equal(got, want)
    assert got[0, :2, :2].min() == 1.0 and got.min() == 0.0
    # dilate 1: a cell is known only if its 3×3 neighbourhood (inside the grid) is known.
    dil = np.zeros_like(want)
    for b in range(2):
        for i in range(3):
            for j in range(4):
                nb = want[b, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
                dil[b, i, j, 0] = nb.min()
    np.testing.assert_array_equal(np.asarray(latent.latent_mask(m, f, dilate=1)), dil)


def _make(name, space, **options):
    return methods.make_inpainter(
        name, toy_denoise, resources=methods.Resources(vae=space), **options
    )


def test_vae_latent_source_returns_the_encoders_latents():
    """vae_latents' get gives z itself (float32, cached or not, any chunking), which the
    trainers' to_model_range passes through; uint8 images still map to [-1, 1]."""
    from aid_jax.data import pipeline, sources

    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    images = sources.ArraySource(u8, np.arange(5, dtype=np.int32), 5, "toy")
    space = pool_space()
    x = u8.astype(np.float64) / 127.5 - 1.0
    want = ((x + 1) / 2).reshape(5, 4, 2, 4, 2, 3).mean(axis=(2, 4))  # pool of [0, 1] pixels
    for cache, chunk in ((True, 2), (False, 16)):
        src = sources.VAELatentSource(images, space, cache=cache, chunk=chunk)
        z, labels = src.get(np.array([4, 0, 2]))
        assert z.dtype == np.float32 and src.image_shape == (4, 4, 3)
        np.testing.assert_allclose(z, want[[4, 0, 2]], atol=1e-6)
        np.testing.assert_array_equal(pipeline.to_model_range(z), z)
        np.testing.assert_array_equal(labels, [4, 0, 2])
    np.testing.assert_array_equal(pipeline.to_model_range(u8), u8.astype(np.float32) / 127.5 - 1)


def test_identity_codec_equals_pixel_space(key):
    """With an identity VAE, latent/<m> is <m> exactly; the pixel likelihood (gradients through
    the decoder) equals the latent one; costs carry the VAE passes."""
    y, mask = _data(key)
    # Two rows per image (VIPaint's samples_per_fit = 2 shares one fit between them).
    y_rows, mask_rows = np.repeat(y, 2, axis=0), np.repeat(mask, 2, axis=0)
    k = jax.random.key(3)
    space = identity_space()
    for name, opts in [
        ("replacement", dict(num_steps=4)),
        ("dps", dict(num_steps=3, clamp=False)),
        ("pigdm", dict(num_steps=3, form="paper", eta=0.5)),
        # VIPaint's decoder passes: 3 refinement steps + 2 fit iterations × 3 MC samples / 2.
        ("vipaint", dict(num_steps=3, num_iters=2, num_mc=3, samples_per_fit=2)),
    ]:
        ref = methods.make_inpainter(name, toy_denoise, **opts)(None, y_rows, mask_rows, k)
        likelihoods = ("latent", "pixel") if name != "replacement" else ("latent",)
        for lik in likelihoods:
            fn = _make("latent/" + name, space, likelihood=lik, **opts)
            res = fn(fn.call_params(None), y_rows, mask_rows, k)
            np.testing.assert_allclose(res.x, ref.x, rtol=1e-5, atol=1e-5, err_msg=name + lik)
            n = {"vipaint": 3 + 3}.get(name, opts["num_steps"]) if lik == "pixel" else 0
            assert (res.nfe, res.nfe_backward) == (ref.nfe, ref.nfe_backward)
            assert (res.encoder_calls, res.decoder_calls, res.decoder_backward) == (1, 1 + n, n)
            assert (fn.encoder_calls, fn.decoder_calls, fn.decoder_backward) == (1, 1 + n, n)


def test_vipaint_pixel_likelihood_goes_through_the_decoder(key):
    """latent/vipaint with likelihood="pixel" compares the decoded x̂0 with the pixel
    observation. With the pool codec (decoder: nearest ×2 upsampling of [0, 1] values) and an
    observation that is constant on 2×2 patches, |y − dec(x̂0)| is twice the latent |z − x̂0|
    on every pixel of a patch, so the pixel loss at L1 weight w equals the latent loss at 2w —
    fit, gradients and samples included; a render that were skipped could not match."""
    k_img, k_mask = jax.random.split(key)
    y_lat = np.asarray(jax.random.uniform(k_img, (2, 4, 4, 3), minval=-1.0, maxval=1.0))
    m_lat = np.ones((2, 4, 4, 1), np.float32)
    m_lat[0, 1:3, 1:4] = 0.0
    m_lat[1, :, 2:] = 0.0

    def up(a):
        return np.repeat(np.repeat(a, 2, axis=1), 2, axis=2)

    y, mask = up(y_lat), up(m_lat)
    opts = dict(num_steps=3, num_iters=3, num_mc=2, samples_per_fit=1)
    k = jax.random.key(11)
    px = _make("latent/vipaint", pool_space(), likelihood="pixel", rec_l1_weight=10.0, **opts)
    lat = _make("latent/vipaint", pool_space(), rec_l1_weight=20.0, **opts)
    out_px = px(px.call_params(None), y, mask, k)
    out_lat = lat(lat.call_params(None), y, mask, k)
    np.testing.assert_allclose(out_px.x, out_lat.x, rtol=1e-4, atol=1e-5)
    assert (out_px.decoder_calls, out_px.decoder_backward) == (1 + 3 + 6, 3 + 6)
    assert (out_lat.decoder_calls, out_lat.decoder_backward) == (1, 0)
    # The weight matters (the test could not pass with the loss ignored).
    other = _make("latent/vipaint", pool_space(), rec_l1_weight=10.0, **opts)
    assert np.max(np.abs(other(other.call_params(None), y, mask, k).x - out_lat.x)) > 1e-3


def test_replacement_against_numpy_loop(key):
    """latent/replacement (Euler) with a 2×2 average-pool codec vs a float64 NumPy loop, the
    latent mask by min-pool, decoding once, and the paste-back of the known pixels."""
    y, mask = _data(key)
    k = jax.random.key(7)
    n_steps = 3
    fn = _make("latent/replacement", pool_space(), num_steps=n_steps, solver="euler")
    fn_paste = _make(
        "latent/replacement", pool_space(), num_steps=n_steps, solver="euler", paste_pixels=True
    )
    out = np.asarray(fn(fn.call_params(None), y, mask, k).x)
    pasted = np.asarray(fn_paste(fn_paste.call_params(None), y, mask, k).x)

    # The reference: the same noises, everything else by hand in float64.
    y01 = np.where(mask > 0.5, y, 0.0).astype(np.float64) * 0.5 + 0.5
    z_obs = y01.reshape(2, 4, 2, 4, 2, 3).mean(axis=(2, 4))
    known = mask.reshape(2, 4, 2, 4, 2, 1).min(axis=(2, 4)) > 0.5
    sigmas = np.asarray(sampling.EDMSchedule().sigmas(n_steps), np.float64)
    k_init, k_steps = jax.random.split(k)
    z = sigmas[0] * np.asarray(jax.random.normal(k_init, z_obs.shape), np.float64)
    for i in range(n_steps):
        s, s2 = sigmas[i], sigmas[i + 1]
        _, k_rep = jax.random.split(jax.random.fold_in(k_steps, i))
        d = z * SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2)
        z = z + (s2 - s) * (z - d) / s
        n = np.asarray(jax.random.normal(k_rep, z.shape), np.float64)
        z = np.where(known, z_obs + s2 * n, z)
    want = np.repeat(np.repeat(z, 2, axis=1), 2, axis=2) * 2.0 - 1.0
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pasted, np.where(mask > 0.5, y, want), rtol=1e-5, atol=1e-5)
    assert fn.image_shape is None and fn.nfe == n_steps


def test_latent_options_and_errors(key):
    y, mask = _data(key)
    assert set(latent.OPTIONS) <= set(methods.method_options("latent/dps"))
    assert "latent/dps" not in methods.REGISTRY  # derived on demand
    assert latent.latent_costs("dps", num_steps=5, likelihood="pixel")["decoder_backward"] == 5
    with pytest.raises(ValueError, match="likelihood='pixel'"):
        methods.method_cost("latent/replacement", likelihood="pixel")
    with pytest.raises(ValueError, match="likelihood must be"):
        methods.method_cost("latent/dps", likelihood="decoder")
    with pytest.raises(ValueError, match="unknown inpainting method"):
        methods.get("latent/nope")
    with pytest.raises(latent.LatentError, match="needs a VAE"):
        methods.make_inpainter("latent/ddnm", toy_denoise)
    space = pool_space()
    with pytest.raises(latent.LatentError, match="4-channel latents"):
        latent.check_pipeline((4, 4, 4), space)
    with pytest.raises(latent.LatentError, match="not a multiple"):
        latent.check_pipeline((4, 4, 3), space, (9, 8, 3))
    with pytest.raises(latent.LatentError, match="resize the images to 8x8"):
        latent.check_pipeline((4, 4, 3), space, (16, 16, 3))


@pytest.fixture(scope="module")
def real():
    """A random EDM2 of the tiny fixture architecture (16×16×4, 10 classes) and a random small
    SD VAE (factor 2): 32×32 images."""
    from configs import imagenet512

    bcfg = backbones.config_from_checkpoint("Precond", dict(imagenet512.TINY_EDM2))
    bb = backbones.Backbone(backbones.init_params(jax.random.key(0), bcfg), bcfg, {})
    vcfg = sd_vae.VAEConfig(**imagenet512.SMALL_VAE)
    vae = sd_vae.VAE(sd_vae.init_params(jax.random.key(1), vcfg), vcfg, {})
    return bb, vae


def test_real_architectures_with_labels(real):
    bb, vae = real

    def denoise(p, x, s, labels=None):
        return backbones.denoise(p, x, s, labels, config=bb.config)

    res = methods.Resources(backbone=bb, vae=vae)
    y = np.asarray(jax.random.uniform(jax.random.key(2), (2, 32, 32, 3), minval=-1, maxval=1))
    mask = np.ones((2, 32, 32, 1), np.float32)
    mask[:, 8:24, 8:24] = 0
    fn = methods.make_inpainter(
        "latent/dps", denoise, label_dim=10, resources=res, num_steps=2, likelihood="pixel"
    )
    assert fn.image_shape == (32, 32, 3) and fn.label_dim == 10
    out = fn(fn.call_params(bb.params), y, mask, jax.random.key(0), labels=np.array([3, 7]))
    assert out.x.shape == y.shape and np.isfinite(np.asarray(out.x)).all()
    assert (out.nfe, out.nfe_backward, out.decoder_calls, out.decoder_backward) == (2, 2, 3, 2)
    with pytest.raises(ValueError, match="labels"):  # a conditional network needs labels
        fn(fn.call_params(bb.params), y, mask, jax.random.key(0))
    with pytest.raises(ValueError, match="backbone expects"):  # images of another size
        fn(fn.call_params(bb.params), y[:, :16, :16], mask[:, :16, :16], jax.random.key(0))


def test_vae_of_another_architecture(real, tmp_path):
    bb, _ = real
    vcfg = sd_vae.VAEConfig(
        **dict(latent_channels=3, block_out_channels=(16, 32), norm_num_groups=8)
    )
    manifest = dict(
        format_version=1, class_name="AutoencoderKL", init_kwargs=vae_loader._config_kwargs(vcfg)
    )
    other = sd_vae.VAE(sd_vae.init_params(jax.random.key(0), vcfg), vcfg, manifest)
    vae_loader.save_vae(other, tmp_path / "vae3")
    space = latent.space_from_config(dict(path=str(tmp_path / "vae3")))
    with pytest.raises(latent.LatentError, match="3-channel latents"):
        latent.check_pipeline(bb.image_shape, space, (32, 32, 3))


def test_imagenet512_smoke(tmp_path):
    """configs/imagenet512.py:smoke through main: two AID steps on VAE latents (the module's
    state has 4 channels), then the harness with latent methods (VAE passes recorded)."""
    from aid_jax import main
    from configs import imagenet512

    config = imagenet512.get_config("smoke")
    main.run_mode(config, str(tmp_path))
    aid_config = json.loads((tmp_path / "best" / "aid_config.json").read_text())
    assert aid_config["aid_config"]["image_shape"] == [16, 16, 4]  # the module's latent state
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    rows = {r["method"]: r for r in results["rows"]}
    for name in ("aid", "replacement"):
        assert (rows[name]["encoder_calls"], rows[name]["decoder_calls"]) == (1, 1)
        assert rows[name]["decoder_backward"] == 0
    assert results["data"]["labels"]["used"]

    bad = imagenet512.get_config("smoke")
    bad.data.images.image_size = 33  # not a multiple of the VAE's factor 2
    bad.eval_data.images.image_size = 33
    with pytest.raises(ValueError, match="not a multiple"):
        main.run_mode(bad, str(tmp_path / "bad"))


def pool4_space():
    """pool_space on 4-channel images (so its latents fit a 4-channel EDM2)."""
    s = pool_space()
    return latent.LatentSpace({}, s.encode_fn, s.decode_fn, factor=2, latent_channels=4,
                              image_channels=4, pixel_range="0_1")  # fmt: skip


@pytest.mark.parametrize("actor", ["backprop", "pathwise"])
def test_aid_pixel_psi_goes_through_the_decoder(actor):
    """aid.psi_space='pixel': Ψ on decoded pixels. With the pool codec (decoder: nearest ×2
    upsampling of [0, 1] values, then 2v − 1), ‖dec(x) − dec(x0)‖²/d = 4‖x − x0‖²/d with the
    mask upsampled, so a step with psi_mse = 1 on pixels is the step with psi_mse = 4 on
    latents — gradients and all; a skipped decoder could not match."""
    from aid_jax.aid import train
    from configs import fashion_mnist, imagenet512

    bcfg = backbones.config_from_checkpoint("Precond", dict(imagenet512.TINY_EDM2, label_dim=0))
    bb = backbones.init_params(jax.random.key(0), bcfg)
    config = fashion_mnist.trainer_defaults("smoke")
    config.train.update(actor=actor, antithetic=False, critic_warmup=0)
    config.aid.update(num_steps=2, psi_mse=1.0, psi_lpips=0.0, hole_weight=2.0)
    actor_tx, critic_tx = train.make_optimizers(config)
    x0 = np.asarray(jax.random.uniform(jax.random.key(2), (2, 16, 16, 4), minval=-1, maxval=1))
    mask = np.ones((2, 16, 16, 1), np.float32)
    mask[:, 4:12, 3:10] = 0.0
    key = jax.random.key(3)
    out = {}
    for space_name, weight in (("pixel", 1.0), ("latent", 4.0)):
        config.aid.update(psi_space=space_name, psi_mse=weight)
        cfg = train.aid_config(config, (16, 16, 4))
        state = train.init_state(config, cfg, actor_tx, critic_tx, jax.random.key(1))
        step = train.make_train_step(config, cfg, bcfg, actor_tx, critic_tx, space=pool4_space())
        frozen = (bb, {}) if space_name == "pixel" else bb
        out[space_name] = jax.jit(step)(state, frozen, x0, mask, key)
    (s_px, m_px), (s_lat, m_lat) = out["pixel"], out["latent"]
    np.testing.assert_allclose(m_px["terminal_loss"], m_lat["terminal_loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s_px["actor"]), jax.tree.leaves(s_lat["actor"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert float(m_px["actor_grad_norm"]) > 0

    config.aid.update(psi_space="pixel")
    cfg = train.aid_config(config, (16, 16, 4))
    with pytest.raises(ValueError, match="vae_latents"):
        train.make_train_step(config, cfg, bcfg, actor_tx, critic_tx)
    config.aid.update(psi_space="decoded")
    with pytest.raises(ValueError, match="psi_space must be one of"):
        train.aid_config(config, (16, 16, 4))


def test_fashion_mnist_latent_smoke(tmp_path):
    """configs/fashion_mnist_latent.py:smoke through main: AID trained with Ψ on decoded pixels
    (LPIPS included) and validated by LPIPS on decoded pixels, then the harness with latent AID
    and latent DPS with its residual on decoded pixels."""
    from aid_jax import main
    from configs import fashion_mnist_latent

    config = fashion_mnist_latent.get_config("smoke")
    main.run_mode(config, str(tmp_path))
    record = json.loads((tmp_path / "best" / "aid_config.json").read_text())
    assert record["aid_config"]["psi_space"] == "pixel"
    assert record["aid_config"]["image_shape"] == [8, 8, 4]  # the module steers latents
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["select"] == "val_lpips_hole" and np.isfinite(best["val_lpips_hole"])
    rows = {r["method"]: r for r in json.loads((tmp_path / "eval" / "results.json").read_text())[
        "rows"]}  # fmt: skip
    assert (rows["aid"]["encoder_calls"], rows["aid"]["decoder_calls"]) == (1, 1)
    assert (rows["dps_pixel"]["decoder_calls"], rows["dps_pixel"]["decoder_backward"]) == (3, 2)
