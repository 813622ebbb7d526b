//! HTTPS without a proxy: the rustls server configuration behind a
//! swappable handle, so a reload (SIGHUP) that reads a renewed certificate
//! serves it to the next connection while open ones keep theirs. ALPN
//! offers HTTP/2 and HTTP/1.1.

use crate::config::TlsSettings;
use arc_swap::ArcSwap;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::rustls::ServerConfig;

/// The live TLS configuration of a listener.
pub struct TlsHandle(ArcSwap<ServerConfig>);

impl TlsHandle {
    /// Reads the certificate and key files.
    pub fn load(s: &TlsSettings) -> Result<Arc<TlsHandle>, String> {
        Ok(Arc::new(TlsHandle(ArcSwap::from_pointee(build(s)?))))
    }

    /// Reads the files again (a renewed certificate); on error the current
    /// configuration stays.
    pub fn reload(&self, s: &TlsSettings) -> Result<(), String> {
        self.0.store(Arc::new(build(s)?));
        Ok(())
    }

    /// An acceptor with the current configuration, for one new connection.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.load_full())
    }
}

/// Builds the rustls configuration (ring provider, TLS 1.2 and 1.3). Errors
/// name the file, never its contents.
fn build(s: &TlsSettings) -> Result<ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&s.cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|_| format!("{}: cannot read a PEM certificate chain", s.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", s.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&s.key)
        .map_err(|_| format!("{}: cannot read a PEM private key", s.key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", s.cert.display(), s.key.display()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}
