//! The SQLite store's statements and the mapping between records and rows: the
//! `Store` implementation proper.
//!
//! It must never touch a connection but through `SqliteStore::read` and
//! `SqliteStore::write`, which run the work on the blocking pool; and every
//! multi-statement change runs in one `IMMEDIATE` transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::columns::{Key, Micros};
use super::{batch, SqliteStore};
use crate::ids::{ConversationId, MessageId, Role, Seq, UserId};
use crate::store::model::{
    attach_reactions, distinct, ChangeOutcome, ConversationRecord, MessageRecord, NewMessage, Page,
    ReactionOutcome, Store, StoreError, Stored, StreamEvent, StreamKind, UserRecord,
    REACTIONS_PER_PAGE,
};
use crate::text::Content;

/// Reads the columns `id, username, password_hash, created_at`.
fn user_row(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: UserId(row.get::<_, Key>(0)?.0),
        username: row.get(1)?,
        password_hash: row.get(2)?,
        created_at: row.get::<_, Micros>(3)?.0,
    })
}

/// A conversation's columns in `conversation_row` order.
macro_rules! conversation_columns {
    () => {
        "id, name, description, is_group, created_by, created_at, updated_at, archived_at, \
         direct_key IS NOT NULL"
    };
}
pub(super) use conversation_columns;

/// Reads the columns of `conversation_columns!()`.
pub(super) fn conversation_row(row: &Row<'_>) -> rusqlite::Result<ConversationRecord> {
    Ok(ConversationRecord {
        id: ConversationId(row.get::<_, Key>(0)?.0),
        name: row.get(1)?,
        description: row.get(2)?,
        is_group: row.get(3)?,
        created_by: UserId(row.get::<_, Key>(4)?.0),
        created_at: row.get::<_, Micros>(5)?.0,
        updated_at: row.get::<_, Micros>(6)?.0,
        archived_at: row.get::<_, Option<Micros>>(7)?.map(|m| m.0),
        direct: row.get(8)?,
    })
}

/// Reads a `role` column; a value this build does not know reads as a member's.
pub(super) fn role_column(row: &Row<'_>, at: usize) -> rusqlite::Result<Role> {
    Ok(row.get::<_, String>(at)?.parse().unwrap_or(Role::Member))
}

/// Reads a row of a history page (`m.id, m.sender_id, u.username, m.content,
/// m.is_edited, m.created_at, m.updated_at, m.seq`), of `conversation`.
fn message_row(row: &Row<'_>, conversation: ConversationId) -> rusqlite::Result<MessageRecord> {
    Ok(MessageRecord {
        id: MessageId(row.get::<_, Key>(0)?.0),
        seq: Seq::from_db(row.get(7)?),
        conversation_id: conversation,
        sender_id: UserId(row.get::<_, Key>(1)?.0),
        sender_username: row.get(2)?,
        content: row.get(3)?,
        is_edited: row.get(4)?,
        created_at: row.get::<_, Micros>(5)?.0,
        updated_at: row.get::<_, Micros>(6)?.0,
        reactions: Vec::new(),
    })
}

/// The columns of a history page between two positions (`?2` < seq < `?3`), in
/// `message_row` order.
macro_rules! history_page {
    ($order:literal) => {
        concat!(
            "SELECT m.id, m.sender_id, u.username, m.content, m.is_edited, m.created_at, \
                    m.updated_at, m.seq \
             FROM messages AS m JOIN users AS u ON u.id = m.sender_id \
             WHERE m.conversation_id = ?1 AND m.seq > ?2 AND m.seq < ?3 \
               AND m.deleted_at IS NULL \
             ORDER BY m.seq ",
            $order,
            " LIMIT ?4"
        )
    };
}

const HISTORY_NEWEST: &str = history_page!("DESC");
const HISTORY_OLDEST: &str = history_page!("ASC");

/// A conversation's events in `(?2, ?3]`, messages as first broadcast. The content of
/// a message deleted by now, and of its edits, never leaves the database: the column
/// is null and `deleted` says why.
const STREAM: &str = "\
    SELECT s.seq, s.kind, s.message_id, s.user_id, u.username, s.content, s.emoji, \
           s.created_at, s.client_id, s.deleted \
    FROM ( \
        SELECT seq, 'message' AS kind, id AS message_id, sender_id AS user_id, \
               CASE WHEN deleted_at IS NULL THEN COALESCE(original_content, content) END \
                   AS content, \
               NULL AS emoji, created_at, client_id, deleted_at IS NOT NULL AS deleted \
        FROM messages WHERE conversation_id = ?1 AND seq > ?2 AND seq <= ?3 \
        UNION ALL \
        SELECT c.seq, c.kind, c.message_id, c.user_id, \
               CASE WHEN m.deleted_at IS NULL THEN c.content END, c.emoji, c.created_at, \
               NULL, m.deleted_at IS NOT NULL \
        FROM message_changes AS c JOIN messages AS m ON m.id = c.message_id \
        WHERE c.conversation_id = ?1 AND c.seq > ?2 AND c.seq <= ?3 \
    ) AS s JOIN users AS u ON u.id = s.user_id \
    ORDER BY s.seq";

