//! A dependency-light PNG chart: stacked panels of line series, drawn into an RGB buffer with
//! a built-in 5x7 bitmap font and encoded with `miniz_oxide` (no font or image crates).
//!
//! Series longer than the plot is wide are drawn as a per-pixel-column min/max envelope, so a
//! one-hour price spike in a year of data stays visible.

use crate::backtest::Backtest;
use crate::trace::{fmt_ts, Trace};

/// An RGB colour.
pub type Rgb = [u8; 3];

/// One line.
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// Legend text.
    pub label: String,
    /// Colour.
    pub color: Rgb,
    /// Values, one per x step (NaN = gap).
    pub values: &'a [f64],
}

/// One panel.
#[derive(Debug, Clone)]
pub struct Panel<'a> {
    /// Title (upper case renders best).
    pub title: String,
    /// Lines.
    pub series: Vec<Series<'a>>,
    /// Clip the y axis at this value (for spiky prices).
    pub clip_max: Option<f64>,
}

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            px: vec![255; w * h * 3],
        }
    }

    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x < 0 || y < 0 {
            return;
        }
        let (x, y) = (x as usize, y as usize);
        if x >= self.w || y >= self.h {
            return;
        }
        let i = (y * self.w + x) * 3;
        self.px[i..i + 3].copy_from_slice(&c);
    }

    fn vline(&mut self, x: i64, y0: i64, y1: i64, c: Rgb) {
        for y in y0.min(y1)..=y0.max(y1) {
            self.set(x, y, c);
        }
    }

    fn hline(&mut self, x0: i64, x1: i64, y: i64, c: Rgb) {
        for x in x0.min(x1)..=x0.max(x1) {
            self.set(x, y, c);
        }
    }

    fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0..=y1 {
            self.hline(x0, x1, y, c);
        }
    }

    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, c: Rgb) {
        let mut cx = x;
        for ch in s.chars() {
            let g = glyph(ch.to_ascii_uppercase());
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        for dy in 0..scale {
                            for dx in 0..scale {
                                self.set(cx + col * scale + dx, y + row as i64 * scale + dy, c);
                            }
                        }
                    }
                }
            }
            cx += 6 * scale;
        }
    }
}

/// Width in pixels of `s` drawn at `scale`.
fn text_w(s: &str, scale: i64) -> i64 {
    s.chars().count() as i64 * 6 * scale
}

#[rustfmt::skip]
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E], '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F], '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02], '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E], '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E], '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11], 'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E], 'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F], 'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F], 'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E], 'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11], 'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11], 'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E], 'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D], 'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E], 'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E], 'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A], 'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04], 'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C], ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00], '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '$' => [0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04], '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03], ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02], ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00], '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        ' ' => [0; 7],
        _ => [0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F],
    }
}

