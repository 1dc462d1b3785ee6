//! The safetensors file: `u64` little-endian header length, a JSON header mapping names to
//! `{dtype, shape, data_offsets}`, then the tensor bytes. Only F32 tensors are kept (the
//! model's `position_ids` are I64 and unused).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::{MiniLmError, HIDDEN, INTERMEDIATE, LAYERS};

#[derive(Debug, Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [usize; 2],
}

/// One tensor in host memory, row-major.
#[derive(Debug, Clone)]
pub struct Tensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values.
    pub data: Vec<f32>,
}

/// All F32 tensors of a safetensors file, by name.
#[derive(Debug, Clone)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Reads and checks a safetensors file.
    pub fn load(path: &Path) -> Result<Self, MiniLmError> {
        let bytes = std::fs::read(path).map_err(|e| MiniLmError::io(path, e))?;
        let w = Self::parse(&bytes)?;
        w.check()?;
        Ok(w)
    }

    /// Parses safetensors bytes.
    pub fn parse(bytes: &[u8]) -> Result<Self, MiniLmError> {
        let bad = |m: &str| MiniLmError::Format(format!("safetensors: {m}"));
        let len_bytes: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| bad("shorter than its header length"))?;
        let hlen = usize::try_from(u64::from_le_bytes(len_bytes))
            .map_err(|_| bad("header length overflows"))?;
        let header = bytes
            .get(8..8usize.saturating_add(hlen))
            .ok_or_else(|| bad("truncated header"))?;
        let data = &bytes[8 + hlen..];
        let entries: HashMap<String, serde_json::Value> =
            serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
        let mut tensors = HashMap::new();
        for (name, v) in entries {
            if name == "__metadata__" {
                continue;
            }
            let e: Entry = serde_json::from_value(v).map_err(|e| bad(&format!("{name}: {e}")))?;
            if e.dtype != "F32" {
                continue;
            }
            let raw = data
                .get(e.data_offsets[0]..e.data_offsets[1])
                .ok_or_else(|| bad(&format!("{name}: data out of range")))?;
            let n: usize = e.shape.iter().product();
            if raw.len() != n * 4 {
                return Err(bad(&format!("{name}: {} bytes for {n} values", raw.len())));
            }
            let values = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            tensors.insert(
                name,
                Tensor {
                    shape: e.shape,
                    data: values,
                },
            );
        }
        Ok(Self { tensors })
    }

    /// A tensor by name (checked present by [`Weights::load`]).
    pub fn get(&self, name: &str) -> &[f32] {
        self.tensors.get(name).map_or(&[], |t| t.data.as_slice())
    }

    /// Every tensor, sorted by name (the packing order of the CUDA path).
    pub fn tensors(&self) -> Vec<(&str, &[f32])> {
        let mut v: Vec<(&str, &[f32])> = self
            .tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.data.as_slice()))
            .collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Total bytes of the weights (what a model slot holds in VRAM).
    pub fn bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.data.len() as u64 * 4).sum()
    }

    fn check(&self) -> Result<(), MiniLmError> {
        let mut want: Vec<(String, usize)> = vec![
            ("embeddings.position_embeddings.weight".into(), 512 * HIDDEN),
            ("embeddings.token_type_embeddings.weight".into(), 2 * HIDDEN),
            ("embeddings.LayerNorm.weight".into(), HIDDEN),
            ("embeddings.LayerNorm.bias".into(), HIDDEN),
        ];
        for l in 0..LAYERS {
            let p = format!("encoder.layer.{l}.");
            for (n, size) in [
                ("attention.self.query.weight", HIDDEN * HIDDEN),
                ("attention.self.query.bias", HIDDEN),
                ("attention.self.key.weight", HIDDEN * HIDDEN),
                ("attention.self.key.bias", HIDDEN),
                ("attention.self.value.weight", HIDDEN * HIDDEN),
                ("attention.self.value.bias", HIDDEN),
                ("attention.output.dense.weight", HIDDEN * HIDDEN),
                ("attention.output.dense.bias", HIDDEN),
                ("attention.output.LayerNorm.weight", HIDDEN),
                ("attention.output.LayerNorm.bias", HIDDEN),
                ("intermediate.dense.weight", INTERMEDIATE * HIDDEN),
                ("intermediate.dense.bias", INTERMEDIATE),
                ("output.dense.weight", HIDDEN * INTERMEDIATE),
                ("output.dense.bias", HIDDEN),
                ("output.LayerNorm.weight", HIDDEN),
                ("output.LayerNorm.bias", HIDDEN),
            ] {
                want.push((format!("{p}{n}"), size));
            }
        }
        for (name, size) in want {
            let got = self.get(&name).len();
            if got != size {
                return Err(MiniLmError::Format(format!(
                    "tensor {name}: {got} values, expected {size}"
                )));
            }
        }
        let words = self.get("embeddings.word_embeddings.weight").len();
        if words == 0 || !words.is_multiple_of(HIDDEN) {
            return Err(MiniLmError::Format("bad word embeddings".into()));
        }
        Ok(())
    }
}
