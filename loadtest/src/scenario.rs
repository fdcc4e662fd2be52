//! The scenarios beyond the default groups, as flags flattened into [`crate::Config`]:
//! one big room (`--room-size`: every user in one conversation, their sockets
//! connecting at once, optionally all reconnecting at once), hostile clients beside
//! the normal users (`--hostile`), and user streams (`--user-stream`: one socket per
//! user carrying all its conversations, with the read markers checked at the end). It
//! owns the flags and their checks only: the storms are run by `storm`, the hostile
//! clients by `hostile`, the user streams by `ws` and their markers by `markers`, and
//! it never touches a run.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use crate::Config;

/// Hostile clients are never more than this many per kind: they are there to prove a
/// point, not to load the machine.
pub const MAX_HOSTILE: usize = 64;

/// Most conversations per user with one socket each: a node allows a user 32 sockets
/// (`--ws-max-per-user`), and a reconnecting socket may still be counted there while
/// its successor opens.
pub const MAX_CONVERSATION_SOCKETS: usize = 16;

#[derive(Clone, Debug, Args)]
pub struct Scenario {
    /// One conversation of N members instead of groups: N users (this overrides
    /// --users, --group-size and --conversations-per-user) register, join the room
    /// over REST, then all their sockets connect at once (the join storm), which the
    /// report times and measures (bytes received, own `joined` events, closes).
    #[arg(long, env = "LOADTEST_ROOM_SIZE", help_heading = "Scenarios")]
    pub room_size: Option<usize>,

    /// With --room-size: once the join storm has settled, every member closes its
    /// socket and reconnects at once, resuming with its last `since` (the reconnect
    /// storm), before the chat starts.
    #[arg(long, env = "LOADTEST_RECONNECT_STORM", help_heading = "Scenarios")]
    pub reconnect_storm: bool,

    /// Seconds a socket may take to connect and to receive its own `joined` event
    /// before it counts as failed (a storm of thousands of sockets may need more than
    /// the default).
    #[arg(
        long,
        env = "LOADTEST_JOIN_TIMEOUT",
        default_value_t = 15.0,
        help_heading = "Scenarios"
    )]
    pub join_timeout: f64,

    /// Hostile clients of each kind beside the normal users during the measured time:
    /// slow readers (never read their socket), stalled request bodies, floods of
    /// events beyond the rate limit, and oversized fields (a 1 MB username, a
    /// 6,000-character message, a frame over the server's limit, a participant list
    /// filling the body limit). What they got is reported; being refused is their
    /// point and never fails the run. A local server then gets the real per-user rate
    /// limit (--server-rate-limit) instead of a generous one.
    #[arg(
        long,
        env = "LOADTEST_HOSTILE",
        default_value_t = 0,
        help_heading = "Scenarios"
    )]
    pub hostile: usize,

    /// Each user opens one user stream (GET /api/chat/ws) carrying all its
    /// conversations instead of one socket per conversation: the same messages at the
    /// same rate, spread over its conversations, and the same checks (each
    /// conversation's positions once and in order, exactly once, lost = 0); a
    /// reconnect resumes every conversation at once. At the end, with sending stopped,
    /// each user's unread counts (REST) are checked against the messages of others it
    /// saw, then its read markers are moved to the last position seen and checked.
    /// Allows --conversations-per-user up to 64; not with --room-size.
    #[arg(long, env = "LOADTEST_USER_STREAM", help_heading = "Scenarios")]
    pub user_stream: bool,
}

impl Scenario {
    /// Whether the run is one big room.
    pub fn room(&self) -> bool {
        self.room_size.is_some()
    }

    /// How long a socket may take to connect and to be told it joined.
    pub fn join_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.join_timeout)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(n) = self.room_size {
            if n < 2 {
                bail!("--room-size must be at least 2");
            }
        }
        if self.reconnect_storm && !self.room() {
            bail!("--reconnect-storm needs --room-size");
        }
        if !(self.join_timeout.is_finite() && self.join_timeout >= 1.0) {
            bail!("--join-timeout must be at least 1 second");
        }
        if self.hostile > MAX_HOSTILE {
            bail!("--hostile is at most {MAX_HOSTILE} clients of each kind");
        }
        Ok(())
    }
}

