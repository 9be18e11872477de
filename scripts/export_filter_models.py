"""ONNX exports of the post-download filter's scorers, for `llamagen filter`.

Writes into OUT:
  clip_image.onnx   pixel_values f32 [B, 3, S, S] (normalised) -> image_embeds f32 [B, D]
  clip_text.onnx    input_ids i64 [B, 77]                      -> text_embeds f32 [B, D]
  clip_tokenizer.json  CLIP's BPE as a Hugging Face `tokenizers` file, built from the
                    vocabulary that ships inside open_clip (no download)
  aesthetic.onnx    image_embeds f32 [B, D] -> score f32 [B] (L2-normalises, then LAION's MLP)
  watermark.onnx    pixel_values f32 [B, 3, 256, 256] -> watermark f32 [B] (probability)
  filter_models.json  what the Rust side needs to feed them (sizes, means, stds, dims)

Real weights (on a machine that has them):
  .venv/bin/python scripts/export_filter_models.py OUT \
      --clip-model ViT-L-14 --clip-weights ViT-L-14.pt \
      --aesthetic-weights sac+logos+ava1-l14-linearMSE.pth \
      --watermark-weights watermark_model_v1.pt
(open_clip's OpenAI ViT-L/14; the improved LAION aesthetic predictor; LAION-5B's watermark
detector, timm efficientnet_b3a with its three-layer head.)

Random weights of the same architectures, small enough to commit (the tests):
  .venv/bin/python scripts/export_filter_models.py filter/tests/fixtures/models --tiny-random
and --fixtures DIR also writes the Python reference's preprocessing, tokens and scores on real
photos (scikit-image's chelsea, coffee and astronaut) for the parity test. --random-arch
ViT-B-32 exports that architecture with random weights (the benchmark).
"""

import argparse
import gzip
import json
import os
import pathlib

import numpy as np
import onnx
import open_clip
import timm
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T

IR_VERSION = 10
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageTower(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values):
        return self.clip.encode_image(pixel_values)


class TextTower(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids):
        return self.clip.encode_text(input_ids)


class Aesthetic(nn.Module):
    """christophschuhmann/improved-aesthetic-predictor's MLP (its layer names, so its .pth
    loads), applied to the L2-normalised CLIP image embedding as its inference script does."""

    def __init__(self, dim):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, image_embeds):
        x = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        return self.layers(x)[:, 0]


class Watermark(nn.Module):
    """LAION-5B-WatermarkDetection: efficientnet_b3a with a 3-layer head; the probability of
    class 0 (watermark) after a softmax."""

    def __init__(self, tiny):
        super().__init__()
        if tiny:
            from timm.models.efficientnet import _gen_efficientnet
            self.net = _gen_efficientnet("efficientnet_b3a", channel_multiplier=0.25,
                                         depth_multiplier=0.25, pretrained=False)
        else:
            self.net = timm.create_model("efficientnet_b3a", pretrained=False, num_classes=2)
        features = self.net.classifier.in_features
        self.net.classifier = nn.Sequential(
            nn.Linear(features, 625), nn.ReLU(), nn.Dropout(p=0.3), nn.Linear(625, 256),
            nn.ReLU(), nn.Linear(256, 2))

    def forward(self, pixel_values):
        return torch.softmax(self.net(pixel_values), dim=1)[:, 0]


def export(model, example, path, input_name, output_name):
    # The fused attention kernel of eval mode has no ONNX symbolic; the plain path is the same math.
    torch.backends.mha.set_fastpath_enabled(False)
    tmp = path.with_suffix(".onnx.tmp")
    torch.onnx.export(model.eval(), (example,), str(tmp), input_names=[input_name],
                      output_names=[output_name],
                      dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                      opset_version=17, dynamo=False)
    proto = onnx.load(str(tmp))
    proto.ir_version = min(proto.ir_version, IR_VERSION)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)


def bytes_to_unicode():
    """GPT-2's byte to printable character table, which CLIP's BPE uses."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_tokenizer_json(path):
    """CLIP's tokenizer as a `tokenizers` file, from the BPE table that open_clip ships; the
    same pipeline as Hugging Face's CLIPTokenizerFast (NFC, collapsed white space, lower case,
    CLIP's word regex, byte-level alphabet, `</w>` word ends, start and end tokens)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    bpe_path = os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {token: i for i, token in enumerate(vocab)}
    tok = Tokenizer(models.BPE(vocab=ids, merges=merges, unk_token="<|endoftext|>",
                               end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        special_tokens=[("<|startoftext|>", ids["<|startoftext|>"]),
                        ("<|endoftext|>", ids["<|endoftext|>"])])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|startoftext|>", "<|endoftext|>"])
    tok.save(str(path))


def build(args):
    if args.tiny_random:
        torch.manual_seed(args.seed)
        vision = open_clip.model.CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=32,
                                               image_size=224)
        text = open_clip.model.CLIPTextCfg(context_length=77, vocab_size=49408, width=16,
                                           heads=2, layers=1)
        clip = open_clip.model.CLIP(embed_dim=24, vision_cfg=vision, text_cfg=text)
    elif args.random_arch:
        torch.manual_seed(args.seed)
        clip = open_clip.create_model(args.random_arch, pretrained=None)
    else:
        clip = open_clip.create_model(args.clip_model, pretrained=str(args.clip_weights))
    clip.eval()
    size = clip.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    dim = clip.text_projection.shape[1] if isinstance(clip.text_projection, torch.Tensor) \
        else clip.text_projection.out_features
    aesthetic = Aesthetic(dim)
    watermark = Watermark(tiny=args.tiny_random)
    if args.aesthetic_weights:
        aesthetic.load_state_dict(torch.load(args.aesthetic_weights, map_location="cpu"))
    if args.watermark_weights:
        watermark.net.load_state_dict(torch.load(args.watermark_weights, map_location="cpu"))
    return clip, size, dim, aesthetic.eval(), watermark.eval()


