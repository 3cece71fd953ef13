#!/bin/sh
# LocalStack 0.14.3 with SQS on 4566 (query protocol only, like the exercise's image), then
# login-queue with the sample messages. A stop's SIGTERM goes to LocalStack.
set -eu
export SERVICES=sqs EDGE_PORT=4566 EDGE_BIND_HOST=0.0.0.0 HOSTNAME_EXTERNAL=localhost \
  LOCALSTACK_HOSTNAME=localhost DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 DNS_ADDRESS=0 \
  EAGER_SERVICE_LOADING=1
/opt/localstack/bin/localstack start --host --no-banner &
server=$!
trap 'kill -TERM $server 2>/dev/null' TERM INT
/opt/localstack/bin/python3 /opt/standin/preload.py
wait $server
