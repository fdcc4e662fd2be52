//! One event budget per user across the cluster (`--ws-rate-per-second`, burst
//! `--ws-rate-burst`): a token bucket in Redis, refilled by Redis's own clock, from
//! which each shard leases a few tokens at a time. A shard spends its lease locally and
//! asks again only when it runs out, so Redis sees one call per lease, not per event.
//! What a shard holds and has not spent is the only slack: at most one lease per
//! shard the user is connected on.
//!
//! It never decides what to do without Redis; the registry falls back to its own
//! bucket then.

use redis::aio::ConnectionManager;
use redis::Script;

use crate::ids::UserId;

/// KEYS: the user's bucket. ARGV: tokens wanted, rate per second, burst. Returns the
/// tokens granted (0 when the bucket is empty).
const TAKE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, burst = tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000)
local grant = math.min(tonumber(ARGV[1]), math.floor(tokens))
tokens = tokens - grant
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return grant
"#;

pub struct Budget {
    prefix: String,
    script: Script,
    rate: f64,
    burst: f64,
    lease: u32,
}

impl Budget {
    pub fn new(prefix: &str, rate: f64, burst: f64) -> Self {
        Self {
            prefix: prefix.to_string(),
            script: Script::new(TAKE),
            rate,
            burst,
            lease: lease_size(rate, burst),
        }
    }

    /// Takes up to one lease from `user`'s bucket; the tokens granted.
    pub async fn take(
        &self,
        conn: &mut ConnectionManager,
        user: UserId,
    ) -> redis::RedisResult<u32> {
        self.script
            .key(format!("{}:rate:{user}", self.prefix))
            .arg(self.lease)
            .arg(self.rate)
            .arg(self.burst)
            .invoke_async(conn)
            .await
    }
}

/// A tenth of a second's worth of events, at least one and at most the burst: small
/// enough that the slack stays well under the burst, large enough that a busy user
/// costs Redis about ten calls a second.
fn lease_size(rate: f64, burst: f64) -> u32 {
    (rate / 10.0).min(burst).max(1.0) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_a_tenth_of_a_second_within_bounds() {
        assert_eq!(lease_size(20.0, 60.0), 2);
        assert_eq!(lease_size(1.0, 10.0), 1);
        assert_eq!(lease_size(100_000.0, 100_000.0), 10_000);
        assert_eq!(lease_size(1000.0, 5.0), 5);
    }
}
