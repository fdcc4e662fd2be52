//! The systemd unit: `systemd-analyze verify`, its hardening, and io_uring left allowed
//! by its system-call filter.

use super::*;

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
