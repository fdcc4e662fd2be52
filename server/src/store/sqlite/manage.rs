//! What managing a conversation needs from SQLite: direct conversations, roles, the
//! member list, changes, deletion and the purge of what a deletion leaves.
//!
//! Like `queries`, it touches connections only through `SqliteStore::read` and
//! `SqliteStore::write`; every operation of more than one statement runs in one
//! `IMMEDIATE` transaction (the writer connection is one, so they are serial).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::columns::{Key, Micros};
use super::queries::{conversation_columns, conversation_row, role_column};
use super::SqliteStore;
use crate::ids::{ConversationId, Role, UserId};
use crate::store::manage::{
    direct_key, ConversationChange, Direct, Guarded, Management, Participant, Removed,
};
use crate::store::model::{ConversationRecord, StoreError};

/// How many messages of a deleted conversation one purge step removes.
const PURGE_CHUNK: i64 = 2000;

/// The actor's role in the conversation, and whether it is direct, inside the
/// caller's transaction (which the single writer makes the moment of the write).
fn standing(
    tx: &Connection,
    id: ConversationId,
    actor: UserId,
) -> rusqlite::Result<Option<(Role, bool)>> {
    tx.prepare_cached(
        "SELECT p.role, c.direct_key IS NOT NULL FROM participants AS p \
         JOIN conversations AS c ON c.id = p.conversation_id \
         WHERE p.conversation_id = ?1 AND p.user_id = ?2 AND c.deleted_at IS NULL",
    )?
    .query_row(params![Key(id.0), Key(actor.0)], |row| {
        Ok((
            row.get::<_, String>(0)?.parse().unwrap_or(Role::Member),
            row.get(1)?,
        ))
    })
    .optional()
}

/// Why an actor without the standing a change needs gets nothing: the conversation
/// is gone, or they may not.
fn refused_or_gone<T>(tx: &Connection, id: ConversationId) -> rusqlite::Result<Guarded<T>> {
    Ok(if live_conversation(tx, id)?.is_some() {
        Guarded::Refused
    } else {
        Guarded::Gone
    })
}

/// The live conversation with that id.
fn live_conversation(
    tx: &Connection,
    id: ConversationId,
) -> rusqlite::Result<Option<ConversationRecord>> {
    tx.prepare_cached(concat!(
        "SELECT ",
        conversation_columns!(),
        " FROM conversations WHERE id = ?1 AND deleted_at IS NULL"
    ))?
    .query_row([Key(id.0)], conversation_row)
    .optional()
}

