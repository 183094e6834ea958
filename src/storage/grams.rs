//! A search snapshot's trigram index: which of its files can hold a literal.
//!
//! # Why
//!
//! A snapshot spares a search every syscall (`watch.rs`), but the search still
//! reads every byte of the tree: 4.3 MB for the benchmark's 2,000 files, ~0.4 ms
//! of the shard per call, nearly all of it `memmem` finding nothing. An agent's
//! queries are mostly identifiers, and a query of n bytes holds n − 2 trigrams
//! (runs of three bytes); a file that lacks any one of them cannot match.
//!
//! # How
//!
//! Each trigram, with ASCII letters folded to lower case, hashes to one of
//! `2^rows_log2` rows. A row is a bitmap over the snapshot's files: bit i is set
//! when file i holds a trigram that hashes to that row. A query's candidates are
//! the AND of its trigrams' rows: a few hundred word operations, however large the
//! tree. The layout is a Bloom filter per file, stored transposed so that a query
//! reads whole rows in order instead of one bit per file.
//!
//! # Why an answer is never different
//!
//! The index only rules files out, and only on evidence: a collision sets bits,
//! it never clears one, so a file holding the query is always a candidate. Every
//! candidate is then searched byte by byte, as before. Which trigrams of a query
//! are safe to use depends on how it matches (case, Unicode folding);
//! `patterns.rs` picks them as it compiles the query. The index is built from the
//! snapshot's own contents, so it is exactly as fresh as the snapshot.

use std::rc::Rc;

use super::file_cache::CachedFile;

/// Fewest rows (as a power of two) an index has.
pub const MIN_ROWS_LOG2: u32 = 9;
/// Most rows (as a power of two) an index has: 16,384 rows cost 2 KiB per file.
pub const MAX_ROWS_LOG2: u32 = 14;
/// A file longer than this many bytes per row would set nearly every row, so it
/// is made a candidate for every query without being hashed.
pub const SATURATED_BYTES_PER_ROW: usize = 16;
/// Files hashed between yields to the shard while an index is built.
const BUILD_BATCH: usize = 32;

/// Three bytes of a query or a file, ASCII letters folded to lower case.
pub type Gram = [u8; 3];

/// The gram of three bytes as they stand in a file or a case-sensitive query.
pub fn gram(bytes: [u8; 3]) -> Gram {
    bytes.map(|b| b.to_ascii_lowercase())
}

/// Every gram of `bytes`, in order, repeats included.
pub fn grams_of(bytes: &[u8]) -> impl Iterator<Item = Gram> + '_ {
    bytes.windows(3).map(|w| gram([w[0], w[1], w[2]]))
}

/// What the search makes of a snapshot's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Text,
    Binary,
    Unreadable,
}

/// The files of one snapshot, in its order, by the trigrams they hold.
pub struct GramIndex {
    rows_log2: u32,
    /// 64-bit words per row: one bit per file.
    words: usize,
    /// `2^rows_log2` rows of `words` words.
    rows: Box<[u64]>,
    kinds: Box<[Kind]>,
}

/// The files a query can match: a bitmap, or every file when no gram was given.
pub struct Candidates(Option<Box<[u64]>>);

impl Candidates {
    pub fn contains(&self, file: usize) -> bool {
        self.0
            .as_ref()
            .is_none_or(|bits| bits[file / 64] & (1 << (file % 64)) != 0)
    }

