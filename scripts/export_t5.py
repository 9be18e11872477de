"""ONNX export of FLAN-T5's encoder and its tokenizer, for `llamagen encode t5`.

Writes into OUT:
  t5_encoder.onnx   input_ids i64 [B, L], attention_mask i64 [B, L]
                    -> last_hidden_state f32 [B, L, D]  (B and L dynamic)
                    (+ t5_encoder.onnx.data beside it when the weights pass 2 GB, as XL's do)
  tokenizer.json    the SentencePiece tokenizer as a Hugging Face `tokenizers` file
  t5_encoder.json   what the Rust side checks: d_model, vocab size, pad and eos ids, source

Real weights (a Hugging Face folder such as google/flan-t5-xl, as LlamaGen's
pretrained_models/t5-ckpt/flan-t5-xl holds it):
  .venv/bin/python scripts/export_t5.py weights/flan-t5-xl-onnx --model pretrained_models/t5-ckpt/flan-t5-xl

Random weights, small enough to commit (the tests and the demo):
  .venv/bin/python scripts/export_t5.py encode/tests/fixtures/t5 --tiny-random \
      --fixtures encode/tests/fixtures --llamagen /path/to/LlamaGen
--fixtures writes what LlamaGen's own T5Embedder (language/t5.py, from the checkout given by
--llamagen, with its caption cleaning) makes of a list of hostile captions, batch size 1 as
language/extract_t5_feature.py runs it: the cleaned text, the 120 token ids and the valid
tokens' embeddings. --random-arch flan-t5-base exports that architecture with random weights
(the benchmark; --save-pytorch DIR keeps the PyTorch original for its Python side). The random models use a SentencePiece unigram vocabulary trained here on the
caption corpus below, since T5's own vocabulary cannot be downloaded on the build machines.
"""

import argparse
import io
import json
import pathlib
import sys
import tempfile

import numpy as np
import onnx
import torch
from torch import nn

IR_VERSION = 10
MAX_LENGTH = 120

# flan-t5 configurations (encoder side) from their config.json files.
ARCHS = {
    "tiny": dict(d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2),
    "flan-t5-small": dict(d_model=512, d_kv=64, num_heads=6, d_ff=1024, num_layers=8),
    "flan-t5-base": dict(d_model=768, d_kv=64, num_heads=12, d_ff=2048, num_layers=12),
    "flan-t5-xl": dict(d_model=2048, d_kv=64, num_heads=32, d_ff=5120, num_layers=24),
}

CORPUS = """
A photo of a cat sitting on a red couch next to a window.
Two dogs are playing in the snow near a wooden fence.
The image shows a busy city street at night with cars and bright lights.
A woman in a blue dress holds an umbrella while walking in the rain.
A plate of pasta with tomato sauce, basil leaves and grated cheese on a white table.
An aerial view of a mountain lake surrounded by pine trees and rocky peaks.
The living room has a grey sofa, a coffee table, a lamp and several plants.
A vintage car parked in front of an old brick building with green doors.
A close-up of a bee collecting pollen from a yellow sunflower.
Children are flying colorful kites on a sandy beach under a clear sky.
A bowl of fresh fruit including apples, bananas, oranges and grapes.
The astronaut floats in space above the Earth, wearing a white suit and helmet.
A small boat is sailing on calm water during a golden sunset.
Three people are sitting at a table in a cafe, drinking coffee and talking.
A black and white photograph of a train station with a large clock.
The kitchen features wooden cabinets, a stainless steel refrigerator and a tiled floor.
A bicycle leaning against a stone wall covered in ivy.
A snowy village with small houses, smoke rising from the chimneys.
An illustration of a dragon flying over a castle on a hill.
A man in a suit is giving a presentation in front of a screen with charts.
Free shipping on all orders, click for details, 100% cotton t-shirt, size 10x20 cm.
The logo of the company is printed in large letters on the side of the building.
A cup of tea on a saucer, with a slice of lemon and a silver spoon.
A field of tulips in many colors stretching to the horizon under a cloudy sky.
The bedroom has a large bed with white sheets, two pillows and a wooden headboard.
A group of students in a classroom listening to a teacher at the blackboard.
A red fox walking through a forest covered with autumn leaves.
A poster for a music festival with bold text, stars and a guitar.
The bridge crosses a wide river, and the city skyline is visible in the distance.
A close-up portrait of an elderly man with a grey beard and glasses, smiling.
"""


