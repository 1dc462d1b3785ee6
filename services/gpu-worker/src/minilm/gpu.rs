//! The MiniLM forward pass on CUDA: every linear layer and both attention products are cuBLAS
//! SGEMMs (row-major tensors, computed as column-major transposes), and the element-wise steps
//! are NVRTC kernels compiled at start-up (embedding lookup, bias + GELU, bias + residual,
//! layer norm, masked softmax, masked mean pooling with L2 normalisation). Sentences are padded
//! to the batch's longest; the mask keeps padding out of attention and pooling, so the result
//! matches [`super::cpu`] to float tolerance.
//!
//! `unsafe` here is FFI only: kernel launches (argument types must match the kernel signature)
//! and cuBLAS calls (dimensions must match the buffers); each block says why it holds.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, CudaView, LaunchConfig, PushKernelArg,
};

use super::{Weights, HEADS, HEAD_DIM, HIDDEN, INTERMEDIATE, LAYERS, LN_EPS};

/// Why a GPU step failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// A CUDA driver call failed.
    #[error("CUDA driver: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// A cuBLAS call failed.
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    /// NVRTC could not compile the kernels.
    #[error("NVRTC: {0}")]
    Compile(String),
    /// The weights lack a tensor (a bug: they are checked on load).
    #[error("weights have no tensor {0}")]
    MissingTensor(String),
    /// A batch the kernels cannot take.
    #[error("invalid batch: {0}")]
    Batch(String),
}

/// The NVRTC source of the element-wise kernels.
pub const KERNELS: &str = r#"
__device__ float block_sum(float v, float* sh) {
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}
__device__ float block_max(float v, float* sh) {
    int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] = fmaxf(sh[t], sh[t + s]);
        __syncthreads();
    }
    float r = sh[0];
    __syncthreads();
    return r;
}
extern "C" __global__ void embed_tokens(const unsigned* ids, const float* word, const float* pos,
        const float* typ, float* out, int len, int hidden, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int row = i / hidden, h = i % hidden, t = row % len;
    out[i] = word[(size_t)ids[row] * hidden + h] + pos[t * hidden + h] + typ[h];
}
extern "C" __global__ void add_bias(float* x, const float* b, int n, int cols) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += b[i % cols];
}
extern "C" __global__ void add_bias_gelu(float* x, const float* b, int n, int cols) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = x[i] + b[i % cols];
        x[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}
extern "C" __global__ void add_bias_residual(float* x, const float* y, const float* b, int n, int cols) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i] + b[i % cols];
}
extern "C" __global__ void layer_norm(float* x, const float* g, const float* b, int cols, float eps) {
    __shared__ float sh[128];
    float* r = x + (size_t)blockIdx.x * cols;
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += r[c];
    float mean = block_sum(s, sh) / cols;
    float v = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) { float d = r[c] - mean; v += d * d; }
    float inv = rsqrtf(block_sum(v, sh) / cols + eps);
    for (int c = threadIdx.x; c < cols; c += blockDim.x) r[c] = (r[c] - mean) * inv * g[c] + b[c];
}
extern "C" __global__ void softmax_mask(float* s, const float* mask, int heads, int len) {
    __shared__ float sh[128];
    int row = blockIdx.x;
    int batch = row / (heads * len);
    float* r = s + (size_t)row * len;
    const float* m = mask + (size_t)batch * len;
    float mx = -3.0e38f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) if (m[j] > 0.0f) mx = fmaxf(mx, r[j]);
    mx = block_max(mx, sh);
    float sum = 0.0f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        float e = m[j] > 0.0f ? __expf(r[j] - mx) : 0.0f;
        r[j] = e;
        sum += e;
    }
    sum = block_sum(sum, sh);
    for (int j = threadIdx.x; j < len; j += blockDim.x) r[j] /= sum;
}
extern "C" __global__ void mean_pool_normalise(const float* x, const float* mask, float* out,
        int len, int hidden) {
    __shared__ float sh[512];
    int b = blockIdx.x, h = threadIdx.x;
    float acc = 0.0f, cnt = 0.0f;
    if (h < hidden) {
        for (int t = 0; t < len; t++) {
            float m = mask[b * len + t];
            acc += m * x[((size_t)b * len + t) * hidden + h];
            cnt += m;
        }
    }
    float mean = h < hidden ? acc / fmaxf(cnt, 1e-9f) : 0.0f;
    float norm = sqrtf(block_sum(mean * mean, sh));
    if (h < hidden) out[b * hidden + h] = mean / fmaxf(norm, 1e-12f);
}
"#;

