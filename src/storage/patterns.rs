//! search_code's queries, compiled once per shard and kept.
//!
//! # Why
//!
//! Compiling a query can cost more than the search it serves. On the benchmark
//! VM, `regex::bytes` takes ~20 µs for `needle_(marker|pin)`, ~120 µs for any
//! case-insensitive literal (Unicode case folding) and 280–400 µs for a pattern
//! with `\w` or `\s` (Unicode classes); a search of a snapshot whose trigram index
//! narrows it to a few files takes 5–30 µs. Agents ask again: the same identifier
//! in another directory, the same pattern after an edit. So a compiled query is
//! kept, keyed by its text and flags, and the least recently used one makes room.
//!
//! Nothing kept here can go stale: a compiled query depends on its key alone.
//!
//! # What a file must hold
//!
//! A compiled query also carries the trigrams a file must hold to match
//! (`grams.rs`): all of a literal's; for a regex, those of the literals every
//! match begins with, and of those it ends with (`regex-syntax`'s extractor,
//! case variants spelt out), so that `\w+_marker` is narrowed by `_marker`.
//!
//! # Memory
//!
//! At most `cache.search_patterns` queries per shard. Each holds a program of at
//! most [`MAX_REGEX_BYTES`] and a lazy-DFA cache of at most
//! [`MAX_REGEX_CACHE_BYTES`], which the regex crate grows only as a pattern
//! meets new input; a literal's program is a few KiB.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use hashbrown::{Equivalent, HashMap};
use memchr::memmem;
use regex::bytes::{Regex, RegexBuilder};
use regex_syntax::hir::literal::{ExtractKind, Extractor};

use super::bump;
use super::grams::{gram, grams_of, Gram};

/// Compiled queries kept per shard by default (`cache.search_patterns`; 0 disables).
pub const DEFAULT_SEARCH_PATTERNS: usize = 32;
/// Bytes of a compiled regex; a larger one is refused as too complex.
pub const MAX_REGEX_BYTES: usize = 1024 * 1024;
/// Bytes of a kept regex's lazy-DFA cache (the regex crate's default).
pub const MAX_REGEX_CACHE_BYTES: usize = 2 * 1024 * 1024;
/// Most trigrams of a literal looked up in a snapshot's index; past a dozen,
/// more rule out hardly another file.
pub const MAX_QUERY_GRAMS: usize = 16;
/// Most literals a regex may begin (or end) with for them to be looked up in
/// the index; past it, they narrow nothing.
pub const MAX_QUERY_ALTERNATIVES: usize = 64;

/// What the query matches with.
enum Matcher {
    Literal(Box<memmem::Finder<'static>>),
    Regex(Regex),
}

/// Every gram of at least one of these sets: one thing a matching file holds.
pub type AnyOf = Vec<Vec<Gram>>;

/// One search_code query, compiled.
pub struct Pattern {
    matcher: Matcher,
    /// A matching file holds each of these; none: any file may match.
    needs: Vec<AnyOf>,
}

impl Pattern {
    /// Compiles `query`: a literal unless `regex`. `^` and `$` match at line ends.
    pub fn compile(
        query: &str,
        regex: bool,
        case_sensitive: bool,
    ) -> Result<Pattern, regex::Error> {
        if !regex && case_sensitive {
            return Ok(Pattern {
                matcher: Matcher::Literal(Box::new(
                    memmem::Finder::new(query.as_bytes()).into_owned(),
                )),
                needs: need(vec![literal_grams(query, true)]).into_iter().collect(),
            });
        }
        let pattern = if regex {
            query.to_string()
        } else {
            regex::escape(query)
        };
        let matcher = RegexBuilder::new(&pattern)
            .case_insensitive(!case_sensitive)
            .multi_line(true)
            .size_limit(MAX_REGEX_BYTES)
            .dfa_size_limit(MAX_REGEX_CACHE_BYTES)
            .build()?;
        let needs = if regex {
            regex_needs(query, case_sensitive)
        } else {
            need(vec![literal_grams(query, false)])
                .into_iter()
                .collect()
        };
        Ok(Pattern {
            matcher: Matcher::Regex(matcher),
            needs,
        })
    }

