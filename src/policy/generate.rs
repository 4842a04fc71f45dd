//! Batched sampling with a preallocated batched KV cache.
//!
//! Prompts are left-padded; each distinct prompt is prefilled once and its cache rows are
//! copied to its n samples; positions come from the padding mask; finished rows are dropped
//! from the batch (cache rows included) as soon as they stop. Sampling runs on the host with one
//! ChaCha RNG per (prompt, sample), so a seed gives the same text whatever the batching.

use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

use super::model::{causal_mask, positions_from_mask, KvCache};
use super::Policy;

/// Sampling parameters (vLLM-style).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SamplingParams {
    /// Samples per prompt (used when `n_per_prompt` is empty).
    pub n: usize,
    /// Samples for each prompt (overrides `n`; must have one entry per prompt).
    #[serde(default)]
    pub n_per_prompt: Vec<usize>,
    /// Temperature; 0 = greedy.
    pub temperature: f64,
    /// Nucleus mass (1 = off).
    pub top_p: f64,
    /// Keep the k most likely tokens (0 = off).
    pub top_k: usize,
    /// Maximum new tokens.
    pub max_tokens: usize,
    /// Seed.
    pub seed: u64,
    /// Extra stop token ids (the tokenizer's EOS ids always stop unless `ignore_eos`).
    #[serde(default)]
    pub stop_token_ids: Vec<i64>,
    /// Stop strings (cut from the text; the tokens stay in `token_ids`).
    #[serde(default)]
    pub stop_strings: Vec<String>,
    /// Do not stop at EOS.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Most rows decoded together (0 = all at once).
    #[serde(default)]
    pub max_batch: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            n: 1,
            n_per_prompt: Vec::new(),
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            max_tokens: 256,
            seed: 0,
            stop_token_ids: Vec::new(),
            stop_strings: Vec::new(),
            ignore_eos: false,
            max_batch: 64,
        }
    }
}

/// Why a completion ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
}

/// One completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Generation {
    /// Index of its prompt.
    pub prompt_index: usize,
    /// Index among that prompt's samples.
    pub sample_index: usize,
    /// Generated token ids (stop token included).
    pub token_ids: Vec<i64>,
    /// Decoded text (special tokens skipped, cut before a stop string).
    pub text: String,
    /// Raw log-prob of each generated token.
    pub logprobs: Vec<f32>,
    /// Stop or length.
    pub finish_reason: FinishReason,
}

struct Row {
    prompt: usize,
    sample: usize,
    rng: ChaCha8Rng,
    tokens: Vec<i64>,
    logprobs: Vec<f32>,
    finish: Option<FinishReason>,
    stop_cut: Option<usize>,
}

