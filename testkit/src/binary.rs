//! Finding the `chat-server` binary, building it first when asked.
//!
//! Crates other than the server's cannot use `CARGO_BIN_EXE_chat-server`, so the
//! binary is built with `cargo build -p chat-server --bin chat-server` in the
//! workspace, with the profile and target directory asked for, once per process.
//! `CHAT_SERVER_BIN=/path/to/chat-server` skips the build everywhere.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context};

/// Which build of the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Profile {
    Debug,
    Release,
    /// The profile of the running executable (a test binary built in release gets
    /// the release server).
    Current,
}

impl Profile {
    fn resolve(self) -> Self {
        match self {
            Self::Current => {
                let exe = std::env::current_exe().unwrap_or_default();
                if exe.components().any(|c| c.as_os_str() == "release") {
                    Self::Release
                } else {
                    Self::Debug
                }
            }
            other => other,
        }
    }

    fn dir(self) -> &'static str {
        match self.resolve() {
            Self::Release => "release",
            _ => "debug",
        }
    }
}

static BUILT: Mutex<Option<HashMap<&'static str, Result<PathBuf, String>>>> = Mutex::new(None);

/// The binary of `profile`: `CHAT_SERVER_BIN` if set, else built (or brought up to
/// date) with cargo, once per process and profile.
pub fn server_binary(profile: Profile) -> anyhow::Result<PathBuf> {
    if let Some(explicit) = std::env::var_os("CHAT_SERVER_BIN") {
        let path = PathBuf::from(explicit);
        if !path.is_file() {
            bail!("CHAT_SERVER_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built
        .get_or_insert_with(HashMap::new)
        .entry(profile.dir())
        .or_insert_with(|| build(profile).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("cannot provide the chat-server binary: {e}"))
}

/// The binary of `profile` where cargo puts it, without building.
pub fn built_binary(profile: Profile) -> PathBuf {
    target_dir().join(profile.dir()).join("chat-server")
}

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` (relative to the workspace when
/// relative), else the workspace's `target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

fn build(profile: Profile) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "-p", "chat-server", "--bin", "chat-server"])
        .arg("--target-dir")
        .arg(target_dir())
        .stdout(Stdio::null());
    if profile.resolve() == Profile::Release {
        cmd.arg("--release");
    }
    let output = cmd.output().context("running cargo build -p chat-server")?;
    if !output.status.success() {
        bail!(
            "cargo build -p chat-server failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let binary = built_binary(profile);
    if !binary.is_file() {
        bail!(
            "no chat-server binary at {} after building",
            binary.display()
        );
    }
    Ok(binary)
}
