"""Trainers under chaos, as a user runs them: threads that Score and then send Feedback through
the client library (keyed, retried until the call's deadline), over one channel that balances
over every replica (gRPC round_robin over their addresses, as a load balancer would). Every
attempt the library makes is recorded (start, end, status code) by a client interceptor, so a
test can assert which codes clients ever saw, that no feedback was lost, and how long clients
went without a successful answer around each fault (the client-visible gap)."""

import json
import os
import statistics
import threading
import time

import grpc

from laser_router_client import LaserRouterClient, LaserRouterError, Query

# What a client may see while replicas are killed, paused or cut off from their database: every
# one of these is retried or is the caller's own deadline (docs/operations.md, "Status codes").
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED,
           grpc.StatusCode.DEADLINE_EXCEEDED}


class Attempts(grpc.UnaryUnaryClientInterceptor):
    """Every attempt's (start, end, code, method) on the monotonic clock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = []

    def intercept_unary_unary(self, continuation, details, request):
        started = time.monotonic()
        outcome = continuation(details, request)
        code = outcome.code()  # waits for the answer
        with self.lock:
            self.seen.append((started, time.monotonic(), code, details.method.rsplit("/", 1)[-1]))
        return outcome

    def codes(self):
        with self.lock:
            return {code for _, _, code, _ in self.seen}

    def gap_after(self, when, until):
        """The longest stretch without a successful answer in which some attempt failed,
        between `when` and `until`: from an OK answer (or `when`) to the next OK answer
        (infinite when none came after a failure). None when no attempt failed."""
        with self.lock:
            seen = sorted(self.seen, key=lambda a: a[1])
        failures = [end for _, end, code, _ in seen if code != grpc.StatusCode.OK and when <= end < until]
        if not failures:
            return None
        oks = [end for _, end, code, _ in seen if code == grpc.StatusCode.OK and when < end < until]
        if not oks or oks[-1] < failures[0]:
            return float("inf")
        marks = [max([end for _, end, code, _ in seen if code == grpc.StatusCode.OK and end <= when], default=when)]
        marks += oks
        stretches = [b - a for a, b in zip(marks, marks[1:]) if any(a < f <= b for f in failures)]
        return max(stretches, default=0.0)


class Trainers:
    """`count` trainer threads on router `router`: each Scores one query, then sends its loss as
    keyed Feedback (every fifth decision is left pending, to be answered after the chaos)."""

    def __init__(self, addresses, router, count=4, timeout=60.0, attempt_timeout=None):
        self.attempts = Attempts()
        target = "ipv4:" + ",".join(addresses)
        # The authority must be one host name (the target, commas and all, is not one).
        options = [("grpc.lb_policy_name", "round_robin"), ("grpc.default_authority", "laser-router")]
        channel = grpc.intercept_channel(grpc.insecure_channel(target, options=options), self.attempts)
        self.client = LaserRouterClient(channel=channel, timeout=timeout, attempt_timeout=attempt_timeout,
                                        backoff=0.05)
        self.router = router
        self.lock = threading.Lock()
        self.fed = {}  # decision id -> the Feedback's answer
        self.unfed = []
        self.errors = []  # LaserRouterError raised to a trainer (its call's deadline passed)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(t,), daemon=True) for t in range(count)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _run(self, index):
        i = 0
        while not self.stop.is_set():
            try:
                (result,) = self.client.score(self.router, [Query(id="q", context=[index, 1, i % 3, 0], prompt="p",
                                                                  responses=["a", "b"])])
            except LaserRouterError as error:
                self.errors.append(("score", error.code, error.message))
                continue
            if i % 5 == 4:
                with self.lock:
                    self.unfed.append(result.decision_id)
            else:
                try:
                    answer = self.client.feedback(self.router, [result.decision_id], loss=0.1 * index)
                except LaserRouterError as error:
                    # The feedback of a decision this trainer holds is lost to it.
                    self.errors.append(("feedback", error.code, error.message))
                    continue
                with self.lock:
                    self.fed[result.decision_id] = answer
            i += 1


    def assert_nothing_lost(self, client):
        """What every chaos test asserts once the faults are over: clients saw only the codes in
        ALLOWED, no call gave up, every feedback was applied exactly once (counted on the server
        through `client`), and every decision left pending still takes its feedback."""
        codes = self.attempts.codes()
        assert codes <= ALLOWED, f"clients saw {sorted(c.name for c in codes - ALLOWED)}"
        assert not self.errors, f"calls given up: {self.errors[:5]}"
        assert all(answer["applied"] == 1 for answer in self.fed.values()), "each feedback applied once"
        info = client.get_router(self.router)
        assert sum(a.feedback_count for a in info.arms) == len(self.fed), "every acknowledged feedback exactly once"
        assert info.pending_decisions >= len(self.unfed)
        answer = client.feedback(self.router, list(self.unfed), loss=0.5)
        assert answer["applied"] == len(self.unfed), "decisions left pending survived every fault"


def summary(gaps):
    """median, p99 and max of a list of seconds, as text."""
    if not gaps:
        return "no gaps"
    ordered = sorted(gaps)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return (f"median {statistics.median(ordered):.2f} s, p99 {p99:.2f} s, max {ordered[-1]:.2f} s "
            f"over {len(ordered)}")


def record(run):
    """Append one run's numbers to the file $LASER_CHAOS_RECORD names (scripts/chaos-gaps.sh)."""
    path = os.environ.get("LASER_CHAOS_RECORD")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(run) + "\n")
