//! Keyed routing: which shard a row belongs to (`WriteToPubSub`'s `shard: {by, count}`).
//!
//! The shard of a row is a pure function of its key values and the shard count, fixed here
//! once and for all because the owners' durable state depends on it: a row must reach the same
//! owner from every router process, version and platform (docs/scaling.md).
//!
//! ```text
//! shard = xxh3_64(canonical(key)) mod count         (xxh3_64 with seed 0, as u64)
//! canonical(key) = for each `by` field, in order: json_text(value) ++ [0x1f]
//! ```
//!
//! `json_text` is the value as `serde_json` prints it: strings quoted and escaped (`"r1"`),
//! integers in decimal (`42`, whatever their width), booleans `true`/`false`, floats as
//! serde_json prints `f64`/`f32` (non-finite as `null`), null as `null`. Other types
//! (timestamps, dates, decimals, …) are cast to text by Arrow first and then quoted like a
//! string. A key that changes type (`42` → `"42"`) therefore changes shard.

use std::io::Write;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Float64Array, Int64Array, RecordBatch,
    UInt64Array,
};
use arrow::datatypes::DataType;

/// The attribute naming a message's shard (decimal), for filtered subscriptions
/// (`attributes.sluice_shard = "K"`).
pub const SHARD_ATTRIBUTE: &str = "sluice_shard";

/// In a `WriteToPubSub` topic, replaced by the shard number: one topic per shard.
pub const SHARD_PLACEHOLDER: &str = "{shard}";

/// The most shards a `shard:` may have: each is an owner pod and a subscription; beyond a
/// thousand the per-shard publishers and subscriptions cost more than they balance.
pub const MAX_SHARDS: u32 = 1024;

/// Separator after every key value: ASCII "unit separator", which JSON text never contains
/// unescaped, so `["a", "b"]` and `["a\u001fb"]` cannot collide.
const SEPARATOR: u8 = 0x1f;

/// The topic of shard `k`: `topic` with [`SHARD_PLACEHOLDER`] replaced by `k` (unchanged when
/// it has none: one topic, shards told apart by the attribute).
pub fn topic_for(topic: &str, k: u32) -> String {
    topic.replace(SHARD_PLACEHOLDER, &k.to_string())
}

/// Whether `topic` names one topic per shard.
pub fn is_per_shard(topic: &str) -> bool {
    topic.contains(SHARD_PLACEHOLDER)
}

/// A key column, converted once per batch to the few shapes [`encode`] prints.
enum KeyColumn {
    Str(ArrayRef),
    Int(Int64Array),
    UInt(UInt64Array),
    F64(Float64Array),
    F32(Float32Array),
    Bool(BooleanArray),
    Null,
}

impl KeyColumn {
    fn new(col: &ArrayRef) -> Result<KeyColumn, String> {
        let cast = |to: &DataType| arrow::compute::cast(col, to).map_err(|e| e.to_string());
        Ok(match col.data_type() {
            DataType::Null => KeyColumn::Null,
            DataType::Utf8 => KeyColumn::Str(col.clone()),
            DataType::LargeUtf8 | DataType::Utf8View => KeyColumn::Str(cast(&DataType::Utf8)?),
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                KeyColumn::Int(cast(&DataType::Int64)?.as_primitive().clone())
            }
            DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
                KeyColumn::UInt(cast(&DataType::UInt64)?.as_primitive().clone())
            }
            DataType::Float64 => KeyColumn::F64(col.as_primitive().clone()),
            DataType::Float32 => KeyColumn::F32(col.as_primitive().clone()),
            DataType::Boolean => KeyColumn::Bool(col.as_boolean().clone()),
            // A dictionary shards like its values.
            DataType::Dictionary(_, values) => KeyColumn::new(&cast(values.as_ref())?)?,
            _ => KeyColumn::Str(cast(&DataType::Utf8)?),
        })
    }

    /// Appends row `i`'s JSON text to `buf`.
    fn encode(&self, i: usize, buf: &mut Vec<u8>) {
        // Writing into a Vec cannot fail, and serde_json cannot fail on str, f64 or f32.
        let _ = match self {
            KeyColumn::Null => buf.write_all(b"null"),
            KeyColumn::Str(a) if a.is_null(i) => buf.write_all(b"null"),
            KeyColumn::Str(a) => serde_json::to_writer(&mut *buf, a.as_string::<i32>().value(i))
                .map_err(std::io::Error::other),
            KeyColumn::Int(a) if a.is_null(i) => buf.write_all(b"null"),
            KeyColumn::Int(a) => write!(buf, "{}", a.value(i)),
            KeyColumn::UInt(a) if a.is_null(i) => buf.write_all(b"null"),
            KeyColumn::UInt(a) => write!(buf, "{}", a.value(i)),
            KeyColumn::F64(a) if a.is_null(i) => buf.write_all(b"null"),
            KeyColumn::F64(a) => {
                serde_json::to_writer(&mut *buf, &a.value(i)).map_err(std::io::Error::other)
            }
            KeyColumn::F32(a) if a.is_null(i) => buf.write_all(b"null"),
            KeyColumn::F32(a) => {
                serde_json::to_writer(&mut *buf, &a.value(i)).map_err(std::io::Error::other)
            }
            KeyColumn::Bool(a) if a.is_null(i) => buf.write_all(b"null"),
            KeyColumn::Bool(a) => buf.write_all(if a.value(i) { b"true" } else { b"false" }),
        };
    }
}