/// Takes the conversation's next position, inside the caller's transaction.
fn take_position(tx: &Connection, conversation: ConversationId) -> rusqlite::Result<Seq> {
    tx.prepare_cached(
        "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = ?1 RETURNING last_seq",
    )?
    .query_row([Key(conversation.0)], |row| row.get(0))
    .map(Seq::from_db)
}

/// Logs a change of a message at the conversation's next position.
fn log_change(
    tx: &Connection,
    conversation: ConversationId,
    message: MessageId,
    user: UserId,
    kind: &StreamKind,
    at: DateTime<Utc>,
) -> rusqlite::Result<Seq> {
    let seq = take_position(tx, conversation)?;
    let (content, emoji) = match kind {
        StreamKind::Edit { content } => (Some(content.as_str()), None),
        StreamKind::Reaction { emoji, .. } => (None, Some(emoji.as_str())),
        StreamKind::Message { .. }
        | StreamKind::DeletedMessage { .. }
        | StreamKind::DeletedEdit
        | StreamKind::Delete => (None, None),
    };
    tx.prepare_cached(
        "INSERT INTO message_changes \
         (conversation_id, seq, kind, message_id, user_id, content, emoji, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        Key(conversation.0),
        seq.to_db(),
        kind.change_kind(),
        Key(message.0),
        Key(user.0),
        content,
        emoji,
        Micros(at)
    ])?;
    Ok(seq)
}

/// Whether the conversation takes no new events (archived); `None`: there is none.
fn archived(tx: &Connection, conversation: ConversationId) -> rusqlite::Result<Option<bool>> {
    tx.prepare_cached("SELECT archived_at IS NOT NULL FROM conversations WHERE id = ?1")?
        .query_row([Key(conversation.0)], |row| row.get(0))
        .optional()
}

/// Whether `user` is an owner or admin of the conversation.
fn moderates(
    tx: &Connection,
    conversation: ConversationId,
    user: UserId,
) -> rusqlite::Result<bool> {
    tx.prepare_cached(
        "SELECT 1 FROM participants \
         WHERE conversation_id = ?1 AND user_id = ?2 AND role IN ('owner', 'admin')",
    )?
    .exists(params![Key(conversation.0), Key(user.0)])
}

/// Decides an edit or delete from the conversation's state and the target's sender (a
/// delete: or the actor moderating, with `moderators`), then applies `change` and
/// logs it as `kind` if allowed.
fn change_message(
    conn: &mut Connection,
    (conversation, message, actor): (ConversationId, MessageId, UserId),
    (kind, at): (StreamKind, DateTime<Utc>),
    moderators: bool,
    change: impl FnOnce(&Connection) -> rusqlite::Result<usize>,
) -> rusqlite::Result<ChangeOutcome> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    match archived(&tx, conversation)? {
        None => return Ok(ChangeOutcome::NotFound),
        Some(true) => return Ok(ChangeOutcome::ReadOnly),
        Some(false) => {}
    }
    let sender: Option<Key> = tx
        .prepare_cached(
            "SELECT sender_id FROM messages \
             WHERE conversation_id = ?1 AND id = ?2 AND deleted_at IS NULL",
        )?
        .query_row(params![Key(conversation.0), Key(message.0)], |row| {
            row.get(0)
        })
        .optional()?;
    let outcome = match sender {
        None => ChangeOutcome::NotFound,
        Some(Key(sender))
            if sender != actor.0 && !(moderators && moderates(&tx, conversation, actor)?) =>
        {
            ChangeOutcome::NotSender
        }
        Some(_) => {
            change(&tx)?;
            ChangeOutcome::Done(log_change(&tx, conversation, message, actor, &kind, at)?)
        }
    };
    tx.commit()?;
    Ok(outcome)
}

