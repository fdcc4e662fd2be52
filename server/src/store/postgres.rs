//! The PostgreSQL store: a deadpool of tokio-postgres connections, prepared statements
//! from each connection's statement cache, one round trip per operation wherever one
//! statement can do the work.
//!
//! It owns the PostgreSQL schema (applied from `sql/postgres` at connect, under an
//! advisory lock so several nodes can start at once) and the mapping between records
//! and rows. It must never wait on the database without a deadline: every call is
//! bounded so a dead or blackholed server turns into `StoreError::Unavailable` within
//! seconds, and a connection that missed its deadline is thrown away, never reused.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio::time::{error::Elapsed, timeout_at, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

use super::{
    ChangeOutcome, ConversationRecord, MessageRecord, NewMessage, ReactionOutcome, Store,
    StoreError, UserRecord,
};
use crate::ids::{ConversationId, MessageId, UserId};

mod embedded {
    refinery::embed_migrations!("../sql/postgres");
}

/// Key of the advisory lock that serialises migrations between nodes starting together.
const MIGRATION_LOCK: i64 = 0x6368_6174_5f6d_6967;

/// How long the start-up migrations may take before connect gives up.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(120);

/// Deadlines of the store. Every call (waiting for a connection, opening one, running
/// the statement) must finish within `operation`; below the batched writer's own
/// commit deadline, so the store reports and discards first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timeouts {
    /// TCP connect plus PostgreSQL start-up handshake of one new connection.
    pub(crate) connect: Duration,
    /// One whole store call.
    pub(crate) operation: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(3),
            operation: Duration::from_secs(4),
        }
    }
}

/// The production store. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct PostgresStore {
    pool: Pool,
    timeouts: Timeouts,
}

impl PostgresStore {
    /// Connects to `url`, applies pending migrations and opens a pool of at most
    /// `pool_size` connections (at least one). Fails with `Unavailable` if the server
    /// cannot be reached.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        Self::connect_with(url, pool_size, Timeouts::default()).await
    }

    pub(crate) async fn connect_with(
        url: &str,
        pool_size: usize,
        timeouts: Timeouts,
    ) -> Result<Self, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("bad DATABASE_URL: {e}")))?;
        config
            .connect_timeout(timeouts.connect)
            .application_name("chat-server")
            // A peer that vanished without a FIN (power loss, blackholed route) is
            // noticed by the kernel instead of leaving a connection half-open forever.
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .keepalives_interval(Duration::from_secs(2))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(10));

        migrate(&config, timeouts).await?;

        let manager = Manager::from_config(
            config,
            NoTls,
            // Fast only checks `is_closed`; connections that missed a deadline are
            // detached by `settle`, and the keepalives close the silently dead ones.
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeouts.operation))
            .create_timeout(Some(timeouts.connect))
            .recycle_timeout(Some(timeouts.connect))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("postgres pool: {e}")))?;
        Ok(Self { pool, timeouts })
    }

    /// A pooled connection and the deadline of the call it serves.
    async fn client(&self) -> Result<(Object, Instant), StoreError> {
        let deadline = Instant::now() + self.timeouts.operation;
        match timeout_at(deadline, self.pool.get()).await {
            Ok(Ok(client)) => Ok((client, deadline)),
            Ok(Err(e)) => Err(pool_error(e)),
            Err(_) => Err(StoreError::Unavailable(
                "timed out waiting for a database connection".into(),
            )),
        }
    }
}

async fn migrate(config: &tokio_postgres::Config, timeouts: Timeouts) -> Result<(), StoreError> {
    let (mut client, connection) = tokio::time::timeout(timeouts.connect, config.connect(NoTls))
        .await
        .map_err(|_| StoreError::Unavailable("timed out connecting to postgres".into()))?
        .map_err(|e| StoreError::Unavailable(format!("connecting to postgres: {e}")))?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "migration connection ended");
        }
    });
    let result = tokio::time::timeout(MIGRATION_TIMEOUT, async {
        // Held until this connection closes, which also releases it if we crash.
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| StoreError::Unavailable(format!("postgres migration lock: {e}")))?;
        embedded::migrations::runner()
            .run_async(&mut client)
            .await
            .map_err(|e| StoreError::Unavailable(format!("postgres migrations: {e}")))
    })
    .await;
    drop(client);
    driver.abort();
    let report =
        result.map_err(|_| StoreError::Unavailable("postgres migrations timed out".into()))??;
    for migration in report.applied_migrations() {
        tracing::info!(migration = %migration, "applied postgres migration");
    }
    Ok(())
}