    /// The files to look at, in order: the candidates among `0..total`, or all
    /// of them when `every` (or when no gram was given).
    pub fn files(&self, total: usize, every: bool) -> impl Iterator<Item = usize> + '_ {
        let bits = self.0.as_deref().filter(|_| !every);
        let mut next = 0;
        std::iter::from_fn(move || {
            let Some(bits) = bits else {
                next += 1;
                return (next <= total).then_some(next - 1);
            };
            while next < total {
                let (word, bit) = (next / 64, next % 64);
                let rest = bits[word] >> bit;
                if rest != 0 {
                    let file = next + rest.trailing_zeros() as usize;
                    next = file + 1;
                    return (file < total).then_some(file);
                }
                next = (word + 1) * 64;
            }
            None
        })
    }

    /// How many files are candidates (`None`: all).
    pub fn count(&self) -> Option<usize> {
        self.0
            .as_ref()
            .map(|bits| bits.iter().map(|w| w.count_ones() as usize).sum())
    }
}

impl GramIndex {
    /// Indexes `contents` (a snapshot's, in its order), yielding to the shard
    /// every [`BUILD_BATCH`] files: hashing 4 MB takes milliseconds. `None`,
    /// before anything large is allocated, if the index would take more than
    /// `max_bytes`.
    pub async fn build(contents: &[Option<Rc<CachedFile>>], max_bytes: usize) -> Option<GramIndex> {
        let kinds: Box<[Kind]> = contents
            .iter()
            .map(|c| match c {
                None => Kind::Unreadable,
                Some(f) if f.is_binary() => Kind::Binary,
                Some(_) => Kind::Text,
            })
            .collect();
        let (mut text_bytes, mut text_files) = (0, 0);
        for (content, kind) in contents.iter().zip(&kinds) {
            if let (Some(f), Kind::Text) = (content, kind) {
                text_bytes += f.bytes.len();
                text_files += 1;
            }
        }
        let rows_log2 = rows_for(text_bytes, text_files);
        let words = contents.len().div_ceil(64);
        if (words << rows_log2) * 8 + kinds.len() > max_bytes {
            return None;
        }
        let mut index = GramIndex {
            rows_log2,
            words,
            rows: vec![0; words << rows_log2].into_boxed_slice(),
            kinds,
        };
        let saturated = SATURATED_BYTES_PER_ROW << rows_log2;
        let mut seen = vec![0u64; (1usize << rows_log2).div_ceil(64)];
        for (file, content) in contents.iter().enumerate() {
            if file % BUILD_BATCH == BUILD_BATCH - 1 {
                glommio::yield_if_needed().await;
            }
            let Some(f) = content.as_ref().filter(|_| index.kinds[file] == Kind::Text) else {
                continue;
            };
            if f.bytes.len() > saturated {
                seen.fill(u64::MAX);
            } else {
                seen.fill(0);
                index.hash_into(&f.bytes, &mut seen);
            }
            index.set_column(file, &seen);
        }
        debug_assert!(index.bytes() <= max_bytes);
        Some(index)
    }

    fn row_of(&self, g: Gram) -> usize {
        let key = u32::from(g[0]) | u32::from(g[1]) << 8 | u32::from(g[2]) << 16;
        // Fibonacci hashing: the top bits of a multiply spread nearby keys apart.
        (key.wrapping_mul(0x9E37_79B1) >> (32 - self.rows_log2)) as usize
    }

    /// Sets in `seen` the row of every trigram of `bytes`.
    fn hash_into(&self, bytes: &[u8], seen: &mut [u64]) {
        for g in grams_of(bytes) {
            let r = self.row_of(g);
            seen[r / 64] |= 1 << (r % 64);
        }
    }

    fn set_column(&mut self, file: usize, seen: &[u64]) {
        let (word, bit) = (file / 64, 1u64 << (file % 64));
        for (i, &w) in seen.iter().enumerate() {
            let mut w = w;
            while w != 0 {
                let r = i * 64 + w.trailing_zeros() as usize;
                w &= w - 1;
                self.rows[r * self.words + word] |= bit;
            }
        }
    }

    /// The files that hold every one of `grams` (or one colliding with it).
    pub fn candidates(&self, grams: &[Gram]) -> Candidates {
        Candidates(self.holding_all(grams))
    }

