"""A typed wrapper over the laser.v1 gRPC services, retrying what the server says is retryable
(UNAVAILABLE, ABORTED; see docs/operations.md, "Status codes") until the caller's deadline."""

import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, List, Mapping, Optional, Sequence

import grpc
import numpy as np

from laser_router_client._pb.laser.v1 import admin_pb2, admin_pb2_grpc, common_pb2
from laser_router_client._pb.laser.v1 import reward_router_pb2 as rr_pb2
from laser_router_client._pb.laser.v1 import reward_router_pb2_grpc as rr_grpc

POLICIES = {
    "linucb": common_pb2.POLICY_LINUCB,
    "random": common_pb2.POLICY_RANDOM,
    "round_robin": common_pb2.POLICY_ROUND_ROBIN,
    "fixed": common_pb2.POLICY_FIXED,
    "ensemble": common_pb2.POLICY_ENSEMBLE,
    "exp3": common_pb2.POLICY_EXP3,
    "agreement_ensemble": common_pb2.POLICY_AGREEMENT_ENSEMBLE,
    "thompson": common_pb2.POLICY_THOMPSON,
    "offline": common_pb2.POLICY_OFFLINE,
}
NORMALIZATIONS = {"none": common_pb2.NORMALIZATION_NONE, "quantile": common_pb2.NORMALIZATION_QUANTILE}
FIRST_REWARDS = {"raw": common_pb2.FIRST_REWARD_RAW, "neutral": common_pb2.FIRST_REWARD_NEUTRAL,
                 "wait": common_pb2.FIRST_REWARD_WAIT}
MODES = {"per_query": common_pb2.SELECTION_MODE_PER_QUERY, "per_batch": common_pb2.SELECTION_MODE_PER_BATCH}


