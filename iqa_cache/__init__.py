"""iqa-cache: frozen OpenCLIP embeddings cached in HDF5, and imbalance-aware
(LDS / FDS) regression heads trained on them in seconds.

The library is importable without the CLI::

    from iqa_cache import cache, imbalance, train
    w = imbalance.lds_weights(labels, bin_size=1, lo=0, hi=100, reweight="sqrt_inv",
                              kernel="gaussian", ks=5, sigma=2)
"""
__version__ = "0.1.0"
