"""HALP pruning client: latency tables from profiler services, pruning to a budget."""

from pruning_client.remote import ProfilerClient, ProfilerError

__all__ = ["ProfilerClient", "ProfilerError"]
