"""The asyncio client (grpc.aio), for trainers whose reward functions are async (TRL, verl):
the same methods as `LaserRouterClient`, awaitable, with the same retries (UNAVAILABLE and
ABORTED, backoff with jitter, until the call's deadline), deadlines, admin token and TLS.

    async with AsyncLaserRouterClient("127.0.0.1:50051") as client:
        results = await client.score("run", queries)
        await client.feedback("run", all_pending=True, loss=step_loss, idempotency_key=f"run/{step}")
"""

import asyncio
from typing import Any, List, Optional, Sequence

import grpc

from laser_router_client._pb.laser.v1 import admin_pb2_grpc
from laser_router_client._pb.laser.v1 import reward_router_pb2_grpc as rr_grpc
from laser_router_client import client as calls
from laser_router_client.client import Call, LaserRouterError, Query, QueryResult


class AsyncLaserRouterClient:
    """See `LaserRouterClient`; every method is a coroutine."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        admin_token: Optional[str] = None,
        timeout: float = 30.0,
        retries: Optional[int] = None,
        backoff: float = 0.1,
        root_certificates: Optional[bytes] = None,
        certificate_chain: Optional[bytes] = None,
        private_key: Optional[bytes] = None,
        attempt_timeout: Optional[float] = None,
    ):
        credentials = calls._credentials(root_certificates, certificate_chain, private_key)
        self._channel = (grpc.aio.secure_channel(address, credentials) if credentials
                         else grpc.aio.insecure_channel(address))
        self._stubs = {"router": rr_grpc.RewardRouterStub(self._channel),
                       "admin": admin_pb2_grpc.AdminStub(self._channel)}
        self._metadata = [("authorization", f"Bearer {admin_token}")] if admin_token else []
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.attempt_timeout = attempt_timeout

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncLaserRouterClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _run(self, call: Call) -> Any:
        method = getattr(self._stubs[call.service], call.method)
        metadata = self._metadata if call.service == "admin" else None
        attempts = calls.Attempts(self.timeout, self.attempt_timeout, self.retries, self.backoff)
        while True:
            try:
                reply = await method(call.request, timeout=attempts.timeout(), metadata=metadata)
                return call.convert(reply)
            except grpc.aio.AioRpcError as error:
                code = error.code()
                wait = attempts.backoff(code)
                if wait is None:
                    raise LaserRouterError(code, error.details() or "") from None
                await asyncio.sleep(wait)

    async def score(self, router: str, queries: Sequence[Query], mode: Optional[str] = None,
                    explain: bool = False) -> List[QueryResult]:
        return await self._run(calls.score_call(router, queries, mode, explain))

    async def feedback(self, router: str, decision_ids: Sequence[str] = (), loss: Optional[float] = None,
                       reward: Optional[float] = None, **forms: Any) -> dict:
        return await self._run(calls.feedback_call(router, decision_ids, loss, reward, **forms))

    async def create_router(self, name: str, context_dim: int = 0, policy: Optional[str] = None,
                            normalization: Optional[str] = None, **settings: Any) -> Any:
        return await self._run(calls.create_router_call(name, context_dim, policy, normalization, **settings))

    async def get_router(self, name: str) -> Any:
        return await self._run(calls.get_router_call(name))

    async def list_routers(self) -> List[Any]:
        return await self._run(calls.list_routers_call())

    async def reset_router(self, name: str) -> Any:
        return await self._run(calls.reset_router_call(name))

    async def add_prior(self, router: str, pairs, weight: Optional[float] = None,
                        idempotency_key: Optional[str] = None) -> dict:
        return await self._run(calls.add_prior_call(router, pairs, weight, idempotency_key))

    async def delete_router(self, name: str) -> None:
        await self._run(calls.delete_router_call(name))

    async def list_reward_models(self) -> List[Any]:
        return await self._run(calls.list_reward_models_call())

    async def add_reward_model(self, **spec: Any) -> Any:
        return await self._run(calls.add_reward_model_call(**spec))

    async def remove_reward_model(self, name: str) -> None:
        await self._run(calls.remove_reward_model_call(name))

    async def list_encoders(self) -> List[Any]:
        return await self._run(calls.list_encoders_call())

    async def add_encoder(self, **spec: Any) -> Any:
        return await self._run(calls.add_encoder_call(**spec))

    async def remove_encoder(self, name: str) -> None:
        await self._run(calls.remove_encoder_call(name))
