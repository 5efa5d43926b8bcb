"""Where exemplars come from: one pass of an SAE over a corpus (config, stats, select, texts, pipeline;
sae_source and sae_formats load the SAE on its model), or caches other tools wrote (delphi_cache,
neuronpedia_cache, written by exemplar_parts). Everything here ends in the exemplar contract (records/).
"""
