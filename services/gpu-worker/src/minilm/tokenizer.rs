//! BERT uncased WordPiece tokenizer, read from `vocab.txt` (the `BertTokenizer` of
//! all-MiniLM-L6-v2: lower case, accents stripped, Chinese characters and punctuation split,
//! greedy longest-match WordPiece with `##` continuations).

use std::collections::HashMap;
use std::path::Path;

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use super::MiniLmError;

/// Words longer than this (in chars) become `[UNK]`, as in BERT.
const MAX_WORD_CHARS: usize = 100;

/// Token ids of one sentence, with `[CLS]` first and `[SEP]` last.
pub type Ids = Vec<u32>;

/// A WordPiece vocabulary.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    vocab: HashMap<String, u32>,
    cls: u32,
    sep: u32,
    unk: u32,
    /// Longest sequence, special tokens included (256 for all-MiniLM-L6-v2).
    max_len: usize,
}

impl Tokenizer {
    /// Reads `vocab.txt` (one token a line; the line number is the id).
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self, MiniLmError> {
        let text = std::fs::read_to_string(path).map_err(|e| MiniLmError::io(path, e))?;
        Self::from_vocab(&text, max_len)
    }

    /// Builds from the text of a `vocab.txt`.
    pub fn from_vocab(text: &str, max_len: usize) -> Result<Self, MiniLmError> {
        let mut vocab = HashMap::new();
        for (i, tok) in text.lines().enumerate() {
            let id = u32::try_from(i).map_err(|_| MiniLmError::Format("vocab too large".into()))?;
            vocab.entry(tok.to_owned()).or_insert(id);
        }
        let get = |t: &str| {
            vocab
                .get(t)
                .copied()
                .ok_or_else(|| MiniLmError::Format(format!("vocab has no {t}")))
        };
        Ok(Self {
            cls: get("[CLS]")?,
            sep: get("[SEP]")?,
            unk: get("[UNK]")?,
            vocab,
            max_len: max_len.max(2),
        })
    }

    /// The vocabulary size.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
    }

    /// `[CLS] pieces [SEP]`, truncated to the maximum length.
    pub fn encode(&self, text: &str) -> Ids {
        let mut ids = vec![self.cls];
        'words: for word in basic_tokenize(text) {
            for id in self.wordpiece(&word) {
                if ids.len() + 1 >= self.max_len {
                    break 'words;
                }
                ids.push(id);
            }
        }
        ids.push(self.sep);
        ids
    }

    fn wordpiece(&self, word: &str) -> Vec<u32> {
        let chars: Vec<char> = word.chars().collect();
        if chars.len() > MAX_WORD_CHARS {
            return vec![self.unk];
        }
        let mut out = Vec::new();
        let mut start = 0;
        while start < chars.len() {
            let mut end = chars.len();
            let mut found = None;
            while start < end {
                let mut piece: String = chars[start..end].iter().collect();
                if start > 0 {
                    piece.insert_str(0, "##");
                }
                if let Some(&id) = self.vocab.get(&piece) {
                    found = Some(id);
                    break;
                }
                end -= 1;
            }
            match found {
                Some(id) => out.push(id),
                None => return vec![self.unk],
            }
            start = end;
        }
        out
    }
}

/// BERT's basic tokenizer: clean, split CJK, lower case, strip accents, split punctuation.
pub fn basic_tokenize(text: &str) -> Vec<String> {
    let mut spaced = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\0' || c == '\u{fffd}' || (is_control(c) && !c.is_whitespace()) {
            continue;
        }
        if is_cjk(c) {
            spaced.push(' ');
            spaced.push(c);
            spaced.push(' ');
        } else if c.is_whitespace() {
            spaced.push(' ');
        } else {
            spaced.push(c);
        }
    }
    let mut out = Vec::new();
    for word in spaced.split(' ').filter(|w| !w.is_empty()) {
        let lowered: String = word
            .to_lowercase()
            .nfd()
            .filter(|c| !is_combining_mark(*c))
            .collect();
        let mut cur = String::new();
        for c in lowered.chars() {
            if is_punctuation(c) {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            } else {
                cur.push(c);
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    out
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_control()
}

/// ASCII punctuation (BERT counts all of it, `$` and `^` included) and the common Unicode
/// punctuation blocks.
fn is_punctuation(c: char) -> bool {
    c.is_ascii_punctuation()
        || matches!(c as u32,
            0x00A1..=0x00BF | 0x2010..=0x2027 | 0x2030..=0x205E | 0x3001..=0x3003
            | 0x3008..=0x3011 | 0x3014..=0x301F | 0xFF01..=0xFF0F | 0xFF1A..=0xFF20
            | 0xFF3B..=0xFF40 | 0xFF5B..=0xFF65)
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x4E00..=0x9FFF | 0x3400..=0x4DBF | 0x20000..=0x2A6DF | 0x2A700..=0x2B73F
        | 0x2B740..=0x2B81F | 0x2B820..=0x2CEAF | 0xF900..=0xFAFF | 0x2F800..=0x2FA1F)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn toy() -> Tokenizer {
        let vocab = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\nworld\n,\n!\nun\n##aff\n##able\ncafe\n";
        Tokenizer::from_vocab(vocab, 8).unwrap()
    }

    #[test]
    fn words_are_lower_cased_stripped_of_accents_and_split_on_punctuation() {
        assert_eq!(
            basic_tokenize("  Héllo,\tWORLD!  Café "),
            vec!["hello", ",", "world", "!", "cafe"]
        );
        assert_eq!(basic_tokenize("中文x"), vec!["中", "文", "x"]);
    }

    #[test]
    fn wordpiece_takes_the_longest_prefix_then_continuations() {
        let t = toy();
        assert_eq!(t.encode("unaffable"), vec![2, 8, 9, 10, 3]);
        assert_eq!(t.encode("Hello, world!"), vec![2, 4, 6, 5, 7, 3]);
        // A word with an unknown piece becomes one [UNK].
        assert_eq!(t.encode("unzzz hello"), vec![2, 1, 4, 3]);
    }

    #[test]
    fn long_inputs_are_truncated_keeping_the_separator() {
        let t = toy();
        let ids = t.encode("hello hello hello hello hello hello hello hello hello");
        assert_eq!(ids.len(), 8);
        assert_eq!(ids.first(), Some(&2));
        assert_eq!(ids.last(), Some(&3));
    }
}
