"""The feedback signal helpers against the real server: ValidationGain (the drop of a
validation loss over a step, as a reward for the step's decisions) and the DPO-style loss."""

import math

import numpy as np
import pytest

from laser_router_client import LaserRouterClient, Query
from laser_router_client.signals import ValidationGain, dpo_style_loss


def test_validation_gain_rewards_the_steps_decisions_once(server):
    client = LaserRouterClient(server.address)
    client.create_router("val", context_dim=4, normalization="none")
    losses = iter([0.9, 0.7, 0.7, 0.8])  # step 1 lowers it by 0.2, step 2 raises it by 0.1
    gain = ValidationGain(client, "val", lambda: next(losses))
    ids = [r.decision_id for r in client.score("val", [
        Query(id=str(i), context=np.eye(4)[i], prompt="Q?", responses=["a", "b b"]) for i in range(3)])]
    gain.before_step()
    assert gain.after_step(1, ids)["applied"] == 3
    info = client.get_router("val")
    assert sum(a.feedback_count for a in info.arms) == 3
    # normalization "none": the mean reward of the arms is the gain itself
    assert all(math.isclose(a.mean_reward, 0.2, abs_tol=1e-9) for a in info.arms if a.feedback_count)
    # A later step with nothing given rewards every pending decision (none left: 0 applied).
    gain.before_step()
    assert gain.after_step(2)["applied"] == 0
    with pytest.raises(RuntimeError):
        gain.after_step(3)


def test_dpo_style_loss():
    assert math.isclose(dpo_style_loss(0, 0, 0, 0), math.log(2))
    # The update moved toward the preferred completion: below log 2; against it: above.
    assert dpo_style_loss(-1.0, -2.0, -2.0, -2.0, beta=1.0) < math.log(2) < dpo_style_loss(-3.0, -2.0, -2.0, -2.0, beta=1.0)
    assert math.isfinite(dpo_style_loss(-1e6, 0.0, 0.0, 0.0, beta=1.0))
