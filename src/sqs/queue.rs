//! [`Queue`], the client the commands use: where the queue is (any URL spelling users paste,
//! or just a name), the AWS configuration both protocols share (credentials chain, region,
//! endpoint, TLS), and which protocol to speak. In `auto` mode it speaks JSON until the server
//! answers like a query-only one, then re-asks in query and, if the server answers that, speaks
//! query for the rest of the run (logged once).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::Region;
use aws_config::SdkConfig;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use super::json::JsonQueue;
use super::name::{is_fifo, is_url, queue_name};
use super::query::QueryQueue;
use super::transport::Transport;
use super::{
    AckHandle, DeleteOutcome, FifoTag, MessageSource, Outgoing, Protocol, QueueCounts,
    ReceiveRequest, Received, SourceError, SourceErrorKind,
};
use crate::retry::RetryPolicy;
use sha2::{Digest, Sha256};

/// A setting the SQS client cannot use (an endpoint or region it cannot work with); the
/// message names the setting and the fix. (`config` turns it into its own error.)
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct SettingsError(pub String);

/// The message group `send` and replay use on a FIFO queue: one group, so the queue hands the
/// messages out in the order they were sent.
pub const FIFO_SEND_GROUP: &str = "sqs2pg";

/// Region used for a local SQS server (LocalStack, moto) when none is configured: they accept
/// any region, and the exercise's instructions set none.
pub const LOCAL_DEFAULT_REGION: &str = "us-east-1";

/// Where and how to reach the queue.
#[derive(Debug, Clone)]
pub struct SqsSettings {
    /// The queue's URL, or just its name (then resolved with `GetQueueUrl`).
    pub queue_url: String,
    /// Endpoint override (`AWS_ENDPOINT_URL`); when unset and the queue URL is not an AWS one,
    /// the queue URL's origin is used, so `http://localhost:4566/000000000000/q` just works.
    pub endpoint_url: Option<String>,
    pub protocol: Protocol,
}

/// An SQS queue, reached over JSON or query (see the module docs).
#[derive(Debug)]
pub struct Queue {
    json: JsonQueue,
    query: QueryQueue,
    protocol: Protocol,
    /// Set once `auto` found a query-only server (or `query` was asked for).
    on_query: AtomicBool,
    /// Set once a JSON call succeeded: from then on the server speaks JSON, and an odd error
    /// (a proxy's 502, say) is just an error, never a reason to switch.
    json_worked: AtomicBool,
    /// Set once any call on the queue succeeded: if the queue then "does not exist", the SQS
    /// server lost it (a LocalStack or moto restart), and it is waited for, not given up on.
    queue_seen: AtomicBool,
    queue_url: String,
}

/// Runs one call on the client the protocol choice says, switching `auto` to query when the
/// server turns out to speak only that. Both clients have the same method names.
macro_rules! over {
    ($self:ident, $client:ident => $call:expr) => {{
        let result = if $self.on_query.load(Ordering::Relaxed) {
            let $client = &$self.query;
            $call.await
        } else {
            let first = {
                let $client = &$self.json;
                $call.await
            };
            match first {
                Ok(answer) => {
                    $self.json_worked.store(true, Ordering::Relaxed);
                    Ok(answer)
                }
                Err(e) if e.query_only_hint && $self.protocol == Protocol::Json => {
                    Err($self.explain(e))
                }
                Err(e)
                    if e.query_only_hint
                        && !$self.json_worked.load(Ordering::Relaxed)
                        && $self.speaks_query(&e).await =>
                {
                    let $client = &$self.query;
                    $call.await
                }
                Err(e) => Err(e),
            }
        };
        $self.observe(result)
    }};
}

impl Queue {
    /// Builds both clients from the standard AWS configuration chain. No network call yet;
    /// a queue given by name is resolved by [`Queue::locate`].
    pub async fn connect(settings: &SqsSettings) -> Result<Self, SettingsError> {
        let endpoint = settings
            .endpoint_url
            .clone()
            .or_else(|| local_origin(&settings.queue_url));
        let config = aws_config(endpoint.as_deref(), &settings.queue_url).await?;
        let region = config
            .region()
            .map(|r| r.as_ref().to_owned())
            .expect("aws_config sets a region");
        // Requests go to the endpoint, else to the queue URL's own host (which is right for
        // every AWS partition), else, for a bare name, to the region's SQS.
        // A configured endpoint (`AWS_ENDPOINT_URL`, a profile's `endpoint_url`) comes before
        // the queue URL's host, as it does for the SDK.
        let endpoint = endpoint
            .or_else(|| config.endpoint_url().map(str::to_owned))
            .or_else(|| origin(&settings.queue_url))
            .unwrap_or_else(|| regional_endpoint(&region));
        let transport = Transport::new(&endpoint, region, config.credentials_provider())
            .map_err(|e| SettingsError(format!("AWS_ENDPOINT_URL (--endpoint-url): {e}")))?;
        Ok(Self {
            json: JsonQueue::new(transport.clone(), settings.queue_url.clone()),
            query: QueryQueue::new(transport, settings.queue_url.clone()),
            protocol: settings.protocol,
            on_query: AtomicBool::new(settings.protocol == Protocol::Query),
            json_worked: AtomicBool::new(false),
            queue_seen: AtomicBool::new(false),
            queue_url: settings.queue_url.clone(),
        })
    }

