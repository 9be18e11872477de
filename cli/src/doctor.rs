//! `llamagen doctor`: is the native stack usable, and can the database be reached?
//!
//! libtorch is linked into the binary (through its rpath), so a missing libtorch stops the
//! binary before this code runs, with the loader naming the missing library; everything else
//! is checked here and reported one line per part.

use std::path::Path;
use std::process::ExitCode;

use llamagen_native::onnx::{OnnxDevice, Provider};
use llamagen_store::{Store, StoreOptions};

struct Report {
    problems: usize,
}

impl Report {
    fn line(&mut self, ok: bool, part: &str, detail: impl std::fmt::Display) {
        if !ok {
            self.problems += 1;
        }
        println!(
            "  [{}] {part:<13} {detail}",
            if ok { " ok " } else { "FAIL" }
        );
    }

    fn info(&self, part: &str, detail: impl std::fmt::Display) {
        println!("  [info] {part:<13} {detail}");
    }
}

pub async fn run(data_dir: &Path, check_db: bool) -> anyhow::Result<ExitCode> {
    println!("llamagen doctor");
    let mut report = Report {
        problems: native(&mut Report { problems: 0 }),
    };
    match llamagen_store::cluster::find_bin_dir() {
        Ok(dir) => {
            let version = llamagen_store::cluster::server_binaries_version()
                .unwrap_or_else(|e| e.to_string());
            report.line(
                true,
                "PostgreSQL",
                format!("{version} in {}", dir.display()),
            );
        }
        // A worker of a shared server (a container image, a Slurm node) has no server
        // binaries and needs none: say so without the private cluster's install advice.
        Err(_) if std::env::var_os("DATABASE_URL").is_some() => report.info(
            "PostgreSQL",
            "no server binaries here (the private cluster needs them); using DATABASE_URL",
        ),
        Err(e) => report.line(false, "PostgreSQL", e),
    }
    if check_db {
        match Store::open(&StoreOptions::from_env(data_dir)).await {
            Ok(store) => {
                match store.status().await {
                    Ok(status) => report.line(
                        status.pending() == 0,
                        "database",
                        format!(
                            "{}: PostgreSQL {}, {} of {} migrations applied",
                            status.backend,
                            status.server_version,
                            status.migrations.len() - status.pending(),
                            status.migrations.len()
                        ),
                    ),
                    Err(e) => report.line(false, "database", e),
                }
                store.close().await?;
            }
            Err(e) => report.line(false, "database", format!("{e:#}")),
        }
    }
    if report.problems == 0 {
        println!("all good");
        Ok(ExitCode::SUCCESS)
    } else {
        // A package (a container image, a copied folder) has no scripts/setup.sh beside it.
        let advice = if llamagen_native::packaged() {
            "this package carries its own libraries and takes its database from DATABASE_URL \
             (docs/deploy.md)"
        } else {
            "scripts/setup.sh installs the native stack"
        };
        println!("{} problem(s); {advice}", report.problems);
        Ok(ExitCode::FAILURE)
    }
}

/// Checks libtorch and ONNX Runtime, one line each; returns the number of problems.
pub fn check_native() -> usize {
    native(&mut Report { problems: 0 })
}

fn native(report: &mut Report) -> usize {
    check_torch(report);
    check_onnx(report);
    report.problems
}

fn check_torch(report: &mut Report) {
    let info = llamagen_native::torch::info();
    let dir = info
        .libtorch_dir
        .as_ref()
        .map_or("(location unknown)".into(), |d| d.display().to_string());
    match &info.version {
        Some(v) => report.line(
            info.version_matches(),
            "libtorch",
            format!(
                "{v} at {dir} (tch wants {})",
                llamagen_native::torch::EXPECTED_TORCH_VERSION
            ),
        ),
        None => report.line(false, "libtorch", format!("no version.py at {dir}")),
    }
    // A forward and backward pass proves the library does arithmetic, not only that it loads.
    let x = tch::Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
    let y = (&x * &x).sum(tch::Kind::Float);
    y.backward();
    let grad: Vec<f32> = Vec::<f32>::try_from(x.grad()).unwrap_or_default();
    report.line(
        grad == [2.0, 4.0, 6.0],
        "tch",
        format!(
            "d/dx sum(x^2) at (1,2,3) = {grad:?}; {} CPU threads",
            info.cpu_threads
        ),
    );
    if info.cuda_available {
        report.info(
            "CUDA",
            format!(
                "{} device(s), cuDNN {}",
                info.cuda_devices,
                if info.cudnn_available {
                    "available"
                } else {
                    "unavailable"
                }
            ),
        );
    } else {
        report.info(
            "CUDA",
            format!(
                "no CUDA device ({}): training and sampling run on the CPU",
                llamagen_native::torch::load_cuda()
            ),
        );
    }
    check_nccl(report, info.cuda_available);
    check_cuda_graphs(report, info.cuda_available);
}