/// Reads a row of the stream query; `None` for a change kind this build does not know.
fn stream_row(row: &Row<'_>) -> rusqlite::Result<Option<StreamEvent>> {
    let kind: String = row.get(1)?;
    let Some(kind) =
        StreamKind::from_columns(&kind, row.get(5)?, row.get(6)?, row.get(8)?, row.get(9)?)
    else {
        return Ok(None);
    };
    Ok(Some(StreamEvent {
        seq: Seq::from_db(row.get(0)?),
        message_id: MessageId(row.get::<_, Key>(2)?.0),
        user_id: UserId(row.get::<_, Key>(3)?.0),
        username: row.get(4)?,
        at: row.get::<_, Micros>(7)?.0,
        kind,
    }))
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let user = user.clone();
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO users (id, username, password_hash, created_at) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![
                Key(user.id.0),
                user.username,
                user.password_hash,
                Micros(user.created_at)
            ])?;
            Ok(())
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let username = username.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, username, password_hash, created_at FROM users WHERE username = ?1 AND deleted_at IS NULL",
            )?
            .query_row([username], user_row)
            .optional()
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, username, password_hash, created_at FROM users WHERE id = ?1 AND deleted_at IS NULL",
            )?
            .query_row([Key(id.0)], user_row)
            .optional()
        })
        .await
    }

    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        let ids = ids.to_vec();
        self.read(move |conn| {
            let mut exists =
                conn.prepare_cached("SELECT 1 FROM users WHERE id = ?1 AND deleted_at IS NULL")?;
            let mut missing = Vec::new();
            for id in distinct(&ids) {
                if !exists.exists([Key(id.0)])? {
                    missing.push(id);
                }
            }
            Ok(missing)
        })
        .await
    }

    async fn create_conversation(
        &self,
        conversation: &ConversationRecord,
        participants: &[UserId],
    ) -> Result<(), StoreError> {
        let c = conversation.clone();
        let participants = participants.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached(
                "INSERT INTO conversations \
                 (id, name, description, is_group, created_by, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                Key(c.id.0),
                c.name,
                c.description,
                c.is_group,
                Key(c.created_by.0),
                Micros(c.created_at),
                Micros(c.updated_at)
            ])?;
            {
                let mut add = tx.prepare_cached(
                    "INSERT INTO participants (conversation_id, user_id, joined_at, role) \
                     VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
                )?;
                for user in participants {
                    let role = if user == c.created_by {
                        Role::Owner
                    } else {
                        Role::Member
                    };
                    add.execute(params![
                        Key(c.id.0),
                        Key(user.0),
                        Micros(c.created_at),
                        role.as_str()
                    ])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(concat!(
                "SELECT ",
                conversation_columns!(),
                " FROM conversations WHERE id = ?1 AND deleted_at IS NULL"
            ))?
            .query_row([Key(id.0)], conversation_row)
            .optional()
        })
        .await
    }

    async fn participants(&self, id: ConversationId) -> Result<Vec<UserId>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT user_id FROM participants WHERE conversation_id = ?1 \
                 ORDER BY joined_at, user_id",
            )?
            .query_map([Key(id.0)], |row| Ok(UserId(row.get::<_, Key>(0)?.0)))?
            .collect()
        })
        .await
    }

    async fn is_member(&self, id: ConversationId, user: UserId) -> Result<bool, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT 1 FROM participants WHERE conversation_id = ?1 AND user_id = ?2",
            )?
            .exists(params![Key(id.0), Key(user.0)])
        })
        .await
    }

    async fn member_position(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Option<Seq>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT c.last_seq FROM participants AS p \
                 JOIN conversations AS c ON c.id = p.conversation_id \
                 WHERE p.conversation_id = ?1 AND p.user_id = ?2",
            )?
            .query_row(params![Key(id.0), Key(user.0)], |row| row.get(0))
            .optional()
            .map(|seq| seq.map(Seq::from_db))
        })
        .await
    }

    async fn history(
        &self,
        id: ConversationId,
        page: Page,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError> {
        self.read(move |conn| {
            // Deleted messages still anchor a page: a client paging from a message that
            // was deleted meanwhile must not get a 404.
            let mut anchor = conn.prepare_cached(
                "SELECT seq FROM messages WHERE conversation_id = ?1 AND id = ?2",
            )?;
            let mut bound = |message: Option<MessageId>, unbounded: i64| match message {
                None => Ok(Some(unbounded)),
                Some(m) => anchor
                    .query_row(params![Key(id.0), Key(m.0)], |row| row.get::<_, i64>(0))
                    .optional(),
            };
            let (Some(after), Some(before)) =
                (bound(page.after, 0)?, bound(page.before, i64::MAX)?)
            else {
                return Ok(None);
            };
            let query = if page.after.is_some() {
                HISTORY_OLDEST
            } else {
                HISTORY_NEWEST
            };
            let mut messages: Vec<MessageRecord> = conn
                .prepare_cached(query)?
                .query_map(params![Key(id.0), after, before, page.limit], |row| {
                    message_row(row, id)
                })?
                .collect::<rusqlite::Result<_>>()?;
            if page.after.is_none() {
                messages.reverse();
            }
            if !messages.is_empty() {
                let ids = serde_json::Value::from(
                    messages
                        .iter()
                        .map(|m| m.id.to_string())
                        .collect::<Vec<_>>(),
                )
                .to_string();
                let rows = conn
                    .prepare_cached(
                        "SELECT message_id, emoji, user_id FROM reactions \
                         WHERE message_id IN (SELECT value FROM json_each(?1)) \
                         ORDER BY created_at, message_id LIMIT ?2",
                    )?
                    .query_map(params![ids, REACTIONS_PER_PAGE], |r| {
                        Ok((
                            MessageId(r.get::<_, Key>(0)?.0),
                            r.get(1)?,
                            UserId(r.get::<_, Key>(2)?.0),
                        ))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                attach_reactions(&mut messages, rows);
            }
            Ok(Some(messages))
        })
        .await
    }

    async fn insert_messages(&self, batch: &[NewMessage]) -> Result<Vec<Stored>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let batch = batch.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let outcomes = batch::insert(&tx, &batch)?;
            tx.commit()?;
            Ok(outcomes)
        })
        .await
    }

    async fn edit_message(
        &self,
        conversation: ConversationId,
        message: MessageId,
        editor: UserId,
        content: &Content,
        at: DateTime<Utc>,
    ) -> Result<ChangeOutcome, StoreError> {
        let content = content.as_str().to_owned();
        self.write(move |conn| {
            let kind = StreamKind::Edit {
                content: content.clone(),
            };
            let target = (conversation, message, editor);
            change_message(conn, target, (kind, at), false, |tx| {
                // The content as first broadcast is kept for replays of the stream.
                tx.prepare_cached(
                    "UPDATE messages SET content = ?2, is_edited = 1, updated_at = ?3, \
                     original_content = COALESCE(original_content, content) WHERE id = ?1",
                )?
                .execute(params![Key(message.0), content, Micros(at)])
            })
        })
        .await
    }

    async fn delete_message(
        &self,
        conversation: ConversationId,
        message: MessageId,
        deleter: UserId,
        at: DateTime<Utc>,
    ) -> Result<ChangeOutcome, StoreError> {
        self.write(move |conn| {
            let kind = (StreamKind::Delete, at);
            change_message(conn, (conversation, message, deleter), kind, true, |tx| {
                // The row stays (it holds its position and its client_id); its
                // content and that of its edits are erased.
                tx.prepare_cached(
                    "UPDATE message_changes SET content = NULL \
                     WHERE message_id = ?1 AND content IS NOT NULL",
                )?
                .execute(params![Key(message.0)])?;
                tx.prepare_cached(
                    "UPDATE messages SET deleted_at = ?2, updated_at = ?2, \
                     content = '', original_content = NULL WHERE id = ?1",
                )?
                .execute(params![Key(message.0), Micros(at)])
            })
        })
        .await
    }

    async fn toggle_reaction(
        &self,
        conversation: ConversationId,
        message: MessageId,
        user: UserId,
        emoji: &str,
    ) -> Result<ReactionOutcome, StoreError> {
        let emoji = emoji.to_owned();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if archived(&tx, conversation)? == Some(true) {
                return Ok(ReactionOutcome::ReadOnly);
            }
            let live = tx
                .prepare_cached(
                    "SELECT 1 FROM messages \
                     WHERE conversation_id = ?1 AND id = ?2 AND deleted_at IS NULL",
                )?
                .exists(params![Key(conversation.0), Key(message.0)])?;
            if !live {
                return Ok(ReactionOutcome::NotFound);
            }
            let removed = tx
                .prepare_cached(
                    "DELETE FROM reactions WHERE message_id = ?1 AND user_id = ?2 AND emoji = ?3",
                )?
                .execute(params![Key(message.0), Key(user.0), emoji])?;
            let now = crate::ids::now_micros();
            let kind = StreamKind::Reaction {
                emoji: emoji.clone(),
                added: removed == 0,
            };
            let seq = log_change(&tx, conversation, message, user, &kind, now)?;
            let outcome = if removed > 0 {
                ReactionOutcome::Removed(seq)
            } else {
                tx.prepare_cached(
                    "INSERT INTO reactions (message_id, user_id, emoji, created_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    Key(message.0),
                    Key(user.0),
                    emoji,
                    Micros(now)
                ])?;
                ReactionOutcome::Added(seq)
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn stream(
        &self,
        id: ConversationId,
        after: Seq,
        upto: Seq,
    ) -> Result<Vec<StreamEvent>, StoreError> {
        self.read(move |conn| {
            let mut events = Vec::new();
            let mut stmt = conn.prepare_cached(STREAM)?;
            let mut rows = stmt.query(params![Key(id.0), after.to_db(), upto.to_db()])?;
            while let Some(row) = rows.next()? {
                events.extend(stream_row(row)?);
            }
            Ok(events)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }
}