/// The shape of the run's conversations, as the scenario decides it.
impl Config {
    /// Members of each conversation: the whole room, or `--group-size`.
    pub fn group_members(&self) -> usize {
        self.scenario
            .room_size
            .unwrap_or(usize::from(self.group_size))
    }

    /// Conversations per user: one room, or `--conversations-per-user`.
    pub fn layers(&self) -> usize {
        if self.scenario.room() {
            1
        } else {
            usize::from(self.conversations_per_user)
        }
    }

    /// WebSockets per user: its one user stream, or one per conversation.
    pub fn sockets_per_user(&self) -> usize {
        if self.scenario.user_stream {
            1
        } else {
            self.layers()
        }
    }

    /// The scenario's checks, and those that involve the rest of the configuration.
    pub(crate) fn validate_scenario(&self) -> anyhow::Result<()> {
        self.scenario.validate()?;
        if self.scenario.user_stream && self.scenario.room() {
            bail!("--user-stream carries several conversations per user on one socket; --room-size puts every user in one conversation (run the room with conversation sockets)");
        }
        if !self.scenario.user_stream && self.layers() > MAX_CONVERSATION_SOCKETS {
            bail!(
                "--conversations-per-user above {MAX_CONVERSATION_SOCKETS} needs --user-stream: with one socket per conversation a user would pass the server's 32 sockets per user (--ws-max-per-user) while reconnecting"
            );
        }
        if self.scenario.hostile > 0
            && self.events_per_user(self.message_rate) > self.server_rate_limit * 0.9
        {
            bail!("--hostile gives the server its real rate limit (--server-rate-limit): keep --message-rate under it");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_USERS;

    #[test]
    fn a_room_is_one_conversation_of_everyone() {
        let c =
            Config::try_from_iter(["loadtest", "--room-size", "300", "-u", "5"]).expect("parses");
        c.validate().expect("valid");
        assert_eq!((c.users(), c.group_members(), c.layers()), (300, 300, 1));
        assert_eq!(c.connections(), 300);
        let storm = Config::try_from_iter(["loadtest", "--reconnect-storm"]).expect("parses");
        assert!(storm.validate().is_err(), "a reconnect storm needs a room");
        let hostile = Config::try_from_iter(["loadtest", "--hostile", "2", "--message-rate", "30"])
            .expect("parses");
        assert!(
            hostile.validate().is_err(),
            "normal users must stay under the real limit"
        );
    }

    #[test]
    fn a_user_stream_carries_every_conversation_of_its_user() {
        let c = Config::try_from_iter([
            "loadtest",
            "--user-stream",
            "--conversations-per-user",
            "64",
            "-u",
            "100",
        ])
        .expect("parses");
        c.validate().expect("valid");
        assert_eq!((c.layers(), c.sockets_per_user()), (64, 1));
        assert_eq!(c.connections(), 100);
        let sockets =
            Config::try_from_iter(["loadtest", "--conversations-per-user", "20"]).expect("parses");
        assert!(
            sockets.validate().is_err(),
            "20 sockets per user need the user stream"
        );
        let plain =
            Config::try_from_iter(["loadtest", "--conversations-per-user", "16"]).expect("parses");
        plain.validate().expect("16 sockets per user are fine");
        assert_eq!(plain.connections(), 16 * DEFAULT_USERS);
        let room = Config::try_from_iter(["loadtest", "--user-stream", "--room-size", "30"])
            .expect("parses");
        assert!(room.validate().is_err(), "a room is one conversation");
        let too_many = Config::try_from_iter([
            "loadtest",
            "--user-stream",
            "--conversations-per-user",
            "65",
        ]);
        assert!(too_many.is_err(), "64 at most");
        let hostile =
            Config::try_from_iter(["loadtest", "--user-stream", "--hostile", "1"]).expect("parses");
        hostile
            .validate()
            .expect("hostile clients beside user streams");
    }
}
