//! Model switching on one GPU, each phase timed:
//!
//! - **route**: find the model in the GPU's VRAM slots (resident: no load);
//! - **load**: *warm* from a pinned host copy (one DMA over PCIe; the achieved GB/s is
//!   reported beside the link maximum) or *cold* from disk (read, parse, upload; a pinned copy
//!   is then staged so the next load of this model is warm);
//! - **bind**: pin the slot for the run and tokenise the first batch;
//! - **first batch**: one forward pass.
//!
//! Evicted models' device buffers are dropped as they leave the slots (freed); [`GpuHost::clear`]
//! frees every slot and pinned copy at stop and shutdown.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaContext, PinnedHostSlice};
use hcp_events::payload::ModelSwitch;

use super::{guarded, CudaError, GpuInfo};
use crate::minilm::gpu::{DeviceWeights, GpuMiniLm, Packed};
use crate::minilm::{Tokenizer, Weights, MAX_SEQ};
use crate::vram::{budget_from_fraction, VramSlots};

/// Achieved host-to-device bandwidth of warm loads, GB/s (histogram).
pub const LOAD_GBPS: &str = "hcp_worker_model_load_gbps";
/// Bytes held by resident models per GPU (gauge, label `gpu` = ordinal: a handful per host).
pub const VRAM_USED: &str = "hcp_worker_vram_used_bytes";

/// How the model got into VRAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadKind {
    /// Already resident.
    Resident,
    /// Copied from pinned host memory.
    Warm,
    /// Read from disk.
    Cold,
}

impl LoadKind {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resident => "resident",
            Self::Warm => "warm",
            Self::Cold => "cold",
        }
    }
}

/// Timings of one switch.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchTimings {
    /// The model.
    pub model: String,
    /// Resident, warm or cold.
    pub kind: LoadKind,
    /// Slot lookup, ms.
    pub route_ms: f64,
    /// Load into VRAM, ms (0 when resident).
    pub load_ms: f64,
    /// Bytes loaded (0 when resident).
    pub bytes: u64,
    /// Achieved GB/s of the load (warm and cold).
    pub load_gbps: Option<f64>,
    /// Bind, ms.
    pub bind_ms: f64,
    /// First batch, ms.
    pub first_batch_ms: f64,
    /// Models evicted to make room.
    pub evicted: Vec<String>,
}

impl SwitchTimings {
    /// The `run.reported` switch payload (route counts towards bind: the event has no route
    /// field).
    pub fn to_model_switch(&self) -> ModelSwitch {
        ModelSwitch {
            model: self.model.clone(),
            resident: self.kind == LoadKind::Resident,
            load_ms: self.load_ms,
            bind_ms: self.route_ms + self.bind_ms,
            first_batch_ms: self.first_batch_ms,
        }
    }

