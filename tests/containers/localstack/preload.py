"""Once LocalStack answers: login-queue with the 100 sample messages, as the exercise's image
has it when it is up."""
import time

import boto3

sqs = boto3.client("sqs", endpoint_url="http://127.0.0.1:4566", region_name="us-east-1",
                   aws_access_key_id="test", aws_secret_access_key="test")
deadline = time.monotonic() + 300
while True:
    try:
        sqs.list_queues()
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.5)
# The healthcheck passes once the queue exists, a moment before the last messages are in (as
# with the exercise's image): a consumer started then finds them as they arrive.
bodies = [line.rstrip("\n") for line in open("/opt/standin/login-queue-sample.jsonl") if line.strip()]
url = sqs.create_queue(QueueName="login-queue")["QueueUrl"]
for i in range(0, len(bodies), 10):
    sqs.send_message_batch(QueueUrl=url, Entries=[
        {"Id": str(j), "MessageBody": body} for j, body in enumerate(bodies[i:i + 10])
    ])
print(f"login-queue: {len(bodies)} messages", flush=True)
