#!/usr/bin/env python3
"""Benchmarks of sqs2pg against the limits and the obvious alternative, each in one run.

    scripts/bench.py sqs     [--messages 50000] [--runs 3]   # 1 and 2: SQS side, CPU per message
    scripts/bench.py loader  [--messages 1000000] [--runs 3] [--wide | --keyed] # 3: loader alone against psql \\copy; --keyed: write modes
    scripts/bench.py latency [--messages 3000] [--runs 3]    # 5: 20 ms each way, 1..64 receivers, ceiling
    scripts/bench.py memory  [--messages 50000] [--lock-secs 20] [--runs 3]  # 6: RSS, PostgreSQL stalled
    scripts/bench.py drain   [--sizes 100,20000,50000] [--runs 3] [--before BINARY]  # 7: default drain against the Python consumer, tail
    scripts/bench.py scale   [--messages 20000] [--runs 3] [--rate N] [--before BINARY]  # 8: replicas, requests per message
    scripts/bench.py peer    [--messages 20000] [--runs 4] [--faucet BINARY] [--before BINARY] [--ours-env K=V]  # 9: against faucet-stream and Python

(4, the transform alone, is `cargo bench --bench transform`.)

Every subcommand starts its own PostgreSQL cluster (default settings, fsync on) and, where it
needs one, LocalStack 4.0.3 (installed into .bench/ls4 on first use) on free loopback ports; the
Python baseline gets its own virtualenv (.bench/py: boto3, psycopg2). Every figure is printed
per run with the medians, as Markdown, for BENCHMARKS.md. CPU of a process comes from wait4(2)
on that process alone; its peak RSS from VmHWM in /proc, read every 20 ms while it runs.
"""
import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / ".bench"
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release"
LS_PACKAGES = [
    "localstack-core[base-runtime]==4.0.3", "cbor2<6", "psutil<7", "moto-ext==5.0.22.post1",
    "pyopenssl==24.2.1", "cryptography<44", "service_identity<24.3",
]
PY_PACKAGES = ["boto3==1.35.99", "psycopg2-binary==2.9.10"]
RECEIVER_COUNTS = [1, 2, 4, 8, 16, 32, 64]
CEILING_CONCURRENCY = [4, 8, 16, 32]


def log(text):
    print(f"bench: {text}", file=sys.stderr, flush=True)


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


def venv(name, packages, probe):
    path = WORK / name
    python = path / "bin" / "python"
    if not python.exists() or subprocess.run([python, "-c", probe], capture_output=True).returncode:
        log(f"installing {' '.join(packages[:2])} into .bench/{name}")
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
        subprocess.run([path / "bin" / "pip", "install", "-q", *packages], check=True)
    return python


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


def start_localstack(python: Path, root: Path, host="127.0.0.1"):
    port = free_port()
    env = {**os.environ, "GATEWAY_LISTEN": f"{host}:{port}", "GATEWAY_SERVER": "hypercorn",
           "SERVICES": "sqs", "EAGER_SERVICE_LOADING": "1", "TMPDIR": str(root)}
    cmd = [python, "-m", "localstack.runtime.main"]
    log_file = open(root / "localstack.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                            start_new_session=True)

    def healthy():
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/_localstack/health", timeout=2) as r:
                return json.load(r).get("services", {}).get("sqs") in ("available", "running")
        except OSError:
            return False

    wait_until("LocalStack", healthy)

    def stop():
        os.killpg(proc.pid, 15)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
    return f"http://{host}:{port}", stop


class Measured:
    """A finished process: its output, wall time, user+sys CPU and peak RSS (wait4)."""

    def __init__(self, stdout, wall, cpu, max_rss_mib, rss_samples):
        self.stdout, self.wall, self.cpu = stdout, wall, cpu
        self.max_rss_mib, self.rss_samples = max_rss_mib, rss_samples


def run_measured(cmd, env, sample_every=None) -> Measured:
    """Runs `cmd`; with `sample_every` (seconds) also samples its RSS as (t, MiB) pairs."""
    out = tempfile.TemporaryFile(mode="w+")
    err = tempfile.TemporaryFile(mode="w+")
    t0 = time.monotonic()
    proc = subprocess.Popen([str(c) for c in cmd], env=env, stdout=out, stderr=err)
    samples = []
    peak = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        # VmHWM is the process's own peak RSS so far (wait4's ru_maxrss can report another
        # process's peak on some kernels); the last reading before exit is kept.
        try:
            status_text = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, int(re.search(r"VmHWM:\s+(\d+)", status_text).group(1)) / 1024)
            if sample_every:
                rss = int(re.search(r"VmRSS:\s+(\d+)", status_text).group(1)) / 1024
                samples.append((time.monotonic() - t0, rss))
        except (OSError, AttributeError):
            pass
        time.sleep(sample_every or 0.02)
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    stdout = out.read()
    if proc.returncode:
        sys.exit(f"bench: {Path(str(cmd[0])).name} {cmd[1] if len(cmd) > 1 else ''} failed "
                 f"({proc.returncode}):\n{err.read()[-3000:]}")
    return Measured(stdout, wall, usage.ru_utime + usage.ru_stime, peak, samples)


def summary_value(text, label):
    m = re.search(rf"^\s+{re.escape(label)}\s+([\d.]+)", text, re.M)
    return float(m.group(1)) if m else float("nan")


def psql(url, sql):
    subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                   capture_output=True)


