#!/usr/bin/env python3
"""The baseline for `scripts/bench.py sqs`: the script a user would otherwise write.

    baseline.py QUEUE_URL DATABASE_URL TABLE

boto3 receives 10 messages at a time (1 s long poll). Each body is parsed with `json`, the
fields are checked, ip and device_id are masked with HMAC-SHA-256 under a key (hmac/hashlib),
app_version becomes an integer, create_date comes from SentTimestamp. The batch goes in with
psycopg2's `execute_values`, is committed, and only then deleted with DeleteMessageBatch. Bad
messages are counted and deleted. It stops at the first empty receive and prints
`received N loaded N rejected N`.

It is single-threaded and straightforward on purpose: the benchmark measures what sqs2pg saves
against it, not a tuned rewrite. The key comes from SQS2PG_MASK_KEY, as for sqs2pg.

With BASELINE_KEEP_ALIVE=1 every request also asks for `Connection: keep-alive`, as sqs2pg's
do: LocalStack closes each connection after its response unless asked, real SQS never does, so
this variant costs what the script would cost against real SQS.
"""
import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import sys

import boto3
import psycopg2
import psycopg2.extras

queue_url, database_url, table = sys.argv[1], sys.argv[2], sys.argv[3]
key = base64.b64decode(os.environ["SQS2PG_MASK_KEY"])
endpoint = "/".join(queue_url.split("/")[:3])
sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
if os.environ.get("BASELINE_KEEP_ALIVE") == "1":
    def keep_alive(request, **_):
        request.headers["Connection"] = "keep-alive"

    sqs.meta.events.register("before-send.sqs.*", keep_alive)
db = psycopg2.connect(database_url)
cur = db.cursor()


def mask(value: str) -> str:
    return base64.urlsafe_b64encode(hmac.new(key, value.encode(), hashlib.sha256).digest()).decode()


def version(text: str) -> int:
    parts = [int(p) for p in text.split(".")]
    if len(parts) > 3 or any(p < 0 or p > 999 for p in parts):
        raise ValueError("app_version out of range")
    parts += [0] * (3 - len(parts))
    return parts[0] * 1_000_000 + parts[1] * 1_000 + parts[2]


def row(body: str, sent_ms: str):
    m = json.loads(body)
    for field in ("user_id", "device_type", "ip", "device_id", "app_version"):
        if not isinstance(m.get(field), str):
            raise ValueError(f"missing {field}")
    ipaddress.ip_address(m["ip"])
    day = datetime.datetime.fromtimestamp(int(sent_ms) / 1000, datetime.timezone.utc).date()
    return (m["user_id"], m["device_type"], mask(m["ip"]), mask(m["device_id"]), m.get("locale"),
            version(m["app_version"]), day)


received = loaded = rejected = 0
while True:
    answer = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                 AttributeNames=["SentTimestamp"])
    messages = answer.get("Messages", [])
    if not messages:
        break
    received += len(messages)
    rows = []
    for m in messages:
        try:
            rows.append(row(m["Body"], m["Attributes"]["SentTimestamp"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            rejected += 1
    if rows:
        psycopg2.extras.execute_values(
            cur, f"INSERT INTO {table} (user_id, device_type, masked_ip, masked_device_id, locale, "
                 "app_version, create_date) VALUES %s", rows)
    db.commit()
    loaded += len(rows)
    sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])
print(f"received {received} loaded {loaded} rejected {rejected}")
