"""The HTTP/JSON API with real HTTP clients: Python `requests`, `curl`, and OpenRLHF's own
remote reward model request function when its package imports here."""

import json
import subprocess

import pytest
import requests

from laser_router_client import LaserRouterClient


def post(server, path, body, **kwargs):
    return requests.post(server.http + path, json=body, timeout=30, **kwargs)


def test_score_and_feedback_in_proto3_json(http_server):
    body = {"queries": [{"id": "q1", "context": [1, 0, 0, 0], "prompt": "How are you?",
                         "responses": ["Fine.", "Very well, thank you!"]}], "explain": True}
    reply = post(http_server, "/v1/routers/run/score", body)
    assert reply.status_code == 200, reply.text
    result = reply.json()["results"][0]
    assert result["id"] == "q1" and result["rewardModel"] in ("length", "polite")
    assert len(result["scores"]) == 2 and sorted(result["ranking"]) == [0, 1]
    assert len(result["arms"]) == 2
    ack = post(http_server, "/v1/routers/run/feedback",
               {"decisionIds": [result["decisionId"]], "loss": 0.25, "idempotencyKey": "k1"})
    assert ack.status_code == 200, ack.text
    assert ack.json()["applied"] == 1
    again = post(http_server, "/v1/routers/run/feedback",
                 {"decisionIds": [result["decisionId"]], "loss": 0.25, "idempotencyKey": "k1"})
    assert again.json()["replayed"] is True
    # The same router over gRPC.
    with LaserRouterClient(http_server.address) as client:
        assert client.get_router("run").arms[0].feedback_count + client.get_router("run").arms[1].feedback_count == 1


def test_errors_are_http_codes_with_the_field_named(http_server):
    cases = [
        # Mixed contexts.
        ({"queries": [{"id": "a", "context": [1, 0, 0, 0], "prompt": "p", "responses": ["x"]},
                      {"id": "b", "prompt": "p", "responses": ["x"]}]}, 400, "queries[1].context"),
        # Over a limit: 257 responses.
        ({"queries": [{"id": "a", "context": [1, 0, 0, 0], "prompt": "p", "responses": ["x"] * 257}]},
         429, "queries[0].responses"),
        # The body names another router.
        ({"router": "other", "queries": [{"id": "a", "context": [1, 0, 0, 0], "prompt": "p",
                                           "responses": ["x"]}]}, 400, "router"),
    ]
    for body, status, field in cases:
        reply = post(http_server, "/v1/routers/run/score", body)
        assert reply.status_code == status, reply.text
        error = reply.json()["error"]
        assert error["field"] == field, error
    unknown = post(http_server, "/v1/routers/run/feedback", {"decisionIds": ["nope"], "loss": 1.0})
    assert unknown.status_code == 404 and "run" in unknown.json()["error"]["message"]
    malformed = requests.post(http_server.http + "/v1/routers/run/score", data="{not json",
                              headers={"content-type": "application/json"}, timeout=30)
    assert malformed.status_code == 400 and malformed.json()["error"]["field"] == "body"
    wrong_type = requests.post(http_server.http + "/v1/routers/run/score", data="{}",
                               headers={"content-type": "text/plain"}, timeout=30)
    assert wrong_type.status_code == 415
    huge = requests.post(http_server.http + "/v1/routers/run/score", data=b"x" * (17 << 20),
                         headers={"content-type": "application/json"}, timeout=60)
    assert huge.status_code == 413
    # Nothing of the above created a router.
    with LaserRouterClient(http_server.address) as client:
        assert client.list_routers() == []


