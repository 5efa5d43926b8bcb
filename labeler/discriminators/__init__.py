"""Discriminators: frozen models that judge whether a word is an example of a (soft) label.

base.py (the Discriminator protocol), causal_lm.py (the paper's question to a causal LM, KV-cached),
prefix_attention.py (restarts share one cached prefix), embedding.py (sentence encoders), prompt.py (the
question's text), vocab.py and wordnet.py (which tokens a label may use), config.py (the tagged config that
names one of them, and building it).
"""
