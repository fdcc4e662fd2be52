-- Read markers: how far each participant has read, as a stream position. It only ever
-- moves forward (the statement that sets it says so), and unread counts walk the
-- messages after it on the (conversation_id, seq) index, at most a bounded number.

ALTER TABLE participants ADD COLUMN last_read_seq INTEGER NOT NULL DEFAULT 0;
