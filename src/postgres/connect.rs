//! Opening a PostgreSQL connection from a libpq-style URL, with TLS through rustls.
//!
//! `sslmode` is honoured as libpq users expect: `disable` uses plain TCP; `prefer` (the default)
//! tries TLS first; `require`, `verify-ca` and `verify-full` insist on TLS. Whenever TLS is used
//! the server certificate is verified (against the Mozilla roots, or against `sslrootcert=FILE`
//! when given), which is stricter than libpq's `require`; there is deliberately no switch to turn
//! verification off. tokio-postgres knows only disable/prefer/require and no `sslrootcert`, so
//! those two options are taken out of the URL here before it is parsed.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};

/// Why a connection could not be made. Never includes the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("DATABASE_URL is not a valid PostgreSQL URL ({0}); expected e.g. postgres://user:password@host:5432/dbname")]
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
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Parses the URL and prepares TLS; fails on a malformed URL or unreadable root certificate.
    pub fn parse(url: &str) -> Result<Self, ConnectError> {
        let (url, root_cert) = take_tls_options(url);
        let mut config: Config = url
            .parse()
            .map_err(|e: tokio_postgres::Error| ConnectError::BadUrl(e.to_string()))?;
        if config.get_application_name().is_none() {
            config.application_name("sqs2pg");
        }
        let tls = match config.get_ssl_mode() {
            SslMode::Disable => None,
            _ => Some(tls_connector(root_cert.as_deref())?),
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
        tracing::warn!(%error, "postgres connection closed");
    }
}

/// Parses the URL and connects once.
pub async fn connect(url: &str) -> Result<Client, ConnectError> {
    Database::parse(url)?.connect().await
}

/// Removes `sslrootcert` and rewrites `sslmode=verify-ca|verify-full` (unknown to tokio-postgres)
/// to `require` in a URL's query string; returns the root certificate path if one was given.
fn take_tls_options(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("sslrootcert", path)) => root_cert = Some(path.to_owned()),
            Some(("sslmode", "verify-ca" | "verify-full")) => kept.push("sslmode=require"),
            Some(("sslmode", "allow")) => kept.push("sslmode=prefer"),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    (url, root_cert)
}

fn tls_connector(
    root_cert: Option<&str>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, ConnectError> {
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|e| ConnectError::RootCert(format!("{path}: {e}")))?
            {
                let cert = cert.map_err(|e| ConnectError::RootCert(format!("{path}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| ConnectError::RootCert(format!("{path}: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ConnectError::RootCert(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_are_translated() {
        assert_eq!(
            take_tls_options(
                "postgres://u@h/db?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=5"
            ),
            (
                "postgres://u@h/db?sslmode=require&connect_timeout=5".into(),
                Some("/ca.pem".into())
            )
        );
        assert_eq!(
            take_tls_options("postgres://u@h/db"),
            ("postgres://u@h/db".into(), None)
        );
        let db = Database::parse("postgres://u@h/db?sslmode=disable").unwrap();
        assert!(db.tls.is_none());
        let db = Database::parse("postgres://u@h/db?sslmode=verify-full").unwrap();
        assert!(db.tls.is_some());
        assert!(matches!(
            Database::parse("postgres://u@h/db?sslmode=bogus"),
            Err(ConnectError::BadUrl(_))
        ));
        let err = Database::parse("postgres://u:hunter2@h/db?nonsense=1")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
