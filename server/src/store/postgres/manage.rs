//! What managing a conversation needs from PostgreSQL: direct conversations, roles,
//! the member list, changes, deletion and the purge of what a deletion leaves.
//!
//! Like `queries`, it reaches the database only through `PostgresStore::run`, and each
//! operation is one statement: the one-owner constraint is checked at commit, so a
//! hand-over demotes and promotes in the same statement.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::queries::{conversation_columns, conversation_row, role_column};
use super::PostgresStore;
use crate::ids::{ConversationId, Role, UserId};
use crate::store::manage::{
    direct_key, ConversationChange, Direct, Guarded, Management, Participant, Removed,
};
use crate::store::model::{ConversationRecord, StoreError};

/// How many messages of a deleted conversation one purge step removes.
const PURGE_CHUNK: i64 = 2000;

/// Inserts the pair's conversation unless the pair has one, and makes both of them
/// participants of whichever it is. A conversation another transaction created and
/// committed while this one waited on the key is not visible to this statement: the
/// answer then has neither a created id nor a row, and the caller asks again.
const CREATE_DIRECT: &str = concat!(
    "WITH created AS (
        INSERT INTO conversations
            (id, name, description, is_group, created_by, created_at, updated_at, direct_key)
        VALUES ($1::uuid, $2::text, $3::text, false, $4::uuid, $5::timestamptz,
                $5::timestamptz, $6::text)
        ON CONFLICT (direct_key) WHERE direct_key IS NOT NULL DO NOTHING
        RETURNING id
    ), existing AS (
        SELECT ",
    conversation_columns!(),
    " FROM conversations WHERE direct_key = $6::text AND deleted_at IS NULL
    ), pair AS (
        SELECT id FROM created UNION ALL SELECT id FROM existing
    ), joined AS (
        INSERT INTO participants (conversation_id, user_id, joined_at)
        SELECT pair.id, u, $5::timestamptz FROM pair, UNNEST(ARRAY[$4::uuid, $7::uuid]) AS u
        ON CONFLICT (conversation_id, user_id) DO NOTHING
        RETURNING user_id
    )
    SELECT e.*, (SELECT id FROM created) IS NOT NULL, ARRAY(SELECT user_id FROM joined)
    FROM (SELECT 1) AS one LEFT JOIN existing AS e ON true"
);

const MEMBERSHIP: &str = concat!(
    "SELECT ",
    conversation_columns!(),
    ", p.role FROM conversations AS c
    LEFT JOIN participants AS p ON p.conversation_id = c.id AND p.user_id = $2
    WHERE c.id = $1 AND c.deleted_at IS NULL"
);

/// `$2`/`$4`: whether to set the name / description to `$3`/`$5`; `$6`: archive
/// (true), unarchive (false) or leave as is (null); `$7`: the time of an archiving;
/// `$8`: the actor, who must moderate (their row is locked, so a demotion racing the
/// change goes first or waits). Taking the conversation's row lock, an archiving
/// waits for a batch committing into it, and a later batch finds it archived.
/// Answers whether the actor may, and the conversation as changed.
const UPDATE: &str = concat!(
    "WITH actor AS (
        SELECT p.user_id FROM participants AS p
        JOIN conversations AS c ON c.id = p.conversation_id
        WHERE p.conversation_id = $1 AND p.user_id = $8
          AND (p.role IN ('owner', 'admin') OR c.direct_key IS NOT NULL)
        FOR SHARE OF p
    ), changed AS (
        UPDATE conversations SET
            name = CASE WHEN $2::bool THEN $3::text ELSE name END,
            description = CASE WHEN $4::bool THEN $5::text ELSE description END,
            archived_at = CASE WHEN $6::bool IS NULL THEN archived_at
                               WHEN $6::bool THEN COALESCE(archived_at, $7::timestamptz)
                               ELSE NULL END
        WHERE id = $1 AND deleted_at IS NULL AND EXISTS (SELECT 1 FROM actor)
        RETURNING ",
    conversation_columns!(),
    ")
    SELECT changed.*, EXISTS (SELECT 1 FROM actor)
    FROM (SELECT 1) AS one LEFT JOIN changed ON true"
);

