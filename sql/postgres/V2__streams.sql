-- Conversation streams and idempotent sends.
--
-- Every persisted event of a conversation (message, edit, delete, reaction) takes the
-- next position `seq` from the conversation's counter `last_seq`, inside the
-- transaction that persists it: a commit that fails takes no position (no gaps), and
-- the row lock on the counter serialises every writer of the conversation (no fork).
-- The unique indexes check what the counter promises.

ALTER TABLE conversations ADD COLUMN last_seq bigint NOT NULL DEFAULT 0;

ALTER TABLE messages ADD COLUMN seq bigint;
-- The sender's own id for the send: a repeat is the same message. Compared as bytes
-- ("C"): an opaque token, and the byte comparison keeps its unique index cheap.
ALTER TABLE messages ADD COLUMN client_id text COLLATE "C";
-- The content as first broadcast, kept once a message is edited, so a replay of the
-- stream sends the message event as it was sent live (the edits follow it).
ALTER TABLE messages ADD COLUMN original_content text;

UPDATE messages AS m SET seq = n.seq
FROM (
    SELECT id, row_number() OVER (PARTITION BY conversation_id ORDER BY id) AS seq
    FROM messages
) AS n
WHERE m.id = n.id;

UPDATE conversations AS c SET last_seq = s.last
FROM (SELECT conversation_id, max(seq) AS last FROM messages GROUP BY conversation_id) AS s
WHERE c.id = s.conversation_id;

ALTER TABLE messages ALTER COLUMN seq SET NOT NULL;
ALTER TABLE messages ADD CONSTRAINT messages_seq_positive CHECK (seq > 0);

-- History walks a conversation by position; this replaces the (conversation_id, id)
-- index, so the position costs no extra index on the insert path.
CREATE UNIQUE INDEX messages_conversation_id_seq_key ON messages (conversation_id, seq);
DROP INDEX messages_conversation_id_id_idx;

CREATE UNIQUE INDEX messages_client_id_key
    ON messages (conversation_id, sender_id, client_id) WHERE client_id IS NOT NULL;

-- The stream's other events: what happened to messages after they were sent.
CREATE TABLE message_changes (
    conversation_id uuid        NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             bigint      NOT NULL CHECK (seq > 0),
    kind            text        NOT NULL
        CHECK (kind IN ('edit', 'delete', 'reaction_added', 'reaction_removed')),
    message_id      uuid        NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    user_id         uuid        NOT NULL REFERENCES users (id),
    -- The new content of an edit.
    content         text,
    -- The emoji of a reaction.
    emoji           text,
    created_at      timestamptz NOT NULL,
    PRIMARY KEY (conversation_id, seq)
);
