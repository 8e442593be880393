//! PURE: repository and tag patterns.
//!
//! - `*` matches within one path component (never crosses `/`);
//! - `**` as a whole component matches zero or more components (`team-a/**` is the
//!   team-a namespace, `team-a` itself included);
//! - `${user}` stands for the authenticated user's name and matches it literally: a name
//!   is data, never pattern syntax, so no name can widen a rule.
//!
//! Matching is linear in practice and never allocates.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Lit(String),
    Star,
    User,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`
    Any,
    Tokens(Vec<Token>),
}

/// A compiled repository (or tag) pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    segments: Vec<Segment>,
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Why a pattern does not compile. The messages are what `check` and start-up print
/// after the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("empty pattern")]
    Empty,
    #[error("empty path component")]
    EmptyComponent,
    #[error("`**` must be a whole path component")]
    PartialDoubleStar,
    #[error("`{0}` is not pattern syntax: use `*`, `**` or `${{user}}`")]
    NotSyntax(char),
    #[error("`{0}` cannot appear in a repository or tag")]
    BadCharacter(char),
    #[error("a tag pattern has no `/`")]
    SlashInTag,
    #[error("use `*` for every tag")]
    DoubleStarTag,
}

fn tokens(seg: &str) -> Result<Vec<Token>, PatternError> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut rest = seg;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("${user}") {
            if !lit.is_empty() {
                out.push(Token::Lit(std::mem::take(&mut lit)));
            }
            out.push(Token::User);
            rest = after;
        } else if c == '*' {
            if rest.starts_with("**") {
                return Err(PatternError::PartialDoubleStar);
            }
            if !lit.is_empty() {
                out.push(Token::Lit(std::mem::take(&mut lit)));
            }
            if out.last() != Some(&Token::Star) {
                out.push(Token::Star);
            }
            rest = &rest[1..];
        } else if c == '$' || c == '{' || c == '}' || c == '?' || c == '[' || c == ']' {
            return Err(PatternError::NotSyntax(c));
        } else if c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, '.' | '_' | '-')
            || c.is_ascii_uppercase()
        {
            lit.push(c);
            rest = &rest[c.len_utf8()..];
        } else {
            return Err(PatternError::BadCharacter(c));
        }
    }
    if !lit.is_empty() {
        out.push(Token::Lit(lit));
    }
    if out.is_empty() {
        return Err(PatternError::EmptyComponent);
    }
    Ok(out)
}

impl Pattern {
    /// Compiles a repository pattern (`team-a/**`, `${user}/*`, `public/*-base`).
    pub fn repo(source: &str) -> Result<Pattern, PatternError> {
        if source.is_empty() {
            return Err(PatternError::Empty);
        }
        let segments = source
            .split('/')
            .map(|s| {
                if s == "**" {
                    Ok(Segment::Any)
                } else {
                    tokens(s).map(Segment::Tokens)
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Pattern {
            source: source.to_owned(),
            segments,
        })
    }

    /// Compiles a tag pattern (`latest`, `v*`); one component, no `**`.
    pub fn tag(source: &str) -> Result<Pattern, PatternError> {
        if source.contains('/') {
            return Err(PatternError::SlashInTag);
        }
        if source == "**" {
            return Err(PatternError::DoubleStarTag);
        }
        Pattern::repo(source)
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The literal first component, if the pattern has one: rules are indexed by it.
    pub fn literal_namespace(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Tokens(t)) => match t.as_slice() {
                [Token::Lit(s)] => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the first component is exactly `${user}`.
    pub fn user_namespace(&self) -> bool {
        matches!(self.segments.first(), Some(Segment::Tokens(t)) if t.as_slice() == [Token::User])
    }

    /// Whether `name` matches, `${user}` standing for `user` (None: anonymous, so
    /// `${user}` matches nothing).
    pub fn matches(&self, name: &str, user: Option<&str>) -> bool {
        match_segments(&self.segments, Some(name), user)
    }
}

/// `rest`: the components still to match, `None` when there are none left.
fn match_segments(segs: &[Segment], rest: Option<&str>, user: Option<&str>) -> bool {
    match segs.split_first() {
        None => rest.is_none(),
        Some((Segment::Any, tail)) => {
            // zero or more components
            let mut r = rest;
            loop {
                if match_segments(tail, r, user) {
                    return true;
                }
                match r {
                    Some(s) => r = s.split_once('/').map(|(_, b)| b),
                    None => return false,
                }
            }
        }
        Some((Segment::Tokens(t), tail)) => match rest {
            None => false,
            Some(s) => {
                let (c, more) = match s.split_once('/') {
                    Some((a, b)) => (a, Some(b)),
                    None => (s, None),
                };
                match_tokens(t, c, user) && match_segments(tail, more, user)
            }
        },
    }
}

fn match_tokens(tokens: &[Token], s: &str, user: Option<&str>) -> bool {
    match tokens.split_first() {
        None => s.is_empty(),
        Some((Token::Lit(l), rest)) => s
            .strip_prefix(l.as_str())
            .is_some_and(|r| match_tokens(rest, r, user)),
        Some((Token::User, rest)) => match user {
            Some(u) => s
                .strip_prefix(u)
                .is_some_and(|r| match_tokens(rest, r, user)),
            None => false,
        },
        Some((Token::Star, rest)) => {
            // `*` never crosses `/` because `s` is one component.
            (0..=s.len())
                .filter(|&i| s.is_char_boundary(i))
                .any(|i| match_tokens(rest, &s[i..], user))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, name: &str, user: Option<&str>) -> bool {
        Pattern::repo(p).unwrap().matches(name, user)
    }

    #[test]
    fn stars() {
        assert!(m("public/*", "public/2048", None));
        assert!(!m("public/*", "public/a/b", None));
        assert!(!m("public/*", "public", None));
        assert!(m("public/*-base", "public/debian-base", None));
        assert!(!m("public/*-base", "public/debian-basement", None));
        assert!(m("*/app", "alice/app", None));
        assert!(!m("*", "a/b", None));
    }

    #[test]
    fn double_stars() {
        assert!(m("team-a/**", "team-a/x", None));
        assert!(m("team-a/**", "team-a/x/y/z", None));
        assert!(m("team-a/**", "team-a", None));
        assert!(!m("team-a/**", "team-ab/x", None));
        assert!(m("**", "anything/at/all", None));
        assert!(m("**/base", "a/b/base", None));
        assert!(m("**/base", "base", None));
        assert!(m("a/**/z", "a/z", None));
        assert!(m("a/**/z", "a/b/c/z", None));
        assert!(!m("a/**/z", "a/b/c/y", None));
    }

    #[test]
    fn user_is_literal() {
        assert!(m("${user}/**", "alice/app", Some("alice")));
        assert!(!m("${user}/**", "bob/app", Some("alice")));
        assert!(!m("${user}/**", "alice/app", None));
        assert!(m(
            "home-${user}/*",
            "home-10000460123/ubuntu",
            Some("10000460123")
        ));
        // names that look like syntax are matched as text, so they match nothing else
        assert!(!m("${user}/**", "x/app", Some("*")));
        assert!(!m("${user}/**", "a/app", Some("**")));
    }

    #[test]
    fn bad_patterns() {
        for p in [
            "", "a//b", "a/**b", "a/b**", "a/?", "a/[ab]", "a/${usr}", "a b", "a/%2F",
        ] {
            assert!(Pattern::repo(p).is_err(), "{p}");
        }
        assert!(Pattern::tag("v*").is_ok());
        assert!(Pattern::tag("a/b").is_err());
    }

    #[test]
    fn index_keys() {
        assert_eq!(
            Pattern::repo("team-a/**").unwrap().literal_namespace(),
            Some("team-a")
        );
        assert_eq!(
            Pattern::repo("team-*/**").unwrap().literal_namespace(),
            None
        );
        assert!(Pattern::repo("${user}/**").unwrap().user_namespace());
    }
}
