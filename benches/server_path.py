#!/usr/bin/env python3
"""Score and Feedback through the real server at LASeR's scale against the select and update
kernels alone, side by side (issue 17's end-to-end measures): release binary, durable state, d = 4096, K = 4 fixture
RMs (negligible RM compute), 64 queries per Score. Rounds alternate between the server
(median of 7 Scores) and the kernel (`linucb` bench's headline select, same shape); each side
keeps its best, and the server's time is split by stage from `laser_score_stage_seconds`.
Feedback: 64 decisions of one arm (a router limited to one RM) per request, median of 5,
against the headline's `update_batch` at d = 4096, r = 64 from the same kernel runs.

Usage: python3 benches/server_path.py [ROUNDS]   (builds what it needs with cargo)
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python"))
from laser_router_client._pb.laser.v1 import reward_router_pb2 as pb  # noqa: E402
from laser_router_client._pb.laser.v1 import reward_router_pb2_grpc as rpc  # noqa: E402
from laser_router_client._pb.laser.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402

FIX = ROOT / "tests" / "fixtures" / "reward_models"
D, B = 4096, 64


def build():
    subprocess.check_call(["cargo", "build", "--release", "--bin", "laser-router"], cwd=ROOT)
    out = subprocess.run(["cargo", "bench", "--no-run", "--bench", "linucb"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stderr
    return re.search(r"Executable benches/linucb.rs \((\S+)\)", out).group(1)


def config(data):
    rms = ""
    for name, model in [("length", "length"), ("polite", "polite"), ("length-b", "length"), ("polite-b", "polite")]:
        rms += (f'[[reward_models]]\nname = "{name}"\nmodel = "{FIX / model / "model.onnx"}"\n'
                f'tokenizer = "{FIX / "tokenizer.json"}"\ninput_format = "pair"\noutput = "logits"\nmax_length = 128\n')
    return (f'[server]\nlisten = "127.0.0.1:0"\nmetrics_listen = "127.0.0.1:0"\ndata_dir = "{data}"\n'
            f'[routers]\ncontext_dim = {D}\nnormalization = "none"\n' + rms)


def stage_sums(metrics_addr):
    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=10).read().decode()
    sums = {}
    for line in text.splitlines():
        m = re.match(r'laser_score_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)', line)
        if m:
            sums.setdefault(m.group(2), [0.0, 0.0])["sum count".split().index(m.group(1))] = float(m.group(3))
    return sums


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    kernel_bin = build()
    env = dict(os.environ, ORT_DYLIB_PATH=str(ROOT / ".ort" / "lib" / "libonnxruntime.so"),
               LASER_BENCH_REFERENCE_DECISIONS="0", LASER_LOG="warn")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(config(str(Path(tmp) / "data")))
        server = subprocess.Popen([str(ROOT / "target" / "release" / "laser-router"), "serve", "--config", str(path)],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            ready = server.stdout.readline()
            grpc_addr = re.search(r"grpc=(\S+)", ready).group(1)
            metrics_addr = re.search(r"metrics=(\S+)", ready).group(1)
            stub = rpc.RewardRouterStub(grpc.insecure_channel(grpc_addr, options=[("grpc.max_send_message_length", 64 << 20)]))
            import math
            contexts = [[math.sin(0.001 * (q * D + i)) for i in range(D)] for q in range(B)]
            request = pb.ScoreRequest(router="e2e", queries=[
                pb.Query(id=str(q), context=contexts[q], prompt="How are you?", responses=["Fine.", "Well, thanks!"])
                for q in range(B)])
            reply = stub.Score(request)  # creates the router
            stub.Feedback(pb.FeedbackRequest(router="e2e", decision_ids=[r.decision_id for r in reply.results], loss=0.3))
            # Feedback for 64 decisions of one arm (a router that may pick only `length`): one
            # rank-64 update end to end, against the kernel's update_batch of the same shape.
            admin = admin_pb2_grpc.AdminStub(grpc.insecure_channel(grpc_addr))
            admin.CreateRouter(admin_pb2.CreateRouterRequest(name="e2e-feedback", settings=admin_pb2.RouterSettings(
                context_dim=D, reward_models=["length"])))
            feedback_request = pb.ScoreRequest(router="e2e-feedback", queries=request.queries)
            best_server, best_kernel, best_stages = float("inf"), float("inf"), {}
            best_feedback, best_update = float("inf"), float("inf")
            for _ in range(rounds):
                before = stage_sums(metrics_addr)
                times = []
                for _ in range(7):
                    started = time.perf_counter()
                    stub.Score(request)
                    times.append((time.perf_counter() - started) * 1000)
                after = stage_sums(metrics_addr)
                median = statistics.median(times)
                if median < best_server:
                    best_server = median
                    best_stages = {s: (after[s][0] - before.get(s, [0, 0])[0]) / max(after[s][1] - before.get(s, [0, 0])[1], 1) * 1000
                                   for s in after}
                feedback_times = []
                for _ in range(5):
                    ids = [r.decision_id for r in stub.Score(feedback_request).results]
                    started = time.perf_counter()
                    stub.Feedback(pb.FeedbackRequest(router="e2e-feedback", decision_ids=ids, loss=0.3))
                    feedback_times.append((time.perf_counter() - started) * 1000)
                best_feedback = min(best_feedback, statistics.median(feedback_times))
                out = subprocess.run([kernel_bin, "--bench", "headline"], cwd=ROOT, capture_output=True, text=True, env=env).stdout
                kernel = float(re.search(r"headline select d4096_K4_B64: ([\d.]+) ms", out).group(1))
                best_kernel = min(best_kernel, kernel)
                update = float(re.search(r"headline update_batch d4096_r64 \(factor \+ b \+ θ\): ([\d.]+) ms", out).group(1))
                best_update = min(best_update, update)
            rm_ms = best_stages.get("score", 0.0)
        finally:
            server.terminate()
            server.wait()
    print(f"Score d={D} K=4 B={B} through the server (durable): {best_server:.1f} ms (best median of 7, {rounds} rounds)")
    print("  by stage (mean ms): " + ", ".join(f"{s} {v:.1f}" for s, v in sorted(best_stages.items(), key=lambda kv: -kv[1])))
    print(f"select kernel alone (linucb headline, same shape): {best_kernel:.1f} ms (best of {rounds})")
    print(f"ratio server / (kernel + RMs' stage {rm_ms:.1f} ms): {best_server / (best_kernel + rm_ms):.2f} (issue 17's target <= 1.25)")
    print(f"Feedback for 64 decisions of one arm through the server (durable): {best_feedback:.1f} ms (best median of 5)")
    print(f"update kernel alone (linucb headline update_batch d4096_r64): {best_update:.1f} ms (best of {rounds})")
    print(f"ratio Feedback / update kernel: {best_feedback / best_update:.2f} (issue 17's target <= 1.25)")


if __name__ == "__main__":
    main()
