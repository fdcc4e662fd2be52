//! The harness's clients over TLS: one rustls client configuration (the aws-lc-rs
//! provider, ALPN `http/1.1`) for the WebSockets (`wss://`), Goose's REST calls, the
//! history read-back and the metrics scrapes (`https://`). It trusts the certificates of
//! `--tls-ca` and the one generated for local nodes started with `--tls`, or else the
//! web PKI roots. Plain `http://` targets use the same HTTP client without TLS.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Serialize;

/// How the harness talks to its target, as the report states it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Transport {
    /// `tls` or `plain`.
    pub scheme: &'static str,
    /// What the TLS client trusts (empty for plain).
    pub trust: String,
}

/// The clients of one run.
pub struct Clients {
    /// For `wss://` (and `https://` through the HTTP client); `None` when no node is
    /// https.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// REST outside Goose (history read-back, scrapes) and, over TLS, Goose's users too.
    pub http: reqwest::Client,
    pub transport: Transport,
}

impl Clients {
    /// Clients for `urls`: TLS when any is `https://`, trusting `ca_pems` (PEM texts)
    /// when given, else the web PKI roots.
    pub fn new(urls: &[String], ca_pems: &[(String, String)]) -> anyhow::Result<Self> {
        let https = urls.iter().filter(|u| u.starts_with("https://")).count();
        if https > 0 && https < urls.len() {
            bail!("the nodes mix http:// and https://: give one scheme");
        }
        let (tls, transport) = if https > 0 {
            let config = client_config(ca_pems)?;
            let trust = if ca_pems.is_empty() {
                "web PKI roots".to_string()
            } else {
                ca_pems
                    .iter()
                    .map(|(name, _)| name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            (
                Some(config),
                Transport {
                    scheme: "tls",
                    trust,
                },
            )
        } else {
            (
                None,
                Transport {
                    scheme: "plain",
                    trust: String::new(),
                },
            )
        };
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .user_agent("chat-loadtest");
        if let Some(config) = &tls {
            builder = builder.tls_backend_preconfigured(rustls::ClientConfig::clone(config));
        }
        let http = builder.build().context("building the HTTP client")?;
        Ok(Self {
            tls,
            http,
            transport,
        })
    }
}

/// A rustls client configuration trusting the certificates in `ca_pems` (or the web
/// PKI roots when empty), with the aws-lc-rs provider, TLS 1.2 and 1.3, ALPN
/// `http/1.1`.
pub fn client_config(ca_pems: &[(String, String)]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    if ca_pems.is_empty() {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for (name, pem) in ca_pems {
        let mut found = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.with_context(|| format!("reading a certificate of {name}"))?;
            roots
                .add(cert)
                .with_context(|| format!("trusting a certificate of {name}"))?;
            found += 1;
        }
        if found == 0 {
            bail!("{name} holds no PEM certificate");
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads `--tls-ca`: its name (for the report) and PEM text.
pub fn read_ca(path: &Path) -> anyhow::Result<(String, String)> {
    let pem = std::fs::read_to_string(path)
        .with_context(|| format!("reading --tls-ca {}", path.display()))?;
    Ok((format!("--tls-ca {}", path.display()), pem))
}

/// A self-signed certificate for `localhost` and `127.0.0.1`, written to a temporary
/// directory for local nodes (`--tls-cert`, `--tls-key`); removed when dropped.
pub struct GeneratedCert {
    dir: tempfile::TempDir,
    pub pem: String,
}

impl GeneratedCert {
    pub fn generate() -> anyhow::Result<Self> {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .context("generating a certificate")?;
        let dir = tempfile::Builder::new()
            .prefix("loadtest-tls-")
            .tempdir()
            .context("creating a directory for the certificate")?;
        let cert = Self {
            dir,
            pem: generated.cert.pem(),
        };
        std::fs::write(cert.cert_path(), &cert.pem).context("writing the certificate")?;
        std::fs::write(cert.key_path(), generated.signing_key.serialize_pem())
            .context("writing the key")?;
        Ok(cert)
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_targets_need_no_tls() {
        let clients = Clients::new(&["http://127.0.0.1:1".into()], &[]).expect("clients");
        assert!(clients.tls.is_none());
        assert_eq!(clients.transport.scheme, "plain");
    }

    #[test]
    fn a_generated_certificate_is_trusted() {
        let cert = GeneratedCert::generate().expect("certificate");
        assert!(cert.cert_path().is_file() && cert.key_path().is_file());
        let clients = Clients::new(
            &["https://127.0.0.1:1".into()],
            &[("generated".into(), cert.pem.clone())],
        )
        .expect("clients");
        assert!(clients.tls.is_some());
        assert_eq!(clients.transport.scheme, "tls");
        assert_eq!(clients.transport.trust, "generated");
    }

    #[test]
    fn mixed_schemes_are_refused() {
        let urls = ["http://a:1".to_string(), "https://b:2".to_string()];
        assert!(Clients::new(&urls, &[]).is_err());
        assert!(client_config(&[("empty".into(), String::new())]).is_err());
    }
}
