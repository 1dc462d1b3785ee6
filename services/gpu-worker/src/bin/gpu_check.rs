//! `hcp-gpu-check` (`make gpu-check`): exercises the CUDA backend on a GPU host and prints what
//! it finds: devices, all-MiniLM-L6-v2 embeddings on the GPU against the CPU reference,
//! throughput at batch 1, 32 and 256, model switch timings (cold, resident, warm from pinned
//! memory with GB/s against the PCIe link maximum) and NVML samples taken at 1 Hz meanwhile.
//! Exits 1 with one line when there is no driver or no GPU, 2 when a check fails.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hcp_gpu_worker::backend::cuda::switch::{GpuHost, SwitchTimings};
use hcp_gpu_worker::backend::cuda::telemetry::{NvmlSample, Telemetry};
use hcp_gpu_worker::backend::cuda::{self, CudaError, GpuInfo};
use hcp_gpu_worker::minilm::{self, cosine, MiniLm};
use hcp_gpu_worker::vram::DEFAULT_BUDGET_FRACTION;

/// Cosine against the CPU reference below which the check fails.
const MIN_COSINE: f32 = 0.9999;

const SENTENCES: [&str; 6] = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The stock market fell sharply today.",
    "GPUs in the data centre run sentence embeddings while ASICs mine bitcoin.",
    "Héllo, wörld! Punctuation; accents — and numbers like 3.14159 are tokenised.",
    "short",
];

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("gpu-check: FAILED (see above)");
            ExitCode::from(2)
        }
        Err(e @ (CudaError::NoDriver | CudaError::NoDevices | CudaError::MissingLibrary(_))) => {
            eprintln!("hcp-gpu-check: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("hcp-gpu-check: {e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<bool, CudaError> {
    let gpus = cuda::discover()?;
    println!("== devices");
    for g in &gpus {
        print_device(g);
    }
    let dir = minilm::model_dir();
    let cpu = MiniLm::load(&dir)?;
    let first = gpus.first().cloned().ok_or(CudaError::NoDevices)?;

    // NVML at 1 Hz on a thread while the GPU works.
    let samples = Arc::new(Mutex::new(Vec::<(f64, NvmlSample)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop, uuid) = (samples.clone(), stop.clone(), first.uuid.clone());
        std::thread::spawn(move || {
            let Ok(t) = Telemetry::init() else { return };
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let (Ok(s), Ok(mut v)) = (t.sample(&uuid), samples.lock()) {
                    v.push((start.elapsed().as_secs_f64(), s));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let mut host = GpuHost::open(first.clone(), DEFAULT_BUDGET_FRACTION)?;
    // The same files under two names: two slots, so switching between models is real work.
    host.register("minilm-a", &dir)?;
    host.register("minilm-b", &dir)?;
    let mut ok = true;
    let mut switches: Vec<(&str, SwitchTimings)> = Vec::new();

    let (t, gpu_emb) = host.switch("minilm-a", &SENTENCES)?;
    switches.push(("cold", t));
    println!(
        "\n== embeddings vs CPU reference ({} sentences)",
        SENTENCES.len()
    );
    let cpu_emb = cpu.embed_cpu(&SENTENCES);
    for ((s, g), c) in SENTENCES.iter().zip(&gpu_emb).zip(&cpu_emb) {
        let cos = cosine(g, c);
        let max_diff = g
            .iter()
            .zip(c)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        let pass = cos >= MIN_COSINE;
        ok &= pass;
        println!(
            "  {} cosine {cos:.7}  max |diff| {max_diff:.2e}  {s:?}",
            if pass { "ok  " } else { "FAIL" }
        );
    }
    println!(
        "  paraphrase cosine {:.4}, unrelated {:.4}",
        cosine(&gpu_emb[0], &gpu_emb[1]),
        cosine(&gpu_emb[0], &gpu_emb[2])
    );

    println!("\n== throughput (minilm-a, GPU {})", first.ordinal);
    for batch in [1usize, 32, 256] {
        let sents: Vec<&str> = (0..batch).map(|i| SENTENCES[i % SENTENCES.len()]).collect();
        host.embed("minilm-a", &sents)?;
        let iters = (2048 / batch).clamp(8, 200);
        let t = Instant::now();
        for _ in 0..iters {
            host.embed("minilm-a", &sents)?;
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "  batch {batch:>3}: {:>9.1} sentences/s  {:>8.3} ms/batch  ({iters} batches)",
            (batch * iters) as f64 / s,
            s * 1000.0 / iters as f64
        );
    }

    host.unbind("minilm-a")?;
    let (t, _) = host.switch("minilm-a", &SENTENCES[..1])?;
    switches.push(("resident", t));
    host.unbind("minilm-a")?;
    let (t, _) = host.switch("minilm-b", &SENTENCES[..1])?;
    switches.push(("cold", t));
    host.unbind("minilm-b")?;
    host.evict("minilm-a")?;
    let (t, _) = host.switch("minilm-a", &SENTENCES[..1])?;
    switches.push(("warm", t));
    host.unbind("minilm-a")?;

    println!("\n== switch timings (ms)");
    let link = first.pcie_max.map(|l| l.max_gbps());
    for (label, t) in &switches {
        let gbps = t.load_gbps.map_or(String::new(), |g| match link {
            Some(m) if m > 0.0 => format!(
                "  {g:.2} GB/s of {m:.1} GB/s PCIe max ({:.0}%)",
                100.0 * g / m
            ),
            _ => format!("  {g:.2} GB/s"),
        });
        println!(
            "  {:<6} {:<9} route {:>7.3}  load {:>9.3}  bind {:>7.3}  first batch {:>8.3}{gbps}",
            t.model, label, t.route_ms, t.load_ms, t.bind_ms, t.first_batch_ms
        );
    }
    let resident_total = switches
        .iter()
        .find(|(l, _)| *l == "resident")
        .map(|(_, t)| t.route_ms + t.bind_ms + t.first_batch_ms);
    if let Some(r) = resident_total {
        let pass = r < 100.0;
        ok &= pass;
        println!(
            "  resident switch total {r:.3} ms ({})",
            if pass {
                "ok, < 100 ms"
            } else {
                "FAIL, >= 100 ms"
            }
        );
    }
    println!(
        "  VRAM: {} of {} bytes budget, pressure {}",
        host.slots().used(),
        host.slots().budget(),
        host.slots().pressure().as_str()
    );
    host.clear()?;

    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    println!("\n== NVML samples (1 Hz, GPU {})", first.ordinal);
    let taken = samples.lock().map(|v| v.clone()).unwrap_or_default();
    if taken.is_empty() {
        println!("  none (NVML unavailable)");
    }
    for (at, s) in taken {
        println!(
            "  t={at:>5.1}s power {:>6.1} W  temp {:>4.0} C  sm {:>3}%  mem {:>3}%  used {:>6} MiB  sm {:>4} MHz  mem {:>4} MHz",
            s.power_w.unwrap_or(f64::NAN),
            s.temperature_c.unwrap_or(f64::NAN),
            s.sm_util_pct.map_or("-".into(), |v| v.to_string()),
            s.mem_util_pct.map_or("-".into(), |v| v.to_string()),
            s.memory_used_bytes.map_or("-".into(), |v| (v / (1024 * 1024)).to_string()),
            s.sm_clock_mhz.map_or("-".into(), |v| v.to_string()),
            s.mem_clock_mhz.map_or("-".into(), |v| v.to_string()),
        );
    }
    println!("\ngpu-check: {}", if ok { "OK" } else { "FAILED" });
    Ok(ok)
}

fn print_device(g: &GpuInfo) {
    let link = |l: Option<cuda::PcieLink>| {
        l.map_or("unknown".to_owned(), |l| {
            format!("gen{} x{} ({:.1} GB/s)", l.gen, l.width, l.max_gbps())
        })
    };
    println!(
        "  [{}] {} {}  sm_{}{}  {:.1} GiB total, {:.1} GiB free  PCIe max {}, now {}",
        g.ordinal,
        g.name,
        g.uuid,
        g.compute_capability.0,
        g.compute_capability.1,
        g.total_bytes as f64 / 1024f64.powi(3),
        g.free_bytes as f64 / 1024f64.powi(3),
        link(g.pcie_max),
        link(g.pcie_current),
    );
}
