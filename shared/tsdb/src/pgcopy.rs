//! PostgreSQL's binary `COPY` format, the parts the ingest writes: a row of fields, each a
//! timestamptz, a text, or a one-dimensional array of text, float8, int4 or int8 (no NULLs).
//! Binary input spares the server the parsing of every number and timestamp.
//!
//! A stream is [`HEADER`], rows, [`TRAILER`]. Every field is its length (i32, big-endian)
//! followed by its bytes; an array is `ndim, has_nulls, element type oid, length, lower bound`
//! and then its elements, each length-prefixed.

use time::OffsetDateTime;

/// Signature, flags (no OIDs), header extension length.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The end of the rows (a field count of -1).
pub const TRAILER: &[u8] = &[0xff, 0xff];

const TEXT_OID: u32 = 25;
const INT4_OID: u32 = 23;
const INT8_OID: u32 = 20;
const FLOAT8_OID: u32 = 701;

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// Starts a row of `fields` fields.
pub fn row(out: &mut Vec<u8>, fields: i16) {
    out.extend_from_slice(&fields.to_be_bytes());
}

/// A `timestamptz` field (microsecond precision, as PostgreSQL stores it).
pub fn timestamptz(out: &mut Vec<u8>, t: OffsetDateTime) {
    let us = i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX);
    out.extend_from_slice(&8i32.to_be_bytes());
    out.extend_from_slice(&(us - PG_EPOCH_US).to_be_bytes());
}

/// A `text` field (the caller has refused NUL bytes).
pub fn text(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&len_i32(s.len()).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A `text[]` field.
pub fn text_array<'a>(out: &mut Vec<u8>, items: impl ExactSizeIterator<Item = &'a str>) {
    array(out, TEXT_OID, items, |out, s| {
        out.extend_from_slice(&len_i32(s.len()).to_be_bytes());
        out.extend_from_slice(s.as_bytes());
    });
}

/// A `float8[]` field.
pub fn f64_array(out: &mut Vec<u8>, items: impl ExactSizeIterator<Item = f64>) {
    array(out, FLOAT8_OID, items, |out, v| {
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    });
}

/// An `int4[]` field.
pub fn i32_array(out: &mut Vec<u8>, items: impl ExactSizeIterator<Item = i32>) {
    array(out, INT4_OID, items, |out, v| {
        out.extend_from_slice(&4i32.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    });
}

/// An `int8[]` field.
pub fn i64_array(out: &mut Vec<u8>, items: impl ExactSizeIterator<Item = i64>) {
    array(out, INT8_OID, items, |out, v| {
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    });
}

fn array<T>(
    out: &mut Vec<u8>,
    oid: u32,
    items: impl ExactSizeIterator<Item = T>,
    element: impl Fn(&mut Vec<u8>, T),
) {
    let at = out.len();
    out.extend_from_slice(&0i32.to_be_bytes()); // the field's length, patched below
    let n = items.len();
    let ndim: i32 = if n == 0 { 0 } else { 1 };
    out.extend_from_slice(&ndim.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // no NULLs
    out.extend_from_slice(&oid.to_be_bytes());
    if n > 0 {
        out.extend_from_slice(&len_i32(n).to_be_bytes());
        out.extend_from_slice(&1i32.to_be_bytes()); // lower bound
    }
    for item in items {
        element(out, item);
    }
    let len = len_i32(out.len() - at - 4);
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

fn len_i32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed_big_endian() {
        let mut out = Vec::new();
        row(&mut out, 2);
        text(&mut out, "ab");
        i32_array(&mut out, [7, -1].into_iter());
        assert_eq!(&out[..2], &[0, 2]);
        assert_eq!(&out[2..8], &[0, 0, 0, 2, b'a', b'b']);
        // ndim 1, no nulls, int4, 2 elements from 1, then (4, 7) and (4, -1).
        let array: Vec<u8> = [1i32, 0, 23, 2, 1, 4, 7, 4, -1]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        assert_eq!(&out[8..12], &(array.len() as i32).to_be_bytes());
        assert_eq!(&out[12..], array.as_slice());
    }

    #[test]
    fn an_empty_array_has_no_dimensions_and_times_count_from_2000() {
        let mut out = Vec::new();
        f64_array(&mut out, std::iter::empty());
        assert_eq!(out, [0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 189]);
        let mut t = Vec::new();
        timestamptz(
            &mut t,
            OffsetDateTime::from_unix_timestamp(946_684_801).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        );
        assert_eq!(&t[4..], &1_000_000i64.to_be_bytes());
    }
}
