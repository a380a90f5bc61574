//! The SQL `WriteToPostgres` sends, built from names and types only (pure, unit-tested): the
//! CREATE TABLE for an Arrow schema, the batched UNNEST upsert, `write_statement` binding, and
//! the classification of SQLSTATEs into retry / reject-the-row / fail.

use arrow::datatypes::{DataType, Schema};

/// A double-quoted identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `table` or `schema.table`, each part a plain identifier (folded to lower case, as Postgres
/// does for unquoted names) or a double-quoted one (kept as written). Returns the parts.
///
/// # Errors
/// A name that is not one or two identifiers.
pub fn qualified_name(name: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut rest = name.trim();
    loop {
        let (part, after) = if let Some(q) = rest.strip_prefix('"') {
            let end = q
                .find('"')
                .ok_or_else(|| format!("unterminated quote in table name `{name}`"))?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = rest.find('.').unwrap_or(rest.len());
            let p = &rest[..end];
            let valid = p
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
            if !valid {
                return Err(format!(
                    "`{name}` is not a table name (letters, digits and _; quote other names)"
                ));
            }
            (p.to_ascii_lowercase(), &rest[end..])
        };
        parts.push(part);
        match after.strip_prefix('.') {
            Some(next) => rest = next,
            None if after.is_empty() => break,
            None => return Err(format!("`{name}` is not a table name")),
        }
    }
    if parts.len() > 2 {
        return Err(format!("`{name}`: at most `schema.table`"));
    }
    Ok(parts)
}

/// The quoted, qualified table name for SQL text.
pub fn quoted_table(parts: &[String]) -> String {
    parts.iter().map(|p| ident(p)).collect::<Vec<_>>().join(".")
}

/// The Postgres type a new table's column gets for an Arrow type.
pub fn pg_type(t: &DataType) -> &'static str {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        DataType::Int64 | DataType::UInt32 => "bigint",
        DataType::UInt64 => "numeric(20)",
        DataType::Float16 | DataType::Float32 => "real",
        DataType::Float64 => "double precision",
        DataType::Decimal128(..) | DataType::Decimal256(..) => "numeric",
        DataType::Boolean => "boolean",
        DataType::Timestamp(_, _) => "timestamptz",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Time32(_) | DataType::Time64(_) => "time",
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea",
        t if crate::sinks::values::is_nested(t) => "jsonb",
        _ => "text",
    }
}

/// `CREATE TABLE IF NOT EXISTS` for `schema`, with `key` as the primary key.
pub fn create_table(table: &str, schema: &Schema, key: &[String]) -> String {
    let mut cols: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| {
            let not_null = if key.contains(f.name()) {
                " NOT NULL"
            } else {
                ""
            };
            format!("{} {}{not_null}", ident(f.name()), pg_type(f.data_type()))
        })
        .collect();
    if !key.is_empty() {
        let k: Vec<String> = key.iter().map(|k| ident(k)).collect();
        cols.push(format!("PRIMARY KEY ({})", k.join(", ")));
    }
    format!("CREATE TABLE IF NOT EXISTS {table} ({})", cols.join(", "))
}

/// The batched write: every column travels as one `text[]` parameter, is unnested into rows and
/// cast to the column's type (its name without modifiers, so that `varchar(10)` still rejects
/// an 11-character value instead of truncating it, as an explicit cast would).
///
/// `columns` are (name, Postgres base type). With a key: `ON CONFLICT (key) DO UPDATE` every
/// other column (`DO NOTHING` when every column is in the key).
pub fn unnest_insert(table: &str, columns: &[(String, String)], key: &[String]) -> String {
    let names: Vec<String> = columns.iter().map(|(n, _)| ident(n)).collect();
    let params: Vec<String> = (1..=columns.len())
        .map(|i| format!("${i}::text[]"))
        .collect();
    let aliases: Vec<String> = (0..columns.len()).map(|i| format!("c{i}")).collect();
    let casts: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, (_, ty))| format!("u.c{i}::{ty}"))
        .collect();
    let mut sql = format!(
        "INSERT INTO {table} ({}) SELECT {} FROM UNNEST({}) AS u({})",
        names.join(", "),
        casts.join(", "),
        params.join(", "),
        aliases.join(", ")
    );
    if !key.is_empty() {
        let k: Vec<String> = key.iter().map(|k| ident(k)).collect();
        let updates: Vec<String> = columns
            .iter()
            .filter(|(n, _)| !key.contains(n))
            .map(|(n, _)| format!("{c} = EXCLUDED.{c}", c = ident(n)))
            .collect();
        sql.push_str(&format!(" ON CONFLICT ({}) ", k.join(", ")));
        if updates.is_empty() {
            sql.push_str("DO NOTHING");
        } else {
            sql.push_str(&format!("DO UPDATE SET {}", updates.join(", ")));
        }
    }
    sql
}

/// A SQL string literal (standard_conforming_strings is on for Sluice's sessions), or NULL.
pub fn literal(v: Option<&str>) -> String {
    match v {
        None => "NULL".into(),
        Some(s) => format!("'{}'", s.replace('\'', "''")),
    }
}

/// Binds Beam's JDBC-style `?` placeholders to literals, in order. Placeholders inside quoted
/// strings, quoted identifiers and comments are left alone. Untyped literals take the type the
/// statement needs, like JDBC's `setObject` on a string.
///
/// # Errors
/// When the number of placeholders and values differ.
pub fn bind_placeholders(statement: &str, values: &[Option<&str>]) -> Result<String, String> {
    let mut out = String::with_capacity(statement.len() + values.len() * 8);
    let mut next = values.iter();
    let mut chars = statement.chars().peekable();
    let mut used = 0;
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                let v = next.next().ok_or_else(|| {
                    format!(
                        "`write_statement` has more `?` placeholders than the row's {} fields",
                        values.len()
                    )
                })?;
                out.push_str(&literal(*v));
                used += 1;
            }
            _ => out.push(c),
        }
    }
    if used != values.len() {
        return Err(format!(
            "`write_statement` has {used} `?` placeholders but the rows have {} fields",
            values.len()
        ));
    }
    Ok(out)
}

