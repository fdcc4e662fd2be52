//! What accounts need from SQLite: deleting one (its sessions, its memberships, its
//! row kept as a nameless sender), erasing a deleted account's messages a chunk at a
//! time, and the export of a user's data, a page at a time.
//!
//! Like `queries`, it touches connections only through `SqliteStore::read` and
//! `SqliteStore::write`; an operation of several statements runs in one `IMMEDIATE`
//! transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::columns::{Key, Micros};
use super::queries::{conversation_columns, conversation_row, role_column};
use super::SqliteStore;
use crate::ids::{ConversationId, MessageId, Role, Seq, SessionId, UserId};
use crate::store::account::{account_gone, Accounts, DeletedAccount, Membership};
use crate::store::model::{MessageRecord, StoreError};

/// How many messages of a deleted account one purge step erases.
const ERASE_CHUNK: i64 = 2000;

#[async_trait]
impl Accounts for SqliteStore {
    async fn users_by_prefix(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(UserId, String)>, StoreError> {
        // A prefix is the range `[prefix, prefix + "~")`: `~` sorts after every
        // character a username may hold.
        let (start, end) = (prefix.to_owned(), format!("{prefix}~"));
        let after = after.map(str::to_owned);
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, username FROM users \
                 WHERE deleted_at IS NULL AND lower(username) >= ?1 AND lower(username) < ?2 \
                   AND (?3 IS NULL OR (lower(username), username) > (lower(?3), ?3)) \
                 ORDER BY lower(username), username LIMIT ?4",
            )?
            .query_map(params![start, end, after, limit], |row| {
                Ok((UserId(row.get::<_, Key>(0)?.0), row.get(1)?))
            })?
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
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // A name registration refuses (it holds a space), unique by the id.
            let marked = tx
                .prepare_cached(
                    "UPDATE users SET deleted_at = ?2, \
                     username = 'deleted user ' || replace(id, '-', ''), password_hash = '', \
                     tokens_not_before = ?3, erase_pending = ?4 \
                     WHERE id = ?1 AND deleted_at IS NULL",
                )?
                .execute(params![
                    Key(user.0),
                    Micros(at),
                    Micros(account_gone()),
                    erase
                ])?;
            if marked == 0 {
                return Ok(None);
            }
            let sessions = tx
                .prepare_cached(
                    "UPDATE sessions SET ended_at = ?2 \
                     WHERE user_id = ?1 AND ended_at IS NULL RETURNING id",
                )?
                .query_map(params![Key(user.0), Micros(at)], |row| {
                    Ok(SessionId(row.get::<_, Key>(0)?.0))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let memberships: Vec<(Key, String)> = tx
                .prepare_cached(
                    "DELETE FROM participants WHERE user_id = ?1 RETURNING conversation_id, role",
                )?
                .query_map([Key(user.0)], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut left = Vec::with_capacity(memberships.len());
            for (Key(conversation), role) in memberships {
                let mut heir = None;
                if role == Role::Owner.as_str() {
                    heir = tx
                        .prepare_cached(
                            "SELECT user_id FROM participants WHERE conversation_id = ?1 \
                             ORDER BY role = 'admin' DESC, joined_at, user_id LIMIT 1",
                        )?
                        .query_row([Key(conversation)], |row| row.get::<_, Key>(0))
                        .optional()?
                        .map(|k| k.0);
                    if let Some(heir) = heir {
                        tx.prepare_cached(
                            "UPDATE participants SET role = 'owner' \
                             WHERE conversation_id = ?1 AND user_id = ?2",
                        )?
                        .execute(params![Key(conversation), Key(heir)])?;
                    }
                }
                left.push((ConversationId(conversation), heir.map(UserId)));
            }
            tx.commit()?;
            Ok(Some(DeletedAccount { left, sessions }))
        })
        .await
    }

    async fn export_conversations(
        &self,
        user: UserId,
        after: Option<ConversationId>,
        limit: u32,
    ) -> Result<Vec<Membership>, StoreError> {
        let after = after.map_or(uuid::Uuid::nil(), |c| c.0);
        self.read(move |conn| {
            conn.prepare_cached(concat!(
                "SELECT ",
                conversation_columns!(),
                ", p.role, p.joined_at \
                 FROM participants AS p JOIN conversations AS c ON c.id = p.conversation_id \
                 WHERE p.user_id = ?1 AND p.conversation_id > ?2 \
                 ORDER BY p.conversation_id LIMIT ?3"
            ))?
            .query_map(params![Key(user.0), Key(after), limit], |row| {
                Ok(Membership {
                    conversation: conversation_row(row)?,
                    role: role_column(row, 9)?,
                    joined_at: row.get::<_, Micros>(10)?.0,
                })
            })?
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
        let after = after.map_or(uuid::Uuid::nil(), |m| m.0);
        self.read(move |conn| {
            // The next `scan` messages in id order (the primary key's): the user's live
            // ones among them, and the last one looked at.
            let mut stmt = conn.prepare_cached(
                "SELECT m.id, m.conversation_id, m.seq, m.content, m.is_edited, m.created_at, \
                        m.updated_at, m.sender_id, m.deleted_at IS NULL \
                 FROM messages AS m WHERE m.id > ?1 ORDER BY m.id LIMIT ?2",
            )?;
            let mut rows = stmt.query(params![Key(after), scan])?;
            let (mut mine, mut last, mut seen) = (Vec::new(), None, 0u32);
            while let Some(row) = rows.next()? {
                seen += 1;
                let id = MessageId(row.get::<_, Key>(0)?.0);
                last = Some(id);
                let (sender, live): (Key, bool) = (row.get(7)?, row.get(8)?);
                if sender.0 != user.0 || !live {
                    continue;
                }
                mine.push(MessageRecord {
                    id,
                    conversation_id: ConversationId(row.get::<_, Key>(1)?.0),
                    seq: Seq::from_db(row.get(2)?),
                    sender_id: user,
                    content: row.get(3)?,
                    is_edited: row.get(4)?,
                    created_at: row.get::<_, Micros>(5)?.0,
                    updated_at: row.get::<_, Micros>(6)?.0,
                    sender_username: String::new(),
                    reactions: Vec::new(),
                });
            }
            let name: Option<String> = conn
                .prepare_cached("SELECT username FROM users WHERE id = ?1")?
                .query_row([Key(user.0)], |row| row.get(0))
                .optional()?;
            for m in &mut mine {
                m.sender_username
                    .clone_from(name.as_ref().unwrap_or(&String::new()));
            }
            // A full chunk: the table may go on after its last message.
            Ok((mine, last.filter(|_| seen == scan)))
        })
        .await
    }

    async fn set_password(&self, user: UserId, hash: &str) -> Result<(), StoreError> {
        let hash = hash.to_owned();
        self.write(move |conn| {
            conn.prepare_cached("UPDATE users SET password_hash = ?2 WHERE id = ?1")?
                .execute(params![Key(user.0), hash])?;
            Ok(())
        })
        .await
    }
}

impl SqliteStore {
    /// One chunk of the messages of an account deleted with `erase`; whether one was
    /// pending.
    pub(super) async fn erase(&self) -> Result<bool, StoreError> {
        let now = Micros(crate::ids::now_micros());
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let pending: Option<(Key, Option<Key>)> = tx
                .prepare_cached("SELECT id, erase_after FROM users WHERE erase_pending LIMIT 1")?
                .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))
                .optional()?;
            let Some((user, after)) = pending else {
                return Ok(false);
            };
            let after = after.unwrap_or(Key(uuid::Uuid::nil()));
            // The next chunk of the whole table in id order: no index by sender is kept
            // (it would cost every insert), so the walk is bounded by what it reads.
            let chunk: Vec<(Key, Key)> = tx
                .prepare_cached(
                    "SELECT id, sender_id FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?
                .query_map(params![after, ERASE_CHUNK], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            {
                let mut message = tx.prepare_cached(
                    "UPDATE messages SET deleted_at = ?2, updated_at = ?2, content = '', \
                     original_content = NULL WHERE id = ?1 AND deleted_at IS NULL",
                )?;
                let mut edits = tx.prepare_cached(
                    "UPDATE message_changes SET content = NULL \
                     WHERE message_id = ?1 AND content IS NOT NULL",
                )?;
                for (id, sender) in &chunk {
                    if sender.0 == user.0 {
                        message.execute(params![id, now])?;
                        edits.execute([id])?;
                    }
                }
            }
            let full = chunk.len() == usize::try_from(ERASE_CHUNK).unwrap_or(usize::MAX);
            tx.prepare_cached(
                "UPDATE users SET erase_after = ?2, erase_pending = ?3 WHERE id = ?1",
            )?
            .execute(params![user, chunk.last().map(|(id, _)| id), full])?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}
