"""Training: models, losses, the per-worker loop (runs without Ray), methods and their hooks, the
Ray Train wiring, and batch prediction."""

# Methods the orchestrator (pipeline.flows.run) handles itself; the loop trains them plainly.
# Every other train.method is a hook registered in pipeline.train.hooks.
PIPELINE_METHODS = ("baseline", "two_phase")
