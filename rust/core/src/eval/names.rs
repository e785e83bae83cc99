//! The names the evaluator gives field paths and presence tests, in one place.
//!
//! `expr::flatten` rewrites `cert.subject.cn` into one identifier naming the whole path
//! and `has(body.model)` into the identifier `has(body.model)`; the native evaluator
//! splits those names once when a policy loads, and the engine's activation answers
//! them when cel resolves them. All three read and write the names here.

/// The identifier of a presence test `has(parent.field)`.
pub(crate) fn presence(parent: &str, field: &str) -> String {
    format!("has({parent}.{field})")
}

/// `has(parent.field)` as (parent, field): `Some(None)` for a presence test without a
/// field, `None` for any other name.
pub(crate) fn presence_test(name: &str) -> Option<Option<(&str, &str)>> {
    let inner = name.strip_prefix("has(")?.strip_suffix(')')?;
    Some(inner.rsplit_once('.'))
}

/// `name` split at its first dot: the root variable and the path below it.
pub(crate) fn split_path(name: &str) -> (&str, Option<&str>) {
    match name.split_once('.') {
        Some((root, path)) => (root, Some(path)),
        None => (name, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_names_round_trip() {
        let name = presence("body.o", "k");
        assert_eq!(presence_test(&name), Some(Some(("body.o", "k"))));
        assert_eq!(presence_test("body.model"), None);
        assert_eq!(split_path("cert.subject.cn"), ("cert", Some("subject.cn")));
        assert_eq!(split_path("identity"), ("identity", None));
    }
}
