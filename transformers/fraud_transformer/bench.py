"""Latency of the transformer at a fixed request rate, from keep-alive clients.

``python -m fraud_transformer.bench --url http://127.0.0.1:8086 --rate 200 --seconds 20``

Paced: ``--connections`` threads (one keep-alive connection each) share the rate, each on
its own schedule; a thread that falls behind sends at once, so an overloaded server shows
up as a lower achieved rate. Each request is one V1 transaction (cards and terminals drawn
from small pools; unknown ones take the fallback path). Prints the achieved rate and the
latency percentiles; exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import random
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

import httpx
import numpy as np


def _transaction(rng: random.Random, cards: int, terminals: int) -> dict[str, object]:
    return {
        "schema_version": 1,
        "transaction_id": f"bench-{uuid.uuid4().hex}",
        "card_id": f"C{rng.randrange(cards):05d}",
        "terminal_id": f"T{rng.randrange(terminals):05d}",
        "amount": round(rng.lognormvariate(3.5, 1.0), 2),
        "currency": "EUR",
        "timestamp": datetime.now(UTC).isoformat(),
    }


def run(
    url: str, rate: float, seconds: float, connections: int, warmup: int, cards: int, terminals: int
) -> int:
    endpoint = f"{url.rstrip('/')}/v1/models/fraud:predict"
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    began: list[float] = []
    start_together = threading.Barrier(connections, action=lambda: began.append(time.perf_counter()))
    per_thread = rate / connections

    def worker(index: int) -> None:
        rng = random.Random(index)
        with httpx.Client(timeout=10) as client:
            for _ in range(max(1, warmup // connections)):
                client.post(endpoint, json={"instances": [_transaction(rng, cards, terminals)]})
            start_together.wait()
            for i in range(int(per_thread * seconds)):
                delay = began[0] + (i + index / connections) / per_thread - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                body = {"instances": [_transaction(rng, cards, terminals)]}
                start = time.perf_counter()
                try:
                    response = client.post(endpoint, json=body)
                    failure = (
                        None
                        if response.status_code == 200
                        else f"{response.status_code} {response.text[:200]}"
                    )
                except httpx.HTTPError as exc:
                    failure = repr(exc)
                with lock:
                    latencies.append(time.perf_counter() - start)
                    if failure:
                        errors.append(failure)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began[0]
    ms = np.array(latencies) * 1000
    print(
        f"{len(ms)} requests in {elapsed:.1f} s ({len(ms) / elapsed:.0f} req/s) over {connections} keep-alive "
        f"connections, errors {len(errors)}; latency ms: p50 {np.percentile(ms, 50):.2f}  "
        f"p90 {np.percentile(ms, 90):.2f}  p99 {np.percentile(ms, 99):.2f}  max {ms.max():.2f}"
    )
    for error in errors[:5]:
        print("  error:", error)
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8086", help="the transformer's HTTP address")
    parser.add_argument(
        "--rate", type=float, default=200.0, help="requests per second, all connections together"
    )
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--connections", type=int, default=4, help="client threads, one keep-alive connection each"
    )
    parser.add_argument("--warmup", type=int, default=200, help="requests sent before measuring")
    parser.add_argument("--cards", type=int, default=1000)
    parser.add_argument("--terminals", type=int, default=300)
    args = parser.parse_args(argv)
    sys.exit(
        run(args.url, args.rate, args.seconds, args.connections, args.warmup, args.cards, args.terminals)
    )


if __name__ == "__main__":
    main()
