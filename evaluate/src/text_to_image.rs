//! The text-to-image protocol of LlamaGen's `evaluations/t2i/evaluation.py` (GigaGAN's), image
//! by image and token by token, so our FID, CLIP-FID and CLIP score sit next to theirs:
//!
//! 1. Every image, generated or reference, is first cropped to its centre square
//!    (`CenterCropLongEdge`) and resized to the evaluation resolution (256) with Pillow's
//!    LANCZOS: [`eval_view`].
//! 2. FID: clean-fid's "clean" mode on that view: each channel resized to 299 x 299 as a
//!    float image with Pillow's BICUBIC, clipped to [0, 255], never quantised
//!    ([`clean_resize`]), then the Inception.
//! 3. CLIP-FID: clean-fid's `clip_vit_b_32` mode: CLIP's own preprocessing on the view (short
//!    side to 224, bicubic, centre crop), the image tower's embedding as the feature.
//! 4. CLIP score (generated images only): the view normalised to [-1, 1] and turned back into
//!    bytes as `tensor2pil` does it (truncating, so a level can drop by one), CLIP's
//!    preprocessing, and the caption tokenized with "A photo depicts " spliced in after the
//!    start token; the score is the cosine of the two embeddings, averaged over images
//!    ([`clip_scores`]). It is the cosine, not 100 x the cosine as some papers print it.

use llamagen_clip::Clip;
use llamagen_clip::preprocess::clip_view;
use llamagen_clip::tokenizer::ClipTokenizer;
use llamagen_imaging::pillow::{Filter, crop_long_edge, resize, resize_f32};
use ndarray::{Array2, Array3, ArrayView3, s};

use crate::EvalError;

/// The evaluation resolution of the protocol (`--eval_res 256`).
pub const EVAL_RESOLUTION: usize = 256;
/// clean-fid's Inception input side.
pub const INCEPTION_SIZE: usize = 299;
/// What LlamaGen's CLIP score splices in after the start token (after arXiv 2104.08718).
pub const CLIP_SCORE_PREFIX: &str = "A photo depicts ";

fn check_rgb(image: ArrayView3<'_, u8>) -> Result<(), EvalError> {
    let (h, w, c) = image.dim();
    if h == 0 || w == 0 || c != 3 {
        return Err(EvalError::Shape {
            what: "image",
            expected: "[H, W, 3] with H, W > 0".into(),
            got: format!("{:?}", image.dim()),
        });
    }
    Ok(())
}

/// The protocol's first step: the centre square, resized to `resolution` with Pillow's LANCZOS
/// (not resized when it already has that side). image: [H, W, 3] u8; returns
/// [resolution, resolution, 3] u8.
pub fn eval_view(image: ArrayView3<'_, u8>, resolution: usize) -> Result<Array3<u8>, EvalError> {
    check_rgb(image)?;
    let square = crop_long_edge(image);
    if square.dim().0 == resolution {
        return Ok(square);
    }
    Ok(resize(
        square.view(),
        resolution,
        resolution,
        Filter::Lanczos,
    ))
}

/// clean-fid's "clean" resize: each channel as a float image resized with Pillow's BICUBIC to
/// `size` x `size`, clipped to [0, 255]. image: [H, W, 3] u8; returns [size, size, 3] f32 in
/// [0, 255], what clean-fid feeds its Inception.
pub fn clean_resize(image: ArrayView3<'_, u8>, size: usize) -> Result<Array3<f32>, EvalError> {
    check_rgb(image)?;
    let mut out = Array3::<f32>::zeros((size, size, 3));
    for c in 0..3 {
        let plane = image.slice(s![.., .., c]).mapv(f32::from);
        let resized = resize_f32(plane.view(), size, size, Filter::Bicubic);
        out.slice_mut(s![.., .., c])
            .zip_mut_with(&resized, |o, &v| *o = v.clamp(0.0, 255.0));
    }
    Ok(out)
}

/// The bytes LlamaGen's CLIP score hands to CLIP's preprocessing: `ToTensor`, `Normalize(0.5,
/// 0.5)`, then `tensor2pil` (`((x + 1) * 127.5).clamp(0, 255).to(uint8)`, which truncates), all
/// in float32 as torch computes them. image: [H, W, 3] u8; returns the same shape.
pub fn tensor_round_trip(image: ArrayView3<'_, u8>) -> Array3<u8> {
    image.mapv(|v| {
        let x = (f32::from(v) / 255.0 - 0.5) / 0.5;
        ((x + 1.0) * 127.5).clamp(0.0, 255.0) as u8
    })
}

