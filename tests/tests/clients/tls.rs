//! TLS termination (`--tls-cert` / `--tls-key`): the same port serves `https://` and
//! `wss://` on both I/O drivers, TLS 1.2 and 1.3 with ALPN `http/1.1`, to our own
//! rustls clients and to the system's `curl` and `openssl s_client`; a bad or stalled
//! handshake costs its connection, never the shard; SIGHUP swaps the certificate for
//! new handshakes while established connections carry on; `--production` refuses plain
//! HTTP on a public address.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tests::prelude::*;
use tests::realtime::group;
use tests::WsClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A self-signed certificate for `localhost` and `127.0.0.1`, written where the
/// server reads it.
struct Certificate {
    pem: String,
}

impl Certificate {
    fn generate() -> anyhow::Result<(Self, String)> {
        let generated =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
        Ok((
            Certificate {
                pem: generated.cert.pem(),
            },
            generated.signing_key.serialize_pem(),
        ))
    }

    /// A client configuration trusting this certificate only, speaking `version`s.
    fn client(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(self.pem.as_bytes())?)?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn client_any_version(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        self.client(rustls::ALL_VERSIONS)
    }

    /// The REST client of the test kit, over https, trusting this certificate only.
    fn api(&self, base: &str) -> anyhow::Result<Api> {
        let cert = reqwest::Certificate::from_pem(self.pem.as_bytes())?;
        Ok(Api::with_client(
            base,
            reqwest::Client::builder().tls_certs_only([cert]),
        ))
    }
}

/// Certificate and key files a server is started with; replaced in place for reloads.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> anyhow::Result<Self> {
        Ok(Files {
            dir: tempfile::Builder::new().prefix("chat-tls-").tempdir()?,
        })
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Writes both files, each renamed into place so no reader sees half of one.
    fn write(&self, cert: &str, key: &str) -> anyhow::Result<()> {
        for (path, text) in [(self.cert(), cert), (self.key(), key)] {
            let partial = path.with_extension("partial");
            std::fs::write(&partial, text)?;
            std::fs::rename(&partial, &path)?;
        }
        Ok(())
    }
}

async fn start(files: &Files, io_driver: IoDriver, shards: usize) -> anyhow::Result<TestServer> {
    let opts = ServerOptions::new(Store::Sqlite, io_driver)
        .shards(shards)
        .arg("--tls-cert")
        .arg(files.cert().display().to_string())
        .arg("--tls-key")
        .arg(files.key().display().to_string());
    let srv = TestServer::start(opts).await?;
    ensure!(
        srv.base_url().starts_with("https://"),
        "a TLS server announced {}",
        srv.base_url()
    );
    Ok(srv)
}

fn port(srv: &TestServer) -> anyhow::Result<u16> {
    let port = srv.base_url().rsplit(':').next().context("no port")?;
    Ok(port.parse()?)
}

/// One TLS connection with `config`: the negotiated version and ALPN, and the reply
/// to `GET /health`.
async fn health_over(
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<(rustls::ProtocolVersion, Option<Vec<u8>>, String)> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let mut tls = tokio::time::timeout(
        Duration::from_secs(20),
        connector.connect(ServerName::try_from("localhost")?, tcp),
    )
    .await
    .context("handshake timed out")??;
    let (version, alpn) = {
        let (_, session) = tls.get_ref();
        (
            session.protocol_version().context("no version")?,
            session.alpn_protocol().map(<[u8]>::to_vec),
        )
    };
    tls.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await?;
    let mut reply = Vec::new();
    // A peer may end TLS without close_notify; what arrived before is the reply.
    let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut reply)).await;
    Ok((version, alpn, String::from_utf8_lossy(&reply).into_owned()))
}

