//! The reference forward pass in plain Rust, one sentence at a time (no padding): the same
//! math the CUDA path runs, kept simple so it can be read against the BERT paper.

use super::{Weights, HEADS, HEAD_DIM, HIDDEN, INTERMEDIATE, LAYERS, LN_EPS};

/// `y[t][o] = b[o] + sum_i x[t][i] * w[o][i]` (`w` is `[out, in]`, as stored by PyTorch).
pub fn linear(x: &[f32], w: &[f32], b: &[f32], inp: usize, out: usize) -> Vec<f32> {
    let rows = x.len() / inp;
    let mut y = vec![0.0; rows * out];
    for t in 0..rows {
        let xr = &x[t * inp..(t + 1) * inp];
        for o in 0..out {
            let wr = &w[o * inp..(o + 1) * inp];
            y[t * out + o] = dot(xr, wr) + b[o];
        }
    }
    y
}

/// Dot product over eight independent partial sums, so the compiler can keep them in vector
/// registers (a single running sum is one long dependency chain and does not vectorise).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Layer norm over each row of `HIDDEN` values, in place.
pub fn layer_norm(x: &mut [f32], g: &[f32], b: &[f32]) {
    for row in x.chunks_exact_mut(HIDDEN) {
        let n = HIDDEN as f32;
        let mean = row.iter().sum::<f32>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let inv = 1.0 / (var + LN_EPS).sqrt();
        for (i, v) in row.iter_mut().enumerate() {
            *v = (*v - mean) * inv * g[i] + b[i];
        }
    }
}

/// Exact GELU, `x * Phi(x)` (BERT's `gelu`, not the tanh approximation).
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x / std::f32::consts::SQRT_2))
}

/// Softmax of one row, in place.
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in row.iter_mut() {
        *v /= sum;
    }
}

/// Token states after the encoder, `[ids.len(), HIDDEN]`.
pub fn encode(w: &Weights, ids: &[u32]) -> Vec<f32> {
    let n = ids.len();
    let words = w.get("embeddings.word_embeddings.weight");
    let pos = w.get("embeddings.position_embeddings.weight");
    let typ = w.get("embeddings.token_type_embeddings.weight");
    let mut x = vec![0.0; n * HIDDEN];
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        for h in 0..HIDDEN {
            x[t * HIDDEN + h] =
                words.get(id * HIDDEN + h).copied().unwrap_or(0.0) + pos[t * HIDDEN + h] + typ[h];
        }
    }
    layer_norm(
        &mut x,
        w.get("embeddings.LayerNorm.weight"),
        w.get("embeddings.LayerNorm.bias"),
    );
    let scale = 1.0 / (HEAD_DIM as f32).sqrt();
    for l in 0..LAYERS {
        let p = |s: &str| format!("encoder.layer.{l}.{s}");
        let lin = |x: &[f32], name: &str, i: usize, o: usize| {
            linear(
                x,
                w.get(&p(&format!("{name}.weight"))),
                w.get(&p(&format!("{name}.bias"))),
                i,
                o,
            )
        };
        let q = lin(&x, "attention.self.query", HIDDEN, HIDDEN);
        let k = lin(&x, "attention.self.key", HIDDEN, HIDDEN);
        let v = lin(&x, "attention.self.value", HIDDEN, HIDDEN);
        let mut ctx = vec![0.0; n * HIDDEN];
        let mut scores = vec![0.0; n];
        for h in 0..HEADS {
            let off = h * HEAD_DIM;
            for i in 0..n {
                for (j, s) in scores.iter_mut().enumerate() {
                    let qi = &q[i * HIDDEN + off..i * HIDDEN + off + HEAD_DIM];
                    let kj = &k[j * HIDDEN + off..j * HIDDEN + off + HEAD_DIM];
                    *s = dot(qi, kj) * scale;
                }
                softmax(&mut scores);
                for (j, &pj) in scores.iter().enumerate() {
                    for d in 0..HEAD_DIM {
                        ctx[i * HIDDEN + off + d] += pj * v[j * HIDDEN + off + d];
                    }
                }
            }
        }
        let attn = lin(&ctx, "attention.output.dense", HIDDEN, HIDDEN);
        for (a, b) in x.iter_mut().zip(&attn) {
            *a += b;
        }
        layer_norm(
            &mut x,
            w.get(&p("attention.output.LayerNorm.weight")),
            w.get(&p("attention.output.LayerNorm.bias")),
        );
        let mut inter = lin(&x, "intermediate.dense", HIDDEN, INTERMEDIATE);
        for v in inter.iter_mut() {
            *v = gelu(*v);
        }
        let out = lin(&inter, "output.dense", INTERMEDIATE, HIDDEN);
        for (a, b) in x.iter_mut().zip(&out) {
            *a += b;
        }
        layer_norm(
            &mut x,
            w.get(&p("output.LayerNorm.weight")),
            w.get(&p("output.LayerNorm.bias")),
        );
    }
    x
}

