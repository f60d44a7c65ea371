#!/usr/bin/env python3
"""Two server binaries side by side on the same Score, requests interleaved one by one
(A, B, A, B, ...), so a neighbour's load and the disk's fsync times fall on both alike: the
10th/50th/90th percentile latency of each and the ratio of medians. Built for before/after
checks of a change on the Score path (docs/benchmarks.md); rounds alternating in blocks of
requests proved too noisy here (fsync per Score).

Usage: python3 benches/ab_score.py BEFORE_BINARY AFTER_BINARY [--encoder | --kserve]
  (needs the demo models: scripts/demo-models.sh; the Score is trainer_paths.py's: 16 queries x
  2 responses on the fixture RMs, with client contexts, or with --encoder, contexts from the
  demo MiniLM encoder, or with --kserve, scored by the demo RM on one MLServer engine that both
  servers share (backend kserve_v2, tokens sent; the MLServer environment of
  scripts/test-engines.sh))
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benches"))
sys.path.insert(0, str(ROOT / "clients" / "python"))
import trainer_paths  # noqa: E402
from laser_router_client._pb.laser.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402
from laser_router_client._pb.laser.v1 import reward_router_pb2 as pb  # noqa: E402
from laser_router_client._pb.laser.v1 import reward_router_pb2_grpc as rpc  # noqa: E402

ENCODER = "--encoder" in sys.argv
KSERVE = "--kserve" in sys.argv
BINARIES = dict(zip(("before", "after"), [a for a in sys.argv[1:] if not a.startswith("--")]))
REQUESTS = int(os.environ.get("AB_REQUESTS", 150 if ENCODER else 400))


def start(binary: str, folder: str, engine=None):
    path = Path(folder) / "config.toml"
    path.write_text(trainer_paths.config(str(Path(folder) / "data")))
    env = dict(os.environ, ORT_DYLIB_PATH=str(ROOT / ".ort" / "lib" / "libonnxruntime.so"), LASER_LOG="warn")
    process = subprocess.Popen([binary, "serve", "--config", str(path)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, env=env)
    channel = grpc.insecure_channel(re.search(r"grpc=(\S+)", process.stdout.readline()).group(1))
    settings = {"encoder": "minilm"} if ENCODER else {"context_dim": 384}
    admin = admin_pb2_grpc.AdminStub(channel)
    reward_models = ["length", "polite"]
    if engine is not None:
        admin.AddRewardModel(admin_pb2.AddRewardModelRequest(spec=admin_pb2.RewardModelSpec(
            name="remote", tokenizer_path=str(trainer_paths.DEMO / "tokenizer.json"), input_format="pair",
            max_length=256, output_name="logits", output_index=0,
            kserve_v2=admin_pb2.KserveV2Spec(endpoints=[engine.url], model_name="demo-tokens", send="tokens"))))
        reward_models = ["remote"]
    admin.CreateRouter(admin_pb2.CreateRouterRequest(
        name="c", settings=admin_pb2.RouterSettings(reward_models=reward_models, **settings)))
    return process, rpc.RewardRouterStub(channel)


def main():
    if len(BINARIES) != 2:
        sys.exit(__doc__)
    texts = trainer_paths.prompts(16)
    rng = np.random.default_rng(0)
    contexts = [list(map(float, rng.standard_normal(384))) for _ in range(16)]
    request = pb.ScoreRequest(router="c", queries=[
        pb.Query(id=str(i), context=[] if ENCODER else contexts[i], prompt=texts[i],
                 responses=["It helped.", "Side effects were bad, see a doctor."]) for i in range(16)])
    folders = {side: tempfile.TemporaryDirectory() for side in BINARIES}
    engine = None
    if KSERVE:
        sys.path.insert(0, str(ROOT / "clients" / "python" / "engine_tests"))
        import remote_rm  # noqa: E402
        from engines import Engine  # noqa: E402

        os.environ["LASER_MLSERVER_PYTHON"] = remote_rm.mlserver_python()
        engine = Engine("mlserver")
    servers = {side: start(binary, folders[side].name, engine) for side, binary in BINARIES.items()}
    try:
        for _, stub in servers.values():
            for _ in range(20):
                stub.Score(request)
        times = {side: [] for side in servers}
        for _ in range(REQUESTS):
            for side, (_, stub) in servers.items():
                started = time.perf_counter()
                stub.Score(request)
                times[side].append(time.perf_counter() - started)
    finally:
        for process, _ in servers.values():
            process.kill()
        if engine is not None:
            engine.close()
    for side, values in times.items():
        p10, p50, p90 = (float(np.percentile(values, k)) * 1000 for k in (10, 50, 90))
        print(f"{side}: p10 {p10:.2f} ms, p50 {p50:.2f} ms, p90 {p90:.2f} ms ({len(values)} Scores)")
    ratio = statistics.median(times["after"]) / statistics.median(times["before"])
    print(f"after / before (median latency): {ratio:.3f}")


if __name__ == "__main__":
    main()