fn pool_error(e: PoolError) -> StoreError {
    StoreError::Unavailable(format!("database connection: {e}"))
}

/// Turns the outcome of one call on `client` into the store's answer, and keeps a
/// connection that missed its deadline out of the pool: whatever it was doing may
/// still be in flight, and a blackholed peer would stall the next caller too.
fn settle<T>(
    client: Object,
    result: Result<Result<T, tokio_postgres::Error>, Elapsed>,
) -> Result<T, StoreError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(pg_error(&e, client.is_closed())),
        Err(_) => {
            drop(Object::take(client));
            Err(StoreError::Unavailable(
                "database did not answer in time".into(),
            ))
        }
    }
}

fn pg_error(e: &tokio_postgres::Error, connection_closed: bool) -> StoreError {
    let Some(db) = e.as_db_error() else {
        // No SQLSTATE: either the connection broke, or a row did not decode.
        return if connection_closed || e.is_closed() {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Query(e.to_string())
        };
    };
    let code = db.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        return StoreError::Conflict(match db.constraint() {
            Some("users_username_key") => "username",
            Some("messages_pkey") => "message id",
            _ => "id",
        });
    }
    // Classes 08 (connection), 53 (resources), 57 (operator intervention, e.g. a
    // shutdown or failover) and 58 (system) are the server being unwell, not the
    // statement being wrong.
    if ["08", "53", "57", "58"]
        .iter()
        .any(|class| code.code().starts_with(class))
    {
        return StoreError::Unavailable(db.to_string());
    }
    StoreError::Query(db.to_string())
}

fn user_row(row: &Row) -> Result<UserRecord, tokio_postgres::Error> {
    Ok(UserRecord {
        id: UserId(row.try_get(0)?),
        username: row.try_get(1)?,
        password_hash: row.try_get(2)?,
        created_at: row.try_get(3)?,
    })
}

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

const CONVERSATION_COLUMNS_BY_ID: &str = "\
    SELECT id, name, description, is_group, created_by, created_at, updated_at
    FROM conversations WHERE id = $1";

#[async_trait]
impl Store for PostgresStore {
    async fn create_user(&self, user: &UserRecord) -> Result<(), StoreError> {
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
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
        .await;
        settle(client, result)
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>, StoreError> {
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
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
        .await;
        settle(client, result)
    }

    async fn user_by_id(&self, id: UserId) -> Result<Option<UserRecord>, StoreError> {
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
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
        .await;
        settle(client, result)
    }

    async fn missing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut seen = HashSet::new();
        let wanted: Vec<Uuid> = ids
            .iter()
            .map(|id| id.0)
            .filter(|id| seen.insert(*id))
            .collect();
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
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
        .await;
        settle(client, result)
    }

    async fn create_conversation(
        &self,
        conversation: &ConversationRecord,
        participants: &[UserId],
    ) -> Result<(), StoreError> {
        let c = conversation;
        let members: Vec<Uuid> = participants.iter().map(|id| id.0).collect();
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
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
        .await;
        settle(client, result)
    }

    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationRecord>, StoreError> {
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
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
        .await;
        settle(client, result)
    }

