//! What accounts need from PostgreSQL: deleting one (its sessions, its memberships,
//! its row kept as a nameless sender), erasing a deleted account's messages a chunk
//! at a time, and the export of a user's data, a page at a time.
//!
//! Like `queries`, it reaches the database only through `PostgresStore::run`; each
//! operation is one statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::queries::{conversation_columns, conversation_row, role_column};
use super::PostgresStore;
use crate::ids::{ConversationId, MessageId, Seq, SessionId, UserId};
use crate::store::account::{account_gone, Accounts, DeletedAccount, Membership};
use crate::store::model::{MessageRecord, StoreError};

/// How many messages of a deleted account one purge step erases.
const ERASE_CHUNK: i64 = 2000;

/// Marks the account deleted under a name registration refuses (it holds a space),
/// ends its sessions, removes its memberships and hands over what it owned. Rows:
/// `('c', conversation, new owner)` per conversation left, `('s', session)` per
/// session ended, `('u', user)` once when there was such a live account.
const DELETE: &str = "\
    WITH target AS (
        UPDATE users
        SET deleted_at = $2, username = 'deleted user ' || replace(id::text, '-', ''),
            password_hash = '', tokens_not_before = $3, erase_pending = $4
        WHERE id = $1 AND deleted_at IS NULL
        RETURNING id
    ), ended AS (
        UPDATE sessions SET ended_at = $2
        WHERE user_id IN (SELECT id FROM target) AND ended_at IS NULL
        RETURNING id
    ), gone AS (
        DELETE FROM participants WHERE user_id IN (SELECT id FROM target)
        RETURNING conversation_id, role
    ), heirs AS (
        SELECT DISTINCT ON (p.conversation_id) p.conversation_id, p.user_id
        FROM participants AS p
        JOIN gone AS g ON g.conversation_id = p.conversation_id AND g.role = 'owner'
        WHERE p.user_id <> $1
        ORDER BY p.conversation_id, p.role = 'admin' DESC, p.joined_at, p.user_id
    ), crowned AS (
        UPDATE participants AS p SET role = 'owner'
        FROM heirs AS h
        WHERE p.conversation_id = h.conversation_id AND p.user_id = h.user_id
        RETURNING p.conversation_id, p.user_id
    )
    SELECT 'c', g.conversation_id, c.user_id
    FROM gone AS g LEFT JOIN crowned AS c ON c.conversation_id = g.conversation_id
    UNION ALL SELECT 's', id, NULL FROM ended
    UNION ALL SELECT 'u', id, NULL FROM target";

/// One chunk of the messages table, in id order after the last chunk, for an
/// account deleted with `erase`: those of its messages the chunk holds are erased;
/// once the table is done, so is the account. Answers whether one was pending.
const ERASE: &str = "\
    WITH pending AS (
        SELECT id, erase_after FROM users WHERE erase_pending LIMIT 1
    ), chunk AS (
        SELECT m.id, m.sender_id FROM messages AS m, pending AS p
        WHERE p.erase_after IS NULL OR m.id > p.erase_after
        ORDER BY m.id LIMIT $1
    ), erased AS (
        UPDATE messages SET deleted_at = $2, updated_at = $2, content = '',
            original_content = NULL
        WHERE id IN (SELECT c.id FROM chunk AS c JOIN pending AS p ON c.sender_id = p.id)
          AND deleted_at IS NULL
    ), edits AS (
        UPDATE message_changes SET content = NULL
        WHERE message_id IN (SELECT c.id FROM chunk AS c JOIN pending AS p ON c.sender_id = p.id)
          AND content IS NOT NULL
    ), progress AS (
        UPDATE users AS u
        SET erase_after = (SELECT id FROM chunk ORDER BY id DESC LIMIT 1),
            erase_pending = (SELECT count(*) FROM chunk) = $1
        FROM pending AS p WHERE u.id = p.id
    )
    SELECT EXISTS (SELECT 1 FROM pending)";

const EXPORT_CONVERSATIONS: &str = concat!(
    "SELECT ",
    conversation_columns!(),
    ", p.role, p.joined_at
    FROM participants AS p JOIN conversations AS c ON c.id = p.conversation_id
    WHERE p.user_id = $1 AND ($2::uuid IS NULL OR p.conversation_id > $2)
    ORDER BY p.conversation_id LIMIT $3"
);

/// The next `$3` messages after `$2` in id order (the primary key's): the user's live
/// ones among them (`mine`), and the last one looked at.
const EXPORT_MESSAGES: &str = "\
    WITH chunk AS (
        SELECT id, conversation_id, seq, content, is_edited, created_at, updated_at,
               sender_id, deleted_at
        FROM messages WHERE $2::uuid IS NULL OR id > $2
        ORDER BY id LIMIT $3
    )
    SELECT c.id, c.conversation_id, c.seq, c.content, c.is_edited, c.created_at,
           c.updated_at, u.username, true
    FROM chunk AS c JOIN users AS u ON u.id = c.sender_id
    WHERE c.sender_id = $1 AND c.deleted_at IS NULL
    UNION ALL
    SELECT (SELECT id FROM chunk ORDER BY id DESC LIMIT 1), NULL, NULL, NULL, NULL, NULL,
           NULL, NULL, false
    WHERE (SELECT count(*) FROM chunk) = $3
    ORDER BY 9 DESC, 1";