/// Compact number for axis labels: 1234567 -> "1.23M".
fn compact(v: f64) -> String {
    let a = v.abs();
    let (x, suffix) = if a >= 1e9 {
        (v / 1e9, "B")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e4 {
        (v / 1e3, "K")
    } else {
        (v, "")
    };
    let digits = if x.abs() >= 100.0 || x.fract() == 0.0 {
        0
    } else if x.abs() >= 10.0 {
        1
    } else {
        2
    };
    format!("{x:.digits$}{suffix}")
}

const GREY: Rgb = [150, 150, 150];
const LIGHT: Rgb = [225, 225, 225];
const INK: Rgb = [30, 30, 30];

/// Renders stacked panels sharing an x axis labelled `x_from` .. `x_to`; returns PNG bytes.
pub fn render(
    panels: &[Panel<'_>],
    x_from: &str,
    x_to: &str,
    width: usize,
    height: usize,
) -> Vec<u8> {
    let mut cv = Canvas::new(width, height);
    let (left, right, top_pad, bottom) = (110_i64, 20_i64, 34_i64, 40_i64);
    let n = panels.len().max(1) as i64;
    let ph = (height as i64 - bottom) / n;
    for (pi, p) in panels.iter().enumerate() {
        let y0 = pi as i64 * ph + top_pad;
        let y1 = (pi as i64 + 1) * ph - 12;
        let (x0, x1) = (left, width as i64 - right);
        // Title and legend.
        cv.text(x0, y0 - 26, &p.title, 2, INK);
        let mut lx = x0 + text_w(&p.title, 2) + 30;
        for s in p.series.iter().filter(|s| !s.label.is_empty()) {
            cv.rect(lx, y0 - 24, lx + 12, y0 - 14, s.color);
            cv.text(lx + 18, y0 - 26, &s.label, 2, s.color);
            lx += 18 + text_w(&s.label, 2) + 24;
        }
        // Range.
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for s in &p.series {
            for &v in s.values.iter().filter(|v| v.is_finite()) {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        if let Some(c) = p.clip_max {
            hi = hi.min(c);
        }
        if !lo.is_finite() || !hi.is_finite() {
            lo = 0.0;
            hi = 1.0;
        }
        if lo > 0.0 && lo < 0.25 * hi {
            lo = 0.0;
        }
        if hi - lo < 1e-9 {
            hi = lo + 1.0;
        }
        let pad = 0.04 * (hi - lo);
        let (lo, hi) = (lo - pad, hi + pad);
        let ymap = |v: f64| -> i64 {
            let f = ((v.clamp(lo, hi) - lo) / (hi - lo)).clamp(0.0, 1.0);
            y1 - (f * (y1 - y0) as f64).round() as i64
        };
        // Grid, zero line, frame, y labels.
        for k in 0..=4 {
            let v = lo + (hi - lo) * f64::from(k) / 4.0;
            let y = ymap(v);
            cv.hline(x0, x1, y, LIGHT);
            let label = compact(v);
            cv.text(x0 - 8 - text_w(&label, 2), y - 7, &label, 2, INK);
        }
        if lo < 0.0 && hi > 0.0 {
            cv.hline(x0, x1, ymap(0.0), GREY);
        }
        cv.hline(x0, x1, y0, GREY);
        cv.hline(x0, x1, y1, GREY);
        cv.vline(x0, y0, y1, GREY);
        cv.vline(x1, y0, y1, GREY);
        // Series.
        let pw = (x1 - x0 - 1).max(1);
        for s in &p.series {
            let len = s.values.len();
            if len == 0 {
                continue;
            }
            let xmap = |i: usize| -> i64 { x0 + 1 + (i as i64 * pw) / (len.max(2) as i64 - 1) };
            if len as i64 <= pw {
                let mut prev: Option<(i64, i64)> = None;
                for (i, &v) in s.values.iter().enumerate() {
                    if !v.is_finite() {
                        prev = None;
                        continue;
                    }
                    let pt = (xmap(i), ymap(v));
                    if let Some(q) = prev {
                        cv.line(q.0, q.1, pt.0, pt.1, s.color);
                    }
                    cv.set(pt.0, pt.1, s.color);
                    prev = Some(pt);
                }
            } else {
                let mut last: Option<i64> = None;
                for col in 0..pw {
                    let a = (col as usize * len) / pw as usize;
                    let b = (((col + 1) as usize * len) / pw as usize).clamp(a + 1, len);
                    let vals = s.values[a..b].iter().filter(|v| v.is_finite());
                    let (mut mn, mut mx) = (f64::INFINITY, f64::NEG_INFINITY);
                    for &v in vals {
                        mn = mn.min(v);
                        mx = mx.max(v);
                    }
                    if !mn.is_finite() {
                        last = None;
                        continue;
                    }
                    let (mut ya, mut yb) = (ymap(mx), ymap(mn));
                    if let Some(l) = last {
                        ya = ya.min(l);
                        yb = yb.max(l);
                    }
                    cv.vline(x0 + 1 + col, ya, yb, s.color);
                    last = s.values[a..b]
                        .iter()
                        .rev()
                        .find(|v| v.is_finite())
                        .map(|&v| ymap(v));
                }
            }
        }
    }
    let y = height as i64 - bottom + 10;
    cv.text(left, y, x_from, 2, INK);
    cv.text(width as i64 - 20 - text_w(x_to, 2), y, x_to, 2, INK);
    encode_png(&cv)
}

fn crc32(chunks: &[&[u8]]) -> u32 {
    let mut table = [0u32; 256];
    for (n, t) in table.iter_mut().enumerate() {
        let mut c = n as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = 0xFFFF_FFFFu32;
    for bytes in chunks {
        for &b in *bytes {
            crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
        }
    }
    crc ^ 0xFFFF_FFFF
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&u32::try_from(data.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

fn encode_png(cv: &Canvas) -> Vec<u8> {
    let mut raw = Vec::with_capacity((cv.w * 3 + 1) * cv.h);
    for row in cv.px.chunks(cv.w * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&u32::try_from(cv.w).unwrap_or(0).to_be_bytes());
    ihdr.extend_from_slice(&u32::try_from(cv.h).unwrap_or(0).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6),
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// The backtest chart: price; the optimum's ASIC MW under the selected policy's ASIC and GPU
/// MW; cumulative profit of every run.
pub fn backtest_png(trace: &Trace, bt: &Backtest) -> Vec<u8> {
    let prices: Vec<f64> = trace.scored().iter().map(|o| o.price).collect();
    let mut sorted: Vec<f64> = prices.iter().copied().filter(|p| p.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let clip = sorted
        .get(((sorted.len() as f64) * 0.995) as usize)
        .copied()
        .map(|p| (p * 1.5).max(1.0));
    let max = sorted.last().copied().unwrap_or(0.0);
    let sel = bt
        .runs
        .iter()
        .position(|r| r.name == bt.report.policy)
        .unwrap_or(0);
    let col = |r: usize, f: fn(&crate::backtest::IntervalOut) -> f64| -> Vec<f64> {
        bt.runs[r].rows.iter().map(f).collect()
    };
    let p_asic = col(sel, |x| x.asic_mw);
    let p_gpu = col(sel, |x| x.gpu_mw);
    let o_asic = col(0, |x| x.asic_mw);
    let cums: Vec<Vec<f64>> = bt
        .runs
        .iter()
        .map(|r| {
            let mut c = 0.0;
            r.rows
                .iter()
                .map(|x| {
                    c += x.profit_usd;
                    c
                })
                .collect()
        })
        .collect();
    let palette: [Rgb; 5] = [
        [20, 20, 20],
        [31, 119, 180],
        [148, 103, 189],
        [160, 160, 160],
        [214, 39, 40],
    ];
    let mut profit_series = Vec::new();
    for (i, (r, c)) in bt.runs.iter().zip(&cums).enumerate() {
        profit_series.push(Series {
            label: r.name.to_uppercase(),
            color: palette[i % palette.len()],
            values: c,
        });
    }
    let clipped = clip.filter(|&c| c < max);
    let panels = vec![
        Panel {
            title: match clipped {
                Some(c) => format!(
                    "PRICE $/MWH {} (CLIPPED AT {}, MAX {})",
                    trace.zone,
                    compact(c),
                    compact(max)
                ),
                None => format!("PRICE $/MWH {}", trace.zone),
            },
            series: vec![Series {
                label: String::new(),
                color: [90, 90, 90],
                values: &prices,
            }],
            clip_max: clipped,
        },
        Panel {
            title: "ALLOCATION MW".to_owned(),
            series: vec![
                Series {
                    label: "OPTIMUM ASIC".to_owned(),
                    color: [255, 127, 14],
                    values: &o_asic,
                },
                Series {
                    label: format!("{} ASIC", bt.report.policy.to_uppercase()),
                    color: [31, 119, 180],
                    values: &p_asic,
                },
                Series {
                    label: format!("{} GPU", bt.report.policy.to_uppercase()),
                    color: [44, 160, 44],
                    values: &p_gpu,
                },
            ],
            clip_max: None,
        },
        Panel {
            title: "CUMULATIVE PROFIT $".to_owned(),
            series: profit_series,
            clip_max: None,
        },
    ];
    let first = trace
        .scored()
        .first()
        .map(|o| fmt_ts(o.ts))
        .unwrap_or_default();
    let last = trace
        .scored()
        .last()
        .map(|o| fmt_ts(o.ts))
        .unwrap_or_default();
    render(&panels, &first, &last, 1600, 1000)
}