fn row_seed(seed: u64, prompt: usize, sample: usize) -> u64 {
    // splitmix64 over the triple.
    let mut z = seed
        ^ (prompt as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (sample as u64)
            .wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
            .rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Sample one token from a logits row; returns (token, raw log-prob).
fn sample_row(logits: &[f32], p: &SamplingParams, rng: &mut ChaCha8Rng) -> (usize, f32) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + logits.iter().map(|&l| (l - max).exp()).sum::<f32>().ln();
    let greedy = p.temperature <= 0.0 || p.top_k == 1;
    let tok = if greedy {
        let mut best = 0;
        for (i, &l) in logits.iter().enumerate() {
            if l > logits[best] {
                best = i;
            }
        }
        best
    } else {
        let inv_t = (1.0 / p.temperature) as f32;
        let mut w: Vec<f32> = logits.iter().map(|&l| ((l - max) * inv_t).exp()).collect();
        if p.top_k > 0 && p.top_k < w.len() {
            let mut tmp = w.clone();
            let k = p.top_k;
            let (_, kth, _) = tmp.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
            let thr = *kth;
            for x in &mut w {
                if *x < thr {
                    *x = 0.0;
                }
            }
        }
        if p.top_p < 1.0 {
            nucleus(&mut w, p.top_p as f32);
        }
        let total: f32 = w.iter().sum();
        let mut u = rng.random::<f32>() * total;
        let mut chosen = None;
        for (i, &x) in w.iter().enumerate() {
            if x > 0.0 {
                chosen = Some(i);
                if u < x {
                    break;
                }
                u -= x;
            }
        }
        chosen.unwrap_or(0)
    };
    (tok, logits[tok] - lse)
}

/// Zero every weight outside the smallest set of most likely tokens whose mass reaches `top_p`
/// of the total (ties broken by token id). Sorts only a candidate prefix (the 256 largest, then
/// more) instead of the whole vocabulary.
fn nucleus(w: &mut [f32], top_p: f32) {
    let mut idx: Vec<usize> = (0..w.len()).filter(|&i| w[i] > 0.0).collect();
    let total: f32 = idx.iter().map(|&i| w[i]).sum();
    let target = top_p * total;
    let cmp = |a: &usize, b: &usize| w[*b].total_cmp(&w[*a]).then(a.cmp(b));
    let mut k = 256.min(idx.len());
    loop {
        if k < idx.len() {
            idx.select_nth_unstable_by(k - 1, cmp);
        }
        idx[..k].sort_unstable_by(cmp);
        let mut acc = 0.0;
        let mut keep = None;
        for (j, &i) in idx[..k].iter().enumerate() {
            acc += w[i];
            if acc >= target {
                keep = Some(j + 1);
                break;
            }
        }
        match keep {
            Some(n) => {
                let kept: Vec<usize> = idx[..n].to_vec();
                let vals: Vec<f32> = kept.iter().map(|&i| w[i]).collect();
                w.iter_mut().for_each(|x| *x = 0.0);
                for (i, v) in kept.into_iter().zip(vals) {
                    w[i] = v;
                }
                return;
            }
            None if k == idx.len() => return,
            None => k = (k * 8).min(idx.len()),
        }
    }
}

/// See [`Policy::generate`].
pub fn generate(
    policy: &Policy,
    prompts: &[Vec<i64>],
    p: &SamplingParams,
) -> Result<Vec<Generation>> {
    let counts: Vec<usize> = if p.n_per_prompt.is_empty() {
        vec![p.n; prompts.len()]
    } else if p.n_per_prompt.len() == prompts.len() {
        p.n_per_prompt.clone()
    } else {
        bail!(
            "generate: n_per_prompt has {} entries for {} prompts",
            p.n_per_prompt.len(),
            prompts.len()
        );
    };
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        bail!("generate: top_p must be in (0, 1], got {}", p.top_p);
    }
    let vocab = policy.config().vocab_size;
    for (i, pr) in prompts.iter().enumerate() {
        if pr.is_empty() {
            bail!("generate: prompt {i} is empty");
        }
        if let Some(&t) = pr.iter().find(|&&t| t < 0 || t >= vocab) {
            bail!("generate: prompt {i} has token id {t} outside the vocabulary (size {vocab})");
        }
    }
    let mut stop_ids: Vec<i64> = p.stop_token_ids.clone();
    if !p.ignore_eos {
        stop_ids.extend_from_slice(policy.tokenizer().eos_ids());
    }
    // Chunks of whole prompts, at most max_batch rows each (a prompt with more samples than
    // max_batch is split over several chunks).
    let max_batch = if p.max_batch == 0 {
        usize::MAX
    } else {
        p.max_batch
    };
    let mut chunks: Vec<Vec<(usize, usize, usize)>> = vec![Vec::new()]; // (prompt, first sample, count)
    let mut rows_in = 0usize;
    // Prompts of similar length share chunks (less left-padding); each row has its own RNG, so
    // the order does not change the samples. Output is put back in prompt-major order.
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    for i in order {
        let n = counts[i];
        let mut s = 0;
        while s < n {
            if rows_in == max_batch {
                chunks.push(Vec::new());
                rows_in = 0;
            }
            let take = (n - s).min(max_batch - rows_in);
            if let Some(c) = chunks.last_mut() {
                c.push((i, s, take));
            }
            rows_in += take;
            s += take;
        }
    }
    let mut out = Vec::with_capacity(counts.iter().sum());
    tch::no_grad(|| -> Result<()> {
        for chunk in chunks.iter().filter(|c| !c.is_empty()) {
            out.extend(generate_chunk(policy, prompts, chunk, p, &stop_ids)?);
        }
        Ok(())
    })?;
    out.sort_by_key(|g| (g.prompt_index, g.sample_index));
    Ok(out)
}

