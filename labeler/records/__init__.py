"""The records at every boundary: the exemplar contract (exemplars, schema), label records (labels), the run
folder's layout (layout) and the reading of one Parquet file (parquet). The lowest layer: it imports nothing
else of labeler.
"""