    /// The files that hold every gram of at least one of `alternatives`; every
    /// file when there is none, or one is empty.
    pub fn candidates_any(&self, alternatives: &[Vec<Gram>]) -> Candidates {
        let mut each = alternatives.iter().map(|grams| self.holding_all(grams));
        // A literal query has one alternative: its bitmap is the answer as it is.
        let Some(Some(mut any)) = each.next() else {
            return Candidates(None);
        };
        for bits in each {
            let Some(bits) = bits else {
                return Candidates(None);
            };
            for (a, b) in any.iter_mut().zip(bits.iter()) {
                *a |= b;
            }
        }
        Candidates(Some(any))
    }

    /// The files that hold each of `needs` (`patterns::Pattern::needs`); every
    /// file when there is none.
    pub fn candidates_all(&self, needs: &[Vec<Vec<Gram>>]) -> Candidates {
        let mut each = needs.iter().map(|any_of| self.candidates_any(any_of).0);
        let Some(mut all) = each.next().flatten() else {
            return Candidates(None);
        };
        for bits in each.flatten() {
            for (a, b) in all.iter_mut().zip(bits.iter()) {
                *a &= b;
            }
        }
        Candidates(Some(all))
    }

    /// The AND of the rows of `grams`; `None` (no constraint) for no gram.
    fn holding_all(&self, grams: &[Gram]) -> Option<Box<[u64]>> {
        let row = |g: Gram| {
            let start = self.row_of(g) * self.words;
            &self.rows[start..start + self.words]
        };
        let (&first, rest) = grams.split_first()?;
        let mut bits: Box<[u64]> = row(first).into();
        for &g in rest {
            for (b, w) in bits.iter_mut().zip(row(g)) {
                *b &= w;
            }
        }
        Some(bits)
    }

    pub fn kind(&self, file: usize) -> Kind {
        self.kinds[file]
    }

    /// The kinds of the files in `files`, in order.
    pub fn kinds(&self, files: std::ops::Range<usize>) -> &[Kind] {
        &self.kinds[files]
    }

    /// Memory the index holds, which its snapshot counts as its own.
    pub fn bytes(&self) -> usize {
        self.rows.len() * 8 + self.kinds.len()
    }
}