    /// The queue's URL (after [`Queue::locate`] or [`Queue::create_queue`], the one SQS gave).
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The protocol in use now: `query` once `auto` has switched.
    pub fn protocol_in_use(&self) -> Protocol {
        if self.on_query.load(Ordering::Relaxed) {
            Protocol::Query
        } else {
            Protocol::Json
        }
    }

    /// Resolves a queue given by name to its URL with `GetQueueUrl`; a URL is kept as given.
    pub async fn locate(&mut self) -> Result<(), SourceError> {
        if is_url(&self.queue_url) {
            return Ok(());
        }
        let name = self.queue_url.clone();
        let this = &*self;
        let url = retried(|| async { over!(this, c => c.get_queue_url(&name)) }).await?;
        self.point_at(url);
        Ok(())
    }

    /// Creates the queue named by the URL's last path segment (or the name given) if it does
    /// not exist (`CreateQueue` is idempotent) and points this client at the URL SQS returns.
    pub async fn create_queue(&mut self) -> Result<(), SourceError> {
        let name = queue_name(&self.queue_url)
            .ok_or_else(|| {
                SourceError::new(
                    SourceErrorKind::Permanent,
                    "CreateQueue",
                    "the queue URL does not end in a queue name",
                )
            })?
            .to_owned();
        let this = &*self;
        let url = retried(|| async { over!(this, c => c.create_queue(&name)) }).await?;
        self.point_at(url);
        Ok(())
    }

    fn point_at(&mut self, url: String) {
        self.json.set_queue_url(url.clone());
        self.query.set_queue_url(url.clone());
        self.queue_url = url;
    }

    /// The queue's own `VisibilityTimeout`.
    pub async fn visibility_timeout(&self) -> Result<Duration, SourceError> {
        let attrs = self.attributes(&["VisibilityTimeout"]).await?;
        Ok(Duration::from_secs(
            super::number(&attrs, "VisibilityTimeout").unwrap_or(30),
        ))
    }

    /// `GetQueueAttributes` for `names` (`All` for every one), as name/value pairs.
    pub async fn attributes(&self, names: &[&str]) -> Result<Vec<(String, String)>, SourceError> {
        retried(|| async { over!(self, c => c.attributes(names)) }).await
    }

    /// `ApproximateNumberOfMessages` + `ApproximateNumberOfMessagesNotVisible` (of
    /// [`MessageSource::counts`]).
    pub async fn approximate_depth(&self) -> Result<(u64, u64), SourceError> {
        let counts = MessageSource::counts(self).await?;
        Ok((counts.visible, counts.in_flight))
    }

    /// Sends up to 10 bodies in one `SendMessageBatch`; returns the ones to send again. On a
    /// FIFO queue a message without a group of its own (a replay keeps its original's) goes to
    /// group [`FIFO_SEND_GROUP`], deduplicated by its replay ledger id, or else by the SHA-256
    /// of its body (as content-based deduplication would). A standard queue takes no group: a
    /// FIFO message replayed to one is sent without.
    pub async fn send_batch(&self, messages: &[Outgoing]) -> Result<Vec<Outgoing>, SourceError> {
        if !is_fifo(&self.queue_url) {
            if messages.iter().all(|m| m.fifo.is_none()) {
                return retried(|| async { over!(self, c => c.send_batch(messages)) }).await;
            }
            let plain: Vec<Outgoing> = messages
                .iter()
                .map(|m| Outgoing {
                    fifo: None,
                    ..m.clone()
                })
                .collect();
            return retried(|| async { over!(self, c => c.send_batch(&plain)) }).await;
        }
        if messages.iter().all(|m| m.fifo.is_some()) {
            return retried(|| async { over!(self, c => c.send_batch(messages)) }).await;
        }
        let tagged: Vec<Outgoing> = messages
            .iter()
            .map(|m| {
                if m.fifo.is_some() {
                    return m.clone();
                }
                let deduplication_id = match &m.replay {
                    Some(tag) => tag.ledger_id.clone(),
                    None => {
                        let digest = Sha256::digest(m.body.as_bytes());
                        digest.iter().map(|b| format!("{b:02x}")).collect()
                    }
                };
                Outgoing {
                    fifo: Some(FifoTag {
                        group_id: FIFO_SEND_GROUP.to_owned(),
                        deduplication_id,
                    }),
                    ..m.clone()
                }
            })
            .collect();
        retried(|| async { over!(self, c => c.send_batch(&tagged)) }).await
    }

