"""Python client for laser-router.

    from laser_router_client import LaserRouterClient, Query, prompt_context

    client = LaserRouterClient("127.0.0.1:50051")
    results = client.score("llama3-gsm8k", [Query(id="0", context=ctx, prompt=p, responses=rs)])
    client.feedback("llama3-gsm8k", [r.decision_id for r in results], loss=0.42)
"""

from laser_router_client.client import (
    ArmEstimate,
    LaserRouterClient,
    LaserRouterError,
    Query,
    QueryResult,
)
from laser_router_client.aio import AsyncLaserRouterClient
from laser_router_client.context import ContextStandardizer, prompt_context

__all__ = [
    "ArmEstimate",
    "ContextStandardizer",
    "AsyncLaserRouterClient",
    "LaserRouterClient",
    "LaserRouterError",
    "Query",
    "QueryResult",
    "prompt_context",
]