def psql_value(url, sql):
    return subprocess.run(["psql", "-qAt", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                          capture_output=True, text=True).stdout.strip()


def median(rows, key):
    return statistics.median(r[key] for r in rows)


def spread(rows, key):
    values = [r[key] for r in rows]
    return f"{min(values):.0f}–{max(values):.0f}"


class Bench:
    """One PostgreSQL cluster (and optionally LocalStack) for the whole run."""

    def __init__(self, need_sqs=True):
        subprocess.run(["cargo", "build", "--release", "--locked", "--quiet", "--bin", "sqs2pg",
                        "--example", "sqs_ceiling", "--example", "loader_bench"], cwd=REPO, check=True)
        self.binary = TARGET / "sqs2pg"
        WORK.mkdir(exist_ok=True)
        self.root = WORK / f"run-{os.getpid()}"
        self.root.mkdir()
        os.chmod(self.root, 0o755)
        self.stops = []
        self.pg_port, stop_pg = start_postgres(self.root)
        self.stops.append(stop_pg)
        self.endpoint = None
        if need_sqs:
            ls = venv("ls4", LS_PACKAGES, "import localstack")
            self.endpoint, stop_ls = start_localstack(ls, self.root)
            self.stops.append(stop_ls)
        self.key = subprocess.run([self.binary, "keygen"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        self.serial = 0

    def close(self):
        for stop in reversed(self.stops):
            stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def data(self, messages):
        path = self.root / f"synthetic-{messages}.jsonl"
        if not path.exists():
            with open(path, "w") as f:
                subprocess.run([sys.executable, REPO / "scripts" / "gen_synthetic.py", str(messages)],
                               stdout=f, check=True)
        return path

    def fresh(self, binary=None):
        """A new database, set up by `binary` (ours by default: a baseline build refuses a schema
        newer than its own), and a new queue name; the environment for sqs2pg."""
        self.serial += 1
        db = f"bench_{self.serial}"
        psql(f"postgres://postgres@127.0.0.1:{self.pg_port}/postgres", f"CREATE DATABASE {db}")
        url = f"postgres://postgres@127.0.0.1:{self.pg_port}/{db}?sslmode=disable"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
               "DATABASE_URL": url, "SQS2PG_MASK_KEY": self.key, "RUST_LOG": "warn"}
        if self.endpoint:
            env["SQS2PG_QUEUE_URL"] = f"{self.endpoint}/000000000000/bench-{os.getpid()}-{self.serial}"
        subprocess.run([binary or self.binary, "setup"], env=env, check=True, capture_output=True)
        return env

    def clean_data(self, messages):
        """`messages` bodies of the synthetic data that are JSON objects with a `user_id` (what a
        peer without a quarantine can take: one body that is not fails its whole batch there).
        Bodies with bad values stay: sqs2pg and the Python consumer reject them, faucet-stream
        stores them as they are."""
        path = self.root / f"clean-{messages}.jsonl"
        if not path.exists():
            kept = []
            for line in self.data(messages * 102 // 100 + 100).read_text().splitlines():
                try:
                    body = json.loads(line)
                    if isinstance(body, dict) and "user_id" in body:
                        kept.append(line)
                except ValueError:
                    pass
            path.write_text("\n".join(kept[:messages]) + "\n")
        return path

    def fill(self, env, messages, queue_url=None, path=None):
        if queue_url:
            env = {**env, "SQS2PG_QUEUE_URL": queue_url}
        m = run_measured([self.binary, "send", "--create-queue", "--file", path or self.data(messages)], env)
        return messages / m.wall


def bench_sqs(args):
    """1 and 2: sqs2pg against the server's own ceiling and the Python script, same data."""
    b = Bench()
    py = venv("py", PY_PACKAGES, "import boto3, psycopg2")
    ceiling = TARGET / "examples" / "sqs_ceiling"
    rows = []
    try:
        # How concurrent the ceiling program must be: the best of a few, on a smaller queue.
        calibration = {}
        for c in CEILING_CONCURRENCY:
            env = b.fresh()
            n = min(args.messages, 10_000)
            b.fill(env, n)
            m = run_measured([ceiling, "--queue-url", env["SQS2PG_QUEUE_URL"], "--concurrency", c], env)
            calibration[c] = n / m.wall
            log(f"ceiling calibration: concurrency {c}: {calibration[c]:.0f} msg/s")
        best = max(calibration, key=calibration.get)
        for i in range(args.runs):
            r = {"run": i + 1}
            env = b.fresh()
            r["send"] = b.fill(env, args.messages)
            m = run_measured([b.binary, "drain", "--wait-time-secs", "1",
                              "--receivers", str(args.receivers or best)], env)
            received = summary_value(m.stdout, "received")
            r.update(ours=received / m.wall, ours_cpu=m.cpu * 100_000 / received, ours_rss=m.max_rss_mib,
                     loaded=summary_value(m.stdout, "loaded"), rejected=summary_value(m.stdout, "rejected"))
            env = b.fresh()
            b.fill(env, args.messages)
            m = run_measured([ceiling, "--queue-url", env["SQS2PG_QUEUE_URL"], "--concurrency", best], env)
            ceiling_received = int(m.stdout.split()[1])
            r.update(ceiling=ceiling_received / m.wall, ceiling_rss=m.max_rss_mib,
                     ceiling_cpu=m.cpu * 100_000 / ceiling_received)
            env = b.fresh()
            b.fill(env, args.messages)
            m = run_measured([py, REPO / "benches" / "baseline.py", env["SQS2PG_QUEUE_URL"],
                              env["DATABASE_URL"].split("?")[0], "public.user_logins"], env)
            py_received = int(m.stdout.split()[1])
            r.update(python=py_received / m.wall, python_cpu=m.cpu * 100_000 / py_received,
                     python_rss=m.max_rss_mib)
            # The same script asking for keep-alive, as sqs2pg does (what it costs on real SQS).
            env = b.fresh()
            b.fill(env, args.messages)
            m = run_measured([py, REPO / "benches" / "baseline.py", env["SQS2PG_QUEUE_URL"],
                              env["DATABASE_URL"].split("?")[0], "public.user_logins"],
                             {**env, "BASELINE_KEEP_ALIVE": "1"})
            py_received = int(m.stdout.split()[1])
            r.update(python_ka=py_received / m.wall, python_ka_cpu=m.cpu * 100_000 / py_received)
            r["ratio"] = r["ours"] / r["ceiling"]
            r["cpu_ratio"] = r["python_cpu"] / r["ours_cpu"]
            r["cpu_ratio_ka"] = r["python_ka_cpu"] / r["ours_cpu"]
            rows.append(r)
            log(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k != "run"))
    finally:
        b.close()
    print(f"Ceiling calibration ({min(args.messages, 10_000)} messages each): " +
          ", ".join(f"concurrency {c}: {v:.0f} msg/s" for c, v in calibration.items()) +
          f"; the runs use {best}.\n")
    print("| run | send msg/s | sqs2pg msg/s | ceiling msg/s | sqs2pg / ceiling | Python msg/s "
          "| sqs2pg CPU s/100k | Python CPU s/100k | Python / sqs2pg CPU "
          "| Python keep-alive msg/s | Python keep-alive CPU s/100k | that / sqs2pg CPU "
          "| sqs2pg peak RSS MiB | loaded | rejected |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['send']:.0f} | {r['ours']:.0f} | {r['ceiling']:.0f} | {r['ratio']:.2f} | "
              f"{r['python']:.0f} | {r['ours_cpu']:.2f} | {r['python_cpu']:.1f} | {r['cpu_ratio']:.1f} | "
              f"{r['python_ka']:.0f} | {r['python_ka_cpu']:.1f} | {r['cpu_ratio_ka']:.1f} | "
              f"{r['ours_rss']:.1f} | {r['loaded']:.0f} | {r['rejected']:.0f} |")
    print(f"| **median** | {median(rows, 'send'):.0f} | {median(rows, 'ours'):.0f} | {median(rows, 'ceiling'):.0f} "
          f"| {median(rows, 'ratio'):.2f} | {median(rows, 'python'):.0f} | {median(rows, 'ours_cpu'):.2f} "
          f"| {median(rows, 'python_cpu'):.1f} | {median(rows, 'cpu_ratio'):.1f} "
          f"| {median(rows, 'python_ka'):.0f} | {median(rows, 'python_ka_cpu'):.1f} | {median(rows, 'cpu_ratio_ka'):.1f} "
          f"| {median(rows, 'ours_rss'):.1f} | | |")
    print(f"\nSpreads (min–max): sqs2pg {spread(rows, 'ours')} msg/s, ceiling {spread(rows, 'ceiling')} msg/s, "
          f"Python {spread(rows, 'python')} msg/s. CPU of the ceiling program (SQS calls only, through sqs2pg's own client): "
          f"{median(rows, 'ceiling_cpu'):.2f} s per 100k. Peak RSS of the ceiling program: "
          f"{median(rows, 'ceiling_rss'):.1f} MiB; of the Python script: {median(rows, 'python_rss'):.1f} MiB.")


def bench_loader(args):
    """3: the real loader fed in-process, against psql's \\copy of the same rows from a file;
    with --before, a baseline loader_bench binary too, on a fresh database in the same run."""
    b = Bench(need_sqs=False)
    loader = TARGET / "examples" / "loader_bench"
    table = "public.wide_events" if args.wide else "public.user_logins"
    rows = []
    rows_file, ids_file = b.root / "rows.copy", b.root / "ids.copy"

    def measure(binary, keyed=None):
        # A baseline's schema is set up by the sqs2pg binary built beside it (a baseline
        # refuses a schema newer than its own).
        setup_by = Path(binary).parent.parent / "sqs2pg" if binary != loader else None
        env = b.fresh(str(setup_by) if setup_by and setup_by.exists() else None)
        if args.wide:
            env["SQS2PG_BENCH_WIDE"] = "1"
        if keyed:
            env["SQS2PG_BENCH_KEYED"] = keyed
        m = run_measured([binary, str(args.messages)], env)
        words = m.stdout.split()
        return env, m, int(words[1]), float(words[5])

    if args.keyed:
        # The write modes on the same rows, alternating within each run: rows/s and CPU.
        modes = ["append", "upsert", "latest"]
        try:
            for i in range(args.runs):
                r = {"run": i + 1}
                for mode in modes:
                    _, m, loaded, seconds = measure(loader, mode)
                    r[mode] = loaded / seconds
                    r[mode + "_cpu"] = m.cpu
                r["upsert_ratio"] = r["upsert"] / r["append"]
                r["latest_ratio"] = r["latest"] / r["append"]
                rows.append(r)
                log(f"run {i + 1}: " + ", ".join(f"{k} {r[k]:.0f} rows/s" for k in modes))
        finally:
            b.close()
        print("| run | append rows/s | upsert rows/s | latest rows/s | upsert / append | latest / append "
              "| CPU s append / upsert / latest |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['run']} | {r['append']:.0f} | {r['upsert']:.0f} | {r['latest']:.0f} | "
                  f"{r['upsert_ratio']:.2f} | {r['latest_ratio']:.2f} | "
                  f"{r['append_cpu']:.1f} / {r['upsert_cpu']:.1f} / {r['latest_cpu']:.1f} |")
        print(f"| **median** | {median(rows, 'append'):.0f} | {median(rows, 'upsert'):.0f} | "
              f"{median(rows, 'latest'):.0f} | {median(rows, 'upsert_ratio'):.2f} | "
              f"{median(rows, 'latest_ratio'):.2f} | {median(rows, 'append_cpu'):.1f} / "
              f"{median(rows, 'upsert_cpu'):.1f} / {median(rows, 'latest_cpu'):.1f} |")
        return

    try:
        for i in range(args.runs):
            r = {"run": i + 1}
            if args.before:
                _, m, loaded, seconds = measure(args.before)
                r.update(before=loaded / seconds, before_cpu=m.cpu, before_rss=m.max_rss_mib)
            env, m, loaded, seconds = measure(loader)
            url = env["DATABASE_URL"]
            r.update(rows=loaded, ours=loaded / seconds, ours_rss=m.max_rss_mib, ours_cpu=m.cpu)
            if args.before:
                r["vs_before"] = r["ours"] / r["before"]
            plain = url.split("?")[0]
            if not rows_file.exists():
                psql(plain, f"\\copy {table} TO '{rows_file}'")
                psql(plain, f"\\copy (SELECT sent_ms, message_id, outcome FROM sqs2pg.ledger) TO '{ids_file}'")
            psql(plain, f"CREATE TABLE copy_target (LIKE {table})")
            m = run_measured(["psql", "-q", "-v", "ON_ERROR_STOP=1", plain, "-c",
                              f"\\copy copy_target FROM '{rows_file}'"], env)
            r["psql"] = loaded / m.wall
            r["ratio"] = r["ours"] / r["psql"]
            # The same durable work as sqs2pg: the rows, and every message id into a ledger
            # with the same unique index (the ids of the rejections included).
            psql(plain, f"CREATE TABLE copy_target2 (LIKE {table}); "
                        "CREATE TABLE ledger_target (LIKE sqs2pg.ledger INCLUDING ALL)")
            script = b.root / "copy2.sql"
            script.write_text(f"\\copy copy_target2 FROM '{rows_file}'\n"
                              f"\\copy ledger_target (sent_ms, message_id, outcome) FROM '{ids_file}'\n")
            m = run_measured(["psql", "-q", "-v", "ON_ERROR_STOP=1", plain, "-f", script], env)
            r["psql_ledger"] = loaded / m.wall
            r["ratio_ledger"] = r["ours"] / r["psql_ledger"]
            rows.append(r)
            log(f"run {i + 1}: sqs2pg loader {r['ours']:.0f} rows/s, psql \\copy {r['psql']:.0f} rows/s, "
                f"with ledger ids {r['psql_ledger']:.0f} rows/s"
                + (f", before {r['before']:.0f} rows/s" if args.before else ""))
    finally:
        b.close()
    print("| run | rows | sqs2pg loader rows/s | psql \\copy rows/s | sqs2pg / psql | psql \\copy rows + ledger ids, rows/s "
          "| sqs2pg / that | loader CPU s | loader peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['rows']} | {r['ours']:.0f} | {r['psql']:.0f} | {r['ratio']:.2f} | "
              f"{r['psql_ledger']:.0f} | {r['ratio_ledger']:.2f} | {r['ours_cpu']:.1f} | {r['ours_rss']:.1f} |")
    print(f"| **median** | | {median(rows, 'ours'):.0f} | {median(rows, 'psql'):.0f} | {median(rows, 'ratio'):.2f} "
          f"| {median(rows, 'psql_ledger'):.0f} | {median(rows, 'ratio_ledger'):.2f} "
          f"| {median(rows, 'ours_cpu'):.1f} | {median(rows, 'ours_rss'):.1f} |")
    if args.before:
        print()
        print("| run | before rows/s | after rows/s | after / before | CPU s before / after | peak RSS MiB before / after |")
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['run']} | {r['before']:.0f} | {r['ours']:.0f} | {r['vs_before']:.2f} | "
                  f"{r['before_cpu']:.1f} / {r['ours_cpu']:.1f} | {r['before_rss']:.1f} / {r['ours_rss']:.1f} |")
        print(f"| **median** | {median(rows, 'before'):.0f} | {median(rows, 'ours'):.0f} | "
              f"{median(rows, 'vs_before'):.2f} | {median(rows, 'before_cpu'):.1f} / {median(rows, 'ours_cpu'):.1f} "
              f"| {median(rows, 'before_rss'):.1f} / {median(rows, 'ours_rss'):.1f} |")