    /// Records the phases in the switch histogram (seconds, real time on this backend).
    pub fn record(&self) {
        let kind = self.kind.as_str();
        for (phase, ms) in [
            ("route", self.route_ms),
            ("load", self.load_ms),
            ("bind", self.bind_ms),
            ("first_batch", self.first_batch_ms),
            (
                "total",
                self.route_ms + self.load_ms + self.bind_ms + self.first_batch_ms,
            ),
        ] {
            metrics::histogram!(crate::metrics::MODEL_SWITCH, "phase" => phase, "kind" => kind)
                .record(ms / 1000.0);
        }
        if let Some(g) = self.load_gbps.filter(|_| self.kind == LoadKind::Warm) {
            metrics::histogram!(LOAD_GBPS).record(g);
        }
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// A warm copy: packed weights in page-locked host memory.
struct Staged {
    host: PinnedHostSlice<f32>,
    index: HashMap<String, (usize, usize)>,
}

/// One GPU: its context, the forward-pass engine, VRAM slots and warm copies.
pub struct GpuHost {
    info: GpuInfo,
    ctx: Arc<CudaContext>,
    engine: GpuMiniLm,
    slots: VramSlots<DeviceWeights>,
    staged: HashMap<String, Staged>,
    sources: HashMap<String, PathBuf>,
    tokenizers: HashMap<String, Tokenizer>,
}

impl std::fmt::Debug for GpuHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuHost")
            .field("gpu", &self.info.uuid)
            .field("slots", &self.slots)
            .field("staged", &self.staged.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl GpuHost {
    /// Opens the GPU, compiles the kernels, and sets the VRAM budget to `budget_fraction` of
    /// its total memory.
    pub fn open(info: GpuInfo, budget_fraction: f64) -> Result<Self, CudaError> {
        super::probe_libraries()?;
        let ctx = guarded("create context", || CudaContext::new(info.ordinal))?;
        let engine = GpuMiniLm::new(&ctx)?;
        let budget = budget_from_fraction(info.total_bytes, budget_fraction);
        Ok(Self {
            info,
            ctx,
            engine,
            slots: VramSlots::new(budget),
            staged: HashMap::new(),
            sources: HashMap::new(),
            tokenizers: HashMap::new(),
        })
    }

    /// The GPU.
    pub fn info(&self) -> &GpuInfo {
        &self.info
    }

    /// The slots (pressure, residents).
    pub fn slots(&self) -> &VramSlots<DeviceWeights> {
        &self.slots
    }

    /// The forward-pass engine.
    pub fn engine(&self) -> &GpuMiniLm {
        &self.engine
    }

    /// Makes `model` loadable from the MiniLM files in `dir`.
    pub fn register(&mut self, model: &str, dir: &Path) -> Result<(), CudaError> {
        let tok = Tokenizer::from_file(&dir.join("vocab.txt"), MAX_SEQ)?;
        self.tokenizers.insert(model.to_owned(), tok);
        self.sources.insert(model.to_owned(), dir.to_owned());
        Ok(())
    }

    /// Switches to `model` and runs `first_batch` through it; returns the timings and the
    /// batch's embeddings. The slot stays pinned until [`GpuHost::unbind`].
    pub fn switch(
        &mut self,
        model: &str,
        first_batch: &[&str],
    ) -> Result<(SwitchTimings, Vec<Vec<f32>>), CudaError> {
        let t = Instant::now();
        let resident = self.slots.touch(model).is_some();
        let route_ms = ms(t);
        let (mut kind, mut load_ms, mut bytes, mut evicted) = (LoadKind::Resident, 0.0, 0, vec![]);
        let mut cold_copy = None;
        if !resident {
            let t = Instant::now();
            let (k, b, ev, packed) = self.load(model)?;
            load_ms = ms(t);
            (kind, bytes, evicted, cold_copy) = (k, b, ev, packed);
        }
        let load_gbps = (bytes > 0 && load_ms > 0.0).then(|| bytes as f64 / (load_ms * 1e6));
        if let Some(packed) = cold_copy {
            // Stage a pinned copy for the next load (after the load phase: not timed in it).
            self.stage(model, packed)?;
        }

        let t = Instant::now();
        self.slots.set_pinned(model, true)?;
        let tok = self
            .tokenizers
            .get(model)
            .ok_or_else(|| crate::minilm::MiniLmError::Format(format!("{model} not registered")))?;
        let ids: Vec<Vec<u32>> = first_batch.iter().map(|s| tok.encode(s)).collect();
        let bind_ms = ms(t);

        let t = Instant::now();
        let emb = self.embed_ids(model, &ids)?;
        let first_batch_ms = ms(t);
        let timings = SwitchTimings {
            model: model.to_owned(),
            kind,
            route_ms,
            load_ms,
            bytes,
            load_gbps,
            bind_ms,
            first_batch_ms,
            evicted,
        };
        timings.record();
        metrics::gauge!(VRAM_USED, "gpu" => self.info.ordinal.to_string())
            .set(self.slots.used() as f64);
        Ok((timings, emb))
    }

    /// Embeds sentences with a resident model.
    pub fn embed(&mut self, model: &str, sentences: &[&str]) -> Result<Vec<Vec<f32>>, CudaError> {
        let tok = self
            .tokenizers
            .get(model)
            .ok_or_else(|| crate::minilm::MiniLmError::Format(format!("{model} not registered")))?;
        let ids: Vec<Vec<u32>> = sentences.iter().map(|s| tok.encode(s)).collect();
        self.embed_ids(model, &ids)
    }

    /// Embeds token ids with a resident model.
    pub fn embed_ids(&mut self, model: &str, ids: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, CudaError> {
        let w = self
            .slots
            .touch(model)
            .ok_or_else(|| crate::vram::VramError::NotResident(model.to_owned()))?;
        Ok(self.engine.embed(w, ids)?)
    }

    /// The run on `model` ended: its slot may be evicted again.
    pub fn unbind(&mut self, model: &str) -> Result<(), CudaError> {
        Ok(self.slots.set_pinned(model, false)?)
    }

    /// Takes `model` out of VRAM (its pinned host copy stays, so the next load is warm).
    pub fn evict(&mut self, model: &str) -> Result<(), CudaError> {
        drop(self.slots.release(model)?);
        metrics::gauge!(VRAM_USED, "gpu" => self.info.ordinal.to_string())
            .set(self.slots.used() as f64);
        Ok(())
    }

    /// Frees every slot and warm copy (stop, shutdown).
    pub fn clear(&mut self) -> Result<(), CudaError> {
        drop(self.slots.clear());
        self.staged.clear();
        guarded("synchronize", || self.ctx.synchronize())
    }

    /// Loads `model`: warm from its pinned copy, else cold from disk (then returning the
    /// packed host weights so a pinned copy can be staged without reading the disk again).
    #[allow(clippy::type_complexity)]
    fn load(
        &mut self,
        model: &str,
    ) -> Result<(LoadKind, u64, Vec<String>, Option<Packed>), CudaError> {
        if let Some(st) = self.staged.get(model) {
            let bytes = st.host.len() as u64 * 4;
            let evicted = self.slots.make_room(model, bytes)?;
            let names = evicted.iter().map(|e| e.model.clone()).collect();
            drop(evicted);
            let stream = self.engine.stream();
            // SAFETY: the buffer is fully overwritten by the copy below before any read.
            let mut buf = unsafe { stream.alloc::<f32>(st.host.len()) }
                .map_err(|e| CudaError::Driver(e.to_string()))?;
            stream
                .memcpy_htod(&st.host, &mut buf)
                .and_then(|()| stream.synchronize())
                .map_err(|e| CudaError::Driver(e.to_string()))?;
            self.slots
                .insert(model, bytes, DeviceWeights::new(buf, st.index.clone()))?;
            return Ok((LoadKind::Warm, bytes, names, None));
        }
        let dir = self
            .sources
            .get(model)
            .ok_or_else(|| crate::minilm::MiniLmError::Format(format!("{model} not registered")))?;
        let packed = Packed::new(&Weights::load(&dir.join("model.safetensors"))?);
        let bytes = packed.bytes();
        let evicted = self.slots.make_room(model, bytes)?;
        let names = evicted.iter().map(|e| e.model.clone()).collect();
        drop(evicted);
        let w = self.engine.upload(&packed)?;
        self.slots.insert(model, bytes, w)?;
        Ok((LoadKind::Cold, bytes, names, Some(packed)))
    }

    fn stage(&mut self, model: &str, packed: Packed) -> Result<(), CudaError> {
        if self.staged.contains_key(model) {
            return Ok(());
        }
        // SAFETY: every element is written by copy_from_slice before the slice is read.
        let mut host = unsafe { self.ctx.alloc_pinned::<f32>(packed.data.len()) }
            .map_err(|e| CudaError::Driver(e.to_string()))?;
        host.as_mut_slice()
            .map_err(|e| CudaError::Driver(e.to_string()))?
            .copy_from_slice(&packed.data);
        self.staged.insert(
            model.to_owned(),
            Staged {
                host,
                index: packed.index,
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_time_counts_towards_bind_in_the_reported_switch() {
        let t = SwitchTimings {
            model: "m".into(),
            kind: LoadKind::Warm,
            route_ms: 0.5,
            load_ms: 12.0,
            bytes: 90_000_000,
            load_gbps: Some(7.5),
            bind_ms: 1.5,
            first_batch_ms: 4.0,
            evicted: vec![],
        };
        assert_eq!(
            t.to_model_switch(),
            ModelSwitch {
                model: "m".into(),
                resident: false,
                load_ms: 12.0,
                bind_ms: 2.0,
                first_batch_ms: 4.0,
            }
        );
    }
}
