//! deploy/: what production hosts run the server with. Each artifact is checked by the
//! tool that knows its format (hadolint, the compose specification's schema,
//! kubernetes-validate, systemd-analyze), every setting it passes is one the server
//! has (`chat-server --help`), the dashboard asks only for series the server exposes,
//! and nginx runs for real in front of a two-node cluster. Tools missing on the machine
//! are installed by the tests (PyPI into virtual environments, Debian packages with
//! apt-get). Every test has its own servers, ports and directories.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::{server_binary, Profile};
use tests::cluster::{ClusterOptions, TestCluster};
use tests::nginx::{Nginx, ACCESS_LOG, ERROR_LOG};
use tests::prelude::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn deploy(path: &str) -> PathBuf {
    testkit::binary::workspace_root().join("deploy").join(path)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Runs `cmd`; its stdout and stderr when it exits 0, else an error with both.
fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {what}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n{text}",
        out.status
    );
    Ok(text)
}

/// `chat-server --help`, whitespace collapsed (clap wraps long lines).
fn server_help() -> anyhow::Result<String> {
    let binary = server_binary(Profile::Current)?;
    let help = run(
        Command::new(binary).arg("--help").env_clear(),
        "chat-server --help",
    )?;
    Ok(help.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Every environment variable the server reads: its flags' (`[env: NAME=...]` in
/// `--help`) and `RUST_LOG`.
fn server_env_vars(help: &str) -> BTreeSet<String> {
    let mut vars: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    vars.insert("RUST_LOG".into());
    vars
}

/// The default of `flag` as `--help` prints it.
fn server_default(help: &str, flag: &str) -> anyhow::Result<String> {
    let at = help
        .find(&format!("{flag} <"))
        .with_context(|| format!("no {flag} in --help"))?;
    let rest = &help[at..];
    let next_flag = rest[2..].find(" --").map_or(rest.len(), |i| i + 2);
    let section = &rest[..next_flag];
    let default = section
        .split("[default: ")
        .nth(1)
        .and_then(|d| d.split(']').next())
        .with_context(|| format!("no default for {flag} in {section:?}"))?;
    Ok(default.to_string())
}

fn default_seconds(help: &str, flag: &str) -> anyhow::Result<f64> {
    let value = server_default(help, flag)?;
    value
        .parse()
        .with_context(|| format!("{flag} default {value:?} is not seconds"))
}

/// `20s`, `1m30s`, `30` (seconds).
fn duration_seconds(s: &str) -> anyhow::Result<f64> {
    let s = s.trim();
    let (mut total, mut number) = (0.0, String::new());
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' {
            number.push(c);
            continue;
        }
        let n: f64 = number.parse().with_context(|| format!("duration {s:?}"))?;
        number.clear();
        total += n * match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            _ => bail!("duration {s:?}: unit {c:?}"),
        };
    }
    if !number.is_empty() {
        total += number.parse::<f64>()?;
    }
    Ok(total)
}

fn ensure_known(vars: &BTreeSet<String>, keys: &[String], whose: &str) -> anyhow::Result<()> {
    let unknown: Vec<&String> = keys.iter().filter(|k| !vars.contains(*k)).collect();
    ensure!(
        unknown.is_empty(),
        "{whose} sets {unknown:?}, which the server does not read (chat-server --help)"
    );
    Ok(())
}

/// Every document of a YAML file as JSON (PyYAML does the parsing).
fn yaml_documents(path: &Path) -> anyhow::Result<Vec<Value>> {
    let python = tests::python::python_with("yaml", "PyYAML")?;
    let out = run(
        Command::new(python)
            .arg("-c")
            .arg(
                "import json, sys, yaml\n\
             docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]\n\
             sys.stdout.write(json.dumps(docs))",
            )
            .arg(path)
            .stderr(Stdio::inherit()),
        "reading YAML",
    )?;
    serde_json::from_str(&out).with_context(|| format!("YAML of {}", path.display()))
}

fn object_keys(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

mod compose;
mod grafana;
mod image;
mod kubernetes;
mod nginx;
mod systemd;