class Encoder(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def trained_tokenizer(vocab_size):
    """A T5-style SentencePiece unigram tokenizer (pad 0, eos 1, unk 2, 100 extra ids at the
    end in reverse order, T5's post-processor appending </s>) trained on CORPUS."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2
    from transformers import T5Tokenizer

    lines = [line for line in CORPUS.strip().splitlines() if line]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 4), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        hard_vocab_limit=False, character_coverage=1.0, minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    vocab = [(p.piece, p.score) for p in proto.pieces]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5Tokenizer(vocab=vocab, extra_ids=100,
                       _spm_precompiled_charsmap=proto.normalizer_spec.precompiled_charsmap)


def random_model(arch, vocab_size, seed):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    config = T5Config(vocab_size=vocab_size, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                      relative_attention_num_buckets=32, relative_attention_max_distance=128,
                      tie_word_embeddings=False, **ARCHS[arch])
    model = T5EncoderModel(config).eval()
    # T5's init draws tiny weights for every layer alike; spread them so that a wrong layer,
    # a missing bias or a misplaced mask shows in the parity test.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5 if p.dim() == 1 else 1.0 / max(p.shape[-1], 1) ** 0.5)
    return model


def export(model, out, external_data):
    """Writes OUT/t5_encoder.onnx; with `external_data` (forced above 2 GB, where protobuf
    stops) the weights go to OUT/t5_encoder.onnx.data beside it. The exporter works in a
    scratch folder inside OUT, so a failed export leaves nothing behind and the tensor files
    it spills for large models never mix with the result."""
    ids = torch.ones(2, 7, dtype=torch.long)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 4:] = 0
    big = sum(p.numel() for p in model.parameters()) * 4 > 1.8e9
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as work:
        tmp = pathlib.Path(work) / "t5_encoder.onnx"
        torch.onnx.export(Encoder(model).eval(), (ids, mask), str(tmp),
                          input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                        "attention_mask": {0: "batch", 1: "tokens"},
                                        "last_hidden_state": {0: "batch", 1: "tokens"}},
                          opset_version=17, dynamo=False)
        proto = onnx.load(str(tmp))
        proto.ir_version = min(proto.ir_version, IR_VERSION)
        staged = pathlib.Path(work) / "out.onnx"
        if big or external_data:
            onnx.save(proto, str(staged), save_as_external_data=True,
                      all_tensors_to_one_file=True, location="t5_encoder.onnx.data")
            onnx.checker.check_model(str(staged))
            (pathlib.Path(work) / "t5_encoder.onnx.data").replace(out / "t5_encoder.onnx.data")
        else:
            onnx.checker.check_model(proto)
            onnx.save(proto, str(staged))
        staged.replace(out / "t5_encoder.onnx")


def hostile_captions():
    """Captions that exercise every step of LlamaGen's clean_caption and the tokenizer."""
    long = " ".join(CORPUS.strip().splitlines()[:12])
    return [
        "A photo of a cat sitting on a red couch next to a window.",
        "  Two DOGS playing in the snow  ",
        "Visit https://example.com/shop?id=3 or www.shop.net/items for more!",
        "<p>A <b>bold</b> title</p> &amp; &quot;quoted&quot; text &lt;tag&gt;",
        "@nickname shared a photo of 北京 at night — very «nice» “view” ‘indeed’",
        "IMG_1234.jpg downloaded from 192.168.0.1 #123 #123456 item 1234567 page 12",
        "this-is-my-cute-cat_with_many_dashes-and_underscores",
        "Free shipping worldwide! Click for details: size 10x20 cm, model jc6640vc a1b2c3",
        "\"A quoted caption\"",
        "...dots... and --dashes-- and a trailing comma,",
        "Café naïve façade, résumé; 100% cotton T-shirt: 3:45   ",
        "a\\nnew line escape and %20 url%2Dencoded text",
        long,
        "",
    ]


def write_fixtures(out_models, fixtures, llamagen, tokenizer, model):
    """LlamaGen's T5Embedder on hostile_captions(), one caption per call as its
    extract_t5_feature.py runs it, fp32 on the CPU."""
    from safetensors.numpy import save_file

    sys.path.insert(0, str(llamagen))
    from language.t5 import T5Embedder

    with tempfile.TemporaryDirectory() as cache:
        name = "tiny-t5"
        tokenizer.save_pretrained(f"{cache}/{name}")
        model.save_pretrained(f"{cache}/{name}")
        embedder = T5Embedder(device="cpu", dir_or_name=name, local_cache=True, cache_dir=cache,
                              torch_dtype=torch.float32,
                              t5_model_kwargs={"torch_dtype": torch.float32})
        records, tensors = [], {}
        for i, caption in enumerate(hostile_captions()):
            cleaned = embedder.text_preprocessing(caption)
            ids = embedder.tokenizer([cleaned], max_length=MAX_LENGTH, padding="max_length",
                                     truncation=True, add_special_tokens=True)["input_ids"][0]
            embs, mask = embedder.get_text_embeddings([caption])
            valid = int(mask.sum())
            tensors[f"embedding.{i}"] = embs[0, :valid].float().numpy().astype(np.float32)
            records.append({"caption": caption, "cleaned": cleaned, "input_ids": ids,
                            "length": valid})
    save_file(tensors, str(fixtures / "t5_reference.safetensors"))
    (fixtures / "t5_reference.json").write_text(json.dumps(records, indent=1, ensure_ascii=False))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--model", type=pathlib.Path, help="a Hugging Face FLAN-T5 folder")
    parser.add_argument("--tiny-random", action="store_true")
    parser.add_argument("--random-arch", choices=sorted(ARCHS))
    parser.add_argument("--fixtures", type=pathlib.Path)
    parser.add_argument("--llamagen", type=pathlib.Path, help="a LlamaGen checkout (fixtures)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--external-data", action="store_true",
                        help="weights in t5_encoder.onnx.data even below 2 GB (XL needs it)")
    parser.add_argument("--save-pytorch", type=pathlib.Path,
                        help="also save the model and tokenizer as a Hugging Face folder")
    args = parser.parse_args()
    if sum(map(bool, [args.model, args.tiny_random, args.random_arch])) != 1:
        parser.error("give exactly one of --model, --tiny-random, --random-arch")
    if args.fixtures and not args.llamagen:
        parser.error("--fixtures needs --llamagen (the reference is LlamaGen's T5Embedder)")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)

    if args.model:
        from transformers import AutoTokenizer, T5EncoderModel
        tokenizer = AutoTokenizer.from_pretrained(str(args.model))
        model = T5EncoderModel.from_pretrained(str(args.model), torch_dtype=torch.float32).eval()
        source = str(args.model)
    else:
        arch = "tiny" if args.tiny_random else args.random_arch
        tokenizer = trained_tokenizer(vocab_size=400)
        # T5 pads its embedding table to a multiple of 128 beyond the tokenizer's ids.
        vocab = (len(tokenizer) + 127) // 128 * 128
        model = random_model(arch, vocab, args.seed)
        source = f"random {arch} (seed {args.seed})"

    export(model, args.out, args.external_data)
    tokenizer.backend_tokenizer.save(str(args.out / "tokenizer.json"))
    meta = {
        "d_model": model.config.d_model,
        "vocab_size": model.config.vocab_size,
        "pad_id": tokenizer.pad_token_id,
        "eos_id": tokenizer.eos_token_id,
        "source": source,
    }
    (args.out / "t5_encoder.json").write_text(json.dumps(meta, indent=1) + "\n")
    if args.save_pytorch:
        model.save_pretrained(str(args.save_pytorch))
        tokenizer.save_pretrained(str(args.save_pytorch))
    if args.fixtures:
        args.fixtures.mkdir(parents=True, exist_ok=True)
        write_fixtures(args.out, args.fixtures, args.llamagen, tokenizer, model)
    print(f"wrote {args.out}: {source}, d_model {meta['d_model']}")


if __name__ == "__main__":
    main()
