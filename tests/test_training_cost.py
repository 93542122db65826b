"""benchmarks/training_cost.py: the backbone passes per training step follow the recipes' configs
(the shipped AID recipe backpropagates through its K-step sampler; DEFT never touches the
backbone's gradient)."""

from __future__ import annotations

import sys

sys.path.insert(0, ".")
from benchmarks import training_cost  # noqa: E402
from configs import deft_fashion_mnist, fashion_mnist  # noqa: E402


def test_aid_pays_k_forward_and_k_backward_passes_per_sample():
    config = fashion_mnist.get_config()
    assert config.train.actor == "backprop"
    b, k = config.train.batch_size, config.aid.num_steps
    assert training_cost.passes_per_step("aid") == dict(batch=b, forward=b * k, backward=b * k)


def test_deft_pays_one_forward_pass_per_sample_and_no_backward():
    for name, variant in (("deft", None), ("deft_small", "small")):
        b = deft_fashion_mnist.get_config(variant).train.batch_size
        assert training_cost.passes_per_step(name) == dict(batch=b, forward=b, backward=0)
