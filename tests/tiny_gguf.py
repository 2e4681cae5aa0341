"""Tiny random-weight GGUF model fixture that real llama.cpp can load and decode.

``write_tiny_model(path)`` writes a ~1 MB ``qwen2``-architecture GGUF with random
float32 weights and a tiny byte-level GPT-2-style BPE tokenizer (256 byte tokens +
a dozen merges + ChatML special tokens).  It is meant for tests that need *real*
llama.cpp behaviour (tokenization, batched multi-sequence decoding, KV-cache
manipulation) without downloading a real model.

Layout of the vocabulary (identical ids for both ``vocab_variant`` values)::

    0   .. 255   byte-level symbols, token id == byte value (GPT-2 unicode alphabet)
    256 .. 267   merge tokens ("he", "Ġt", ..., last one differs between variants)
    268          <|endoftext|>   (bos / pad, CONTROL)
    269          <|im_start|>    (CONTROL)
    270          <|im_end|>      (eos, CONTROL)

Hyper-parameters mirror a (very) small Qwen2: n_embd 64, n_head 4, n_head_kv 2
(GQA, head_dim 16), n_ff 128, context length 512, Q/K/V biases, untied
``output.weight``, NEOX RoPE (implied by the qwen2 arch), rms eps 1e-6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

import gguf

ARCH = "qwen2"
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = N_EMBD // N_HEAD
N_FF = 128
N_CTX_TRAIN = 512
RMS_EPS = 1e-6
ROPE_FREQ_BASE = 1_000_000.0

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Merges written with GPT-2's byte-level alphabet ("Ġ" == space).  Order == rank.
_BASE_MERGES: list[tuple[str, str]] = [
    ("h", "e"),
    ("Ġ", "t"),
    ("Ġ", "a"),
    ("i", "n"),
    ("e", "r"),
    ("o", "n"),
    ("Ġt", "he"),
    ("l", "l"),
    ("Ġ", "s"),
    ("i", "s"),
    ("l", "o"),
]
# The last merge is what distinguishes the vocabulary variants (same n_vocab,
# same special-token ids, one differing token text at id 267).
_VARIANT_LAST_MERGE: dict[int, tuple[str, str]] = {
    0: ("Ġ", "w"),
    1: ("Ġ", "b"),
}

N_BYTE_TOKENS = 256
N_MERGE_TOKENS = len(_BASE_MERGES) + 1
N_VOCAB = N_BYTE_TOKENS + N_MERGE_TOKENS + 3
ENDOFTEXT_ID = N_BYTE_TOKENS + N_MERGE_TOKENS  # 268
IM_START_ID = ENDOFTEXT_ID + 1  # 269
IM_END_ID = ENDOFTEXT_ID + 2  # 270
EOS_ID = IM_END_ID
BOS_ID = ENDOFTEXT_ID
PAD_ID = ENDOFTEXT_ID


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode char mapping."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_vocab(vocab_variant: int = 0) -> tuple[list[str], list[int], list[str]]:
    """Return (tokens, token_types, merges) for the given vocab variant."""
    if vocab_variant not in _VARIANT_LAST_MERGE:
        raise ValueError(f"vocab_variant must be one of {sorted(_VARIANT_LAST_MERGE)}, got {vocab_variant}")
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    merges_pairs = _BASE_MERGES + [_VARIANT_LAST_MERGE[vocab_variant]]
    merges = []
    for a, b in merges_pairs:
        tokens.append(a + b)
        merges.append(f"{a} {b}")
    tokens += [ENDOFTEXT, IM_START, IM_END]
    assert len(tokens) == N_VOCAB and len(set(tokens)) == N_VOCAB
    normal = int(gguf.TokenType.NORMAL)
    control = int(gguf.TokenType.CONTROL)
    token_types = [normal] * (N_BYTE_TOKENS + N_MERGE_TOKENS) + [control] * 3
    return tokens, token_types, merges


def write_tiny_model(path: Path, *, seed: int = 0, vocab_variant: int = 0, n_layer: int = 4,
                     endless: bool = False) -> Path:
    """Write a tiny random qwen2 GGUF to ``path`` and return ``path``.

    Deterministic for a given (seed, vocab_variant, n_layer, endless). ``endless`` zeroes the output rows of the
    end-of-generation tokens: their logit is then 0 while about half the vocabulary scores above it, so greedy
    decoding never ends an answer before its token budget.
    """
    if n_layer < 3:
        raise ValueError(f"n_layer must be >= 3, got {n_layer}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, token_types, merges = build_vocab(vocab_variant)
    n_embd_gqa = HEAD_DIM * N_HEAD_KV

    def normal(*shape: int, std: float) -> np.ndarray:
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def norm_weight(n: int) -> np.ndarray:
        return (1.0 + rng.standard_normal(n) * 0.05).astype(np.float32)

    w = gguf.GGUFWriter(str(path), ARCH)
    w.add_name(f"tiny-qwen2-test-s{seed}-v{vocab_variant}-l{n_layer}" + ("-endless" if endless else ""))
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    w.add_context_length(N_CTX_TRAIN)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_freq_base(ROPE_FREQ_BASE)
    w.add_layer_norm_rms_eps(RMS_EPS)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(token_types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # numpy shape == reversed ggml ne: ggml {n_in, n_out} <-> numpy (n_out, n_in).
    T = gguf.TENSOR_NAMES
    M = gguf.MODEL_TENSOR
    # Embeddings std 1 (input to RMS norm anyway); untied output head scaled so
    # that logits have std ~2.5 -> peaked but non-degenerate distributions.
    w.add_tensor(T[M.TOKEN_EMBD] + ".weight", normal(N_VOCAB, N_EMBD, std=1.0))
    for i in range(n_layer):
        p = f"blk.{i}."
        s_in = 1.0 / np.sqrt(N_EMBD)
        w.add_tensor(p + "attn_norm.weight", norm_weight(N_EMBD))
        # q/k scaled up a bit so attention patterns are not uniform.
        w.add_tensor(p + "attn_q.weight", normal(N_EMBD, N_EMBD, std=2.0 * s_in))
        w.add_tensor(p + "attn_q.bias", normal(N_EMBD, std=0.1))
        w.add_tensor(p + "attn_k.weight", normal(n_embd_gqa, N_EMBD, std=2.0 * s_in))
        w.add_tensor(p + "attn_k.bias", normal(n_embd_gqa, std=0.1))
        w.add_tensor(p + "attn_v.weight", normal(n_embd_gqa, N_EMBD, std=s_in))
        w.add_tensor(p + "attn_v.bias", normal(n_embd_gqa, std=0.1))
        w.add_tensor(p + "attn_output.weight", normal(N_EMBD, N_EMBD, std=s_in))
        w.add_tensor(p + "ffn_norm.weight", norm_weight(N_EMBD))
        w.add_tensor(p + "ffn_gate.weight", normal(N_FF, N_EMBD, std=s_in))
        w.add_tensor(p + "ffn_up.weight", normal(N_FF, N_EMBD, std=s_in))
        w.add_tensor(p + "ffn_down.weight", normal(N_EMBD, N_FF, std=1.0 / np.sqrt(N_FF)))
    w.add_tensor(T[M.OUTPUT_NORM] + ".weight", norm_weight(N_EMBD))
    output = normal(N_VOCAB, N_EMBD, std=0.3)
    if endless:
        output[[ENDOFTEXT_ID, IM_END_ID]] = 0.0
    w.add_tensor(T[M.OUTPUT] + ".weight", output)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


__all__ = [
    "write_tiny_model",
    "build_vocab",
    "bytes_to_unicode",
    "CHAT_TEMPLATE",
    "N_VOCAB",
    "N_EMBD",
    "N_HEAD",
    "N_HEAD_KV",
    "N_CTX_TRAIN",
    "EOS_ID",
    "BOS_ID",
    "PAD_ID",
    "ENDOFTEXT_ID",
    "IM_START_ID",
    "IM_END_ID",
]