/// Caption tokens as LlamaGen's CLIP score builds them: `clip.tokenize(captions, truncate)`,
/// the three tokens of [`CLIP_SCORE_PREFIX`] inserted after the start token, cut back to the
/// context, and the last column set to the end token where it holds a token.
/// Returns [N, context] i64.
pub fn clip_score_tokens(
    tokenizer: &ClipTokenizer,
    captions: &[&str],
) -> Result<Array2<i64>, EvalError> {
    let clip_error = |e: llamagen_clip::ClipError| EvalError::Invalid(e.to_string());
    let tokens = tokenizer.encode(captions).map_err(clip_error)?;
    let prefix = tokenizer.encode(&[CLIP_SCORE_PREFIX]).map_err(clip_error)?;
    let prefix = prefix.row(0);
    let end = tokenizer.end_token();
    let context = tokens.ncols();
    let mut out = Array2::<i64>::zeros(tokens.dim());
    for (row, caption) in tokens.outer_iter().enumerate() {
        let spliced = caption
            .iter()
            .take(1)
            .chain(prefix.iter().skip(1).take(3))
            .chain(caption.iter().skip(1))
            .take(context);
        for (col, &id) in spliced.enumerate() {
            out[[row, col]] = id;
        }
        if out[[row, context - 1]] > 0 {
            out[[row, context - 1]] = i64::from(end);
        }
    }
    Ok(out)
}

/// CLIP scores of generated images and their captions, one cosine per image, as LlamaGen's
/// `compute_clip_score` computes them. views: N x [R, R, 3] u8, the images' [`eval_view`]s;
/// returns [N].
pub fn clip_scores(
    clip: &mut Clip,
    views: &[ArrayView3<'_, u8>],
    captions: &[&str],
) -> Result<Vec<f32>, EvalError> {
    if views.len() != captions.len() {
        return Err(EvalError::Invalid(format!(
            "{} images but {} captions",
            views.len(),
            captions.len()
        )));
    }
    let size = clip.spec.clip_image_size;
    let clip_views = views
        .iter()
        .map(|view| {
            clip_view(tensor_round_trip(*view).view(), size)
                .map_err(|e| EvalError::Invalid(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tokens = clip_score_tokens(clip.tokenizer(), captions)?;
    let model_error = |e: llamagen_clip::ClipError| EvalError::Invalid(e.to_string());
    let image_embeds = clip.image_embeds(&clip_views).map_err(model_error)?;
    let text_embeds = clip
        .text_embeds_of_ids(tokens.view())
        .map_err(model_error)?;
    let scores: Vec<f32> = image_embeds
        .outer_iter()
        .zip(text_embeds.outer_iter())
        .map(|(i, t)| llamagen_clip::cosine(i, t))
        .collect();
    if scores.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite("CLIP scores"));
    }
    Ok(scores)
}

/// CLIP-FID features (clean-fid's `clip_vit_b_32` mode): CLIP's preprocessing of each view, the
/// image tower. views: N x [R, R, 3] u8, the images' [`eval_view`]s; returns [N, D].
pub fn clip_features(
    clip: &mut Clip,
    views: &[ArrayView3<'_, u8>],
) -> Result<Array2<f32>, EvalError> {
    let size = clip.spec.clip_image_size;
    let clip_views = views
        .iter()
        .map(|view| clip_view(*view, size).map_err(|e| EvalError::Invalid(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let features = clip
        .image_embeds(&clip_views)
        .map_err(|e| EvalError::Invalid(e.to_string()))?;
    if features.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite("CLIP features"));
    }
    Ok(features)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_round_trip_truncates_where_float32_falls_short() {
        let all = Array3::from_shape_fn((16, 16, 3), |(y, x, _)| (y * 16 + x) as u8);
        let back = tensor_round_trip(all.view());
        // Never up, at most one level down, and some levels do drop: the quirk is real.
        let mut dropped = 0;
        for (a, b) in all.iter().zip(back.iter()) {
            assert!(*b == *a || *b + 1 == *a, "{a} -> {b}");
            dropped += usize::from(b != a);
        }
        assert!(dropped > 0 && dropped < 256 * 3);
    }

    #[test]
    fn views_have_the_protocol_shapes() {
        let image = Array3::from_shape_fn((40, 70, 3), |(y, x, c)| (y * 3 + x + c) as u8);
        let v = eval_view(image.view(), 32).unwrap();
        assert_eq!(v.dim(), (32, 32, 3));
        let f = clean_resize(v.view(), 45).unwrap();
        assert_eq!(f.dim(), (45, 45, 3));
        assert!(f.iter().all(|v| (0.0..=255.0).contains(v)));
        let flat = Array3::from_elem((30, 20, 3), 77u8);
        assert!(
            clean_resize(flat.view(), 299)
                .unwrap()
                .iter()
                .all(|&v| (v - 77.0).abs() < 1e-3)
        );
        assert!(eval_view(Array3::zeros((0, 3, 3)).view(), 8).is_err());
    }
}
