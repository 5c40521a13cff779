"""Training: state, step, loop, losses, metrics, checkpointing."""
