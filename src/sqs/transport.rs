//! [`Transport`], the request path both of our SQS protocol clients ([`super::json`],
//! [`super::query`]) share: one pool of kept-alive HTTP connections to the endpoint, SigV4
//! signing, and the credentials the provider chain gives, cached until shortly before they
//! expire. A call is one signed POST and its whole answer, bounded in time; what the answer
//! means is the protocol client's to read.
//!
//! Why our own and not the official SDK's: no crate offers SQS's query protocol (old
//! LocalStack speaks nothing else), and for the JSON protocol the SDK's per-call orchestration
//! (its runtime plugins, endpoint resolution, interceptors, config layers and retry machinery,
//! built up again for every request) cost about a third of the service's CPU per message
//! (BENCHMARKS.md, issue 29 point 3), work a client that makes the same four calls over and
//! over does not need. What we keep from the AWS crates is what matters for correctness: the
//! credentials provider chain (`aws-config`: environment, profiles, SSO, container and instance
//! roles) and the signature (`aws-sigv4`). HTTP is hyper with rustls on ring, the stack the SDK
//! itself runs on. Neither client retries by itself: the pipeline's one retry policy decides.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use bytes::Bytes;
use http::header::{HeaderName, CONNECTION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{in_words, no_credentials, SourceError, SourceErrorKind};

/// Longest a call may take, answer included; well above the longest long poll (20 s).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Credentials with an expiry are fetched again this long before it.
const CREDENTIALS_REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Longest the provider chain may take to give credentials (the SDK's own cache allows 5 s).
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(5);

/// The error codes that say the credentials used are no longer good (a rotated or expired
/// session), in the query and the JSON spellings: they are fetched afresh for the next call.
const STALE_CREDENTIALS: [&str; 5] = [
    "ExpiredToken",
    "ExpiredTokenException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "RequestExpired",
];

/// A server's whole answer to one call.
pub struct Answer {
    pub status: u16,
    /// A header the JSON protocol's errors may carry (`x-amzn-query-error`).
    pub query_error: Option<HeaderValue>,
    pub body: Bytes,
}

/// Signed POSTs to one SQS endpoint (see the module docs).
pub struct Transport {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Where requests go: the endpoint's root.
    endpoint: Uri,
    host: HeaderValue,
    region: String,
    provider: Option<SharedCredentialsProvider>,
    /// The provider's last answer.
    cached: tokio::sync::Mutex<Option<Credentials>>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// A transport that POSTs to `endpoint` (`scheme://host[:port]`), signing for `region`.
    pub fn new(
        endpoint: &str,
        region: String,
        provider: Option<SharedCredentialsProvider>,
    ) -> Result<Arc<Self>, String> {
        let endpoint: Uri = format!("{}/", endpoint.trim_end_matches('/'))
            .parse()
            .map_err(|e| format!("endpoint {endpoint:?} is not a URL: {e}"))?;
        let host = endpoint
            .authority()
            .ok_or_else(|| format!("endpoint {endpoint} has no host"))?
            .as_str()
            .parse::<HeaderValue>()
            .map_err(|e| format!("endpoint {endpoint}: {e}"))?;
        let provider_ring = Arc::new(rustls::crypto::ring::default_provider());
        // The operating system's roots, and Mozilla's as a fallback for minimal images
        // without a CA bundle.
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(provider_ring)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        tcp.set_nodelay(true);
        tcp.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Arc::new(Self {
            http,
            endpoint,
            host,
            region,
            provider,
            cached: tokio::sync::Mutex::new(None),
        }))
    }

    /// Where requests go (for error messages).
    pub fn endpoint(&self) -> &Uri {
        &self.endpoint
    }

    /// One signed POST of `body` with `content_type` (and `extra` headers, signed too); the
    /// whole answer, or a transport error: transient for anything on the way (refused, reset,
    /// DNS, an answer cut short, no answer in time), permanent for a certificate that fails
    /// its check.
    pub async fn post(
        &self,
        action: &'static str,
        content_type: &'static str,
        extra: &[(HeaderName, &'static str)],
        body: Vec<u8>,
    ) -> Result<Answer, SourceError> {
        let mut request = http::Request::post(self.endpoint.clone())
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, content_type);
        for (name, value) in extra {
            request = request.header(name, *value);
        }
        let mut request = request
            .body(())
            .map_err(|e| SourceError::new(SourceErrorKind::Permanent, action, e.to_string()))?;
        self.sign(action, &mut request, &body).await?;
        // After signing (a hop-by-hop header is not signed): LocalStack's gateway closes every
        // connection after its answer unless the request asks, in so many words, to keep it
        // open, and then every call opens a new TCP connection (BENCHMARKS.md, run 2).
        request
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("keep-alive"));
        let request = request.map(|()| Full::new(Bytes::from(body)));

        let exchange = async {
            let response = self.http.request(request).await?;
            let status = response.status().as_u16();
            let query_error = response.headers().get("x-amzn-query-error").cloned();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Answer {
                status,
                query_error,
                body,
            })
        };
        match tokio::time::timeout(CALL_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                // A certificate that fails its check does not fix itself; anything else on the
                // way (refused, reset, DNS, a body cut short) does.
                let kind = if crate::tls::is_tls_failure(e.as_ref()) {
                    SourceErrorKind::Permanent
                } else {
                    SourceErrorKind::Transient
                };
                Err(SourceError::new(
                    kind,
                    action,
                    format!("{}: {}", self.endpoint, in_words(e.as_ref())),
                ))
            }
            Err(_) => Err(SourceError::new(
                SourceErrorKind::Transient,
                action,
                format!("no answer from {} within {CALL_TIMEOUT:?}", self.endpoint),
            )),
        }
    }

    /// After an error answer with `code`: when it says the credentials are stale, the next
    /// call fetches them afresh.
    pub async fn note_error_code(&self, code: &str) {
        if STALE_CREDENTIALS.contains(&code) {
            *self.cached.lock().await = None;
        }
    }

    /// Adds the SigV4 headers (`Authorization`, `X-Amz-Date`, and the session token if any).
    async fn sign(
        &self,
        action: &'static str,
        request: &mut http::Request<()>,
        body: &[u8],
    ) -> Result<(), SourceError> {
        let credentials = self.credentials(action).await?;
        let identity = credentials.into();
        let failed = |e: &dyn std::fmt::Display| {
            SourceError::new(SourceErrorKind::Permanent, action, format!("signing: {e}"))
        };
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("sqs")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| failed(&e))?
            .into();
        let instructions = {
            let uri = request.uri().to_string();
            let headers = request
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
            let signable = SignableRequest::new("POST", uri, headers, SignableBody::Bytes(body))
                .map_err(|e| failed(&e))?;
            sign(signable, &params)
                .map_err(|e| failed(&e))?
                .into_parts()
                .0
        };
        instructions.apply_to_request_http1x(request);
        Ok(())
    }

    async fn credentials(&self, action: &'static str) -> Result<Credentials, SourceError> {
        let Some(provider) = &self.provider else {
            return Err(no_credentials(action, None));
        };
        let mut cached = self.cached.lock().await;
        let now = SystemTime::now();
        if let Some(c) = cached.as_ref() {
            if c.expiry()
                .is_none_or(|expiry| expiry > now + CREDENTIALS_REFRESH_MARGIN)
            {
                return Ok(c.clone());
            }
        }
        let fetched = tokio::time::timeout(CREDENTIALS_TIMEOUT, provider.provide_credentials())
            .await
            .unwrap_or_else(|_| Err(CredentialsError::provider_timed_out(CREDENTIALS_TIMEOUT)));
        let credentials = match fetched {
            Ok(credentials) => credentials,
            // A refresh that fails while the credentials held are still good (an instance
            // metadata or STS blip in the last minutes before they expire) uses them.
            Err(_)
                if cached
                    .as_ref()
                    .is_some_and(|c| c.expiry().is_some_and(|expiry| expiry > now)) =>
            {
                return Ok(cached.clone().expect("checked above"));
            }
            Err(e) => return Err(credentials_error(action, &e)),
        };
        *cached = Some(credentials.clone());
        Ok(credentials)
    }
}

/// A failure of the provider chain, in words: the chain's own text lists every provider it
/// tried, one per line, and the first line says what matters. A provider that did not answer
/// in time (instance metadata, STS) may next time; anything else is a configuration to fix.
fn credentials_error(action: &'static str, e: &CredentialsError) -> SourceError {
    let text = in_words(e);
    let why = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches("Attempted:")
        .trim_end()
        .to_owned();
    match e {
        CredentialsError::ProviderTimedOut(_) => SourceError::new(
            SourceErrorKind::Transient,
            action,
            format!("AWS credentials: {why}"),
        ),
        _ => no_credentials(action, Some(why)),
    }
}

#[cfg(test)]
mod tests;
