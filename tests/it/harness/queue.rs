//! The SQS servers and protocols the tests run against, and a fresh queue on one of them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqs2pg::sqs::queue::SqsSettings;
use sqs2pg::sqs::{Protocol, Queue, ReceiveRequest};

use super::*;

/// The SQS servers (and protocols) the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sqs {
    /// moto, spoken to in JSON (our JSON client).
    MotoJson,
    /// moto, spoken to in the query protocol (our own client).
    MotoQuery,
    /// LocalStack 0.14.3, the exercise's own SQS, which speaks only query; reached with
    /// `--sqs-protocol auto`, as a user with no flags would.
    LocalStack014,
    /// LocalStack 4.0.3, a modern emulator that holds thousands of messages; `auto` (which
    /// must stay on JSON there).
    LocalStack4,
}

impl Sqs {
    pub fn endpoint(self) -> String {
        match self {
            Sqs::MotoJson | Sqs::MotoQuery => servers().sqs_endpoint.clone(),
            Sqs::LocalStack014 => localstack_014().to_owned(),
            Sqs::LocalStack4 => localstack_4().to_owned(),
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            Sqs::MotoJson => Protocol::Json,
            Sqs::MotoQuery => Protocol::Query,
            Sqs::LocalStack014 | Sqs::LocalStack4 => Protocol::Auto,
        }
    }
}

/// A fresh queue on one of the SQS servers.
pub struct TestQueue {
    pub url: String,
    pub endpoint: String,
    pub protocol: Protocol,
    pub queue: Arc<Queue>,
}

impl TestQueue {
    /// A fresh queue on moto, in JSON.
    pub async fn new() -> Self {
        Self::on(Sqs::MotoJson).await
    }

    /// A fresh queue on the given server.
    pub async fn on(sqs: Sqs) -> Self {
        Self::named(sqs, &unique("q").replace('_', "-")).await
    }

    /// A queue named `name` on the SQS server at `endpoint`, spoken to in JSON.
    pub async fn at(endpoint: &str, name: &str) -> Self {
        let settings = SqsSettings {
            queue_url: format!("{endpoint}/000000000000/{name}"),
            endpoint_url: Some(endpoint.to_owned()),
            protocol: Protocol::Json,
        };
        let mut queue = Queue::connect(&settings).await.unwrap();
        queue.create_queue().await.unwrap();
        Self {
            url: queue.queue_url().to_owned(),
            endpoint: endpoint.to_owned(),
            protocol: Protocol::Json,
            queue: Arc::new(queue),
        }
    }

    /// A fresh FIFO queue on the given server.
    pub async fn fifo_on(sqs: Sqs) -> Self {
        Self::named(sqs, &format!("{}.fifo", unique("q").replace('_', "-"))).await
    }

    async fn named(sqs: Sqs, name: &str) -> Self {
        servers();
        let endpoint = sqs.endpoint();
        let settings = SqsSettings {
            queue_url: format!("{endpoint}/000000000000/{name}"),
            endpoint_url: Some(endpoint.clone()),
            protocol: sqs.protocol(),
        };
        let mut queue = Queue::connect(&settings).await.unwrap();
        queue.create_queue().await.unwrap();
        Self {
            url: queue.queue_url().to_owned(),
            endpoint,
            protocol: sqs.protocol(),
            queue: Arc::new(queue),
        }
    }

    /// Watches the queue until `done`: whether its messages were all taken (none visible) at
    /// some point, and the most that became visible again after that.
    pub async fn visible_again_until(
        &self,
        done: &tokio_util::sync::CancellationToken,
    ) -> (bool, u64) {
        let (mut taken, mut came_back) = (false, 0);
        while !done.is_cancelled() {
            let (visible, _) = self.queue.approximate_depth().await.unwrap();
            if visible == 0 {
                taken = true;
            } else if taken {
                came_back = came_back.max(visible);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (taken, came_back)
    }

    /// Visible + in-flight messages.
    pub async fn depth(&self) -> u64 {
        let (visible, in_flight) = self.queue.approximate_depth().await.unwrap();
        visible + in_flight
    }

    /// Receives (without deleting) until `expected` distinct message ids were seen or `timeout`
    /// passed; returns the ids seen. Received messages stay invisible for a minute.
    pub async fn distinct_ids(&self, expected: usize, timeout: Duration) -> HashSet<String> {
        use sqs2pg::sqs::MessageSource;
        let deadline = Instant::now() + timeout;
        let mut ids = HashSet::new();
        while ids.len() < expected && Instant::now() < deadline {
            let got = self
                .queue
                .receive(&ReceiveRequest::new(
                    10,
                    Duration::from_secs(1),
                    Some(Duration::from_secs(60)),
                ))
                .await
                .unwrap();
            ids.extend(got.into_iter().map(|m| m.ack.message_id));
        }
        ids
    }

    /// Sends bodies, 10 per call.
    pub async fn send(&self, bodies: &[String]) {
        for chunk in bodies.chunks(10) {
            let messages: Vec<sqs2pg::sqs::Outgoing> = chunk
                .iter()
                .map(|body| sqs2pg::sqs::Outgoing::new(body.clone()))
                .collect();
            let refused = self.queue.send_batch(&messages).await.unwrap();
            assert!(refused.is_empty());
        }
    }
}
