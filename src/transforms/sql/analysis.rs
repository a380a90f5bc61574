//! Static analysis of a `Sql` transform's query, without input schemas: what `validate` refuses
//! (statements other than one query, DDL, DML, `COPY`, anything that reads files or URLs), which
//! tables the query reads, and whether it is *stateless* (a row-by-row `SELECT … WHERE …` that
//! can run on each batch of an unbounded input).
//!
//! Positions are 1-based `(line, column)` inside the query text.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::OnceLock;

use datafusion::common::DataFusionError;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::{DFParser, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{
    Expr, GroupByExpr, Ident, ObjectName, ObjectNamePart, Query, SetExpr, Spanned, Statement,
    TableFactor, Visit, Visitor,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::Span;

/// A position inside the query text: 1-based line and column.
pub type QueryPos = (u64, u64);

/// Why a query is refused, where, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub at: QueryPos,
    pub message: String,
    pub hint: String,
}

/// A table the query reads, as the planner will look it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRef {
    /// The name as written (without quotes).
    pub written: String,
    /// Unquoted identifiers are case-insensitive (DataFusion lowercases them); quoted ones are
    /// exact.
    pub quoted: bool,
    pub at: QueryPos,
}

impl TableRef {
    /// Whether this reference names the table registered as `name`.
    pub fn matches(&self, name: &str) -> bool {
        if self.quoted {
            self.written == name
        } else {
            self.written.eq_ignore_ascii_case(name)
        }
    }
}

/// What the query needs from its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryInfo {
    /// Input tables read (common table expressions excluded), in order of appearance.
    pub tables: Vec<TableRef>,
    /// `None` for a stateless query; else the first construct that needs the whole input
    /// (e.g. "GROUP BY") and where it is.
    pub stateful: Option<(String, QueryPos)>,
    /// The columns of the top-level `GROUP BY` when every grouping expression is a plain
    /// column (`Some(vec![])` without `GROUP BY`); `None` for expressions, positions,
    /// `GROUP BY ALL`, grouping sets, or a top level that is not one `SELECT`. Session windows
    /// are per key, and this is the key (see `sql::windowed`).
    pub group_columns: Option<Vec<String>>,
}

/// Parses and analyses `sql`.
///
/// # Errors
/// The first reason to refuse the query.
pub fn analyze(sql: &str) -> Result<QueryInfo, Refusal> {
    // Functions that do not exist, and expressions too deep to walk (the walks below recurse).
    crate::expr::functions::check_query(sql).map_err(|p| Refusal {
        at: (1, 1),
        message: p.message,
        hint: p.hint,
    })?;
    let mut statements = DFParser::parse_sql_with_dialect(sql, &GenericDialect {})
        .map_err(|e| parse_refusal(sql, e))?;
    if statements.len() != 1 {
        return Err(Refusal {
            at: statements.get(1).map(statement_pos).unwrap_or((1, 1)),
            message: format!(
                "a Sql query is exactly one SELECT statement; found {}",
                statements.len()
            ),
            hint: "remove the other statements (and a trailing `;` is fine)".into(),
        });
    }
    let statement = statements.pop_front().expect("one statement");
    let query = match statement {
        DFStatement::Statement(s) => match *s {
            Statement::Query(q) => q,
            other => return Err(refuse_statement(&other)),
        },
        DFStatement::CreateExternalTable(_) => {
            return Err(Refusal {
                at: (1, 1),
                message: "`CREATE EXTERNAL TABLE` is not allowed: a Sql transform reads only its inputs, never files or URLs".into(),
                hint: READ_HINT.into(),
            });
        }
        DFStatement::CopyTo(_) => {
            return Err(Refusal {
                at: (1, 1),
                message: "`COPY` is not allowed: a Sql transform neither reads nor writes files"
                    .into(),
                hint: WRITE_HINT.into(),
            });
        }
        DFStatement::Explain(_) | DFStatement::Reset(_) => {
            return Err(not_a_query(
                sql.split_whitespace().next().unwrap_or(""),
                (1, 1),
            ));
        }
    };
    analyze_query(&query)
}

const READ_HINT: &str = "read files with ReadFromJson, ReadFromCsv or ReadFromParquet and pass them as inputs, e.g. `input: {events: ReadEvents}`, then `FROM events`";
const WRITE_HINT: &str =
    "a Sql transform only computes rows; write them with a sink such as WriteToJson";

fn parse_refusal(sql: &str, e: DataFusionError) -> Refusal {
    let text = match &e {
        DataFusionError::SQL(p, _) => p.to_string(),
        other => other.to_string(),
    };
    let text = text.replace("sql parser error: ", "");
    Refusal {
        at: error_pos(&text).unwrap_or((1, 1)),
        message: format!("the Sql query does not parse: {text}"),
        hint: format!(
            "queries are DataFusion SQL, e.g. `SELECT recipe_id, COUNT(*) AS n FROM PCOLLECTION GROUP BY recipe_id`{}",
            if sql.trim().is_empty() {
                " (the query is empty)"
            } else {
                ""
            }
        ),
    }
}

