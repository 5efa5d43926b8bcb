"""Worlds with known answers, for tests, benchmarks and demos: the synthetic language and its tiny LM
(synthetic, demo), the WordNet taxonomy testbed (taxonomy), the paper's six features (paper_datasets) and
the demo SAE on all-MiniLM-L6-v2 (demo_sae).
"""