/// REST and WebSocket chat over TLS, and both protocol versions with ALPN.
async fn chat_over_tls(io_driver: IoDriver) -> anyhow::Result<()> {
    let (certificate, key) = Certificate::generate()?;
    let files = Files::new()?;
    files.write(&certificate.pem, &key)?;
    let srv = start(&files, io_driver, 2).await?;
    let api = certificate.api(srv.base_url())?;
    let ([alice, bob], conv) = group(&api, &["tls-a", "tls-b"]).await?;
    let tls = certificate.client_any_version()?;
    let url = |token: &str| tests::ws::ws_url(&srv.ws_base_url(), &conv, token);
    let mut a = WsClient::connect_url_with(&url(&alice.token), Some(Arc::clone(&tls))).await?;
    let mut b = WsClient::connect_url_with(&url(&bob.token), Some(tls)).await?;
    let sent = a.send_message("over wss").await?;
    let heard = b
        .wait_for("the message over wss", |e| {
            e["type"] == "message" && e["content"] == "over wss"
        })
        .await?;
    ensure!(
        heard["message_id"] == sent["message_id"],
        "bob heard {heard}, alice's ack was {sent}"
    );
    let history = api.history_list(&bob, &conv, "").await?;
    ensure!(
        history.iter().any(|m| m["content"] == "over wss"),
        "not in history: {history:?}"
    );

    let port = port(&srv)?;
    for (version, name) in [
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let (negotiated, alpn, reply) = health_over(port, certificate.client(&[version])?).await?;
        ensure!(negotiated == name, "asked {name:?}, got {negotiated:?}");
        ensure!(
            alpn.as_deref() == Some(b"http/1.1".as_slice()),
            "ALPN {alpn:?}"
        );
        ensure!(reply.starts_with("HTTP/1.1 200"), "{name:?}: {reply}");
    }
    Ok(())
}

#[tokio::test]
async fn chat_over_tls_uring() -> anyhow::Result<()> {
    chat_over_tls(IoDriver::Uring).await
}

#[tokio::test]
async fn chat_over_tls_epoll() -> anyhow::Result<()> {
    chat_over_tls(IoDriver::Epoll).await
}

/// Clients nobody here wrote: curl for REST, openssl s_client for each version.
#[tokio::test]
async fn system_clients_speak_to_it() -> anyhow::Result<()> {
    let (certificate, key) = Certificate::generate()?;
    let files = Files::new()?;
    files.write(&certificate.pem, &key)?;
    let srv = start(&files, IoDriver::Uring, 1).await?;
    let port = port(&srv)?;
    let ca = files.dir.path().join("ca.pem");
    std::fs::write(&ca, &certificate.pem)?;

    let curl = Command::new("curl")
        .args(["-sS", "--fail", "--cacert"])
        .arg(&ca)
        .arg(format!("https://localhost:{port}/health"))
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .output()
        .context("running curl")?;
    ensure!(
        curl.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&curl.stderr)
    );
    ensure!(
        String::from_utf8_lossy(&curl.stdout).contains("ok"),
        "curl read {}",
        String::from_utf8_lossy(&curl.stdout)
    );

    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (stdout, stderr) = s_client(port, &ca, flag)?;
        for expected in [
            "HTTP/1.1 200",
            &format!("New, {version}, Cipher is"),
            "ALPN protocol: http/1.1",
            "Verify return code: 0 (ok)",
        ] {
            ensure!(
                stdout.contains(expected),
                "{flag}: no {expected:?} in\n{stdout}\n{stderr}"
            );
        }
    }
    Ok(())
}

/// `openssl s_client` asking for `GET /health` with `version_flag`: its stdout (the
/// session report and the reply) and stderr.
fn s_client(port: u16, ca: &Path, version_flag: &str) -> anyhow::Result<(String, String)> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-ign_eof", "-alpn", "http/1.1"])
        .arg(version_flag)
        .args(["-servername", "localhost", "-verify_return_error"])
        .arg("-CAfile")
        .arg(ca)
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running openssl s_client")?;
    // Closing stdin after the request: -ign_eof then waits for the server to close.
    let mut stdin = child.stdin.take().context("stdin")?;
    std::io::Write::write_all(
        &mut stdin,
        b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )?;
    drop(stdin);
    let out = child.wait_with_output()?;
    Ok((
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Plain HTTP, garbage, a truncated ClientHello left hanging and a client that
/// distrusts the certificate each lose their own connection; on the one shard they
/// share, a good client is served meanwhile.
#[tokio::test]
async fn bad_handshakes_cost_one_connection() -> anyhow::Result<()> {
    let (certificate, key) = Certificate::generate()?;
    let files = Files::new()?;
    files.write(&certificate.pem, &key)?;
    let mut srv = start(&files, IoDriver::Uring, 1).await?;
    let port = port(&srv)?;

    // A ClientHello's record header promising 512 bytes, then nothing more.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).await?;
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await?;

    for junk in [
        b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n".as_slice(),
        &[0xff; 64],
    ] {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(junk).await?;
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut reply))
            .await
            .context("the server kept a connection that is not TLS open")?
            .ok();
        ensure!(
            !String::from_utf8_lossy(&reply).contains("HTTP/1.1"),
            "answered plain HTTP on the TLS port: {reply:?}"
        );
    }

    let (stranger, _) = Certificate::generate()?;
    let refused = health_over(port, stranger.client_any_version()?).await;
    ensure!(
        refused.is_err(),
        "a client trusting another certificate connected: {refused:?}"
    );

    // The stalled handshake is still pending on the only shard.
    let (_, _, reply) = health_over(port, certificate.client_any_version()?).await?;
    ensure!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let api = certificate.api(srv.base_url())?;
    api.new_user("tls-after").await?;
    ensure!(srv.is_running(), "the server died");
    drop(stalled);
    Ok(())
}

