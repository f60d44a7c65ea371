#!/usr/bin/env python3
"""The same reward model in process (`onnx` backend) and on an inference engine (`kserve_v2`
backend, MLServer on this machine running it with ONNX Runtime, token tensors sent): pairs/s
under concurrent clients and the latency each request gains, side by side in one run.

Model: the demo RM (MiniLM, 3 heads; `satisfaction` read), Scores of 1 query x 8 responses.
Rounds alternate between the two backends; each keeps its best round (a neighbour's load
only ever slows a round). Release binary; state not durable (the RM path is measured).

Usage: python3 benches/remote_rm.py [ROUNDS] [CLIENTS]
  needs the MLServer environment of scripts/test-engines.sh (LASER_MLSERVER_PYTHON, or the
  cached ~/.cache/laser-router/mlserver-<hash>).
"""
import hashlib
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python"))
sys.path.insert(0, str(ROOT / "clients" / "python" / "engine_tests"))
from conftest import CONFIG, Server, free_port  # noqa: E402  (engine_tests' fixtures)
from engines import DEMO, Engine  # noqa: E402
from laser_router_client import LaserRouterClient, Query  # noqa: E402
from laser_router_client._pb.laser.v1 import admin_pb2  # noqa: E402

RESPONSES = [
    "It worked well for me and the side effects were mild.",
    "Terrible, I had headaches every day and stopped after a week.",
    "No change at all.",
    "My doctor switched me to it and I am glad, sleeping better now.",
    "It helped with the pain but made me very tired in the mornings.",
    "Would not recommend.",
    "Great results after two months, no problems so far.",
    "Some nausea at first, then fine.",
]


def mlserver_python() -> str:
    if os.environ.get("LASER_MLSERVER_PYTHON"):
        return os.environ["LASER_MLSERVER_PYTHON"]
    requirements = ROOT / "clients" / "python" / "engine_tests" / "requirements-mlserver.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:12]
    python = Path(os.environ.get("LASER_ENGINE_VENVS", Path.home() / ".cache" / "laser-router")) / f"mlserver-{digest}" / "bin" / "python"
    if not python.exists():
        sys.exit(f"{python} is missing: run scripts/test-engines.sh once (it builds the engine environments)")
    return str(python)


def latency(client, router, count=40):
    """Median seconds of one Score (one client)."""
    query = [Query(id="q", context=[1.0, 0.0], prompt="How was the medicine?", responses=RESPONSES)]
    for _ in range(3):
        client.score(router, query)
    times = []
    for _ in range(count):
        started = time.perf_counter()
        client.score(router, query)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def throughput(address, router, clients, seconds=4.0):
    """Pairs scored per second with `clients` concurrent clients."""
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def run(index):
        client = LaserRouterClient(address, retries=0)
        query = [Query(id="q", context=[1.0, 0.0], prompt="How was the medicine?", responses=RESPONSES)]
        while time.perf_counter() < stop:
            client.score(router, query)
            done[index] += len(RESPONSES)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    clients = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    subprocess.check_call(["cargo", "build", "--release", "--quiet", "--bin", "laser-router"], cwd=ROOT)
    os.environ["LASER_MLSERVER_PYTHON"] = mlserver_python()
    os.environ["LASER_ROUTER_BIN"] = str(ROOT / "target" / "release" / "laser-router")
    engine = Engine("mlserver")
    # The engine tests' config: the demo RM in process as "satisfaction"; state not durable.
    server = Server(free_port(), CONFIG + "[store]\ndurable = false\n").wait_ready()
    address = server.address
    try:
        client = LaserRouterClient(address, retries=0)
        client.add_reward_model(
            name="remote", tokenizer_path=str(DEMO / "tokenizer.json"), input_format="pair", max_length=256,
            output_name="logits", output_index=0,
            kserve_v2=admin_pb2.KserveV2Spec(endpoints=[engine.url], model_name="demo-tokens", send="tokens"))
        routers = {"local": "satisfaction", "remote": "remote"}
        for name, reward_model in routers.items():
            client.create_router(name, context_dim=2, policy="fixed", fixed_reward_model=reward_model)
        best = {name: {"latency": float("inf"), "pairs": 0.0} for name in ("local", "remote")}
        for round_index in range(rounds):
            for name in ("local", "remote"):
                best[name]["latency"] = min(best[name]["latency"], latency(client, name))
                best[name]["pairs"] = max(best[name]["pairs"], throughput(address, name, clients))
            print(f"round {round_index + 1}/{rounds}: " + ", ".join(
                f"{n} {b['latency'] * 1e3:.2f} ms, {b['pairs']:.0f} pairs/s" for n, b in best.items()), flush=True)
        local, remote = best["local"], best["remote"]
        print(f"remote_rm: 1 client, Score of 8 pairs: onnx {local['latency'] * 1e3:.2f} ms, "
              f"kserve_v2 (MLServer) {remote['latency'] * 1e3:.2f} ms, "
              f"added {(remote['latency'] - local['latency']) * 1e3:.2f} ms per request")
        print(f"remote_rm: {clients} clients: onnx {local['pairs']:.0f} pairs/s, kserve_v2 (MLServer) "
              f"{remote['pairs']:.0f} pairs/s, ratio {remote['pairs'] / local['pairs']:.2f}")
    finally:
        server.stop()
        engine.close()


if __name__ == "__main__":
    main()
