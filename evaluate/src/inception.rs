//! Features of the FID Inception-v3 through ONNX Runtime, from an export made by
//! `scripts/export_inception.py` (pytorch-fid's port of the TensorFlow graph that the ADM
//! evaluator uses, with the real weights or with seeded random ones for tests).
//!
//! Images go in as they are stored: [N, H, W, 3] levels in [0, 255], any size. The graph itself
//! does what pytorch-fid does to them (scale to [0, 1], bilinear resize to 299 x 299 with
//! `align_corners=False`, scale to [-1, 1]), so there is no preprocessing here to drift. The
//! graph's input is float32, so images already resized to 299 without quantisation (clean-fid's
//! "clean" mode) go in as they are ([`Inception::features_f32`]); bytes are widened on the way
//! in. Exports made before the input was float32 take bytes only.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use llamagen_native::onnx::{OnnxDevice, Provider};
use ndarray::{Array2, ArrayView4, Axis, s};
use ort::session::Session;
use ort::value::TensorRef;

use crate::EvalError;

/// What the network gives for a batch of images.
#[derive(Debug, Clone, PartialEq)]
pub struct InceptionFeatures {
    /// [N, 2048] pool features: FID, precision/recall.
    pub pool: Array2<f32>,
    /// [N, 2023] spatial features (17 x 17 x 7 of `mixed_6/conv`, HWC order): sFID.
    pub spatial: Array2<f32>,
    /// [N, 1008] classifier logits: Inception Score.
    pub logits: Array2<f32>,
}

impl InceptionFeatures {
    /// Zeroed features for `n` images, to be filled a batch or a chunk at a time.
    pub fn zeros(n: usize) -> Self {
        InceptionFeatures {
            pool: Array2::zeros((n, POOL_DIM)),
            spatial: Array2::zeros((n, SPATIAL_DIM)),
            logits: Array2::zeros((n, LOGITS_DIM)),
        }
    }

    /// Puts `part`'s rows at `rows` of these features.
    pub fn assign_rows(&mut self, rows: std::ops::Range<usize>, part: &InceptionFeatures) {
        self.pool.slice_mut(s![rows.clone(), ..]).assign(&part.pool);
        self.spatial
            .slice_mut(s![rows.clone(), ..])
            .assign(&part.spatial);
        self.logits.slice_mut(s![rows, ..]).assign(&part.logits);
    }
}

pub const POOL_DIM: usize = 2048;
pub const SPATIAL_DIM: usize = 17 * 17 * 7;
pub const LOGITS_DIM: usize = 1008;

/// An open FID Inception network.
pub struct Inception {
    session: Session,
    provider: Provider,
    batch_size: usize,
    /// The graph takes float32 levels (else bytes: an older export).
    float_input: bool,
}

impl Inception {
    /// Opens an export of scripts/export_inception.py on the CPU; `threads` 0 lets ONNX
    /// Runtime choose.
    pub fn open(model: &Path, threads: usize, batch_size: usize) -> Result<Self, EvalError> {
        Self::open_on(model, threads, batch_size, OnnxDevice::Cpu)
    }

    /// [`Inception::open`] on `device`: a GPU through ONNX Runtime's CUDA execution provider
    /// where the library has it, else the CPU (the log says why; [`Inception::provider`]).
    pub fn open_on(
        model: &Path,
        threads: usize,
        batch_size: usize,
        device: OnnxDevice,
    ) -> Result<Self, EvalError> {
        let (session, provider) = llamagen_native::onnx::session_on(model, threads, device)
            .map_err(|e| EvalError::File {
                path: model.to_path_buf(),
                message: e.to_string(),
            })?;
        let inputs: Vec<&str> = session.inputs().iter().map(|o| o.name()).collect();
        let outputs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        for (kind, names, want) in [
            ("input", &inputs, "images"),
            ("output", &outputs, "pool"),
            ("output", &outputs, "spatial"),
            ("output", &outputs, "logits"),
        ] {
            if !names.contains(&want) {
                return Err(EvalError::File {
                    path: model.to_path_buf(),
                    message: format!(
                        "not an export of scripts/export_inception.py: no {kind} named {want:?} (has {names:?})"
                    ),
                });
            }
        }
        let float_input = session
            .inputs()
            .iter()
            .find(|i| i.name() == "images")
            .and_then(|i| i.dtype().tensor_type())
            == Some(ort::value::TensorElementType::Float32);
        Ok(Self {
            session,
            provider,
            batch_size: batch_size.max(1),
            float_input,
        })
    }

    /// Images per run of the network.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The execution provider the network runs on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Whether the graph takes float levels (see [`Inception::features_f32`]); exports made
    /// before that take bytes only.
    pub fn takes_float(&self) -> bool {
        self.float_input
    }

    /// Features of `images`: uint8 [N, H, W, 3], run in batches.
    pub fn features(&mut self, images: ArrayView4<'_, u8>) -> Result<InceptionFeatures, EvalError> {
        self.features_reporting(images, &mut |_| {})
    }

