"""A labelling run: its config (config: the dataclasses; loading: filled from a file and --set), the plan and the
scheduler that fans chunks out to a pool (scheduler), one chunk on a worker (worker), exactly-once parts (sink),
metrics, the driver's side (service: prepare, execute, resume), the in-process pool (local) and capacity
arithmetic. No Ray here: labeler/ray_pool/ is the Ray pool.
"""
