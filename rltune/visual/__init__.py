"""Visual policies: visual autoregressive (next-scale) models and diffusion models, each with a one-file trainer
that runs the same step as rltune/trainer.py (rollout -> reward -> advantage -> update -> log/checkpoint) and the
same modifier pipeline."""