fn generate_chunk(
    policy: &Policy,
    prompts: &[Vec<i64>],
    chunk: &[(usize, usize, usize)],
    p: &SamplingParams,
    stop_ids: &[i64],
) -> Result<Vec<Generation>> {
    let dev = policy.device();
    let cfg = policy.config();
    let tok = policy.tokenizer();
    let pad = tok.pad_id().unwrap_or(0);
    let u = chunk.len();
    let plen = chunk
        .iter()
        .map(|&(i, _, _)| prompts[i].len())
        .max()
        .unwrap_or(0);
    let max_new = p.max_tokens as i64;
    // Rows, prompt-major.
    let mut rows: Vec<Row> = Vec::new();
    let mut expand: Vec<i64> = Vec::new();
    for (j, &(i, s0, n)) in chunk.iter().enumerate() {
        for s in s0..s0 + n {
            rows.push(Row {
                prompt: i,
                sample: s,
                rng: ChaCha8Rng::seed_from_u64(row_seed(p.seed, i, s)),
                tokens: Vec::new(),
                logprobs: Vec::new(),
                finish: None,
                stop_cut: None,
            });
            expand.push(j as i64);
        }
    }
    if p.max_tokens == 0 {
        return Ok(finish_rows(policy, rows, p));
    }
    // Prefill the distinct prompts (left-padded).
    let mut ids = vec![pad; u * plen];
    let mut mask = vec![0i64; u * plen];
    for (j, &(i, _, _)) in chunk.iter().enumerate() {
        let pr = &prompts[i];
        let off = j * plen + plen - pr.len();
        ids[off..off + pr.len()].copy_from_slice(pr);
        mask[off..off + pr.len()].iter_mut().for_each(|m| *m = 1);
    }
    let ids = Tensor::from_slice(&ids)
        .view([u as i64, plen as i64])
        .to_device(dev);
    let mask2 = Tensor::from_slice(&mask)
        .view([u as i64, plen as i64])
        .to_device(dev);
    let pos = positions_from_mask(&mask2);
    let cap = plen as i64 + max_new;
    let mut cache = KvCache::new(cfg, u as i64, cap, policy.kind(), dev);
    let model = policy.model();
    // Prompts of equal length need no mask at all (plain causal kernels).
    let padded = chunk.iter().any(|&(i, _, _)| prompts[i].len() != plen);
    let prefill_mask = padded.then(|| causal_mask(&mask2));
    let hidden = model.forward_hidden(&ids, &pos, prefill_mask.as_ref(), Some(&mut cache));
    let last = hidden.narrow(1, plen as i64 - 1, 1).squeeze_dim(1);
    let expand_t = Tensor::from_slice(&expand).to_device(dev);
    let mut logits = model.logits(&last).index_select(0, &expand_t);
    if u != rows.len() || expand.iter().enumerate().any(|(a, &b)| a as i64 != b) {
        cache.select_rows(&expand_t);
    }
    // Key mask over the whole capacity; next positions.
    let mut keymask = Tensor::zeros([rows.len() as i64, cap], (Kind::Bool, dev));
    keymask
        .narrow(1, 0, plen as i64)
        .copy_(&mask2.to_kind(Kind::Bool).index_select(0, &expand_t));
    let mut next_pos = pos.narrow(1, plen as i64 - 1, 1).index_select(0, &expand_t) + 1; // [R,1]
    let mut active: Vec<usize> = (0..rows.len()).collect();
    let vocab = cfg.vocab_size as usize;
    let max_stop_len = p.stop_strings.iter().map(|s| s.len()).max().unwrap_or(0);
    for step in 0..max_new {
        let lf = logits
            .to_kind(Kind::Float)
            .to_device(tch::Device::Cpu)
            .contiguous();
        let mut flat = vec![0f32; active.len() * vocab];
        lf.f_copy_data(&mut flat, active.len() * vocab)?;
        let mut next = Vec::with_capacity(active.len());
        let mut still = Vec::with_capacity(active.len());
        for (k, &r) in active.iter().enumerate() {
            let row = &mut rows[r];
            let (t, lp) = sample_row(&flat[k * vocab..(k + 1) * vocab], p, &mut row.rng);
            let t = t as i64;
            row.tokens.push(t);
            row.logprobs.push(lp);
            next.push(t);
            if stop_ids.contains(&t) {
                row.finish = Some(FinishReason::Stop);
            } else if max_stop_len > 0 {
                // Check the tail only; locate the cut on the full text when it matches.
                let w = (max_stop_len + 8).min(row.tokens.len());
                let tail = tok.decode(&row.tokens[row.tokens.len() - w..], true)?;
                if p.stop_strings.iter().any(|s| tail.contains(s.as_str())) {
                    let full = tok.decode(&row.tokens, true)?;
                    let cut = p
                        .stop_strings
                        .iter()
                        .filter_map(|s| full.find(s.as_str()))
                        .min();
                    if let Some(c) = cut {
                        row.stop_cut = Some(c);
                        row.finish = Some(FinishReason::Stop);
                    }
                }
            }
            if row.finish.is_none() && row.tokens.len() >= p.max_tokens {
                row.finish = Some(FinishReason::Length);
            }
            if row.finish.is_none() {
                still.push(k as i64);
            }
        }
        if still.is_empty() {
            break;
        }
        let mut next_t = Tensor::from_slice(&next)
            .view([active.len() as i64, 1])
            .to_device(dev);
        if still.len() < active.len() {
            let keep = Tensor::from_slice(&still).to_device(dev);
            cache.select_rows(&keep);
            keymask = keymask.index_select(0, &keep);
            next_pos = next_pos.index_select(0, &keep);
            next_t = next_t.index_select(0, &keep);
            active = still.iter().map(|&k| active[k as usize]).collect();
        }
        let cur = plen as i64 + step;
        let _ = keymask.narrow(1, cur, 1).fill_(1);
        let m4 = padded.then(|| keymask.narrow(1, 0, cur + 1).unsqueeze(1).unsqueeze(1));
        let h = model.forward_hidden(&next_t, &next_pos, m4.as_ref(), Some(&mut cache));
        logits = model.logits(&h.squeeze_dim(1));
        next_pos += 1;
    }
    Ok(finish_rows(policy, rows, p))
}

