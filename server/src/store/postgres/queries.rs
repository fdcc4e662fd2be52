//! The PostgreSQL store's statements and the mapping between records and rows: the
//! `Store` implementation proper.
//!
//! It must never reach the database but through `PostgresStore::run`, which bounds each
//! call by its deadline and keeps a connection that missed it out of the pool; and it
//! must keep every multi-statement operation in one statement or one transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use super::PostgresStore;
use crate::ids::{ConversationId, MessageId, UserId};
use crate::store::{
    distinct, newest_per_conversation, ChangeOutcome, ConversationRecord, MessageRecord,
    NewMessage, ReactionOutcome, Store, StoreError, UserRecord,
};
use crate::text::Content;

/// Reads the columns `id, username, password_hash, created_at`.
fn user_row(row: &Row) -> Result<UserRecord, tokio_postgres::Error> {
    Ok(UserRecord {
        id: UserId(row.try_get(0)?),
        username: row.try_get(1)?,
        password_hash: row.try_get(2)?,
        created_at: row.try_get(3)?,
    })
}

/// Reads the columns `id, name, description, is_group, created_by, created_at,
/// updated_at`.
fn conversation_row(row: &Row) -> Result<ConversationRecord, tokio_postgres::Error> {
    Ok(ConversationRecord {
        id: ConversationId(row.try_get(0)?),
        name: row.try_get(1)?,
        description: row.try_get(2)?,
        is_group: row.try_get(3)?,
        created_by: UserId(row.try_get(4)?),
        created_at: row.try_get(5)?,
        updated_at: row.try_get(6)?,
    })
}

/// Reads a row of `HISTORY_LATEST` or `HISTORY_BEFORE`, of `conversation`.
fn message_row(
    row: &Row,
    conversation: ConversationId,
) -> Result<MessageRecord, tokio_postgres::Error> {
    Ok(MessageRecord {
        id: MessageId(row.try_get(0)?),
        conversation_id: conversation,
        sender_id: UserId(row.try_get(1)?),
        sender_username: row.try_get(2)?,
        content: row.try_get(3)?,
        is_edited: row.try_get(4)?,
        created_at: row.try_get(5)?,
        updated_at: row.try_get(6)?,
    })
}

/// Reads the single-row answer of an edit or delete: no row means no live message.
fn change_outcome(row: Option<Row>) -> Result<ChangeOutcome, tokio_postgres::Error> {
    Ok(match row {
        None => ChangeOutcome::NotFound,
        Some(row) if row.try_get::<_, bool>(0)? => ChangeOutcome::Done,
        Some(_) => ChangeOutcome::NotSender,
    })
}

const INSERT_MESSAGES: &str = "\
    WITH inserted AS (
        INSERT INTO messages (id, conversation_id, sender_id, content, created_at, updated_at)
        SELECT id, conversation_id, sender_id, content, created_at, created_at
        FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[])
             AS t (id, conversation_id, sender_id, content, created_at)
    )
    UPDATE conversations AS c SET updated_at = b.at
    FROM UNNEST($6::uuid[], $7::timestamptz[]) AS b (id, at)
    WHERE c.id = b.id AND c.updated_at < b.at";

/// Locks the live target, applies the change only for its sender, and answers whether
/// the actor is the sender (no row: no such live message).
const EDIT_MESSAGE: &str = "\
    WITH target AS (
        SELECT id, sender_id FROM messages
        WHERE conversation_id = $1::uuid AND id = $2::uuid AND deleted_at IS NULL
        FOR UPDATE
    ), changed AS (
        UPDATE messages AS m SET content = $4::text, is_edited = true, updated_at = $5::timestamptz
        FROM target AS t WHERE m.id = t.id AND t.sender_id = $3::uuid
        RETURNING m.id
    )
    SELECT t.sender_id = $3::uuid FROM target AS t";

/// As `EDIT_MESSAGE`, for a soft delete.
const DELETE_MESSAGE: &str = "\
    WITH target AS (
        SELECT id, sender_id FROM messages
        WHERE conversation_id = $1::uuid AND id = $2::uuid AND deleted_at IS NULL
        FOR UPDATE
    ), changed AS (
        UPDATE messages AS m SET deleted_at = $4::timestamptz, updated_at = $4::timestamptz
        FROM target AS t WHERE m.id = t.id AND t.sender_id = $3::uuid
        RETURNING m.id
    )
    SELECT t.sender_id = $3::uuid FROM target AS t";

