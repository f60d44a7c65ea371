"""Feedback signals the bandit can learn from, and the step-scoped feedback hook.

LASeR's signal is the training loss on the chosen RM's preference pairs (a DPO loss). A GRPO
trainer's logged loss is no such signal: group-normalized advantages sum to zero, so with
β = 0 and one pass per generation the policy loss is zero by construction (a real TRL run
logged |loss| <= 1.2e-7), and the reward normalization turns that noise into rewards. What
this module offers instead, per decision:

- ``dpo_style_loss``: ``-log σ(β·((log π_new(y_w|x) - log π_ref(y_w|x)) - (log π_new(y_l|x) -
  log π_ref(y_l|x))))`` on the decision's best and worst completion by its RM, where π_ref is
  the policy that generated them and π_new the policy after the steps that trained on them.
  It is low when training moved the policy toward what the RM preferred and high when the
  update went against it: LASeR's DPO signal, measured on the trainer's own update.
- ``sequence_logps``: log π(completion | prompt) summed over the completion's tokens, for a
  causal LM (torch; imported only when called).

``StepFeedback`` posts one loss per training step for every decision awaiting feedback
(the step-scoped form), with an idempotency key from the run and step: the hook for trainers
that only know a step's loss (OpenRLHF, verl).

``ValidationGain`` sends a signal that tracks quality when the training loss does not: how
much a step lowered a held-out (validation) loss, as a reward for that step's decisions
(docs/learning.md measures it beside the raw loss).
"""

import hashlib
import math
from typing import Any, Callable, Iterable, List, Optional, Sequence

from laser_router_client.client import LaserRouterClient


def dpo_style_loss(new_best: float, ref_best: float, new_worst: float, ref_worst: float,
                   beta: float = 0.1) -> float:
    """DPO's loss for one (best, worst) pair: -log σ(β·(Δ_best - Δ_worst)), Δ = new - ref."""
    margin = beta * ((new_best - ref_best) - (new_worst - ref_worst))
    # -log σ(m) = log(1 + e^-m), computed without overflow.
    return max(-margin, 0.0) + math.log1p(math.exp(-abs(margin)))


def sequence_logps(model: Any, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]],
                   pad_token_id: int = 0, batch_size: int = 16) -> List[float]:
    """Sum of log π(completion token | prefix) for each (prompt ids, completion ids) pair."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: List[float] = []
    try:
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                rows = [list(p) + list(c) for p, c in
                        zip(prompts[start:start + batch_size], completions[start:start + batch_size])]
                width = max(len(r) for r in rows)
                ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                completion_mask = torch.zeros((len(rows), width), dtype=torch.bool)
                for i, (row, prompt) in enumerate(zip(rows, prompts[start:start + batch_size])):
                    ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
                    mask[i, :len(row)] = 1
                    completion_mask[i, len(prompt):len(row)] = True
                ids, mask = ids.to(device), mask.to(device)
                logits = model(input_ids=ids, attention_mask=mask).logits.float()
                logps = torch.log_softmax(logits[:, :-1], dim=-1)
                token_logps = logps.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
                token_logps = token_logps * completion_mask[:, 1:].to(device)
                out.extend(token_logps.sum(dim=1).tolist())
    finally:
        model.train(was_training)
    return out


def ids_digest(decision_ids: Iterable[str]) -> str:
    """A short digest of a set of decision ids, for idempotency keys that differ per set."""
    return hashlib.sha256("\n".join(sorted(decision_ids)).encode()).hexdigest()[:16]


class StepFeedback:
    """Post each training step's loss as feedback for every decision awaiting it.

    ``report(step, loss)`` sends ``all_pending`` feedback keyed ``{run}/step-{step}``: a retry,
    or the same step reported again after a restart, applies nothing twice; decisions made
    after the request arrived wait for the next step. For OpenRLHF (its remote RM calls go to
    the HTTP ``get_reward`` endpoint) and verl (``laser_router_client.verl``).
    """

    def __init__(self, client: LaserRouterClient, router: str, run: Optional[str] = None):
        self.client = client
        self.router = router
        self.run = run or router

    def report(self, step: int, loss: float) -> dict:
        if not math.isfinite(loss):
            raise ValueError(f"loss must be finite, got {loss}")
        return self.client.feedback(self.router, all_pending=True, loss=float(loss),
                                    idempotency_key=f"{self.run}/step-{int(step)}")

    def attach_openrlhf(self, trainer: Any, loss_key: str = "policy_loss") -> None:
        """Report each OpenRLHF PPO step's ``status[loss_key]`` as it is logged.

        OpenRLHF's PPO trainer (openrlhf/trainer/ppo_trainer.py) calls
        ``self.save_logs_and_checkpoints(global_step, status, client_states)`` once per step
        with the step's status (``policy_loss`` from openrlhf/trainer/ray/ppo_actor.py); this
        wraps that method so the loss is posted, keyed by the step, before logging goes on.
        """
        original = trainer.save_logs_and_checkpoints

        def save_logs_and_checkpoints(global_step: int, logs_dict: Optional[dict] = None,
                                      client_states: Optional[dict] = None) -> Any:
            loss = (logs_dict or {}).get(loss_key)
            if loss is not None:
                self.report(global_step, float(loss))
            return original(global_step, logs_dict, client_states)

        trainer.save_logs_and_checkpoints = save_logs_and_checkpoints


class ValidationGain:
    """Reward each training step's decisions with the drop of a validation loss over the step.

    ``validation_loss()`` evaluates the current model on held-out data. Call ``before_step()``
    before the update and ``after_step(step, decision_ids)`` after it: the gain
    ``loss_before - loss_after`` (higher is better; negative when the step hurt) goes to
    those decisions as a reward (or to every pending decision when no ids are given), keyed
    ``{run}/val-step-{step}`` so a retry applies nothing twice.
    """

    def __init__(self, client: LaserRouterClient, router: str, validation_loss: Callable[[], float],
                 run: Optional[str] = None):
        self.client = client
        self.router = router
        self.run = run or router
        self.validation_loss = validation_loss
        self._before: Optional[float] = None

    def before_step(self) -> float:
        self._before = float(self.validation_loss())
        return self._before

    def after_step(self, step: int, decision_ids: Sequence[str] = ()) -> dict:
        if self._before is None:
            raise RuntimeError("call before_step() before the update")
        gain = self._before - float(self.validation_loss())
        self._before = None
        if not math.isfinite(gain):
            raise ValueError(f"validation loss is not finite (gain {gain})")
        key = f"{self.run}/val-step-{int(step)}"
        if decision_ids:
            return self.client.feedback(self.router, list(decision_ids), reward=gain, idempotency_key=key)
        return self.client.feedback(self.router, all_pending=True, reward=gain, idempotency_key=key)
