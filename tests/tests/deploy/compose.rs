//! docker-compose.yml: the compose specification's schema, and settings that hang
//! together (nodes, nginx, the trusted proxy, grace periods).

use super::*;

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
