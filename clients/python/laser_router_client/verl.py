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
"""

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

from laser_router_client.aio import AsyncLaserRouterClient
from laser_router_client.client import LaserRouterClient, Query


def _prompt(extra_info: Optional[dict]) -> str:
    info = extra_info or {}
    for key in ("prompt", "question"):
        value = info.get(key)
        if isinstance(value, str) and value:
            return value
    raise ValueError("laser-router needs the prompt: put it in extra_info['prompt'] or extra_info['question'] "
                     "in the data preprocessing")


def _group(run: str, extra_info: Optional[dict], prompt: str) -> str:
    info = extra_info or {}
    for key in ("uid", "index"):
        if info.get(key) is not None:
            return f"{run}/{key}-{info[key]}"
    return f"{run}/prompt-{hashlib.sha256(prompt.encode()).hexdigest()[:16]}"


class LaserVerlReward:
    """Coalesces concurrent ``compute_score`` calls into Scores of up to ``max_batch`` responses,
    waiting at most ``max_delay`` seconds for more to arrive."""

    def __init__(self, client: AsyncLaserRouterClient, router: str, run: Optional[str] = None,
                 max_batch: int = 256, max_delay: float = 0.005):
        self.client = client
        self.router = router
        self.run = run or router
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.scores_sent = 0
        self._waiting: List[Tuple[str, str, str, asyncio.Future]] = []
        self._flush_task: Optional[asyncio.Task] = None
        self._tasks: set = set()

    async def compute_score(self, data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                            extra_info: Optional[dict] = None, **_: Any) -> Dict[str, Any]:
        prompt = _prompt(extra_info)
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((_group(self.run, extra_info, prompt), prompt, solution_str, future))
        if len(self._waiting) >= self.max_batch:
            self._start_flush(delay=0.0)
        elif self._flush_task is None:
            self._start_flush(delay=self.max_delay)
        return await future

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

    async def _score(self, batch: List[Tuple[str, str, str, asyncio.Future]]) -> None:
        groups: "OrderedDict[str, List[int]]" = OrderedDict()
        for index, (group, _, _, _) in enumerate(batch):
            groups.setdefault(group, []).append(index)
        queries = [Query(id=str(k), context=None, prompt=batch[members[0]][1],
                         responses=[batch[i][2] for i in members], group=group)
                   for k, (group, members) in enumerate(groups.items())]
        try:
            self.scores_sent += 1
            results = await self.client.score(self.router, queries)
        except Exception as error:  # every caller of this batch sees the failure
            for _, _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for result, members in zip(results, groups.values()):
            for i, score in zip(members, result.scores):
                if not batch[i][3].done():
                    batch[i][3].set_result({"score": float(score), "reward_model": result.reward_model})


_ADAPTERS: Dict[Tuple[str, str, int], LaserVerlReward] = {}


async def compute_score(data_source: Any = None, solution_str: str = "", ground_truth: Any = None,
                        extra_info: Optional[dict] = None, *, laser_address: str = "127.0.0.1:50051",
                        laser_router: str = "verl", laser_run: Optional[str] = None, **kwargs: Any) -> Dict[str, Any]:
    """verl's custom ``compute_score`` (async): one adapter per (address, router, event loop)."""
    key = (laser_address, laser_router, id(asyncio.get_running_loop()))
    adapter = _ADAPTERS.get(key)
    if adapter is None:
        adapter = _ADAPTERS[key] = LaserVerlReward(AsyncLaserRouterClient(laser_address),
                                                   laser_router, laser_run)
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
                  group=_group(laser_run or laser_router, extra_info, prompt))
    result = client.score(laser_router, [query])[0]
    return {"score": float(result.scores[0]), "reward_model": result.reward_model}