fn finish_rows(policy: &Policy, rows: Vec<Row>, p: &SamplingParams) -> Vec<Generation> {
    rows.into_iter()
        .map(|r| {
            let mut text = policy
                .tokenizer()
                .decode(&r.tokens, true)
                .unwrap_or_default();
            if let Some(c) = r.stop_cut {
                text.truncate(c);
            }
            let finish = r.finish.unwrap_or(if r.tokens.len() >= p.max_tokens {
                FinishReason::Length
            } else {
                FinishReason::Stop
            });
            Generation {
                prompt_index: r.prompt,
                sample_index: r.sample,
                token_ids: r.tokens,
                text,
                logprobs: r.logprobs,
                finish_reason: finish,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleus_keeps_the_smallest_top_set() {
        let mut w = vec![0.1, 0.4, 0.2, 0.3];
        nucleus(&mut w, 0.65);
        assert_eq!(w, vec![0.0, 0.4, 0.0, 0.3]);
        let mut w: Vec<f32> = (0..5000).map(|i| 1.0 + (i % 7) as f32).collect();
        let total: f32 = w.iter().sum();
        nucleus(&mut w, 0.9);
        let kept: f32 = w.iter().sum();
        assert!(
            kept >= 0.9 * total * 0.999 && kept < 0.95 * total,
            "{kept} of {total}"
        );
    }

    #[test]
    fn sampling_respects_top_k_and_greedy() {
        let logits = vec![0.0f32, 3.0, 1.0, 2.9];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let greedy = SamplingParams {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(sample_row(&logits, &greedy, &mut rng).0, 1);
        let top2 = SamplingParams {
            temperature: 1.0,
            top_k: 2,
            ..Default::default()
        };
        for _ in 0..200 {
            let (t, lp) = sample_row(&logits, &top2, &mut rng);
            assert!(t == 1 || t == 3);
            assert!(lp < 0.0);
        }
    }
}