#[async_trait]
impl Management for SqliteStore {
    async fn create_direct(
        &self,
        c: &ConversationRecord,
        other: UserId,
    ) -> Result<Direct, StoreError> {
        let c = c.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let key = direct_key(c.created_by, other);
            let existing = tx
                .prepare_cached(concat!(
                    "SELECT ",
                    conversation_columns!(),
                    " FROM conversations WHERE direct_key = ?1 AND deleted_at IS NULL"
                ))?
                .query_row([&key], conversation_row)
                .optional()?;
            let (conversation, created) = match existing {
                Some(existing) => (existing, false),
                None => {
                    tx.prepare_cached(
                        "INSERT INTO conversations (id, name, description, is_group, created_by, \
                         created_at, updated_at, direct_key) \
                         VALUES (?1, ?2, ?3, 0, ?4, ?5, ?5, ?6)",
                    )?
                    .execute(params![
                        Key(c.id.0),
                        c.name,
                        c.description,
                        Key(c.created_by.0),
                        Micros(c.created_at),
                        key
                    ])?;
                    let created = ConversationRecord {
                        direct: true,
                        is_group: false,
                        ..c.clone()
                    };
                    (created, true)
                }
            };
            let mut rejoined = Vec::new();
            {
                let mut add = tx.prepare_cached(
                    "INSERT INTO participants (conversation_id, user_id, joined_at) \
                     VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                )?;
                for user in [c.created_by, other] {
                    let added = add.execute(params![
                        Key(conversation.id.0),
                        Key(user.0),
                        Micros(c.created_at)
                    ])?;
                    if added > 0 && !created {
                        rejoined.push(user);
                    }
                }
            }
            tx.commit()?;
            Ok(Direct {
                conversation,
                created,
                rejoined,
            })
        })
        .await
    }

    async fn membership(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Option<(ConversationRecord, Option<Role>)>, StoreError> {
        self.read(move |conn| {
            conn.prepare_cached(concat!(
                "SELECT ",
                conversation_columns!(),
                ", p.role FROM conversations AS c \
                 LEFT JOIN participants AS p ON p.conversation_id = c.id AND p.user_id = ?2 \
                 WHERE c.id = ?1 AND c.deleted_at IS NULL"
            ))?
            .query_row(params![Key(id.0), Key(user.0)], |row| {
                let role = match row.get::<_, Option<String>>(9)? {
                    None => None,
                    Some(_) => Some(role_column(row, 9)?),
                };
                Ok((conversation_row(row)?, role))
            })
            .optional()
        })
        .await
    }

    async fn update_conversation(
        &self,
        id: ConversationId,
        actor: UserId,
        change: &ConversationChange,
        at: DateTime<Utc>,
    ) -> Result<Guarded<ConversationRecord>, StoreError> {
        let change = change.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            match standing(&tx, id, actor)? {
                Some((role, direct)) if role.moderates() || direct => {}
                _ => return refused_or_gone(&tx, id),
            }
            if let Some(name) = &change.name {
                tx.prepare_cached("UPDATE conversations SET name = ?2 WHERE id = ?1")?
                    .execute(params![Key(id.0), name])?;
            }
            if let Some(description) = &change.description {
                tx.prepare_cached("UPDATE conversations SET description = ?2 WHERE id = ?1")?
                    .execute(params![Key(id.0), description])?;
            }
            match change.archived {
                Some(true) => tx
                    .prepare_cached(
                        "UPDATE conversations SET archived_at = coalesce(archived_at, ?2) \
                         WHERE id = ?1",
                    )?
                    .execute(params![Key(id.0), Micros(at)])?,
                Some(false) => tx
                    .prepare_cached("UPDATE conversations SET archived_at = NULL WHERE id = ?1")?
                    .execute([Key(id.0)])?,
                None => 0,
            };
            let now = live_conversation(&tx, id)?;
            tx.commit()?;
            Ok(now.map_or(Guarded::Gone, Guarded::Done))
        })
        .await
    }

    async fn delete_conversation(
        &self,
        id: ConversationId,
        actor: UserId,
    ) -> Result<Guarded<()>, StoreError> {
        let now = Micros(crate::ids::now_micros());
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            match standing(&tx, id, actor)? {
                Some((Role::Owner, _)) | Some((_, true)) => {}
                _ => return refused_or_gone(&tx, id),
            }
            // Gone for everyone: no pair key (the two may start afresh), archived so
            // nothing more is stored, no participants.
            let marked = tx
                .prepare_cached(
                    "UPDATE conversations SET deleted_at = ?2, \
                     archived_at = coalesce(archived_at, ?2), direct_key = NULL \
                     WHERE id = ?1 AND deleted_at IS NULL",
                )?
                .execute(params![Key(id.0), now])?;
            if marked > 0 {
                tx.prepare_cached("DELETE FROM participants WHERE conversation_id = ?1")?
                    .execute([Key(id.0)])?;
            }
            tx.commit()?;
            Ok(if marked > 0 {
                Guarded::Done(())
            } else {
                Guarded::Gone
            })
        })
        .await
    }

    async fn add_participant(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Guarded<()>, StoreError> {
        let now = Micros(crate::ids::now_micros());
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let open: Option<bool> = tx
                .prepare_cached(
                    "SELECT archived_at IS NULL AND direct_key IS NULL FROM conversations \
                     WHERE id = ?1 AND deleted_at IS NULL",
                )?
                .query_row([Key(id.0)], |row| row.get(0))
                .optional()?;
            let outcome = match open {
                None => Guarded::Gone,
                Some(false) => Guarded::Refused,
                Some(true) => {
                    tx.prepare_cached(
                        "INSERT INTO participants (conversation_id, user_id, joined_at) \
                         VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                    )?
                    .execute(params![Key(id.0), Key(user.0), now])?;
                    Guarded::Done(())
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
        .await
    }

    async fn participant_page(
        &self,
        id: ConversationId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<Participant>, StoreError> {
        // Without a cursor the page starts below every real id.
        let after = after.map_or(uuid::Uuid::nil(), |u| u.0);
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT p.user_id, u.username, p.role, p.joined_at \
                 FROM participants AS p JOIN users AS u ON u.id = p.user_id \
                 WHERE p.conversation_id = ?1 AND p.user_id > ?2 \
                 ORDER BY p.user_id LIMIT ?3",
            )?
            .query_map(params![Key(id.0), Key(after), limit], |row| {
                Ok(Participant {
                    user_id: UserId(row.get::<_, Key>(0)?.0),
                    username: row.get(1)?,
                    role: role_column(row, 2)?,
                    joined_at: row.get::<_, Micros>(3)?.0,
                })
            })?
            .collect()
        })
        .await
    }

    async fn set_role(
        &self,
        id: ConversationId,
        actor: UserId,
        user: UserId,
        role: Role,
    ) -> Result<Guarded<Vec<(UserId, Role)>>, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if !matches!(standing(&tx, id, actor)?, Some((Role::Owner, _))) {
                return refused_or_gone(&tx, id);
            }
            let current: Option<String> = tx
                .prepare_cached(
                    "SELECT role FROM participants WHERE conversation_id = ?1 AND user_id = ?2",
                )?
                .query_row(params![Key(id.0), Key(user.0)], |row| row.get(0))
                .optional()?;
            let Some(current) = current else {
                return Ok(Guarded::Missing);
            };
            let mut changed = Vec::new();
            if current != role.as_str() {
                // The owner steps down first: one owner at every moment.
                if role == Role::Owner {
                    let demoted: Vec<Key> = tx
                        .prepare_cached(
                            "UPDATE participants SET role = 'admin' \
                             WHERE conversation_id = ?1 AND role = 'owner' RETURNING user_id",
                        )?
                        .query_map([Key(id.0)], |row| row.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    changed.extend(demoted.into_iter().map(|k| (UserId(k.0), Role::Admin)));
                }
                tx.prepare_cached(
                    "UPDATE participants SET role = ?3 WHERE conversation_id = ?1 AND user_id = ?2",
                )?
                .execute(params![Key(id.0), Key(user.0), role.as_str()])?;
                changed.push((user, role));
            }
            tx.commit()?;
            Ok(Guarded::Done(changed))
        })
        .await
    }

    async fn remove_participant(
        &self,
        id: ConversationId,
        actor: UserId,
        user: UserId,
    ) -> Result<Guarded<Removed>, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if live_conversation(&tx, id)?.is_none() {
                return Ok(Guarded::Gone);
            }
            let Some((theirs, _)) = standing(&tx, id, user)? else {
                return Ok(Guarded::Missing);
            };
            let mine = standing(&tx, id, actor)?.map(|(role, _)| role);
            let allowed = user == actor
                || mine == Some(Role::Owner)
                || (mine == Some(Role::Admin) && theirs == Role::Member);
            if !allowed {
                return Ok(Guarded::Refused);
            }
            let role: Option<String> = tx
                .prepare_cached(
                    "DELETE FROM participants WHERE conversation_id = ?1 AND user_id = ?2 \
                     RETURNING role",
                )?
                .query_row(params![Key(id.0), Key(user.0)], |row| row.get(0))
                .optional()?;
            let Some(role) = role else {
                return Ok(Guarded::Missing);
            };
            let role: Role = role.parse().unwrap_or(Role::Member);
            let mut new_owner = None;
            if role == Role::Owner {
                let heir: Option<Key> = tx
                    .prepare_cached(
                        "SELECT user_id FROM participants WHERE conversation_id = ?1 \
                         ORDER BY role = 'admin' DESC, joined_at, user_id LIMIT 1",
                    )?
                    .query_row([Key(id.0)], |row| row.get(0))
                    .optional()?;
                if let Some(heir) = heir {
                    tx.prepare_cached(
                        "UPDATE participants SET role = 'owner' \
                         WHERE conversation_id = ?1 AND user_id = ?2",
                    )?
                    .execute(params![Key(id.0), heir])?;
                    new_owner = Some(UserId(heir.0));
                }
            }
            tx.commit()?;
            Ok(Guarded::Done(Removed { role, new_owner }))
        })
        .await
    }

    async fn purge_deleted(&self) -> Result<bool, StoreError> {
        Ok(self.purge().await? || self.erase().await?)
    }
}

impl SqliteStore {
    /// One chunk of the oldest deletion; whether there was one.
    pub(super) async fn purge(&self) -> Result<bool, StoreError> {
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let doomed: Option<Key> = tx
                .prepare_cached(
                    "SELECT id FROM conversations WHERE deleted_at IS NOT NULL \
                     ORDER BY deleted_at LIMIT 1",
                )?
                .query_row([], |row| row.get(0))
                .optional()?;
            let Some(doomed) = doomed else {
                return Ok(false);
            };
            // Their changes and reactions go with the messages.
            let gone = tx
                .prepare_cached(
                    "DELETE FROM messages WHERE id IN \
                     (SELECT id FROM messages WHERE conversation_id = ?1 LIMIT ?2)",
                )?
                .execute(params![Key(doomed.0), PURGE_CHUNK])?;
            if gone == 0 {
                tx.prepare_cached("DELETE FROM conversations WHERE id = ?1")?
                    .execute([Key(doomed.0)])?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }
}