/// Removes the reaction if present, adds it otherwise, in one statement.
const TOGGLE_REACTION: &str = "\
    WITH target AS (
        SELECT id FROM messages
        WHERE conversation_id = $1::uuid AND id = $2::uuid AND deleted_at IS NULL
    ), removed AS (
        DELETE FROM reactions AS r USING target AS t
        WHERE r.message_id = t.id AND r.user_id = $3::uuid AND r.emoji = $4::text
        RETURNING r.message_id
    ), added AS (
        INSERT INTO reactions (message_id, user_id, emoji, created_at)
        SELECT t.id, $3::uuid, $4::text, $5::timestamptz FROM target AS t
        WHERE NOT EXISTS (SELECT 1 FROM removed)
        ON CONFLICT DO NOTHING
        RETURNING message_id
    )
    SELECT EXISTS (SELECT 1 FROM target), EXISTS (SELECT 1 FROM removed)";

const CREATE_CONVERSATION: &str = "\
    WITH created AS (
        INSERT INTO conversations
            (id, name, description, is_group, created_by, created_at, updated_at)
        VALUES ($1::uuid, $2::text, $3::text, $4::bool, $5::uuid, $6::timestamptz, $7::timestamptz)
    )
    INSERT INTO participants (conversation_id, user_id, joined_at)
    SELECT $1::uuid, u, $6::timestamptz FROM UNNEST($8::uuid[]) AS u
    ON CONFLICT DO NOTHING";

const HISTORY_LATEST: &str = "\
    SELECT m.id, m.sender_id, u.username, m.content, m.is_edited, m.created_at, m.updated_at
    FROM messages AS m JOIN users AS u ON u.id = m.sender_id
    WHERE m.conversation_id = $1 AND m.deleted_at IS NULL
    ORDER BY m.id DESC LIMIT $2";

const HISTORY_BEFORE: &str = "\
    SELECT m.id, m.sender_id, u.username, m.content, m.is_edited, m.created_at, m.updated_at
    FROM messages AS m JOIN users AS u ON u.id = m.sender_id
    WHERE m.conversation_id = $1 AND m.id < $2 AND m.deleted_at IS NULL
    ORDER BY m.id DESC LIMIT $3";

