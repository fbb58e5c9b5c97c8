"""Benchmark helpers: percentile summaries and the shared speech clips."""

from parley.bench.clips import Clip, load_clips
from parley.bench.stats import Summary, summarize

__all__ = ["Clip", "Summary", "load_clips", "summarize"]
