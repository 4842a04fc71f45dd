//! The memory-bounded training path on the tiny Qwen2 / Llama fixtures: chunked LM-head
//! log-probs equal the full computation (values and gradients), activation checkpointing gives
//! the same gradients, and bf16_mixed keeps the updates that pure bf16 loses.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cures::policy::{Policy, TrainPass};
use cures::train::{Precision, Reference, Sample, TrainConfig, Trainer};
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};

const MODELS: [&str; 2] = ["tiny-qwen2", "tiny-llama"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/policy")
        .join(name)
}

fn load(name: &str, kind: Kind) -> Policy {
    Policy::load(&fixture(name), Device::Cpu, kind).expect("fixture loads")
}

/// Sequences of different lengths (the batch is padded).
fn seqs(vocab: i64, seed: u64) -> Vec<(Vec<i64>, Vec<i64>)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    [(3usize, 5usize), (6, 2), (2, 7), (4, 4)]
        .iter()
        .map(|&(p, c)| {
            let mut tok = || rng.random_range(1..vocab);
            (
                (0..p).map(|_| tok()).collect(),
                (0..c).map(|_| tok()).collect(),
            )
        })
        .collect()
}

/// Reference: full logits, full fp32 log-softmax, per sequence.
fn full_logprobs(p: &Policy, s: &(Vec<i64>, Vec<i64>)) -> (Tensor, Tensor) {
    let ids: Vec<i64> = s.0.iter().chain(&s.1).copied().collect();
    let t = Tensor::from_slice(&ids).unsqueeze(0);
    let logits = p.forward(&t, &t.ones_like()).squeeze_dim(0);
    let logp = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
    let n = s.1.len() as i64;
    let pos = logp.narrow(0, s.0.len() as i64 - 1, n);
    let tg = Tensor::from_slice(&s.1).unsqueeze(1);
    let lp = pos.gather(1, &tg, false).squeeze_dim(1);
    let ent = -(pos.exp() * &pos).sum_dim_intlist(-1, false, Kind::Float);
    (lp, ent)
}

fn grads(p: &Policy) -> BTreeMap<String, Tensor> {
    p.var_store()
        .variables()
        .into_iter()
        .map(|(k, v)| {
            let g = v.grad();
            let g = if g.defined() {
                g.copy()
            } else {
                v.zeros_like()
            };
            (k, g)
        })
        .collect()
}

fn zero_grads(p: &Policy) {
    for (_, v) in p.var_store().variables() {
        let mut g = v.grad();
        if g.defined() {
            let _ = g.zero_();
        }
    }
}

fn assert_close(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>, tol: f64, what: &str) {
    let mut checked = 0;
    for (k, ga) in a {
        let gb = &b[k];
        let scale = ga.abs().max().double_value(&[]).max(1e-8);
        let d = (ga - gb).abs().max().double_value(&[]);
        assert!(
            d <= tol * scale,
            "{what}: {k} differs by {d} (scale {scale})"
        );
        checked += usize::from(scale > 1e-8);
    }
    assert!(
        checked > 5,
        "{what}: too few non-zero gradients ({checked})"
    );
}

/// Weights for a loss that uses every log-prob and entropy.
fn loss_weights(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let w = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    let u = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    (w, u)
}

#[test]
fn chunked_logprobs_equal_the_full_computation() {
    for name in MODELS {
        let p = load(name, Kind::Float);
        let s = seqs(p.config().vocab_size, 1);
        let total: usize = s.iter().map(|x| x.1.len()).sum();
        // Values: the public batched path and the chunked one (3-token chunks) against the
        // full log-softmax.
        let batched = tch::no_grad(|| p.logprobs(&s, 1 << 16)).expect("logprobs");
        let chunked = tch::no_grad(|| p.token_logprobs(&s, 1 << 16, 3)).expect("chunked");
        // logits_chunk_tokens = 0: off, one chunk of everything; the same values.
        let whole = tch::no_grad(|| p.token_logprobs(&s, 1 << 16, 0)).expect("unchunked");
        for (a, b) in chunked.iter().zip(&whole) {
            let d = (a - b).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{name}: chunk 0 (off) differs by {d}");
        }
        for (i, x) in s.iter().enumerate() {
            let (lp, ent) = tch::no_grad(|| full_logprobs(&p, x));
            let d = (&batched[i].logprobs - &lp).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{name}: logprobs {i} differ by {d}");
            let d = (&batched[i].entropy - &ent).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{name}: entropy {i} differs by {d}");
            let d = (&chunked[i] - &lp).abs().max().double_value(&[]);
            assert!(d < 1e-5, "{name}: chunked logprobs {i} differ by {d}");
        }
        // Gradients of Σ w·logp + u·H: full graph vs train_batch in 3-token chunks.
        let (w, u) = loss_weights(total, 2);
        let (wt, ut) = (Tensor::from_slice(&w), Tensor::from_slice(&u));
        zero_grads(&p);
        let mut parts = (Vec::new(), Vec::new());
        for x in &s {
            let (lp, ent) = full_logprobs(&p, x);
            parts.0.push(lp);
            parts.1.push(ent);
        }
        let full = (Tensor::cat(&parts.0, 0) * &wt).sum(Kind::Float)
            + (Tensor::cat(&parts.1, 0) * &ut).sum(Kind::Float);
        full.backward();
        let want = grads(&p);
        zero_grads(&p);
        let batch: Vec<&(Vec<i64>, Vec<i64>)> = s.iter().collect();
        let pass = TrainPass {
            chunk_tokens: 3,
            checkpoint: false,
            entropy_grad: true,
        };
        let mut seen = 0;
        p.train_batch(&batch, &pass, |c| {
            let n = c.logprobs.size()[0];
            seen += n;
            Ok((&c.logprobs * wt.narrow(0, c.offset, n)).sum(Kind::Float)
                + (&c.entropy * ut.narrow(0, c.offset, n)).sum(Kind::Float))
        })
        .expect("train_batch");
        assert_eq!(seen as usize, total);
        assert_close(&want, &grads(&p), 1e-4, name);
    }
}

