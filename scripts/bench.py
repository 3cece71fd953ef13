#!/usr/bin/env python3
"""End-to-end benchmark: drain N synthetic messages from LocalStack 4.0.3 into PostgreSQL.

    scripts/bench.py [--messages 50000] [--runs 3] [--receivers 4]

Starts its own PostgreSQL cluster (default settings, fsync on) and LocalStack 4.0.3 (installed
into .bench/ls4 on first use) on free loopback ports. For each run it creates a fresh database
and queue, sends the messages with `sqs2pg send`, drains them with `sqs2pg drain`, and records
wall time and the drain process's user+sys CPU. Prints a Markdown report with every run and the
medians. moto cannot hold a queue this deep (see the SQS servers notes), hence LocalStack.
"""
import argparse
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench"
LS_PACKAGES = [
    "localstack-core[base-runtime]==4.0.3", "cbor2<6", "psutil<7", "moto-ext==5.0.22.post1",
    "pyopenssl==24.2.1", "cryptography<44", "service_identity<24.3",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def as_postgres(cmd):
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def pg_bin() -> Path:
    versions = sorted(int(p.name) for p in Path("/usr/lib/postgresql").iterdir() if p.name.isdigit())
    return Path(f"/usr/lib/postgresql/{versions[-1]}/bin")


def wait_until(what, ready, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            sys.exit(f"bench: timed out waiting for {what}")
        time.sleep(0.25)


def ensure_localstack() -> Path:
    venv = WORK / "ls4"
    if not (venv / "bin" / "python").exists() or subprocess.run(
        [venv / "bin" / "python", "-c", "import localstack"], capture_output=True).returncode:
        print("bench: installing LocalStack 4.0.3 into .bench/ls4", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([venv / "bin" / "pip", "install", "-q", *LS_PACKAGES], check=True)
    return venv


def start_postgres(root: Path):
    data = root / "pgdata"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    subprocess.run(as_postgres([pg_bin() / "initdb", "-D", data, "-U", "postgres", "--auth=trust",
                                "-E", "UTF8", "--no-instructions"]), check=True, capture_output=True)
    port = free_port()
    subprocess.run(as_postgres([pg_bin() / "pg_ctl", "-D", data, "-l", root / "postgres.log", "-w",
                                "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    return port, lambda: subprocess.run(as_postgres([pg_bin() / "pg_ctl", "-D", data, "-m", "fast", "stop"]),
                                         capture_output=True)


def start_localstack(venv: Path, root: Path):
    port = free_port()
    env = {**os.environ, "GATEWAY_LISTEN": f"127.0.0.1:{port}", "GATEWAY_SERVER": "hypercorn",
           "SERVICES": "sqs", "EAGER_SERVICE_LOADING": "1", "TMPDIR": str(root)}
    log = open(root / "localstack.log", "w")
    proc = subprocess.Popen([venv / "bin" / "python", "-m", "localstack.runtime.main"], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def healthy():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_localstack/health", timeout=2) as r:
                return json.load(r).get("services", {}).get("sqs") in ("available", "running")
        except OSError:
            return False

    wait_until("LocalStack", healthy)

    def stop():
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    return port, stop


def run_timed(cmd, env):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode:
        sys.exit(f"bench: {cmd[1]} failed:\n{out.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out.stdout, wall, cpu


def summary_value(text, label):
    m = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)", text, re.M)
    return float(m.group(1)) if m else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--receivers", type=int, default=4)
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--locked", "--quiet"], cwd=REPO, check=True)
    binary = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "sqs2pg"
    WORK.mkdir(exist_ok=True)
    venv = ensure_localstack()
    root = WORK / f"run-{os.getpid()}"
    root.mkdir()
    data = root / "synthetic.jsonl"
    with open(data, "w") as f:
        subprocess.run([sys.executable, REPO / "scripts" / "gen_synthetic.py", str(args.messages)],
                       stdout=f, check=True)
    pg_port, stop_pg = start_postgres(root)
    ls_port, stop_ls = start_localstack(venv, root)
    key = subprocess.run([binary, "keygen"], capture_output=True, text=True, check=True).stdout.strip()
    rows = []
    try:
        for i in range(args.runs):
            db = f"bench_{i}"
            subprocess.run(["psql", "-q", f"postgres://postgres@127.0.0.1:{pg_port}/postgres",
                            "-c", f"CREATE DATABASE {db}"], check=True, capture_output=True)
            env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                   "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                   "DATABASE_URL": f"postgres://postgres@127.0.0.1:{pg_port}/{db}?sslmode=disable",
                   "SQS2PG_QUEUE_URL": f"http://127.0.0.1:{ls_port}/000000000000/bench-{os.getpid()}-{i}",
                   "SQS2PG_MASK_KEY": key, "RUST_LOG": "warn"}
            subprocess.run([binary, "setup"], env=env, check=True, capture_output=True)
            _, send_wall, _ = run_timed([binary, "send", "--create-queue", "--file", str(data)], env)
            out, drain_wall, drain_cpu = run_timed(
                [binary, "drain", "--wait-time-secs", "1", "--receivers", str(args.receivers)], env)
            loaded = summary_value(out, "loaded")
            rejected = summary_value(out, "rejected")
            received = summary_value(out, "received")
            rows.append({
                "run": i + 1, "send_rate": args.messages / send_wall, "drain_wall": drain_wall,
                "drain_rate": received / drain_wall, "cpu": drain_cpu,
                "cpu_per_100k": drain_cpu * 100_000 / received, "loaded": loaded, "rejected": rejected,
            })
            print(f"run {i + 1}: send {rows[-1]['send_rate']:.0f} msg/s, drain {rows[-1]['drain_rate']:.0f} msg/s, "
                  f"cpu {drain_cpu:.2f} s, loaded {loaded:.0f}, rejected {rejected:.0f}", file=sys.stderr)
    finally:
        stop_ls()
        stop_pg()
        shutil.rmtree(root, ignore_errors=True)

    print(f"| run | send msg/s | drain msg/s | drain wall s | sqs2pg CPU s | CPU s per 100k | loaded | rejected |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['send_rate']:.0f} | {r['drain_rate']:.0f} | {r['drain_wall']:.1f} | "
              f"{r['cpu']:.2f} | {r['cpu_per_100k']:.2f} | {r['loaded']:.0f} | {r['rejected']:.0f} |")
    med = lambda k: statistics.median(r[k] for r in rows)
    print(f"| **median** | {med('send_rate'):.0f} | {med('drain_rate'):.0f} | {med('drain_wall'):.1f} | "
          f"{med('cpu'):.2f} | {med('cpu_per_100k'):.2f} | | |")
    print(f"\ndrain / send throughput (median of per-run ratios): "
          f"{statistics.median(r['drain_rate'] / r['send_rate'] for r in rows):.2f}")


if __name__ == "__main__":
    main()