    /// `auto`'s check, after a JSON answer that looked like a query-only server's: asks the
    /// server a harmless question (`ListQueues`) in query. If it answers (a result, or an SQS
    /// error it could put in XML), it speaks query: switch for good, log once, and let the
    /// caller ask its real question again in query. The real call is never the probe, so a
    /// batch is never sent twice by the switch.
    async fn speaks_query(&self, json_error: &SourceError) -> bool {
        if self.on_query.load(Ordering::Relaxed) {
            return true;
        }
        if !answered(&self.query.probe().await) {
            return false;
        }
        if !self.on_query.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                json_answer = %json_error,
                "this SQS server does not speak the JSON protocol (old LocalStack does not); \
                 speaking the query protocol for the rest of the run. \
                 Set --sqs-protocol query to skip this check"
            );
        }
        true
    }

    /// Notes a success; turns "queue does not exist" into a retryable error once the queue has
    /// been seen in this run (an emulator restarted without its state: infrastructure tends to
    /// create the queue again). At start-up it stays a configuration error.
    fn observe<T>(&self, result: Result<T, SourceError>) -> Result<T, SourceError> {
        match result {
            Ok(answer) => {
                self.queue_seen.store(true, Ordering::Relaxed);
                Ok(answer)
            }
            Err(mut e)
                if self.queue_seen.load(Ordering::Relaxed)
                    && e.code.as_deref().is_some_and(is_missing_queue) =>
            {
                e.kind = SourceErrorKind::Transient;
                e.message.push_str(
                    "; the queue existed earlier in this run (was the SQS server restarted?): \
                     waiting for it to come back",
                );
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// With `--sqs-protocol json`, a query-only answer says what to change.
    fn explain(&self, mut error: SourceError) -> SourceError {
        error.message.push_str(
            "; the server answered like a query-protocol-only SQS (LocalStack 0.14, as in the \
             exercise's image): use --sqs-protocol auto or query (SQS2PG_SQS_PROTOCOL)",
        );
        error
    }
}

impl MessageSource for Queue {
    async fn receive(&self, request: &ReceiveRequest) -> Result<Vec<Received>, SourceError> {
        over!(self, c => c.receive(request))
    }

    async fn counts(&self) -> Result<QueueCounts, SourceError> {
        over!(self, c => c.counts())
    }

    async fn delete(&self, acks: &[AckHandle]) -> Result<DeleteOutcome, SourceError> {
        over!(self, c => c.delete(acks))
    }

    async fn change_visibility(
        &self,
        acks: &[AckHandle],
        timeout: Duration,
    ) -> Result<Vec<AckHandle>, SourceError> {
        over!(self, c => c.change_visibility(acks, timeout))
    }
}

/// The AWS configuration: credentials and region from the standard chain (environment,
/// profile, SSO, container and instance roles) and the endpoint if given. Its HTTP client,
/// bounded and on rustls with ring (one crypto provider for SQS and PostgreSQL), is the one the
/// credentials providers call (SSO, STS, instance metadata); SQS calls go over
/// [`Transport`]. A region in the queue URL overrides the chain's; for a local server with
/// none anywhere, [`LOCAL_DEFAULT_REGION`].
async fn aws_config(endpoint: Option<&str>, queue: &str) -> Result<SdkConfig, SettingsError> {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    // Bounded calls: a credentials provider's connect that hangs fails instead of stalling
    // the run.
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(Duration::from_secs(60))
        .build();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(timeouts);
    if let Some(endpoint) = endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    #[cfg(any(test, feature = "test-support"))]
    if TEST_CREDENTIALS.get().is_some() {
        loader = loader
            .credentials_provider(aws_credential_types::Credentials::new(
                "test",
                "test",
                None,
                None,
                "sqs2pg-tests",
            ))
            .region(Region::new(LOCAL_DEFAULT_REGION));
    }
    // A region in the queue URL wins: the queue lives there, whatever AWS_REGION says.
    if let Some(region) = region_of(queue) {
        loader = loader.region(Region::new(region));
    }
    let config = loader.load().await;
    if config.region().is_some() {
        return Ok(config);
    }
    let region = match endpoint {
        Some(endpoint) if !is_aws_host(host_of(endpoint).unwrap_or("")) => {
            LOCAL_DEFAULT_REGION.to_owned()
        }
        _ => {
            return Err(SettingsError(
                "no AWS region: set AWS_REGION (e.g. AWS_REGION=us-east-1), or use a queue URL of the form https://sqs.REGION.amazonaws.com/ACCOUNT/NAME".into(),
            ))
        }
    };
    Ok(config.into_builder().region(Region::new(region)).build())
}

/// Set by [`use_test_credentials`].
#[cfg(any(test, feature = "test-support"))]
static TEST_CREDENTIALS: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// Test support: every queue this process connects from now on signs with static test
/// credentials in the local default region instead of the environment's provider chain, so
/// the tests need not change the process environment while other test threads may read it.
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub fn use_test_credentials() {
    let _ = TEST_CREDENTIALS.set(());
}

/// How often the calls outside the pipeline's own are tried: queue lookup and creation,
/// attributes, sends. Three attempts, with backoff, as the SDK's standard retry mode did; the
/// pipeline's calls (receive, delete, change visibility) are tried once here and retried by
/// the pipeline's one policy (`error::fate`), so the two never stack.
const SETUP_RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_secs(1),
    max_delay: Duration::from_secs(20),
    max_attempts: Some(3),
};

/// `call` under [`SETUP_RETRY`]: again after a transient error while attempts remain.
async fn retried<T, F, Fut>(mut call: F) -> Result<T, SourceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SourceError>>,
{
    let mut backoff = SETUP_RETRY.backoff();
    loop {
        match call().await {
            Err(e) if e.kind == SourceErrorKind::Transient => match backoff.failed() {
                Some(delay) => {
                    tracing::debug!(error = %e, attempt = backoff.attempts(), "sqs call failed; trying again");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(e),
            },
            answer => return answer,
        }
    }
}

/// The region's SQS endpoint (China's partition has its own domain).
fn regional_endpoint(region: &str) -> String {
    let domain = if region.starts_with("cn-") {
        "amazonaws.com.cn"
    } else {
        "amazonaws.com"
    };
    format!("https://sqs.{region}.{domain}")
}

/// Whether a call reached a server that speaks query: it answered, or refused in SQS's XML.
fn answered<T>(result: &Result<T, SourceError>) -> bool {
    match result {
        Ok(_) => true,
        Err(e) => e.code.is_some(),
    }
}

/// SQS's error codes for a queue that does not exist (query and JSON spellings).
fn is_missing_queue(code: &str) -> bool {
    matches!(
        code,
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" | "NonExistentQueue"
    )
}

/// The host of `scheme://host[:port]/...`.
fn host_of(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let host_port = rest.split('/').next()?;
    Some(host_port.rsplit_once(':').map_or(host_port, |(h, _)| h)).filter(|h| !h.is_empty())
}

fn is_aws_host(host: &str) -> bool {
    host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn")
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host_port = rest.split('/').next()?;
    host_of(url)?;
    Some(format!("{scheme}://{host_port}"))
}

/// `scheme://host[:port]` of a queue URL that is not on AWS (LocalStack, moto, ...).
pub fn local_origin(queue_url: &str) -> Option<String> {
    origin(queue_url).filter(|_| host_of(queue_url).is_some_and(|h| !is_aws_host(h)))
}

/// The region in `https://sqs.REGION.amazonaws.com/...`,
/// `http://sqs.REGION.localhost.localstack.cloud:4566/...` or `https://REGION.queue.amazonaws.com/...`
/// (the legacy spelling).
pub fn region_of(queue_url: &str) -> Option<String> {
    let host = host_of(queue_url)?;
    let labels: Vec<&str> = host.split('.').collect();
    let candidate = match labels.as_slice() {
        ["sqs", region, ..] => region,
        [region, "queue", "amazonaws", ..] => region,
        _ => return None,
    };
    // Regions look like `us-east-1`, `eu-central-2`, `us-gov-west-1`.
    (candidate.contains('-') && candidate.ends_with(|c: char| c.is_ascii_digit()))
        .then(|| (*candidate).to_owned())
}

#[cfg(test)]
mod tests;
