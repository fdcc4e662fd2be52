-- Initial schema of the PostgreSQL store.
--
-- Message ids are UUIDv7 assigned by the conversation's home shard, so within a
-- conversation `ORDER BY id` is commit order and history pages walk
-- messages (conversation_id, id) without a sort.

CREATE TABLE users (
    id            uuid        PRIMARY KEY,
    username      text        NOT NULL,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username)
);

CREATE TABLE conversations (
    id          uuid        PRIMARY KEY,
    name        text,
    description text,
    is_group    boolean     NOT NULL,
    created_by  uuid        NOT NULL REFERENCES users (id),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- "My conversations, most recently active first": the participants index yields the
-- user's conversation ids, this one lets the planner walk conversations by activity
-- when a user is in many of them.
CREATE INDEX conversations_updated_at_idx ON conversations (updated_at DESC, id DESC);

CREATE TABLE participants (
    conversation_id uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         uuid        NOT NULL REFERENCES users (id),
    joined_at       timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);

-- Covers the user -> conversations lookup without touching the table.
CREATE INDEX participants_user_id_idx ON participants (user_id, conversation_id);

CREATE TABLE messages (
    id              uuid        PRIMARY KEY,
    conversation_id uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    sender_id       uuid        NOT NULL REFERENCES users (id),
    content         text        NOT NULL,
    is_edited       boolean     NOT NULL DEFAULT false,
    deleted_at      timestamptz,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL
);

CREATE INDEX messages_conversation_id_id_idx ON messages (conversation_id, id);

CREATE TABLE reactions (
    message_id uuid        NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES users (id),
    emoji      text        NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (message_id, user_id, emoji)
);
