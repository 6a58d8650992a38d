"""DDNM / DDNM+ sampling: noise schedules, step lists with time travel, and the sampler loop."""

from ddnm.sampling.sampler import SampleOutput, ddnm_sample, image_generator
from ddnm.sampling.schedule import (
    cosine_schedule,
    linear_schedule,
    model_calls,
    skip_steps,
    travel_indices,
    travel_steps,
)

__all__ = ["SampleOutput", "cosine_schedule", "ddnm_sample", "image_generator", "linear_schedule",
           "model_calls", "skip_steps", "travel_indices", "travel_steps"]