/// Gone for everyone: no participants, no pair key (the two may start afresh), read
/// as absent, archived so a batch already on its way stores nothing; if `$3` owns it
/// (or is in it, a direct one), their row locked against a hand-over racing this.
/// Answers whether the actor may, and whether it was deleted.
const DELETE: &str = "\
    WITH actor AS (
        SELECT p.user_id FROM participants AS p
        JOIN conversations AS c ON c.id = p.conversation_id
        WHERE p.conversation_id = $1 AND p.user_id = $3
          AND (p.role = 'owner' OR c.direct_key IS NOT NULL)
        FOR UPDATE OF p
    ), marked AS (
        UPDATE conversations
        SET deleted_at = $2, archived_at = COALESCE(archived_at, $2), direct_key = NULL
        WHERE id = $1 AND deleted_at IS NULL AND EXISTS (SELECT 1 FROM actor)
        RETURNING id
    ), left_it AS (
        DELETE FROM participants WHERE conversation_id IN (SELECT id FROM marked)
    )
    SELECT EXISTS (SELECT 1 FROM actor), EXISTS (SELECT 1 FROM marked)";

/// One chunk of the oldest deletion: its messages (their changes and reactions go with
/// them), or once none are left, the conversation's row. Answers whether a deleted
/// conversation was found.
const PURGE: &str = "\
    WITH doomed AS (
        SELECT id FROM conversations WHERE deleted_at IS NOT NULL
        ORDER BY deleted_at LIMIT 1
    ), chunk AS (
        SELECT m.id FROM messages AS m JOIN doomed AS d ON m.conversation_id = d.id
        LIMIT $1
    ), gone AS (
        DELETE FROM messages WHERE id IN (SELECT id FROM chunk)
    ), removed AS (
        DELETE FROM conversations
        WHERE id IN (SELECT id FROM doomed) AND NOT EXISTS (SELECT 1 FROM chunk)
    )
    SELECT EXISTS (SELECT 1 FROM doomed)";

/// If `$4` owns the conversation (their row locked: of two hand-overs racing, the
/// second finds them an admin): rows `('a')` for the actor, `('t')` for the target,
/// then `('c', user, role)` for each role that changed. Making someone owner makes
/// the owner an admin.
const SET_ROLE: &str = "\
    WITH actor AS (
        SELECT user_id FROM participants
        WHERE conversation_id = $1 AND user_id = $4 AND role = 'owner'
        FOR UPDATE
    ), target AS (
        SELECT user_id FROM participants
        WHERE conversation_id = $1 AND user_id = $2 AND EXISTS (SELECT 1 FROM actor)
        FOR UPDATE
    ), demoted AS (
        UPDATE participants SET role = 'admin'
        WHERE conversation_id = $1 AND role = 'owner' AND user_id <> $2 AND $3::text = 'owner'
          AND EXISTS (SELECT 1 FROM target)
        RETURNING user_id, role
    ), promoted AS (
        UPDATE participants AS p SET role = $3::text
        FROM target AS t
        WHERE p.conversation_id = $1 AND p.user_id = t.user_id AND p.role <> $3::text
        RETURNING p.user_id, p.role
    )
    SELECT 'a', user_id, NULL::text FROM actor
    UNION ALL SELECT 't', user_id, NULL FROM target
    UNION ALL SELECT 'c', user_id, role FROM demoted
    UNION ALL SELECT 'c', user_id, role FROM promoted";

/// Removes the participant `$2` if `$3` may: themself, or as the owner, or as an
/// admin a member (both rows locked, so a role change racing this goes first or
/// waits); when it was the owner, the longest-standing admin (else member) becomes
/// owner. Answers the role it had (null: not removed), the new owner, whether the
/// actor may, whether the target is a participant.
const REMOVE: &str = "\
    WITH actor AS (
        SELECT role FROM participants WHERE conversation_id = $1 AND user_id = $3
        FOR SHARE
    ), target AS (
        SELECT role FROM participants WHERE conversation_id = $1 AND user_id = $2
        FOR UPDATE
    ), allowed AS (
        SELECT 1 FROM target
        WHERE $2 = $3 OR (SELECT role FROM actor) = 'owner'
           OR ((SELECT role FROM actor) = 'admin' AND target.role = 'member')
    ), gone AS (
        DELETE FROM participants
        WHERE conversation_id = $1 AND user_id = $2 AND EXISTS (SELECT 1 FROM allowed)
        RETURNING role
    ), heir AS (
        SELECT user_id FROM participants
        WHERE conversation_id = $1 AND user_id <> $2
          AND (SELECT role FROM gone) = 'owner'
        ORDER BY role = 'admin' DESC, joined_at, user_id
        LIMIT 1
    ), crowned AS (
        UPDATE participants AS p SET role = 'owner'
        FROM heir AS h WHERE p.conversation_id = $1 AND p.user_id = h.user_id
        RETURNING p.user_id
    )
    SELECT (SELECT role FROM gone), (SELECT user_id FROM crowned),
           EXISTS (SELECT 1 FROM allowed), EXISTS (SELECT 1 FROM target),
           EXISTS (SELECT 1 FROM conversations WHERE id = $1 AND deleted_at IS NULL)";

