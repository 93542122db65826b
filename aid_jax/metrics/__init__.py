"""Evaluation metrics: classifier-feature FID/KID ("FID_LeNet") for Fashion-MNIST.

* `aid_jax.metrics.fid` — FID/KID maths on feature arrays (float64 NumPy/SciPy):
  `feature_stats`, `fid_from_stats`, `fid`, `kid`.
* `aid_jax.metrics.classifier` — the small Fashion-MNIST CNN (Flax NNX) whose penultimate layer
  gives the features; training, evaluation, saving and loading.
* `aid_jax.metrics.features` — `FeatureExtractor` around a saved classifier, and cached reference
  statistics.

(Nothing is re-exported here: the function `fid` would shadow the submodule `fid`.)
"""
