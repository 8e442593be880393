//! PURE: one page of a repository's tag list, as the OCI distribution spec defines
//! `GET /v2/<name>/tags/list?n=<int>&last=<tag>`, cut from the whole list.
//!
//! Invariants:
//! - Order is byte order (Go's `sort.Strings`, what distribution serves and pages by).
//!   The spec's words are "lexical order (i.e. case-insensitive alphanumeric order)", but
//!   case-insensitive order is no total order (`A` and `a` tie), so a `last` cursor could
//!   skip or repeat tags; the spec's conformance suite accepts `sort.Strings` order too.
//! - `last` is exclusive and need not be a tag of the list: the page starts at the first
//!   tag after it in that order.
//! - `n` counts tags; `n=0` is an empty page without a next link; no `n` is every tag
//!   after `last`, without a link.
//! - A next link is written only when a tag follows the page, so walking the links
//!   visits every tag exactly once, in order.

/// Sorts tags into the order pages are cut in (byte order) and drops duplicates.
pub fn sort(tags: &mut Vec<String>) {
    tags.sort_unstable();
    tags.dedup();
}

/// One page of a sorted tag list.
#[derive(Debug, PartialEq, Eq)]
pub struct Page<'a> {
    pub tags: &'a [String],
    /// The `n` and `last` of the next page, when a tag follows this one.
    pub next: Option<(u32, &'a str)>,
}

impl Page<'_> {
    /// `Link: </v2/<repo>/tags/list?last=X&n=N>; rel="next"`, relative like distribution's.
    pub fn link(&self, repo: &str) -> Option<String> {
        let (n, last) = self.next?;
        let last: String = form_urlencoded::byte_serialize(last.as_bytes()).collect();
        Some(format!(
            "</v2/{repo}/tags/list?last={last}&n={n}>; rel=\"next\""
        ))
    }
}

