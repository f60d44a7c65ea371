"""LASeR inside verl: a ``compute_score`` for verl's custom reward function config.

verl's reward loop (``verl/experimental/reward_loop/reward_manager/naive.py``) awaits an async
``compute_score(data_source=, solution_str=, ground_truth=, extra_info=, **reward_kwargs)``
once per response, many concurrently. ``compute_score`` here coalesces the calls that arrive
together into one Score (each prompt one query whose responses are its completions), with
the prompt as the group, so a prompt's responses share one decision and one RM, and returns
``{"score": float, "reward_model": name}`` (verl keeps the extra key in its reward info).

    # verl config
    custom_reward_function:
      path: <site-packages>/laser_router_client/verl.py
      name: compute_score
      reward_kwargs: {laser_address: "router:50051", laser_router: "run-7"}

The prompt is read from ``extra_info["prompt"]`` or ``extra_info["question"]`` (verl's data
preprocessing scripts store the question there); the group is ``extra_info["uid"]``, else
``extra_info["index"]``, else the prompt. Decisions stay sticky per group until feedback, so
post each step's loss with ``StepFeedback`` (``laser_router_client.signals``) from the
trainer's loop: ``hook.report(step, loss)``. verl's legacy (synchronous) reward managers call
``compute_score`` without awaiting: use ``compute_score_sync`` there (one Score per response).
Each query's category is its ``data_source``: GetRouter and the dashboard show each RM's share
and reward per data set, and a router created with ``context_categories`` naming the data
sets learns which RM is right on each (docs/bandit.md).

Ground truth, one argument: ``laser_labels`` names a function of verl's own reward shape
(``fn(data_source=, solution_str=, ground_truth=, extra_info=) -> float | {"score": float} |
None``), e.g. ``"verl"`` for verl's rule-based ``default_compute_score`` (GSM8K, MATH, ...) or
``"my_package.rewards:exact_match"``. Each response's label is reported with the score the RM
gave it, per decision (``ResponseLabels.scores``): a prompt's responses may reach the router in
several Scores (verl calls per response, chunked over reward workers) and share one decision
whose kept scores cover only the first, so the adapter sends the (score, label) pairs it saw and
the server judges those. A decision is reported once ``laser_group_size`` (verl's
``rollout.n``) of its responses were scored here, or ``laser_label_delay`` seconds (default 1)
after its last one; decisions with fewer than two labelled responses are left to the loss (or
to expire). With labels, send nothing for the rest (docs/learning.md) or the step loss.

    reward_kwargs: {laser_address: "router:50051", laser_router: "run-7",
                    laser_labels: "verl", laser_group_size: 8}
"""

import asyncio
import hashlib
import importlib
import inspect
import logging
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple, Union

from laser_router_client.aio import AsyncLaserRouterClient
from laser_router_client.client import LaserRouterClient, Query
from laser_router_client.signals import ids_digest

logger = logging.getLogger(__name__)

LabelsFn = Callable[..., Any]


def _prompt(extra_info: Optional[dict]) -> str:
    info = extra_info or {}
    for key in ("prompt", "question"):
        value = info.get(key)
        if isinstance(value, str) and value:
            return value
    raise ValueError("laser-router needs the prompt: put it in extra_info['prompt'] or extra_info['question'] "
                     "in the data preprocessing")


def _category(data_source: Any) -> Optional[str]:
    """verl's ``data_source`` (the data set a prompt comes from: "openai/gsm8k", ...) as the
    query's category — GetRouter's per-category statistics, and the one-hot slots of a router
    created with ``context_categories`` naming those sources; None when it is not a short
    readable string (the server refuses categories over 64 bytes or with control characters)."""
    if not isinstance(data_source, str) or not data_source:
        return None
    if len(data_source.encode()) > 64 or any(not c.isprintable() for c in data_source):
        return None
    return data_source


def _group(run: str, extra_info: Optional[dict], prompt: str) -> str:
    info = extra_info or {}
    for key in ("uid", "index"):
        if info.get(key) is not None:
            return f"{run}/{key}-{info[key]}"
    return f"{run}/prompt-{hashlib.sha256(prompt.encode()).hexdigest()[:16]}"


def labels_function(spec: Union[str, LabelsFn]) -> LabelsFn:
    """``laser_labels`` as a function: a callable as is; ``"verl"`` for verl's
    ``verl.utils.reward_score.default_compute_score``; else ``"module:function"`` (or
    ``"module.function"``) imported."""
    if callable(spec):
        return spec
    if spec == "verl":
        spec = "verl.utils.reward_score:default_compute_score"
    module, _, name = spec.partition(":") if ":" in spec else spec.rpartition(".")
    if not module or not name:
        raise ValueError(f"laser_labels {spec!r}: name a function as 'module:function'")
    function = getattr(importlib.import_module(module), name, None)
    if not callable(function):
        raise ValueError(f"laser_labels {spec!r}: {module} has no function {name}")
    return function


