//! PURE: the text a directory lookup is made of. User input only ever enters a search
//! as an escaped assertion value (RFC 4515), never as filter syntax and never as part of
//! a DN: the user's DN is the one the directory returns, used as it is.
//!
//! - [`escape_value`]: `*`, `(`, `)`, `\` and NUL become `\2a`, `\28`, `\29`, `\5c`,
//!   `\00`, so a name cannot widen a search or change its shape;
//! - [`fill`]: a filter template (`(uid={user})`, `(member={dn})`) with its placeholders
//!   replaced in one pass by escaped values (a value holding `{dn}` is not filled again);
//! - [`check_template`]: what config validation asks of a template;
//! - [`group_name`]: the name of a group from its DN (the first RDN's value, for
//!   `memberOf`), with RFC 4514 escapes undone.

/// Escapes `value` for use as an assertion value in a search filter (RFC 4515 §3).
pub fn escape_value(value: &str) -> String {
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

/// The placeholders a template may hold.
pub const USER: &str = "{user}";
pub const DN: &str = "{dn}";

/// `template` with every `{user}` replaced by the escaped `user` and every `{dn}` by the
/// escaped `dn`, in one left-to-right pass: the inserted text is never scanned again.
pub fn fill(template: &str, user: &str, dn: &str) -> String {
    let mut out = String::with_capacity(template.len() + user.len() + dn.len());
    let mut rest = template;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix(USER) {
            out.push_str(&escape_value(user));
            rest = after;
        } else if let Some(after) = tail.strip_prefix(DN) {
            out.push_str(&escape_value(dn));
            rest = after;
        } else {
            out.push('{');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

/// Why a filter template is refused (config validation).
pub fn check_template(template: &str, allowed: &[&str]) -> Result<(), String> {
    if !allowed.iter().any(|p| template.contains(p)) {
        return Err(format!(
            "{template:?} holds none of {}: it would match the same entries for everyone",
            allowed.join(", ")
        ));
    }
    for p in [USER, DN] {
        if template.contains(p) && !allowed.contains(&p) {
            return Err(format!("{template:?}: {p} is not known here"));
        }
    }
    if !(template.starts_with('(') && template.ends_with(')')) {
        return Err(format!("{template:?} is not a filter in parentheses"));
    }
    // Balanced parentheses (a literal one is written \28 or \29).
    let mut depth = 0usize;
    for (i, c) in template.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Err(format!("{template:?}: unbalanced ')' at byte {i}")),
            ')' => {
                depth -= 1;
                if depth == 0 && i + 1 != template.len() {
                    return Err(format!("{template:?}: text after the closing ')'"));
                }
            }
            '\0' => return Err(format!("{template:?} holds a NUL")),
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!("{template:?}: unbalanced '('"));
    }
    Ok(())
}

/// The group name a `memberOf` value stands for: the value of the DN's first RDN when
/// its attribute type is `name_attribute` (case-insensitive, as LDAP compares types),
/// with RFC 4514 escapes (`\,`, `\2C`) undone. `None` for any other shape (another
/// type first, a `#` BER value, a multi-valued first RDN, bad escapes, no value).
pub fn group_name(dn: &str, name_attribute: &str) -> Option<String> {
    let (ty, rest) = dn.split_once('=')?;
    if !ty.trim().eq_ignore_ascii_case(name_attribute) {
        return None;
    }
    let rest = rest.trim_start();
    if rest.starts_with('#') {
        return None;
    }
    let mut bytes = Vec::with_capacity(rest.len());
    let mut it = rest.bytes().peekable();
    while let Some(b) = it.next() {
        match b {
            b'\\' => {
                let first = it.next()?;
                if first.is_ascii_hexdigit() {
                    let second = it.next().filter(u8::is_ascii_hexdigit)?;
                    let hex = [first, second];
                    let hex = std::str::from_utf8(&hex).ok()?;
                    bytes.push(u8::from_str_radix(hex, 16).ok()?);
                } else {
                    bytes.push(first);
                }
            }
            b',' => break,
            // A multi-valued RDN (`cn=a+uid=b`): which value names the group is unclear.
            b'+' => return None,
            b => bytes.push(b),
        }
    }
    let name = String::from_utf8(bytes).ok()?;
    let name = name.trim_end();
    (!name.is_empty()).then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn special_characters_are_escaped() {
        assert_eq!(escape_value("alice"), "alice");
        assert_eq!(escape_value("*"), "\\2a");
        assert_eq!(
            escape_value("a*)(uid=*))(|(uid=*"),
            "a\\2a\\29\\28uid=\\2a\\29\\29\\28|\\28uid=\\2a"
        );
        assert_eq!(escape_value("back\\slash"), "back\\5cslash");
        assert_eq!(escape_value("nul\0"), "nul\\00");
        assert_eq!(escape_value("jürgen"), "jürgen");
    }

    #[test]
    fn placeholders_are_filled_once() {
        assert_eq!(fill("(uid={user})", "bob", ""), "(uid=bob)");
        assert_eq!(
            fill("(&(objectClass=person)(sAMAccountName={user}))", "x*", ""),
            "(&(objectClass=person)(sAMAccountName=x\\2a))"
        );
        assert_eq!(
            fill("(|(member={dn})(memberUid={user}))", "b", "cn=b\\,c,dc=x"),
            "(|(member=cn=b\\5c,c,dc=x)(memberUid=b))"
        );
        // A name holding a placeholder is not filled again.
        assert_eq!(fill("(uid={user})", "{dn}", "cn=x"), "(uid={dn})");
        assert_eq!(fill("(cn={other})", "u", ""), "(cn={other})");
        assert_eq!(fill("{", "u", ""), "{");
    }

    #[test]
    fn templates_are_checked() {
        assert!(check_template("(uid={user})", &[USER]).is_ok());
        assert!(check_template("(&(objectClass=user)(sAMAccountName={user}))", &[USER]).is_ok());
        assert!(check_template("(member={dn})", &[USER, DN]).is_ok());
        for bad in [
            "(uid=alice)",
            "uid={user}",
            "(uid={user}",
            "(uid={user}))",
            "(uid={user})(cn=x)",
            "(uid={user}\0)",
            ")uid={user}(",
        ] {
            assert!(check_template(bad, &[USER]).is_err(), "{bad:?}");
        }
        assert!(check_template("(member={dn})", &[USER]).is_err());
    }

    #[test]
    fn group_names_come_from_the_first_rdn() {
        assert_eq!(
            group_name("cn=team-a,ou=groups,dc=example,dc=org", "cn").as_deref(),
            Some("team-a")
        );
        assert_eq!(
            group_name("CN=Team A,OU=Groups,DC=corp,DC=example", "cn").as_deref(),
            Some("Team A")
        );
        assert_eq!(
            group_name("cn=a\\,b\\2Cc,dc=x", "cn").as_deref(),
            Some("a,b,c")
        );
        assert_eq!(group_name("ou=team,dc=x", "cn"), None);
        assert_eq!(group_name("cn=#04024869,dc=x", "cn"), None);
        assert_eq!(group_name("cn=a+uid=b,dc=x", "cn"), None);
        assert_eq!(group_name("cn=,dc=x", "cn"), None);
        assert_eq!(group_name("cn=bad\\", "cn"), None);
        assert_eq!(group_name("cn=bad\\4", "cn"), None);
        assert_eq!(group_name("no equals sign", "cn"), None);
    }

    /// Undoes `escape_value`: hex escapes back to bytes.
    fn unescape(s: &str) -> Option<String> {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'\\' {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).ok()
    }

    proptest! {
        /// No escaped value holds filter syntax, and escaping loses nothing.
        #[test]
        fn escaped_values_hold_no_filter_syntax(v in any::<String>()) {
            let e = escape_value(&v);
            prop_assert!(!e.contains(['*', '(', ')', '\0']));
            // Every backslash starts one of the five escapes.
            for (i, _) in e.match_indices('\\') {
                let esc = &e[i..i + 3];
                prop_assert!(["\\2a", "\\28", "\\29", "\\5c", "\\00"].contains(&esc), "{esc}");
            }
            prop_assert_eq!(unescape(&e), Some(v));
        }

        /// A filled template keeps the template's shape: its parentheses are exactly
        /// the template's, whatever the name.
        #[test]
        fn a_filled_template_has_the_template_shape(user in any::<String>(), dn in any::<String>()) {
            let t = "(&(objectClass=person)(|(uid={user})(member={dn})))";
            let f = fill(t, &user, &dn);
            let parens = |s: &str| s.chars().filter(|c| matches!(c, '(' | ')')).collect::<String>();
            prop_assert_eq!(parens(&f), parens(t));
        }
    }
}

/// PURE: the attribute a filter template compares `{user}` with, when it does so as
/// `(ATTR={user})` (alone or inside `&`/`|`): `uid` of `(uid={user})`, `sAMAccountName`
/// of `(&(objectClass=user)(sAMAccountName={user}))`. `None` for anything else.
pub fn compared_attribute(template: &str) -> Option<String> {
    let at = template.find("={user})")?;
    let open = template[..at].rfind('(')?;
    let attr = &template[open + 1..at];
    (!attr.is_empty() && attr.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'))
        .then(|| attr.to_owned())
}

#[cfg(test)]
mod compared_attribute_tests {
    use super::compared_attribute;

    #[test]
    fn the_attribute_compared_with_the_user_is_found() {
        assert_eq!(compared_attribute("(uid={user})").as_deref(), Some("uid"));
        assert_eq!(
            compared_attribute("(&(objectClass=user)(sAMAccountName={user}))").as_deref(),
            Some("sAMAccountName")
        );
        assert_eq!(compared_attribute("(uid=*{user})"), None);
        assert_eq!(
            compared_attribute("(|(uid={user})(mail={user}))").as_deref(),
            Some("uid")
        );
        assert_eq!(compared_attribute("(cn~={user})"), None);
    }
}
