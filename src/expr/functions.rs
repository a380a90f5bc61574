//! Which functions SQL text may call, decided from the text alone: used by `validate` (no input
//! schema needed) and before compiling an expression at run time, so both give the same short
//! message instead of DataFusion's (for `sum(id)` in `MapToFields` that was a 1.8 KB dump of
//! the planner's Rust structures).
//!
//! A row expression (`MapToFields`, `Filter`, `Partition`, `AssignTimestamps`, a `Combine`
//! value) computes one value per row: aggregate and window functions and subqueries cannot run
//! there. Anywhere, a function DataFusion does not know (`pg_sleep`) is reported with the
//! closest known name.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::OnceLock;

use datafusion::common::DFSchema;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{Expr, Visit, Visitor};

use crate::config::diag::did_you_mean;

/// A call that cannot run, with a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionProblem {
    pub message: String,
    pub hint: String,
}

struct Registry {
    ctx: SessionContext,
    scalar: HashSet<String>,
    aggregate: HashSet<String>,
    window: HashSet<String>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let ctx = SessionContext::new();
        let state = ctx.state();
        let scalar = state
            .scalar_functions()
            .iter()
            .flat_map(|(k, f)| {
                std::iter::once(k.to_lowercase())
                    .chain(f.aliases().iter().map(|a| a.to_lowercase()))
            })
            .collect();
        let aggregate = state
            .aggregate_functions()
            .iter()
            .flat_map(|(k, f)| {
                std::iter::once(k.to_lowercase())
                    .chain(f.aliases().iter().map(|a| a.to_lowercase()))
            })
            .collect();
        let window = state
            .window_functions()
            .iter()
            .flat_map(|(k, f)| {
                std::iter::once(k.to_lowercase())
                    .chain(f.aliases().iter().map(|a| a.to_lowercase()))
            })
            .collect();
        Registry {
            ctx,
            scalar,
            aggregate,
            window,
        }
    })
}

/// Whether DataFusion's planner knows no function of this name. Names outside the registries
/// are confirmed with the planner (some, like `struct`, are planned specially).
fn is_unknown(name: &str) -> bool {
    let r = registry();
    let lower = name.to_lowercase();
    if r.scalar.contains(&lower) || r.aggregate.contains(&lower) || r.window.contains(&lower) {
        return false;
    }
    if !name
        .chars()
        .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
    {
        return false;
    }
    match r
        .ctx
        .parse_sql_expr(&format!("{name}()"), &DFSchema::empty())
    {
        Ok(_) => false,
        Err(e) => e.to_string().contains("Invalid function"),
    }
}

fn unknown(name: &str) -> FunctionProblem {
    let r = registry();
    let hint = did_you_mean(
        &name.to_lowercase(),
        r.scalar
            .iter()
            .chain(&r.aggregate)
            .chain(&r.window)
            .map(String::as_str),
    )
    .unwrap_or_else(|| "the functions Sluice runs are DataFusion's (docs/sql.md)".into());
    FunctionProblem {
        message: format!("unknown SQL function `{name}`"),
        hint,
    }
}

/// Deepest expression tree accepted (`a + b + c` is 3 deep). Planning and evaluation recurse
/// per level: a left-deep chain of 500 additions overflowed the main thread's 8 MiB stack in a
/// debug build. Generated predicates longer than this belong in `IN (…)` or a join.
pub const MAX_EXPR_DEPTH: usize = 128;

struct Calls {
    row: bool,
    depth: usize,
}

