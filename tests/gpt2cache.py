"""A Hugging Face cache holding ``gpt2`` -- GPT-2 small's real config and tokenizer, random weights.

``hf_home()`` builds, once per process, a directory laid out like ``~/.cache/huggingface`` after
``hf download gpt2``::

    HF_HOME/hub/models--gpt2/
        refs/main                     -> the snapshot revision (gpt2's real one on the hub)
        blobs/<sha256>                -> the file contents
        snapshots/<rev>/<file>        -> relative symlinks into blobs/ (copies where links are refused)

The snapshot has the files the hub's ``gpt2`` repository serves: ``config.json`` and
``tokenizer_config.json`` byte-identical to the hub's, ``vocab.json`` / ``merges.txt`` equal to GPT-2's
``encoder.json`` / ``vocab.bpe`` (vendored in ``tests/data/gpt2-tokenizer``, same SHA-256 as the hub's
files), a ``tokenizer.json`` built from them with ``tokenizers``, ``generation_config.json``, and
``model.safetensors``: weights of gpt2-small's exact shape (12 layers, d_model 768, 12 heads,
n_positions 1024, vocab 50257; ~124M parameters, ~500 MB in fp32), keyed like the hub's, seeded random.
Building it takes a few seconds (mostly drawing and writing the 500 MB); loading it ~1 s.

``offline_gpt2(monkeypatch)`` points the hub at that cache and turns it offline.  Environment variables
alone are not enough inside a test process: ``huggingface_hub`` reads ``HF_HOME``, ``HF_HUB_CACHE`` and
``HF_HUB_OFFLINE`` into ``huggingface_hub.constants`` when it is first imported, so those are patched too
(every reader -- ``try_to_load_from_cache``, ``hf_hub_download``, transformers 5's ``cached_file`` and
``is_offline_mode`` -- looks them up at call time), and so are transformers 4.x's import-time copies of them
in ``transformers.utils.hub`` (both hub generations: huggingface_hub 0.x with transformers 4.56+, 1.x and later with
5.x).  Nothing else is patched: ``interptest.load_model`` runs its real hub-name path.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

# GPT-2's tokens of the IOI prompt "When Mary and John went to the store, John gave a drink to" (BOS first)
IOI_TOKENS = [
    "<|endoftext|>",
    "When",
    " Mary",
    " and",
    " John",
    " went",
    " to",
    " the",
    " store",
    ",",
    " John",
    " gave",
    " a",
    " drink",
    " to",
]

DATA = Path(__file__).parent / "data" / "gpt2-tokenizer"

# gpt2's revision on the hub (its main commit); any 40-hex revision would do, this one is the real one.
REVISION = "607a30d783dfa663caf39e06633721c8d4cfcd7e"
REPO = "models--gpt2"
SEED = 0
# Standard deviation of the random weights. GPT-2's own initialisation (0.02) makes every logit almost
# equal, so that the corruptions of the shipped gpt2 specs would change the logit difference by far less
# than min_effect 1.0 and no localization claim would reach the patching engine; 0.1 gives logit
# differences of a few units, so that the shipped specs exercise patching end to end.
WEIGHT_STD = 0.1

N_LAYERS, D_MODEL, N_HEADS, N_CTX, D_VOCAB = 12, 768, 12, 1024, 50257
BOS = 50256  # "<|endoftext|>", GPT-2's BOS = EOS

# The hub's gpt2 config.json and tokenizer_config.json, byte for byte (SHA-256 below).
CONFIG_JSON = """{
  "activation_function": "gelu_new",
  "architectures": [
    "GPT2LMHeadModel"
  ],
  "attn_pdrop": 0.1,
  "bos_token_id": 50256,
  "embd_pdrop": 0.1,
  "eos_token_id": 50256,
  "initializer_range": 0.02,
  "layer_norm_epsilon": 1e-05,
  "model_type": "gpt2",
  "n_ctx": 1024,
  "n_embd": 768,
  "n_head": 12,
  "n_layer": 12,
  "n_positions": 1024,
  "resid_pdrop": 0.1,
  "summary_activation": null,
  "summary_first_dropout": 0.1,
  "summary_proj_to_labels": true,
  "summary_type": "cls_index",
  "summary_use_proj": true,
  "task_specific_params": {
    "text-generation": {
      "do_sample": true,
      "max_length": 50
    }
  },
  "vocab_size": 50257
}"""
TOKENIZER_CONFIG_JSON = '{"model_max_length": 1024}'
GENERATION_CONFIG_JSON = """{
  "_from_model_config": true,
  "bos_token_id": 50256,
  "eos_token_id": 50256,
  "transformers_version": "4.26.0.dev0"
}
"""

# SHA-256 of the hub's gpt2 files (published; tiktoken pins the same two for encoder.json / vocab.bpe).
HUB_SHA256 = {
    "config.json": "0daed7749b4f02b8f76240d5444551d7b08712dab4d0adb8239c56ba823bb7b4",
    "tokenizer_config.json": "5e04eb606e3a1583530a42e36c2a6b6615c86f34fe77e44d9ddeb43ff940931f",
    "vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tokenizer_json() -> str:
    """GPT-2's fast tokenizer (as in the hub's tokenizer.json), built from the vendored files."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    vocab = json.loads((DATA / "encoder.json").read_text(encoding="utf-8"))
    lines = (DATA / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    assert lines[0].startswith("#version"), lines[0]
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return tok.to_str()


def random_state_dict() -> dict:
    """Seeded random weights for the hub config, keyed as the hub's gpt2 ``model.safetensors`` is (the
    ``GPT2Model`` keys, ``wte.weight`` ... ``ln_f.bias``; the unembedding is tied to ``wte``): matrices
    ~ N(0, WEIGHT_STD), LayerNorm gains 1, biases 0. Shapes come from a ``GPT2LMHeadModel`` built on the
    meta device (no memory, no initialisation)."""
    import torch
    import transformers as tf

    config = tf.GPT2Config.from_dict(json.loads(CONFIG_JSON))
    with torch.device("meta"):
        shapes = {name: tuple(p.shape) for name, p in tf.GPT2LMHeadModel(config).transformer.named_parameters()}
    generator = torch.Generator().manual_seed(SEED)
    weights = {}
    for name, shape in shapes.items():
        if len(shape) >= 2:
            weights[name] = torch.empty(shape).normal_(0.0, WEIGHT_STD, generator=generator)
        elif name.endswith(".weight"):  # the only 1-d weights are LayerNorm gains
            weights[name] = torch.ones(shape)
        else:
            weights[name] = torch.zeros(shape)
    return weights


def build(home: Path) -> Path:
    """Write the cache under ``home`` (an HF_HOME) and return the snapshot directory."""
    repo = home / "hub" / REPO
    blobs, snapshot = repo / "blobs", repo / "snapshots" / REVISION
    for d in (blobs, snapshot, repo / "refs"):
        d.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)  # no trailing newline, as huggingface_hub writes it

    def link(name: str, blob: Path) -> None:
        try:
            (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
        except OSError:  # pragma: no cover - no symlinks here
            shutil.copyfile(blob, snapshot / name)

    def put(name: str, data: bytes) -> None:
        blob = blobs / sha256(data)
        blob.write_bytes(data)
        link(name, blob)

    put("config.json", CONFIG_JSON.encode())
    put("tokenizer_config.json", TOKENIZER_CONFIG_JSON.encode())
    put("generation_config.json", GENERATION_CONFIG_JSON.encode())
    put("vocab.json", (DATA / "encoder.json").read_bytes())
    put("merges.txt", (DATA / "vocab.bpe").read_bytes())
    put("tokenizer.json", tokenizer_json().encode())

    from safetensors.torch import save_file

    # The weights' blob is named by a digest of what they are (seed, scale), not of their 500 MB:
    # hashing them costs seconds, and huggingface_hub never checks a blob's name when reading the cache.
    blob = blobs / sha256(f"gpt2 random weights seed={SEED} std={WEIGHT_STD}".encode())
    save_file(random_state_dict(), str(blob), metadata={"format": "pt"})
    link("model.safetensors", blob)
    return snapshot


PREFIX = "interptest-gpt2-hf-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


def remove_stale() -> None:
    """Remove caches whose process is gone without its atexit hook (xdist workers end with os._exit)."""
    for d in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            pid = int((d / "owner.pid").read_text())
        except (OSError, ValueError):  # not ours, or its owner is still writing it
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(d, ignore_errors=True)


@functools.cache
def hf_home() -> Path:
    """An HF_HOME holding the random gpt2 above, built once per process and removed at exit."""
    remove_stale()
    home = Path(tempfile.mkdtemp(prefix=PREFIX))
    (home / "owner.pid").write_text(str(os.getpid()))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    build(home)
    return home


def offline_gpt2(monkeypatch) -> Path:
    """Point the Hugging Face hub at :func:`hf_home` and make it offline; returns the HF_HOME.

    Also makes every outbound TCP connection of the test fail loudly, so a test that would reach the
    network errors out instead of reaching it."""
    import socket

    from huggingface_hub import constants

    home = hf_home()
    hub = str(home / "hub")
    for key, value in {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": hub,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", hub)
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", hub)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    # transformers 4.x (beside huggingface_hub 0.x) copies those into transformers.utils.hub when it is
    # first imported -- the offline flag (``is_offline_mode()`` returns ``_is_offline_mode``) and the cache
    # (``cached_files`` defaults to ``TRANSFORMERS_CACHE``) -- so an earlier import kept the real cache and
    # went to the network; transformers 5.x reads huggingface_hub's constants at call time and has none of
    # these. Importing it here, after the patches above, also covers a first import.
    import transformers.utils.hub as transformers_hub

    copies = {
        "_is_offline_mode": True,
        "TRANSFORMERS_CACHE": hub,
        "PYTORCH_TRANSFORMERS_CACHE": hub,
        "PYTORCH_PRETRAINED_BERT_CACHE": hub,
    }
    for name, value in copies.items():
        if hasattr(transformers_hub, name):
            monkeypatch.setattr(transformers_hub, name, value)

    def refuse(address):
        raise OSError(f"network access attempted in an offline gpt2 test: {address!r}")

    def guard(original):
        def connect(self, address, *args, **kwargs):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                refuse(address)
            return original(self, address, *args, **kwargs)

        return connect

    monkeypatch.setattr(socket, "create_connection", lambda address, *args, **kwargs: refuse(address))
    monkeypatch.setattr(socket.socket, "connect", guard(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guard(socket.socket.connect_ex))
    return home
