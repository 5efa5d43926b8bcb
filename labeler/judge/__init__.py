"""Independent scores of labels: a judge that did not choose the label, on examples that did not choose it.

examples.py picks the examples (held out before labelling, or fresh harvest rows) and the token-identity
baseline label; detection.py, embedding.py and word.py are the three scorers (delphi's detection and
embedding protocols, and the word-level AUROC under a second discriminator); records.py holds the score
record and its Arrow schema. Nothing here knows where runs are stored or how labels were made.
"""
