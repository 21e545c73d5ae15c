"""`inferline bench`: a load generator for any OpenAI-compatible server, our own code."""

from inferline.bench.loadgen import LoadGenerator
from inferline.bench.metrics import SLO, RequestResult, summarize
from inferline.bench.scenarios import SCENARIOS, WORDS, Scenario

__all__ = ["SCENARIOS", "SLO", "WORDS", "LoadGenerator", "RequestResult", "Scenario", "summarize"]