#[async_trait]
impl Store for PostgresStore {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "INSERT INTO users (id, username, password_hash, created_at) \
                     VALUES ($1, $2, $3, $4)",
                )
                .await?;
            client
                .execute(
                    &stmt,
                    &[
                        &user.id.0,
                        &user.username,
                        &user.password_hash,
                        &user.created_at,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT id, username, password_hash, created_at FROM users WHERE username = $1",
                )
                .await?;
            client
                .query_opt(&stmt, &[&username])
                .await?
                .as_ref()
                .map(user_row)
                .transpose()
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT id, username, password_hash, created_at FROM users WHERE id = $1",
                )
                .await?;
            client
                .query_opt(&stmt, &[&id.0])
                .await?
                .as_ref()
                .map(user_row)
                .transpose()
        })
        .await
    }

    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<Uuid> = distinct(ids).into_iter().map(|id| id.0).collect();
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT u.id FROM UNNEST($1::uuid[]) WITH ORDINALITY AS u (id, n) \
                     WHERE NOT EXISTS (SELECT 1 FROM users WHERE users.id = u.id) \
                     ORDER BY u.n",
                )
                .await?;
            client
                .query(&stmt, &[&wanted])
                .await?
                .iter()
                .map(|row| row.try_get(0).map(UserId))
                .collect()
        })
        .await
    }

    async fn create_conversation(
        &self,
        conversation: &ConversationRecord,
        participants: &[UserId],
    ) -> Result<(), StoreError> {
        let c = conversation;
        let members: Vec<Uuid> = participants.iter().map(|id| id.0).collect();
        self.run(async |client| {
            let stmt = client.prepare_cached(CREATE_CONVERSATION).await?;
            client
                .execute(
                    &stmt,
                    &[
                        &c.id.0,
                        &c.name,
                        &c.description,
                        &c.is_group,
                        &c.created_by.0,
                        &c.created_at,
                        &c.updated_at,
                        &members,
                    ],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationRecord>, StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT c.id, c.name, c.description, c.is_group, c.created_by, \
                            c.created_at, c.updated_at \
                     FROM participants AS p JOIN conversations AS c ON c.id = p.conversation_id \
                     WHERE p.user_id = $1 \
                     ORDER BY c.updated_at DESC, c.id DESC",
                )
                .await?;
            client
                .query(&stmt, &[&user.0])
                .await?
                .iter()
                .map(conversation_row)
                .collect()
        })
        .await
    }

    async fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT id, name, description, is_group, created_by, created_at, updated_at \
                     FROM conversations WHERE id = $1",
                )
                .await?;
            client
                .query_opt(&stmt, &[&id.0])
                .await?
                .as_ref()
                .map(conversation_row)
                .transpose()
        })
        .await
    }

    async fn participants(&self, id: ConversationId) -> Result<Vec<UserId>, StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT user_id FROM participants WHERE conversation_id = $1 \
                     ORDER BY joined_at, user_id",
                )
                .await?;
            client
                .query(&stmt, &[&id.0])
                .await?
                .iter()
                .map(|row| row.try_get(0).map(UserId))
                .collect()
        })
        .await
    }

    async fn is_member(&self, id: ConversationId, user: UserId) -> Result<bool, StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT 1 FROM participants WHERE conversation_id = $1 AND user_id = $2",
                )
                .await?;
            Ok(client.query_opt(&stmt, &[&id.0, &user.0]).await?.is_some())
        })
        .await
    }

    async fn add_participant(&self, id: ConversationId, user: UserId) -> Result<(), StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "INSERT INTO participants (conversation_id, user_id, joined_at) \
                     VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .await?;
            client
                .execute(&stmt, &[&id.0, &user.0, &crate::ids::now_micros()])
                .await?;
            Ok(())
        })
        .await
    }

    async fn remove_participant(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<bool, StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "DELETE FROM participants WHERE conversation_id = $1 AND user_id = $2",
                )
                .await?;
            Ok(client.execute(&stmt, &[&id.0, &user.0]).await? > 0)
        })
        .await
    }

    async fn history(
        &self,
        id: ConversationId,
        limit: u32,
        before: Option<MessageId>,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError> {
        let limit = i64::from(limit);
        self.run(async |client| {
            let rows = match before {
                None => {
                    let stmt = client.prepare_cached(HISTORY_LATEST).await?;
                    client.query(&stmt, &[&id.0, &limit]).await?
                }
                Some(before) => {
                    let anchor = client
                        .prepare_cached(
                            "SELECT 1 FROM messages WHERE conversation_id = $1 AND id = $2",
                        )
                        .await?;
                    let page = client.prepare_cached(HISTORY_BEFORE).await?;
                    // Both go out back to back on the connection: one round trip.
                    // Deleted messages still anchor a page, so the check ignores
                    // deleted_at.
                    let anchor_params: [&(dyn ToSql + Sync); 2] = [&id.0, &before.0];
                    let page_params: [&(dyn ToSql + Sync); 3] = [&id.0, &before.0, &limit];
                    let (known, rows) = tokio::try_join!(
                        client.query_opt(&anchor, &anchor_params),
                        client.query(&page, &page_params),
                    )?;
                    if known.is_none() {
                        return Ok(None);
                    }
                    rows
                }
            };
            let mut page = rows
                .iter()
                .map(|row| message_row(row, id))
                .collect::<Result<Vec<_>, _>>()?;
            page.reverse();
            Ok(Some(page))
        })
        .await
    }

    async fn insert_messages(&self, batch: &[NewMessage]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(batch.len());
        let mut conversations = Vec::with_capacity(batch.len());
        let mut senders = Vec::with_capacity(batch.len());
        let mut contents = Vec::with_capacity(batch.len());
        let mut times = Vec::with_capacity(batch.len());
        for m in batch {
            ids.push(m.id.0);
            conversations.push(m.conversation_id.0);
            senders.push(m.sender_id.0);
            contents.push(m.content.as_str());
            times.push(m.created_at);
        }
        let (bumped, bumped_at): (Vec<Uuid>, Vec<DateTime<Utc>>) = newest_per_conversation(batch)
            .into_iter()
            .map(|(conversation, at)| (conversation.0, at))
            .unzip();

        self.run(async |client| {
            // One statement is one transaction: the rows and the bumps commit together.
            let stmt = client.prepare_cached(INSERT_MESSAGES).await?;
            client
                .execute(
                    &stmt,
                    &[
                        &ids,
                        &conversations,
                        &senders,
                        &contents,
                        &times,
                        &bumped,
                        &bumped_at,
                    ],
                )
                .await?;
            Ok(())
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
        self.run(async |client| {
            let stmt = client.prepare_cached(EDIT_MESSAGE).await?;
            let row = client
                .query_opt(
                    &stmt,
                    &[
                        &conversation.0,
                        &message.0,
                        &editor.0,
                        &content.as_str(),
                        &at,
                    ],
                )
                .await?;
            change_outcome(row)
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
        self.run(async |client| {
            let stmt = client.prepare_cached(DELETE_MESSAGE).await?;
            let row = client
                .query_opt(&stmt, &[&conversation.0, &message.0, &deleter.0, &at])
                .await?;
            change_outcome(row)
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
        let now = crate::ids::now_micros();
        self.run(async |client| {
            let stmt = client.prepare_cached(TOGGLE_REACTION).await?;
            let row = client
                .query_one(&stmt, &[&conversation.0, &message.0, &user.0, &emoji, &now])
                .await?;
            let (live, removed): (bool, bool) = (row.try_get(0)?, row.try_get(1)?);
            Ok(match (live, removed) {
                (false, _) => ReactionOutcome::NotFound,
                (true, true) => ReactionOutcome::Removed,
                (true, false) => ReactionOutcome::Added,
            })
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(async |client| client.simple_query("SELECT 1").await.map(drop))
            .await
    }
}
