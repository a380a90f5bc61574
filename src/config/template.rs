//! Jinja templating of pipeline files (the Beam YAML convention), with minijinja.
//!
//! Variables come from `--var K=V` first, then the process environment. An undefined variable is
//! an error (strict mode): a typo in `{{ input_path }}` must not silently render as empty.
//! Rendering is bounded: in instructions ([`TEMPLATE_FUEL`]) and in output size (the pipeline
//! file limit, `config::source`), so a loop in a template cannot hang or fill memory.

use std::collections::BTreeMap;

use minijinja::{Environment, UndefinedBehavior};

/// Jinja instructions one render may execute. The largest template in `pipelines/` runs a few
/// hundred; a loop over a few thousand items with a few instructions each fits comfortably.
pub const TEMPLATE_FUEL: u64 = 5_000_000;

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
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.add_template(name, source)
        .map_err(|e| (e.line().unwrap_or(1), e.to_string()))?;
    let mut ctx: BTreeMap<String, String> = std::env::vars().collect();
    ctx.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    let tmpl = env
        .get_template(name)
        .map_err(|e| (e.line().unwrap_or(1), e.to_string()))?;
    let limit = super::source::max_pipeline_bytes();
    let mut out = Bounded {
        text: Vec::new(),
        limit,
    };
    tmpl.render_captured_to(&ctx, &mut out).map_err(|e| {
        let mut msg = detail(&e);
        if e.kind() == minijinja::ErrorKind::WriteFailure {
            msg = format!(
                "the rendered pipeline is larger than {limit} bytes (raise with {})",
                super::source::MAX_PIPELINE_BYTES_ENV
            );
        }
        if e.kind() == minijinja::ErrorKind::OutOfFuel {
            msg = format!(
                "the template runs more than {TEMPLATE_FUEL} instructions (a loop that does not end, or is too long)"
            );
        }
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
    })?;
    String::from_utf8(out.text).map_err(|_| (1, "the rendered text is not UTF-8".to_string()))
}

/// Rendered text, refusing to grow past `limit` bytes.
struct Bounded {
    text: Vec<u8>,
    limit: u64,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if (self.text.len() + buf.len()) as u64 > self.limit {
            return Err(std::io::Error::other("rendered text too large"));
        }
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
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

    #[test]
    fn endless_templates_run_out_of_fuel() {
        let source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}a: 1\n";
        let (line, msg) = render("p", source, &BTreeMap::new()).unwrap_err();
        assert_eq!(line, 1);
        assert!(msg.contains("more than 5000000 instructions"), "{msg}");
    }
}
