#!/usr/bin/env python3
"""The PostgreSQL state backend against the local log, side by side in one run (issue 16's
measure): Score p50/p99 and Feedback/s at 1, 8 and 64 concurrent clients.

Two release servers with the same config (fixture RMs, context_dim 64, LinUCB), one on the
local log (fsync on), one on a throwaway PostgreSQL 15 cluster on this machine (fsync on).
Rounds alternate between the backends; each keeps its best round per measure (a neighbour's
load only ever slows a round). Every Score and Feedback is acknowledged only once durable,
so these are the durable paths.

Then forwarding: Score p50/p99 through the replica that owns the router vs through another
replica (one more gRPC hop), at 1 and 8 clients.

Then takeover: two replicas on the database (lease 1 s), the owner of the benchmark's router
SIGKILLed, the time until a Score sent to the other replica is answered by that replica
itself (lease lapse + loading the router's state), over 5 kills (the killed replica restarts
before the next kill).

Usage: python3 benches/state_backends.py [ROUNDS] [SECONDS]
"""
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "clients" / "python"))
sys.path.insert(0, str(ROOT / "clients" / "python" / "tests"))
from conftest import CONFIG, Server, free_port  # noqa: E402
from laser_router_client import LaserRouterClient, Query  # noqa: E402
from postgres_cluster import PostgresCluster  # noqa: E402

DIM = 64
CLIENTS = (1, 8, 64)


def context(i):
    values = [0.0] * DIM
    values[i % DIM] = 1.0
    return values


def scores(address, clients, seconds, router="bench"):
    """Score latencies (s) with `clients` concurrent clients on `router`."""
    latencies = [[] for _ in range(clients)]
    stop = time.perf_counter() + seconds

    def run(index):
        client = LaserRouterClient(address, retries=0)
        i = 0
        while time.perf_counter() < stop:
            started = time.perf_counter()
            client.score(router, [Query(id="q", context=context(i), prompt="p", responses=["a", "bb"])])
            latencies[index].append(time.perf_counter() - started)
            i += 1

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    merged = sorted(x for per in latencies for x in per)
    return merged


def feedbacks_per_second(address, clients, seconds):
    """Feedback requests (one decision each) acknowledged per second with `clients` clients."""
    client = LaserRouterClient(address, retries=0)
    per_client = []
    for c in range(clients):
        queries = [Query(id=str(i), context=context(i), prompt="p", responses=["a", "b"]) for i in range(256)]
        per_client.append([r.decision_id for r in client.score("bench", queries)])
    done = [0] * clients
    stop = time.perf_counter() + seconds

    def run(index):
        own = LaserRouterClient(address, retries=0)
        for decision_id in per_client[index]:
            if time.perf_counter() >= stop:
                break
            own.feedback("bench", [decision_id], loss=0.3)
            done[index] += 1

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 3.0
    subprocess.check_call(["cargo", "build", "--release", "--quiet", "--bin", "laser-router"], cwd=ROOT)
    os.environ["LASER_ROUTER_BIN"] = str(ROOT / "target" / "release" / "laser-router")
    postgres = PostgresCluster(fsync=True)
    base = CONFIG.replace("[routers]\ncontext_dim = 4", f"[routers]\ncontext_dim = {DIM}")
    servers = {
        "local": Server(free_port(), base).wait_ready(),
        "postgres": Server(free_port(), base + f'[store]\nbackend = "postgres"\nurl = "{postgres.url}"\n').wait_ready(),
    }
    try:
        for server in servers.values():
            LaserRouterClient(server.address).create_router("bench", context_dim=DIM)
        best = {name: {} for name in servers}
        for round_index in range(rounds):
            for clients in CLIENTS:
                for name, server in servers.items():
                    latencies = scores(server.address, clients, seconds)
                    p50 = statistics.median(latencies)
                    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
                    rate = feedbacks_per_second(server.address, clients, seconds)
                    entry = best[name].setdefault(clients, {"p50": float("inf"), "p99": float("inf"), "feedback": 0.0})
                    entry["p50"] = min(entry["p50"], p50)
                    entry["p99"] = min(entry["p99"], p99)
                    entry["feedback"] = max(entry["feedback"], rate)
            print(f"round {round_index + 1}/{rounds} done", flush=True)
        for clients in CLIENTS:
            local, pg = best["local"][clients], best["postgres"][clients]
            print(f"state_backends: {clients:>2} clients: Score p50 local {local['p50'] * 1e3:.2f} ms, "
                  f"postgres {pg['p50'] * 1e3:.2f} ms ({pg['p50'] / local['p50']:.2f}x); "
                  f"p99 local {local['p99'] * 1e3:.2f} ms, postgres {pg['p99'] * 1e3:.2f} ms "
                  f"({pg['p99'] / local['p99']:.2f}x); Feedback/s local {local['feedback']:.0f}, "
                  f"postgres {pg['feedback']:.0f} ({pg['feedback'] / local['feedback']:.2f}x)")
        for server in servers.values():
            server.stop()
        servers = {}
        forwarding(postgres, base, rounds, seconds)
        takeover(postgres, base)
    finally:
        for server in servers.values():
            server.stop()
        postgres.close()


