//! Log-probs of completion tokens without a `[tokens × vocab]` fp32 tensor: the LM head and
//! the log-softmax run over chunks of completion tokens. Only the completion positions reach the
//! head (prompt positions never do).
//!
//! For training, [`Policy::train_batch`] gives the caller one chunk at a time (log-probs with
//! grad) and back-propagates the chunk's loss at once, so the autograd graph holds one chunk's
//! logits; the gradients at the hidden states are gathered and carried through the decoder in
//! one backward (optionally with per-block activation checkpointing). This works because the
//! token-level PPO loss is a sum over tokens.

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use super::{causal_mask, positions_from_mask, Policy, SeqLogprobs};

/// Completion tokens per LM-head chunk when the caller does not say.
pub const DEFAULT_CHUNK_TOKENS: usize = 512;

/// Rows per piece of the detached entropy statistic, so it adds no `[chunk × vocab]` tensors.
const ENTROPY_ROWS: i64 = 128;

/// How [`Policy::train_batch`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainPass {
    /// Completion tokens per LM-head chunk (0 = off: the whole micro-batch at once).
    pub chunk_tokens: usize,
    /// Per-block activation checkpointing.
    pub checkpoint: bool,
    /// Compute the entropy with grad (for an entropy bonus); otherwise it is computed detached,
    /// for the statistics only.
    pub entropy_grad: bool,
}

impl Default for TrainPass {
    fn default() -> Self {
        Self {
            chunk_tokens: DEFAULT_CHUNK_TOKENS,
            checkpoint: false,
            entropy_grad: false,
        }
    }
}

/// One chunk of a micro-batch's completion tokens (flat, in batch order).
pub struct TokenChunk {
    /// Index of the chunk's first token among the micro-batch's completion tokens.
    pub offset: i64,
    /// log π of the chunk's tokens, `[n]` f32, with grad.
    pub logprobs: Tensor,
    /// Entropy at the chunk's positions, `[n]` f32 (with grad only when asked for).
    pub entropy: Tensor,
}

/// A right-padded batch ready for the model.
struct Packed {
    ids: Tensor,
    mask: Tensor,
    /// Flat positions (row·T + t) whose output predicts a completion token.
    gather: Tensor,
    targets: Tensor,
    /// Completion lengths, in batch order.
    lens: Vec<i64>,
    /// No padding at all.
    dense: bool,
}

impl Policy {
    fn pack(&self, batch: &[&(Vec<i64>, Vec<i64>)]) -> Result<Packed> {
        let b = batch.len();
        let l = batch
            .iter()
            .map(|(p, c)| p.len() + c.len())
            .max()
            .unwrap_or(0);
        let pad = self.tok.pad_id().unwrap_or(0);
        let mut ids = vec![pad; b * l];
        let mut mask = vec![0i64; b * l];
        let mut gather = Vec::new();
        let mut targets = Vec::new();
        let mut lens = Vec::with_capacity(b);
        for (r, (p, c)) in batch.iter().enumerate() {
            if p.is_empty() {
                bail!("logprobs: a sequence has an empty prompt (the first completion token needs context)");
            }
            for (j, &t) in p.iter().chain(c.iter()).enumerate() {
                if t < 0 || t >= self.cfg.vocab_size {
                    bail!(
                        "logprobs: token id {t} outside the vocabulary (size {})",
                        self.cfg.vocab_size
                    );
                }
                ids[r * l + j] = t;
                mask[r * l + j] = 1;
            }
            for (k, &t) in c.iter().enumerate() {
                gather.push((r * l + p.len() + k - 1) as i64);
                targets.push(t);
            }
            lens.push(c.len() as i64);
        }
        let dense = mask.iter().all(|&m| m == 1);
        let dev = self.device;
        let shape = [b as i64, l as i64];
        Ok(Packed {
            ids: Tensor::from_slice(&ids).view(shape).to_device(dev),
            mask: Tensor::from_slice(&mask).view(shape).to_device(dev),
            gather: Tensor::from_slice(&gather).to_device(dev),
            targets: Tensor::from_slice(&targets).to_device(dev),
            lens,
            dense,
        })
    }

