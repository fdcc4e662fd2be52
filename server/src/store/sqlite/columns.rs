//! The column types of the SQLite schema, shared by every statement: how a UUID
//! (`Key`) and a timestamp (`Micros`) are stored and read back.

use chrono::{DateTime, Utc};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use uuid::Uuid;

/// A UUID as the schema stores it: lowercase hyphenated text, which sorts like the
/// UUID's bytes.
pub(super) struct Key(pub(super) Uuid);

impl ToSql for Key {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.as_hyphenated().to_string()))
    }
}

impl FromSql for Key {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        Uuid::parse_str(value.as_str()?)
            .map(Key)
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

/// A timestamp as the schema stores it: INTEGER microseconds since the Unix epoch.
pub(super) struct Micros(pub(super) DateTime<Utc>);

impl ToSql for Micros {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.timestamp_micros()))
    }
}

impl FromSql for Micros {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let micros = value.as_i64()?;
        DateTime::from_timestamp_micros(micros)
            .map(Micros)
            .ok_or(FromSqlError::OutOfRange(micros))
    }
}
