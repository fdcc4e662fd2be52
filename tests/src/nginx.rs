//! A real nginx for end-to-end tests of the reverse proxy in front of the nodes:
//! Debian's package (installed when missing), run in the foreground as the test's
//! user with a configuration, pid file, temporary files and logs in a directory of its
//! own, on a free port. Dropping it stops nginx (master and workers).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

const CANDIDATES: [&str; 2] = ["/usr/sbin/nginx", "/usr/bin/nginx"];
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// File names in [`Nginx::dir`] a configuration should log to.
pub const ERROR_LOG: &str = "error.log";
pub const ACCESS_LOG: &str = "access.log";

static NGINX: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The nginx binary, installed from the distribution's packages if need be.
pub fn nginx() -> anyhow::Result<PathBuf> {
    NGINX
        .get_or_init(|| {
            crate::apt::provide("nginx", || {
                CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file())
            })
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("no nginx: {e}"))
}

/// A running nginx.
pub struct Nginx {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nginx {
    /// Writes the configuration `render(dir, port)` returns (`dir` is nginx's own
    /// directory, `port` a free one to listen on), checks it with `nginx -t`, starts
    /// nginx on it and waits until the port accepts connections.
    pub async fn start(render: impl Fn(&Path, u16) -> String) -> anyhow::Result<Self> {
        let binary = nginx()?;
        let mut last = None;
        // The free port may be taken by someone else before nginx binds it: try again.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("chat-nginx-")
                .tempdir()
                .context("nginx directory")?;
            // Workers started by a root master run as nobody: let them in.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
            }
            let port = free_port()?;
            let config = dir.path().join("nginx.conf");
            std::fs::write(&config, render(dir.path(), port)).context("writing nginx.conf")?;
            let error_log = dir.path().join(ERROR_LOG);
            let check = std::process::Command::new(&binary)
                .arg("-t")
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(&error_log)
                .output()
                .context("running nginx -t")?;
            if !check.status.success() {
                bail!(
                    "nginx -t refused the configuration:\n{}\n--- nginx.conf ---\n{}",
                    String::from_utf8_lossy(&check.stderr),
                    std::fs::read_to_string(&config).unwrap_or_default()
                );
            }
            let child = tokio::process::Command::new(&binary)
                .arg("-c")
                .arg(&config)
                .arg("-e")
                .arg(&error_log)
                .args(["-g", "daemon off;"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting nginx")?;
            let mut nginx = Self { child, dir, port };
            match nginx.wait_listening().await {
                Ok(()) => return Ok(nginx),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("nginx did not start")))
    }

    async fn wait_listening(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("nginx exited ({status}): {}", self.error_log());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                bail!(
                    "nginx did not listen on {} within {START_TIMEOUT:?}: {}",
                    self.port,
                    self.error_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn ws_base_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// nginx's directory: its configuration, pid file, temporary files and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// What nginx wrote to [`ERROR_LOG`] so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(ERROR_LOG)).unwrap_or_default()
    }

    /// What nginx wrote to [`ACCESS_LOG`] so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(ACCESS_LOG)).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (a SIGKILL would leave them serving).
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.start_kill();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}
