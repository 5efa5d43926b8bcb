"""The records at every boundary: the exemplar contract (exemplars, schema), label records (labels) and the
run folder's layout (layout). The lowest layer: it imports nothing else of labeler.
"""