/// The shard (`0..count`) of every row of `rows`, keyed by the fields `by`, in order.
///
/// Per batch: each key column is converted once; per row, its canonical key is written into one
/// reused buffer and hashed, so nothing is allocated per row.
///
/// # Errors
/// A `by` field that is not in `rows` (the pipeline's fault), or a column Arrow cannot cast to
/// text.
pub fn shards(rows: &RecordBatch, by: &[String], count: u32) -> Result<Vec<u32>, String> {
    let count = u64::from(count.max(1));
    let columns: Vec<KeyColumn> = by
        .iter()
        .map(|f| {
            let col = rows.column_by_name(f).ok_or_else(|| {
                let have: Vec<&str> = rows
                    .schema_ref()
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                format!(
                    "shard key `{f}` is not in the input (its fields: {})",
                    have.join(", ")
                )
            })?;
            KeyColumn::new(col)
        })
        .collect::<Result<_, _>>()?;
    let mut buf = Vec::with_capacity(64);
    Ok((0..rows.num_rows())
        .map(|i| {
            buf.clear();
            for c in &columns {
                c.encode(i, &mut buf);
                buf.push(SEPARATOR);
            }
            // The remainder is below `count` ≤ MAX_SHARDS, so it fits in u32.
            (xxhash_rust::xxh3::xxh3_64(&buf) % count) as u32
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, StringArray, TimestampMillisecondArray};
    use std::sync::Arc;

    fn shard_of(rows: &RecordBatch, by: &[&str], count: u32) -> Vec<u32> {
        let by: Vec<String> = by.iter().map(|s| s.to_string()).collect();
        shards(rows, &by, count).unwrap()
    }

    #[test]
    fn the_hash_is_standard_xxh3_64() {
        // The XXH3_64bits test vector of the empty input, seed 0 (xxHash's reference).
        assert_eq!(xxhash_rust::xxh3::xxh3_64(b""), 0x2d06_8005_38d3_94c2);
    }

    #[test]
    fn canonical_keys_are_json_text_and_separators() {
        let rows = RecordBatch::try_from_iter(vec![
            (
                "s",
                Arc::new(StringArray::from(vec![Some("r\"1\n"), None])) as ArrayRef,
            ),
            ("n", Arc::new(Int32Array::from(vec![Some(-7), None])) as _),
            ("f", Arc::new(Float64Array::from(vec![1.0, f64::NAN])) as _),
            ("b", Arc::new(BooleanArray::from(vec![true, false])) as _),
        ])
        .unwrap();
        let by = ["s", "n", "f", "b"];
        let cols: Vec<KeyColumn> = by
            .iter()
            .map(|f| KeyColumn::new(rows.column_by_name(f).unwrap()).unwrap())
            .collect();
        let text = |i: usize| {
            let mut buf = Vec::new();
            for c in &cols {
                c.encode(i, &mut buf);
                buf.push(SEPARATOR);
            }
            buf
        };
        assert_eq!(text(0), b"\"r\\\"1\\n\"\x1f-7\x1f1.0\x1ftrue\x1f");
        assert_eq!(text(1), b"null\x1fnull\x1fnull\x1ffalse\x1f");
    }

    /// Pinned: a change of the function moves keys to other owners, whose state does not
    /// have them. Such a change needs a re-shard (docs/scaling.md), not just a new build.
    #[test]
    fn shards_of_fixed_keys_are_pinned() {
        let recipes: Vec<&str> = vec!["r0001", "r0002", "r0003", "r0004", "r0005", "r0006"];
        let rows = RecordBatch::try_from_iter(vec![(
            "recipe_id",
            Arc::new(StringArray::from(recipes.clone())) as ArrayRef,
        )])
        .unwrap();
        assert_eq!(
            xxhash_rust::xxh3::xxh3_64(b"\"r0001\"\x1f"),
            PINNED_R0001_HASH
        );
        assert_eq!(shard_of(&rows, &["recipe_id"], 3), PINNED_3);
        assert_eq!(shard_of(&rows, &["recipe_id"], 16), PINNED_16);
        assert_eq!(shard_of(&rows, &["recipe_id"], 1), vec![0; 6]);

        let two = RecordBatch::try_from_iter(vec![
            (
                "recipe_id",
                Arc::new(StringArray::from(vec!["r1", "r1", "r2"])) as ArrayRef,
            ),
            (
                "action",
                Arc::new(StringArray::from(vec!["view", "cook", "view"])) as _,
            ),
        ])
        .unwrap();
        assert_eq!(shard_of(&two, &["recipe_id", "action"], 1024), PINNED_PAIR);
        let ints = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int64Array::from(vec![Some(1), Some(2), None])) as ArrayRef,
        )])
        .unwrap();
        assert_eq!(shard_of(&ints, &["id"], 7), PINNED_INTS);
    }

    // Computed once here. xxHash's C library (libxxhash 0.8.4, through Python's
    // `xxhash.xxh3_64_intdigest`) gives the same hash for `"r0001"␟`, the same shards for
    // r0001..r0006 over 3, for [1] and [null] over 7 and for [r1, view] over 1024: the function
    // is the standard XXH3, reproducible outside Rust.
    const PINNED_R0001_HASH: u64 = 4_491_281_617_620_812_730;
    const PINNED_3: [u32; 6] = [0, 2, 1, 2, 1, 0];
    const PINNED_16: [u32; 6] = [10, 7, 6, 5, 12, 15];
    const PINNED_PAIR: [u32; 3] = [526, 688, 563];
    const PINNED_INTS: [u32; 3] = [4, 6, 6];

    #[test]
    fn equal_keys_shard_alike_whatever_the_column_type() {
        let a = RecordBatch::try_from_iter(vec![(
            "k",
            Arc::new(Int32Array::from(vec![5, 6])) as ArrayRef,
        )])
        .unwrap();
        let b = RecordBatch::try_from_iter(vec![(
            "k",
            Arc::new(Int64Array::from(vec![5, 6])) as ArrayRef,
        )])
        .unwrap();
        assert_eq!(shard_of(&a, &["k"], 97), shard_of(&b, &["k"], 97));
        let dict: ArrayRef = Arc::new(
            vec!["x", "y", "x"]
                .into_iter()
                .collect::<arrow::array::DictionaryArray<arrow::datatypes::Int32Type>>(),
        );
        let plain: ArrayRef = Arc::new(StringArray::from(vec!["x", "y", "x"]));
        let d = RecordBatch::try_from_iter(vec![("k", dict)]).unwrap();
        let p = RecordBatch::try_from_iter(vec![("k", plain)]).unwrap();
        assert_eq!(shard_of(&d, &["k"], 97), shard_of(&p, &["k"], 97));
    }

    #[test]
    fn other_types_hash_their_text() {
        let ts: ArrayRef =
            Arc::new(TimestampMillisecondArray::from(vec![1_767_261_600_000]).with_timezone("UTC"));
        let rows = RecordBatch::try_from_iter(vec![("t", ts.clone())]).unwrap();
        let mut buf = Vec::new();
        KeyColumn::new(&ts).unwrap().encode(0, &mut buf);
        assert_eq!(String::from_utf8(buf).unwrap(), "\"2026-01-01T10:00:00Z\"");
        assert!(shard_of(&rows, &["t"], 4)[0] < 4);
    }

    #[test]
    fn a_missing_key_field_names_the_fields() {
        let rows = RecordBatch::try_from_iter(vec![(
            "a",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )])
        .unwrap();
        let e = shards(&rows, &["b".into()], 2).unwrap_err();
        assert_eq!(e, "shard key `b` is not in the input (its fields: a)");
    }

    #[test]
    fn per_shard_topics() {
        assert_eq!(topic_for("recipes-shard-{shard}", 2), "recipes-shard-2");
        assert_eq!(topic_for("recipes-sharded", 2), "recipes-sharded");
        assert!(is_per_shard("projects/p/topics/x-{shard}"));
    }
}
