//! Inference on a request's own inputs: the texts of a real-time embedding request are embedded
//! by all-MiniLM-L6-v2 and returned with the run's `completed` report.
//!
//! [`Embedder`] is what the node calls, off the async runtime; [`CpuEmbedder`] runs the CPU
//! forward pass of [`crate::minilm`] (the same code the GPU path is checked against). The model
//! is loaded once, on first use, from [`crate::minilm::model_dir`].

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hcp_events::payload::RunOutput;

use crate::minilm::{MiniLm, DEFAULT_DIR};

/// The model every embedding request is served by.
pub const EMBEDDING_MODEL: &str = "all-MiniLM-L6-v2";

/// Whether `model` names the embedding model (bare or with its Hugging Face organisation,
/// any case).
pub fn serves(model: &str) -> bool {
    let bare = model.rsplit('/').next().unwrap_or(model);
    bare.eq_ignore_ascii_case(EMBEDDING_MODEL)
}

/// `Ok` when this worker can embed with `model`; otherwise the reason shown to the customer.
pub fn check_model(model: &str) -> Result<(), String> {
    if serves(model) {
        Ok(())
    } else {
        Err(format!(
            "model `{model}` has no inference implementation on this worker; \
             embeddings are served by {EMBEDDING_MODEL}"
        ))
    }
}

/// Computes a request's embeddings.
pub trait Embedder: Send + Sync + std::fmt::Debug + 'static {
    /// Embeds `texts` with `model`, in order, for a run on `gpu_ids`; an error is the reason
    /// shown to the customer.
    fn embed(&self, model: &str, gpu_ids: &[String], texts: &[String])
        -> Result<RunOutput, String>;
}

/// all-MiniLM-L6-v2 on the CPU.
#[derive(Debug)]
pub struct CpuEmbedder {
    dir: PathBuf,
    /// Loaded on first use; a failed load is tried again by the next request (the model may
    /// have been fetched since).
    model: Mutex<Option<Arc<MiniLm>>>,
}

impl CpuEmbedder {
    /// Loads the model from `dir` on first use.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            model: Mutex::new(None),
        }
    }

    fn model(&self) -> Result<Arc<MiniLm>, String> {
        let mut slot = self.model.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = MiniLm::load(&self.dir).map(Arc::new).map_err(|e| {
            tracing::error!(dir = %self.dir.display(), error = %e, "cannot load the embedding model");
            format!(
                "this worker cannot serve {EMBEDDING_MODEL}: {e} (expected under {DEFAULT_DIR} \
                 or $HCP_MINILM_DIR)"
            )
        })?;
        *slot = Some(m.clone());
        Ok(m)
    }
}

impl Embedder for CpuEmbedder {
    fn embed(
        &self,
        model: &str,
        _gpu_ids: &[String],
        texts: &[String],
    ) -> Result<RunOutput, String> {
        check_model(model)?;
        let m = self.model()?;
        let started = Instant::now();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let vectors = m.embed_cpu(&refs);
        Ok(RunOutput::embeddings(
            EMBEDDING_MODEL,
            &vectors,
            "cpu",
            started.elapsed().as_secs_f64() * 1000.0,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_model_is_recognised_with_or_without_its_organisation() {
        assert!(serves("all-MiniLM-L6-v2"));
        assert!(serves("sentence-transformers/all-minilm-l6-v2"));
        assert!(!serves("llama-3-70b"));
        assert!(!serves("all-MiniLM-L12-v2"));
    }

    #[test]
    fn another_model_and_a_missing_model_directory_are_refused_with_the_reason() {
        let e = CpuEmbedder::new(PathBuf::from("/nonexistent/minilm"));
        let err = e.embed("llama-3-70b", &[], &["hi".into()]).unwrap_err();
        assert!(err.contains("no inference implementation"), "{err}");
        let err = e
            .embed("all-MiniLM-L6-v2", &[], &["hi".into()])
            .unwrap_err();
        assert!(err.contains("cannot serve all-MiniLM-L6-v2"), "{err}");
        assert!(err.contains("/nonexistent/minilm"), "{err}");
    }

    #[test]
    fn embeddings_of_the_real_model_come_back_in_order_and_unit_length() {
        let e = CpuEmbedder::new(crate::minilm::tests::fetched_model_dir());
        let texts: Vec<String> = vec![
            "The GPU is busy.".into(),
            "A cat sat on the mat.".into(),
            "The graphics card is fully utilised.".into(),
        ];
        let out = e.embed("all-MiniLM-L6-v2", &[], &texts).unwrap();
        let v = out.decode_vectors().unwrap();
        assert_eq!(v.len(), 3);
        assert!(v.iter().all(|x| x.len() == crate::minilm::HIDDEN));
        for x in &v {
            let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        }
        let sim = |a: usize, b: usize| crate::minilm::cosine(&v[a], &v[b]);
        assert!(sim(0, 2) > sim(0, 1), "{} vs {}", sim(0, 2), sim(0, 1));
        let RunOutput::Embeddings { device, .. } = out;
        assert_eq!(device, "cpu");
    }
}