/// The compiled kernels.
#[derive(Debug)]
struct Kernels {
    embed_tokens: CudaFunction,
    add_bias: CudaFunction,
    add_bias_gelu: CudaFunction,
    add_bias_residual: CudaFunction,
    layer_norm: CudaFunction,
    softmax_mask: CudaFunction,
    mean_pool_normalise: CudaFunction,
}

/// Weights packed into one contiguous host vector (the layout of pinned copies and device
/// slots), with each tensor's offset and length.
#[derive(Debug, Clone)]
pub struct Packed {
    /// All values, tensors in name order.
    pub data: Vec<f32>,
    /// Name -> (offset, length).
    pub index: HashMap<String, (usize, usize)>,
}

impl Packed {
    /// Packs host weights.
    pub fn new(w: &Weights) -> Self {
        let mut data = Vec::new();
        let mut index = HashMap::new();
        for (name, t) in w.tensors() {
            index.insert(name.to_owned(), (data.len(), t.len()));
            data.extend_from_slice(t);
        }
        Self { data, index }
    }

    /// Bytes.
    pub fn bytes(&self) -> u64 {
        self.data.len() as u64 * 4
    }
}

/// Weights resident on one GPU: one device allocation (dropping it frees the slot).
#[derive(Debug)]
pub struct DeviceWeights {
    buf: CudaSlice<f32>,
    index: HashMap<String, (usize, usize)>,
}

impl DeviceWeights {
    /// Wraps an uploaded packed buffer.
    pub fn new(buf: CudaSlice<f32>, index: HashMap<String, (usize, usize)>) -> Self {
        Self { buf, index }
    }

    /// Bytes on the device.
    pub fn bytes(&self) -> u64 {
        self.buf.len() as u64 * 4
    }

    fn view(&self, name: &str) -> Result<CudaView<'_, f32>, GpuError> {
        let &(off, len) = self
            .index
            .get(name)
            .ok_or_else(|| GpuError::MissingTensor(name.to_owned()))?;
        Ok(self.buf.slice(off..off + len))
    }
}

/// One GPU's stream, cuBLAS handle and kernels: runs the forward pass over resident weights.
#[derive(Debug)]
pub struct GpuMiniLm {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    k: Kernels,
}

