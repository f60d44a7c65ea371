"""LASeR inside TRL's GRPOTrainer: a reward function routed by laser-router, and the callback
that reports what training did with each decision.

    from laser_router_client import LaserRouterClient
    from laser_router_client.trl import LaserRouterGRPO

    laser = LaserRouterGRPO(LaserRouterClient("127.0.0.1:50051"), router="run-7")
    trainer = GRPOTrainer(model=..., reward_funcs=[laser.reward_function],
                          callbacks=[laser.callback], args=GRPOConfig(...), train_dataset=...)

The reward function sends one Score per call for the whole batch: each prompt is one query
whose responses are its completions, with a group (run, step, prompt) so a prompt's
completions share one decision and one RM on every rank. It returns one float per
completion (optionally z-scored within the prompt's group).

Feedback: TRL scores a generation once and trains on it for several optimizer steps
(``steps_per_generation``, ``num_iterations``, gradient accumulation). The adapter needs none
of that: a generation's decisions are reported when the next generation is scored (the
policy then is the one after every step that trained on them) and at the end of training.
The default signal (``signal="dpo"``) is, per decision, the DPO-style loss of the updated
policy on that decision's best-vs-worst completion by its RM, against the policy that
generated them (see ``laser_router_client.signals`` for why GRPO's logged loss is no bandit
signal). ``signal="loss"`` sends the mean logged training loss of the steps since the
generation instead (LASeR's batch form). Each report carries an idempotency key from the run,
the step and the decision ids, so retries and a resumed run apply nothing twice.

Ground truth: ``labels_fn`` (one argument) takes a reward function of TRL's own shape that
already computes a verifiable reward per completion (a GSM8K-style checker, unit tests, a
rule): ``labels_fn(prompts=, completions=, completion_ids=, trainer_state=, **dataset_columns)
-> list[float | None]``. A prompt whose completions all get a label is reported at once with
those labels (the server rewards its decision with its RM's agreement with them, a far
stronger signal than any loss); prompts with a ``None`` keep the ``signal`` above.

Decisions awaiting a report are written into each checkpoint (``on_save``) and read back
when training resumes from it, so a resumed run still reports them.
"""

import hashlib
import json
import logging
import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from transformers import TrainerCallback

from laser_router_client.client import LaserRouterClient, Query
from laser_router_client.signals import dpo_style_loss, ids_digest, sequence_logps

logger = logging.getLogger(__name__)

SIGNALS = ("dpo", "loss")
CHECKPOINT_FILE = "laser_router-rank{rank}.json"


@dataclass
class PendingDecision:
    """A decision scored in one generation, waiting for the steps that train on it."""
    decision_id: str
    reward_model: str
    step: int  # the trainer's global step when the generation was scored
    prompt_ids: List[int]
    best_ids: List[int]
    worst_ids: List[int]
    ref_best: float = 0.0
    ref_worst: float = 0.0


