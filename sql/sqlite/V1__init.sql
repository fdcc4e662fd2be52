-- Initial schema of the embedded SQLite store.
--
-- Ids are lowercase hyphenated UUID text, which sorts like the UUID bytes, so
-- `ORDER BY id` on UUIDv7 message ids is commit order within a conversation.
-- Timestamps are INTEGER microseconds since the Unix epoch: exact, compact, and
-- compared as numbers.

CREATE TABLE users (
    id            TEXT    NOT NULL PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL
) STRICT;

CREATE TABLE conversations (
    id          TEXT    NOT NULL PRIMARY KEY,
    name        TEXT,
    description TEXT,
    is_group    INTEGER NOT NULL,
    created_by  TEXT    NOT NULL REFERENCES users (id),
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;

-- "My conversations, most recently active first": the participants index yields the
-- user's conversation ids, this one lets the planner walk conversations by activity
-- when a user is in many of them.
CREATE INDEX conversations_updated_at_idx ON conversations (updated_at DESC, id DESC);

CREATE TABLE participants (
    conversation_id TEXT    NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         TEXT    NOT NULL REFERENCES users (id),
    joined_at       INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
) STRICT, WITHOUT ROWID;

-- Covers the user -> conversations lookup without touching the table.
CREATE INDEX participants_user_id_idx ON participants (user_id, conversation_id);

CREATE TABLE messages (
    id              TEXT    NOT NULL PRIMARY KEY,
    conversation_id TEXT    NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    sender_id       TEXT    NOT NULL REFERENCES users (id),
    content         TEXT    NOT NULL,
    is_edited       INTEGER NOT NULL DEFAULT 0,
    deleted_at      INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;

CREATE INDEX messages_conversation_id_id_idx ON messages (conversation_id, id);

CREATE TABLE reactions (
    message_id TEXT    NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    TEXT    NOT NULL REFERENCES users (id),
    emoji      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
) STRICT, WITHOUT ROWID;
