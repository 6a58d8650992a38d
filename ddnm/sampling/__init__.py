"""DDNM / DDNM+ sampling: noise schedules, step lists with time travel, and the sampler loop."""

from ddnm.sampling.schedule import (
    cosine_schedule,
    linear_schedule,
    model_calls,
    skip_steps,
    travel_indices,
    travel_steps,
)

__all__ = ["cosine_schedule", "linear_schedule", "model_calls", "skip_steps", "travel_indices",
           "travel_steps"]