def message_text(value: Any) -> str:
    """Text of a TRL prompt or completion: a string, or a conversation (list of messages)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for message in value:
            content = message.get("content", "")
            if not isinstance(content, str):
                content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
            parts.append(content if len(value) == 1 else f"{message.get('role', 'user')}: {content}")
        return "\n".join(parts)
    raise TypeError(f"a prompt or completion must be a string or a list of messages, got {type(value).__name__}")


def _z_scores(values: Sequence[float]) -> List[float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [0.0 if std == 0 else (v - mean) / std for v in values]


class LaserRouterGRPO:
    """The reward function and the callback of one GRPO run, sharing the decisions in flight.

    ``client``: a LaserRouterClient (it retries until each call's ``timeout``: give it one longer
    than a server restart).
    ``router``: the router's name (created on first use with the server's defaults, or by
    ``client.create_router``). ``run``: the prefix of group names and idempotency keys
    (default: the router's name). ``signal``: "dpo" (default) or "loss". ``beta``: the DPO
    temperature. ``normalize``: None or "group" (z-score within each prompt's completions).
    ``context_fn``: prompts -> [n, dim] contexts, for routers without a server-side encoder.
    ``center``: report each decision's DPO-style loss relative to the mean of the decisions
    reported with it (plus log 2), removing the drift all of them share as updates shrink.
    ``labels_fn``: a TRL-shaped reward function giving ground truth per completion (``None``
    where there is none); labelled prompts are reported at once with their labels.
    ``category_column``: a dataset column (TRL passes the columns to reward functions) whose
    value is the prompt's category (its task or source; at most 64 bytes): GetRouter's
    per-category statistics, and the one-hot slots of a router created with
    ``context_categories`` naming those values.
    """

    def __init__(self, client: LaserRouterClient, router: str, *, run: Optional[str] = None,
                 signal: str = "dpo", beta: float = 0.1, normalize: Optional[str] = None,
                 context_fn: Optional[Callable[[List[str]], Any]] = None, center: bool = True,
                 labels_fn: Optional[Callable[..., Sequence[Optional[float]]]] = None,
                 category_column: Optional[str] = None):
        if signal not in SIGNALS:
            raise ValueError(f"signal must be one of {SIGNALS}, got {signal!r}")
        if normalize not in (None, "group"):
            raise ValueError(f"normalize must be None or 'group', got {normalize!r}")
        self.client = client
        self.router = router
        self.run = run or router
        self.signal = signal
        self.beta = beta
        self.normalize = normalize
        self.context_fn = context_fn
        self.center = center
        self.labels_fn = labels_fn
        self.category_column = category_column
        self.model: Any = None
        self.tokenizer: Any = None
        self.rank = 0
        self.pending: List[PendingDecision] = []
        self.logged_losses: Dict[int, float] = {}
        self._calls_at_step: Dict[int, int] = {}
        # What happened, for logs and tests: one entry per decision scored and per report.
        self.decisions: List[dict] = []
        self.reports: List[dict] = []
        self.reward_function = _RewardFunction(self)
        self.callback = _Callback(self)

    # Scoring ---------------------------------------------------------------------------
    def score(self, prompts: Sequence[Any], completions: Sequence[Any],
              completion_ids: Optional[Sequence[Sequence[int]]] = None, step: int = 0,
              trainer_state: Any = None, **columns: Any) -> List[float]:
        self.report_trained(step)
        calls = self._calls_at_step.get(step, 0)
        self._calls_at_step[step] = calls + 1
        groups: "OrderedDict[str, List[int]]" = OrderedDict()
        for index, prompt in enumerate(prompts):
            groups.setdefault(message_text(prompt), []).append(index)
        prompt_texts = list(groups)
        contexts = self.context_fn(prompt_texts) if self.context_fn is not None else None
        categories = None
        if self.category_column is not None:
            if self.category_column not in columns:
                raise ValueError(f"category_column {self.category_column!r} is not among the dataset's columns "
                                 f"TRL passed: {sorted(columns)}")
            categories = columns[self.category_column]
        queries = []
        for k, (text, members) in enumerate(groups.items()):
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            queries.append(Query(
                id=str(k), context=None if contexts is None else contexts[k], prompt=text,
                responses=[message_text(completions[i]) for i in members],
                group=f"{self.run}/{step}.{calls}/{digest}",
                category=None if categories is None else str(categories[members[0]])))
        results = self.client.score(self.router, queries)
        if self.signal == "dpo" and completion_ids is None:
            raise ValueError("signal='dpo' needs the completions' token ids (TRL passes completion_ids)")
        rewards = [0.0] * len(prompts)
        truth = None
        if self.labels_fn is not None:
            truth = list(self.labels_fn(prompts=list(prompts), completions=list(completions),
                                        completion_ids=completion_ids, trainer_state=trainer_state, **columns))
            if len(truth) != len(prompts):
                raise ValueError(f"labels_fn returned {len(truth)} values for {len(prompts)} completions")
        labelled: Dict[str, List[float]] = {}
        fresh = []
        for result, query, members in zip(results, queries, groups.values()):
            scores = _z_scores(result.scores) if self.normalize == "group" else list(result.scores)
            for i, score in zip(members, scores):
                rewards[i] = float(score)
            self.decisions.append({"step": step, "decision_id": result.decision_id, "group": query.group,
                                   "reward_model": result.reward_model, "completions": len(members)})
            if truth is not None and all(truth[i] is not None for i in members):
                labelled[result.decision_id] = [float(truth[i]) for i in members]
                continue
            decision = PendingDecision(decision_id=result.decision_id, reward_model=result.reward_model,
                                       step=step, prompt_ids=[], best_ids=[], worst_ids=[])
            if self.signal == "dpo":  # what the signal compares; the loss signal needs none of it
                decision.prompt_ids = self._prompt_ids(prompts[members[0]])
                decision.best_ids = list(completion_ids[members[result.ranking[0]]])
                decision.worst_ids = list(completion_ids[members[result.ranking[-1]]])
            fresh.append(decision)
        if labelled:
            key = f"{self.run}/labels-{step}.{calls}/rank-{self.rank}/{ids_digest(labelled)}"
            counts = self.client.feedback(self.router, labels=labelled, idempotency_key=key)
            for decision_id, values in labelled.items():
                self.reports.append({"step": step, "scored_at": step, "decision_id": decision_id,
                                     "labels": values})
            logger.info("laser-router: step %d reported %d decisions with labels: %s", step, len(labelled), counts)
        if self.signal == "dpo":
            self._reference_logps(fresh)
        self.pending.extend(fresh)
        return rewards

    def _prompt_ids(self, prompt: Any) -> List[int]:
        if self.tokenizer is None:
            return []
        if isinstance(prompt, list):
            return list(self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                           return_dict=False))
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def _require_model(self) -> None:
        if self.model is None or self.tokenizer is None:
            raise RuntimeError("signal='dpo' needs the policy: pass LaserRouterGRPO.callback in the trainer's "
                               "callbacks (it attaches the model at on_train_begin), or use signal='loss'")

    def _logps(self, pairs: List[PendingDecision], which: str) -> List[float]:
        return sequence_logps(self.model, [p.prompt_ids for p in pairs],
                              [getattr(p, f"{which}_ids") for p in pairs],
                              pad_token_id=self.tokenizer.pad_token_id or 0)

    def _reference_logps(self, fresh: List[PendingDecision]) -> None:
        if not fresh:
            return
        self._require_model()
        for p, best, worst in zip(fresh, self._logps(fresh, "best"), self._logps(fresh, "worst")):
            p.ref_best, p.ref_worst = best, worst

    # Feedback --------------------------------------------------------------------------
    def report_trained(self, step: int, final: bool = False) -> None:
        """Report the decisions the policy has trained on since they were scored (all when final)."""
        ready = [p for p in self.pending if final or p.step < step]
        if not ready:
            return
        if self.signal == "dpo":
            self._require_model()
            new_best, new_worst = self._logps(ready, "best"), self._logps(ready, "worst")
            losses = {p.decision_id: dpo_style_loss(nb, p.ref_best, nw, p.ref_worst, self.beta)
                      for p, nb, nw in zip(ready, new_best, new_worst)}
            if self.center and len(losses) > 1:
                # The margin shrinks as updates shrink (Adam's early steps are the largest), a
                # drift shared by every decision of the step: keep only each one's difference.
                mean = sum(losses.values()) / len(losses)
                losses = {d: loss - mean + math.log(2.0) for d, loss in losses.items()}
        else:
            losses = {}
            for p in ready:
                since = [loss for s, loss in self.logged_losses.items() if p.step < s <= step]
                if not since and self.logged_losses:
                    since = [self.logged_losses[max(self.logged_losses)]]
                if since:
                    losses[p.decision_id] = sum(since) / len(since)
            if not losses:
                if final:
                    logger.warning("laser-router: no training loss was logged; %d decisions not reported "
                                   "(set logging_steps)", len(ready))
                return
            ready = [p for p in ready if p.decision_id in losses]
        key = f"{self.run}/step-{step}/rank-{self.rank}/{ids_digest(losses)}"
        counts = self.client.feedback(self.router, losses=losses, idempotency_key=key)
        reported = {p.decision_id for p in ready}
        self.pending = [p for p in self.pending if p.decision_id not in reported]
        # Losses and call counts older than every decision still waiting are not needed again.
        oldest = min((p.step for p in self.pending), default=step)
        latest = max(self.logged_losses, default=None)
        self.logged_losses = {s: v for s, v in self.logged_losses.items() if s > oldest or s == latest}
        self._calls_at_step = {s: n for s, n in self._calls_at_step.items() if s >= oldest}
        for p in ready:
            self.reports.append({"step": step, "scored_at": p.step, "decision_id": p.decision_id,
                                 "reward_model": p.reward_model, "loss": losses[p.decision_id]})
        logger.info("laser-router: step %d reported %d decisions: %s", step, len(losses), counts)

    # Checkpoints -----------------------------------------------------------------------
    def save(self, directory: str) -> str:
        path = os.path.join(directory, CHECKPOINT_FILE.format(rank=self.rank))
        os.makedirs(directory, exist_ok=True)
        with open(path, "w") as f:
            json.dump({"pending": [asdict(p) for p in self.pending],
                       "calls_at_step": self._calls_at_step,
                       "logged_losses": self.logged_losses}, f)
        return path

    def load(self, directory: str) -> bool:
        path = os.path.join(directory, CHECKPOINT_FILE.format(rank=self.rank))
        if not os.path.exists(path):
            return False
        with open(path) as f:
            saved = json.load(f)
        known = {p.decision_id for p in self.pending}
        self.pending.extend(PendingDecision(**p) for p in saved["pending"] if p["decision_id"] not in known)
        self._calls_at_step.update({int(k): v for k, v in saved.get("calls_at_step", {}).items()})
        self.logged_losses.update({int(k): v for k, v in saved.get("logged_losses", {}).items()})
        return True


class _RewardFunction:
    """``reward_funcs=[laser.reward_function]``: TRL calls it with prompts, completions,
    completion_ids and the trainer state; it returns one float per completion."""

    __name__ = "laser_router"

    def __init__(self, owner: LaserRouterGRPO):
        self.owner = owner

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any],
                 completion_ids: Optional[Sequence[Sequence[int]]] = None,
                 trainer_state: Any = None, **columns: Any) -> List[float]:
        step = int(getattr(trainer_state, "global_step", 0) or 0)
        return self.owner.score(prompts, completions, completion_ids, step, trainer_state, **columns)


class _Callback(TrainerCallback):
    """Attaches the policy, keeps the logged losses, reports at the end, saves and restores
    the decisions awaiting a report with each checkpoint."""

    def __init__(self, owner: LaserRouterGRPO):
        self.owner = owner

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       processing_class: Any = None, **kwargs: Any) -> None:
        owner = self.owner
        owner.model = model
        owner.tokenizer = getattr(processing_class, "tokenizer", processing_class)
        owner.rank = int(getattr(args, "process_index", 0))
        if state.global_step > 0:
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if owner.load(checkpoint):
                logger.info("laser-router: %d decisions awaiting a report restored from %s",
                            len(owner.pending), checkpoint)

    def on_log(self, args: Any, state: Any, control: Any, logs: Optional[dict] = None, **kwargs: Any) -> None:
        if logs and "loss" in logs and math.isfinite(float(logs["loss"])):
            self.owner.logged_losses[state.global_step] = float(logs["loss"])

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.owner.save(os.path.join(args.output_dir, f"checkpoint-{state.global_step}"))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.owner.report_trained(state.global_step, final=True)
