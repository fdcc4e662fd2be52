//! What a member's view of their conversations needs from PostgreSQL: the list with
//! read markers, unread counts and previews, the memberships a user stream carries,
//! and moving a read marker.
//!
//! Like `queries`, it reaches the database only through `PostgresStore::run`. No
//! statement here may cost more than the page it answers: unread counts stop at
//! `UNREAD_COUNT_MAX`, and the per-conversation reads run for the page's rows only.

use async_trait::async_trait;
use tokio_postgres::Row;

use super::queries::{conversation_row, role_column};
use super::PostgresStore;
use crate::ids::{ConversationId, MessageId, Seq, UserId};
use crate::store::model::{
    ConversationSummary, Inbox, ListPage, Preview, ReadOutcome, StoreError, PREVIEW_CHARS,
    UNREAD_COUNT_MAX,
};

/// The page first (on the participants and activity indexes), then for its rows only:
/// the unread count (messages of others after the marker, live ones, walked on the
/// `(conversation_id, seq)` index in order and stopped at the cap: the `ORDER BY`
/// keeps the planner from collecting every later position first, which would cost
/// the history after the marker instead of the cap) and the newest live message.
const SUMMARIES: &str = "\
    WITH page AS (
        SELECT c.id, c.name, c.description, c.is_group, c.created_by, c.created_at,
               c.updated_at, c.archived_at, c.direct_key IS NOT NULL AS direct, c.last_seq,
               p.last_read_seq, p.role
        FROM participants AS p JOIN conversations AS c ON c.id = p.conversation_id
        WHERE p.user_id = $1
          AND ($2::timestamptz IS NULL OR (c.updated_at, c.id) < ($2, $3::uuid))
        ORDER BY c.updated_at DESC, c.id DESC LIMIT $4
    )
    SELECT page.id, page.name, page.description, page.is_group, page.created_by,
           page.created_at, page.updated_at, page.archived_at, page.direct, page.last_seq,
           page.last_read_seq,
           (SELECT count(*) FROM (
                SELECT 1 FROM messages AS m
                WHERE m.conversation_id = page.id AND m.seq > page.last_read_seq
                  AND m.sender_id <> $1 AND m.deleted_at IS NULL
                ORDER BY m.seq LIMIT $5) AS unread),
           l.id, l.seq, l.sender_id, u.username, left(l.content, $6), l.created_at,
           page.role
    FROM page
    LEFT JOIN LATERAL (
        SELECT m.id, m.seq, m.sender_id, m.content, m.created_at FROM messages AS m
        WHERE m.conversation_id = page.id AND m.deleted_at IS NULL
        ORDER BY m.seq DESC LIMIT 1
    ) AS l ON true
    LEFT JOIN users AS u ON u.id = l.sender_id
    ORDER BY page.updated_at DESC, page.id DESC";

/// Moves the marker only forward, to the stream's end at most; answers where it
/// moved to, or where it stands (no row at all: not a participant).
const MARK_READ: &str = "\
    WITH c AS (SELECT least($3, last_seq) AS target FROM conversations WHERE id = $1),
    moved AS (
        UPDATE participants AS p SET last_read_seq = c.target
        FROM c
        WHERE p.conversation_id = $1 AND p.user_id = $2 AND p.last_read_seq < c.target
        RETURNING p.last_read_seq
    )
    SELECT (SELECT last_read_seq FROM moved),
           (SELECT last_read_seq FROM participants WHERE conversation_id = $1 AND user_id = $2)";

fn summary_row(row: &Row) -> Result<ConversationSummary, tokio_postgres::Error> {
    let last_message = match row.try_get::<_, Option<uuid::Uuid>>(12)? {
        None => None,
        Some(id) => Some(Preview {
            id: MessageId(id),
            seq: Seq::from_db(row.try_get(13)?),
            sender_id: UserId(row.try_get(14)?),
            sender_username: row.try_get(15)?,
            content: row.try_get(16)?,
            created_at: row.try_get(17)?,
        }),
    };
    Ok(ConversationSummary {
        conversation: conversation_row(row)?,
        last_seq: Seq::from_db(row.try_get(9)?),
        last_read_seq: Seq::from_db(row.try_get(10)?),
        unread_count: u32::try_from(row.try_get::<_, i64>(11)?).unwrap_or(UNREAD_COUNT_MAX),
        last_message,
        role: role_column(row, 18)?,
    })
}

#[async_trait]
impl Inbox for PostgresStore {
    async fn conversations_of(
        &self,
        user: UserId,
        page: ListPage,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        let at = page.after.map(|c| c.updated_at);
        let id = page.after.map(|c| c.id.0);
        let limit = i64::from(page.limit);
        let (cap, preview) = (
            i64::from(UNREAD_COUNT_MAX),
            i32::try_from(PREVIEW_CHARS).unwrap_or(100),
        );
        self.run(async |client| {
            let stmt = client.prepare_cached(SUMMARIES).await?;
            client
                .query(&stmt, &[&user.0, &at, &id, &limit, &cap, &preview])
                .await?
                .iter()
                .map(summary_row)
                .collect()
        })
        .await
    }

    async fn memberships(
        &self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError> {
        let limit = i64::from(limit);
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT c.id, c.last_seq \
                     FROM participants AS p JOIN conversations AS c ON c.id = p.conversation_id \
                     WHERE p.user_id = $1 ORDER BY c.updated_at DESC, c.id DESC LIMIT $2",
                )
                .await?;
            client
                .query(&stmt, &[&user.0, &limit])
                .await?
                .iter()
                .map(|r| Ok((ConversationId(r.try_get(0)?), Seq::from_db(r.try_get(1)?))))
                .collect()
        })
        .await
    }

    async fn member_positions(
        &self,
        id: ConversationId,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Seq)>, StoreError> {
        let users: Vec<uuid::Uuid> = users.iter().map(|u| u.0).collect();
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "SELECT p.user_id, c.last_seq \
                     FROM participants AS p JOIN conversations AS c ON c.id = p.conversation_id \
                     WHERE p.conversation_id = $1 AND p.user_id = ANY($2)",
                )
                .await?;
            client
                .query(&stmt, &[&id.0, &users])
                .await?
                .iter()
                .map(|r| Ok((UserId(r.try_get(0)?), Seq::from_db(r.try_get(1)?))))
                .collect()
        })
        .await
    }

    async fn mark_read(
        &self,
        id: ConversationId,
        user: UserId,
        seq: Seq,
    ) -> Result<ReadOutcome, StoreError> {
        self.run(async |client| {
            let stmt = client.prepare_cached(MARK_READ).await?;
            let row = client
                .query_one(&stmt, &[&id.0, &user.0, &seq.to_db()])
                .await?;
            let (moved, marker): (Option<i64>, Option<i64>) = (row.try_get(0)?, row.try_get(1)?);
            Ok(match (moved, marker) {
                (Some(moved), _) => ReadOutcome::Moved(Seq::from_db(moved)),
                (None, Some(marker)) => ReadOutcome::Kept(Seq::from_db(marker)),
                (None, None) => ReadOutcome::NotMember,
            })
        })
        .await
    }
}
