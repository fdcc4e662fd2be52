-- Conversation management: roles, archiving and direct conversations.
--
-- A conversation has at most one owner (the index below says so); a direct
-- conversation has none: either of its two people may rename, archive or delete it.
-- The creator owns what exists already; where the creator has left, the
-- longest-standing participant does.

ALTER TABLE participants ADD COLUMN role text NOT NULL DEFAULT 'member'
    CHECK (role IN ('owner', 'admin', 'member'));

UPDATE participants AS p SET role = 'owner'
FROM conversations AS c
WHERE c.id = p.conversation_id AND p.user_id = c.created_by;

UPDATE participants AS p SET role = 'owner'
FROM (
    SELECT DISTINCT ON (q.conversation_id) q.conversation_id, q.user_id
    FROM participants AS q
    WHERE NOT EXISTS (
        SELECT 1 FROM participants AS o
        WHERE o.conversation_id = q.conversation_id AND o.role = 'owner'
    )
    ORDER BY q.conversation_id, q.joined_at, q.user_id
) AS f
WHERE p.conversation_id = f.conversation_id AND p.user_id = f.user_id;

-- One owner: checked at commit, so a hand-over demotes and promotes in one statement.
ALTER TABLE participants ADD CONSTRAINT participants_one_owner
    EXCLUDE USING btree (conversation_id WITH =) WHERE (role = 'owner')
    DEFERRABLE INITIALLY DEFERRED;

-- Read-only since then: history stays readable, the stream takes no new event.
ALTER TABLE conversations ADD COLUMN archived_at timestamptz;

-- The pair of a direct conversation, "<smaller user id>:<larger user id>": the unique
-- index makes it the one conversation of that pair, whichever node creates it.
-- Conversations created before this migration have none, whatever their shape.
ALTER TABLE conversations ADD COLUMN direct_key text COLLATE "C";
CREATE UNIQUE INDEX conversations_direct_key ON conversations (direct_key)
    WHERE direct_key IS NOT NULL;

-- Deleted: gone for everyone at once (no participants, no new events); the history is
-- purged after, a bounded chunk at a time, then the row.
ALTER TABLE conversations ADD COLUMN deleted_at timestamptz;
CREATE INDEX conversations_deleted_idx ON conversations (deleted_at) WHERE deleted_at IS NOT NULL;

-- A message's changes by message: the purge of a deleted conversation removes its
-- messages with their changes, and a delete erases the content of its message's
-- edits; without this each of those reads every change of every conversation.
CREATE INDEX message_changes_message_id_idx ON message_changes (message_id);
