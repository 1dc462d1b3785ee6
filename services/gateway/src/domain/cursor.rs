//! Keyset pagination cursors for listing workloads newest first. A cursor names the last row
//! of a page as `<submitted_at in µs since the epoch>.<workload id>`; clients treat it as
//! opaque.

use time::OffsetDateTime;
use uuid::Uuid;

/// The position after which the next page starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Submission time of the last row shown.
    pub submitted_at: OffsetDateTime,
    /// Its id (breaks ties).
    pub workload_id: Uuid,
}

impl Cursor {
    /// Encodes for the `cursor` query parameter.
    pub fn encode(&self) -> String {
        let micros = self.submitted_at.unix_timestamp_nanos() / 1000;
        format!("{micros}.{}", self.workload_id.simple())
    }

    /// Decodes a `cursor` parameter; `None` when it is not one this gateway issued.
    pub fn decode(s: &str) -> Option<Self> {
        let (micros, id) = s.split_once('.')?;
        let micros: i128 = micros.parse().ok()?;
        let submitted_at =
            OffsetDateTime::from_unix_timestamp_nanos(micros.checked_mul(1000)?).ok()?;
        let workload_id = Uuid::try_parse(id).ok()?;
        Some(Self {
            submitted_at,
            workload_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_at_microsecond_precision() {
        let c = Cursor {
            submitted_at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_000)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
            workload_id: Uuid::now_v7(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
    }

    #[test]
    fn garbage_is_not_a_cursor() {
        for bad in [
            "",
            "abc",
            "12.notauuid",
            "x.00000000000000000000000000000000",
        ] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }
}
