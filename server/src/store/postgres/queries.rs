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

use super::{batch, PostgresStore};
use crate::ids::{ConversationId, MessageId, Role, Seq, UserId};
use crate::store::model::{
    attach_reactions, distinct, ChangeOutcome, ConversationRecord, MessageRecord, NewMessage, Page,
    ReactionOutcome, Store, StoreError, Stored, StreamEvent, StreamKind, UserRecord,
    REACTIONS_PER_PAGE,
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

/// A conversation's columns in `conversation_row` order.
macro_rules! conversation_columns {
    () => {
        "id, name, description, is_group, created_by, created_at, updated_at, archived_at, \
         direct_key IS NOT NULL"
    };
}
pub(super) use conversation_columns;

/// Reads the columns of `conversation_columns!()`.
pub(super) fn conversation_row(row: &Row) -> Result<ConversationRecord, tokio_postgres::Error> {
    Ok(ConversationRecord {
        id: ConversationId(row.try_get(0)?),
        name: row.try_get(1)?,
        description: row.try_get(2)?,
        is_group: row.try_get(3)?,
        created_by: UserId(row.try_get(4)?),
        created_at: row.try_get(5)?,
        updated_at: row.try_get(6)?,
        archived_at: row.try_get(7)?,
        direct: row.try_get(8)?,
    })
}

/// Reads a `role` column; a value this build does not know reads as a member's.
pub(super) fn role_column(row: &Row, at: usize) -> Result<Role, tokio_postgres::Error> {
    Ok(row.try_get::<_, &str>(at)?.parse().unwrap_or(Role::Member))
}

/// Reads a row of `HISTORY_NEWEST` or `HISTORY_OLDEST`, of `conversation`.
fn message_row(
    row: &Row,
    conversation: ConversationId,
) -> Result<MessageRecord, tokio_postgres::Error> {
    Ok(MessageRecord {
        id: MessageId(row.try_get(0)?),
        seq: Seq::from_db(row.try_get(7)?),
        conversation_id: conversation,
        sender_id: UserId(row.try_get(1)?),
        sender_username: row.try_get(2)?,
        content: row.try_get(3)?,
        is_edited: row.try_get(4)?,
        created_at: row.try_get(5)?,
        updated_at: row.try_get(6)?,
        reactions: Vec::new(),
    })
}

/// Reads the single-row answer of an edit or delete, `(archived, allowed, position)`:
/// no row means no conversation, no `allowed` no live message.
fn change_outcome(row: Option<Row>) -> Result<ChangeOutcome, tokio_postgres::Error> {
    let Some(row) = row else {
        return Ok(ChangeOutcome::NotFound);
    };
    if row.try_get::<_, bool>(0)? {
        return Ok(ChangeOutcome::ReadOnly);
    }
    Ok(
        match (
            row.try_get::<_, Option<bool>>(1)?,
            row.try_get::<_, Option<i64>>(2)?,
        ) {
            (None, _) => ChangeOutcome::NotFound,
            (Some(true), Some(seq)) => ChangeOutcome::Done(Seq::from_db(seq)),
            (Some(_), _) => ChangeOutcome::NotSender,
        },
    )
}

/// Reads a row of `STREAM`; `None` for a change kind this build does not know.
fn stream_row(row: &Row) -> Result<Option<StreamEvent>, tokio_postgres::Error> {
    let kind: String = row.try_get(1)?;
    let Some(kind) = StreamKind::from_columns(
        &kind,
        row.try_get(5)?,
        row.try_get(6)?,
        row.try_get(8)?,
        row.try_get(9)?,
    ) else {
        return Ok(None);
    };
    Ok(Some(StreamEvent {
        seq: Seq::from_db(row.try_get(0)?),
        message_id: MessageId(row.try_get(2)?),
        user_id: UserId(row.try_get(3)?),
        username: row.try_get(4)?,
        at: row.try_get(7)?,
        kind,
    }))
}

/// The conversation (is it archived?) and the live target of an edit or delete, locked
/// with the conversation's row, so an archiving waits for the change or the change
/// finds the conversation archived.
/// `allowed`: the actor is the sender, or (`$moderators` true) an owner or admin of
/// the conversation.
macro_rules! change_target {
    ($moderators:literal) => {
        concat!(
            "WITH conv AS (
                SELECT archived_at IS NOT NULL AS archived FROM conversations WHERE id = $1::uuid
            ), target AS (
                SELECT m.id, (m.sender_id = $3::uuid OR (", $moderators, " AND EXISTS (
                    SELECT 1 FROM participants AS p
                    WHERE p.conversation_id = $1::uuid AND p.user_id = $3::uuid
                      AND p.role IN ('owner', 'admin')))) AS allowed
                FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id
                WHERE m.conversation_id = $1::uuid AND m.id = $2::uuid AND m.deleted_at IS NULL
                  AND c.archived_at IS NULL
                FOR UPDATE OF m FOR NO KEY UPDATE OF c
            )"
        )
    };
}