/// A prefix is the range `[prefix, prefix + "~")`: `~` sorts after every character a
/// username may hold.
const BY_PREFIX: &str = "\
    SELECT id, username FROM users
    WHERE deleted_at IS NULL
      AND lower(username) COLLATE \"C\" >= $1 AND lower(username) COLLATE \"C\" < $2
      AND ($3::text IS NULL
           OR (lower(username) COLLATE \"C\", username) > (lower($3) COLLATE \"C\", $3))
    ORDER BY lower(username) COLLATE \"C\", username LIMIT $4";

#[async_trait]
impl Accounts for PostgresStore {
    async fn users_by_prefix(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(UserId, String)>, StoreError> {
        let end = format!("{prefix}~");
        let limit = i64::from(limit);
        self.run(async |client| {
            let stmt = client.prepare_cached(BY_PREFIX).await?;
            client
                .query(&stmt, &[&prefix, &end, &after, &limit])
                .await?
                .iter()
                .map(|row| Ok((UserId(row.try_get(0)?), row.try_get(1)?)))
                .collect()
        })
        .await
    }

    async fn delete_account(
        &self,
        user: UserId,
        erase: bool,
        at: DateTime<Utc>,
    ) -> Result<Option<DeletedAccount>, StoreError> {
        let never = account_gone();
        self.run(async |client| {
            let stmt = client.prepare_cached(DELETE).await?;
            let rows = client.query(&stmt, &[&user.0, &at, &never, &erase]).await?;
            let mut deleted = DeletedAccount::default();
            let mut found = false;
            for row in &rows {
                let id: Uuid = row.try_get(1)?;
                match row.try_get::<_, &str>(0)? {
                    "c" => deleted.left.push((
                        ConversationId(id),
                        row.try_get::<_, Option<Uuid>>(2)?.map(UserId),
                    )),
                    "s" => deleted.sessions.push(SessionId(id)),
                    _ => found = true,
                }
            }
            Ok(found.then_some(deleted))
        })
        .await
    }

    async fn export_conversations(
        &self,
        user: UserId,
        after: Option<ConversationId>,
        limit: u32,
    ) -> Result<Vec<Membership>, StoreError> {
        let (after, limit) = (after.map(|c| c.0), i64::from(limit));
        self.run(async |client| {
            let stmt = client.prepare_cached(EXPORT_CONVERSATIONS).await?;
            client
                .query(&stmt, &[&user.0, &after, &limit])
                .await?
                .iter()
                .map(|row| {
                    Ok(Membership {
                        conversation: conversation_row(row)?,
                        role: role_column(row, 9)?,
                        joined_at: row.try_get(10)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn export_messages(
        &self,
        user: UserId,
        after: Option<MessageId>,
        scan: u32,
    ) -> Result<(Vec<MessageRecord>, Option<MessageId>), StoreError> {
        let (after, scan) = (after.map(|m| m.0), i64::from(scan));
        self.run(async |client| {
            let stmt = client.prepare_cached(EXPORT_MESSAGES).await?;
            let (mut mine, mut next) = (Vec::new(), None);
            for row in client.query(&stmt, &[&user.0, &after, &scan]).await? {
                let id = MessageId(row.try_get(0)?);
                if !row.try_get::<_, bool>(8)? {
                    // The chunk was full: the table goes on after its last message.
                    next = Some(id);
                    continue;
                }
                mine.push(MessageRecord {
                    id,
                    conversation_id: ConversationId(row.try_get(1)?),
                    seq: Seq::from_db(row.try_get(2)?),
                    sender_id: user,
                    content: row.try_get(3)?,
                    is_edited: row.try_get(4)?,
                    created_at: row.try_get(5)?,
                    updated_at: row.try_get(6)?,
                    sender_username: row.try_get(7)?,
                    reactions: Vec::new(),
                });
            }
            Ok((mine, next))
        })
        .await
    }

    async fn set_password(&self, user: UserId, hash: &str) -> Result<(), StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached("UPDATE users SET password_hash = $2 WHERE id = $1")
                .await?;
            client.execute(&stmt, &[&user.0, &hash]).await?;
            Ok(())
        })
        .await
    }
}

impl PostgresStore {
    /// One chunk of the messages of an account deleted with `erase`; whether one was
    /// pending.
    pub(super) async fn erase(&self) -> Result<bool, StoreError> {
        let now = crate::ids::now_micros();
        self.run(async |client| {
            let stmt = client.prepare_cached(ERASE).await?;
            client
                .query_one(&stmt, &[&ERASE_CHUNK, &now])
                .await?
                .try_get(0)
        })
        .await
    }
}
