#!/usr/bin/env python3
"""Reference fixtures for the tch policy (tests/policy_*.rs), made with PyTorch + transformers.

Run in the bench venv (scripts/bench/setup-venv.sh installs torch, transformers, tokenizers,
safetensors, peft):

    PY=$(scripts/bench/setup-venv.sh)
    $PY scripts/make-tiny-models.py make      # (re)write tests/fixtures/policy/
    $PY scripts/make-tiny-models.py verify    # check checkpoints *written by cures* in transformers/peft

`make` builds a small byte-level BPE tokenizer (vocab 512, trained on generated text), two tiny
random models — Qwen2 (q/k/v biases, tied embeddings, f32, one file) and Llama (untied, bf16,
sharded with an index) — both 2 layers, hidden 64, 4 heads / 2 KV heads, and records:
  reference.safetensors: full f32 logits of each prompt, per-token log-probs and entropies of a
                         completion given a prompt;
  reference.json:        prompt/completion ids, greedy continuations (HF generate), texts;
  chat_reference.json:   `apply_chat_template` outputs for the SmolLM2, Qwen3 and Qwen2.5-Math
                         templates in tests/fixtures/policy/templates/.

`verify` runs `cargo test --release --test policy_parity export_for_python` with
CURES_POLICY_EXPORT=<tmp dir>; that test loads each tiny model in cures, saves it (`save_hf`),
enables LoRA with non-zero adapters and saves both the adapter (PEFT) and the merged checkpoint,
plus the logits cures computes. This script then loads those directories with transformers (and
peft) and checks the logits agree (max |Δ| ≤ 1e-4 relative).
"""
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "policy"

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "What is 12 + 35? Answer:",
    "<|im_start|>user\nCompute 7 * 8.<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, there was",
]
COMPLETIONS = [
    " It was a sunny day.",
    " 47",
    "The answer is \\boxed{56}.<|im_end|>",
    " a little robot who loved numbers.",
]


def corpus():
    rng = random.Random(0)
    words = (
        "the a an of to and in is was for on with as by at from it this that which answer "
        "question number sum product difference total each step first then finally so we "
        "robot fox dog cat day time there little loved numbers quick brown jumps over lazy "
        "compute what how many apples has more than less equals boxed reason put final"
    ).split()
    lines = []
    for _ in range(3000):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        op = rng.choice(["+", "-", "*"])
        val = a + b if op == "+" else a - b if op == "-" else a * b
        lines.append(f"What is {a} {op} {b}? The answer is \\boxed{{{val}}}.")
        lines.append(" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))).capitalize() + ".")
    lines += PROMPTS + COMPLETIONS
    return lines


def make_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    tcfg = {
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "chat_template": CHATML,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tcfg, indent=2))
    return tok


def hf_tokenizer(d: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_file=str(d / "tokenizer.json"), eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )


def build_model(arch: str, vocab: int, eos: int, pad: int):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
    )
    torch.manual_seed(1 if arch == "qwen2" else 2)
    if arch == "qwen2":
        cfg = Qwen2Config(tie_word_embeddings=True, rope_theta=1e6, **common)
        cfg.rope_theta = 1e6
        model = Qwen2ForCausalLM(cfg)
    else:
        cfg = LlamaConfig(tie_word_embeddings=False, rope_theta=5e5, attention_bias=False, **common)
        cfg.rope_theta = 5e5
        model = LlamaForCausalLM(cfg)
    # Random everything (HF init leaves biases at 0 and norms at 1; we want them exercised) and
    # large enough that greedy argmaxes are well separated.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.5 * torch.randn_like(p))
            else:
                p.copy_(0.15 * torch.randn_like(p))
    return model.float().eval()


def reference(model, tok, name, out_dir: Path):
    from safetensors.torch import save_file

    tensors, meta = {}, {"prompts": [], "completions": [], "greedy": []}
    for i, (p, c) in enumerate(zip(PROMPTS, COMPLETIONS)):
        pid = tok(p, add_special_tokens=False)["input_ids"]
        cid = tok(c, add_special_tokens=False)["input_ids"]
        meta["prompts"].append(pid)
        meta["completions"].append(cid)
        with torch.no_grad():
            logits = model(torch.tensor([pid])).logits[0].float()
            tensors[f"logits_{i}"] = logits.contiguous()
            full = torch.tensor([pid + cid])
            lg = model(full).logits[0, len(pid) - 1 : -1].float()
            lp = torch.log_softmax(lg, -1)
            tensors[f"completion_logprobs_{i}"] = lp.gather(1, torch.tensor(cid)[:, None])[:, 0].contiguous()
            tensors[f"completion_entropy_{i}"] = (-(lp.exp() * lp).sum(-1)).contiguous()
            gen = model.generate(
                torch.tensor([pid]),
                attention_mask=torch.ones(1, len(pid), dtype=torch.long),
                do_sample=False,
                max_new_tokens=24,
                eos_token_id=model.config.eos_token_id,
                pad_token_id=model.config.pad_token_id,
            )[0, len(pid) :].tolist()
        meta["greedy"].append(gen)
    meta["greedy_text"] = [tok.decode(g, skip_special_tokens=True) for g in meta["greedy"]]
    meta["prompt_texts"] = PROMPTS
    meta["completion_texts"] = COMPLETIONS
    meta["greedy_max_new_tokens"] = 24
    meta["transformers"] = __import__("transformers").__version__
    meta["torch"] = torch.__version__
    save_file(tensors, str(out_dir / "reference.safetensors"), metadata={"format": "pt"})
    (out_dir / "reference.json").write_text(json.dumps(meta, indent=1))
    print(f"{name}: greedy {meta['greedy_text']}")