/// Counts `?` placeholders outside quotes and comments.
pub fn count_placeholders(statement: &str) -> usize {
    let probe: Vec<Option<&str>> = vec![None; statement.matches('?').count()];
    (0..=probe.len())
        .rev()
        .find(|n| bind_placeholders(statement, &probe[..*n]).is_ok())
        .unwrap_or(0)
}

/// What to do about a failed statement, decided from its SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection or the server's state: retry the same rows after a backoff.
    Transient,
    /// Some row's data was refused: split the rows to find it, and send it to the error output.
    Rejected,
    /// The statement itself is wrong (missing column, permissions): stop the pipeline.
    Fatal,
}

/// Classifies a SQLSTATE (`None`: no server error, i.e. the connection failed).
pub fn classify(sqlstate: Option<&str>) -> Failure {
    let Some(code) = sqlstate else {
        return Failure::Transient;
    };
    match code {
        // serialization_failure, deadlock_detected: retry the transaction.
        "40001" | "40P01" => Failure::Transient,
        // admin_shutdown, crash_shutdown, cannot_connect_now, idle session timeout.
        "57P01" | "57P02" | "57P03" | "57P05" => Failure::Transient,
        // query_canceled (statement_timeout, pg_cancel_backend).
        "57014" => Failure::Transient,
        // program_limit_exceeded (index row too large), string/number too long for the index.
        "54000" => Failure::Rejected,
        _ => match &code[..code.len().min(2)] {
            // connection_exception, insufficient_resources, system_error.
            "08" | "53" | "58" => Failure::Transient,
            // cardinality_violation, data_exception, integrity_constraint_violation.
            "21" | "22" | "23" => Failure::Rejected,
            // check_violation raised by triggers is in 23; everything else is the statement.
            _ => Failure::Fatal,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, TimeUnit};

    #[test]
    fn table_names_fold_like_postgres() {
        assert_eq!(qualified_name("Views").unwrap(), vec!["views"]);
        assert_eq!(
            qualified_name("public.\"Recipe Views\"").unwrap(),
            vec!["public", "Recipe Views"]
        );
        assert!(qualified_name("a b").is_err());
        assert!(qualified_name("a.b.c").is_err());
        assert!(qualified_name("x; drop table y").is_err());
        assert_eq!(
            quoted_table(&["public".into(), "v".into()]),
            "\"public\".\"v\""
        );
    }

    #[test]
    fn create_table_maps_arrow_types() {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
            Field::new("x", DataType::Float64, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
            Field::new("d", DataType::Date32, true),
            Field::new(
                "tags",
                DataType::List(std::sync::Arc::new(Field::new(
                    "item",
                    DataType::Utf8,
                    true,
                ))),
                true,
            ),
        ]);
        assert_eq!(
            create_table("\"t\"", &schema, &["id".into()]),
            "CREATE TABLE IF NOT EXISTS \"t\" (\"id\" text NOT NULL, \"n\" bigint, \
             \"x\" double precision, \"ok\" boolean, \"ts\" timestamptz, \"d\" date, \
             \"tags\" jsonb, PRIMARY KEY (\"id\"))"
        );
    }

    #[test]
    fn upsert_updates_non_key_columns() {
        let cols = vec![
            ("k".to_string(), "text".to_string()),
            ("v".to_string(), "bigint".to_string()),
        ];
        assert_eq!(
            unnest_insert("\"t\"", &cols, &["k".into()]),
            "INSERT INTO \"t\" (\"k\", \"v\") SELECT u.c0::text, u.c1::bigint FROM \
             UNNEST($1::text[], $2::text[]) AS u(c0, c1) ON CONFLICT (\"k\") DO UPDATE SET \
             \"v\" = EXCLUDED.\"v\""
        );
        assert!(unnest_insert("\"t\"", &cols[..1], &["k".into()]).ends_with("DO NOTHING"));
        assert!(!unnest_insert("\"t\"", &cols, &[]).contains("ON CONFLICT"));
    }

    #[test]
    fn placeholders_bind_outside_quotes_only() {
        let s = "INSERT INTO t VALUES (?, '?', ?) -- what?\n";
        assert_eq!(
            bind_placeholders(s, &[Some("it's"), None]).unwrap(),
            "INSERT INTO t VALUES ('it''s', '?', NULL) -- what?\n"
        );
        assert!(bind_placeholders(s, &[Some("a")]).is_err());
        assert!(bind_placeholders(s, &[Some("a"), None, None]).is_err());
        assert_eq!(count_placeholders(s), 2);
    }

    #[test]
    fn sqlstates_classify_by_class() {
        assert_eq!(classify(None), Failure::Transient);
        assert_eq!(classify(Some("57P01")), Failure::Transient);
        assert_eq!(classify(Some("40001")), Failure::Transient);
        assert_eq!(classify(Some("08006")), Failure::Transient);
        assert_eq!(classify(Some("23505")), Failure::Rejected);
        assert_eq!(classify(Some("22001")), Failure::Rejected);
        assert_eq!(classify(Some("22P02")), Failure::Rejected);
        assert_eq!(classify(Some("42703")), Failure::Fatal);
        assert_eq!(classify(Some("42501")), Failure::Fatal);
    }
}
