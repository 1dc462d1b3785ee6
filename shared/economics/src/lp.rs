//! A small dense simplex for `max c.x  s.t.  A x <= b, x >= 0` with `b >= 0` (so the origin is
//! feasible and no phase one is needed). Bland's rule prevents cycling. Good for the handful of
//! variables of a site's power split; not meant for large problems.

/// An optimal solution.
#[derive(Debug, Clone, PartialEq)]
pub struct LpSolution {
    /// The optimal point.
    pub x: Vec<f64>,
    /// The optimal objective value.
    pub value: f64,
}

/// Why there is no optimal solution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LpError {
    /// Shapes of `c`, `A` and `b` disagree.
    #[error("LP shapes disagree")]
    Shape,
    /// Some `b_i < 0` or is not finite: the origin is not feasible.
    #[error("LP right-hand side must be finite and >= 0")]
    NegativeRhs,
    /// The objective grows without bound.
    #[error("LP is unbounded")]
    Unbounded,
    /// Did not converge (should not happen with Bland's rule).
    #[error("LP did not converge")]
    IterationLimit,
}

const EPS: f64 = 1e-10;

/// Solves `max c.x  s.t.  A x <= b, x >= 0` (`b >= 0`).
pub fn maximize(c: &[f64], a: &[Vec<f64>], b: &[f64]) -> Result<LpSolution, LpError> {
    let n = c.len();
    let m = b.len();
    if a.len() != m || a.iter().any(|r| r.len() != n) {
        return Err(LpError::Shape);
    }
    if b.iter().any(|&v| !v.is_finite() || v < 0.0) {
        return Err(LpError::NegativeRhs);
    }
    let width = n + m + 1;
    // Row i: [A_i | e_i | b_i]; last row: reduced costs [c | 0 | -value].
    let mut t = vec![0.0; (m + 1) * width];
    for i in 0..m {
        for j in 0..n {
            t[i * width + j] = a[i][j];
        }
        t[i * width + n + i] = 1.0;
        t[i * width + width - 1] = b[i];
    }
    for j in 0..n {
        t[m * width + j] = c[j];
    }
    let mut basis: Vec<usize> = (n..n + m).collect();
    let max_iter = 50 * (n + m + 1) * (n + m + 1);
    for _ in 0..max_iter {
        let Some(enter) = (0..n + m).find(|&j| t[m * width + j] > EPS) else {
            let mut x = vec![0.0; n];
            for (i, &bv) in basis.iter().enumerate() {
                if bv < n {
                    x[bv] = t[i * width + width - 1];
                }
            }
            let value = c.iter().zip(&x).map(|(ci, xi)| ci * xi).sum();
            return Ok(LpSolution { x, value });
        };
        let mut leave: Option<(usize, f64)> = None;
        for i in 0..m {
            let aij = t[i * width + enter];
            if aij > EPS {
                let ratio = t[i * width + width - 1] / aij;
                leave = match leave {
                    None => Some((i, ratio)),
                    Some((k, r)) => {
                        if ratio < r - EPS || (ratio <= r + EPS && basis[i] < basis[k]) {
                            Some((i, ratio))
                        } else {
                            Some((k, r))
                        }
                    }
                };
            }
        }
        let Some((row, _)) = leave else {
            return Err(LpError::Unbounded);
        };
        let p = t[row * width + enter];
        for j in 0..width {
            t[row * width + j] /= p;
        }
        for i in 0..=m {
            if i != row {
                let f = t[i * width + enter];
                if f != 0.0 {
                    for j in 0..width {
                        t[i * width + j] -= f * t[row * width + j];
                    }
                }
            }
        }
        basis[row] = enter;
    }
    Err(LpError::IterationLimit)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn a_textbook_lp_has_its_textbook_optimum() {
        // max 3x + 5y  s.t. x <= 4, 2y <= 12, 3x + 2y <= 18  ->  x=2, y=6, value 36.
        let s = maximize(
            &[3.0, 5.0],
            &[vec![1.0, 0.0], vec![0.0, 2.0], vec![3.0, 2.0]],
            &[4.0, 12.0, 18.0],
        )
        .unwrap();
        assert!((s.value - 36.0).abs() < 1e-9);
        assert!((s.x[0] - 2.0).abs() < 1e-9 && (s.x[1] - 6.0).abs() < 1e-9);
    }

    #[test]
    fn unbounded_and_infeasible_origins_are_reported() {
        assert_eq!(
            maximize(&[1.0], &[vec![-1.0]], &[1.0]),
            Err(LpError::Unbounded)
        );
        assert_eq!(
            maximize(&[1.0], &[vec![1.0]], &[-1.0]),
            Err(LpError::NegativeRhs)
        );
    }
}
