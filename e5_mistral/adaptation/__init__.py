"""Corpus adaptation: training data grounded in a user's own documents (``e5-mistral adapt``)."""