def reference_preprocess(size):
    """open_clip's eval transform for OpenAI CLIP (Resize(size, bicubic) of the short side,
    CenterCrop(size)) and LAION's watermark transform (Resize((256, 256)), bilinear)."""
    clip = open_clip.image_transform(size, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                     std=open_clip.OPENAI_DATASET_STD)
    watermark = T.Compose([T.Resize((256, 256)), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return clip, watermark


def fixtures(out, models, size, photos, captions):
    """The reference's numbers on real photos: the uint8 views before normalisation, the
    normalised tensors' scores through onnxruntime, and open_clip's tokens."""
    import onnxruntime as ort
    clip_t, wm_t = reference_preprocess(size)
    crop = T.Compose(clip_t.transforms[:2])  # resize + center crop, still a PIL image
    images = [Image.open(p).convert("RGB") for p in photos]
    clip_u8 = np.stack([np.asarray(crop(im)) for im in images])
    wm_u8 = np.stack([np.asarray(T.Resize((256, 256))(im)) for im in images])
    pixels = torch.stack([clip_t(im) for im in images]).numpy()
    wm_pixels = torch.stack([wm_t(im) for im in images]).numpy()
    tokens = open_clip.tokenize(captions).numpy().astype(np.int64)
    pairs = len(images)  # caption i describes photo i; the rest only test the tokenizer
    run = lambda name, x: ort.InferenceSession(str(models / name)).run(None, x)[0]
    image_embeds = run("clip_image.onnx", {"pixel_values": pixels})
    text_embeds = run("clip_text.onnx", {"input_ids": tokens})
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    similarity = (unit(image_embeds) * unit(text_embeds[:pairs])).sum(-1)
    aesthetic = run("aesthetic.onnx", {"image_embeds": image_embeds})
    watermark = run("watermark.onnx", {"pixel_values": wm_pixels})
    np.savez(out / "reference.npz", clip_u8=clip_u8, watermark_u8=wm_u8,
                        tokens=tokens, image_embeds=image_embeds, text_embeds=text_embeds,
                        similarity=similarity.astype(np.float32), aesthetic=aesthetic,
                        watermark=watermark)
    (out / "captions.json").write_text(json.dumps(captions, indent=1, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--clip-model", default="ViT-L-14")
    ap.add_argument("--clip-weights", type=pathlib.Path)
    ap.add_argument("--aesthetic-weights", type=pathlib.Path)
    ap.add_argument("--watermark-weights", type=pathlib.Path)
    ap.add_argument("--tiny-random", action="store_true")
    ap.add_argument("--random-arch", help="an open_clip architecture with random weights")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fixtures", type=pathlib.Path, help="also write reference numbers here")
    args = ap.parse_args()
    if not (args.tiny_random or args.random_arch or args.clip_weights):
        ap.error("give --clip-weights (and the others), --tiny-random or --random-arch")

    args.out.mkdir(parents=True, exist_ok=True)
    clip, size, dim, aesthetic, watermark = build(args)
    with torch.no_grad():
        export(ImageTower(clip), torch.zeros(2, 3, size, size), args.out / "clip_image.onnx",
               "pixel_values", "image_embeds")
        export(TextTower(clip), torch.zeros(2, 77, dtype=torch.int64), args.out / "clip_text.onnx",
               "input_ids", "text_embeds")
        export(aesthetic, torch.ones(2, dim), args.out / "aesthetic.onnx", "image_embeds", "score")
        export(watermark, torch.zeros(2, 3, 256, 256), args.out / "watermark.onnx",
               "pixel_values", "watermark")
    clip_tokenizer_json(args.out / "clip_tokenizer.json")
    (args.out / "filter_models.json").write_text(json.dumps({
        "clip_image_size": size, "clip_mean": list(open_clip.OPENAI_DATASET_MEAN),
        "clip_std": list(open_clip.OPENAI_DATASET_STD), "embed_dim": dim, "context_length": 77,
        "watermark_size": 256, "watermark_mean": list(IMAGENET_MEAN),
        "watermark_std": list(IMAGENET_STD),
        "source": "tiny random" if args.tiny_random else (args.random_arch or args.clip_model),
    }, indent=1) + "\n")

    if args.fixtures:
        import skimage.data
        args.fixtures.mkdir(parents=True, exist_ok=True)
        photos = []
        for name, array in [("chelsea", skimage.data.chelsea()), ("coffee", skimage.data.coffee()[::2, ::2]),
                            ("astronaut", skimage.data.astronaut()[:150, 20:230])]:
            path = args.fixtures / f"{name}.png"
            Image.fromarray(np.ascontiguousarray(array)).save(path)
            photos.append(path)
        captions = [
            "A cat lying on a wooden floor, looking at the camera.",
            "A red cup of coffee with latte art on a saucer",
            "Astronaut Eileen Collins in her orange flight suit, U.S. flag behind her!",
            "Ünïcödé café   NAÏVE  it's 3.5kg!! <b>bold</b> &amp; 日本語",
            " ".join(["a very long caption"] * 30),
        ]
        fixtures(args.fixtures, args.out, size, photos, captions)


if __name__ == "__main__":
    main()
