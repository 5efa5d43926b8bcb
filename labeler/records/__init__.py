"""The records at every boundary: the exemplar contract (exemplars, schema), label records (labels), the run
folder's layout (layout), the reading of one Parquet file (parquet) and the filesystem of a URL (storage). The
lowest layer: of labeler it imports only labeler.errors.
"""
