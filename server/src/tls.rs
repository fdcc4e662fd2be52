//! TLS termination: the certificate chain and key of `--tls-cert` / `--tls-key`, the
//! one rustls configuration every shard accepts with (TLS 1.2 and 1.3, ALPN
//! `http/1.1`), and replacing the certificate on SIGHUP.
//!
//! A reload swaps the key every *new* handshake is answered with; connections already
//! established keep the session they negotiated. A reload that fails (unreadable file,
//! key not matching the certificate) changes nothing: the server goes on with the
//! certificate it had. Nothing here may block a shard: files are read on the thread
//! that asks for a reload, and a handshake takes the current key under a lock held for
//! one pointer copy.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading the certificate chain {path}: {source}")]
    Certificates {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0}: no certificate in the file")]
    NoCertificate(PathBuf),
    #[error("reading the private key {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path}: {source}")]
    Unusable {
        path: PathBuf,
        source: rustls::Error,
    },
}

/// The server side of TLS, shared by every shard.
pub struct Tls {
    acceptor: TlsAcceptor,
    current: Arc<Current>,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl Tls {
    /// Reads the certificate chain and key and builds the configuration.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = certified_key(&provider, cert_path, key_path)?;
        let current = Arc::new(Current {
            key: RwLock::new(key),
            provider: Arc::clone(&provider),
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|source| TlsError::Unusable {
                path: cert_path.to_owned(),
                source,
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&current) as Arc<dyn ResolvesServerCert>);
        // HTTP/1.1 only: WebSockets are upgraded from it, and hyper serves no HTTP/2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            current,
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    /// Reads both files again; new handshakes use them from now on. On error the
    /// certificate in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let key = certified_key(&self.current.provider, &self.cert_path, &self.key_path)?;
        *self
            .current
            .key
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = key;
        Ok(())
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

/// The certificate answering new handshakes.
#[derive(Debug)]
struct Current {
    key: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let key = self
            .key
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(Arc::clone(&key))
    }
}

fn certified_key(
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificates {
            path: cert_path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert_path.to_owned()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|source| TlsError::Key {
        path: key_path.to_owned(),
        source,
    })?;
    let unusable = |source| TlsError::Unusable {
        path: key_path.to_owned(),
        source,
    };
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(unusable)?;
    let certified = CertifiedKey::new(chain, signing);
    // A key that does not belong to the certificate would fail every handshake.
    certified.keys_match().map_err(unusable)?;
    Ok(Arc::new(certified))
}