/// SIGHUP: new handshakes get the new certificate, an open WebSocket keeps working,
/// and a broken replacement is refused while the certificate in use stays.
#[tokio::test]
async fn sighup_reloads_the_certificate() -> anyhow::Result<()> {
    let (first, first_key) = Certificate::generate()?;
    let (second, second_key) = Certificate::generate()?;
    let files = Files::new()?;
    files.write(&first.pem, &first_key)?;
    let srv = start(&files, IoDriver::Uring, 2).await?;
    let port = port(&srv)?;
    let api = first.api(srv.base_url())?;
    let ([alice, bob], conv) = group(&api, &["hup-a", "hup-b"]).await?;
    let url = |token: &str| tests::ws::ws_url(&srv.ws_base_url(), &conv, token);
    let mut open =
        WsClient::connect_url_with(&url(&alice.token), Some(first.client_any_version()?)).await?;

    files.write(&second.pem, &second_key)?;
    hangup(&srv)?;
    wait_for_log(&srv, "TLS certificate reloaded").await?;
    let (_, _, reply) = health_over(port, second.client_any_version()?).await?;
    ensure!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    ensure!(
        health_over(port, first.client_any_version()?)
            .await
            .is_err(),
        "new handshakes still get the old certificate"
    );
    // The connection made before the reload carries on.
    let mut later =
        WsClient::connect_url_with(&url(&bob.token), Some(second.client_any_version()?)).await?;
    open.send_message("still here").await?;
    later
        .wait_for("the message from before the reload", |e| {
            e["type"] == "message" && e["content"] == "still here"
        })
        .await?;

    // A key that does not match the certificate: refused, the second one stays.
    let (_, stray_key) = Certificate::generate()?;
    files.write(&first.pem, &stray_key)?;
    hangup(&srv)?;
    wait_for_log(&srv, "TLS reload failed").await?;
    let (_, _, reply) = health_over(port, second.client_any_version()?).await?;
    ensure!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    Ok(())
}

fn hangup(srv: &TestServer) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-HUP", &srv.pid()?.to_string()])
        .status()?;
    ensure!(status.success(), "kill -HUP failed");
    Ok(())
}

/// Waits until the server has logged `line` (signals are handled asynchronously).
async fn wait_for_log(srv: &TestServer, line: &str) -> anyhow::Result<()> {
    for _ in 0..200 {
        if srv.stderr_contents().contains(line) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("never logged {line:?}:\n{}", srv.stderr_tail(4000))
}

/// `--production` will not serve plain HTTP on a public address.
#[tokio::test]
async fn production_refuses_plain_http_on_a_public_address() -> anyhow::Result<()> {
    let binary = testkit::binary::server_binary(testkit::binary::Profile::Current)?;
    let data = tempfile::tempdir()?;
    let out = Command::new(binary)
        .args(["--production", "--listen", "0.0.0.0:0", "--secret-key"])
        .arg("k".repeat(64))
        .arg("--data-dir")
        .arg(data.path())
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "started: {stderr}");
    ensure!(
        stderr.contains("--production refuses plain HTTP on 0.0.0.0:0"),
        "{stderr}"
    );
    Ok(())
}