    /// The start of the first match at or after `from`.
    pub fn find(&self, hay: &[u8], from: usize) -> Option<usize> {
        match &self.matcher {
            Matcher::Literal(f) => f.find(&hay[from..]).map(|i| i + from),
            Matcher::Regex(r) => r.find_at(hay, from).map(|m| m.start()),
        }
    }

    /// What a file must hold to match, for `GramIndex::candidates_all`.
    pub fn needs(&self) -> &[AnyOf] {
        &self.needs
    }
}

/// Trigrams that every match of a literal holds, folded as the index folds them.
fn literal_grams(query: &str, case_sensitive: bool) -> Vec<Gram> {
    let mut grams = Vec::new();
    for w in query.as_bytes().windows(3) {
        // Case-insensitive matching folds Unicode: `k` also matches the Kelvin
        // sign, `s` the long s, and a non-ASCII letter its other cases, none of
        // them in the same bytes. Only other ASCII is matched by the same bytes
        // up to ASCII case, which is what the index folds.
        let same_bytes = |b: &u8| b.is_ascii() && !b"kKsS".contains(b);
        if !case_sensitive && !w.iter().all(same_bytes) {
            continue;
        }
        push_gram(&mut grams, gram([w[0], w[1], w[2]]));
    }
    grams
}

fn push_gram(grams: &mut Vec<Gram>, g: Gram) {
    if grams.len() < MAX_QUERY_GRAMS && !grams.contains(&g) {
        grams.push(g);
    }
}

/// What a file matching the regex `query` holds: every match begins with one
/// of its prefix literals and ends with one of its suffix literals, byte for
/// byte, case variants spelt out. The pattern is parsed with the flags
/// `Pattern::compile` gives `regex::bytes`. A side with no finite set of at
/// most [`MAX_QUERY_ALTERNATIVES`] literals is left out.
fn regex_needs(query: &str, case_sensitive: bool) -> Vec<AnyOf> {
    let parsed = regex_syntax::ParserBuilder::new()
        .utf8(false)
        .case_insensitive(!case_sensitive)
        .multi_line(true)
        .build()
        .parse(query);
    let Ok(hir) = parsed else {
        return Vec::new();
    };
    let mut needs = Vec::new();
    for kind in [ExtractKind::Prefix, ExtractKind::Suffix] {
        let seq = Extractor::new().kind(kind).extract(&hir);
        let Some(literals) = seq.literals().filter(|l| l.len() <= MAX_QUERY_ALTERNATIVES) else {
            continue;
        };
        let any_of = literals
            .iter()
            .map(|literal| {
                let mut grams = Vec::new();
                grams_of(literal.as_bytes()).for_each(|g| push_gram(&mut grams, g));
                grams
            })
            .collect();
        needs.extend(need(any_of));
    }
    needs
}

/// `any_of`, if it rules any file out. A literal too short for a trigram
/// allows every file; so does no literal at all, which the extractor gives for
/// a regex that can match nothing.
fn need(any_of: AnyOf) -> Option<AnyOf> {
    (!any_of.is_empty() && any_of.iter().all(|grams| !grams.is_empty())).then_some(any_of)
}

/// Counts, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PatternStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
}

#[derive(Hash, PartialEq, Eq)]
struct Key {
    query: Box<str>,
    regex: bool,
    case_sensitive: bool,
}

/// A lookup that borrows the query. Its derived hash equals [`Key`]'s, since
/// `Box<str>` and `&str` hash as `str`.
#[derive(Hash)]
struct KeyRef<'a> {
    query: &'a str,
    regex: bool,
    case_sensitive: bool,
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        *self.query == *key.query
            && self.regex == key.regex
            && self.case_sensitive == key.case_sensitive
    }
}

