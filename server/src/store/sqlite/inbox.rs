//! What a member's view of their conversations needs from SQLite: the list with read
//! markers, unread counts and previews, the memberships a user stream carries, and
//! moving a read marker.
//!
//! Like `queries`, it touches connections only through `SqliteStore::read` and
//! `SqliteStore::write`. No statement here may cost more than the page it answers:
//! unread counts stop at `UNREAD_COUNT_MAX`, and the per-conversation reads run for
//! the page's rows only.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension, Row};

use super::columns::{Key, Micros};
use super::queries::{conversation_row, role_column};
use super::SqliteStore;
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
        WHERE p.user_id = ?1 AND (c.updated_at, c.id) < (?2, ?3)
        ORDER BY c.updated_at DESC, c.id DESC LIMIT ?4
    ), newest AS (
        SELECT page.id AS conversation_id,
               (SELECT m.id FROM messages AS m
                WHERE m.conversation_id = page.id AND m.deleted_at IS NULL
                ORDER BY m.seq DESC LIMIT 1) AS message_id
        FROM page
    )
    SELECT page.id, page.name, page.description, page.is_group, page.created_by,
           page.created_at, page.updated_at, page.archived_at, page.direct, page.last_seq,
           page.last_read_seq,
           (SELECT count(*) FROM (
                SELECT 1 FROM messages AS m
                WHERE m.conversation_id = page.id AND m.seq > page.last_read_seq
                  AND m.sender_id <> ?1 AND m.deleted_at IS NULL
                ORDER BY m.seq LIMIT ?5)),
           l.id, l.seq, l.sender_id, u.username, substr(l.content, 1, ?6), l.created_at,
           page.role
    FROM page
    JOIN newest ON newest.conversation_id = page.id
    LEFT JOIN messages AS l ON l.id = newest.message_id
    LEFT JOIN users AS u ON u.id = l.sender_id
    ORDER BY page.updated_at DESC, page.id DESC";

fn summary_row(row: &Row<'_>) -> rusqlite::Result<ConversationSummary> {
    let last_message = match row.get::<_, Option<Key>>(12)? {
        None => None,
        Some(id) => Some(Preview {
            id: MessageId(id.0),
            seq: Seq::from_db(row.get(13)?),
            sender_id: UserId(row.get::<_, Key>(14)?.0),
            sender_username: row.get(15)?,
            content: row.get(16)?,
            created_at: row.get::<_, Micros>(17)?.0,
        }),
    };
    Ok(ConversationSummary {
        conversation: conversation_row(row)?,
        last_seq: Seq::from_db(row.get(9)?),
        last_read_seq: Seq::from_db(row.get(10)?),
        unread_count: row.get(11)?,
        last_message,
        role: role_column(row, 18)?,
    })
}

#[async_trait]
impl Inbox for SqliteStore {
    async fn conversations_of(
        &self,
        user: UserId,
        page: ListPage,
    ) -> Result<Vec<ConversationSummary>, StoreError> {
        // Without a cursor the page starts above every real row.
        let (at, id) = page.after.map_or((i64::MAX, uuid::Uuid::max()), |c| {
            (c.updated_at.timestamp_micros(), c.id.0)
        });
        self.read(move |conn| {
            conn.prepare_cached(SUMMARIES)?
                .query_map(
                    params![
                        Key(user.0),
                        at,
                        Key(id),
                        page.limit,
                        UNREAD_COUNT_MAX,
                        PREVIEW_CHARS
                    ],
                    summary_row,
                )?
                .collect()
        })
        .await
    }

    async fn memberships(
        &self,
        user: UserId,
        limit: u32,
    ) -> Result<Vec<(ConversationId, Seq)>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT c.id, c.last_seq \
                 FROM participants AS p JOIN conversations AS c ON c.id = p.conversation_id \
                 WHERE p.user_id = ?1 ORDER BY c.updated_at DESC, c.id DESC LIMIT ?2",
            )?
            .query_map(params![Key(user.0), limit], |r| {
                Ok((
                    ConversationId(r.get::<_, Key>(0)?.0),
                    Seq::from_db(r.get(1)?),
                ))
            })?
            .collect()
        })
        .await
    }

    async fn member_positions(
        &self,
        id: ConversationId,
        users: &[UserId],
    ) -> Result<Vec<(UserId, Seq)>, StoreError> {
        let users =
            serde_json::Value::from(users.iter().map(ToString::to_string).collect::<Vec<_>>())
                .to_string();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT p.user_id, c.last_seq \
                 FROM participants AS p JOIN conversations AS c ON c.id = p.conversation_id \
                 WHERE p.conversation_id = ?1 AND p.user_id IN (SELECT value FROM json_each(?2))",
            )?
            .query_map(params![Key(id.0), users], |r| {
                Ok((UserId(r.get::<_, Key>(0)?.0), Seq::from_db(r.get(1)?)))
            })?
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
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let moved = tx
                .prepare_cached(
                    "UPDATE participants \
                     SET last_read_seq = min(?3, (SELECT last_seq FROM conversations WHERE id = ?1)) \
                     WHERE conversation_id = ?1 AND user_id = ?2 \
                       AND last_read_seq < min(?3, (SELECT last_seq FROM conversations WHERE id = ?1))",
                )?
                .execute(params![Key(id.0), Key(user.0), seq.to_db()])?;
            let marker: Option<i64> = tx
                .prepare_cached(
                    "SELECT last_read_seq FROM participants \
                     WHERE conversation_id = ?1 AND user_id = ?2",
                )?
                .query_row(params![Key(id.0), Key(user.0)], |r| r.get(0))
                .optional()?;
            tx.commit()?;
            Ok(match marker {
                None => ReadOutcome::NotMember,
                Some(marker) if moved > 0 => ReadOutcome::Moved(Seq::from_db(marker)),
                Some(marker) => ReadOutcome::Kept(Seq::from_db(marker)),
            })
        })
        .await
    }
}