class LaserRouterError(Exception):
    """A refused or failed call: `code` is the grpc.StatusCode, `message` the server's words."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


@dataclass
class Query:
    id: str
    # Sequence of floats, numpy array or torch tensor ([dim]); None for a router that takes
    # its contexts from an encoder the server hosts (then every query of the call has none).
    context: Any
    prompt: str
    responses: Sequence[str]
    # Queries of one group (e.g. the completions of one prompt, across calls and ranks)
    # share one decision: one reward model, one decision_id.
    group: Optional[str] = None
    # The query's category (its data source or task; at most 64 bytes): GetRouter's
    # `categories` and the laser_category_* metrics show each RM's share and reward per category.
    category: Optional[str] = None


@dataclass
class ArmEstimate:
    reward_model: str
    mean: float
    bonus: float
    ucb: float


@dataclass
class QueryResult:
    id: str
    decision_id: str
    reward_model: str
    scores: List[float]
    ranking: List[int]
    arms: List[ArmEstimate] = field(default_factory=list)


def _floats(context: Any) -> List[float]:
    if context is None:
        return []
    if hasattr(context, "detach"):
        context = context.detach().to("cpu").float().numpy()
    return np.asarray(context, dtype=np.float32).reshape(-1).tolist()


@dataclass
class Call:
    """One RPC: which service and method, the request, how to read the reply."""
    service: str  # "router" or "admin" (admin calls carry the token)
    method: str
    request: Any
    convert: Callable[[Any], Any]


def _identity(reply: Any) -> Any:
    return reply


def score_call(router: str, queries: Sequence[Query], mode: Optional[str] = None, explain: bool = False) -> Call:
    request = rr_pb2.ScoreRequest(
        router=router,
        queries=[
            rr_pb2.Query(id=q.id, context=_floats(q.context), prompt=q.prompt,
                         responses=list(q.responses), group=q.group or "", category=q.category or "")
            for q in queries
        ],
        mode=MODES[mode] if mode else common_pb2.SELECTION_MODE_UNSPECIFIED,
        explain=explain,
    )

    def results(reply: Any) -> List[QueryResult]:
        return [
            QueryResult(
                id=r.id,
                decision_id=r.decision_id,
                reward_model=r.reward_model,
                scores=list(r.scores),
                ranking=list(r.ranking),
                arms=[ArmEstimate(a.reward_model, a.mean, a.bonus, a.ucb) for a in r.arms],
            )
            for r in reply.results
        ]

    return Call("router", "Score", request, results)


def feedback_call(
    router: str,
    decision_ids: Sequence[str] = (),
    loss: Optional[float] = None,
    reward: Optional[float] = None,
    *,
    losses: Optional[Mapping[str, float]] = None,
    rewards: Optional[Mapping[str, float]] = None,
    labels: Optional[Mapping[str, Any]] = None,
    all_pending: bool = False,
    idempotency_key: Optional[str] = None,
) -> Call:
    """Feedback in one of three forms:

    - ``decision_ids`` with ``loss=`` or ``reward=``: one signal for those decisions;
    - ``losses=`` or ``rewards=`` and/or ``labels=``: a mapping decision_id -> its own signal.
      ``labels`` maps a decision to ground truth for its responses: a sequence of one label
      per response (a verifier's correctness, a reference score; higher is better) or an int,
      the preferred response's index. The server rewards the decision with the pairwise
      agreement of the scores it answered with (in [0, 1]); send labels for the decisions
      that have them and losses for the rest, in one call. ``{"values": [...], "scores":
      [...]}`` labels some of a decision's responses together with the scores Score returned
      for them (a group's decision whose responses came in several Scores): the agreement is
      judged over those pairs;
    - ``all_pending=True`` with ``loss=`` or ``reward=``: one signal for every decision
      of the router awaiting feedback made before the request arrived.

    ``idempotency_key`` makes a retry return the first answer and apply nothing again
    (across server restarts and takeovers between replicas). A call without one gets a fresh
    key, kept across the client's own retries: a retry answers as the first attempt did (and
    an ``all_pending`` retry never reaches decisions made later). Pass your own key (e.g.
    ``f"{run}/{step}"``) to keep that promise across a trainer's restart too.
    """
    per_decision = losses if losses is not None else rewards
    if per_decision is not None or labels is not None:
        if losses is not None and rewards is not None:
            raise ValueError("pass losses= or rewards=, not both")
        if decision_ids or loss is not None or reward is not None or all_pending:
            raise ValueError("losses=/rewards=/labels= carry their own decision ids and signals")
        kind = "loss" if losses is not None else "reward"
        signals = [rr_pb2.DecisionSignal(decision_id=d, **{kind: float(v)}) for d, v in (per_decision or {}).items()]
        for d, given in (labels or {}).items():
            if isinstance(given, (int, np.integer)) and not isinstance(given, bool):
                message = rr_pb2.ResponseLabels(preferred=int(given))
            elif isinstance(given, Mapping):
                message = rr_pb2.ResponseLabels(values=[float(v) for v in given["values"]],
                                                scores=[float(s) for s in given["scores"]])
            else:
                message = rr_pb2.ResponseLabels(values=[float(v) for v in given])
            signals.append(rr_pb2.DecisionSignal(decision_id=d, labels=message))
        request = rr_pb2.FeedbackRequest(router=router, signals=signals)
    else:
        if (loss is None) == (reward is None):
            raise ValueError("pass exactly one of loss= or reward=")
        request = rr_pb2.FeedbackRequest(router=router, decision_ids=list(decision_ids), all_pending=all_pending)
        if loss is not None:
            request.loss = float(loss)
        else:
            request.reward = float(reward)
    request.idempotency_key = idempotency_key if idempotency_key is not None else uuid.uuid4().hex

    def counts(reply: Any) -> dict:
        return {"applied": reply.applied, "duplicate": reply.duplicate,
                "not_applied": reply.not_applied, "replayed": reply.replayed}

    return Call("router", "Feedback", request, counts)


def create_router_call(name: str, context_dim: int = 0, policy: Optional[str] = None,
                       normalization: Optional[str] = None, **settings: Any) -> Call:
    if isinstance(settings.get("first_reward"), str):
        settings["first_reward"] = FIRST_REWARDS[settings["first_reward"]]
    message = admin_pb2.RouterSettings(context_dim=context_dim, **settings)
    if policy:
        message.policy = POLICIES[policy]
    if normalization:
        message.normalization = NORMALIZATIONS[normalization]
    return Call("admin", "CreateRouter", admin_pb2.CreateRouterRequest(name=name, settings=message),
                lambda reply: reply.router)


def admin_call(method: str, request: Any, convert: Callable[[Any], Any] = _identity) -> Call:
    return Call("admin", method, request, convert)


def get_router_call(name: str) -> Call:
    return admin_call("GetRouter", admin_pb2.GetRouterRequest(name=name), lambda r: r.router)


def list_routers_call() -> Call:
    return admin_call("ListRouters", admin_pb2.ListRoutersRequest(), lambda r: list(r.routers))


def add_prior_call(router: str, pairs: Sequence[Mapping[str, Any]], weight: Optional[float] = None,
                   idempotency_key: Optional[str] = None) -> Call:
    """A prior for `router` from labelled preference pairs: each a mapping with ``prompt``,
    ``chosen``, ``rejected``, ``context`` (omit it for a router with an encoder) and optionally
    ``category`` (a router with ``context_categories`` enters the pair at its slot). Every RM
    the router uses scores each pair once; its correctness enters its arm with ``weight``.
    Without a key the call gets a fresh one, so the client's own retries enter nothing twice.
    Returns {"arms": {rm: (pairs, accuracy)}, "sequences_scored": n, "replayed": bool}."""
    message = admin_pb2.AddPriorRequest(
        router=router,
        pairs=[admin_pb2.LabelledPair(context=[] if p.get("context") is None else np.asarray(p["context"], np.float32).tolist(),
                                      prompt=p.get("prompt", ""), chosen=p["chosen"], rejected=p["rejected"],
                                      category=p.get("category") or "")
               for p in pairs],
        idempotency_key=idempotency_key or uuid.uuid4().hex)
    if weight is not None:
        message.weight = float(weight)

    def summary(reply: Any) -> dict:
        return {"arms": {a.reward_model: (a.pairs, a.accuracy) for a in reply.arms},
                "sequences_scored": reply.sequences_scored, "replayed": reply.replayed}

    return admin_call("AddPrior", message, summary)


def reset_router_call(name: str) -> Call:
    return admin_call("ResetRouter", admin_pb2.ResetRouterRequest(name=name), lambda r: r.router)


def delete_router_call(name: str) -> Call:
    return admin_call("DeleteRouter", admin_pb2.DeleteRouterRequest(name=name), lambda r: None)


def list_reward_models_call() -> Call:
    return admin_call("ListRewardModels", admin_pb2.ListRewardModelsRequest(), lambda r: list(r.reward_models))


def add_reward_model_call(**spec: Any) -> Call:
    request = admin_pb2.AddRewardModelRequest(spec=admin_pb2.RewardModelSpec(**spec))
    return admin_call("AddRewardModel", request, lambda r: r.reward_model)


def remove_reward_model_call(name: str) -> Call:
    return admin_call("RemoveRewardModel", admin_pb2.RemoveRewardModelRequest(name=name), lambda r: None)


def list_encoders_call() -> Call:
    return admin_call("ListEncoders", admin_pb2.ListEncodersRequest(), lambda r: list(r.encoders))


def add_encoder_call(**spec: Any) -> Call:
    request = admin_pb2.AddEncoderRequest(spec=admin_pb2.EncoderSpec(**spec))
    return admin_call("AddEncoder", request, lambda r: r.encoder)


def remove_encoder_call(name: str) -> Call:
    return admin_call("RemoveEncoder", admin_pb2.RemoveEncoderRequest(name=name), lambda r: None)


def _credentials(root_certificates: Optional[bytes], certificate_chain: Optional[bytes],
                 private_key: Optional[bytes]) -> Optional[grpc.ChannelCredentials]:
    if root_certificates is None and certificate_chain is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=private_key,
                                        certificate_chain=certificate_chain)


# What the server answers when retrying the same request (Feedback: with the same idempotency
# key) is safe and may succeed: UNAVAILABLE (restarting, a router moving between replicas, the
# state store unreachable, a hop to the owner broken) and ABORTED (two replicas changed the
# catalog of models at once). Nothing else is retried: docs/operations.md, "Status codes".
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED})
MAX_BACKOFF = 0.5  # seconds between attempts, at most: a retry soon after a takeover ends


def _retryable(code: grpc.StatusCode) -> bool:
    return code in RETRYABLE


class Attempts:
    """One call's retry schedule: attempts until the caller's deadline (`timeout` seconds from
    now), each with the time left (or `attempt_timeout`, when smaller), `retries` retries at
    most (None: as many as the deadline allows), exponential backoff with jitter between them.

    An attempt that ran out of its own `attempt_timeout` (DEADLINE_EXCEEDED with time left
    before the caller's deadline) is retried too: the server it reached may be paused."""

    def __init__(self, timeout: float, attempt_timeout: Optional[float], retries: Optional[int], backoff: float):
        self.deadline = time.monotonic() + timeout
        self.attempt_timeout = attempt_timeout
        self.retries = retries
        self.delay = backoff
        self.attempt = 0
        self.cut_short = False

    def timeout(self) -> float:
        """The next attempt's deadline, in seconds from now."""
        left = max(self.deadline - time.monotonic(), 0.001)
        self.cut_short = self.attempt_timeout is not None and self.attempt_timeout < left
        return min(left, self.attempt_timeout) if self.cut_short else left

    def backoff(self, code: grpc.StatusCode) -> Optional[float]:
        """Seconds to wait before retrying after `code`, or None: give up (not retryable, out
        of retries, or the caller's deadline would pass first)."""
        retryable = _retryable(code) or (code == grpc.StatusCode.DEADLINE_EXCEEDED and self.cut_short)
        if not retryable or (self.retries is not None and self.attempt >= self.retries):
            return None
        self.attempt += 1
        wait = min(self.delay * (1 + random.random()), MAX_BACKOFF)
        self.delay = min(self.delay * 2, MAX_BACKOFF)
        if time.monotonic() + wait + 0.01 >= self.deadline:
            return None
        return wait


class LaserRouterClient:
    """Score queries and post feedback; admin calls when a token (or loopback) allows.

    `timeout` is each call's deadline, retries included. Calls that fail with UNAVAILABLE
    (server restarting, connection dropped, a router moving between replicas) or ABORTED (a
    concurrent model change on another replica) are retried with exponential backoff and
    jitter (at most 0.5 s apart) until that deadline (`retries`: at most that many times, if given);
    `attempt_timeout` bounds each attempt (an attempt cut short by it is retried: the server
    it reached may be paused). Every other code is the answer (docs/operations.md, "Status
    codes"). Feedback is safe to retry: each call carries an idempotency key (a fresh one
    unless given), the same on every attempt, so a retry returns the first answer and applies
    nothing twice. TLS: pass the server's CA as
    `root_certificates` (and a client certificate chain and key when the server requires
    one). `AsyncLaserRouterClient` (laser_router_client.aio) has the same methods, awaitable.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        admin_token: Optional[str] = None,
        timeout: float = 30.0,
        retries: Optional[int] = None,
        backoff: float = 0.1,
        channel: Optional[grpc.Channel] = None,
        root_certificates: Optional[bytes] = None,
        certificate_chain: Optional[bytes] = None,
        private_key: Optional[bytes] = None,
        attempt_timeout: Optional[float] = None,
    ):
        credentials = _credentials(root_certificates, certificate_chain, private_key)
        self._channel = channel or (grpc.secure_channel(address, credentials) if credentials
                                    else grpc.insecure_channel(address))
        self._stubs = {"router": rr_grpc.RewardRouterStub(self._channel),
                       "admin": admin_pb2_grpc.AdminStub(self._channel)}
        self._router, self._admin = self._stubs["router"], self._stubs["admin"]
        self._metadata = [("authorization", f"Bearer {admin_token}")] if admin_token else []
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.attempt_timeout = attempt_timeout

    def attempts(self) -> Attempts:
        """A new call's retry schedule."""
        return Attempts(self.timeout, self.attempt_timeout, self.retries, self.backoff)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "LaserRouterClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _call(self, method: Callable, request: Any, admin: bool = False) -> Any:
        attempts = self.attempts()
        while True:
            try:
                return method(request, timeout=attempts.timeout(), metadata=self._metadata if admin else None)
            except grpc.RpcError as error:
                code = error.code()
                wait = attempts.backoff(code)
                if wait is None:
                    raise LaserRouterError(code, error.details() or "") from None
                time.sleep(wait)

    def _run(self, call: Call) -> Any:
        method = getattr(self._stubs[call.service], call.method)
        return call.convert(self._call(method, call.request, admin=call.service == "admin"))

    # RewardRouter
    def score(self, router: str, queries: Sequence[Query], mode: Optional[str] = None, explain: bool = False) -> List[QueryResult]:
        return self._run(score_call(router, queries, mode, explain))

    def feedback(self, router: str, decision_ids: Sequence[str] = (), loss: Optional[float] = None,
                 reward: Optional[float] = None, **forms: Any) -> dict:
        """See `feedback_call` for the three forms and the idempotency key."""
        return self._run(feedback_call(router, decision_ids, loss, reward, **forms))

    # Admin
    def create_router(self, name: str, context_dim: int = 0, policy: Optional[str] = None,
                      normalization: Optional[str] = None, **settings: Any) -> Any:
        return self._run(create_router_call(name, context_dim, policy, normalization, **settings))

    def get_router(self, name: str) -> Any:
        return self._run(get_router_call(name))

    def list_routers(self) -> List[Any]:
        return self._run(list_routers_call())

    def reset_router(self, name: str) -> Any:
        return self._run(reset_router_call(name))

    def add_prior(self, router: str, pairs: Sequence[Mapping[str, Any]], weight: Optional[float] = None,
                  idempotency_key: Optional[str] = None) -> dict:
        """See `add_prior_call`."""
        return self._run(add_prior_call(router, pairs, weight, idempotency_key))

    def delete_router(self, name: str) -> None:
        self._run(delete_router_call(name))

    def list_reward_models(self) -> List[Any]:
        return self._run(list_reward_models_call())

    def add_reward_model(self, **spec: Any) -> Any:
        return self._run(add_reward_model_call(**spec))

    def remove_reward_model(self, name: str) -> None:
        self._run(remove_reward_model_call(name))

    def list_encoders(self) -> List[Any]:
        return self._run(list_encoders_call())

    def add_encoder(self, **spec: Any) -> Any:
        return self._run(add_encoder_call(**spec))

    def remove_encoder(self, name: str) -> None:
        self._run(remove_encoder_call(name))
