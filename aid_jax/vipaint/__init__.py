"""VIPaint (Agarwal et al., AISTATS 2026) on a frozen EDM denoiser: hierarchical variational
inference over keypoint noise levels, then gradient-guided refinement (../docs: VIPAINT.md
restated in docs/VIPAINT_DESIGN.md). ``losses``: the loss terms as pure functions."""
