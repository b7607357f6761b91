"""Shared fixtures: a tiny random-initialised BERT with the real Chinese vocabulary, trained and exported once."""
import json
import shutil
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TINY_DATA = FIXTURES / "tiny_annotated.jsonl"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory):
    """A 2-layer, 32-wide BERT (random weights) with the shipped model's tokenizer: a base for pipeline tests."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from hengwen.serving.runtime import DEFAULT_MODEL_DIR
    folder = tmp_path_factory.mktemp("tiny-base")
    tokenizer = AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=256)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_data_halves(tmp_path):
    """TINY_DATA split into two files, first half and second half of its conversations."""
    lines = [line for line in TINY_DATA.read_text(encoding="utf-8").splitlines(keepends=True) if line.strip()]
    halves = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    halves[0].write_text("".join(lines[: len(lines) // 2]), encoding="utf-8")
    halves[1].write_text("".join(lines[len(lines) // 2:]), encoding="utf-8")
    return halves


def tiny_config(tmp_path, base, **train):
    config = {
        "data": {"train_file": str(TINY_DATA), "dev_file": str(TINY_DATA)},
        "model": {"base_model": str(base), "freeze_word_embeddings": True},
        "encoding": {"max_length": 64, "max_target_tokens": 32, "opening_tokens": 12},
        "train": {"output_dir": str(tmp_path / "model"), "epochs": 2, "batch_size": 8, "learning_rate": 1e-3,
                  "threads": 1, **train},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_base):
    """The tiny base fine-tuned for a few steps, saved and exported to ONNX (fp32 and int8)."""
    from hengwen.model.export import export_model
    from hengwen.training.args import TrainingConfig
    from hengwen.training.train import train
    folder = tmp_path_factory.mktemp("tiny-run")
    output_dir, _ = train(TrainingConfig.from_json(tiny_config(folder, tiny_base)), log=lambda *_: None)
    # A random tiny model sits near its thresholds, so int8 may flip decisions: parity of F1 is not its test.
    export_model(output_dir, TINY_DATA, max_f1_drop=1.0, log=lambda *_: None)
    return output_dir


@pytest.fixture
def tiny_model_copy(tiny_model, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(tiny_model, target)
    return target


def headless_chromium(window_size):
    """A selenium driver for Debian's chromium; skips the test (saying why) when the browser is not installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make test` installs them as root)")
    from selenium import webdriver
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={window_size}", "--lang=zh-CN"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