fn grid(n: usize) -> LaunchConfig {
    // 256 threads a block; n is at most B * L * INTERMEDIATE, far below u32::MAX blocks.
    let blocks = u32::try_from(n.div_ceil(256)).unwrap_or(u32::MAX);
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn rows(n: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (u32::try_from(n).unwrap_or(u32::MAX), 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn int(v: usize) -> Result<i32, GpuError> {
    i32::try_from(v).map_err(|_| GpuError::Batch(format!("{v} does not fit a kernel int")))
}

/// cuBLAS (column-major) config of the row-major `y[rows, out] = x[rows, inp] w[out, inp]^T`:
/// `y^T = op_T(w) x^T`, with A = the weights and B = the input.
pub fn linear_cfg(rows: usize, inp: usize, out: usize) -> Result<GemmConfig<f32>, GpuError> {
    Ok(GemmConfig {
        transa: CUBLAS_OP_T,
        transb: CUBLAS_OP_N,
        m: int(out)?,
        n: int(rows)?,
        k: int(inp)?,
        alpha: 1.0,
        lda: int(inp)?,
        ldb: int(inp)?,
        beta: 0.0,
        ldc: int(out)?,
    })
}

/// Per sentence, batched over heads: `S_h[len_q, len_k] = scale * Q_h K_h^T`, as the
/// column-major `S_h^T = op_T(K_h) Q_h` with A = K and B = Q (both `[len, HIDDEN]` row-major,
/// head h at column `h * HEAD_DIM`), scores stored `[HEADS, len, len]`.
pub fn scores_cfg(len: usize, scale: f32) -> Result<StridedBatchedConfig<f32>, GpuError> {
    let (l, hd, h) = (int(len)?, int(HEAD_DIM)?, int(HIDDEN)?);
    Ok(StridedBatchedConfig {
        gemm: GemmConfig {
            transa: CUBLAS_OP_T,
            transb: CUBLAS_OP_N,
            m: l,
            n: l,
            k: hd,
            alpha: scale,
            lda: h,
            ldb: h,
            beta: 0.0,
            ldc: l,
        },
        batch_size: int(HEADS)?,
        stride_a: i64::from(hd),
        stride_b: i64::from(hd),
        stride_c: i64::from(l) * i64::from(l),
    })
}

/// Per sentence, batched over heads: `ctx_h[len_q, HEAD_DIM] = P_h V_h`, as the column-major
/// `ctx_h^T = V_h^T P_h^T` with A = V and B = the softmaxed scores; ctx has Q's layout.
pub fn context_cfg(len: usize) -> Result<StridedBatchedConfig<f32>, GpuError> {
    let (l, hd, h) = (int(len)?, int(HEAD_DIM)?, int(HIDDEN)?);
    Ok(StridedBatchedConfig {
        gemm: GemmConfig {
            transa: CUBLAS_OP_N,
            transb: CUBLAS_OP_N,
            m: hd,
            n: l,
            k: l,
            alpha: 1.0,
            lda: h,
            ldb: l,
            beta: 0.0,
            ldc: h,
        },
        batch_size: int(HEADS)?,
        stride_a: i64::from(hd),
        stride_b: i64::from(l) * i64::from(l),
        stride_c: i64::from(hd),
    })
}

impl GpuMiniLm {
    /// Compiles the kernels for `ctx` and creates a stream and a cuBLAS handle.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Self, GpuError> {
        let ptx =
            cudarc::nvrtc::compile_ptx(KERNELS).map_err(|e| GpuError::Compile(e.to_string()))?;
        let module = ctx.load_module(ptx)?;
        let f = |n: &str| module.load_function(n);
        let k = Kernels {
            embed_tokens: f("embed_tokens")?,
            add_bias: f("add_bias")?,
            add_bias_gelu: f("add_bias_gelu")?,
            add_bias_residual: f("add_bias_residual")?,
            layer_norm: f("layer_norm")?,
            softmax_mask: f("softmax_mask")?,
            mean_pool_normalise: f("mean_pool_normalise")?,
        };
        let stream = ctx.new_stream()?;
        let blas = CudaBlas::new(stream.clone())?;
        Ok(Self { stream, blas, k })
    }

    /// The stream every upload and kernel of this GPU goes on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Uploads packed weights from pageable host memory (the cold path's last step).
    pub fn upload(&self, p: &Packed) -> Result<DeviceWeights, GpuError> {
        let buf = self.stream.clone_htod(&p.data)?;
        self.stream.synchronize()?;
        Ok(DeviceWeights::new(buf, p.index.clone()))
    }

    /// `y[rows, out] = x[rows, inp] * w[out, inp]^T` (no bias).
    fn linear(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaView<'_, f32>,
        y: &mut CudaSlice<f32>,
        rows: usize,
        inp: usize,
        out: usize,
    ) -> Result<(), GpuError> {
        let cfg = linear_cfg(rows, inp, out)?;
        // SAFETY: w holds out*inp values, x rows*inp, y rows*out (allocated by the caller with
        // those sizes), matching m, n, k and the leading dimensions above.
        unsafe { self.blas.gemm(cfg, w, x, y) }?;
        Ok(())
    }

    fn elementwise(
        &self,
        f: &CudaFunction,
        x: &mut CudaSlice<f32>,
        y: Option<&CudaSlice<f32>>,
        b: &CudaView<'_, f32>,
        cols: usize,
    ) -> Result<(), GpuError> {
        let n = x.len();
        let (ni, ci) = (int(n)?, int(cols)?);
        let mut l = self.stream.launch_builder(f);
        l.arg(x);
        if let Some(y) = y {
            l.arg(y);
        }
        l.arg(b).arg(&ni).arg(&ci);
        // SAFETY: the argument list matches add_bias / add_bias_gelu (x, b, n, cols) or
        // add_bias_residual (x, y, b, n, cols); x and y hold n values, b holds cols.
        unsafe { l.launch(grid(n)) }?;
        Ok(())
    }

    fn layer_norm(
        &self,
        x: &mut CudaSlice<f32>,
        g: &CudaView<'_, f32>,
        b: &CudaView<'_, f32>,
    ) -> Result<(), GpuError> {
        let n_rows = x.len() / HIDDEN;
        let cols = int(HIDDEN)?;
        let mut l = self.stream.launch_builder(&self.k.layer_norm);
        l.arg(x).arg(g).arg(b).arg(&cols).arg(&LN_EPS);
        // SAFETY: one 128-thread block per row of HIDDEN values (the kernel's shared array is
        // 128 floats); g and b hold HIDDEN values.
        unsafe { l.launch(rows(n_rows, 128)) }?;
        Ok(())
    }

    /// Embeds a batch of tokenised sentences (each `[CLS] ... [SEP]`), L2-normalised.
    pub fn embed(&self, w: &DeviceWeights, batch: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, GpuError> {
        let b = batch.len();
        let len = batch.iter().map(Vec::len).max().unwrap_or(0);
        if b == 0 || len == 0 {
            return Ok(Vec::new());
        }
        if len > 512 {
            return Err(GpuError::Batch(format!(
                "{len} tokens exceeds 512 positions"
            )));
        }
        let vocab = w.view("embeddings.word_embeddings.weight")?.len() / HIDDEN;
        let mut ids = vec![0u32; b * len];
        let mut mask = vec![0f32; b * len];
        for (i, s) in batch.iter().enumerate() {
            for (t, &id) in s.iter().enumerate() {
                if id as usize >= vocab {
                    return Err(GpuError::Batch(format!(
                        "token id {id} outside the vocabulary"
                    )));
                }
                ids[i * len + t] = id;
                mask[i * len + t] = 1.0;
            }
        }
        let st = &self.stream;
        let ids_d = st.clone_htod(&ids)?;
        let mask_d = st.clone_htod(&mask)?;
        let tokens = b * len;
        let mut x = st.alloc_zeros::<f32>(tokens * HIDDEN)?;
        {
            let (word, pos, typ) = (
                w.view("embeddings.word_embeddings.weight")?,
                w.view("embeddings.position_embeddings.weight")?,
                w.view("embeddings.token_type_embeddings.weight")?,
            );
            let (li, hi, ni) = (int(len)?, int(HIDDEN)?, int(tokens * HIDDEN)?);
            let mut l = st.launch_builder(&self.k.embed_tokens);
            l.arg(&ids_d).arg(&word).arg(&pos).arg(&typ).arg(&mut x);
            l.arg(&li).arg(&hi).arg(&ni);
            // SAFETY: ids are checked below the vocabulary size, positions below 512, and x
            // holds tokens * HIDDEN values; arguments match embed_tokens.
            unsafe { l.launch(grid(tokens * HIDDEN)) }?;
        }
        self.layer_norm(
            &mut x,
            &w.view("embeddings.LayerNorm.weight")?,
            &w.view("embeddings.LayerNorm.bias")?,
        )?;
        let mut q = st.alloc_zeros::<f32>(tokens * HIDDEN)?;
        let mut k = st.alloc_zeros::<f32>(tokens * HIDDEN)?;
        let mut v = st.alloc_zeros::<f32>(tokens * HIDDEN)?;
        let mut ctx = st.alloc_zeros::<f32>(tokens * HIDDEN)?;
        let mut tmp = st.alloc_zeros::<f32>(tokens * HIDDEN)?;
        let mut inter = st.alloc_zeros::<f32>(tokens * INTERMEDIATE)?;
        let mut scores = st.alloc_zeros::<f32>(b * HEADS * len * len)?;
        let scale = 1.0 / (HEAD_DIM as f32).sqrt();
        for layer in 0..LAYERS {
            let p = |s: &str| format!("encoder.layer.{layer}.{s}");
            for (name, out) in [
                ("attention.self.query", &mut q),
                ("attention.self.key", &mut k),
                ("attention.self.value", &mut v),
            ] {
                self.linear(
                    &x,
                    &w.view(&p(&format!("{name}.weight")))?,
                    out,
                    tokens,
                    HIDDEN,
                    HIDDEN,
                )?;
                self.elementwise(
                    &self.k.add_bias,
                    out,
                    None,
                    &w.view(&p(&format!("{name}.bias")))?,
                    HIDDEN,
                )?;
            }
            self.attention(&q, &k, &v, &mut scores, &mut ctx, &mask_d, b, len, scale)?;
            self.linear(
                &ctx,
                &w.view(&p("attention.output.dense.weight"))?,
                &mut tmp,
                tokens,
                HIDDEN,
                HIDDEN,
            )?;
            self.elementwise(
                &self.k.add_bias_residual,
                &mut x,
                Some(&tmp),
                &w.view(&p("attention.output.dense.bias"))?,
                HIDDEN,
            )?;
            self.layer_norm(
                &mut x,
                &w.view(&p("attention.output.LayerNorm.weight"))?,
                &w.view(&p("attention.output.LayerNorm.bias"))?,
            )?;
            self.linear(
                &x,
                &w.view(&p("intermediate.dense.weight"))?,
                &mut inter,
                tokens,
                HIDDEN,
                INTERMEDIATE,
            )?;
            self.elementwise(
                &self.k.add_bias_gelu,
                &mut inter,
                None,
                &w.view(&p("intermediate.dense.bias"))?,
                INTERMEDIATE,
            )?;
            self.linear(
                &inter,
                &w.view(&p("output.dense.weight"))?,
                &mut tmp,
                tokens,
                INTERMEDIATE,
                HIDDEN,
            )?;
            self.elementwise(
                &self.k.add_bias_residual,
                &mut x,
                Some(&tmp),
                &w.view(&p("output.dense.bias"))?,
                HIDDEN,
            )?;
            self.layer_norm(
                &mut x,
                &w.view(&p("output.LayerNorm.weight"))?,
                &w.view(&p("output.LayerNorm.bias"))?,
            )?;
        }
        let mut out = st.alloc_zeros::<f32>(b * HIDDEN)?;
        {
            let (li, hi) = (int(len)?, int(HIDDEN)?);
            let mut l = st.launch_builder(&self.k.mean_pool_normalise);
            l.arg(&x).arg(&mask_d).arg(&mut out).arg(&li).arg(&hi);
            // SAFETY: one 512-thread block per sentence (the kernel's shared array is 512
            // floats, HIDDEN <= 512); x holds b * len * HIDDEN values, out b * HIDDEN.
            unsafe { l.launch(rows(b, 512)) }?;
        }
        let host = st.clone_dtoh(&out)?;
        Ok(host.chunks_exact(HIDDEN).map(<[f32]>::to_vec).collect())
    }

    /// Scaled dot-product attention of every head: scores = scale * Q K^T, masked softmax,
    /// ctx = P V; one strided-batched GEMM over the heads per sentence.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        q: &CudaSlice<f32>,
        k: &CudaSlice<f32>,
        v: &CudaSlice<f32>,
        scores: &mut CudaSlice<f32>,
        ctx: &mut CudaSlice<f32>,
        mask: &CudaSlice<f32>,
        b: usize,
        len: usize,
        scale: f32,
    ) -> Result<(), GpuError> {
        for s in 0..b {
            let tok = s * len * HIDDEN;
            let sc = s * HEADS * len * len;
            let cfg = scores_cfg(len, scale)?;
            let (kv, qv) = (k.slice(tok..), q.slice(tok..));
            let mut sv = scores.slice_mut(sc..);
            // SAFETY: sentence s's Q and K are len rows of HIDDEN values from `tok`, head h at
            // column h * HEAD_DIM; its scores are HEADS blocks of len * len from `sc`.
            unsafe { self.blas.gemm_strided_batched(cfg, &kv, &qv, &mut sv) }?;
        }
        {
            let (heads, li) = (int(HEADS)?, int(len)?);
            let mut lb = self.stream.launch_builder(&self.k.softmax_mask);
            lb.arg(&mut *scores).arg(mask).arg(&heads).arg(&li);
            // SAFETY: one 128-thread block per score row (b * HEADS * len rows of len values);
            // mask holds b * len values.
            unsafe { lb.launch(rows(b * HEADS * len, 128)) }?;
        }
        for s in 0..b {
            let tok = s * len * HIDDEN;
            let sc = s * HEADS * len * len;
            let cfg = context_cfg(len)?;
            let (vv, pv) = (v.slice(tok..), scores.slice(sc..));
            let mut cv = ctx.slice_mut(tok..);
            // SAFETY: as above; ctx has the layout of Q.
            unsafe { self.blas.gemm_strided_batched(cfg, &vv, &pv, &mut cv) }?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    //! The GEMM configurations are the error-prone part of the GPU path; these tests run them
    //! through a host emulation of cuBLAS's column-major strided-batched SGEMM and compare with
    //! the CPU reference, so the layout is checked on machines without a GPU.
    use super::*;
    use crate::minilm::cpu;

    fn emulate(cfg: &StridedBatchedConfig<f32>, a: &[f32], b: &[f32], c: &mut [f32]) {
        let g = &cfg.gemm;
        let (m, n, k) = (g.m as usize, g.n as usize, g.k as usize);
        let (lda, ldb, ldc) = (g.lda as usize, g.ldb as usize, g.ldc as usize);
        for batch in 0..cfg.batch_size as usize {
            let (oa, ob, oc) = (
                batch * cfg.stride_a as usize,
                batch * cfg.stride_b as usize,
                batch * cfg.stride_c as usize,
            );
            for j in 0..n {
                for i in 0..m {
                    let mut acc = 0.0;
                    for p in 0..k {
                        let av = if g.transa == CUBLAS_OP_N {
                            a[oa + i + p * lda]
                        } else {
                            a[oa + p + i * lda]
                        };
                        let bv = if g.transb == CUBLAS_OP_N {
                            b[ob + p + j * ldb]
                        } else {
                            b[ob + j + p * ldb]
                        };
                        acc += av * bv;
                    }
                    let ci = oc + i + j * ldc;
                    c[ci] = g.alpha * acc + g.beta * c[ci];
                }
            }
        }
    }

    fn single(cfg: GemmConfig<f32>) -> StridedBatchedConfig<f32> {
        StridedBatchedConfig {
            gemm: cfg,
            batch_size: 1,
            stride_a: 0,
            stride_b: 0,
            stride_c: 0,
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect()
    }

    #[test]
    fn the_linear_gemm_config_computes_x_times_w_transposed() {
        let (rows, inp, out) = (5, 7, 3);
        let (x, w) = (values(rows * inp, 1), values(out * inp, 2));
        let mut y = vec![0.0; rows * out];
        emulate(&single(linear_cfg(rows, inp, out).unwrap()), &w, &x, &mut y);
        let want = cpu::linear(&x, &w, &vec![0.0; out], inp, out);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn the_attention_gemm_configs_match_per_head_attention_on_the_cpu() {
        let len = 4;
        let (q, k, v) = (
            values(len * HIDDEN, 3),
            values(len * HIDDEN, 4),
            values(len * HIDDEN, 5),
        );
        let scale = 1.0 / (HEAD_DIM as f32).sqrt();
        let mut scores = vec![0.0; HEADS * len * len];
        emulate(&scores_cfg(len, scale).unwrap(), &k, &q, &mut scores);
        for row in scores.chunks_exact_mut(len) {
            cpu::softmax(row);
        }
        let mut ctx = vec![0.0; len * HIDDEN];
        emulate(&context_cfg(len).unwrap(), &v, &scores, &mut ctx);
        for h in 0..HEADS {
            let off = h * HEAD_DIM;
            for i in 0..len {
                let mut s: Vec<f32> = (0..len)
                    .map(|j| {
                        (0..HEAD_DIM)
                            .map(|d| q[i * HIDDEN + off + d] * k[j * HIDDEN + off + d])
                            .sum::<f32>()
                            * scale
                    })
                    .collect();
                cpu::softmax(&mut s);
                for d in 0..HEAD_DIM {
                    let want: f32 = (0..len).map(|j| s[j] * v[j * HIDDEN + off + d]).sum();
                    let got = ctx[i * HIDDEN + off + d];
                    assert!(
                        (got - want).abs() < 1e-5,
                        "head {h} token {i} dim {d}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn packing_keeps_every_tensor_at_its_recorded_offset() {
        let mut bytes = Vec::new();
        let header = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#;
        bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
        bytes.extend_from_slice(header);
        for v in [1.0f32, 2.0, 3.0] {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let w = Weights::parse(&bytes).unwrap();
        let p = Packed::new(&w);
        assert_eq!(p.data, vec![1.0, 2.0, 3.0]);
        assert_eq!(p.index["a"], (0, 2));
        assert_eq!(p.index["b"], (2, 1));
        assert_eq!(p.bytes(), 12);
    }
}
