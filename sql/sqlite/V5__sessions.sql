-- Sessions: one per login (a device). Access tokens name their session (`sid`) and
-- stop working when it ends; refresh tokens name it and its generation, which each
-- refresh moves on by one, so a refresh token used twice (an older generation) is
-- recognised and ends the session. Rows are kept a while after they end, so every
-- node that starts can learn which recent sessions ended.

CREATE TABLE sessions (
    id           TEXT    NOT NULL PRIMARY KEY,
    user_id      TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    generation   INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER NOT NULL,
    -- When its refresh token stops working if not used (each refresh moves it on).
    expires_at   INTEGER NOT NULL,
    ended_at     INTEGER,
    user_agent   TEXT
) STRICT;

CREATE INDEX sessions_user_id_idx ON sessions (user_id, created_at);
CREATE INDEX sessions_ended_at_idx ON sessions (ended_at) WHERE ended_at IS NOT NULL;

-- Tokens without a session (signed with the key elsewhere, as the original
-- application did) issued before this time are refused: a password change or a
-- logout everywhere ends them too. A deleted account's row keeps it far in the future.
ALTER TABLE users ADD COLUMN tokens_not_before INTEGER;
CREATE INDEX users_tokens_not_before_idx ON users (tokens_not_before)
    WHERE tokens_not_before IS NOT NULL;

-- Deleted accounts: the row stays (their messages keep a sender) under a name no one
-- can register, with no password; `erase_pending` asks the purge to erase their
-- messages, walking the messages table a bounded chunk at a time; `erase_after` is
-- the last message it looked at.
ALTER TABLE users ADD COLUMN deleted_at INTEGER;
ALTER TABLE users ADD COLUMN erase_pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN erase_after TEXT;
CREATE INDEX users_erase_pending_idx ON users (id) WHERE erase_pending;

-- No index by sender: it would cost every message a write into a random place of
-- one more index (measured: twice the ack latency at 5,000 messages/s on SQLite),
-- for the sake of rare exports and erasures. Those walk the messages table in id
-- order, a bounded chunk at a time.

-- Finding people by the start of their name, whatever its case: a prefix is a range
-- of the index.
CREATE INDEX users_username_prefix_idx ON users (lower(username), username)
    WHERE deleted_at IS NULL;
