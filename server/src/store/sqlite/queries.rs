//! The SQLite store's statements and the mapping between records and rows: the
//! `Store` implementation proper, with the column types of the schema (`Key`, `Micros`).
//!
//! It must never touch a connection but through `SqliteStore::read` and
//! `SqliteStore::write`, which run the work on the blocking pool; and every
//! multi-statement change runs in one `IMMEDIATE` transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use uuid::Uuid;

use super::SqliteStore;
use crate::ids::{ConversationId, MessageId, UserId};
use crate::store::{
    distinct, newest_per_conversation, ChangeOutcome, ConversationRecord, MessageRecord,
    NewMessage, ReactionOutcome, Store, StoreError, UserRecord,
};
use crate::text::Content;

/// A UUID as the schema stores it: lowercase hyphenated text, which sorts like the
/// UUID's bytes.
struct Key(Uuid);

impl ToSql for Key {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.as_hyphenated().to_string()))
    }
}

impl FromSql for Key {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        Uuid::parse_str(value.as_str()?)
            .map(Key)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// A timestamp as the schema stores it: INTEGER microseconds since the Unix epoch.
struct Micros(DateTime<Utc>);

impl ToSql for Micros {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.timestamp_micros()))
    }
}

impl FromSql for Micros {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let micros = value.as_i64()?;
        DateTime::from_timestamp_micros(micros)
            .map(Micros)
            .ok_or(FromSqlError::OutOfRange(micros))
    }
}

fn now_micros() -> Micros {
    Micros(crate::ids::now_micros())
}

/// Reads the columns `id, username, password_hash, created_at`.
fn user_row(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: UserId(row.get::<_, Key>(0)?.0),
        username: row.get(1)?,
        password_hash: row.get(2)?,
        created_at: row.get::<_, Micros>(3)?.0,
    })
}

/// Reads the columns `id, name, description, is_group, created_by, created_at,
/// updated_at`.
fn conversation_row(row: &Row<'_>) -> rusqlite::Result<ConversationRecord> {
    Ok(ConversationRecord {
        id: ConversationId(row.get::<_, Key>(0)?.0),
        name: row.get(1)?,
        description: row.get(2)?,
        is_group: row.get(3)?,
        created_by: UserId(row.get::<_, Key>(4)?.0),
        created_at: row.get::<_, Micros>(5)?.0,
        updated_at: row.get::<_, Micros>(6)?.0,
    })
}

/// Reads a row of a history page (`m.id, m.sender_id, u.username, m.content,
/// m.is_edited, m.created_at, m.updated_at`), of `conversation`.
fn message_row(row: &Row<'_>, conversation: ConversationId) -> rusqlite::Result<MessageRecord> {
    Ok(MessageRecord {
        id: MessageId(row.get::<_, Key>(0)?.0),
        conversation_id: conversation,
        sender_id: UserId(row.get::<_, Key>(1)?.0),
        sender_username: row.get(2)?,
        content: row.get(3)?,
        is_edited: row.get(4)?,
        created_at: row.get::<_, Micros>(5)?.0,
        updated_at: row.get::<_, Micros>(6)?.0,
    })
}

