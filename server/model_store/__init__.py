"""The offline model store: tiny pipelines of the real classes with random weights.

Built deterministically (fixed seeds) by `python -m genserve.server.model_store`, saved with
save_pretrained, and loaded by the server through the same from_pretrained code that
loads real weights. Their output is noise of the right format: they prove the serving
path, not the art.
"""