/// sqlparser puts "at Line: L, Column: C" in its messages.
fn error_pos(text: &str) -> Option<QueryPos> {
    let rest = &text[text.find("Line: ")? + 6..];
    let line: u64 = rest.split(',').next()?.trim().parse().ok()?;
    let rest = &rest[rest.find("Column: ")? + 8..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line, digits.parse().ok()?))
}

fn statement_pos(s: &DFStatement) -> QueryPos {
    match s {
        DFStatement::Statement(s) => pos(s.span()),
        _ => (1, 1),
    }
}

fn pos(span: Span) -> QueryPos {
    if span.start.line == 0 {
        (1, 1)
    } else {
        (span.start.line, span.start.column)
    }
}

/// Refuses every statement that is not a query, naming its kind by its leading keyword (stable
/// across sqlparser versions, unlike the variant names).
fn refuse_statement(s: &Statement) -> Refusal {
    let text = s.to_string();
    let keyword = text
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    // The statement as a whole is refused: point at the query's start.
    let at = (1, 1);
    match keyword.as_str() {
        "CREATE" | "DROP" | "ALTER" | "TRUNCATE" | "RENAME" | "COMMENT" => {
            let what: String = text
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
                .to_ascii_uppercase();
            Refusal {
                at,
                message: format!(
                    "`{what}` is not allowed: a Sql transform runs one SELECT query; DDL statements are refused"
                ),
                hint: "the tables are the transform's inputs; derive new columns in the SELECT list instead".into(),
            }
        }
        "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "REPLACE" | "UPSERT" => Refusal {
            at,
            message: format!(
                "`{keyword}` is not allowed: a Sql transform runs one SELECT query; DML statements are refused"
            ),
            hint: WRITE_HINT.into(),
        },
        "COPY" | "LOAD" | "UNLOAD" | "ATTACH" | "INSTALL" => Refusal {
            at,
            message: format!(
                "`{keyword}` is not allowed: a Sql transform neither reads nor writes files"
            ),
            hint: READ_HINT.into(),
        },
        other => not_a_query(other, at),
    }
}

fn not_a_query(keyword: &str, at: QueryPos) -> Refusal {
    Refusal {
        at,
        message: format!(
            "`{}` is not allowed: a Sql transform runs one SELECT query",
            keyword.to_ascii_uppercase()
        ),
        hint: "write a query such as `SELECT * FROM PCOLLECTION WHERE …`".into(),
    }
}

fn analyze_query(query: &Query) -> Result<QueryInfo, Refusal> {
    let mut v = Collect::default();
    if let ControlFlow::Break(r) = query.visit(&mut v) {
        return Err(r);
    }
    let ctes: HashSet<String> = v.ctes.iter().map(|c| c.to_lowercase()).collect();
    let tables = v
        .tables
        .into_iter()
        .filter(|t| !ctes.contains(&t.written.to_lowercase()))
        .collect();
    let stateful = shape_stateful(query).or(v.stateful_expr);
    Ok(QueryInfo {
        tables,
        stateful,
        group_columns: group_columns(query),
    })
}

/// See [`QueryInfo::group_columns`]. Unquoted names are lowercased, as DataFusion resolves them.
fn group_columns(query: &Query) -> Option<Vec<String>> {
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let GroupByExpr::Expressions(exprs, modifiers) = &select.group_by else {
        return None;
    };
    if !modifiers.is_empty() {
        return None;
    }
    let column = |ident: &Ident| {
        if ident.quote_style.is_some() {
            ident.value.clone()
        } else {
            ident.value.to_lowercase()
        }
    };
    exprs
        .iter()
        .map(|e| match e {
            Expr::Identifier(i) => Some(column(i)),
            Expr::CompoundIdentifier(parts) => parts.last().map(column),
            _ => None,
        })
        .collect()
}

/// Walks the whole query (subqueries included): table references, table functions, and
/// expressions that need more than one row.
#[derive(Default)]
struct Collect {
    tables: Vec<TableRef>,
    ctes: Vec<String>,
    stateful_expr: Option<(String, QueryPos)>,
}

