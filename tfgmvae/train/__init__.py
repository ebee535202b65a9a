"""Training: configuration, input pipeline, checkpoints, summaries and the fit loop."""
