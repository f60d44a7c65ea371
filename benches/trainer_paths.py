#!/usr/bin/env python3
"""What the trainer-facing paths cost, side by side, through the real release binary:

1. Score through an encoder router (contexts embedded by the server from the prompts, the
   demo MiniLM encoder) vs the same Score with client contexts (same RMs, same texts): the
   ratio and the encoder's cost per query.
2. The same Score over HTTP/JSON vs gRPC: the ratio.
3. The score ensemble of the demo's three heads (one model file, three output indices:
   one shared session) vs one head: the ratio (one forward pass serves all three).

RMs are the tiny fixture RMs, so RM compute does not hide what is measured. Rounds alternate
between the two sides of each comparison and each side keeps its best median, so a ratio
survives a neighbour's load. Usage: python3 benches/trainer_paths.py [BINARY]
(default target/release/laser-router; needs the demo models: scripts/demo-models.sh).
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
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python"))
from laser_router_client._pb.laser.v1 import reward_router_pb2 as pb  # noqa: E402
from laser_router_client._pb.laser.v1 import reward_router_pb2_grpc as rpc  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures" / "reward_models"
DEMO = ROOT / "models" / "demo"
QUERIES, ROUNDS, REQUESTS = 16, 3, 8


def config(data: str) -> str:
    rms = "".join(
        f'[[reward_models]]\nname = "{name}"\nmodel = "{FIXTURES / name / "model.onnx"}"\n'
        f'tokenizer = "{FIXTURES / "tokenizer.json"}"\ninput_format = "pair"\noutput = "logits"\n'
        for name in ("length", "polite"))
    return (f'[server]\nlisten = "127.0.0.1:0"\nmetrics_listen = "127.0.0.1:0"\nhttp_listen = "127.0.0.1:0"\n'
            f'data_dir = "{data}"\n[routers]\ncontext_dim = 384\nnormalization = "none"\ndefault_encoder = "minilm"\n{rms}'
            + "".join(f'[[reward_models]]\nname = "{head}"\nmodel = "{DEMO / "model.onnx"}"\n'
                      f'tokenizer = "{DEMO / "tokenizer.json"}"\ninput_format = "pair"\nmax_length = 256\n'
                      f'output = "logits"\noutput_index = {i}\n'
                      for i, head in enumerate(("satisfaction", "caution", "detail")))
            + f'[[encoders]]\nname = "minilm"\nmodel = "{DEMO / "model.onnx"}"\ntokenizer = "{DEMO / "tokenizer.json"}"\n'
            f'output = "sentence_embedding"\npooling = "none"\n')


def prompts(n):
    words = "the medicine helped my pain but I had side effects like nausea and headaches for days".split()
    return [" ".join(words[(i * 3) % 7:(i * 3) % 7 + 6 + i % 8]) + "?" for i in range(n)]


def median_ms(call):
    times = []
    for _ in range(REQUESTS):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target" / "release" / "laser-router")
    if not (DEMO / "model.onnx").exists():
        sys.exit("models/demo is missing: run scripts/demo-models.sh")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(config(str(Path(tmp) / "data")))
        env = dict(os.environ, ORT_DYLIB_PATH=str(ROOT / ".ort" / "lib" / "libonnxruntime.so"), LASER_LOG="warn")
        server = subprocess.Popen([binary, "serve", "--config", str(path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            ready = server.stdout.readline()
            grpc_addr = re.search(r"grpc=(\S+)", ready).group(1)
            http_addr = re.search(r"http=(\S+)", ready).group(1)
            stub = rpc.RewardRouterStub(grpc.insecure_channel(grpc_addr))
            texts = prompts(QUERIES)
            rng = np.random.default_rng(0)
            contexts = [list(map(float, rng.standard_normal(384))) for _ in range(QUERIES)]

            def request(router, with_contexts):
                return pb.ScoreRequest(router=router, queries=[
                    pb.Query(id=str(i), context=contexts[i] if with_contexts else [], prompt=texts[i],
                             responses=["It helped.", "Side effects were bad, see a doctor."])
                    for i in range(QUERIES)])

            client_ctx, encoder_ctx = request("client-contexts", True), request("encoder", False)
            from laser_router_client._pb.laser.v1 import admin_pb2, admin_pb2_grpc, common_pb2
            admin = admin_pb2_grpc.AdminStub(grpc.insecure_channel(grpc_addr))
            # The first two comparisons use the cheap fixture RMs only.
            admin.CreateRouter(admin_pb2.CreateRouterRequest(name="client-contexts", settings=admin_pb2.RouterSettings(
                context_dim=384, reward_models=["length", "polite"])))
            admin.CreateRouter(admin_pb2.CreateRouterRequest(name="encoder", settings=admin_pb2.RouterSettings(
                encoder="minilm", reward_models=["length", "polite"])))
            heads = ["satisfaction", "caution", "detail"]
            admin.CreateRouter(admin_pb2.CreateRouterRequest(name="one-head", settings=admin_pb2.RouterSettings(
                context_dim=384, policy=common_pb2.POLICY_FIXED, fixed_reward_model="satisfaction")))
            admin.CreateRouter(admin_pb2.CreateRouterRequest(name="three-heads", settings=admin_pb2.RouterSettings(
                context_dim=384, policy=common_pb2.POLICY_ENSEMBLE, reward_models=heads)))
            one_head, three_heads = request("one-head", True), request("three-heads", True)
            stub.Score(client_ctx)
            stub.Score(encoder_ctx)
            body = {"queries": [{"id": str(i), "context": contexts[i], "prompt": texts[i],
                                 "responses": ["It helped.", "Side effects were bad, see a doctor."]}
                                for i in range(QUERIES)]}
            http_url = f"http://{http_addr}/v1/routers/client-contexts/score"
            session = requests.Session()
            best = {}
            for _ in range(ROUNDS):
                for name, call in [
                    ("client contexts (gRPC)", lambda: stub.Score(client_ctx)),
                    ("encoder contexts (gRPC)", lambda: stub.Score(encoder_ctx)),
                    ("client contexts (HTTP/JSON)", lambda: session.post(http_url, json=body, timeout=60).raise_for_status()),
                    ("one demo head", lambda: stub.Score(one_head)),
                    ("ensemble of the three demo heads", lambda: stub.Score(three_heads)),
                ]:
                    best[name] = min(best.get(name, float("inf")), median_ms(call))
            for name, ms in best.items():
                print(f"Score, {QUERIES} queries x 2 responses, {name}: {ms:.2f} ms (best median)")
            grpc_ms = best["client contexts (gRPC)"]
            encoder_ms = best["encoder contexts (gRPC)"]
            print(f"ratio encoder / client contexts: {encoder_ms / grpc_ms:.2f}; "
                  f"encoder cost per query: {(encoder_ms - grpc_ms) / QUERIES:.2f} ms (MiniLM int8, 2 cores)")
            print(f"ratio HTTP/JSON / gRPC (same Score): {best['client contexts (HTTP/JSON)'] / grpc_ms:.2f}")
            print(f"ratio ensemble of 3 heads / one head (shared session): "
                  f"{best['ensemble of the three demo heads'] / best['one demo head']:.2f} (K = 3 separate models: ~3)")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