impl Visitor for Collect {
    type Break = Refusal;

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<Refusal> {
        if let Some(with) = &query.with {
            self.ctes
                .extend(with.cte_tables.iter().map(|c| c.alias.name.value.clone()));
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<Refusal> {
        match factor {
            TableFactor::Table { name, args, .. } => {
                if args.is_some() {
                    return ControlFlow::Break(table_function(name, pos(factor.span())));
                }
                match table_ref(name) {
                    Ok(t) => self.tables.push(t),
                    Err(r) => return ControlFlow::Break(r),
                }
            }
            TableFactor::TableFunction { .. } | TableFactor::Function { .. } => {
                return ControlFlow::Break(Refusal {
                    at: pos(factor.span()),
                    message: "table functions are not allowed: a Sql transform reads only its inputs, never files or URLs".into(),
                    hint: READ_HINT.into(),
                });
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<Refusal> {
        if self.stateful_expr.is_some() {
            return ControlFlow::Continue(());
        }
        let found = match expr {
            Expr::Function(f) if f.over.is_some() => Some("a window function (OVER)".to_string()),
            Expr::Function(f) => {
                let name = f.name.to_string().to_lowercase();
                is_aggregate(&name).then(|| format!("the aggregate function `{name}`"))
            }
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => {
                Some("a subquery".to_string())
            }
            _ => None,
        };
        if let Some(what) = found {
            self.stateful_expr = Some((what, pos(expr.span())));
        }
        ControlFlow::Continue(())
    }
}

fn table_function(name: &ObjectName, at: QueryPos) -> Refusal {
    Refusal {
        at,
        message: format!(
            "table function `{name}(…)` is not allowed: a Sql transform reads only its inputs, never files or URLs"
        ),
        hint: READ_HINT.into(),
    }
}

fn table_ref(name: &ObjectName) -> Result<TableRef, Refusal> {
    let at = pos(name.span());
    let idents: Vec<&Ident> = name
        .0
        .iter()
        .filter_map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i),
            _ => None,
        })
        .collect();
    let [ident] = idents.as_slice() else {
        return Err(Refusal {
            at,
            message: format!(
                "table `{name}` is not allowed: a Sql transform reads only its inputs, by their plain names"
            ),
            hint: "a single input is the table PCOLLECTION; name several with `input: {a: X, b: Y}` and query `a` and `b`".into(),
        });
    };
    let looks_like_path = ident.quote_style.is_some()
        && (ident.value.contains('/') || ident.value.contains("://") || ident.value.contains('.'));
    if looks_like_path {
        return Err(Refusal {
            at,
            message: format!(
                "`{}` looks like a file or URL: a Sql transform reads only its inputs",
                ident.value
            ),
            hint: READ_HINT.into(),
        });
    }
    Ok(TableRef {
        written: ident.value.clone(),
        quoted: ident.quote_style.is_some(),
        at,
    })
}

/// Clauses of the top-level query that need the whole input.
fn shape_stateful(query: &Query) -> Option<(String, QueryPos)> {
    let at = |s: Span| pos(s);
    if let Some(w) = &query.with {
        return Some(("WITH".into(), at(w.span())));
    }
    if let Some(o) = &query.order_by {
        return Some(("ORDER BY".into(), at(o.span())));
    }
    if let Some(l) = &query.limit_clause {
        return Some(("LIMIT".into(), at(l.span())));
    }
    if let Some(f) = &query.fetch {
        return Some(("FETCH".into(), at(f.span())));
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Some((
            "a set operation (UNION, INTERSECT, EXCEPT or VALUES)".into(),
            at(query.body.span()),
        ));
    };
    if select.distinct.is_some() {
        return Some(("DISTINCT".into(), at(select.span())));
    }
    match &select.group_by {
        GroupByExpr::All(_) => return Some(("GROUP BY".into(), at(select.span()))),
        GroupByExpr::Expressions(e, _) if !e.is_empty() => {
            return Some(("GROUP BY".into(), at(e[0].span())));
        }
        GroupByExpr::Expressions(..) => {}
    }
    if let Some(h) = &select.having {
        return Some(("HAVING".into(), at(h.span())));
    }
    if !select.named_window.is_empty() || select.qualify.is_some() {
        return Some(("a window clause".into(), at(select.span())));
    }
    match select.from.as_slice() {
        [one] if one.joins.is_empty() => match &one.relation {
            TableFactor::Table { .. } => None,
            other => Some(("a subquery in FROM".into(), at(other.span()))),
        },
        [one] => Some(("a join".into(), at(one.joins[0].span()))),
        [] => Some(("a query without FROM".into(), at(select.span()))),
        [_, second, ..] => Some(("a join".into(), at(second.span()))),
    }
}

/// Names (and aliases) of DataFusion's aggregate functions.
fn is_aggregate(name: &str) -> bool {
    static NAMES: OnceLock<HashSet<String>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            let ctx = SessionContext::new();
            let state = ctx.state();
            state
                .aggregate_functions()
                .iter()
                .flat_map(|(k, f)| {
                    std::iter::once(k.to_lowercase())
                        .chain(std::iter::once(f.name().to_lowercase()))
                        .chain(f.aliases().iter().map(|a| a.to_lowercase()))
                })
                .collect()
        })
        .contains(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(sql: &str) -> Refusal {
        analyze(sql).expect_err("refused")
    }

    #[test]
    fn stateless_select_where() {
        let info = analyze(
            "SELECT recipe_id, watch_seconds * 2 AS w FROM PCOLLECTION WHERE action = 'view'",
        )
        .unwrap();
        assert_eq!(info.stateful, None);
        assert_eq!(info.tables.len(), 1);
        assert!(info.tables[0].matches("PCOLLECTION"));
        assert!(info.tables[0].matches("pcollection"));
        assert_eq!(info.tables[0].at, (1, 47));
    }

    #[test]
    fn stateful_constructs_are_named() {
        let cases = [
            ("SELECT a, COUNT(*) FROM t GROUP BY a", "GROUP BY"),
            ("SELECT COUNT(*) FROM t", "the aggregate function `count`"),
            ("SELECT a FROM t ORDER BY a", "ORDER BY"),
            ("SELECT a FROM t LIMIT 3", "LIMIT"),
            ("SELECT a FROM x JOIN y ON x.a = y.a", "a join"),
            (
                "SELECT a, ROW_NUMBER() OVER () FROM t",
                "a window function (OVER)",
            ),
            ("SELECT DISTINCT a FROM t", "DISTINCT"),
            ("SELECT a FROM t WHERE a IN (SELECT a FROM u)", "a subquery"),
        ];
        for (sql, what) in cases {
            let info = analyze(sql).unwrap();
            assert_eq!(info.stateful.map(|s| s.0).as_deref(), Some(what), "{sql}");
        }
    }

    #[test]
    fn group_by_columns_are_the_session_key() {
        let cols = |sql: &str| analyze(sql).unwrap().group_columns;
        assert_eq!(
            cols("SELECT User_Id, \"Kind\", COUNT(*) FROM t GROUP BY User_Id, t.\"Kind\""),
            Some(vec!["user_id".to_string(), "Kind".to_string()])
        );
        assert_eq!(cols("SELECT COUNT(*) FROM t"), Some(vec![]));
        assert_eq!(cols("SELECT a % 2, COUNT(*) FROM t GROUP BY a % 2"), None);
        assert_eq!(cols("SELECT a, COUNT(*) FROM t GROUP BY 1"), None);
        assert_eq!(cols("SELECT a, COUNT(*) FROM t GROUP BY ALL"), None);
        assert_eq!(cols("SELECT a FROM t UNION SELECT a FROM u"), None);
    }

    #[test]
    fn ctes_are_not_input_tables() {
        let info =
            analyze("WITH v AS (SELECT * FROM a) SELECT * FROM v JOIN b ON v.x = b.x").unwrap();
        let names: Vec<&str> = info.tables.iter().map(|t| t.written.as_str()).collect();
        assert_eq!(names, vec!["a", "b"]);
    }

    #[test]
    fn ddl_dml_copy_and_files_are_refused() {
        let r = refusal("CREATE TABLE t (a INT)");
        assert!(
            r.message.starts_with("`CREATE TABLE` is not allowed"),
            "{}",
            r.message
        );
        let r = refusal("DROP TABLE PCOLLECTION");
        assert!(
            r.message.starts_with("`DROP TABLE` is not allowed"),
            "{}",
            r.message
        );
        let r = refusal("INSERT INTO t VALUES (1)");
        assert!(
            r.message.contains("DML statements are refused"),
            "{}",
            r.message
        );
        let r = refusal("DELETE FROM t");
        assert!(r.message.starts_with("`DELETE`"), "{}", r.message);
        let r = refusal("COPY t TO 'out.csv'");
        assert!(
            r.message.starts_with("`COPY` is not allowed"),
            "{}",
            r.message
        );
        let r = refusal("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/tmp/x.csv'");
        assert!(
            r.message.starts_with("`CREATE EXTERNAL TABLE`"),
            "{}",
            r.message
        );
        let r = refusal("SELECT * FROM read_csv('/etc/passwd')");
        assert!(
            r.message.starts_with("table function `read_csv(…)`"),
            "{}",
            r.message
        );
        assert_eq!(r.at, (1, 15));
        let r = refusal("SELECT * FROM 'data/events.parquet'");
        assert!(
            r.message.contains("looks like a file or URL"),
            "{}",
            r.message
        );
        let r = refusal("SELECT 1; SELECT 2");
        assert!(r.message.contains("found 2"), "{}", r.message);
    }

    #[test]
    fn parse_errors_carry_the_query_position() {
        let r = refusal("SELECT a\nFROM PCOLLECTION WHERE )");
        assert!(
            r.message.starts_with("the Sql query does not parse"),
            "{}",
            r.message
        );
        assert_eq!(r.at.0, 2);
    }
}