def _label(value: Any) -> Optional[float]:
    """A labels function's answer as a label: a number, verl's ``{"score": ...}``, or ``None``."""
    if isinstance(value, dict):
        value = value.get("score")
    if value is None:
        return None
    label = float(value)
    if not math.isfinite(label):
        raise ValueError(f"laser_labels returned {label}; labels must be finite (None: no label)")
    return label


@dataclass
class _DecisionLabels:
    """What this adapter saw of one decision: its responses' (score, label) pairs."""
    responses: int = 0
    scores: List[float] = field(default_factory=list)
    labels: List[float] = field(default_factory=list)
    due: float = 0.0


class LaserVerlReward:
    """Coalesces concurrent ``compute_score`` calls into Scores of up to ``max_batch`` responses,
    waiting at most ``max_delay`` seconds for more to arrive. With ``labels_fn`` (verl's reward
    shape), reports each decision's labelled responses with their scores: once ``group_size`` of
    its responses were scored here, else ``label_delay`` seconds after its last one."""

    def __init__(self, client: AsyncLaserRouterClient, router: str, run: Optional[str] = None,
                 max_batch: int = 256, max_delay: float = 0.005,
                 labels_fn: Optional[Union[str, LabelsFn]] = None, group_size: Optional[int] = None,
                 label_delay: float = 1.0):
        if group_size is not None and group_size < 1:
            raise ValueError(f"group_size is {group_size}; verl's rollout.n is at least 1")
        self.client = client
        self.router = router
        self.run = run or router
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.labels_fn = None if labels_fn is None else labels_function(labels_fn)
        self.group_size = group_size
        self.label_delay = label_delay
        self.scores_sent = 0
        # The latest label reports (bounded: a run lasts weeks): (decision_id -> {"values",
        # "scores"}, the server's counts or the error).
        self.label_reports: Deque[Tuple[Dict[str, Dict[str, List[float]]], Any]] = deque(maxlen=256)
        # (group, prompt, response, its future, its label, the prompt's category)
        self._waiting: List[Tuple[str, str, str, asyncio.Future, Optional[float], Optional[str]]] = []
        self._labelled: Dict[str, _DecisionLabels] = {}
        self._report_task: Optional[asyncio.Task] = None
        self._flush_task: Optional[asyncio.Task] = None
        self._tasks: set = set()

    async def compute_score(self, data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                            extra_info: Optional[dict] = None, **_: Any) -> Dict[str, Any]:
        prompt = _prompt(extra_info)
        label = None
        if self.labels_fn is not None:
            label = _label(await self._call_labels_fn(data_source, solution_str, ground_truth, extra_info))
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((_group(self.run, extra_info, prompt), prompt, solution_str, future, label,
                              _category(data_source)))
        if len(self._waiting) >= self.max_batch:
            self._start_flush(delay=0.0)
        elif self._flush_task is None:
            self._start_flush(delay=self.max_delay)
        return await future

    async def _call_labels_fn(self, data_source: Any, solution_str: str, ground_truth: Any,
                              extra_info: Optional[dict]) -> Any:
        """The labels function's answer; a synchronous one runs on the default executor (a
        verifier may be slow), as verl runs its own synchronous reward functions."""
        kwargs = dict(data_source=data_source, solution_str=solution_str, ground_truth=ground_truth,
                      extra_info=extra_info)
        if inspect.iscoroutinefunction(self.labels_fn):
            return await self.labels_fn(**kwargs)
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.labels_fn(**kwargs))

    def _start_flush(self, delay: float) -> None:
        if delay == 0.0:
            batch, self._waiting = self._waiting, []
            self._keep(asyncio.ensure_future(self._score(batch)))
            return

        async def later() -> None:
            await asyncio.sleep(delay)
            self._flush_task = None
            batch, self._waiting = self._waiting, []
            if batch:
                await self._score(batch)

        self._flush_task = self._keep(asyncio.ensure_future(later()))

    def _keep(self, task: asyncio.Task) -> asyncio.Task:
        self._tasks.add(task)  # the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)
        return task

    async def _score(self, batch: List[Tuple[str, str, str, asyncio.Future, Optional[float], Optional[str]]]) -> None:
        groups: "OrderedDict[str, List[int]]" = OrderedDict()
        for index, item in enumerate(batch):
            groups.setdefault(item[0], []).append(index)
        queries = [Query(id=str(k), context=None, prompt=batch[members[0]][1],
                         responses=[batch[i][2] for i in members], group=group, category=batch[members[0]][5])
                   for k, (group, members) in enumerate(groups.items())]
        try:
            self.scores_sent += 1
            results = await self.client.score(self.router, queries)
        except Exception as error:  # every caller of this batch sees the failure
            for item in batch:
                if not item[3].done():
                    item[3].set_exception(error)
            return
        for result, members in zip(results, groups.values()):
            if self.labels_fn is not None:
                self._keep_labels(result.decision_id, [(float(score), batch[i][4])
                                                       for i, score in zip(members, result.scores)])
            for i, score in zip(members, result.scores):
                if not batch[i][3].done():
                    batch[i][3].set_result({"score": float(score), "reward_model": result.reward_model})

    def _keep_labels(self, decision_id: str, pairs: List[Tuple[float, Optional[float]]]) -> None:
        """Add a Score's (score, label) pairs to its decision and (re)schedule the report."""
        seen = self._labelled.setdefault(decision_id, _DecisionLabels())
        seen.responses += len(pairs)
        for score, label in pairs:
            if label is not None:
                seen.scores.append(score)
                seen.labels.append(label)
        complete = self.group_size is not None and seen.responses >= self.group_size
        seen.due = asyncio.get_running_loop().time() + (0.0 if complete else self.label_delay)
        if complete:
            self._keep(asyncio.ensure_future(self.report_labels(due_only=True)))
        elif self._report_task is None:
            self._report_task = self._keep(asyncio.ensure_future(self._report_when_due()))

    async def _report_when_due(self) -> None:
        """Report decisions as they fall due until none waits."""
        loop = asyncio.get_running_loop()
        try:
            while self._labelled:
                await asyncio.sleep(max(0.0, min(s.due for s in self._labelled.values()) - loop.time()))
                await self.report_labels(due_only=True)
        finally:
            self._report_task = None

    async def report_labels(self, due_only: bool = False) -> Optional[dict]:
        """Send the labelled decisions (all, or those due) as one Feedback of labels with their
        scores; decisions with fewer than two labelled responses are dropped (one label judges
        no pair). The server's counts, or ``None`` when nothing was sent. A failure is logged and
        kept in ``label_reports`` (the latest 256): the reward loop does not stop for it."""
        now = asyncio.get_running_loop().time()
        ready = [d for d, s in self._labelled.items() if not due_only or s.due <= now]
        labels = {}
        for decision_id in ready:
            seen = self._labelled.pop(decision_id)
            if len(seen.labels) >= 2:
                labels[decision_id] = {"values": seen.labels, "scores": seen.scores}
        if not labels:
            return None
        digest = hashlib.sha256(repr(sorted(labels.items())).encode()).hexdigest()[:16]
        key = f"{self.run}/labels/{ids_digest(labels)}/{digest}"
        try:
            counts = await self.client.feedback(self.router, labels=labels, idempotency_key=key)
        except Exception as error:
            logger.warning("laser-router: labels for %d decisions not reported: %s", len(labels), error)
            self.label_reports.append((labels, error))
            return None
        self.label_reports.append((labels, counts))
        logger.info("laser-router: reported labels for %d decisions: %s", len(labels), counts)
        return counts


