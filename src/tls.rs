//! What both adapters share about TLS: recognising a rustls failure (an untrusted certificate,
//! a wrong host name) in an error's cause chain, which is configuration to fix, not an outage
//! to wait out. Each adapter builds its own client configuration (`sqs::transport`,
//! `postgres::connect`).

/// True when a rustls error that configuration must fix is anywhere in the cause chain
/// (tokio-rustls wraps it in io::Error): a certificate that fails its check, none presented, or
/// nothing in common to speak. Other TLS errors (a record cut short or garbled on the way, an
/// alert) say nothing that lasts, and are not this.
pub fn is_tls_failure(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(err);
    while let Some(e) = cause {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        let tls = e
            .downcast_ref::<rustls::Error>()
            .or_else(|| inner.and_then(|i| i.downcast_ref::<rustls::Error>()));
        if tls.is_some_and(|t| {
            matches!(
                t,
                rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented
                    | rustls::Error::UnsupportedNameType
                    | rustls::Error::PeerIncompatible(_)
                    | rustls::Error::InvalidCertRevocationList(_)
            )
        }) {
            return true;
        }
        cause = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rustls_error_is_found_inside_an_io_error() {
        let tls = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(is_tls_failure(&tls));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(!is_tls_failure(&refused));
        // A record garbled or cut short on the way is not configuration.
        let garbled =
            std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(!is_tls_failure(&garbled));
    }
}