    /// Positions and attention mask for a packed batch (`None` mask: plain causal).
    fn positions_and_mask(&self, p: &Packed) -> (Tensor, Option<Tensor>) {
        if p.dense {
            let t = p.ids.size()[1];
            let pos = Tensor::arange(t, (Kind::Int64, self.device)).unsqueeze(0);
            (pos, None)
        } else {
            (positions_from_mask(&p.mask), Some(causal_mask(&p.mask)))
        }
    }

    /// LM head over hidden states `[n, H]`: log-probs of `targets` `[n]` and the entropy per
    /// position (`None`: not computed; `Some(false)`: detached, for statistics; `Some(true)`:
    /// with grad). fp32 math over at most `[n × vocab]`.
    fn head_chunk(
        &self,
        h: &Tensor,
        targets: &Tensor,
        entropy: Option<bool>,
    ) -> (Tensor, Option<Tensor>) {
        let logits = self.model.logits(h).to_kind(Kind::Float);
        let lse = logits.logsumexp([-1], false);
        let lp = logits
            .gather(1, &targets.unsqueeze(1), false)
            .squeeze_dim(1)
            - &lse;
        let ent_of = |logits: &Tensor, lse: &Tensor| {
            let p = (logits - lse.unsqueeze(1)).exp();
            lse - (p * logits).sum_dim_intlist(-1, false, Kind::Float)
        };
        let ent = match entropy {
            None => None,
            Some(true) => Some(ent_of(&logits, &lse)),
            Some(false) => Some(tch::no_grad(|| {
                let (l, s) = (logits.detach(), lse.detach());
                let n = l.size()[0];
                let parts: Vec<Tensor> = (0..n)
                    .step_by(ENTROPY_ROWS as usize)
                    .map(|a| {
                        let k = ENTROPY_ROWS.min(n - a);
                        ent_of(&l.narrow(0, a, k), &s.narrow(0, a, k))
                    })
                    .collect();
                if parts.is_empty() {
                    s.zeros_like()
                } else {
                    Tensor::cat(&parts, 0)
                }
            })),
        };
        (lp, ent)
    }

    /// One right-padded batch: log-probs (and entropies) of every completion, the LM head in
    /// chunks of `chunk_tokens` completion tokens. Tracks gradients when grad mode is on.
    fn batch_logprobs(
        &self,
        batch: &[&(Vec<i64>, Vec<i64>)],
        entropy: bool,
        chunk_tokens: usize,
    ) -> Result<Vec<SeqLogprobs>> {
        let p = self.pack(batch)?;
        let (pos, mask) = self.positions_and_mask(&p);
        let hidden = self.model.forward_hidden(&p.ids, &pos, mask.as_ref(), None);
        let flat = hidden.reshape([-1, self.cfg.hidden_size]);
        let n = p.targets.size()[0];
        // 0 = off: one chunk of every completion token.
        let chunk = if chunk_tokens == 0 {
            n.max(1)
        } else {
            chunk_tokens as i64
        };
        let (mut lps, mut ents) = (Vec::new(), Vec::new());
        let mut a = 0;
        while a < n {
            let len = chunk.min(n - a);
            let h = flat.index_select(0, &p.gather.narrow(0, a, len));
            let (lp, ent) =
                self.head_chunk(&h, &p.targets.narrow(0, a, len), entropy.then_some(true));
            lps.push(lp);
            if let Some(e) = ent {
                ents.push(e);
            }
            a += len;
        }
        let cat = |v: &[Tensor]| -> Tensor {
            if v.is_empty() {
                Tensor::zeros([0], (Kind::Float, self.device))
            } else {
                Tensor::cat(v, 0)
            }
        };
        let lp = cat(&lps);
        let ent = if entropy {
            cat(&ents)
        } else {
            Tensor::zeros([0], (Kind::Float, self.device))
        };
        let mut out = Vec::with_capacity(batch.len());
        let mut off = 0i64;
        for &len in &p.lens {
            out.push(SeqLogprobs {
                logprobs: lp.narrow(0, off, len),
                entropy: if entropy {
                    ent.narrow(0, off, len)
                } else {
                    Tensor::zeros([0], (Kind::Float, self.device))
                },
            });
            off += len;
        }
        Ok(out)
    }