    /// [`Inception::features`], calling `done(images)` after each batch (a progress bar: at
    /// 14 images/s on a CPU, 50,000 samples take an hour).
    pub fn features_reporting(
        &mut self,
        images: ArrayView4<'_, u8>,
        done: &mut dyn FnMut(usize),
    ) -> Result<InceptionFeatures, EvalError> {
        let float_input = self.float_input;
        self.run_batches(images.dim(), done, &mut |session, range| {
            let batch = images.slice(s![range, .., .., ..]);
            if float_input {
                let batch = batch.mapv(f32::from);
                let input = TensorRef::from_array_view(batch.view()).map_err(ort_error)?;
                session
                    .run(ort::inputs!["images" => input])
                    .map_err(ort_error)
                    .map(collect_outputs)?
            } else {
                let batch = batch.as_standard_layout().into_owned();
                let input = TensorRef::from_array_view(batch.view()).map_err(ort_error)?;
                session
                    .run(ort::inputs!["images" => input])
                    .map_err(ort_error)
                    .map(collect_outputs)?
            }
        })
    }

    /// Features of float images: [N, H, W, 3] levels in [0, 255], not quantised (clean-fid's
    /// "clean" resize to 299 x 299, which the graph's own resize then leaves as it is).
    pub fn features_f32(
        &mut self,
        images: ArrayView4<'_, f32>,
        done: &mut dyn FnMut(usize),
    ) -> Result<InceptionFeatures, EvalError> {
        if !self.float_input {
            return Err(EvalError::Invalid(
                "this Inception export takes bytes only; export it again with scripts/export_inception.py for float input (clean-fid's resize)".into(),
            ));
        }
        self.run_batches(images.dim(), done, &mut |session, range| {
            let batch = images
                .slice(s![range, .., .., ..])
                .as_standard_layout()
                .into_owned();
            let input = TensorRef::from_array_view(batch.view()).map_err(ort_error)?;
            session
                .run(ort::inputs!["images" => input])
                .map_err(ort_error)
                .map(collect_outputs)?
        })
    }

    /// Runs `run` over batches of `dim`'s images and gathers its outputs.
    #[allow(clippy::type_complexity)]
    fn run_batches(
        &mut self,
        dim: (usize, usize, usize, usize),
        done: &mut dyn FnMut(usize),
        run: &mut dyn FnMut(
            &mut Session,
            std::ops::Range<usize>,
        ) -> Result<[Array2<f32>; 3], EvalError>,
    ) -> Result<InceptionFeatures, EvalError> {
        let (n, h, w, c) = dim;
        if c != 3 || h == 0 || w == 0 {
            return Err(EvalError::Shape {
                what: "images",
                expected: "[N, H, W, 3] with H, W > 0".into(),
                got: format!("{dim:?}"),
            });
        }
        let mut out = InceptionFeatures::zeros(n);
        for start in (0..n).step_by(self.batch_size) {
            let end = (start + self.batch_size).min(n);
            let [pool, spatial, logits] = run(&mut self.session, start..end)?;
            for (name, target, values, dim) in [
                ("pool", &mut out.pool, pool, POOL_DIM),
                ("spatial", &mut out.spatial, spatial, SPATIAL_DIM),
                ("logits", &mut out.logits, logits, LOGITS_DIM),
            ] {
                if values.dim() != (end - start, dim) {
                    return Err(EvalError::Invalid(format!(
                        "output {name}: {:?} for {} images",
                        values.dim(),
                        end - start
                    )));
                }
                target.slice_mut(s![start..end, ..]).assign(&values);
            }
            done(end - start);
        }
        if out.pool.iter().any(|v| !v.is_finite()) {
            return Err(EvalError::NonFinite("Inception pool features"));
        }
        Ok(out)
    }
}

/// The three outputs of one run, as [rows, dim] arrays.
fn collect_outputs(
    result: ort::session::SessionOutputs<'_>,
) -> Result<[Array2<f32>; 3], EvalError> {
    let get = |name: &str| -> Result<Array2<f32>, EvalError> {
        result[name]
            .try_extract_array::<f32>()
            .map_err(ort_error)?
            .into_dimensionality::<ndarray::Ix2>()
            .map(|v| v.to_owned())
            .map_err(|e| EvalError::Invalid(format!("output {name}: {e}")))
    };
    Ok([get("pool")?, get("spatial")?, get("logits")?])
}

/// Exports the FID Inception with seeded random weights by running `scripts/export_inception.py`
/// of the repository at `root` in its virtualenv (for tests, benchmarks and the demo, where the
/// real weights cannot be downloaded). `extra` arguments are passed on to the script.
pub fn export_random_weights(
    root: &Path,
    out: &Path,
    seed: u64,
    extra: &[&OsStr],
) -> Result<(), EvalError> {
    let script = root.join("scripts/export_inception.py");
    let result = Command::new(root.join(".venv/bin/python"))
        .arg(&script)
        .arg("--random-weights")
        .arg(seed.to_string())
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .map_err(|e| EvalError::File {
            path: script.clone(),
            message: format!("running it (scripts/setup.sh installs its virtualenv): {e}"),
        })?;
    if !result.status.success() {
        return Err(EvalError::File {
            path: script,
            message: format!(
                "export failed:\n{}",
                String::from_utf8_lossy(&result.stderr)
            ),
        });
    }
    Ok(())
}

fn ort_error(e: ort::Error) -> EvalError {
    EvalError::Invalid(format!("ONNX Runtime: {e}"))
}

/// Stacks same-sized images [H, W, 3] into one batch [N, H, W, 3].
pub fn stack(images: &[ndarray::Array3<u8>]) -> Result<ndarray::Array4<u8>, EvalError> {
    let views: Vec<_> = images
        .iter()
        .map(|i| i.view().insert_axis(Axis(0)))
        .collect();
    ndarray::concatenate(Axis(0), &views)
        .map_err(|e| EvalError::Invalid(format!("images of different sizes: {e}")))
}
