//! What logins need from PostgreSQL: sessions, their renewal and ending, tokens that
//! no longer count, and password changes.
//!
//! Like `queries`, it reaches the database only through `PostgresStore::run`; each
//! operation is one statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::PostgresStore;
use crate::ids::{SessionId, UserId};
use crate::store::account::{EndedTokens, Ending, NewSession, Renewal, Sessions};
use crate::store::model::StoreError;

/// Inserts the session, forgets the user's sessions long over, and ends the oldest
/// live ones beyond `$6` (the new one counted). Answers the sessions it ended.
const CREATE: &str = "\
    WITH inserted AS (
        INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, user_agent)
        VALUES ($1, $2, $3, $3, $4, $5)
    ), forgotten AS (
        DELETE FROM sessions
        WHERE user_id = $2 AND COALESCE(ended_at, expires_at) < $7
    ), evicted AS (
        UPDATE sessions SET ended_at = $3
        WHERE id IN (
            SELECT id FROM sessions
            WHERE user_id = $2 AND ended_at IS NULL AND expires_at > $3
            ORDER BY created_at DESC, id DESC
            OFFSET GREATEST($6::int8 - 1, 0)
        )
        RETURNING id
    )
    SELECT id FROM evicted";

/// The session, locked; renewed when `$2` is its generation and it lives, ended when
/// `$2` is older. Answers `(user, new generation, ended as reused)`; no row: no such
/// session.
const RENEW: &str = "\
    WITH s AS (
        SELECT id, user_id, generation, ended_at, expires_at FROM sessions
        WHERE id = $1 FOR UPDATE
    ), renewed AS (
        UPDATE sessions AS t
        SET generation = t.generation + 1, last_used_at = $3, expires_at = $4
        FROM s
        WHERE t.id = s.id AND s.generation = $2 AND s.ended_at IS NULL AND s.expires_at > $3
        RETURNING t.generation
    ), reused AS (
        UPDATE sessions AS t SET ended_at = $3
        FROM s
        WHERE t.id = s.id AND s.generation > $2 AND s.ended_at IS NULL
        RETURNING t.id
    )
    SELECT s.user_id, (SELECT generation FROM renewed), EXISTS (SELECT 1 FROM reused)
    FROM s";

#[async_trait]
impl Sessions for PostgresStore {
    async fn create_session(
        &self,
        session: &NewSession,
        keep: u32,
        forget_before: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError> {
        let keep = i64::from(keep);
        self.run(async |client| {
            let stmt = client.prepare_cached(CREATE).await?;
            client
                .query(
                    &stmt,
                    &[
                        &session.id.0,
                        &session.user.0,
                        &session.created_at,
                        &session.expires_at,
                        &session.user_agent,
                        &keep,
                        &forget_before,
                    ],
                )
                .await?
                .iter()
                .map(|row| row.try_get(0).map(SessionId))
                .collect()
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
        self.run(async |client| {
            let stmt = client.prepare_cached(RENEW).await?;
            let Some(row) = client
                .query_opt(&stmt, &[&id.0, &generation, &now, &expires_at])
                .await?
            else {
                return Ok(Renewal::Ended);
            };
            let user = UserId(row.try_get(0)?);
            Ok(match (row.try_get::<_, Option<i64>>(1)?, row.try_get(2)?) {
                (Some(next), _) => Renewal::Renewed {
                    user,
                    generation: u64::try_from(next).unwrap_or(0),
                },
                (None, true) => Renewal::Reused { user },
                (None, false) => Renewal::Ended,
            })
        })
        .await
    }

    async fn end_sessions(
        &self,
        user: UserId,
        which: Ending,
        at: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError> {
        let (sql, session): (&str, Option<Uuid>) = match which {
            Ending::One(id) => (
                "UPDATE sessions SET ended_at = $3 \
                 WHERE user_id = $1 AND id = $2 AND ended_at IS NULL RETURNING id",
                Some(id.0),
            ),
            Ending::AllBut(keep) => (
                "UPDATE sessions SET ended_at = $3 \
                 WHERE user_id = $1 AND ended_at IS NULL \
                   AND ($2::uuid IS NULL OR id <> $2) RETURNING id",
                keep.map(|k| k.0),
            ),
        };
        self.run(async |client| {
            let stmt = client.prepare_cached(sql).await?;
            client
                .query(&stmt, &[&user.0, &session, &at])
                .await?
                .iter()
                .map(|row| row.try_get(0).map(SessionId))
                .collect()
        })
        .await
    }

    async fn set_tokens_not_before(
        &self,
        user: UserId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.run(async |client| {
            let stmt = client
                .prepare_cached(
                    "UPDATE users SET tokens_not_before = GREATEST(tokens_not_before, $2) \
                     WHERE id = $1",
                )
                .await?;
            client.execute(&stmt, &[&user.0, &at]).await?;
            Ok(())
        })
        .await
    }

    async fn ended_tokens(&self, since: DateTime<Utc>) -> Result<EndedTokens, StoreError> {
        self.run(async |client| {
            let sessions = client
                .prepare_cached("SELECT id, user_id, ended_at FROM sessions WHERE ended_at >= $1")
                .await?;
            let users = client
                .prepare_cached(
                    "SELECT id, tokens_not_before FROM users WHERE tokens_not_before IS NOT NULL",
                )
                .await?;
            let sessions = client
                .query(&sessions, &[&since])
                .await?
                .iter()
                .map(|r| {
                    Ok((
                        SessionId(r.try_get(0)?),
                        UserId(r.try_get(1)?),
                        r.try_get(2)?,
                    ))
                })
                .collect::<Result<_, tokio_postgres::Error>>()?;
            let users = client
                .query(&users, &[])
                .await?
                .iter()
                .map(|r| Ok((UserId(r.try_get(0)?), r.try_get(1)?)))
                .collect::<Result<_, tokio_postgres::Error>>()?;
            Ok(EndedTokens { sessions, users })
        })
        .await
    }
}
