//! A jsonb column read straight into its Rust type and written from it. diesel's own jsonb
//! mapping goes through `serde_json::Value`, which cost a server read more than the rest of
//! its row.

use std::io::Write;

use diesel::{
    deserialize::{self, FromSql, FromSqlRow},
    expression::AsExpression,
    pg::{Pg, PgValue},
    serialize::{self, Output, ToSql},
    sql_types::Jsonb,
};
use serde::{Serialize, de::DeserializeOwned};

/// The version byte of PostgreSQL's binary jsonb format, followed by the JSON text.
const JSONB_VERSION: u8 = 1;

/// A value stored as jsonb (read as the value itself inside a row kept as JSON).
#[derive(Debug, Clone, PartialEq, Eq, FromSqlRow, AsExpression, serde::Deserialize)]
#[diesel(sql_type = Jsonb)]
#[serde(transparent)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned + std::fmt::Debug> FromSql<Jsonb, Pg> for Json<T> {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        match value.as_bytes().split_first() {
            // One UTF-8 check of the whole text: serde_json checks every string of a slice
            // again, which cost a server read about 6k instructions.
            Some((&JSONB_VERSION, text)) => {
                Ok(Json(serde_json::from_str(std::str::from_utf8(text)?)?))
            }
            _ => Err("unsupported jsonb encoding".into()),
        }
    }
}

impl<T: Serialize + std::fmt::Debug> ToSql<Jsonb, Pg> for Json<T> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        out.write_all(&[JSONB_VERSION])?;
        serde_json::to_writer(out, &self.0)?;
        Ok(serialize::IsNull::No)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// jsonb's type oid.
    const JSONB_OID: std::num::NonZeroU32 = std::num::NonZeroU32::new(3802).unwrap();

    #[test]
    fn reads_the_binary_jsonb_format() {
        let value = PgValue::new(b"\x01{\"team\": \"payments\"}", &JSONB_OID);
        let Json(labels): Json<std::collections::BTreeMap<String, String>> =
            FromSql::<Jsonb, Pg>::from_sql(value).expect("jsonb");
        assert_eq!(labels["team"], "payments");
        let unversioned = PgValue::new(b"{}", &JSONB_OID);
        assert!(<Json<serde_json::Value> as FromSql<Jsonb, Pg>>::from_sql(unversioned).is_err());
    }
}
