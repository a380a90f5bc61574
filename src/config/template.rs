//! Jinja templating of pipeline files (the Beam YAML convention), with minijinja.
//!
//! Variables come from `--var K=V` first, then the process environment. An undefined variable is
//! an error (strict mode): a typo in `{{ input_path }}` must not silently render as empty.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};

/// Renders `source` with `vars`, falling back to environment variables.
///
/// # Errors
/// The template error, with its line number in the original file.
pub fn render(
    name: &str,
    source: &str,
    vars: &BTreeMap<String, String>,
) -> Result<String, (usize, String)> {
    if !source.contains("{{") && !source.contains("{%") && !source.contains("{#") {
        return Ok(source.to_string());
    }
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.add_template(name, source)
        .map_err(|e| (e.line().unwrap_or(1), e.to_string()))?;
    let mut ctx: BTreeMap<String, String> = std::env::vars().collect();
    ctx.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    let tmpl = env
        .get_template(name)
        .map_err(|e| (e.line().unwrap_or(1), e.to_string()))?;
    tmpl.render(&ctx).map_err(|e| {
        let mut msg = detail(&e);
        if e.kind() == minijinja::ErrorKind::UndefinedError {
            let mut missing: Vec<String> = tmpl
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| !ctx.contains_key(v))
                .collect();
            missing.sort();
            if !missing.is_empty() {
                msg = format!("undefined variable `{}`", missing.join("`, `"));
            }
        }
        (e.line().unwrap_or(1), msg)
    })
}

fn detail(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_override_environment_and_undefined_is_an_error() {
        let mut vars = BTreeMap::new();
        vars.insert("path".to_string(), "/tmp/x".to_string());
        assert_eq!(
            render("p", "a: {{ path }}\n", &vars).unwrap(),
            "a: /tmp/x\n"
        );
        let (line, msg) = render("p", "a: 1\nb: {{ nope_not_set_anywhere }}\n", &vars).unwrap_err();
        assert_eq!(line, 2);
        assert_eq!(msg, "undefined variable `nope_not_set_anywhere`");
    }
}