#[test]
fn activation_checkpointing_gives_the_same_gradients() {
    for name in MODELS {
        let p = load(name, Kind::Float);
        for padded in [true, false] {
            let mut s = seqs(p.config().vocab_size, 3);
            if !padded {
                for x in &mut s {
                    x.0.truncate(2);
                    x.1.truncate(2);
                }
            }
            let total: usize = s.iter().map(|x| x.1.len()).sum();
            let (w, _) = loss_weights(total, 4);
            let wt = Tensor::from_slice(&w);
            let batch: Vec<&(Vec<i64>, Vec<i64>)> = s.iter().collect();
            let run = |checkpoint: bool| {
                zero_grads(&p);
                let pass = TrainPass {
                    chunk_tokens: 5,
                    checkpoint,
                    entropy_grad: false,
                };
                p.train_batch(&batch, &pass, |c| {
                    let n = c.logprobs.size()[0];
                    Ok((&c.logprobs * wt.narrow(0, c.offset, n)).sum(Kind::Float))
                })
                .expect("train_batch");
                grads(&p)
            };
            let plain = run(false);
            let ckpt = run(true);
            assert_close(&plain, &ckpt, 1e-5, &format!("{name} padded={padded}"));
        }
    }
}

fn samples(p: &Policy) -> Vec<Sample> {
    seqs(p.config().vocab_size, 5)
        .into_iter()
        .chain(seqs(p.config().vocab_size, 6))
        .enumerate()
        .map(|(i, (prompt, completion))| Sample {
            prompt,
            completion,
            advantage: if i % 2 == 0 { 1.0 } else { -0.7 },
        })
        .collect()
}

fn snapshot(p: &Policy) -> BTreeMap<String, Tensor> {
    p.var_store()
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().to_kind(Kind::Float).copy()))
        .collect()
}