_ADAPTERS: Dict[Tuple[str, str, int], LaserVerlReward] = {}


async def compute_score(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                        extra_info: Optional[dict] = None, *, laser_address: str = "127.0.0.1:50051",
                        laser_router: str = "verl", laser_run: Optional[str] = None,
                        laser_labels: Optional[str] = None, laser_group_size: Optional[int] = None,
                        laser_label_delay: float = 1.0, **kwargs: Any) -> Dict[str, Any]:
    """verl's custom ``compute_score`` (async): one adapter per (address, router, event loop).
    ``laser_labels``: a function of verl's reward shape giving ground truth (module docstring)."""
    key = (laser_address, laser_router, id(asyncio.get_running_loop()))
    adapter = _ADAPTERS.get(key)
    if adapter is None:
        adapter = _ADAPTERS[key] = LaserVerlReward(
            AsyncLaserRouterClient(laser_address), laser_router, laser_run, labels_fn=laser_labels,
            group_size=laser_group_size, label_delay=laser_label_delay)
    return await adapter.compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)


_SYNC_CLIENTS: Dict[str, LaserRouterClient] = {}


def compute_score_sync(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                       extra_info: Optional[dict] = None, *, laser_address: str = "127.0.0.1:50051",
                       laser_router: str = "verl", laser_run: Optional[str] = None, **_: Any) -> Dict[str, Any]:
    """For verl's synchronous reward managers: one Score per response, the prompt's group shared."""
    client = _SYNC_CLIENTS.get(laser_address)
    if client is None:
        client = _SYNC_CLIENTS[laser_address] = LaserRouterClient(laser_address)
    prompt = _prompt(extra_info)
    query = Query(id="0", context=None, prompt=prompt, responses=[solution_str],
                  group=_group(laser_run or laser_router, extra_info, prompt), category=_category(data_source))
    result = client.score(laser_router, [query])[0]
    return {"score": float(result.scores[0]), "reward_model": result.reward_model}