/// Adds the participant unless the conversation is archived or direct, its row
/// share-locked so an archiving racing this goes first or waits. Answers whether it
/// takes members (null: no such conversation).
const ADD: &str = "\
    WITH c AS (
        SELECT id, archived_at IS NULL AND direct_key IS NULL AS open FROM conversations
        WHERE id = $1 AND deleted_at IS NULL
        FOR SHARE
    ), added AS (
        INSERT INTO participants (conversation_id, user_id, joined_at)
        SELECT id, $2, $3 FROM c WHERE open
        ON CONFLICT (conversation_id, user_id) DO NOTHING
    )
    SELECT (SELECT open FROM c)";

const PARTICIPANT_PAGE: &str = "\
    SELECT p.user_id, u.username, p.role, p.joined_at
    FROM participants AS p JOIN users AS u ON u.id = p.user_id
    WHERE p.conversation_id = $1 AND ($2::uuid IS NULL OR p.user_id > $2)
    ORDER BY p.user_id LIMIT $3";

/// Why an actor without the standing a change needs got nothing: the conversation is
/// gone, or they may not. Asked in a statement of its own: the refused statement's
/// snapshot predates a deletion it waited for.
async fn refused_or_gone<T>(
    client: &deadpool_postgres::Object,
    id: ConversationId,
) -> Result<Guarded<T>, tokio_postgres::Error> {
    let stmt = client
        .prepare_cached("SELECT 1 FROM conversations WHERE id = $1 AND deleted_at IS NULL")
        .await?;
    Ok(if client.query_opt(&stmt, &[&id.0]).await?.is_some() {
        Guarded::Refused
    } else {
        Guarded::Gone
    })
}

#[async_trait]
impl Management for PostgresStore {
    async fn create_direct(
        &self,
        c: &ConversationRecord,
        other: UserId,
    ) -> Result<Direct, StoreError> {
        let key = direct_key(c.created_by, other);
        // A second look sees what a concurrent creation committed while this one
        // waited on the key.
        for _ in 0..3 {
            let answer = self
                .run(async |client| {
                    let stmt = client.prepare_cached(CREATE_DIRECT).await?;
                    let row = client
                        .query_one(
                            &stmt,
                            &[
                                &c.id.0,
                                &c.name,
                                &c.description,
                                &c.created_by.0,
                                &c.created_at,
                                &key,
                                &other.0,
                            ],
                        )
                        .await?;
                    let created: bool = row.try_get(9)?;
                    let joined: Vec<Uuid> = row.try_get(10)?;
                    let existing = match row.try_get::<_, Option<Uuid>>(0)? {
                        Some(_) => Some(conversation_row(&row)?),
                        None => None,
                    };
                    Ok((created, joined, existing))
                })
                .await?;
            match answer {
                (true, _, _) => {
                    return Ok(Direct {
                        conversation: ConversationRecord {
                            direct: true,
                            is_group: false,
                            ..c.clone()
                        },
                        created: true,
                        rejoined: Vec::new(),
                    })
                }
                (false, joined, Some(conversation)) => {
                    return Ok(Direct {
                        conversation,
                        created: false,
                        rejoined: joined.into_iter().map(UserId).collect(),
                    })
                }
                (false, _, None) => continue,
            }
        }
        Err(StoreError::Conflict(
            "direct conversation created concurrently",
        ))
    }

