//! What a process uses, read from `/proc`: CPU time, resident memory now and at peak,
//! threads. Linux only, like the server.

use anyhow::Context;

/// One reading of a process.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// User + system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// User CPU time, in seconds.
    pub user_seconds: f64,
    /// System (kernel) CPU time, in seconds.
    pub system_seconds: f64,
    /// Resident memory now (`VmRSS`), in KiB.
    pub rss_kib: u64,
    /// Peak resident memory (`VmHWM`), in KiB.
    pub peak_rss_kib: u64,
    pub threads: u64,
}

/// Reads `pid`'s usage.
pub fn usage(pid: u32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start after ") ".
    let rest = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .context("malformed /proc/PID/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("field {i} of /proc/{pid}/stat"))
    };
    // utime and stime are fields 14 and 15 of the whole line (11 and 12 here), in
    // USER_HZ: 100 per second on every common configuration.
    let (user, system) = (field(11)?, field(12)?);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Usage {
        cpu_seconds: (user + system) as f64 / 100.0,
        user_seconds: user as f64 / 100.0,
        system_seconds: system as f64 / 100.0,
        rss_kib: kib("VmRSS:"),
        peak_rss_kib: kib("VmHWM:"),
        threads: field(17)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_usage() {
        let u = usage(std::process::id()).expect("/proc is readable");
        assert!(u.threads >= 1);
        assert!(u.rss_kib > 0 && u.peak_rss_kib >= u.rss_kib);
    }
}