/// Whether sampling on a GPU can replay its decode step as a CUDA graph: on a GPU machine the
/// face must load (where it does not, sampling decodes eagerly, several times slower),
/// elsewhere it is only reported.
fn check_cuda_graphs(report: &mut Report, gpu: bool) {
    use llamagen_models::cuda_graph;
    let name = "CUDA graphs";
    if cuda_graph::turned_off() {
        return report.info(
            name,
            "off (LLAMAGEN_CUDA_GRAPHS=0): sampling decodes eagerly",
        );
    }
    match (cuda_graph::available(), gpu) {
        (Ok(()), _) => report.line(true, name, "sampling replays its decode step as a graph"),
        (Err(why), true) => report.line(false, name, why),
        (Err(_), false) if cuda_graph::BUILT => report.info(
            name,
            "built in, for sampling on CUDA (no GPU here: sampling runs on the CPU)",
        ),
        (Err(why), false) => report.info(name, format!("no: {why}")),
    }
}

/// Whether data-parallel training on GPUs can reduce over NCCL: on a GPU machine it must load
/// (else a run on several GPUs fails at its rendezvous unless `LLAMAGEN_DIST_BACKEND=gloo`
/// names the slow path), elsewhere it is only reported.
fn check_nccl(report: &mut Report, gpu: bool) {
    use llamagen_distributed::nccl;
    match (nccl::version(), gpu) {
        (Ok(version), _) => report.line(
            true,
            "NCCL",
            format!("{version}: ranks training on CUDA reduce over it"),
        ),
        (Err(why), true) => report.line(false, "NCCL", why),
        (Err(_), false) if nccl::BUILT => report.info(
            "NCCL",
            "built in, for ranks training on CUDA (no GPU here: ranks use Gloo)",
        ),
        (Err(why), false) => report.info("NCCL", format!("no: {why}")),
    }
}

fn check_onnx(report: &mut Report) {
    let info = match llamagen_native::onnx::info() {
        Ok(info) => info,
        Err(e) => return report.line(false, "ONNX Runtime", e),
    };
    report.line(
        true,
        "ONNX Runtime",
        format!(
            "{} at {}; providers: {}",
            info.version.as_deref().unwrap_or("unknown version"),
            info.dylib_path.display(),
            info.providers.join(", ")
        ),
    );
    match llamagen_native::onnx::probe(OnnxDevice::Cpu) {
        Ok((_, sum)) => report.line(
            (sum - 1.0).abs() < 1e-5,
            "ONNX model",
            format!("tiny MLP ran, softmax sums to {sum:.6}"),
        ),
        Err(e) => report.line(false, "ONNX model", e),
    }
    check_onnx_cuda(report);
}

/// Whether the ONNX models (Inception, CLIP and its heads, T5) can run on the GPU: the tiny
/// model through the CUDA execution provider where it can be tried. A GPU that libtorch sees
/// but ONNX Runtime cannot use is a problem (the models would fall back to the CPU).
fn check_onnx_cuda(report: &mut Report) {
    let gpu = tch::Cuda::is_available();
    if let Some(why) = llamagen_native::onnx::cuda_unavailable() {
        if gpu {
            report.line(
                false,
                "ONNX on CUDA",
                format!("{why}; the ONNX models would run on the CPU"),
            );
        } else {
            report.info("ONNX on CUDA", format!("no: {why}"));
        }
        return;
    }
    match llamagen_native::onnx::probe(OnnxDevice::Cuda(0)) {
        Ok((provider, sum)) => report.line(
            provider == Provider::Cuda(0) && (sum - 1.0).abs() < 1e-5,
            "ONNX on CUDA",
            format!("tiny MLP on {provider}, softmax sums to {sum:.6}"),
        ),
        Err(e) => report.line(false, "ONNX on CUDA", e),
    }
}
