//! Opening a PostgreSQL connection from a libpq-style URL, with TLS through rustls.
//!
//! `sslmode` means what it means to libpq users:
//!
//! | sslmode | TLS | certificate check |
//! |---|---|---|
//! | `disable` | never | none |
//! | `allow`, `prefer` (default) | when the server offers it | none (only encryption) |
//! | `require` | always | none, unless `sslrootcert` is given: then as `verify-ca` |
//! | `verify-ca` | always | chain to `sslrootcert` (or the Mozilla roots when not given) |
//! | `verify-full` | always | chain as `verify-ca`, and the host name must match |
//!
//! Use `verify-full` in production: the weaker modes protect against eavesdropping, not against
//! someone impersonating the server. tokio-postgres itself knows only disable/prefer/require and
//! neither `sslrootcert` nor certificate policy, so those options are taken out of the URL here
//! and turned into a rustls configuration. The two relaxed certificate checks are one small
//! `ServerCertVerifier` of our own (rustls offers none for libpq's semantics); it still verifies
//! the handshake signatures with the provider's algorithms.
//!
//! Connections also get a connect timeout and a TCP user timeout when the URL sets none, so an
//! unreachable or half-open server fails in seconds, not in minutes.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};

/// Applied when the URL has no `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Applied when the URL has no `tcp_user_timeout`: unacknowledged data for this long means the
/// connection is dead (a half-open connection otherwise blocks until keepalives, hours later).
const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a connection could not be made. Never includes the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL ({0}); expected e.g. postgres://user:password@host:5432/dbname?sslmode=verify-full")]
    BadUrl(String),
    #[error("DATABASE_URL: sslrootcert file could not be read: {0}")]
    RootCert(String),
    #[error("could not connect to PostgreSQL: {}", super::describe(.0))]
    Connect(#[source] tokio_postgres::Error),
}

impl ConnectError {
    /// The PostgreSQL error behind a failed connection, if any (for the retry policy).
    pub fn postgres(&self) -> Option<&tokio_postgres::Error> {
        match self {
            ConnectError::Connect(e) => Some(e),
            _ => None,
        }
    }
}

/// What the server certificate is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertCheck {
    None,
    Chain,
    ChainAndName,
}

/// A parsed connection target, checked once at start-up and reused for every (re)connection.
#[derive(Clone)]
pub struct Database {
    config: Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .field("ssl_mode", &self.config.get_ssl_mode())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Parses the URL and prepares TLS; fails on a malformed URL or unreadable root certificate.
    pub fn parse(url: &str) -> Result<Self, ConnectError> {
        let options = take_tls_options(url)?;
        let mut config: Config = options
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| ConnectError::BadUrl(super::describe(&e)))?;
        config.ssl_mode(options.ssl_mode);
        if config.get_application_name().is_none() {
            config.application_name("sqs2pg");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        #[cfg(target_os = "linux")]
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
        }
        let tls = match options.ssl_mode {
            SslMode::Disable => None,
            _ => Some(tls_connector(options.check, options.root_cert.as_deref())?),
        };
        Ok(Self { config, tls })
    }

    /// Opens one connection and drives it on a background task.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        match &self.tls {
            None => {
                let (client, conn) = self
                    .config
                    .connect(NoTls)
                    .await
                    .map_err(ConnectError::Connect)?;
                tokio::spawn(drive(conn));
                Ok(client)
            }
            Some(tls) => {
                let (client, conn) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(ConnectError::Connect)?;
                tokio::spawn(drive(conn));
                Ok(client)
            }
        }
    }
}

async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(conn: F) {
    if let Err(error) = conn.await {
        tracing::warn!(error = %super::describe(&error), "postgres connection closed");
    }
}

/// Parses the URL and connects once.
pub async fn connect(url: &str) -> Result<Client, ConnectError> {
    Database::parse(url)?.connect().await
}

