//! Process limits: enough file descriptors for every socket of the run (the local
//! server inherits the raised limit too).

use serde::Serialize;

use rlimit::Resource;

/// The open-files limit before and after raising it.
#[derive(Clone, Debug, Serialize)]
pub struct FdLimit {
    pub before: u64,
    pub after: u64,
    pub hard: u64,
    pub needed: u64,
    /// Why it could not be raised far enough, if it could not.
    pub problem: Option<String>,
}

/// Raises RLIMIT_NOFILE as far as allowed: the soft limit to the hard one, and the
/// hard one too where the process may (root), up to `fs.nr_open`.
pub fn raise_nofile(needed: u64) -> FdLimit {
    let (before, hard) = Resource::NOFILE.get().unwrap_or((0, 0));
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(1 << 20);
    let wanted = needed.max(65_536).min(nr_open);
    let mut problem = None;
    if before < wanted {
        let result = if hard >= wanted {
            Resource::NOFILE.set(wanted, hard)
        } else {
            // Raising the hard limit needs privileges; without them take the hard one.
            Resource::NOFILE
                .set(wanted, wanted)
                .or_else(|_| Resource::NOFILE.set(hard, hard))
        };
        if let Err(e) = result {
            problem = Some(format!("could not raise the open-files limit: {e}"));
        }
    }
    let (after, hard_after) = Resource::NOFILE.get().unwrap_or((before, hard));
    if after < needed && problem.is_none() {
        problem = Some(format!(
            "open-files limit is {after} (hard {hard_after}) but the run needs about {needed}: \
             raise it (ulimit -n) or run fewer users"
        ));
    }
    FdLimit {
        before,
        after,
        hard: hard_after,
        needed,
        problem,
    }
}
