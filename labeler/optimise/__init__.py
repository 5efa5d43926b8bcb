"""The labelling itself: the batched optimiser (engine), one chunk of features split, optimised and recorded
(labelling), exhaustive single-token search (the baseline and test oracle) and the scores (scoring). Nothing here
knows files, Ray or metrics.
"""