    async fn conversation(
        &self,
        id: ConversationId,
    ) -> Result<Option<ConversationRecord>, StoreError> {
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
            let stmt = client.prepare_cached(CONVERSATION_COLUMNS_BY_ID).await?;
            client
                .query_opt(&stmt, &[&id.0])
                .await?
                .as_ref()
                .map(conversation_row)
                .transpose()
        })
        .await;
        settle(client, result)
    }

    async fn participants(&self, id: ConversationId) -> Result<Vec<UserId>, StoreError> {
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
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
        .await;
        settle(client, result)
    }

    async fn is_member(&self, id: ConversationId, user: UserId) -> Result<bool, StoreError> {
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
            let stmt = client
                .prepare_cached(
                    "SELECT 1 FROM participants WHERE conversation_id = $1 AND user_id = $2",
                )
                .await?;
            Ok(client.query_opt(&stmt, &[&id.0, &user.0]).await?.is_some())
        })
        .await;
        settle(client, result)
    }

    async fn add_participant(&self, id: ConversationId, user: UserId) -> Result<(), StoreError> {
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
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
        .await;
        settle(client, result)
    }

    async fn remove_participant(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<bool, StoreError> {
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
            let stmt = client
                .prepare_cached(
                    "DELETE FROM participants WHERE conversation_id = $1 AND user_id = $2",
                )
                .await?;
            Ok(client.execute(&stmt, &[&id.0, &user.0]).await? > 0)
        })
        .await;
        settle(client, result)
    }

    async fn history(
        &self,
        id: ConversationId,
        limit: u32,
        before: Option<MessageId>,
    ) -> Result<Option<Vec<MessageRecord>>, StoreError> {
        let limit = i64::from(limit);
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
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
                .map(|row| {
                    Ok(MessageRecord {
                        id: MessageId(row.try_get(0)?),
                        conversation_id: id,
                        sender_id: UserId(row.try_get(1)?),
                        sender_username: row.try_get(2)?,
                        content: row.try_get(3)?,
                        is_edited: row.try_get(4)?,
                        created_at: row.try_get(5)?,
                        updated_at: row.try_get(6)?,
                    })
                })
                .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
            page.reverse();
            Ok(Some(page))
        })
        .await;
        settle(client, result)
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
        // Sorted, so concurrent batches touch conversation rows in the same order.
        let mut newest: BTreeMap<Uuid, DateTime<Utc>> = BTreeMap::new();
        for m in batch {
            ids.push(m.id.0);
            conversations.push(m.conversation_id.0);
            senders.push(m.sender_id.0);
            contents.push(m.content.as_str());
            times.push(m.created_at);
            newest
                .entry(m.conversation_id.0)
                .and_modify(|at| *at = (*at).max(m.created_at))
                .or_insert(m.created_at);
        }
        let (bumped, bumped_at): (Vec<Uuid>, Vec<DateTime<Utc>>) = newest.into_iter().unzip();

        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
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
        .await;
        settle(client, result)
    }

    async fn edit_message(
        &self,
        conversation: ConversationId,
        message: MessageId,
        editor: UserId,
        content: &str,
        at: DateTime<Utc>,
    ) -> Result<ChangeOutcome, StoreError> {
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
            let stmt = client.prepare_cached(EDIT_MESSAGE).await?;
            let row = client
                .query_opt(
                    &stmt,
                    &[&conversation.0, &message.0, &editor.0, &content, &at],
                )
                .await?;
            change_outcome(row)
        })
        .await;
        settle(client, result)
    }

    async fn delete_message(
        &self,
        conversation: ConversationId,
        message: MessageId,
        deleter: UserId,
        at: DateTime<Utc>,
    ) -> Result<ChangeOutcome, StoreError> {
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
            let stmt = client.prepare_cached(DELETE_MESSAGE).await?;
            let row = client
                .query_opt(&stmt, &[&conversation.0, &message.0, &deleter.0, &at])
                .await?;
            change_outcome(row)
        })
        .await;
        settle(client, result)
    }

    async fn toggle_reaction(
        &self,
        conversation: ConversationId,
        message: MessageId,
        user: UserId,
        emoji: &str,
    ) -> Result<ReactionOutcome, StoreError> {
        let now = crate::ids::now_micros();
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
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
        .await;
        settle(client, result)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let (client, deadline) = self.client().await?;
        let result = timeout_at(deadline, async {
            client.simple_query("SELECT 1").await.map(drop)
        })
        .await;
        settle(client, result)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant as StdInstant;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::watch;

    use super::*;
    use crate::store::conformance::{self, PgTestDb};

    #[tokio::test]
    async fn postgres_store_conforms() {
        let db = PgTestDb::create().await;
        let store = PostgresStore::connect(&db.url, 4)
            .await
            .expect("postgres store connects");
        conformance::run(&store).await;
        // Connecting again finds the schema in place and applies nothing twice.
        let again = PostgresStore::connect(&db.url, 1)
            .await
            .expect("second connect");
        again.ping().await.expect("ping");
        drop(store);
    }

    #[tokio::test]
    async fn postgres_down_is_unavailable_quickly() {
        let closed = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            listener.local_addr().expect("address").port()
        };
        let started = StdInstant::now();
        let result = PostgresStore::connect(
            &format!("postgres://postgres@127.0.0.1:{closed}/postgres"),
            2,
        )
        .await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "connect to a closed port"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A TCP relay to the local PostgreSQL that can be switched into a blackhole:
    /// connections stay open but no byte goes through, as with a dropped route.
    struct Relay {
        port: u16,
        blackhole: watch::Sender<bool>,
    }

    impl Relay {
        async fn start() -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
            let port = listener.local_addr().expect("relay address").port();
            let (blackhole, gate) = watch::channel(false);
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let gate = gate.clone();
                    tokio::spawn(async move {
                        let mut open = gate.clone();
                        if open.wait_for(|holed| !*holed).await.is_err() {
                            return;
                        }
                        let Ok(outbound) = TcpStream::connect("127.0.0.1:5432").await else {
                            return;
                        };
                        let (in_read, in_write) = inbound.into_split();
                        let (out_read, out_write) = outbound.into_split();
                        tokio::join!(
                            pump(in_read, out_write, gate.clone()),
                            pump(out_read, in_write, gate)
                        );
                    });
                }
            });
            Self { port, blackhole }
        }

        fn url(&self, db: &PgTestDb) -> String {
            db.url.replace(":5432/", &format!(":{}/", self.port))
        }
    }

    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut gate: watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let Ok(n) = from.read(&mut buf).await else {
                return;
            };
            if n == 0 || gate.wait_for(|holed| !*holed).await.is_err() {
                return;
            }
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    #[tokio::test]
    async fn postgres_blackhole_fails_fast_and_recovers() {
        let db = PgTestDb::create().await;
        let relay = Relay::start().await;
        let timeouts = Timeouts {
            connect: Duration::from_millis(700),
            operation: Duration::from_secs(1),
        };
        let store = Arc::new(
            PostgresStore::connect_with(&relay.url(&db), 2, timeouts)
                .await
                .expect("connect through the relay"),
        );
        let alice = conformance::user("blackhole_alice");
        store.create_user(&alice).await.expect("create user");

        relay.blackhole.send_replace(true);
        for _ in 0..3 {
            let started = StdInstant::now();
            let result = store.user_by_id(alice.id).await;
            assert!(
                matches!(result, Err(StoreError::Unavailable(_))),
                "blackholed call: {result:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(3), "bounded wait");
        }
        let started = StdInstant::now();
        assert!(store.ping().await.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));

        relay.blackhole.send_replace(false);
        let found = store
            .user_by_id(alice.id)
            .await
            .expect("works again once the database is reachable")
            .expect("alice is there");
        assert_eq!(found.username, "blackhole_alice");
        store.ping().await.expect("ping after recovery");
    }

    #[tokio::test]
    async fn postgres_recovers_after_connections_are_killed() {
        let db = PgTestDb::create().await;
        let store = PostgresStore::connect(&db.url, 2).await.expect("connect");
        store.ping().await.expect("ping");
        let (admin, connection) = tokio_postgres::connect(conformance::ADMIN_URL, NoTls)
            .await
            .expect("admin connection");
        tokio::spawn(connection);
        let db_name = db.url.rsplit('/').next().expect("database name").to_owned();
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND pid <> pg_backend_pid()",
                &[&db_name],
            )
            .await
            .expect("terminate the store's connections");
        // The pooled connections are dead now; the first calls may fail with
        // Unavailable, and the pool must replace them rather than keep failing.
        let mut recovered = false;
        for _ in 0..4 {
            match store.ping().await {
                Ok(()) => {
                    recovered = true;
                    break;
                }
                Err(e) => assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(recovered, "the pool reconnected");
    }
}