    /// One right-padded batch: log-probs and entropies for every sequence in it (the LM head in
    /// chunks of [`DEFAULT_CHUNK_TOKENS`]).
    pub fn logprobs_batch(&self, batch: &[&(Vec<i64>, Vec<i64>)]) -> Result<Vec<SeqLogprobs>> {
        self.batch_logprobs(batch, true, DEFAULT_CHUNK_TOKENS)
    }

    /// Per-token log-probs only (no entropy) of each completion, in input order, in
    /// micro-batches of `token_budget` padded tokens and LM-head chunks of `chunk_tokens`.
    pub fn token_logprobs(
        &self,
        seqs: &[(Vec<i64>, Vec<i64>)],
        token_budget: usize,
        chunk_tokens: usize,
    ) -> Result<Vec<Tensor>> {
        let mut out: Vec<Option<Tensor>> = (0..seqs.len()).map(|_| None).collect();
        for group in Self::micro_batches(seqs, token_budget) {
            let batch: Vec<&(Vec<i64>, Vec<i64>)> = group.iter().map(|&i| &seqs[i]).collect();
            let res = self.batch_logprobs(&batch, false, chunk_tokens)?;
            for (i, r) in group.into_iter().zip(res) {
                out[i] = Some(r.logprobs);
            }
        }
        out.into_iter()
            .enumerate()
            .map(|(i, r)| r.with_context(|| format!("logprobs: sequence {i} was not computed")))
            .collect()
    }

    /// Forward and backward of one micro-batch for training. `loss` gets each chunk of the
    /// batch's completion tokens (flat, batch order) and returns that chunk's scalar loss,
    /// which is back-propagated at once; parameter gradients accumulate over chunks (and over
    /// calls: zero them yourself).
    pub fn train_batch(
        &self,
        batch: &[&(Vec<i64>, Vec<i64>)],
        pass: &TrainPass,
        mut loss: impl FnMut(&TokenChunk) -> Result<Tensor>,
    ) -> Result<()> {
        let p = self.pack(batch)?;
        let (pos, mask) = self.positions_and_mask(&p);
        let n = p.targets.size()[0];
        let chunk = if pass.chunk_tokens == 0 {
            n.max(1)
        } else {
            pass.chunk_tokens as i64
        };
        let hsize = self.cfg.hidden_size;
        self.model
            .train_pass(&p.ids, &pos, mask.as_ref(), pass.checkpoint, |hidden| {
                let sel = hidden.reshape([-1, hsize]).index_select(0, &p.gather);
                // Chunks back-propagate into this leaf; one backward then reaches `hidden`.
                let leaf = sel.detach().set_requires_grad(true);
                let mut a = 0;
                while a < n {
                    let len = chunk.min(n - a);
                    let h = leaf.narrow(0, a, len);
                    let tg = p.targets.narrow(0, a, len);
                    let (lp, ent) = self.head_chunk(&h, &tg, Some(pass.entropy_grad));
                    let entropy = ent.unwrap_or_else(|| lp.detach().zeros_like());
                    let l = loss(&TokenChunk {
                        offset: a,
                        logprobs: lp,
                        entropy,
                    })?;
                    if l.requires_grad() {
                        l.f_backward().context("backward of the LM head")?;
                    }
                    a += len;
                }
                let g = leaf.grad();
                if g.defined() {
                    (sel * g)
                        .sum(Kind::Float)
                        .f_backward()
                        .context("backward into the hidden states")?;
                }
                Ok(())
            })
    }
}