/// Decides an edit or delete from the target's sender, then applies `change` if allowed.
fn change_message(
    conn: &mut Connection,
    conversation: ConversationId,
    message: MessageId,
    actor: UserId,
    change: impl FnOnce(&Connection) -> rusqlite::Result<usize>,
) -> rusqlite::Result<ChangeOutcome> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
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
        Some(Key(sender)) if sender != actor.0 => ChangeOutcome::NotSender,
        Some(_) => {
            change(&tx)?;
            ChangeOutcome::Done
        }
    };
    tx.commit()?;
    Ok(outcome)
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
                "SELECT id, username, password_hash, created_at FROM users WHERE username = ?1",
            )?
            .query_row([username], user_row)
            .optional()
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, username, password_hash, created_at FROM users WHERE id = ?1",
            )?
            .query_row([Key(id.0)], user_row)
            .optional()
        })
        .await
    }

    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        let ids = ids.to_vec();
        self.read(move |conn| {
            let mut exists = conn.prepare_cached("SELECT 1 FROM users WHERE id = ?1")?;
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
                    "INSERT INTO participants (conversation_id, user_id, joined_at) \
                     VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )?;
                for user in participants {
                    add.execute(params![Key(c.id.0), Key(user.0), Micros(c.created_at)])?;
                }
            }
            tx.commit()
        })
        .await
    }

    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationRecord>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT c.id, c.name, c.description, c.is_group, c.created_by, \
                        c.created_at, c.updated_at \
                 FROM participants AS p JOIN conversations AS c ON c.id = p.conversation_id \
                 WHERE p.user_id = ?1 \
                 ORDER BY c.updated_at DESC, c.id DESC",
            )?
            .query_map([Key(user.0)], conversation_row)?
            .collect()
        })
        .await
    }

    async fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, name, description, is_group, created_by, created_at, updated_at \
                 FROM conversations WHERE id = ?1",
            )?
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

    async fn add_participant(&self, id: ConversationId, user: UserId) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO participants (conversation_id, user_id, joined_at) \
                 VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            )?
            .execute(params![Key(id.0), Key(user.0), now_micros()])?;
            Ok(())
        })
        .await
    }

    async fn remove_participant(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let removed = conn
                .prepare_cached(
                    "DELETE FROM participants WHERE conversation_id = ?1 AND user_id = ?2",
                )?
                .execute(params![Key(id.0), Key(user.0)])?;
            Ok(removed > 0)
        })
        .await
    }

    async fn history(
        &self,
        id: ConversationId,
        limit: u32,
        before: Option<MessageId>,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError> {
        self.read(move |conn| {
            let mut page: Vec<MessageRecord> = match before {
                None => conn
                    .prepare_cached(
                        "SELECT m.id, m.sender_id, u.username, m.content, m.is_edited, \
                                m.created_at, m.updated_at \
                         FROM messages AS m JOIN users AS u ON u.id = m.sender_id \
                         WHERE m.conversation_id = ?1 AND m.deleted_at IS NULL \
                         ORDER BY m.id DESC LIMIT ?2",
                    )?
                    .query_map(params![Key(id.0), limit], |row| message_row(row, id))?
                    .collect::<rusqlite::Result<_>>()?,
                Some(before) => {
                    // Deleted messages still anchor a page: a client paging back from
                    // a message that was deleted meanwhile must not get a 404.
                    let known = conn
                        .prepare_cached(
                            "SELECT 1 FROM messages WHERE conversation_id = ?1 AND id = ?2",
                        )?
                        .exists(params![Key(id.0), Key(before.0)])?;
                    if !known {
                        return Ok(None);
                    }
                    conn.prepare_cached(
                        "SELECT m.id, m.sender_id, u.username, m.content, m.is_edited, \
                                m.created_at, m.updated_at \
                         FROM messages AS m JOIN users AS u ON u.id = m.sender_id \
                         WHERE m.conversation_id = ?1 AND m.id < ?2 AND m.deleted_at IS NULL \
                         ORDER BY m.id DESC LIMIT ?3",
                    )?
                    .query_map(params![Key(id.0), Key(before.0), limit], |row| {
                        message_row(row, id)
                    })?
                    .collect::<rusqlite::Result<_>>()?
                }
            };
            page.reverse();
            Ok(Some(page))
        })
        .await
    }

    async fn insert_messages(&self, batch: &[NewMessage]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let batch = batch.to_vec();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            {
                let mut insert = tx.prepare_cached(
                    "INSERT INTO messages \
                     (id, conversation_id, sender_id, content, created_at, updated_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
                )?;
                for m in &batch {
                    insert.execute(params![
                        Key(m.id.0),
                        Key(m.conversation_id.0),
                        Key(m.sender_id.0),
                        m.content.as_str(),
                        Micros(m.created_at)
                    ])?;
                }
                let mut bump = tx.prepare_cached(
                    "UPDATE conversations SET updated_at = ?2 \
                     WHERE id = ?1 AND updated_at < ?2",
                )?;
                for (conversation, at) in newest_per_conversation(&batch) {
                    bump.execute(params![Key(conversation.0), Micros(at)])?;
                }
            }
            tx.commit()
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
            change_message(conn, conversation, message, editor, |tx| {
                tx.prepare_cached(
                    "UPDATE messages SET content = ?2, is_edited = 1, updated_at = ?3 \
                     WHERE id = ?1",
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
            change_message(conn, conversation, message, deleter, |tx| {
                tx.prepare_cached(
                    "UPDATE messages SET deleted_at = ?2, updated_at = ?2 WHERE id = ?1",
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
            let outcome = if removed > 0 {
                ReactionOutcome::Removed
            } else {
                tx.prepare_cached(
                    "INSERT INTO reactions (message_id, user_id, emoji, created_at) \
                     VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![
                    Key(message.0),
                    Key(user.0),
                    emoji,
                    now_micros()
                ])?;
                ReactionOutcome::Added
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
            .await
    }
}