def serve_proxy(loop, port, upstream, to_server, to_client):
    """Serves a TCP proxy on loopback `port` in front of `upstream` on a thread of its own:
    each client connection gets one to the upstream, `to_server(client_reader, upstream_writer)`
    and `to_client(upstream_reader, client_writer)` move the bytes. Returns once it listens."""
    import asyncio
    ready = threading.Event()

    async def handle(client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
        except OSError:
            client_writer.close()
            return
        # When either side is done, so is the connection: a client that hung up (say, on a
        # timed-out request) must not leave its upstream connection open, or the server
        # collects idle connections until it stops answering new ones.
        tasks = [asyncio.ensure_future(to_server(client_reader, up_writer)),
                 asyncio.ensure_future(to_client(up_reader, client_writer))]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except (ConnectionError, OSError):
            pass
        for t in tasks:
            t.cancel()
        for w in (client_writer, up_writer):
            w.close()

    async def serve():
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        ready.set()
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    ready.wait(10)
    return thread


class DelayProxy:
    """A TCP proxy on loopback that holds every chunk for `delay` seconds in each direction,
    keeping order: a round trip through it costs 2 x delay, as to a distant SQS.

    The issue asked for a network namespace with `tc netem`; this machine's kernel has no
    netem qdisc ("Specified qdisc kind is unknown"), so the delay is added in user space."""

    def __init__(self, upstream_port: int, delay: float):
        import asyncio
        self.port, self.delay, self.upstream = free_port(), delay, upstream_port
        self.loop = asyncio.new_event_loop()

        async def pump(reader, writer):
            queue = asyncio.Queue()

            async def read():
                while True:
                    data = await reader.read(65536)
                    await queue.put((self.loop.time() + self.delay, data))
                    if not data:
                        return

            async def write():
                while True:
                    due, data = await queue.get()
                    await asyncio.sleep(max(0.0, due - self.loop.time()))
                    if not data:
                        try:
                            writer.write_eof()
                        except (OSError, RuntimeError):
                            pass
                        return
                    writer.write(data)
                    await writer.drain()

            try:
                await asyncio.gather(read(), write())
            except (ConnectionError, OSError):
                pass

        self.thread = serve_proxy(self.loop, self.port, self.upstream, pump, pump)


def bench_latency(args):
    """5: the SQS server behind a 20 ms each-way delay; throughput against the receiver count."""
    b = Bench()
    upstream = int(b.endpoint.rsplit(":", 1)[1])
    proxy = DelayProxy(upstream, args.delay_ms / 1000)
    results = {n: [] for n in RECEIVER_COUNTS}
    ceilings = []
    tails = []
    ceiling = TARGET / "examples" / "sqs_ceiling"
    empty = b.root / "empty.jsonl"
    empty.write_text("")
    try:
        for i in range(args.runs):
            # The fixed cost of a drain through the delay: start-up, an empty long poll and the
            # 1 s confirming one; measured on an empty queue and taken off each drain's wall time
            # in the "net" columns.
            env = b.fresh()
            direct = env["SQS2PG_QUEUE_URL"]
            run_measured([b.binary, "send", "--create-queue", "--file", empty], env)
            env["SQS2PG_QUEUE_URL"] = direct.replace(f":{upstream}/", f":{proxy.port}/")
            tails.append(run_measured([b.binary, "drain", "--wait-time-secs", "1"], env).wall)
            for n in RECEIVER_COUNTS:
                env = b.fresh()
                direct = env["SQS2PG_QUEUE_URL"]
                # Enough messages that the drain's fixed end (an empty poll, then a 1 s
                # confirming one) stays small next to the work: 500 per receiver at least.
                messages = max(args.messages, 500 * n)
                b.fill(env, messages, queue_url=direct)
                env["SQS2PG_QUEUE_URL"] = direct.replace(f":{upstream}/", f":{proxy.port}/")
                m = run_measured([b.binary, "drain", "--wait-time-secs", "1", "--receivers", str(n)], env)
                received = summary_value(m.stdout, "received")
                results[n].append((received / m.wall, received / (m.wall - tails[-1]), m.max_rss_mib))
                log(f"run {i + 1}: {n} receivers: {received / m.wall:.0f} msg/s, "
                    f"net of the {tails[-1]:.2f} s drain tail {received / (m.wall - tails[-1]):.0f} msg/s")
            # What the server itself gives through the same delay: the bare receive + delete
            # program with as many tasks as the most receivers, on as deep a queue.
            env = b.fresh()
            direct = env["SQS2PG_QUEUE_URL"]
            n = RECEIVER_COUNTS[-1]
            b.fill(env, max(args.messages, 500 * n), queue_url=direct)
            through = direct.replace(f":{upstream}/", f":{proxy.port}/")
            m = run_measured([ceiling, "--queue-url", through, "--concurrency", str(n)], env)
            received = int(m.stdout.split()[1])
            ceilings.append(received / (m.wall - tails[-1]))
            log(f"run {i + 1}: ceiling program, {n} tasks, through the delay: "
                f"net {ceilings[-1]:.0f} msg/s")
    finally:
        b.close()
    print(f"Added delay: {args.delay_ms} ms each way ({2 * args.delay_ms} ms per round trip); "
          f"max({args.messages}, 500 x receivers) messages per drain. The fixed cost of a drain "
          f"(start, empty poll, confirming poll) measured on an empty queue: "
          f"{', '.join(f'{t:.2f}' for t in tails)} s; \"net\" takes it off.\n")
    print("| receivers | msg/s (median) | runs | net msg/s (median) | net per receiver | net speed-up over 1 | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    base = statistics.median(x[1] for x in results[1])
    for n, xs in results.items():
        rate = statistics.median(x[0] for x in xs)
        net = statistics.median(x[1] for x in xs)
        print(f"| {n} | {rate:.0f} | {', '.join(f'{x[0]:.0f}' for x in xs)} | {net:.0f} | {net / n:.0f} | "
              f"{net / base:.1f} | {statistics.median(x[2] for x in xs):.1f} |")
    print(f"\nThe bare receive + delete program ({RECEIVER_COUNTS[-1]} tasks) through the same delay, "
          f"net of the same tail: {', '.join(f'{c:.0f}' for c in ceilings)} msg/s "
          f"(median {statistics.median(ceilings):.0f}).")


def bench_memory(args):
    """6: RSS while draining a deep queue with the table locked for a while."""
    b = Bench()
    runs = []
    try:
        for _ in range(args.runs):
            env = b.fresh()
            b.fill(env, args.messages)
            url = env["DATABASE_URL"].split("?")[0]
            locker = subprocess.Popen(["psql", "-q", url], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, text=True)
            locker.stdin.write(f"BEGIN; LOCK TABLE public.user_logins IN ACCESS EXCLUSIVE MODE; "
                               f"SELECT pg_sleep({args.lock_secs}); COMMIT;\n")
            locker.stdin.close()
            runs.append(run_measured([b.binary, "drain", "--wait-time-secs", "1"], env,
                                     sample_every=0.1))
            locker.wait()
    finally:
        b.close()
    print(f"{args.messages} messages per run; the table locked for the first {args.lock_secs} s.\n")
    print("| run | drained in s | peak RSS (VmHWM) MiB | RSS while locked (6 s to "
          f"{args.lock_secs} s), min–max MiB |")
    print("|---|---|---|---|")
    for i, m in enumerate(runs):
        locked = [rss for t, rss in m.rss_samples if 6 <= t <= args.lock_secs]
        print(f"| {i + 1} | {m.wall:.1f} | {m.max_rss_mib:.1f} | {min(locked):.1f}–{max(locked):.1f} |")
    print(f"| **median** | {statistics.median(m.wall for m in runs):.1f} | "
          f"{statistics.median(m.max_rss_mib for m in runs):.1f} | |")
    m = runs[0]
    print("\nRSS over time in run 1:\n")
    print("| seconds since start | RSS MiB |")
    print("|---|---|")
    step = max(1, len(m.rss_samples) // 15)
    for t, rss in m.rss_samples[::step]:
        print(f"| {t:.1f} | {rss:.1f} |")


class RateLimitProxy:
    """An HTTP/1.1 proxy on loopback that lets at most `rate` requests a second through to the
    server behind it, over all connections (a throttled or busy SQS). Requests are framed by
    their Content-Length, which every SQS client sends."""

    def __init__(self, upstream_port: int, rate: float):
        import asyncio
        self.port, self.upstream, self.gap = free_port(), upstream_port, 1.0 / rate
        self.loop = asyncio.new_event_loop()
        self.next = 0.0

        async def requests_to(reader, writer):
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    data = await reader.read(65536)
                    if not data:
                        return
                    buf += data
                head_end = buf.index(b"\r\n\r\n") + 4
                length = 0
                for line in buf[:head_end].decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                while len(buf) < head_end + length:
                    data = await reader.read(65536)
                    if not data:
                        return
                    buf += data
                now = self.loop.time()
                slot = max(now, self.next)
                self.next = slot + self.gap
                await asyncio.sleep(slot - now)
                writer.write(buf[:head_end + length])
                await writer.drain()
                buf = buf[head_end + length:]

        async def answers_to(reader, writer):
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                writer.write(data)
                await writer.drain()

        self.thread = serve_proxy(self.loop, self.port, self.upstream, requests_to, answers_to)


def bench_drain(args):
    """7: `sqs2pg drain` with its defaults against the plain Python consumer, start to exit,
    and how long the drain runs on after its last delete."""
    b = Bench()
    py = venv("py", PY_PACKAGES, "import boto3, psycopg2")
    rows = []
    try:
        for size in args.sizes:
            for i in range(args.runs):
                env = b.fresh()
                b.fill(env, size)
                m = run_measured([b.binary, "drain"], env)
                r = {"size": size, "run": i + 1, "ours": m.wall, "ours_cpu": m.cpu,
                     "tail": summary_value(m.stdout, "after last delete"),
                     "loaded": summary_value(m.stdout, "loaded"),
                     "per_message": summary_value(m.stdout, "requests per message")}
                if args.before:
                    env = b.fresh(args.before)
                    b.fill(env, size)
                    m = run_measured([args.before, "drain"], env)
                    r.update(before=m.wall, before_tail=summary_value(m.stdout, "after last delete"))
                env = b.fresh()
                b.fill(env, size)
                m = run_measured([py, REPO / "benches" / "baseline.py", env["SQS2PG_QUEUE_URL"],
                                  env["DATABASE_URL"].split("?")[0], "public.user_logins"], env)
                r.update(python=m.wall, python_cpu=m.cpu, ratio=r["ours"] / m.wall)
                rows.append(r)
                log(f"{size} messages, run {i + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in r.items()
                                                                 if k not in ("size", "run")))
    finally:
        b.close()
    print("| messages | run | sqs2pg start to exit s | after last delete s | Python start to exit s "
          "| sqs2pg / Python wall | sqs2pg CPU s | Python CPU s | requests per message | loaded |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        mine = [r for r in rows if r["size"] == size]
        for r in mine:
            print(f"| {size} | {r['run']} | {r['ours']:.2f} | {r['tail']:.2f} | {r['python']:.2f} | "
                  f"{r['ratio']:.2f} | {r['ours_cpu']:.2f} | {r['python_cpu']:.2f} | {r['per_message']:.3f} | "
                  f"{r['loaded']:.0f} |")
        print(f"| {size} | **median** | {median(mine, 'ours'):.2f} | {median(mine, 'tail'):.2f} | "
              f"{median(mine, 'python'):.2f} | {median(mine, 'ratio'):.2f} | {median(mine, 'ours_cpu'):.2f} | "
              f"{median(mine, 'python_cpu'):.2f} | {median(mine, 'per_message'):.3f} | |")
    if args.before:
        print()
        print("| messages | run | before: start to exit s | before: after last delete s "
              "| now: start to exit s | now: after last delete s |")
        print("|---|---|---|---|---|---|")
        for size in args.sizes:
            mine = [r for r in rows if r["size"] == size]
            for r in mine:
                print(f"| {size} | {r['run']} | {r['before']:.2f} | {r['before_tail']:.2f} | "
                      f"{r['ours']:.2f} | {r['tail']:.2f} |")
            print(f"| {size} | **median** | {median(mine, 'before'):.2f} | {median(mine, 'before_tail'):.2f} | "
                  f"{median(mine, 'ours'):.2f} | {median(mine, 'tail'):.2f} |")


FAUCET_CONFIG = """version: 1
name: sqs_logins_to_postgres
pipeline:
  source:
    type: sqs
    config:
      queue_url: {queue_url}
      region: us-east-1
      endpoint_url: {endpoint}
      credentials: {{ type: access_key, config: {{ access_key_id: test, secret_access_key: test }} }}
      idle_timeout_secs: 2
      wait_time_seconds: 1
      batch_size: 1000
  transforms:
    - type: rename_field
      config: {{ fields: {{ ip: masked_ip, device_id: masked_device_id }} }}
  masking:
    key: {key}
    rules:
      - name: ip_device
        match: {{ fields: [masked_ip, masked_device_id] }}
        action: {{ type: hash }}
  sink:
    type: postgres
    config:
      connection_url: {database_url}
      schema: public
      table_name: faucet_logins
      column_mapping: auto_map
      create_table: false
      batch_size: 1000
      write_method: {write_method}
"""


def bench_peer(args):
    """9: the same queue drained by sqs2pg (defaults), by faucet-stream's CLI (its SQS source,
    masking by HMAC, its PostgreSQL sink) and by the plain Python consumer, alternating in each
    run: wall, CPU per message, peak RSS."""
    b = Bench()
    py = venv("py", PY_PACKAGES, "import boto3, psycopg2")
    variants = [("sqs2pg", None, None)] + [(f"sqs2pg {v}", v, None) for v in args.ours_env]
    if args.before:
        variants.append(("sqs2pg before", None, args.before))
    rows = []
    try:
        for i in range(args.runs):
            r = {"run": i + 1}
            turns = [("ours", v) for v in variants] + [("faucet", None)] * bool(args.faucet) + [("python", None)]
            if i % 2:
                turns.reverse()
            for who, variant in turns:
                # An older build sets up its own database (it refuses a newer schema).
                env = b.fresh(variant[2] if who == "ours" else None)
                b.fill(env, args.messages, path=b.clean_data(args.messages))
                if who == "ours":
                    name, extra, binary = variant
                    run_env = dict(env)
                    for pair in (extra or "").split(","):
                        if pair:
                            k, v = pair.split("=", 1)
                            run_env[k] = v
                    m = run_measured([binary or b.binary, "drain"], run_env)
                    r[name] = (m.wall, m.cpu, m.max_rss_mib, summary_value(m.stdout, "loaded"))
                elif who == "faucet":
                    url = env["DATABASE_URL"].split("?")[0]
                    psql(url, "CREATE TABLE public.faucet_logins (user_id text, device_type text, "
                              "masked_ip text, masked_device_id text, locale text, app_version text, "
                              "create_date date)")
                    config = b.root / f"faucet-{i}.yaml"
                    config.write_text(FAUCET_CONFIG.format(
                        queue_url=env["SQS2PG_QUEUE_URL"], endpoint=b.endpoint, key="bench-" + b.key,
                        database_url=url, write_method=args.faucet_write))
                    m = run_measured([args.faucet, "--log-level", "warn", "run", config, "--quiet",
                                      "--no-env-file"], env)
                    rows_in = int(psql_value(url, "SELECT count(*) FROM public.faucet_logins"))
                    r["faucet"] = (m.wall, m.cpu, m.max_rss_mib, rows_in)
                else:
                    m = run_measured([py, REPO / "benches" / "baseline.py", env["SQS2PG_QUEUE_URL"],
                                      env["DATABASE_URL"].split("?")[0], "public.user_logins"], env)
                    loaded = re.search(r"loaded (\d+)", m.stdout)
                    r["python"] = (m.wall, m.cpu, m.max_rss_mib, int(loaded.group(1)) if loaded else None)
            rows.append(r)
            log(f"run {i + 1}: " + "; ".join(f"{k} {v[0]:.2f} s, {v[1]:.2f} CPU s, {v[2]:.1f} MiB"
                                             for k, v in r.items() if k != "run"))
    finally:
        b.close()
    names = [k for k in rows[0] if k != "run"]
    n = args.messages
    print(f"{n} messages per drain, the synthetic data without its bodies that are not "
          "JSON objects of a login (faucet-stream's PostgreSQL sink fails a whole batch on one; "
          "bodies with bad values stay: sqs2pg and the Python consumer reject them, faucet-stream "
          "stores them); each run drains "
          "a fresh queue per program, the order alternating from run to run.\n")
    print("| run | " + " | ".join(f"{k} wall s / CPU µs per msg / peak RSS MiB" for k in names) + " |")
    print("|---|" + "---|" * len(names))
    for r in rows:
        print(f"| {r['run']} | " + " | ".join(
            f"{r[k][0]:.2f} / {r[k][1] * 1e6 / n:.0f} / {r[k][2]:.1f}" for k in names) + " |")
    med = {k: [statistics.median(r[k][j] for r in rows) for j in range(3)] for k in names}
    print("| **median** | " + " | ".join(
        f"{med[k][0]:.2f} / {med[k][1] * 1e6 / n:.0f} / {med[k][2]:.1f}" for k in names) + " |")
    print()
    for k in names:
        if k == "sqs2pg":
            continue
        w, c, m = (med["sqs2pg"][j] / med[k][j] for j in range(3))
        print(f"- sqs2pg / {k} (medians): wall {w:.2f}, CPU {c:.2f}, peak RSS {m:.2f}")
    for k in names:
        loaded = [r[k][3] for r in rows if r[k][3] is not None and r[k][3] == r[k][3]]
        if loaded:
            print(f"- rows written by {k}: {', '.join(str(int(x)) for x in loaded)}")


def bench_scale(args):
    """8: one and three `drain` processes on one queue at visibility 30 s and 2 s: wall time and
    SQS requests per message, optionally behind a proxy capping the server's request rate, and
    optionally the same with another (earlier) binary."""
    b = Bench()
    upstream = int(b.endpoint.rsplit(":", 1)[1])
    proxy = RateLimitProxy(upstream, args.rate) if args.rate else None
    binaries = [("now", b.binary)] + ([("before", Path(args.before))] if args.before else [])
    rows = []
    try:
        for label, binary in binaries:
            for visibility in args.visibility:
                for processes in args.processes:
                    for i in range(args.runs):
                        env = b.fresh(binary)
                        b.fill(env, args.messages)
                        env["SQS2PG_VISIBILITY_TIMEOUT_SECS"] = str(visibility)
                        if proxy:
                            env["SQS2PG_QUEUE_URL"] = env["SQS2PG_QUEUE_URL"].replace(
                                f":{upstream}/", f":{proxy.port}/")
                        t0 = time.monotonic()
                        procs = [subprocess.Popen([binary, "drain"], env=env, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True)
                                 for _ in range(processes)]
                        try:
                            outs = [p.communicate(timeout=args.timeout) for p in procs]
                            wall = time.monotonic() - t0
                        except subprocess.TimeoutExpired:
                            for p in procs:
                                p.kill()
                            outs = [p.communicate() for p in procs]
                            wall = float("nan")
                        codes = [p.returncode for p in procs]
                        url = env["DATABASE_URL"].split("?")[0]
                        loaded = int(subprocess.run(["psql", "-tA", url, "-c", "SELECT count(*) FROM public.user_logins"],
                                                    capture_output=True, text=True, check=True).stdout)
                        rejected = int(subprocess.run(["psql", "-tA", url, "-c", "SELECT count(*) FROM sqs2pg.rejected_messages"],
                                                      capture_output=True, text=True, check=True).stdout)
                        total = lambda label_: sum(summary_value(o[0], label_) for o in outs)  # noqa: E731
                        per = {k: total(k) / max(loaded, 1) for k in ("receive", "delete", "change visibility")}
                        r = {"binary": label, "visibility": visibility, "processes": processes,
                             "run": i + 1, "wall": wall, "loaded": loaded, "rejected": rejected,
                             "exit": ",".join(map(str, codes)), **per,
                             "total": sum(per.values())}
                        rows.append(r)
                        log(f"{label}, visibility {visibility} s, {processes} process(es), run {i + 1}: {r}")
    finally:
        b.close()
    print(f"{args.messages} messages per run"
          + (f"; the server behind a proxy letting {args.rate} requests a second through" if args.rate else "")
          + ".\n")
    print("| binary | visibility s | processes | run | start to exit s | loaded | rejected | exit codes "
          "| receive / msg | delete / msg | change visibility / msg | requests / msg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['binary']} | {r['visibility']} | {r['processes']} | {r['run']} | {r['wall']:.1f} | "
              f"{r['loaded']} | {r['rejected']} | {r['exit']} | {r['receive']:.3f} | {r['delete']:.3f} | "
              f"{r['change visibility']:.3f} | {r['total']:.3f} |")
    for label, _ in binaries:
        for visibility in args.visibility:
            for processes in args.processes:
                mine = [r for r in rows if (r["binary"], r["visibility"], r["processes"]) == (label, visibility, processes)]
                print(f"| {label} | {visibility} | {processes} | **median** | {median(mine, 'wall'):.1f} | | | | "
                      f"{median(mine, 'receive'):.3f} | {median(mine, 'delete'):.3f} | "
                      f"{median(mine, 'change visibility'):.3f} | {median(mine, 'total'):.3f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("sqs")
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--receivers", type=int, default=None,
                   help="sqs2pg's --receivers (if unset, the ceiling's calibrated concurrency)")
    p = sub.add_parser("loader")
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--keyed", action="store_true",
                   help="the write modes append, upsert and latest on the same user events")
    p.add_argument("--wide", action="store_true",
                   help="wide events through benches/wide.toml (20 columns) instead of logins")
    p.add_argument("--before", default=None,
                   help="another loader_bench binary, run the same way in each run (a baseline)")
    p = sub.add_parser("latency")
    p.add_argument("--messages", type=int, default=3_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--delay-ms", type=int, default=20)
    p = sub.add_parser("memory")
    p.add_argument("--messages", type=int, default=50_000)
    p.add_argument("--lock-secs", type=int, default=20)
    p.add_argument("--runs", type=int, default=3)
    p = sub.add_parser("drain")
    p.add_argument("--sizes", type=lambda t: [int(x) for x in t.split(",")], default=[100, 20_000, 50_000])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--before", default=None, help="another sqs2pg binary to drain the same way")
    p = sub.add_parser("scale")
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--processes", type=lambda t: [int(x) for x in t.split(",")], default=[1, 3])
    p.add_argument("--visibility", type=lambda t: [int(x) for x in t.split(",")], default=[30, 2])
    p.add_argument("--rate", type=float, default=None, help="cap the server at this many requests/s")
    p.add_argument("--before", default=None, help="another sqs2pg binary to run the same way")
    p.add_argument("--timeout", type=float, default=900, help="kill a run's processes after this")
    p = sub.add_parser("peer")
    p.add_argument("--messages", type=int, default=20_000)
    p.add_argument("--runs", type=int, default=4)
    p.add_argument("--faucet", default=None, help="faucet-stream's CLI binary (`faucet`)")
    p.add_argument("--faucet-write", default="copy", help="its sink's write_method")
    p.add_argument("--before", default=None, help="another sqs2pg binary to drain the same way")
    p.add_argument("--ours-env", action="append", default=[],
                   help="also drain with these environment settings, K=V[,K=V] (repeatable)")
    args = ap.parse_args()
    {"peer": bench_peer, "sqs": bench_sqs, "loader": bench_loader, "latency": bench_latency, "memory": bench_memory,
     "drain": bench_drain, "scale": bench_scale}[args.what](args)


if __name__ == "__main__":
    main()
