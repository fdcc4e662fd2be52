//! A batch of messages into PostgreSQL in one statement, one transaction: each new
//! message takes the next position of its conversation from the conversation's counter
//! (whose row lock serialises every writer of the conversation), the rows are inserted,
//! the conversations bumped.
//!
//! Repeats of a `client_id` are rare (a client resending after a lost ack), so the
//! common statement does not look for them: the partial unique index does, for free, as
//! it takes the rows. When it refuses one, the transaction is gone (no position taken)
//! and the batch is committed again by the checked statement, which answers repeats with
//! their original. It must never number messages outside the statement that inserts
//! them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use deadpool_postgres::Object;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use crate::ids::{MessageId, Seq};
use crate::store::model::{NewMessage, Original, Stored};

/// The index that makes a `client_id` one message.
const CLIENT_ID_KEY: &str = "messages_client_id_key";

/// The common path. `$7..$9` are the batch's conversations in id order, how many
/// messages each has and the newest one's time; `$6` is each message's place among its
/// conversation's messages (1, 2, ...). Answers each conversation's position before the
/// batch.
///
/// An archived (or deleted) conversation is not locked, so its messages are not
/// stored; why is asked after (`READ_ONLY`), only when a batch has such messages.
///
/// The conversations' rows are locked in id order (`locked`) before they are bumped:
/// batches from several nodes share conversations, and two batches that locked the
/// same rows in different orders (the planner picks the join) would deadlock, which
/// PostgreSQL breaks only after `deadlock_timeout`.
const INSERT: &str = "\
    WITH locked AS (
        SELECT id FROM conversations WHERE id = ANY($7::uuid[]) AND archived_at IS NULL
        ORDER BY id FOR NO KEY UPDATE
    ), bumped AS (
        UPDATE conversations AS c
        SET last_seq = c.last_seq + n.n, updated_at = GREATEST(c.updated_at, n.at)
        FROM locked AS l, UNNEST($7::uuid[], $8::int8[], $9::timestamptz[]) AS n (id, n, at)
        WHERE c.id = l.id AND n.id = l.id
        RETURNING c.id, c.last_seq - n.n AS base
    ), inserted AS (
        INSERT INTO messages
            (id, conversation_id, sender_id, content, created_at, updated_at, seq, client_id)
        SELECT t.id, t.conversation_id, t.sender_id, t.content, t.created_at, t.created_at,
               b.base + t.k, t.client_id
        FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::timestamptz[],
                    $6::int8[], $10::text[])
             AS t (id, conversation_id, sender_id, content, created_at, k, client_id)
        JOIN bumped AS b ON b.id = t.conversation_id
    )
    SELECT id, base FROM bumped";

/// Which of the batch's conversations that stored nothing are archived (the rest are
/// gone).
const READ_ONLY: &str = "SELECT id FROM conversations \
     WHERE id = ANY($1::uuid[]) AND archived_at IS NOT NULL AND deleted_at IS NULL";

/// The path after a repeat, on the batch's first six columns (`$6`: the client ids):
/// each `client_id` is looked up first (an index probe per message), repeats are
/// answered with their original and take no position, the rest are numbered and
/// inserted as above (rows locked in id order too). One row per message that is not gone: `(ord,
/// seq, original id, original content, original time)`, the original columns null for a
/// new message.
const INSERT_CHECKED: &str = "\
    WITH batch AS (
        SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::uuid[], $4::text[],
                             $5::timestamptz[], $6::text[])
            WITH ORDINALITY AS t (id, conversation_id, sender_id, content, created_at,
                                  client_id, ord)
    ), original AS (
        SELECT b.ord, m.id, m.seq, m.content, m.created_at
        FROM batch AS b CROSS JOIN LATERAL (
            SELECT id, seq,
                   CASE WHEN deleted_at IS NULL THEN COALESCE(original_content, content) END
                       AS content,
                   created_at
            FROM messages
            WHERE conversation_id = b.conversation_id AND sender_id = b.sender_id
              AND client_id = b.client_id AND client_id IS NOT NULL
        ) AS m
        WHERE b.client_id IS NOT NULL
    ), fresh AS (
        SELECT b.*, row_number() OVER (PARTITION BY b.conversation_id ORDER BY b.ord) AS k
        FROM batch AS b WHERE b.ord NOT IN (SELECT ord FROM original)
    ), counts AS (
        SELECT conversation_id, count(*) AS n, max(created_at) AS at
        FROM fresh GROUP BY conversation_id
    ), locked AS (
        SELECT id FROM conversations
        WHERE id IN (SELECT conversation_id FROM counts) AND archived_at IS NULL
        ORDER BY id FOR NO KEY UPDATE
    ), bumped AS (
        UPDATE conversations AS c
        SET last_seq = c.last_seq + n.n, updated_at = GREATEST(c.updated_at, n.at)
        FROM locked AS l, counts AS n WHERE c.id = l.id AND n.conversation_id = l.id
        RETURNING c.id, c.last_seq - n.n AS base
    ), inserted AS (
        INSERT INTO messages
            (id, conversation_id, sender_id, content, created_at, updated_at, seq, client_id)
        SELECT f.id, f.conversation_id, f.sender_id, f.content, f.created_at, f.created_at,
               b.base + f.k, f.client_id
        FROM fresh AS f JOIN bumped AS b ON b.id = f.conversation_id
    )
    SELECT f.ord, b.base + f.k, NULL::uuid, NULL::text, NULL::timestamptz
    FROM fresh AS f JOIN bumped AS b ON b.id = f.conversation_id
    UNION ALL
    SELECT ord, seq, id, content, created_at FROM original";

