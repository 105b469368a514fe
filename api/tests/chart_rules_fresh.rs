//! The charts' RBAC rules are generated from `tekfed_api::rbac`, which
//! `kubectl tekfed join` grants too: a chart whose `templates/_rules.tpl`
//! differs would give the agent (or the hub) other rights than join does.

use std::path::Path;

#[test]
fn the_charts_rules_are_the_rust_rules() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut stale = Vec::new();
    for (path, wanted) in tekfed_api::rbac::chart_templates() {
        match std::fs::read_to_string(root.join(path)) {
            Ok(text) if text == wanted => {}
            Ok(text) => {
                let first = text
                    .lines()
                    .zip(wanted.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or(text.lines().count().min(wanted.lines().count()));
                stale.push(format!(
                    "{path} differs from api/src/rbac.rs, first at line {}:\n    chart: {:?}\n    rules: {:?}",
                    first + 1,
                    text.lines().nth(first).unwrap_or("(end of file)"),
                    wanted.lines().nth(first).unwrap_or("(end of file)"),
                ));
            }
            Err(e) => stale.push(format!("{path}: {e}")),
        }
    }
    assert!(
        stale.is_empty(),
        "the charts' RBAC rules are stale; run `make crds` and commit the result:\n  {}",
        stale.join("\n  ")
    );
}
