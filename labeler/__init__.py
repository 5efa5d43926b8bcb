"""labeler: name sparse-autoencoder features by token-space gradient descent.

The data flow, one package a step:

    harvest/ (SAE on a model over a corpus; or imported caches)  ->  exemplars, records/exemplars.py
        -> run/ (config, plan, scheduler; a worker per chunk: read its exemplars, label, commit a part)
              optimise/ (the batched optimiser) against discriminators/ (a frozen LM asked about a soft label)
              on run/local.py (in this process: `labeler label`) or ray_pool/ (Ray actors: `labeler run`)
        -> a run folder (records/layout.py: manifest.json, labels/part-*.parquet of records/labels.py)
        -> judge/ (scores by a model that did not choose the label)
        -> store/ (read runs from a folder or S3, SQL, export, upload, report)

cli/ is the only entry point; toys/ holds the synthetic worlds and the demo SAE used by tests and demos.
"""

__version__ = "0.1.0"
