-- Conversation streams and idempotent sends (see the PostgreSQL migration of the same
-- name for the design). SQLite cannot make an added column NOT NULL without a default;
-- every insert names `seq`, and the unique index refuses a second 0.

ALTER TABLE conversations ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;

ALTER TABLE messages ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN client_id TEXT;
ALTER TABLE messages ADD COLUMN original_content TEXT;

UPDATE messages SET seq = n.seq
FROM (
    SELECT id, row_number() OVER (PARTITION BY conversation_id ORDER BY id) AS seq
    FROM messages
) AS n
WHERE messages.id = n.id;

UPDATE conversations SET last_seq = s.last
FROM (SELECT conversation_id, max(seq) AS last FROM messages GROUP BY conversation_id) AS s
WHERE conversations.id = s.conversation_id;

CREATE UNIQUE INDEX messages_conversation_id_seq_key ON messages (conversation_id, seq);
DROP INDEX messages_conversation_id_id_idx;

CREATE UNIQUE INDEX messages_client_id_key
    ON messages (conversation_id, sender_id, client_id) WHERE client_id IS NOT NULL;

CREATE TABLE message_changes (
    conversation_id TEXT    NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL CHECK (seq > 0),
    kind            TEXT    NOT NULL
        CHECK (kind IN ('edit', 'delete', 'reaction_added', 'reaction_removed')),
    message_id      TEXT    NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id         TEXT    NOT NULL REFERENCES users (id),
    content         TEXT,
    emoji           TEXT,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (conversation_id, seq)
) STRICT, WITHOUT ROWID;
