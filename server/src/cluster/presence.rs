//! Presence across nodes, kept in Redis by scripts that run atomically there.
//!
//! - `{prefix}:nodes`: a sorted set of live nodes, scored by their last heartbeat
//!   (milliseconds of Redis's own clock, so nodes' clocks never matter).
//! - `{prefix}:presence:{conversation}`: a hash with one field `user/node` per user
//!   connected on a node, valued `arrival-ms|username`.
//! - `{prefix}:node:{node}:convs`: the conversations a node has presence in, so the
//!   node that finds it dead knows where to sweep.
//!
//! A field counts only while its node's heartbeat is younger than the node TTL, so a
//! killed node's users drop out of `active_users` within the TTL even before anyone
//! sweeps. `active_users` lists each live user once, in order of first arrival.
//!
//! This module owns the scripts and the key names; it never renders or delivers.

use redis::Script;

use crate::ids::{ConversationId, UserId};

/// Shared by every script: Redis's clock, and the live users of a presence hash.
const LIVE: &str = r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function live(key, nodes, self, cutoff)
  local all = redis.call('HGETALL', key)
  local alive, first = {}, {}
  for i = 1, #all, 2 do
    local user, node = string.match(all[i], '^([^/]+)/(.+)$')
    if user == nil then node = nil end
    local ok = node and alive[node]
    if node and ok == nil then
      if node == self then
        ok = true
      else
        local score = redis.call('ZSCORE', nodes, node)
        ok = score ~= false and tonumber(score) >= cutoff
      end
      alive[node] = ok
    end
    if ok then
      local value = all[i + 1]
      local sep = string.find(value, '|', 1, true)
      local at = tonumber(string.sub(value, 1, sep - 1))
      local cur = first[user]
      if cur == nil or at < cur then first[user] = at end
    end
  end
  local list = {}
  for user, at in pairs(first) do table.insert(list, {at, user}) end
  table.sort(list, function(a, b)
    if a[1] == b[1] then return a[2] < b[2] end
    return a[1] < b[1]
  end)
  local out = {}
  for _, v in ipairs(list) do table.insert(out, v[2]) end
  return out, first
end
"#;

/// KEYS: presence, nodes, node's conversations. ARGV: user, node, ttl ms,
/// conversation, username. Returns the live users.
const JOIN: &str = r#"
local now = now_ms()
redis.call('HSETNX', KEYS[1], ARGV[1] .. '/' .. ARGV[2], now .. '|' .. ARGV[5])
redis.call('SADD', KEYS[3], ARGV[4])
local users = live(KEYS[1], KEYS[2], ARGV[2], now - tonumber(ARGV[3]))
return users
"#;

/// KEYS: presence, nodes, node's conversations. ARGV: user, node, ttl ms,
/// conversation. Returns 1 when the user is still connected on another node, 0 when
/// not, then the live users.
const LEAVE: &str = r#"
local now = now_ms()
redis.call('HDEL', KEYS[1], ARGV[1] .. '/' .. ARGV[2])
local mine, suffix = false, '/' .. ARGV[2]
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, -#suffix) == suffix then mine = true break end
end
if not mine then redis.call('SREM', KEYS[3], ARGV[4]) end
local users, first = live(KEYS[1], KEYS[2], ARGV[2], now - tonumber(ARGV[3]))
local out = {first[ARGV[1]] ~= nil and 1 or 0}
for _, u in ipairs(users) do table.insert(out, u) end
return out
"#;

/// KEYS: presence, nodes. ARGV: the dead node, ttl ms, the sweeping node. Removes the
/// dead node's fields. Returns the number of live users, the live users, then pairs of
/// (user, username) for each user who has no field left on any node.
const SWEEP: &str = r#"
local now = now_ms()
local all = redis.call('HGETALL', KEYS[1])
local gone, suffix = {}, '/' .. ARGV[1]
for i = 1, #all, 2 do
  if string.sub(all[i], -#suffix) == suffix then
    redis.call('HDEL', KEYS[1], all[i])
    local user = string.match(all[i], '^([^/]+)/')
    local value = all[i + 1]
    gone[user] = string.sub(value, string.find(value, '|', 1, true) + 1)
  end
end
local users = live(KEYS[1], KEYS[2], ARGV[3], now - tonumber(ARGV[2]))
-- A user with a field left (even of another dead node, swept later) has not left yet.
local remaining = {}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  local user = string.match(field, '^([^/]+)/')
  if user then remaining[user] = true end
end
local out = {tostring(#users)}
for _, u in ipairs(users) do table.insert(out, u) end
for user, name in pairs(gone) do
  if not remaining[user] then
    table.insert(out, user)
    table.insert(out, name)
  end
end
return out
"#;

/// KEYS: nodes. ARGV: node, ttl ms. Records the heartbeat; returns 1 when the node
/// was not in the set (first beat, presumed dead, or Redis lost its data), then the
/// nodes whose heartbeat is older than the TTL.
const HEARTBEAT: &str = r#"
local now = now_ms()
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
local out = {added}
for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. (now - tonumber(ARGV[2])))) do
  table.insert(out, n)
end
return out
"#;

/// The scripts (loaded by hash, sent whole once per Redis that lacks them) and the
/// key names of one cluster.
pub struct Presence {
    prefix: String,
    pub join: Script,
    pub leave: Script,
    pub sweep: Script,
    pub heartbeat: Script,
}

impl Presence {
    pub fn new(prefix: &str) -> Self {
        let with_live = |body: &str| Script::new(&format!("{LIVE}{body}"));
        Self {
            prefix: prefix.to_string(),
            join: with_live(JOIN),
            leave: with_live(LEAVE),
            sweep: with_live(SWEEP),
            heartbeat: with_live(HEARTBEAT),
        }
    }

    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    pub fn presence(&self, conversation: ConversationId) -> String {
        format!("{}:presence:{conversation}", self.prefix)
    }

    pub fn node_conversations(&self, node: &str) -> String {
        format!("{}:node:{node}:convs", self.prefix)
    }

    /// The channel a conversation's live events travel on.
    pub fn channel(&self, conversation: ConversationId) -> String {
        format!("{}:conv:{conversation}", self.prefix)
    }

    /// The conversation of a channel name, if it is one of this cluster's.
    pub fn conversation_of(&self, channel: &[u8]) -> Option<ConversationId> {
        let rest = channel
            .strip_prefix(self.prefix.as_bytes())?
            .strip_prefix(b":conv:")?;
        std::str::from_utf8(rest).ok()?.parse().ok()
    }
}

/// The users a script listed, in its order; ids this server did not write are skipped.
pub fn users(ids: &[String]) -> Vec<UserId> {
    ids.iter().filter_map(|s| s.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_name_their_conversation_and_nothing_else() {
        let p = Presence::new("t1");
        let c = ConversationId::random();
        assert_eq!(p.conversation_of(p.channel(c).as_bytes()), Some(c));
        assert_eq!(
            Presence::new("t2").conversation_of(p.channel(c).as_bytes()),
            None
        );
        assert_eq!(p.conversation_of(b"t1:conv:nope"), None);
    }
}
