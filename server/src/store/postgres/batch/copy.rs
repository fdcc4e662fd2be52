//! A batch of messages through binary COPY: in one transaction, the batch's
//! conversations are bumped by one statement that answers each one's position before
//! the batch, the rows go in by `COPY .. FROM STDIN (FORMAT binary)` numbered from
//! those positions, and the transaction commits.
//!
//! It owns only the common path of large batches; a repeated `client_id` fails the COPY
//! on the unique index, the transaction rolls back (no position taken) and the caller
//! runs the checked statement. It must never commit positions without their rows: the
//! bump and the COPY live and die in the same transaction.

use std::pin::pin;

use bytes::Bytes;
use deadpool_postgres::Object;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use super::{bases, Bases, Columns};

/// `$1..$3`: the batch's conversations in id order, how many messages each has and the
/// newest one's time. Locks the rows in id order first, for the reason `INSERT` gives
/// (two nodes' batches over the same conversations must not deadlock).
const BUMP: &str = "\
    WITH locked AS (
        SELECT id FROM conversations WHERE id = ANY($1::uuid[])
        ORDER BY id FOR NO KEY UPDATE
    )
    UPDATE conversations AS c
    SET last_seq = c.last_seq + n.n, updated_at = GREATEST(c.updated_at, n.at)
    FROM locked AS l, UNNEST($1::uuid[], $2::int8[], $3::timestamptz[]) AS n (id, n, at)
    WHERE c.id = l.id AND n.id = l.id
    RETURNING c.id, c.last_seq - n.n AS base";

const COPY: &str = "\
    COPY messages (id, conversation_id, sender_id, content, created_at, updated_at, seq,
                   client_id)
    FROM STDIN (FORMAT binary)";

/// The columns of `COPY`, in its order.
const TYPES: [Type; 8] = [
    Type::UUID,
    Type::UUID,
    Type::UUID,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::INT8,
    Type::TEXT,
];

/// Commits the batch; each existing conversation's position before it.
///
/// An error leaves nothing behind: the transaction is rolled back when it is dropped
/// uncommitted (and an unfinished COPY aborted with it).
pub(super) async fn insert(
    columns: &Columns<'_>,
    client: &mut Object,
) -> Result<Bases, tokio_postgres::Error> {
    let (bump, copy) = tokio::try_join!(client.prepare_cached(BUMP), client.prepare_cached(COPY))?;
    let tx = client.transaction().await?;
    let (bumped, counts, newest) = columns.bumps();
    let params: [&(dyn ToSql + Sync); 3] = [&bumped, &counts, &newest];
    // One round trip for both: the COPY is under way by the time the positions are
    // read, and no row is sent before them.
    let (rows, sink) = tokio::try_join!(tx.query(&bump, &params), tx.copy_in::<_, Bytes>(&copy))?;
    let bases = bases(&rows)?;

    let mut writer = pin!(BinaryCopyInWriter::new(sink, &TYPES));
    for (i, conversation) in columns.conversations.iter().enumerate() {
        // A conversation without a position is gone: its messages are not stored.
        let Some(base) = bases.get(conversation) else {
            continue;
        };
        let seq = base + columns.places[i];
        writer
            .as_mut()
            .write(&[
                &columns.ids[i],
                conversation,
                &columns.senders[i],
                &columns.contents[i],
                &columns.times[i],
                &columns.times[i],
                &seq,
                &columns.client_ids[i],
            ])
            .await?;
    }
    writer.as_mut().finish().await?;
    tx.commit().await?;
    Ok(bases)
}