struct Kept {
    pattern: Rc<Pattern>,
    /// The clock when it was last used.
    used: u64,
}

/// A shard's compiled queries, least recently used evicted first.
pub struct Patterns {
    capacity: usize,
    kept: RefCell<HashMap<Key, Kept>>,
    clock: Cell<u64>,
    stats: Cell<PatternStats>,
}

impl Patterns {
    pub fn new(capacity: usize) -> Patterns {
        Patterns {
            capacity,
            kept: RefCell::new(HashMap::with_capacity(capacity)),
            clock: Cell::new(0),
            stats: Cell::new(PatternStats::default()),
        }
    }

    /// `query` compiled: the kept one, or a new one, kept. Errors are not kept.
    pub fn get(
        &self,
        query: &str,
        regex: bool,
        case_sensitive: bool,
    ) -> Result<Rc<Pattern>, regex::Error> {
        let now = self.clock.get() + 1;
        self.clock.set(now);
        let lookup = KeyRef {
            query,
            regex,
            case_sensitive,
        };
        if let Some(kept) = self.kept.borrow_mut().get_mut(&lookup) {
            kept.used = now;
            bump(&self.stats, |s| s.hits += 1);
            return Ok(kept.pattern.clone());
        }
        bump(&self.stats, |s| s.misses += 1);
        let pattern = Rc::new(Pattern::compile(query, regex, case_sensitive)?);
        if self.capacity == 0 {
            return Ok(pattern);
        }
        let mut kept = self.kept.borrow_mut();
        if kept.len() >= self.capacity {
            // A scan: it runs only after a compile, which costs far more. Stamps
            // are unique, so exactly one entry goes.
            if let Some(oldest) = kept.values().map(|k| k.used).min() {
                kept.retain(|_, k| k.used != oldest);
                bump(&self.stats, |s| s.evictions += 1);
            }
        }
        kept.insert(
            Key {
                query: query.into(),
                regex,
                case_sensitive,
            },
            Kept {
                pattern: pattern.clone(),
                used: now,
            },
        );
        assert!(kept.len() <= self.capacity);
        Ok(pattern)
    }

    pub fn stats(&self) -> PatternStats {
        self.stats.get()
    }

