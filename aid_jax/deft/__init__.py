"""DEFT (Denker et al. 2024, the generalised h-transform) on frozen EDM backbones
(docs/DEFT_DESIGN.md): a small h-network whose correction is added to the backbone's denoised
estimate at every sampler step, trained with the backbone frozen and no backward pass through it.

* :mod:`aid_jax.deft.networks` — the h-network (AID's guidance UNet on AID's inputs) and the
  σ-gate MLP γ_φ(σ).
* :mod:`aid_jax.deft.model` — :class:`~aid_jax.deft.model.DEFTConfig`, the combined denoiser
  D_total, the σ distributions, :class:`~aid_jax.deft.model.DEFTParams` and ``inpaint`` on every
  EDM sampler.
* :mod:`aid_jax.deft.losses` — the loss in EDM units.
* :mod:`aid_jax.deft.train` — the trainer on ``aid_jax.train_loop`` and export.
* :mod:`aid_jax.deft.api` — ``load`` (workdir or export, backbone sha256 checked).
* :mod:`aid_jax.deft.gaussian` — the closed-form optimum in the Gaussian world and a trainer for
  a linear h-network that can represent it (benchmarks/deft_gaussian.py).
"""