/// A batch as the statements' parameters.
pub(super) struct Columns<'a> {
    ids: Vec<Uuid>,
    conversations: Vec<Uuid>,
    senders: Vec<Uuid>,
    contents: Vec<&'a str>,
    times: Vec<DateTime<Utc>>,
    /// Each message's place among its conversation's messages in the batch.
    places: Vec<i64>,
    client_ids: Vec<Option<&'a str>>,
    /// Per conversation, in id order: how many messages, and the newest one's time.
    bumps: BTreeMap<Uuid, (i64, DateTime<Utc>)>,
}

impl<'a> Columns<'a> {
    pub(super) fn of(batch: &'a [NewMessage]) -> Self {
        let mut columns = Self {
            ids: Vec::with_capacity(batch.len()),
            conversations: Vec::with_capacity(batch.len()),
            senders: Vec::with_capacity(batch.len()),
            contents: Vec::with_capacity(batch.len()),
            times: Vec::with_capacity(batch.len()),
            places: Vec::with_capacity(batch.len()),
            client_ids: Vec::with_capacity(batch.len()),
            bumps: BTreeMap::new(),
        };
        for m in batch {
            let bump = columns
                .bumps
                .entry(m.conversation_id.0)
                .or_insert((0, m.created_at));
            bump.0 += 1;
            bump.1 = bump.1.max(m.created_at);
            columns.places.push(bump.0);
            columns.ids.push(m.id.0);
            columns.conversations.push(m.conversation_id.0);
            columns.senders.push(m.sender_id.0);
            columns.contents.push(m.content.as_str());
            columns.times.push(m.created_at);
            columns
                .client_ids
                .push(m.client_id.as_ref().map(|c| c.as_str()));
        }
        columns
    }

    /// Commits the batch; one outcome per message, in batch order.
    pub(super) async fn insert(
        &self,
        client: &Object,
    ) -> Result<Vec<Stored>, tokio_postgres::Error> {
        let bumped: Vec<Uuid> = self.bumps.keys().copied().collect();
        let counts: Vec<i64> = self.bumps.values().map(|b| b.0).collect();
        let newest: Vec<DateTime<Utc>> = self.bumps.values().map(|b| b.1).collect();
        let params: [&(dyn ToSql + Sync); 10] = [
            &self.ids,
            &self.conversations,
            &self.senders,
            &self.contents,
            &self.times,
            &self.places,
            &bumped,
            &counts,
            &newest,
            &self.client_ids,
        ];
        let stmt = client.prepare_cached(INSERT).await?;
        let outcomes = match client.query(&stmt, &params).await {
            Ok(rows) => {
                let mut base = std::collections::HashMap::with_capacity(rows.len());
                for row in &rows {
                    base.insert(row.try_get::<_, Uuid>(0)?, row.try_get::<_, i64>(1)?);
                }
                self.conversations
                    .iter()
                    .zip(&self.places)
                    .map(|(c, k)| match base.get(c) {
                        Some(base) => Stored::New(Seq::from_db(base + k)),
                        // No counter to take a position from: gone, or archived.
                        None => Stored::Gone,
                    })
                    .collect()
            }
            Err(e) if is_repeat(&e) => {
                let stmt = client.prepare_cached(INSERT_CHECKED).await?;
                let params: [&(dyn ToSql + Sync); 6] = [
                    &self.ids,
                    &self.conversations,
                    &self.senders,
                    &self.contents,
                    &self.times,
                    &self.client_ids,
                ];
                let rows = client.query(&stmt, &params).await?;
                let mut outcomes = vec![Stored::Gone; self.ids.len()];
                for row in &rows {
                    let ord: i64 = row.try_get(0)?;
                    let seq = Seq::from_db(row.try_get(1)?);
                    let outcome = match row.try_get::<_, Option<Uuid>>(2)? {
                        None => Stored::New(seq),
                        Some(id) => Stored::Duplicate(Original {
                            id: MessageId(id),
                            seq,
                            content: row.try_get(3)?,
                            created_at: row.try_get(4)?,
                        }),
                    };
                    let slot = usize::try_from(ord - 1)
                        .ok()
                        .and_then(|i| outcomes.get_mut(i));
                    if let Some(slot) = slot {
                        *slot = outcome;
                    }
                }
                outcomes
            }
            Err(e) => return Err(e),
        };
        self.read_only(client, outcomes).await
    }

    /// Tells archived conversations from gone ones among the messages that stored
    /// nothing: one read, and only when there are such messages.
    async fn read_only(
        &self,
        client: &Object,
        mut outcomes: Vec<Stored>,
    ) -> Result<Vec<Stored>, tokio_postgres::Error> {
        let refused: Vec<Uuid> = self
            .conversations
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, Stored::Gone))
            .map(|(c, _)| *c)
            .collect();
        if refused.is_empty() {
            return Ok(outcomes);
        }
        let stmt = client.prepare_cached(READ_ONLY).await?;
        let archived: std::collections::HashSet<Uuid> = client
            .query(&stmt, &[&refused])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        for (c, o) in self.conversations.iter().zip(outcomes.iter_mut()) {
            if matches!(o, Stored::Gone) && archived.contains(c) {
                *o = Stored::ReadOnly;
            }
        }
        Ok(outcomes)
    }
}

/// Whether the common statement met a `client_id` already taken.
fn is_repeat(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| db.constraint() == Some(CLIENT_ID_KEY))
}
