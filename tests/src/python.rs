//! The quick-start guide's Python client, run by a real CPython with the real
//! `websockets` library. The interpreter is the machine's `python3`; `websockets` is
//! used from it when importable, otherwise installed from PyPI once into a virtual
//! environment under the system temporary directory (shared by later runs).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{bail, Context};

static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// A Python interpreter that can `import websockets`.
pub fn python_with_websockets() -> anyhow::Result<PathBuf> {
    PYTHON
        .get_or_init(|| provide().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("no Python with websockets: {e}"))
}

fn imports_websockets(python: &std::path::Path) -> bool {
    Command::new(python)
        .args(["-c", "import websockets"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn provide() -> anyhow::Result<PathBuf> {
    let system = PathBuf::from("python3");
    if imports_websockets(&system) {
        return Ok(system);
    }
    let venv = std::env::temp_dir().join("chat-server-tests-python");
    let python = venv.join("bin").join("python");
    if imports_websockets(&python) {
        return Ok(python);
    }
    let run = |cmd: &mut Command, what: &str| -> anyhow::Result<()> {
        let out = cmd.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    run(
        Command::new(&system).args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "websockets",
        ]),
        "pip install websockets",
    )?;
    Ok(python)
}

/// Runs `script` with `args`; returns its stdout, or fails with its stderr.
pub async fn run_script(script: &str, args: &[String]) -> anyhow::Result<String> {
    let python = python_with_websockets()?;
    let out = tokio::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .context("running python")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "python exited with {}:\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}