/// The URL without the options we handle ourselves, and what they asked for.
#[derive(Debug, PartialEq, Eq)]
struct TlsOptions {
    url: String,
    ssl_mode: SslMode,
    check: CertCheck,
    root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query string (other forms pass through
/// unchanged with libpq's default, `prefer`).
fn take_tls_options(url: &str) -> Result<TlsOptions, ConnectError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut mode = "prefer".to_owned();
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sslrootcert", path)) => root_cert = Some(path.to_owned()),
            Some(("sslmode", value)) => mode = value.to_owned(),
            _ => kept.push(pair),
        }
    }
    let (ssl_mode, check) = match (mode.as_str(), root_cert.is_some()) {
        ("disable", _) => (SslMode::Disable, CertCheck::None),
        ("allow" | "prefer", false) => (SslMode::Prefer, CertCheck::None),
        ("allow" | "prefer", true) => (SslMode::Prefer, CertCheck::Chain),
        ("require", false) => (SslMode::Require, CertCheck::None),
        ("require" | "verify-ca", _) => (SslMode::Require, CertCheck::Chain),
        ("verify-full", _) => (SslMode::Require, CertCheck::ChainAndName),
        (other, _) => {
            return Err(ConnectError::BadUrl(format!(
            "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        )))
        }
    };
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok(TlsOptions {
        url,
        ssl_mode,
        check,
        root_cert,
    })
}

fn tls_connector(
    check: CertCheck,
    root_cert: Option<&str>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, ConnectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConnectError::RootCert(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        CertCheck::None => Arc::new(RelaxedVerifier {
            provider,
            chain: None,
        }),
        CertCheck::Chain | CertCheck::ChainAndName => {
            let roots = Arc::new(root_store(root_cert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| ConnectError::RootCert(e.to_string()))?;
            if check == CertCheck::Chain {
                Arc::new(RelaxedVerifier {
                    provider,
                    chain: Some(webpki),
                })
            } else {
                webpki
            }
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn root_store(root_cert: Option<&str>) -> Result<rustls::RootCertStore, ConnectError> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let bad = |e: &dyn std::fmt::Display| ConnectError::RootCert(format!("{path}: {e}"));
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
                roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
            }
            if roots.is_empty() {
                return Err(bad(&"no certificate in the file"));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// libpq's weaker checks: `prefer`/`require` without a root certificate accept any certificate
/// (`chain: None`); `verify-ca` needs a chain to a trusted root but ignores the host name.
/// Handshake signatures are always verified.
#[derive(Debug)]
struct RelaxedVerifier {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for RelaxedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_translated() {
        let o = take_tls_options(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=5",
        )
        .unwrap();
        assert_eq!(o.url, "postgres://u@h/db?connect_timeout=5");
        assert_eq!(
            (o.ssl_mode, o.check),
            (SslMode::Require, CertCheck::ChainAndName)
        );
        assert_eq!(o.root_cert.as_deref(), Some("/ca.pem"));
        let mode = |q: &str| {
            let o = take_tls_options(&format!("postgres://u@h/db{q}")).unwrap();
            (o.ssl_mode, o.check)
        };
        assert_eq!(mode(""), (SslMode::Prefer, CertCheck::None));
        assert_eq!(
            mode("?sslmode=disable"),
            (SslMode::Disable, CertCheck::None)
        );
        assert_eq!(
            mode("?sslmode=require"),
            (SslMode::Require, CertCheck::None)
        );
        assert_eq!(
            mode("?sslmode=require&sslrootcert=x"),
            (SslMode::Require, CertCheck::Chain)
        );
        assert_eq!(
            mode("?sslmode=verify-ca"),
            (SslMode::Require, CertCheck::Chain)
        );
        let err = Database::parse("postgres://u@h/db?sslmode=bogus")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslmode=bogus"), "{err}");
        let err = Database::parse("postgres://u:hunter2@h/db?nonsense=1")
            .unwrap_err()
            .to_string();
        assert!(
            !err.contains("hunter2") && err.contains("nonsense"),
            "{err}"
        );
        assert!(Database::parse("postgres://u@h/db?sslmode=disable")
            .unwrap()
            .tls
            .is_none());
        let err = Database::parse("postgres://u@h/db?sslmode=verify-ca&sslrootcert=/nonexistent")
            .unwrap_err()
            .to_string();
        assert!(err.contains("sslrootcert"), "{err}");
    }
}