/// About one row per byte of the average text file: a file then sets a fifth
/// to a third of the rows, and a query of a dozen trigrams lets through about
/// one file in 10^5 that does not hold it.
fn rows_for(text_bytes: usize, text_files: usize) -> u32 {
    let average = text_bytes / text_files.max(1);
    average.max(1).ilog2().clamp(MIN_ROWS_LOG2, MAX_ROWS_LOG2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::common::testing::run;

    fn files(texts: &[&[u8]]) -> Vec<Option<Rc<CachedFile>>> {
        texts
            .iter()
            .map(|t| Some(Rc::new(CachedFile::for_test(t))))
            .collect()
    }

    fn grams(q: &[u8]) -> Vec<Gram> {
        grams_of(q).collect()
    }

    #[test]
    fn a_file_holding_the_query_is_always_a_candidate() {
        // Many files, so that rows collide: none may hide a holder.
        let bodies: Vec<Vec<u8>> = (0..300)
            .map(|i| format!("fn f{i}() {{ let v{i} = {}; }}\n", i * 7919).into_bytes())
            .collect();
        let mut contents = files(&bodies.iter().map(Vec::as_slice).collect::<Vec<_>>());
        contents.push(None);
        contents.push(Some(Rc::new(CachedFile::for_test(b"v1 = \0binary"))));
        let index = run(GramIndex::build(&contents, usize::MAX)).unwrap();
        for q in ["f17()", "V123 =", "let v2", "= 7919;", "() {"] {
            let c = index.candidates(&grams(q.as_bytes()));
            for (i, b) in bodies.iter().enumerate() {
                let holds = b
                    .to_ascii_lowercase()
                    .windows(q.len())
                    .any(|w| w == q.to_ascii_lowercase().as_bytes());
                assert!(!holds || c.contains(i), "{q:?} in file {i}");
            }
            assert!(
                !c.contains(300) && !c.contains(301),
                "unreadable and binary"
            );
        }
        assert_eq!(index.kind(300), Kind::Unreadable);
        assert_eq!(index.kind(301), Kind::Binary);
        assert_eq!(index.kind(0), Kind::Text);
    }

    #[test]
    fn a_rare_identifier_rules_out_the_rest() {
        let mut bodies: Vec<Vec<u8>> = (0..500)
            .map(|i| format!("pub fn helper_{i}(x: u32) -> u32 {{ x + {i} }}\n").into_bytes())
            .collect();
        bodies[123].extend_from_slice(b"// needle_marker here\n");
        let contents = files(&bodies.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let index = run(GramIndex::build(&contents, usize::MAX)).unwrap();
        let c = index.candidates(&grams(b"needle_marker"));
        assert!(c.contains(123));
        assert!(c.count().unwrap() < 5, "{:?} candidates", c.count());
        assert_eq!(index.candidates(&[]).count(), None, "no gram: every file");
        let either = index.candidates_any(&[grams(b"needle_marker"), grams(b"helper_7(")]);
        assert!(either.contains(123) && either.contains(7) && either.count().unwrap() < 10);
        assert_eq!(index.candidates_any(&[]).count(), None);
        assert_eq!(
            index.candidates_any(&[grams(b"needle"), vec![]]).count(),
            None
        );
    }

    #[test]
    fn files_lists_the_candidates_in_order() {
        let bodies: Vec<Vec<u8>> = (0..200)
            .map(|i| {
                if i % 7 == 3 {
                    b"zebra".to_vec()
                } else {
                    b"horse".to_vec()
                }
            })
            .collect();
        let contents = files(&bodies.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let index = run(GramIndex::build(&contents, usize::MAX)).unwrap();
        let c = index.candidates(&grams(b"zebra"));
        let listed: Vec<usize> = c.files(200, false).collect();
        let expected: Vec<usize> = (0..200).filter(|i| c.contains(*i)).collect();
        assert_eq!(listed, expected);
        assert!(listed.iter().all(|i| i % 7 == 3) && listed.len() == 29);
        assert_eq!(c.files(200, true).count(), 200, "every file");
        assert_eq!(
            index.candidates(&[]).files(5, false).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(
            index.candidates(&grams(b"qqq")).files(200, false).count(),
            0
        );
    }

    #[test]
    fn a_file_too_long_to_hash_matches_everything() {
        // Small files keep the rows at their fewest, so the long one is past
        // the bound.
        let long = vec![b'a'; (SATURATED_BYTES_PER_ROW << MIN_ROWS_LOG2) + 1];
        let mut texts: Vec<&[u8]> = vec![b"xyz"; 100];
        texts.push(&long);
        let index = run(GramIndex::build(&files(&texts), usize::MAX)).unwrap();
        assert_eq!(index.rows_log2, MIN_ROWS_LOG2);
        let c = index.candidates(&grams(b"qqq"));
        assert!(!c.contains(0) && c.contains(100));
    }

    #[test]
    fn an_index_past_its_budget_is_not_built() {
        let contents = files(&[&b"abc"[..]; 100]);
        let index = run(GramIndex::build(&contents, usize::MAX)).unwrap();
        let bytes = index.bytes();
        assert!(run(GramIndex::build(&contents, bytes)).is_some());
        assert!(run(GramIndex::build(&contents, bytes - 1)).is_none());
    }

    #[test]
    fn rows_follow_the_average_text_file() {
        assert_eq!(rows_for(0, 0), MIN_ROWS_LOG2);
        assert_eq!(rows_for(2000 * 2174, 2000), 11);
        assert_eq!(rows_for(usize::MAX / 2, 1), MAX_ROWS_LOG2);
    }
}
