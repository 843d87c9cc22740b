"""Extractive question answering: model handler and span decoding."""
