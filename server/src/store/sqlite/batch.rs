//! A batch of messages into SQLite, inside the writer's transaction: each
//! conversation's counter is read once and written once, each message is one insert at
//! the next position; the partial unique index finds a repeated `client_id`, which is
//! answered with its original and takes no position. It must never number messages
//! outside the transaction that inserts them.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use super::columns::{Key, Micros};
use crate::ids::{ConversationId, MessageId, Seq};
use crate::store::model::{NewMessage, Original, Stored};

/// Where a conversation's counter stands during a batch: its position, and the newest
/// message time to bump `updated_at` to.
struct Counter {
    last: i64,
    newest: DateTime<Utc>,
}

/// A conversation as a batch finds it.
enum Target {
    Open(Counter),
    /// Archived (or deleted): nothing is stored.
    ReadOnly,
    Gone,
}

/// The batch inside the caller's transaction: each conversation's counter is read once
/// and written once; each message is one insert at the next position, unless the
/// partial unique index refuses its `client_id` (a repeat, answered with the original,
/// taking no position). One statement per message: repeats are rare, so they are not
/// looked up before.
pub(super) fn insert(tx: &Connection, batch: &[NewMessage]) -> rusqlite::Result<Vec<Stored>> {
    let mut counters: BTreeMap<ConversationId, Target> = BTreeMap::new();
    let mut read = tx.prepare_cached(
        "SELECT last_seq, archived_at IS NOT NULL, deleted_at IS NOT NULL \
         FROM conversations WHERE id = ?1",
    )?;
    let mut insert = tx.prepare_cached(
        "INSERT INTO messages \
         (id, conversation_id, sender_id, content, created_at, updated_at, seq, client_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7)",
    )?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for m in batch {
        let counter = match counters.entry(m.conversation_id) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(
                match read
                    .query_row([Key(m.conversation_id.0)], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                    })
                    .optional()?
                {
                    None | Some((_, _, true)) => Target::Gone,
                    Some((_, true, false)) => Target::ReadOnly,
                    Some((last, false, false)) => Target::Open(Counter {
                        last,
                        newest: m.created_at,
                    }),
                },
            ),
        };
        let counter = match counter {
            Target::Open(counter) => counter,
            Target::ReadOnly => {
                outcomes.push(Stored::ReadOnly);
                continue;
            }
            // No counter to take a position from: the conversation is gone.
            Target::Gone => {
                outcomes.push(Stored::Gone);
                continue;
            }
        };
        let seq = counter.last + 1;
        let inserted = insert.execute(params![
            Key(m.id.0),
            Key(m.conversation_id.0),
            Key(m.sender_id.0),
            m.content.as_str(),
            Micros(m.created_at),
            seq,
            m.client_id.as_ref().map(|c| c.as_str())
        ]);
        match inserted {
            Ok(_) => {
                counter.last = seq;
                counter.newest = counter.newest.max(m.created_at);
                outcomes.push(Stored::New(Seq::from_db(seq)));
            }
            Err(e) if is_repeat(&e) => outcomes.push(Stored::Duplicate(original(tx, m)?)),
            Err(e) => return Err(e),
        }
    }
    let mut bump = tx.prepare_cached(
        "UPDATE conversations SET last_seq = ?2, updated_at = max(updated_at, ?3) WHERE id = ?1",
    )?;
    for (conversation, counter) in &counters {
        if let Target::Open(c) = counter {
            bump.execute(params![Key(conversation.0), c.last, Micros(c.newest)])?;
        }
    }
    Ok(outcomes)
}

/// Whether an insert was refused for a `client_id` its sender already used there.
fn is_repeat(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, Some(message))
        if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            && message.contains("messages.client_id"))
}

/// The message an earlier send with `m`'s idempotency key stored.
fn original(tx: &Connection, m: &NewMessage) -> rusqlite::Result<Original> {
    tx.prepare_cached(
        "SELECT id, seq, CASE WHEN deleted_at IS NULL THEN COALESCE(original_content, content) END, \
         created_at FROM messages \
         WHERE conversation_id = ?1 AND sender_id = ?2 AND client_id = ?3",
    )?
    .query_row(
        params![
            Key(m.conversation_id.0),
            Key(m.sender_id.0),
            m.client_id.as_ref().map(|c| c.as_str())
        ],
        |row| {
            Ok(Original {
                id: MessageId(row.get::<_, Key>(0)?.0),
                seq: Seq::from_db(row.get(1)?),
                content: row.get(2)?,
                created_at: row.get::<_, Micros>(3)?.0,
            })
        },
    )
}
