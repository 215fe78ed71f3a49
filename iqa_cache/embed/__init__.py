"""Stage one: the frozen encoder run once over a dataset into the HDF5 cache.

``loop`` (``embed``, ``EmbedConfig``: the resumable loop), the two pipelines
that feed it (``pil_pipeline``, the reference, and ``pipeline``, the tensor
pipeline with ``tensorprep``, ``decode`` and ``jpeg``), the encoders
(``encoder``: OpenCLIP, ``timm_backend``), their settings (``preprocess``,
``weights``), the writer thread (``commit``), memory checks (``memory``) and
torchrun (``distributed``).  Nothing here imports :mod:`iqa_cache.train`.
This file imports nothing, so that ``iqa --help`` loads no torch.
"""
