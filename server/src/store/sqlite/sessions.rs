//! What logins need from SQLite: sessions, their renewal and ending, tokens that no
//! longer count, and password changes.
//!
//! Like `queries`, it touches connections only through `SqliteStore::read` and
//! `SqliteStore::write`; an operation of several statements runs in one `IMMEDIATE`
//! transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::columns::{Key, Micros};
use super::SqliteStore;
use crate::ids::{SessionId, UserId};
use crate::store::account::{EndedTokens, Ending, NewSession, Renewal, Sessions};
use crate::store::model::StoreError;

#[async_trait]
impl Sessions for SqliteStore {
    async fn create_session(
        &self,
        session: &NewSession,
        keep: u32,
        forget_before: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError> {
        let s = session.clone();
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.prepare_cached(
                "DELETE FROM sessions WHERE user_id = ?1 AND coalesce(ended_at, expires_at) < ?2",
            )?
            .execute(params![Key(s.user.0), Micros(forget_before)])?;
            tx.prepare_cached(
                "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, \
                 user_agent) VALUES (?1, ?2, ?3, ?3, ?4, ?5)",
            )?
            .execute(params![
                Key(s.id.0),
                Key(s.user.0),
                Micros(s.created_at),
                Micros(s.expires_at),
                s.user_agent
            ])?;
            let evicted: Vec<SessionId> = tx
                .prepare_cached(
                    "UPDATE sessions SET ended_at = ?2 WHERE id IN ( \
                         SELECT id FROM sessions \
                         WHERE user_id = ?1 AND ended_at IS NULL AND expires_at > ?2 \
                         ORDER BY created_at DESC, id DESC LIMIT -1 OFFSET ?3) \
                     RETURNING id",
                )?
                .query_map(params![Key(s.user.0), Micros(s.created_at), keep], |row| {
                    Ok(SessionId(row.get::<_, Key>(0)?.0))
                })?
                .collect::<rusqlite::Result<_>>()?;
            tx.commit()?;
            Ok(evicted)
        })
        .await
    }

    async fn renew_session(
        &self,
        id: SessionId,
        generation: u64,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<Renewal, StoreError> {
        let generation = i64::try_from(generation).unwrap_or(i64::MAX);
        self.write(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let found: Option<(Key, i64, bool)> = tx
                .prepare_cached(
                    "SELECT user_id, generation, ended_at IS NULL AND expires_at > ?2 \
                     FROM sessions WHERE id = ?1",
                )?
                .query_row(params![Key(id.0), Micros(now)], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()?;
            let renewal = match found {
                Some((user, current, true)) if current == generation => {
                    tx.prepare_cached(
                        "UPDATE sessions SET generation = generation + 1, last_used_at = ?2, \
                         expires_at = ?3 WHERE id = ?1",
                    )?
                    .execute(params![
                        Key(id.0),
                        Micros(now),
                        Micros(expires_at)
                    ])?;
                    Renewal::Renewed {
                        user: UserId(user.0),
                        generation: u64::try_from(current + 1).unwrap_or(0),
                    }
                }
                Some((user, current, _)) if current > generation => {
                    let ended = tx
                        .prepare_cached(
                            "UPDATE sessions SET ended_at = ?2 \
                             WHERE id = ?1 AND ended_at IS NULL",
                        )?
                        .execute(params![Key(id.0), Micros(now)])?;
                    if ended > 0 {
                        Renewal::Reused {
                            user: UserId(user.0),
                        }
                    } else {
                        Renewal::Ended
                    }
                }
                _ => Renewal::Ended,
            };
            tx.commit()?;
            Ok(renewal)
        })
        .await
    }

    async fn end_sessions(
        &self,
        user: UserId,
        which: Ending,
        at: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError> {
        self.write(move |conn| {
            let (sql, session) = match which {
                Ending::One(id) => (
                    "UPDATE sessions SET ended_at = ?3 \
                     WHERE user_id = ?1 AND id = ?2 AND ended_at IS NULL RETURNING id",
                    Some(Key(id.0)),
                ),
                Ending::AllBut(keep) => (
                    "UPDATE sessions SET ended_at = ?3 \
                     WHERE user_id = ?1 AND ended_at IS NULL \
                       AND (?2 IS NULL OR id <> ?2) RETURNING id",
                    keep.map(|k| Key(k.0)),
                ),
            };
            conn.prepare_cached(sql)?
                .query_map(params![Key(user.0), session, Micros(at)], |row| {
                    Ok(SessionId(row.get::<_, Key>(0)?.0))
                })?
                .collect()
        })
        .await
    }

    async fn set_tokens_not_before(
        &self,
        user: UserId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "UPDATE users SET tokens_not_before = max(coalesce(tokens_not_before, ?2), ?2) \
                 WHERE id = ?1",
            )?
            .execute(params![Key(user.0), Micros(at)])?;
            Ok(())
        })
        .await
    }

    async fn ended_tokens(&self, since: DateTime<Utc>) -> Result<EndedTokens, StoreError> {
        self.read(move |conn| {
            let sessions = conn
                .prepare_cached("SELECT id, user_id, ended_at FROM sessions WHERE ended_at >= ?1")?
                .query_map([Micros(since)], |r| {
                    Ok((
                        SessionId(r.get::<_, Key>(0)?.0),
                        UserId(r.get::<_, Key>(1)?.0),
                        r.get::<_, Micros>(2)?.0,
                    ))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let users = conn
                .prepare_cached(
                    "SELECT id, tokens_not_before FROM users WHERE tokens_not_before IS NOT NULL",
                )?
                .query_map([], |r| {
                    Ok((UserId(r.get::<_, Key>(0)?.0), r.get::<_, Micros>(1)?.0))
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(EndedTokens { sessions, users })
        })
        .await
    }
}