impl Visitor for Calls {
    type Break = FunctionProblem;

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<FunctionProblem> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<FunctionProblem> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            return ControlFlow::Break(FunctionProblem {
                message: format!(
                    "the expression nests more than {MAX_EXPR_DEPTH} levels deep"
                ),
                hint: "split it over several fields or transforms; a long chain of `OR`s comparing one field is `field IN (…)`".into(),
            });
        }
        let row_hint = "aggregate in a `Combine` (`group_by` + `combine: {total: {value: id, fn: sum}}`) or a `Sql` transform (`SELECT k, SUM(id) AS total FROM PCOLLECTION GROUP BY k`)";
        match expr {
            Expr::Function(f) => {
                let name = f.name.to_string();
                let lower = name.to_lowercase();
                if self.row && f.over.is_some() {
                    return ControlFlow::Break(FunctionProblem {
                        message: format!(
                            "`{name}(…) OVER (…)` is a window function: it needs many rows, but this expression computes one value per row"
                        ),
                        hint: "use a `Sql` transform for window functions".into(),
                    });
                }
                if self.row && registry().aggregate.contains(&lower) {
                    return ControlFlow::Break(FunctionProblem {
                        message: format!(
                            "`{name}` is an aggregate function: it needs many rows, but this expression computes one value per row"
                        ),
                        hint: row_hint.into(),
                    });
                }
                if is_unknown(&name) {
                    return ControlFlow::Break(unknown(&name));
                }
            }
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } if self.row => {
                return ControlFlow::Break(FunctionProblem {
                    message:
                        "a subquery cannot run in an expression that computes one value per row"
                            .into(),
                    hint: "join or aggregate in a `Sql` transform".into(),
                });
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// Checks the calls of a row expression. Text that does not parse is left to the parser's
/// own message.
///
/// # Errors
/// The first call that cannot run per row.
pub fn check_row_expr(sql: &str) -> Result<(), FunctionProblem> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let Ok(expr) = Parser::new(&GenericDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
    else {
        return Ok(());
    };
    match expr.visit(&mut Calls {
        row: true,
        depth: 0,
    }) {
        ControlFlow::Break(p) => Err(p),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Checks the calls of a `Sql` transform's query (aggregates and window functions allowed).
///
/// # Errors
/// The first unknown function.
pub fn check_query(sql: &str) -> Result<(), FunctionProblem> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::parser::Parser;
    let Ok(statements) = Parser::parse_sql(&GenericDialect {}, sql) else {
        return Ok(());
    };
    match statements.visit(&mut Calls {
        row: false,
        depth: 0,
    }) {
        ControlFlow::Break(p) => Err(p),
        ControlFlow::Continue(()) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_expressions_refuse_aggregates_and_unknown_functions() {
        let p = check_row_expr("sum(id)").unwrap_err();
        assert_eq!(
            p.message,
            "`sum` is an aggregate function: it needs many rows, but this expression computes one value per row"
        );
        let p = check_row_expr("pg_sleep(10) IS NULL").unwrap_err();
        assert_eq!(p.message, "unknown SQL function `pg_sleep`");
        let p = check_row_expr("uper(name)").unwrap_err();
        assert_eq!(p.hint, "did you mean `upper`?");
        for ok in [
            "upper(name) || 'x'",
            "CAST(a AS BIGINT) + abs(b)",
            "coalesce(a, 1)",
            "date_trunc('hour', ts)",
            "struct(a, b)",
            "named_struct('a', a)",
            "now()",
            "make_array(1, 2)",
            "a +",
        ] {
            assert_eq!(check_row_expr(ok), Ok(()), "{ok}");
        }
        // On the main thread's 8 MiB stack, as `validate` runs (a test thread has 2 MiB).
        std::thread::Builder::new()
            .stack_size(8 << 20)
            .spawn(|| {
                let deep = format!("n{}", " + 1".repeat(10 * MAX_EXPR_DEPTH));
                let p = check_row_expr(&deep).unwrap_err();
                assert_eq!(p.message, "the expression nests more than 128 levels deep");
                let fine = format!("n{}", " + 1".repeat(MAX_EXPR_DEPTH - 2));
                assert_eq!(check_row_expr(&fine), Ok(()));
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(
            check_query("SELECT k, SUM(id) FROM PCOLLECTION GROUP BY k"),
            Ok(())
        );
        assert_eq!(
            check_query("SELECT pg_sleep(1) FROM PCOLLECTION")
                .unwrap_err()
                .message,
            "unknown SQL function `pg_sleep`"
        );
    }
}
