"""Stage two: heads trained on cached features.

Configs (``config``, ``methods``: torch-free), label-side maths (``kernels``,
``priors``, ``imbalance``: LDS weights, label priors, the FDS layer), the head
(``head``), the training order (``order``), the stacked engine
(``stacked/``), one head (``fit``: ``train_head``), what a run holds and how
it is written and read (``results``, ``runs``) and ablation grids
(``grid/``).  Nothing here imports :mod:`iqa_cache.embed` or
:mod:`iqa_cache.report`.  This file imports nothing, so that reading runs
(``iqa_cache.train.runs``) loads no torch.
"""