    /// Compiled queries kept now.
    pub fn len(&self) -> usize {
        self.kept.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `literal_grams` drops, for case-insensitive queries, every trigram with
    /// a byte that Unicode folding matches to other bytes. That set is `kKsS`
    /// and non-ASCII, as the regex crate folds: this checks it against the crate.
    #[test]
    fn only_k_and_s_fold_to_non_ascii() {
        let others =
            regex::Regex::new(r"(?i)^[\x00-\x4A\x4C-\x52\x54-\x6A\x6C-\x72\x74-\x7F]$").unwrap();
        let k_or_s = regex::Regex::new(r"(?i)^[kKsS]$").unwrap();
        let mut buf = [0u8; 4];
        let mut partners = Vec::new();
        for c in (0x80..=0x10FFFF).filter_map(char::from_u32) {
            let c = c.encode_utf8(&mut buf);
            assert!(!others.is_match(c), "{c:?} folds to ASCII other than kKsS");
            if k_or_s.is_match(c) {
                partners.push(c.to_string());
            }
        }
        assert_eq!(
            partners,
            ["\u{17F}", "\u{212A}"],
            "the reason k and s are left out"
        );
        assert!(literal_grams("kelvin", false) == [gram(*b"elv"), gram(*b"lvi"), gram(*b"vin")]);
        assert!(literal_grams("KELVIN", true).len() == 4);
    }

    #[test]
    fn a_regex_needs_its_prefixes_and_suffixes() {
        let needs = |q: &str| regex_needs(q, true);
        let grams = |s: &str| grams_of(s.as_bytes()).collect::<Vec<_>>();
        assert!(needs("a.b").is_empty(), "`a` and `b` are too short");
        let foo_or_bar = vec![grams("foo"), grams("bar")];
        assert_eq!(needs("foo|bar"), [foo_or_bar.clone(), foo_or_bar.clone()]);
        assert_eq!(needs("(foo|bar)+baz")[0], foo_or_bar, "prefixes");
        assert!(needs("(foo|bar)+baz")[1]
            .iter()
            .all(|g| g.ends_with(&grams("baz"))));
        assert_eq!(
            needs(r"\w+_marker"),
            [vec![grams("_marker")]],
            "suffix only"
        );
        assert_eq!(
            needs(r"needle_\w+"),
            [vec![grams("needle_")]],
            "prefix only"
        );
        assert!(needs("[a-z]+x").is_empty(), "every literal too short");
        assert!(needs("x*").is_empty(), "may match the empty string");
        assert!(needs("(").is_empty(), "does not parse");
        // Case variants are spelt out, not folded by the index.
        let folded = regex_needs("(?i)ab_cd", true);
        assert_eq!(folded.len(), 2);
        assert!(folded[0].len() > 1 && folded[0].iter().all(|g| *g == grams("ab_cd")));
        // A literal's needs are its grams; a short one needs nothing.
        assert_eq!(
            Pattern::compile("abcd", false, true).unwrap().needs(),
            [vec![grams("abcd")]]
        );
        assert!(Pattern::compile("ab", false, false)
            .unwrap()
            .needs()
            .is_empty());
    }

    #[test]
    fn kept_until_the_least_recently_used_makes_room() {
        let p = Patterns::new(2);
        let a = p.get("alpha", false, true).unwrap();
        assert!(Rc::ptr_eq(&a, &p.get("alpha", false, true).unwrap()));
        // The same text with other flags is another query.
        let a_regex = p.get("alpha", true, true).unwrap();
        assert!(!Rc::ptr_eq(&a, &a_regex));
        let stats = PatternStats {
            hits: 1,
            misses: 2,
            evictions: 0,
        };
        assert_eq!(p.stats(), stats);
        // `alpha` (literal) is used again, so the regex is the oldest.
        p.get("alpha", false, true).unwrap();
        p.get("beta", false, false).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p.stats().evictions, 1);
        assert!(Rc::ptr_eq(&a, &p.get("alpha", false, true).unwrap()));
        assert!(!Rc::ptr_eq(&a_regex, &p.get("alpha", true, true).unwrap()));
        assert_eq!(p.len(), 2);
        // A query that does not compile is an error, and is not kept.
        assert!(p.get("(", true, true).is_err());
        assert!(p.get("(", true, true).is_err());
        assert_eq!(p.len(), 2);
        assert_eq!(p.stats().misses, 6);
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let p = Patterns::new(0);
        let a = p.get("alpha", true, false).unwrap();
        assert!(!Rc::ptr_eq(&a, &p.get("alpha", true, false).unwrap()));
        assert!(p.is_empty());
        assert_eq!(
            p.stats(),
            PatternStats {
                hits: 0,
                misses: 2,
                evictions: 0
            }
        );
    }

    #[test]
    fn a_kept_pattern_finds_what_a_new_one_finds() {
        let p = Patterns::new(4);
        for (query, regex, case_sensitive) in [
            ("Foo", false, true),
            ("foo", false, false),
            (r"f\w+", true, true),
        ] {
            let hay = b"a Foo b foo";
            let fresh = Pattern::compile(query, regex, case_sensitive).unwrap();
            for _ in 0..2 {
                let kept = p.get(query, regex, case_sensitive).unwrap();
                assert_eq!(kept.find(hay, 0), fresh.find(hay, 0));
                assert_eq!(kept.find(hay, 3), fresh.find(hay, 3));
            }
        }
    }
}
