//! The one bearer-token parser, shared by ingress (`kind = "token"`) and
//! the admin API, so both accept exactly the same `Authorization` values.
//!
//! RFC 7235 makes the scheme name case-insensitive (`Bearer`, `bearer`,
//! `BEARER`), separated from the token by one or more spaces.

/// The token of an `Authorization: Bearer <token>` value, trimmed; `None`
/// when the scheme is not Bearer or the token is empty.
pub fn bearer_token(value: &str) -> Option<&str> {
    let value = value.trim_start();
    let (scheme, rest) = value.split_once([' ', '\t'])?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "  Bearer   abc  "] {
            assert_eq!(bearer_token(v), Some("abc"), "{v:?}");
        }
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_refused() {
        for v in [
            "Basic abc",
            "Bearer",
            "Bearer   ",
            "Bearerabc",
            "",
            "Token abc",
        ] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}
