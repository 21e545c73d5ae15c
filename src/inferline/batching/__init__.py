"""Micro-batching for one-pass models (embeddings, classifiers): many requests, one call."""

from inferline.batching.batcher import BatchReport, DynamicBatcher
from inferline.batching.config import BatcherConfig

__all__ = ["BatchReport", "BatcherConfig", "DynamicBatcher"]
