"""Feature encoding shared by training, evaluation and retrieval.

Layering (one-way): data / metrics / protocols -> backbones / methods -> encoding ->
training, evaluation, retrieval -> commands.
"""