fn frac_changed(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> f64 {
    let (mut c, mut n) = (0.0, 0.0);
    for (k, x) in a {
        c += x.ne_tensor(&b[k]).sum(Kind::Double).double_value(&[]);
        n += x.numel() as f64;
    }
    c / n
}

/// Two optimiser steps at the paper's lr.
fn train_two_steps(p: &Policy, precision: Precision) -> Trainer {
    let cfg = TrainConfig {
        lr: 1e-6,
        kl_coef: 0.0,
        mini_batches: 2,
        precision,
        logits_chunk_tokens: 4,
        ..Default::default()
    };
    let mut t = Trainer::new(cfg, p).expect("trainer");
    t.update(p, None, &samples(p)).expect("update");
    assert_eq!(t.optimizer().steps(), 2);
    t
}

#[test]
fn bf16_mixed_keeps_updates_that_pure_bf16_loses() {
    // fp32 reference from the same (bf16-rounded) starting point.
    let mut f32p = load("tiny-qwen2", Kind::BFloat16);
    f32p.set_kind(Kind::Float);
    let init = snapshot(&f32p);
    train_two_steps(&f32p, Precision::Fp32);
    let f32_final = snapshot(&f32p);

    let mixed = load("tiny-qwen2", Kind::BFloat16);
    assert_eq!(snapshot(&mixed).len(), init.len());
    let t = train_two_steps(&mixed, Precision::Bf16Mixed);
    assert!(t.optimizer().has_masters());
    let masters: BTreeMap<String, Tensor> = t
        .optimizer()
        .masters()
        .into_iter()
        .map(|(k, v)| (k, v.copy()))
        .collect();
    let moved = frac_changed(&masters, &init);
    assert!(
        moved > 0.95,
        "bf16_mixed moved only {moved} of the master weights"
    );
    // Same updates as fp32, within bf16 rounding of the gradients: compare the steps taken.
    let (mut dot, mut na, mut nb) = (0.0, 0.0, 0.0);
    for (k, m) in &masters {
        let da = (m - &init[k]).to_kind(Kind::Double);
        let db = (&f32_final[k] - &init[k]).to_kind(Kind::Double);
        dot += (&da * &db).sum(Kind::Double).double_value(&[]);
        na += da.square().sum(Kind::Double).double_value(&[]);
        nb += db.square().sum(Kind::Double).double_value(&[]);
        // bf16 rounding of the weight, plus two steps of ~lr that a bf16 gradient may flip.
        let tol = init[k].abs() * 2f64.powi(-8) + 4e-6;
        let off = (m - &f32_final[k]).abs().gt_tensor(&tol).sum(Kind::Int64);
        assert_eq!(off.int64_value(&[]), 0, "{k}: master off the fp32 run");
    }
    let cos = dot / (na.sqrt() * nb.sqrt());
    assert!(cos > 0.9, "bf16_mixed update vs fp32 update: cosine {cos}");

    let pure = load("tiny-qwen2", Kind::BFloat16);
    let t = train_two_steps(&pure, Precision::Pure);
    assert!(!t.optimizer().has_masters());
    let lost = 1.0 - frac_changed(&snapshot(&pure), &init);
    eprintln!("bf16_mixed: {moved:.4} of masters moved, cosine to fp32 {cos:.4}; pure: {lost:.4} unchanged");
    assert!(
        lost > 0.9,
        "pure bf16 kept {:.3} of the updates",
        1.0 - lost
    );
}

#[test]
fn impossible_precision_is_refused_naming_the_key() {
    let p = load("tiny-llama", Kind::BFloat16);
    let cfg = TrainConfig {
        precision: Precision::Fp32,
        ..Default::default()
    };
    let e = Trainer::new(cfg, &p).err().expect("refused").to_string();
    assert!(
        e.contains("train.precision") && e.contains("model.dtype"),
        "{e}"
    );
}

/// A LoRA update over a bf16 base: the base stays bitwise, the fp32 adapters move, and the KL
/// reference is the base with the iteration-start adapter, swapped in and out of the policy.
#[test]
fn a_lora_update_moves_only_fp32_adapters_against_the_adapter_reference() {
    let mut p = load("tiny-qwen2", Kind::BFloat16);
    p.enable_lora(
        cures::policy::LoraConfig {
            r: 4,
            alpha: 8.0,
            target_modules: ["q", "k", "v", "o", "gate", "up", "down"]
                .map(str::to_string)
                .to_vec(),
        },
        7,
    )
    .expect("lora");
    let base = snapshot(&p);
    let start = p.lora_snapshot().expect("adapters");
    assert!(start.iter().all(|(_, t)| t.kind() == Kind::Float));
    let reference = Reference::Adapter(p.lora_snapshot().expect("adapters"));
    let cfg = TrainConfig {
        lr: 1e-3,
        kl_coef: 0.1,
        mini_batches: 2,
        logits_chunk_tokens: 4,
        ..Default::default()
    };
    let mut t = Trainer::new(cfg, &p).expect("trainer");
    assert_eq!(t.precision(), Precision::Fp32, "adapters train in fp32");
    t.update(&p, Some(&reference), &samples(&p))
        .expect("update");
    let second = t
        .update(&p, Some(&reference), &samples(&p))
        .expect("update");
    assert!(
        second.kl > 1e-6,
        "KL to the iteration-start adapter: {}",
        second.kl
    );
    // Refreshed to the adapter as it is now, one mini-batch sees no KL.
    let mut now_ref = Reference::Adapter(Vec::new());
    now_ref.refresh(&p).expect("refresh");
    let one = TrainConfig {
        mini_batches: 1,
        ..t.config().clone()
    };
    let at_now = Trainer::new(one, &p)
        .expect("trainer")
        .update(&p, Some(&now_ref), &samples(&p))
        .expect("update");
    assert!(at_now.kl.abs() < 1e-6, "{}", at_now.kl);
    assert_eq!(frac_changed(&base, &snapshot(&p)), 0.0, "the base moved");
    let now = match &now_ref {
        Reference::Adapter(a) => a,
        Reference::Model(_) => unreachable!(),
    };
    let moved: f64 = now
        .iter()
        .zip(&start)
        .filter(|((k, _), _)| k.contains("lora_B"))
        .map(|((_, a), (_, b))| (a - b).abs().sum(Kind::Double).double_value(&[]))
        .sum();
    assert!(moved > 0.0, "the adapters did not move");
    // The reference adapter was put back after each use: the policy holds its own.
    let Reference::Adapter(r) = &reference else {
        unreachable!("an adapter reference")
    };
    assert!(r.iter().zip(&start).all(|((_, a), (_, b))| a.equal(b)));
}