def test_curl_scores_a_prompt_on_an_encoder_router(http_server):
    body = json.dumps({"queries": [{"id": "q", "prompt": "What is 6 times 7?", "responses": ["42", "Thanks!"]}]})
    out = subprocess.run(["curl", "-sS", "-X", "POST", "-H", "content-type: application/json",
                          "--data", body, http_server.http + "/v1/routers/from-prompts/score"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    result = json.loads(out)["results"][0]
    assert result["rewardModel"] in ("length", "polite")
    with LaserRouterClient(http_server.address) as client:
        settings = client.get_router("from-prompts").settings
        assert (settings.encoder, settings.context_dim) == ("topics", 4)


def test_openrlhf_get_reward_one_decision_per_prompt(http_server):
    prompts = ["What is 2 plus 2?", "Please say thanks."]
    samples = [(p, f"{p} answer {i}") for p in prompts for i in range(3)]
    body = {"query": [q for _, q in samples], "prompts": [p for p, _ in samples], "labels": [""] * 6}
    reply = post(http_server, "/v1/routers/grpo/get_reward", body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert len(data["rewards"]) == 6 and data["scores"] == data["rewards"]
    arms = data["extra_logs"]["laser_reward_model_index"]
    assert arms[0] == arms[1] == arms[2] and arms[3] == arms[4] == arms[5]
    # One sample per request, as OpenRLHF often sends: still the prompt's decision.
    single = post(http_server, "/v1/routers/grpo/get_reward",
                  {"query": [samples[0][1]], "prompts": [samples[0][0]]}).json()
    assert single["extra_logs"]["laser_reward_model_index"] == [arms[0]]
    with LaserRouterClient(http_server.address) as client:
        assert client.get_router("grpo").pending_decisions == 2
        ack = client.feedback("grpo", all_pending=True, loss=0.4)
        assert ack["applied"] == 2


def test_openrlhf_request_function_against_get_reward(http_server):
    """OpenRLHF 0.11's own remote-RM client (SingleTurnAgentExecutor._fetch_rewards_via_http,
    used with --remote_rm_url). Its module imports torch (via openrlhf's utils), so this runs
    only where OpenRLHF and its stack are installed; elsewhere it says why it could not."""
    try:
        from openrlhf.utils.agent import SingleTurnAgentExecutor
    except Exception as error:
        pytest.skip(f"OpenRLHF's remote-RM client does not import here ({type(error).__name__}: {error}); "
                    "OpenRLHF 0.11.2 imports torch from openrlhf.utils")
    import asyncio
    executor = SingleTurnAgentExecutor(http_server.http + "/v1/routers/openrlhf/get_reward")
    replies = asyncio.run(executor._fetch_rewards_via_http(["Q? A."], ["Q?"], [""]))
    assert len(replies[0]["rewards"]) == 1


def test_the_request_openrlhf_sends_and_the_fields_it_reads(http_server):
    """OpenRLHF 0.11.2, openrlhf/utils/agent.py, SingleTurnAgentExecutor._fetch_rewards_via_http:
    it POSTs `{"query": queries, "prompts": prompts, "labels": labels}` as JSON (aiohttp,
    180 s timeout, raise_for_status, then `response.json()`) to each --remote_rm_url in turn,
    often one sample per request, and reads `rewards`, `scores` (falling back to rewards) and
    `extra_logs` (a dict of per-sample numbers it concatenates). The same request here."""
    url = http_server.http + "/v1/routers/openrlhf-run/get_reward"
    prompt = "Question: what is 12 times 3?\nAnswer:"
    for completion in (" 36, thank you for asking!", " 36"):
        reply = requests.post(url, json={"query": [prompt + completion], "prompts": [prompt], "labels": ["36"]},
                              timeout=180)
        reply.raise_for_status()
        data = reply.json()
        assert len(data["rewards"]) == 1 and data["scores"] == data["rewards"]
        assert all(isinstance(v, list) and len(v) == 1 for v in data["extra_logs"].values())
    with LaserRouterClient(http_server.address) as client:
        assert client.get_router("openrlhf-run").pending_decisions == 1, "one prompt, one decision"


def test_openrlhf_step_hook_posts_each_logged_step_loss(http_server):
    """The hook wraps PPO trainer's save_logs_and_checkpoints(global_step, status, client_states)
    (OpenRLHF 0.11.2, openrlhf/trainer/ppo_trainer.py, called once per step with the status that
    carries `policy_loss`); the trainer here has only that method, as OpenRLHF's needs ray."""
    from laser_router_client.signals import StepFeedback

    class Trainer:
        logged = []

        def save_logs_and_checkpoints(self, global_step, logs_dict=None, client_states=None):
            self.logged.append((global_step, dict(logs_dict or {})))

    url = http_server.http + "/v1/routers/openrlhf-hook/get_reward"
    client = LaserRouterClient(http_server.address)
    trainer = Trainer()
    StepFeedback(client, "openrlhf-hook", run="run-1").attach_openrlhf(trainer)
    for step, prompts in enumerate([["A?", "B?"], ["C?"]], start=1):
        body = {"query": [p + " yes" for p in prompts], "prompts": prompts, "labels": [""] * len(prompts)}
        assert requests.post(url, json=body, timeout=30).status_code == 200
        trainer.save_logs_and_checkpoints(step, {"policy_loss": 0.1 * step, "kl": 0.0}, {})
        info = client.get_router("openrlhf-hook")
        assert info.pending_decisions == 0
        assert sum(a.feedback_count for a in info.arms) == {1: 2, 2: 3}[step]
    # A step logged again (a retried or resumed step) applies nothing twice.
    trainer.save_logs_and_checkpoints(2, {"policy_loss": 0.2}, {})
    assert sum(a.feedback_count for a in client.get_router("openrlhf-hook").arms) == 3
    assert [s for s, _ in trainer.logged] == [1, 2, 2]
