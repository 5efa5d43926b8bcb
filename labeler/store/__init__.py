"""Reading runs back: the label dataset at a URL (dataset), SQL over it (query), exports and the Neuronpedia
upload (export, neuronpedia_upload) and the static report (report).
"""