/// The page of `sorted` (as [`sort`] leaves it) after `last`, at most `n` tags.
pub fn page<'a>(sorted: &'a [String], n: Option<u32>, last: Option<&str>) -> Page<'a> {
    let start = last.map_or(0, |l| sorted.partition_point(|t| t.as_str() <= l));
    let rest = &sorted[start..];
    let Some(n) = n else {
        return Page {
            tags: rest,
            next: None,
        };
    };
    let take = rest.len().min(usize::try_from(n).unwrap_or(usize::MAX));
    let tags = &rest[..take];
    let next = match tags.last() {
        Some(l) if take < rest.len() => Some((n, l.as_str())),
        _ => None,
    };
    Page { tags, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(tags: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        sort(&mut v);
        v
    }

    fn names<'a>(p: &Page<'a>) -> Vec<&'a str> {
        p.tags.iter().map(String::as_str).collect()
    }

    #[test]
    fn sorting_is_byte_order_like_go_sort_strings() {
        let v = list(&[
            "latest", "v1.10", "V2", "v1.9", "_x", "1.0", "10", "9", "a-b", "a.b", "a_b", "aB",
            "Ab", "ab", "A", "a", "v1.9",
        ]);
        // '-' (0x2d) < '.' (0x2e) < digits < upper case < '_' (0x5f) < lower case.
        assert_eq!(
            v,
            [
                "1.0", "10", "9", "A", "Ab", "V2", "_x", "a", "a-b", "a.b", "aB", "a_b", "ab",
                "latest", "v1.10", "v1.9"
            ]
        );
    }

    #[test]
    fn no_n_is_the_rest_of_the_list_without_a_link() {
        let v = list(&["a", "b", "c"]);
        let p = page(&v, None, None);
        assert_eq!(names(&p), ["a", "b", "c"]);
        assert_eq!(p.next, None);
        assert_eq!(p.link("r"), None);
        assert_eq!(names(&page(&v, None, Some("a"))), ["b", "c"]);
        assert!(page(&v, None, Some("c")).tags.is_empty());
    }

    #[test]
    fn n_zero_is_an_empty_page_without_a_link() {
        let v = list(&["a", "b"]);
        for last in [None, Some("a"), Some("zzz")] {
            let p = page(&v, Some(0), last);
            assert!(p.tags.is_empty(), "{last:?}");
            assert_eq!(p.next, None, "{last:?}");
        }
        let empty: Vec<String> = Vec::new();
        assert_eq!(
            page(&empty, Some(0), None),
            Page {
                tags: &[],
                next: None
            }
        );
    }

    #[test]
    fn n_larger_than_the_list_is_the_whole_list_without_a_link() {
        let v = list(&["b", "a", "c"]);
        for n in [3, 4, 1000, u32::MAX] {
            let p = page(&v, Some(n), None);
            assert_eq!(names(&p), ["a", "b", "c"], "n={n}");
            assert_eq!(p.next, None, "n={n}");
        }
        let empty: Vec<String> = Vec::new();
        assert!(page(&empty, Some(5), None).tags.is_empty());
        assert_eq!(page(&empty, Some(5), None).next, None);
    }

    #[test]
    fn exact_boundaries_link_only_when_a_tag_follows() {
        let v = list(&["a", "b", "c", "d"]);
        // A page ending one before the end links; a page ending at the end does not.
        let p = page(&v, Some(3), None);
        assert_eq!(names(&p), ["a", "b", "c"]);
        assert_eq!(p.next, Some((3, "c")));
        let p = page(&v, Some(2), Some("b"));
        assert_eq!(names(&p), ["c", "d"]);
        assert_eq!(p.next, None);
        let p = page(&v, Some(1), Some("c"));
        assert_eq!(names(&p), ["d"]);
        assert_eq!(p.next, None);
        let p = page(&v, Some(4), None);
        assert_eq!(p.next, None);
    }

    #[test]
    fn last_is_exclusive_and_need_not_be_in_the_list() {
        let v = list(&["a", "c", "e"]);
        assert_eq!(names(&page(&v, Some(1), Some("a"))), ["c"]);
        // Between two tags: starts at the next one (distribution 3's SearchStrings
        // would skip it).
        assert_eq!(names(&page(&v, Some(1), Some("b"))), ["c"]);
        assert_eq!(page(&v, Some(1), Some("b")).next, Some((1, "c")));
        // Before every tag: the whole list.
        assert_eq!(names(&page(&v, None, Some("0"))), ["a", "c", "e"]);
        assert_eq!(names(&page(&v, None, Some("A"))), ["a", "c", "e"]);
        // Beyond the end, or at the last tag: empty, no link.
        for last in ["e", "f", "zzzz"] {
            let p = page(&v, Some(5), Some(last));
            assert!(p.tags.is_empty(), "{last}");
            assert_eq!(p.next, None, "{last}");
        }
    }

    #[test]
    fn the_link_is_relative_and_walks_every_tag_once() {
        let v = list(&["v1", "v2", "v3", "v4", "v5"]);
        let p = page(&v, Some(2), None);
        assert_eq!(
            p.link("team/app").unwrap(),
            "</v2/team/app/tags/list?last=v2&n=2>; rel=\"next\""
        );
        for n in 1..=6u32 {
            let (mut seen, mut last): (Vec<&str>, Option<&str>) = (vec![], None);
            let mut pages = 0;
            loop {
                pages += 1;
                let p = page(&v, Some(n), last);
                assert!(p.tags.len() <= n as usize);
                seen.extend(names(&p));
                match p.next {
                    Some((nn, l)) => {
                        assert_eq!(nn, n);
                        assert_eq!(Some(l), seen.last().copied());
                        last = Some(l);
                    }
                    None => break,
                }
            }
            assert_eq!(seen, ["v1", "v2", "v3", "v4", "v5"], "n={n}");
            assert_eq!(pages, 5usize.div_ceil(n as usize).max(1), "n={n}");
        }
    }

    #[test]
    fn cursors_are_encoded_in_the_link() {
        // Tags hold only [A-Za-z0-9._-], which stay as they are; anything an upstream
        // might hand over otherwise is percent-encoded.
        let v = list(&["a.b_c-D9", "z"]);
        assert_eq!(
            page(&v, Some(1), None).link("r").unwrap(),
            "</v2/r/tags/list?last=a.b_c-D9&n=1>; rel=\"next\""
        );
        let odd = list(&["a b&n=9", "z"]);
        assert_eq!(
            page(&odd, Some(1), None).link("r").unwrap(),
            "</v2/r/tags/list?last=a+b%26n%3D9&n=1>; rel=\"next\""
        );
    }
}