/// Applies an edit for its sender only (keeping the content as first broadcast), takes
/// the next position and logs the change at it. Answers `(archived, allowed,
/// position)`; no `allowed`: no such live message.
const EDIT_MESSAGE: &str = concat!(
    change_target!("false"),
    ", changed AS (
        UPDATE messages AS m
        SET content = $4::text, original_content = COALESCE(m.original_content, m.content),
            is_edited = true, updated_at = $5::timestamptz
        FROM target AS t WHERE m.id = t.id AND t.allowed
        RETURNING m.id
    ), bumped AS (
        UPDATE conversations SET last_seq = last_seq + 1
        WHERE id = $1::uuid AND EXISTS (SELECT 1 FROM changed)
        RETURNING last_seq
    ), logged AS (
        INSERT INTO message_changes
            (conversation_id, seq, kind, message_id, user_id, content, created_at)
        SELECT $1::uuid, last_seq, 'edit', $2::uuid, $3::uuid, $4::text, $5::timestamptz
        FROM bumped
    )
    SELECT conv.archived, t.allowed, (SELECT last_seq FROM bumped)
    FROM conv LEFT JOIN target AS t ON true"
);

/// As `EDIT_MESSAGE`, for a delete, which moderators may make too: the row stays (it
/// holds its position and its `client_id`), its content and that of its edits are
/// erased.
const DELETE_MESSAGE: &str = concat!(
    change_target!("true"),
    ", changed AS (
        UPDATE messages AS m
        SET deleted_at = $4::timestamptz, updated_at = $4::timestamptz,
            content = '', original_content = NULL
        FROM target AS t WHERE m.id = t.id AND t.allowed
        RETURNING m.id
    ), erased AS (
        UPDATE message_changes SET content = NULL
        WHERE message_id = (SELECT id FROM changed) AND content IS NOT NULL
    ), bumped AS (
        UPDATE conversations SET last_seq = last_seq + 1
        WHERE id = $1::uuid AND EXISTS (SELECT 1 FROM changed)
        RETURNING last_seq
    ), logged AS (
        INSERT INTO message_changes (conversation_id, seq, kind, message_id, user_id, created_at)
        SELECT $1::uuid, last_seq, 'delete', $2::uuid, $3::uuid, $4::timestamptz FROM bumped
    )
    SELECT conv.archived, t.allowed, (SELECT last_seq FROM bumped)
    FROM conv LEFT JOIN target AS t ON true"
);

/// Removes the reaction if present, adds it otherwise, takes the next position and
/// logs which, in one statement, unless the conversation is archived (its row is
/// locked, as for an edit). Answers `(live, removed, position, archived)`; a live
/// target without a position lost a race with the same toggle.
const TOGGLE_REACTION: &str = "\
    WITH conv AS (
        SELECT archived_at IS NOT NULL AS archived FROM conversations WHERE id = $1::uuid
    ), target AS (
        SELECT m.id FROM messages AS m JOIN conversations AS c ON c.id = m.conversation_id
        WHERE m.conversation_id = $1::uuid AND m.id = $2::uuid AND m.deleted_at IS NULL
          AND c.archived_at IS NULL
        FOR NO KEY UPDATE OF c
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
    ), bumped AS (
        UPDATE conversations SET last_seq = last_seq + 1
        WHERE id = $1::uuid
          AND (EXISTS (SELECT 1 FROM removed) OR EXISTS (SELECT 1 FROM added))
        RETURNING last_seq
    ), logged AS (
        INSERT INTO message_changes
            (conversation_id, seq, kind, message_id, user_id, emoji, created_at)
        SELECT $1::uuid, last_seq,
               CASE WHEN EXISTS (SELECT 1 FROM removed) THEN 'reaction_removed'
                    ELSE 'reaction_added' END,
               $2::uuid, $3::uuid, $4::text, $5::timestamptz
        FROM bumped
    )
    SELECT EXISTS (SELECT 1 FROM target), EXISTS (SELECT 1 FROM removed),
           (SELECT last_seq FROM bumped), COALESCE((SELECT archived FROM conv), false)";

