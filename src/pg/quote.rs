//! Quoting for SQL and for the replication command grammar (PostgreSQL docs, 4.1.1 and 4.1.2.1;
//! 55.4 "Streaming Replication Protocol" uses the same identifier and string rules).

/// `"ident"` with embedded `"` doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'value'` with embedded `'` doubled. No backslash escapes: standard_conforming_strings is
/// on (the default since 9.1) and the replication grammar has none.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("back\\slash"), "'back\\slash'");
    }
}