    async fn membership(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Option<(ConversationRecord, Option<Role>)>, StoreError> {
        self.run(async |client| {
            let stmt = client.prepare_cached(MEMBERSHIP).await?;
            match client.query_opt(&stmt, &[&id.0, &user.0]).await? {
                None => Ok(None),
                Some(row) => {
                    let role = match row.try_get::<_, Option<&str>>(9)? {
                        None => None,
                        Some(_) => Some(role_column(&row, 9)?),
                    };
                    Ok(Some((conversation_row(&row)?, role)))
                }
            }
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
        let (set_name, name) = (change.name.is_some(), change.name.clone().flatten());
        let (set_description, description) = (
            change.description.is_some(),
            change.description.clone().flatten(),
        );
        self.run(async |client| {
            let stmt = client.prepare_cached(UPDATE).await?;
            let row = client
                .query_one(
                    &stmt,
                    &[
                        &id.0,
                        &set_name,
                        &name,
                        &set_description,
                        &description,
                        &change.archived,
                        &at,
                        &actor.0,
                    ],
                )
                .await?;
            match row.try_get::<_, Option<Uuid>>(0)? {
                Some(_) => Ok(Guarded::Done(conversation_row(&row)?)),
                None if !row.try_get::<_, bool>(9)? => refused_or_gone(client, id).await,
                None => Ok(Guarded::Gone),
            }
        })
        .await
    }

    async fn delete_conversation(
        &self,
        id: ConversationId,
        actor: UserId,
    ) -> Result<Guarded<()>, StoreError> {
        let now = crate::ids::now_micros();
        self.run(async |client| {
            let stmt = client.prepare_cached(DELETE).await?;
            let row = client.query_one(&stmt, &[&id.0, &now, &actor.0]).await?;
            match (row.try_get::<_, bool>(0)?, row.try_get(1)?) {
                (_, true) => Ok(Guarded::Done(())),
                (false, false) => refused_or_gone(client, id).await,
                (true, false) => Ok(Guarded::Gone),
            }
        })
        .await
    }

    async fn participant_page(
        &self,
        id: ConversationId,
        after: Option<UserId>,
        limit: u32,
    ) -> Result<Vec<Participant>, StoreError> {
        let after = after.map(|u| u.0);
        let limit = i64::from(limit);
        self.run(async |client| {
            let stmt = client.prepare_cached(PARTICIPANT_PAGE).await?;
            client
                .query(&stmt, &[&id.0, &after, &limit])
                .await?
                .iter()
                .map(|row| {
                    Ok(Participant {
                        user_id: UserId(row.try_get(0)?),
                        username: row.try_get(1)?,
                        role: role_column(row, 2)?,
                        joined_at: row.try_get(3)?,
                    })
                })
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
        self.run(async |client| {
            let stmt = client.prepare_cached(SET_ROLE).await?;
            let rows = client
                .query(&stmt, &[&id.0, &user.0, &role.as_str(), &actor.0])
                .await?;
            let (mut owner, mut target, mut changed) = (false, false, Vec::new());
            for row in &rows {
                match row.try_get::<_, &str>(0)? {
                    "a" => owner = true,
                    "t" => target = true,
                    _ => changed.push((UserId(row.try_get(1)?), role_column(row, 2)?)),
                }
            }
            match (owner, target) {
                // Not (or no longer) the owner: or the conversation is gone.
                (false, _) => refused_or_gone(client, id).await,
                (true, false) => Ok(Guarded::Missing),
                (true, true) => Ok(Guarded::Done(changed)),
            }
        })
        .await
    }

    async fn remove_participant(
        &self,
        id: ConversationId,
        actor: UserId,
        user: UserId,
    ) -> Result<Guarded<Removed>, StoreError> {
        self.run(async |client| {
            let stmt = client.prepare_cached(REMOVE).await?;
            let row = client.query_one(&stmt, &[&id.0, &user.0, &actor.0]).await?;
            if row.try_get::<_, Option<&str>>(0)?.is_some() {
                return Ok(Guarded::Done(Removed {
                    role: role_column(&row, 0)?,
                    new_owner: row.try_get::<_, Option<Uuid>>(1)?.map(UserId),
                }));
            }
            match (row.try_get::<_, bool>(3)?, row.try_get::<_, bool>(4)?) {
                (_, false) => Ok(Guarded::Gone),
                (false, true) => Ok(Guarded::Missing),
                (true, true) => refused_or_gone(client, id).await,
            }
        })
        .await
    }

    async fn add_participant(
        &self,
        id: ConversationId,
        user: UserId,
    ) -> Result<Guarded<()>, StoreError> {
        self.run(async |client| {
            let stmt = client.prepare_cached(ADD).await?;
            let row = client
                .query_one(&stmt, &[&id.0, &user.0, &crate::ids::now_micros()])
                .await?;
            Ok(match row.try_get::<_, Option<bool>>(0)? {
                None => Guarded::Gone,
                Some(false) => Guarded::Refused,
                Some(true) => Guarded::Done(()),
            })
        })
        .await
    }

    async fn purge_deleted(&self) -> Result<bool, StoreError> {
        Ok(self.purge().await? || self.erase().await?)
    }
}

impl PostgresStore {
    /// One chunk of the oldest deletion; whether there was one.
    pub(super) async fn purge(&self) -> Result<bool, StoreError> {
        self.run(async |client| {
            let stmt = client.prepare_cached(PURGE).await?;
            client.query_one(&stmt, &[&PURGE_CHUNK]).await?.try_get(0)
        })
        .await
    }
}