/// A conversation's events in `($2, $3]`, messages as first broadcast. The content of
/// a message deleted by now, and of its edits, never leaves the database: the column
/// is null and `deleted` says why.
const STREAM: &str = "\
    SELECT s.seq, s.kind, s.message_id, s.user_id, u.username, s.content, s.emoji,
           s.created_at, s.client_id, s.deleted
    FROM (
        SELECT seq, 'message' AS kind, id AS message_id, sender_id AS user_id,
               CASE WHEN deleted_at IS NULL THEN COALESCE(original_content, content) END
                   AS content,
               NULL::text AS emoji, created_at, client_id, deleted_at IS NOT NULL AS deleted
        FROM messages WHERE conversation_id = $1 AND seq > $2 AND seq <= $3
        UNION ALL
        SELECT c.seq, c.kind, c.message_id, c.user_id,
               CASE WHEN m.deleted_at IS NULL THEN c.content END, c.emoji, c.created_at,
               NULL, m.deleted_at IS NOT NULL
        FROM message_changes AS c JOIN messages AS m ON m.id = c.message_id
        WHERE c.conversation_id = $1 AND c.seq > $2 AND c.seq <= $3
    ) AS s JOIN users AS u ON u.id = s.user_id
    ORDER BY s.seq";

const CREATE_CONVERSATION: &str = "\
    WITH created AS (
        INSERT INTO conversations
            (id, name, description, is_group, created_by, created_at, updated_at)
        VALUES ($1::uuid, $2::text, $3::text, $4::bool, $5::uuid, $6::timestamptz, $7::timestamptz)
    )
    INSERT INTO participants (conversation_id, user_id, joined_at, role)
    SELECT $1::uuid, u, $6::timestamptz, CASE WHEN u = $5::uuid THEN 'owner' ELSE 'member' END
    FROM UNNEST($8::uuid[]) AS u
    ON CONFLICT (conversation_id, user_id) DO NOTHING";

/// The columns of a history page, in `message_row` order.
macro_rules! history_page {
    ($order:literal) => {
        concat!(
            "SELECT m.id, m.sender_id, u.username, m.content, m.is_edited, m.created_at, \
                    m.updated_at, m.seq \
             FROM messages AS m JOIN users AS u ON u.id = m.sender_id \
             WHERE m.conversation_id = $1 AND m.deleted_at IS NULL \
               AND m.seq > COALESCE((SELECT seq FROM messages WHERE conversation_id = $1 AND id = $2), 0) \
               AND m.seq < COALESCE((SELECT seq FROM messages WHERE conversation_id = $1 AND id = $3), \
                                    9223372036854775807) \
             ORDER BY m.seq ",
            $order,
            " LIMIT $4"
        )
    };
}

