"""DDNM / DDNM+ sampling: noise schedules, step lists with time travel, the sampler loop, and images of
any size (tiled eps with one global projection; mask-shift windows on a wavefront)."""

from ddnm.sampling.maskshift import MaskShiftOutput, maskshift_sample
from ddnm.sampling.sampler import SampleOutput, ddnm_sample, image_generator
from ddnm.sampling.schedule import (
    cosine_schedule,
    linear_schedule,
    model_calls,
    skip_steps,
    travel_indices,
    travel_steps,
)
from ddnm.sampling.tiling import TiledEps, TileStats, model_stride, tiled_eps_for, tiled_sample

__all__ = ["MaskShiftOutput", "SampleOutput", "TileStats", "TiledEps", "cosine_schedule", "ddnm_sample",
           "image_generator", "linear_schedule", "maskshift_sample", "model_calls", "model_stride",
           "skip_steps", "tiled_eps_for", "tiled_sample", "travel_indices", "travel_steps"]