/// Mean of the token states, L2-normalised.
pub fn pool_normalise(states: &[f32]) -> Vec<f32> {
    let n = (states.len() / HIDDEN).max(1);
    let mut e = vec![0.0; HIDDEN];
    for row in states.chunks_exact(HIDDEN) {
        for (a, b) in e.iter_mut().zip(row) {
            *a += b;
        }
    }
    for v in e.iter_mut() {
        *v /= n as f32;
    }
    let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    for v in e.iter_mut() {
        *v /= norm;
    }
    e
}

/// The sentence embedding of token ids.
pub fn embed(w: &Weights, ids: &[u32]) -> Vec<f32> {
    pool_normalise(&encode(w, ids))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn gelu_matches_known_values_of_the_exact_form() {
        // x * Phi(x): Phi(1) = 0.841345, Phi(-1) = 0.158655.
        assert!((gelu(1.0) - 0.841_345).abs() < 1e-5);
        assert!((gelu(-1.0) + 0.158_655).abs() < 1e-5);
        assert_eq!(gelu(0.0), 0.0);
    }

    #[test]
    fn softmax_rows_sum_to_one_and_keep_order() {
        let mut r = vec![1.0, 2.0, 3.0];
        softmax(&mut r);
        assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(r[0] < r[1] && r[1] < r[2]);
        assert!((r[2] - 0.665_241).abs() < 1e-5);
    }

    #[test]
    fn layer_norm_gives_zero_mean_unit_variance_rows() {
        let mut x: Vec<f32> = (0..HIDDEN).map(|i| i as f32).collect();
        layer_norm(&mut x, &vec![1.0; HIDDEN], &vec![0.0; HIDDEN]);
        let mean = x.iter().sum::<f32>() / HIDDEN as f32;
        let var = x.iter().map(|v| v * v).sum::<f32>() / HIDDEN as f32;
        assert!(mean.abs() < 1e-4);
        assert!((var - 1.0).abs() < 1e-3);
    }

    #[test]
    fn the_vector_dot_product_matches_the_plain_sum_at_every_length() {
        for n in [0usize, 1, 7, 8, 9, 17, 384, 1536] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let plain: f64 = a.iter().zip(&b).map(|(x, y)| f64::from(x * y)).sum();
            assert!((f64::from(dot(&a, &b)) - plain).abs() < 1e-4, "n = {n}");
        }
    }

    #[test]
    fn linear_uses_out_by_in_weights() {
        // x = [1, 2]; w = [[1, 0], [0, 1], [1, 1]]; b = [0, 1, 2].
        let y = linear(
            &[1.0, 2.0],
            &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            &[0.0, 1.0, 2.0],
            2,
            3,
        );
        assert_eq!(y, vec![1.0, 3.0, 5.0]);
    }
}
