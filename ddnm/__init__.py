"""ddnm: zero-shot image restoration with a diffusion prior (DDNM / DDNM+, Wang et al., ICLR 2023).

Pure PyTorch: operators (``ddnm.operators``), diffusion priors (``ddnm.models``), the sampler
(``ddnm.sampling``) and metrics (``ddnm.metrics``). The notebook entry point::

    import ddnm
    res = ddnm.restore(images, "sr_bicubic", "tiny", scale=4, steps=100)
    res.images, res.std, res.metrics
"""

from ddnm.api import RestoreResult, restore
from ddnm.restoration import BatchRestoration, BatchSamples, Task, restore_batch, sample_batch

__all__ = ["BatchRestoration", "BatchSamples", "RestoreResult", "Task", "restore", "restore_batch",
           "sample_batch"]
__version__ = "0.1.0"
