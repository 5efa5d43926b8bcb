"""labeler: name sparse-autoencoder features by token-space gradient descent.

Data flow: exemplars (exemplars.py) -> a discriminator that scores a soft label against examples
(discriminators/) -> the batched optimiser (engine.py) -> scored label records (results.py) ->
a Parquet dataset (results.py) -> read back from a folder or S3 (dataset.py), queried with SQL
(query.py), exported (export.py) and shown as a page (report.py). labelling.py ties the first steps
together for one chunk of features; cli.py is the only entry point.
"""

__version__ = "0.1.0"