CONVERSATIONS = [
    ([{"role": "user", "content": "What is 2 + 3?"}], True, {}),
    ([{"role": "user", "content": "What is 2 + 3?"}], False, {}),
    (
        [
            {"role": "system", "content": "You are a careful mathematician."},
            {"role": "user", "content": "Solve x^2 = 4.\nGive both roots."},
        ],
        True,
        {},
    ),
    (
        [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "<think>\nThe user greets.\n</think>\n\nHello! How can I help?"},
            {"role": "user", "content": "Add 17 and 25, put the answer in \\boxed{}. Ünïcødé ✓"},
        ],
        True,
        {},
    ),
    ([{"role": "user", "content": "Think fast: 9 * 9?"}], True, {"enable_thinking": False}),
]


def chat_references():
    from transformers import PreTrainedTokenizerFast

    tiny = FIX / "tiny-qwen2" / "tokenizer.json"
    out = []
    for name in ["smollm2", "qwen3", "qwen2.5-math"]:
        cfg = json.loads((FIX / "templates" / name / "tokenizer_config.json").read_text())
        specials = {
            k: v if isinstance(v, str) or v is None else v.get("content")
            for k, v in cfg.items()
            if k in ("bos_token", "eos_token", "unk_token", "pad_token")
        }
        t = PreTrainedTokenizerFast(tokenizer_file=str(tiny), **{k: v for k, v in specials.items() if v})
        t.chat_template = cfg["chat_template"]
        for msgs, agp, extra in CONVERSATIONS:
            text = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=agp, **extra)
            out.append(
                {"template": name, "messages": msgs, "add_generation_prompt": agp, "extra": extra, "expected": text}
            )
    (FIX / "chat_reference.json").write_text(json.dumps(out, indent=1, ensure_ascii=False))
    print(f"chat references: {len(out)}")


def make():
    for arch in ["qwen2", "llama"]:
        d = FIX / f"tiny-{arch}"
        d.mkdir(parents=True, exist_ok=True)
        for f in d.glob("*"):
            f.unlink()
        make_tokenizer(d)
        tok = hf_tokenizer(d)
        eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")
        model = build_model(arch, len(tok), eos, pad)
        if arch == "qwen2":
            model.save_pretrained(d, safe_serialization=True)
        else:
            # bf16 weights, sharded: exercise the index and the dtype conversion. The reference
            # is computed with exactly these (rounded) weights, in f32.
            model.to(torch.bfloat16).save_pretrained(d, safe_serialization=True, max_shard_size="150KB")
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        reference(model, tok, arch, d)
    chat_references()
    total = sum(f.stat().st_size for f in FIX.rglob("*") if f.is_file())
    print(f"fixtures: {total / 1e6:.2f} MB under {FIX}")


def logits_of(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def verify():
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    tmp = Path(tempfile.mkdtemp(prefix="cures-policy-export-"))
    env = dict(os.environ, CURES_POLICY_EXPORT=str(tmp))
    cmd = ["cargo", "test", "--release", "--test", "policy_parity", "export_for_python", "--", "--nocapture"]
    print("running:", " ".join(cmd), f"(CURES_POLICY_EXPORT={tmp})")
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    worst = 0.0
    ok = True
    for arch in ["qwen2", "llama"]:
        d = tmp / arch
        ref = load_file(str(d / "cures_logits.safetensors"))
        meta = json.loads((d / "cures_logits.json").read_text())
        for kind in ["saved", "merged"]:
            m = AutoModelForCausalLM.from_pretrained(d / kind, dtype=torch.float32).eval()
            for i, ids in enumerate(meta["prompts"]):
                got = logits_of(m, ids)
                want = ref[f"{kind}_{i}"]
                err = ((got - want).abs().max() / want.abs().max()).item()
                worst = max(worst, err)
                ok &= err <= 1e-4
                print(f"{arch} {kind:6} prompt {i}: transformers vs cures max rel err {err:.2e}")
        try:
            from peft import PeftModel
        except ImportError as e:  # pragma: no cover
            print(f"peft not importable ({e}): adapter check skipped", file=sys.stderr)
            continue
        base = AutoModelForCausalLM.from_pretrained(d / "saved", dtype=torch.float32).eval()
        pm = PeftModel.from_pretrained(base, d / "adapter").eval()
        for i, ids in enumerate(meta["prompts"]):
            got = logits_of(pm, ids)
            want = ref[f"merged_{i}"]
            err = ((got - want).abs().max() / want.abs().max()).item()
            worst = max(worst, err)
            ok &= err <= 1e-4
            print(f"{arch} peft   prompt {i}: base+adapter (peft) vs cures LoRA max rel err {err:.2e}")
    print(json.dumps({"verify_ok": ok, "max_rel_err": worst, "export_dir": str(tmp)}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else "make"
    {"make": make, "verify": verify}[cmd]()
