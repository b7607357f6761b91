"""The scoring tokenizer: a model folder's `tokenizer.json` read with the `tokenizers` library alone.

transformers' AutoTokenizer gives the same ids from the same file, but importing it loads torch and transformers:
seconds of start-up and a few hundred MB in every scoring worker and server process, for a lookup table.
Training keeps AutoTokenizer, which also writes the files this class reads.
"""
import json
from pathlib import Path

SPECIAL_TOKENS = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]"}


class ModelTokenizer:
    """The subset of a transformers fast tokenizer that encoding and scoring use."""

    def __init__(self, model_dir):
        from tokenizers import Tokenizer
        folder = Path(model_dir)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.json (a model saved by `hengwen train` has one)")
        self.backend = Tokenizer.from_file(str(path))
        self.backend.no_truncation()
        self.backend.no_padding()
        config_path = folder / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
        for role, default in SPECIAL_TOKENS.items():
            token = config.get(f"{role}_token") or default
            token = token["content"] if isinstance(token, dict) else token
            token_id = self.backend.token_to_id(token)
            if token_id is None:
                raise ValueError(f"{path}: the {role} token {token!r} is not in the vocabulary")
            setattr(self, f"{role}_token_id", token_id)

    def __call__(self, texts, add_special_tokens=True, return_offsets_mapping=False):
        single = isinstance(texts, str)
        encodings = self.backend.encode_batch([texts] if single else list(texts),
                                              add_special_tokens=add_special_tokens)
        result = {"input_ids": [encoding.ids for encoding in encodings]}
        if return_offsets_mapping:
            result["offset_mapping"] = [encoding.offsets for encoding in encodings]
        return {key: value[0] for key, value in result.items()} if single else result

    def encode(self, text, add_special_tokens=True):
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens=False):
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
