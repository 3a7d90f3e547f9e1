"""The diffusion process as pure functions of tensors: noise schedules, training targets and sampler steps.

Nothing here knows a model. A step takes (sample, model output, timestep, previous timestep, history) and returns
the next sample, and a timestep may be a tensor with one entry per sample, so one batch can hold samples at
different points of their sampling (the server batches requests this way). Conventions follow diffusers', and
the tests check every sampler against diffusers' schedulers over whole sampling loops.
"""
