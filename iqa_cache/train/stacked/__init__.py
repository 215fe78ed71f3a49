"""Many heads trained at once: K configurations that share shapes as one stack.

Every parameter of the residual MLP head gets a leading configuration axis
(weights ``[K, in, out]``, the first layer's ``[K, H, in]``; biases
``[K, 1, out]``), so one batched matrix product (``torch.baddbmm``) runs a
layer for all K heads; when the K configurations see the same rows (a
chunked order, a full batch, evaluation), the first layer is one product
with the ``[K*H, in]`` weights (the shared GEMM).  ``--precision`` runs the
products under autocast (:class:`~iqa_cache.train.stacked.heads.HeadStack`).
Each configuration keeps its own

* initialisation: the head that the plain loop (``train_head_simple`` in
  ``tests/reference.py``) builds for its seed, copied into its slice;
* batch order: a CPU generator seeded with its seed, as the plain loop;
* LDS loss weights (a ``[K, N]`` table);
* FDS state: per-bin running statistics ``[K, bins, H]``, smoothed by one
  grouped ``conv1d`` with its own window (windows of different sizes are
  zero-padded to the largest, which leaves each result unchanged);
* learning rate: configurations are ordered by learning rate and each run of
  equal rates is one Adam parameter group over row slices of the stacked
  tensors.

The loss is the sum of the per-configuration losses, so each slice's gradient
is that configuration's own gradient; Adam is elementwise, so one Adam over
the stack equals K independent Adams.  A configuration trained in a stack
therefore gives the same result as trained alone (to float rounding: batched
and plain matrix products round differently), which ``tests/test_grid.py``
checks.  A configuration whose loss turns non-finite is reported as diverged
and does not disturb the others (nothing couples the slices).

What makes it fast (the whole split is on the device; batches are index
tensors; one fused Adam call per step; FDS statistics by scatter-add from one
forward pass per epoch; calibration by one gather of a per-bin table) also
makes a stack of one configuration the single-run path of ``train_head``.
"""
from .data import DeviceData, TrainingRows, check_data, check_fds_bins, to_device
from .engine import BestEpochs, plan_stacks, stack_key, train_epoch, train_many, train_stack, validation_mae
from .fds import StackedFDS, padded_windows, stacked_bin_statistics, stacked_smooth
from .heads import EVAL_BUDGET, HeadStack, init_stack
from .losses import loss_terms
from .optim import GroupedAdam, get_lr, lr_groups, make_adam

__all__ = ["DeviceData", "TrainingRows", "check_data", "check_fds_bins", "to_device", "BestEpochs", "plan_stacks",
           "stack_key", "train_epoch", "train_many", "train_stack", "validation_mae", "StackedFDS", "padded_windows",
           "stacked_bin_statistics", "stacked_smooth", "EVAL_BUDGET", "HeadStack", "init_stack", "loss_terms",
           "GroupedAdam", "get_lr", "lr_groups", "make_adam"]