def forwarding(postgres, base, rounds, seconds):
    """Score latency through the replica that owns the router vs through the other one
    (forwarded over gRPC), alternating, best round of each."""
    config = base + f'[store]\nbackend = "postgres"\nurl = "{postgres.url}"\n'
    replicas = [Server(free_port(), config).wait_ready() for _ in range(2)]
    try:
        # A router of its own: "bench" may still be leased to the stopped server above.
        LaserRouterClient(replicas[0].address).create_router("hop", context_dim=DIM)
        best = {}
        for _ in range(rounds):
            for clients in (1, 8):
                for path, replica in (("owner", replicas[0]), ("forwarded", replicas[1])):
                    latencies = scores(replica.address, clients, seconds, router="hop")
                    p50 = statistics.median(latencies)
                    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
                    entry = best.setdefault((path, clients), [float("inf"), float("inf")])
                    entry[0], entry[1] = min(entry[0], p50), min(entry[1], p99)
        for clients in (1, 8):
            (own50, own99), (fwd50, fwd99) = best[("owner", clients)], best[("forwarded", clients)]
            print(f"state_backends: forwarding, {clients} clients: Score p50 at the owner {own50 * 1e3:.2f} ms, "
                  f"through another replica {fwd50 * 1e3:.2f} ms ({fwd50 / own50:.2f}x); p99 {own99 * 1e3:.2f} ms, "
                  f"{fwd99 * 1e3:.2f} ms ({fwd99 / own99:.2f}x)")
    finally:
        for replica in replicas:
            replica.stop()


def takeover(postgres, base, kills=5):
    """Seconds from SIGKILL of the router's owner to a Score served by the replica that took
    it over."""
    config = base + f'[store]\nbackend = "postgres"\nurl = "{postgres.url}"\nlease_seconds = 1.0\n'
    replicas = [Server(free_port(), config).wait_ready() for _ in range(2)]
    lease = "FROM laser_lease WHERE stream = 'router/takeover'"
    owner = 0
    times = []
    try:
        query = [Query(id="q", context=context(0), prompt="p", responses=["a", "b"])]
        LaserRouterClient(replicas[0].address).create_router("takeover", context_dim=DIM)
        for _ in range(kills):
            other = 1 - owner
            epoch = int(postgres.sql(f"SELECT epoch {lease}"))
            replicas[owner].kill()
            killed = time.perf_counter()
            client = LaserRouterClient(replicas[other].address, retries=0, timeout=2)
            while True:
                try:
                    client.score("takeover", query)
                    if int(postgres.sql(f"SELECT epoch {lease}")) > epoch:
                        break
                except Exception:
                    pass
                time.sleep(0.01)
            times.append(time.perf_counter() - killed)
            replicas[owner].start()
            replicas[owner].wait_ready()
            owner = other
        print(f"state_backends: takeover of a router after SIGKILL of its owner (lease 1.0 s): median "
              f"{statistics.median(times):.2f} s, max {max(times):.2f} s over {kills} kills")
    finally:
        for replica in replicas:
            replica.stop()


if __name__ == "__main__":
    main()
