#!/usr/bin/env python3
"""Writes N synthetic login bodies, one per line, for benchmarks and volume tests.

Realistic repetition: ips, device ids and users come from small pools, so masks repeat the way
they do in real traffic; about 1% of the messages are invalid, of several kinds (not JSON,
wrong message type, missing or null fields, bad ip, bad or out-of-range app_version).
Deterministic for a given seed.

    scripts/gen_synthetic.py 50000 > /tmp/synthetic.jsonl
"""
import json
import random
import sys
import uuid


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 42
    rng = random.Random(seed)
    ips = [".".join(str(rng.randrange(1, 255)) for _ in range(4)) for _ in range(2_000)]
    ips += [f"2001:db8::{rng.randrange(1, 65535):x}" for _ in range(100)]
    devices = [f"{rng.randrange(1000):03}-{rng.randrange(100):02}-{rng.randrange(10000):04}" for _ in range(3_000)]
    users = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(5_000)]
    versions = ["2.3.0", "0.96", "3.7", "1.0.12", "5.4.1", "0.2.6", "7.31", "10"]
    locales = ["RU", "PH", "ID", "FR", "US", "BR", "DE", None, None]
    kinds = ["android", "ios"]
    bad = [
        lambda m: "not json at all",
        lambda m: '{"foo": "oops_wrong_msg_type", "bar": "123"}',
        lambda m: json.dumps({k: v for k, v in m.items() if k != "ip"}),
        lambda m: json.dumps({**m, "device_id": None}),
        lambda m: json.dumps({**m, "ip": "300.1.2.3"}),
        lambda m: json.dumps({**m, "app_version": "1.2.x"}),
        lambda m: json.dumps({**m, "app_version": "3000.0.0"}),
        lambda m: json.dumps(m)[:40],
    ]
    out = sys.stdout
    for _ in range(n):
        m = {
            "user_id": rng.choice(users),
            "app_version": rng.choice(versions),
            "device_type": rng.choice(kinds),
            "ip": rng.choice(ips),
            "locale": rng.choice(locales),
            "device_id": rng.choice(devices),
        }
        line = rng.choice(bad)(m) if rng.random() < 0.01 else json.dumps(m)
        out.write(line + "\n")


if __name__ == "__main__":
    main()
