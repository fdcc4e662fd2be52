//! The Kubernetes manifests: `kubernetes-validate --strict`, and what the Deployment,
//! Service, PodDisruptionBudget, Secret and ConfigMap must say to each other.

use super::*;

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
