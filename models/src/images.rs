//! Pixel conversions exactly as LlamaGen's data loaders and samplers do them.

use tch::{Kind, Tensor};

/// [B, H, W, 3] uint8 -> [B, 3, H, W] f32 in [-1, 1], as torchvision's `ToTensor` followed by
/// `Normalize(mean=0.5, std=0.5)` (same operation order, so the same rounding).
pub fn from_uint8_nhwc(images: &Tensor) -> Tensor {
    ((images.permute([0, 3, 1, 2]).to_kind(Kind::Float) / 255.0) - 0.5) / 0.5
}

/// [B, 3, H, W] decoder output in [-1, 1] -> [B, H, W, 3] uint8 on the CPU, as LlamaGen's
/// sampling scripts: clamp(127.5 x + 128, 0, 255) then truncation (not rounding) to uint8.
pub fn to_uint8_nhwc(images: &Tensor) -> Tensor {
    (images.to_kind(Kind::Float) * 127.5 + 128.0)
        .clamp(0.0, 255.0)
        .permute([0, 2, 3, 1])
        .to_device(tch::Device::Cpu)
        .to_kind(Kind::Uint8)
        .contiguous()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llamagen_rounding() {
        let x = Tensor::from_slice(&[-1.0f32, -0.5, 0.0, 0.999, 1.0, 2.0]).view([1, 3, 1, 2]);
        let u = to_uint8_nhwc(&x);
        assert_eq!(u.size(), [1, 1, 2, 3]);
        let v = Vec::<u8>::try_from(&u.view([-1])).unwrap();
        // NHWC order: pixel 0 has channels (-1, 0, 1), pixel 1 (-0.5, 0.999, 2).
        assert_eq!(v, [0, 128, 255, 64, 255, 255]);
        let back = from_uint8_nhwc(&Tensor::from_slice(&[0u8, 255, 128]).view([1, 1, 1, 3]));
        let b = Vec::<f32>::try_from(&back.view([-1])).unwrap();
        assert_eq!(b[0], -1.0);
        assert_eq!(b[1], 1.0);
    }
}
