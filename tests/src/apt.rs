//! Debian packages the tests need (Chromium, nginx, systemd's tools), installed with
//! `apt-get install -y` when missing, so a fresh machine's test command still passes.
//! That needs root and the Debian package mirror. Installs in one process take turns,
//! and apt-get waits for another process's lock instead of failing.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::bail;

static APT: Mutex<()> = Mutex::new(());

/// What `find` finds, after installing `package` if it found nothing at first.
pub fn provide(package: &str, find: impl Fn() -> Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(found) = find() {
        return Ok(found);
    }
    let _turn = APT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(found) = find() {
        return Ok(found);
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    let install = || apt(&["install", "-y", "-q", package]).is_ok_and(|o| o.status.success());
    // A fresh machine may have no package lists yet: update once if the install fails.
    let installed =
        install() || (apt(&["update", "-q"]).is_ok_and(|o| o.status.success()) && install());
    match find() {
        Some(found) => Ok(found),
        None if installed => bail!("apt-get installed {package} but it is still not found"),
        None => bail!(
            "{package} is not installed and `apt-get install -y {package}` failed (needs root and the Debian package mirror)"
        ),
    }
}
