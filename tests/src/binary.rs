//! Locating (and building on first use) the real `chat-server` binary.
//!
//! The tests crate cannot use `CARGO_BIN_EXE_chat-server` (that only exists for the
//! package that owns the binary), so the first test that needs the binary runs
//! `cargo build -p chat-server --bin chat-server` with the same profile and target
//! directory as the running test executable, then uses the binary from there.
//! `CHAT_SERVER_BIN=/path/to/chat-server` skips the build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context};

static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Path of the `chat-server` binary, built once per test process.
pub fn server_binary() -> anyhow::Result<PathBuf> {
    BINARY
        .get_or_init(|| locate_or_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("cannot provide the chat-server binary: {e}"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

fn locate_or_build() -> anyhow::Result<PathBuf> {
    if let Some(explicit) = std::env::var_os("CHAT_SERVER_BIN") {
        let path = PathBuf::from(explicit);
        if !path.is_file() {
            bail!("CHAT_SERVER_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }

    // The test executable lives in <target>/<profile>/deps/<name>-<hash>.
    let exe = std::env::current_exe().context("current_exe")?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable is not inside <target>/<profile>/deps")?
        .to_path_buf();
    let release = exe.to_string_lossy().contains("/release/");
    let target_dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => profile_dir
            .parent()
            .context("profile directory has no parent")?
            .to_path_buf(),
    };

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "-p", "chat-server", "--bin", "chat-server"])
        .arg("--target-dir")
        .arg(&target_dir);
    if release {
        cmd.arg("--release");
    }
    let output = cmd
        .output()
        .context("running cargo build for chat-server")?;
    if !output.status.success() {
        bail!(
            "cargo build -p chat-server failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let profile = if release { "release" } else { "debug" };
    let candidates = [
        target_dir.join(profile).join("chat-server"),
        profile_dir.join("chat-server"),
    ];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .with_context(|| format!("chat-server binary not found at {candidates:?} after building"))
}