/// The newest messages between the anchors (`$2` after, `$3` before; null: none).
const HISTORY_NEWEST: &str = history_page!("DESC");
/// The oldest messages between the anchors.
const HISTORY_OLDEST: &str = history_page!("ASC");

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
                    "SELECT id, username, password_hash, created_at FROM users WHERE username = $1 AND deleted_at IS NULL",
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
                    "SELECT id, username, password_hash, created_at FROM users WHERE id = $1 AND deleted_at IS NULL",
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
                     WHERE NOT EXISTS (SELECT 1 FROM users WHERE users.id = u.id AND deleted_at IS NULL) \
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

    async fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached(concat!(
                    "SELECT ",
                    conversation_columns!(),
                    " FROM conversations WHERE id = $1 AND deleted_at IS NULL"
                ))
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

    async fn member_position(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Option<Seq>, StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT c.last_seq FROM participants AS p \
                     JOIN conversations AS c ON c.id = p.conversation_id \
                     WHERE p.conversation_id = $1 AND p.user_id = $2",
                )
                .await?;
            let row = client.query_opt(&stmt, &[&id.0, &user.0]).await?;
            row.map(|r| r.try_get(0).map(Seq::from_db)).transpose()
        })
        .await
    }

    async fn history(
        &self,
        id: ConversationId,
        page: Page,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError> {
        let limit = i64::from(page.limit);
        let (after, before) = (page.after.map(|m| m.0), page.before.map(|m| m.0));
        let anchors: Vec<Uuid> = after.into_iter().chain(before).collect();
        self.run(async |client| {
            let query = if after.is_some() {
                HISTORY_OLDEST
            } else {
                HISTORY_NEWEST
            };
            let stmt = client.prepare_cached(query).await?;
            let params: [&(dyn ToSql + Sync); 4] = [&id.0, &after, &before, &limit];
            let rows = if anchors.is_empty() {
                client.query(&stmt, &params).await?
            } else {
                // Deleted messages still anchor a page: a client paging from a message
                // deleted meanwhile must not get a 404. Both statements go out back to
                // back on the connection: one round trip.
                let known = client
                    .prepare_cached(
                        "SELECT count(*) FROM messages WHERE conversation_id = $1 AND id = ANY($2)",
                    )
                    .await?;
                let known_params: [&(dyn ToSql + Sync); 2] = [&id.0, &anchors];
                let (known, rows) = tokio::try_join!(
                    client.query_one(&known, &known_params),
                    client.query(&stmt, &params),
                )?;
                let mut wanted = anchors.clone();
                wanted.dedup();
                if known.try_get::<_, i64>(0)? != wanted.len() as i64 {
                    return Ok(None);
                }
                rows
            };
            let mut messages = rows
                .iter()
                .map(|row| message_row(row, id))
                .collect::<Result<Vec<_>, _>>()?;
            if after.is_none() {
                messages.reverse();
            }
            if !messages.is_empty() {
                let ids: Vec<Uuid> = messages.iter().map(|m| m.id.0).collect();
                let stmt = client
                    .prepare_cached(
                        "SELECT message_id, emoji, user_id FROM reactions \
                         WHERE message_id = ANY($1) ORDER BY created_at, message_id LIMIT $2",
                    )
                    .await?;
                let cap = i64::from(REACTIONS_PER_PAGE);
                let rows = client.query(&stmt, &[&ids, &cap]).await?;
                let rows = rows
                    .iter()
                    .map(|r| {
                        Ok((
                            MessageId(r.try_get(0)?),
                            r.try_get(1)?,
                            UserId(r.try_get(2)?),
                        ))
                    })
                    .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
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
        let columns = batch::Columns::of(batch);
        self.run(async |client| columns.insert(client).await).await
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
            let live: bool = row.try_get(0)?;
            let removed: bool = row.try_get(1)?;
            let seq: Option<i64> = row.try_get(2)?;
            let archived: bool = row.try_get(3)?;
            Ok((archived, live, removed, seq.map(Seq::from_db)))
        })
        .await
        .and_then(|answer| match answer {
            (true, ..) => Ok(ReactionOutcome::ReadOnly),
            (false, false, _, _) => Ok(ReactionOutcome::NotFound),
            (false, true, true, Some(seq)) => Ok(ReactionOutcome::Removed(seq)),
            (false, true, false, Some(seq)) => Ok(ReactionOutcome::Added(seq)),
            (false, true, _, None) => Err(StoreError::Conflict(
                "the same reaction changed concurrently",
            )),
        })
    }

    async fn stream(
        &self,
        id: ConversationId,
        after: Seq,
        upto: Seq,
    ) -> Result<Vec<StreamEvent>, StoreError> {
        self.run(async |client| {
            let stmt = client.prepare_cached(STREAM).await?;
            let rows = client
                .query(&stmt, &[&id.0, &after.to_db(), &upto.to_db()])
                .await?;
            let mut events = Vec::with_capacity(rows.len());
            for row in &rows {
                events.extend(stream_row(row)?);
            }
            Ok(events)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run(async |client| client.simple_query("SELECT 1").await.map(drop))
            .await
    }
}
