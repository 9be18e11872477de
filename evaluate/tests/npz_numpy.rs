//! ADM-style npz files exchanged with numpy in both directions: numpy's `np.savez` batches are
//! read a chunk at a time, ours (zip64 `arr_0`, written one image at a time) load in numpy with
//! the same bytes, and a compressed batch is refused by name.

use std::path::{Path, PathBuf};
use std::process::Command;

use llamagen_evaluate::EvalError;
use llamagen_evaluate::frechet::Statistics;
use llamagen_evaluate::npz::{NpzImages, NpzWriter, read_reference};
use ndarray::{Array1, Array2, Array4};

fn python(code: &str, path: &Path) -> String {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(repo.join(".venv/bin/python"))
        .arg("-c")
        .arg(code)
        .arg(path)
        .output()
        .expect("the project's virtualenv (scripts/setup.sh)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The images numpy's scripts below make: arr_0[i, y, x, c] = (i * 31 + y * 7 + x * 3 + c) % 256.
fn pattern(n: usize, h: usize, w: usize) -> Array4<u8> {
    Array4::from_shape_fn((n, h, w, 3), |(i, y, x, c)| {
        ((i * 31 + y * 7 + x * 3 + c) % 256) as u8
    })
}

const MAKE: &str = "
import sys, numpy as np
i, y, x, c = np.indices((9, 6, 10, 3))
np.savez(sys.argv[1], arr_0=((i * 31 + y * 7 + x * 3 + c) % 256).astype(np.uint8),
         mu=np.arange(2.0), sigma=np.eye(2))
";

#[test]
fn numpy_batches_are_read_a_chunk_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ref.npz");
    python(MAKE, &path);
    let npz = NpzImages::open(&path).unwrap().unwrap();
    assert_eq!((npz.len(), npz.image_size()), (9, (6, 10)));
    let expected = pattern(9, 6, 10);
    let mut rows = 0;
    npz.read_chunks::<EvalError>(1..9, 4, &mut |first, images| {
        let k = images.dim().0;
        assert_eq!(
            images,
            expected.slice(ndarray::s![first..first + k, .., .., ..])
        );
        rows += k;
        Ok(())
    })
    .unwrap();
    assert_eq!(rows, 8);
    assert_eq!(read_reference(&path).unwrap().pool.unwrap().mu.len(), 2);

    let compressed = dir.path().join("compressed.npz");
    python(
        "import sys, numpy as np; np.savez_compressed(sys.argv[1], arr_0=np.zeros((2, 4, 4, 3), np.uint8))",
        &compressed,
    );
    let err = NpzImages::open(&compressed).unwrap_err().to_string();
    assert!(err.contains("np.savez_compressed"), "{err}");
}

#[test]
fn numpy_loads_what_we_write_one_image_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("samples.npz");
    let images = pattern(5, 6, 10);
    let mut writer = NpzWriter::create(&path, Some((5, 6, 10))).unwrap();
    for image in images.outer_iter() {
        writer.push(image).unwrap();
    }
    let stats = Statistics {
        mu: Array1::from(vec![1.5, -2.0]),
        sigma: Array2::from_shape_vec((2, 2), vec![2.0, 0.5, 0.5, 1.0]).unwrap(),
        low_rank: None,
    };
    writer.finish(None, Some(&stats)).unwrap();
    let seen = python(
        "
import sys, numpy as np
f = np.load(sys.argv[1])
a = f['arr_0']
i, y, x, c = np.indices((5, 6, 10, 3))
print(sorted(f.files), a.dtype, a.shape, a.flags['C_CONTIGUOUS'],
      bool((a == (i * 31 + y * 7 + x * 3 + c) % 256).all()),
      f['mu_s'].tolist(), f['sigma_s'].tolist())
",
        &path,
    );
    assert_eq!(
        seen,
        "['arr_0', 'mu_s', 'sigma_s'] uint8 (5, 6, 10, 3) True True [1.5, -2.0] [[2.0, 0.5], [0.5, 1.0]]"
    );
}
