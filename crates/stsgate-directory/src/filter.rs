//! Text that goes into LDAP: the account name a request's user stands for,
//! filter values escaped (RFC 4515: the user name is the client's, not
//! ours).

/// Longest user name looked up; a longer one is no account.
pub const MAX_USER_LEN: usize = 512;

/// The name to look up for a request's user: a UPN (`alice@corp.example.com`)
/// as written, `DOMAIN\alice` as `alice` (the domain part dropped), a bare
/// sAMAccountName as written; surrounding spaces trimmed. `None` when
/// nothing is left or the name is longer than [`MAX_USER_LEN`].
pub fn account_name(user: &str) -> Option<&str> {
    let user = user.trim();
    let name = match user.rsplit_once('\\') {
        Some((_, sam)) => sam.trim(),
        None => user,
    };
    (!name.is_empty() && name.len() <= MAX_USER_LEN).then_some(name)
}

/// `value` escaped for an LDAP filter's assertion value (RFC 4515 §3):
/// `*`, `(`, `)`, `\` and NUL as `\2a`, `\28`, `\29`, `\5c`, `\00`; every
/// other character as it is (UTF-8).
pub fn escape_filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// `directory.user_filter` with `{user}` replaced by the escaped name.
pub fn user_filter(template: &str, name: &str) -> String {
    template.replace("{user}", &escape_filter_value(name))
}

/// Checks a `directory.user_filter`: a parenthesised LDAP filter that
/// names `{user}` and parses once it is filled in.
pub fn check_user_filter(template: &str) -> Result<(), String> {
    if !template.contains("{user}") {
        return Err(
            "user_filter must name {user}, e.g. \"(|(userPrincipalName={user})(sAMAccountName={user}))\""
                .to_string(),
        );
    }
    let filled = user_filter(template, "alice");
    if !filled.starts_with('(') || ldap3::parse_filter(&filled).is_err() {
        return Err(format!(
            "user_filter {template:?} is not an LDAP filter (RFC 4515), e.g. \"(sAMAccountName={{user}})\""
        ));
    }
    Ok(())
}

/// Checks `directory.url`: `ldap://host[:port]` or `ldaps://host[:port]`.
pub fn check_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| format!("invalid directory url {url:?}: {why}");
    let rest = url
        .strip_prefix("ldap://")
        .or_else(|| url.strip_prefix("ldaps://"))
        .ok_or_else(|| bad("expected ldap://host[:port] or ldaps://host[:port]"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains(['/', '?', '@', ' ']) {
        return Err(bad(
            "only a host and port: the base DN and filter are keys of their own",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names() {
        for (user, name) in [
            ("alice@corp.example.com", Some("alice@corp.example.com")),
            ("CORP\\alice", Some("alice")),
            ("  alice ", Some("alice")),
            ("CORP\\", None),
            ("", None),
            ("a\\b\\carol", Some("carol")),
        ] {
            assert_eq!(account_name(user), name, "{user:?}");
        }
        assert_eq!(account_name(&"x".repeat(MAX_USER_LEN + 1)), None);
    }

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(escape_filter_value("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(escape_filter_value("a\\b\0"), "a\\5cb\\00");
        assert_eq!(escape_filter_value("Åsa"), "Åsa");
        let f = user_filter("(|(mail={user})(uid={user}))", "*)(objectClass=*");
        assert_eq!(
            f,
            "(|(mail=\\2a\\29\\28objectClass=\\2a)(uid=\\2a\\29\\28objectClass=\\2a))"
        );
        assert!(ldap3::parse_filter(&f).is_ok());
    }

    #[test]
    fn settings_checks() {
        assert!(check_user_filter("(sAMAccountName={user})").is_ok());
        assert!(check_user_filter("(|(userPrincipalName={user})(sAMAccountName={user}))").is_ok());
        assert!(check_user_filter("(sAMAccountName=alice)").is_err());
        assert!(check_user_filter("sAMAccountName={user}").is_err());
        assert!(check_user_filter("(&(a={user})").is_err());
        assert!(check_url("ldaps://dc1.corp.example.com").is_ok());
        assert!(check_url("ldap://127.0.0.1:389/").is_ok());
        assert!(check_url("https://dc1").is_err());
        assert!(check_url("ldap://").is_err());
        assert!(check_url("ldap://dc1/dc=corp?uid").is_err());
    }
}
