//! The decoder-only transformer shared by Llama and Qwen2: token embedding, `n` blocks of
//! (RMSNorm → GQA self-attention with RoPE → residual, RMSNorm → SwiGLU MLP → residual), final
//! RMSNorm, LM head (tied or not). Every tensor lives in a `tch::nn::VarStore` under its HF
//! name (`model.layers.0.self_attn.q_proj.weight`, ...), so checkpoints map one to one.
//!
//! Attention takes per-row positions and an explicit boolean mask, so the same code serves
//! left-padded batched generation (with a preallocated batched KV cache), right-padded
//! training batches and single sequences.

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use super::config::ModelConfig;

/// LoRA adapter on one linear: `y += scale · (x Aᵀ) Bᵀ`, A `[r, in]`, B `[out, r]`.
#[derive(Debug)]
pub struct LoraAdapter {
    /// `lora_A.weight`, `[r, in]`.
    pub a: Tensor,
    /// `lora_B.weight`, `[out, r]`.
    pub b: Tensor,
    /// `alpha / r`.
    pub scale: f64,
}

/// A linear layer (`weight` `[out, in]`, optional bias) with an optional LoRA adapter.
#[derive(Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Option<Tensor>,
    /// Adapter, when LoRA is enabled on this module.
    pub lora: Option<LoraAdapter>,
}

impl Linear {
    fn new(p: &Path, in_dim: i64, out_dim: i64, bias: bool, init: &WeightInit) -> Linear {
        let weight = p.var("weight", &[out_dim, in_dim], init.linear());
        let bias = bias.then(|| p.var("bias", &[out_dim], Init::Const(0.)));
        Linear {
            weight,
            bias,
            lora: None,
        }
    }

    /// `x Wᵀ + b (+ LoRA)`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match &self.lora {
            // Adapters are fp32 over a base of any dtype: the low-rank path runs in theirs.
            Some(l) if l.a.kind() != x.kind() => {
                let d = x
                    .to_kind(l.a.kind())
                    .linear::<Tensor>(&l.a, None)
                    .linear::<Tensor>(&l.b, None)
                    * l.scale;
                y + d.to_kind(x.kind())
            }
            Some(l) => y + x.linear::<Tensor>(&l.a, None).linear::<Tensor>(&l.b, None) * l.scale,
            None => y,
        }
    }

    /// The effective weight (`W + scale · B A` with an adapter), detached.
    pub fn merged_weight(&self) -> Tensor {
        let w = self.weight.detach();
        match &self.lora {
            Some(l) => {
                let delta =
                    l.b.detach()
                        .to_kind(Kind::Float)
                        .matmul(&l.a.detach().to_kind(Kind::Float))
                        * l.scale;
                (w.to_kind(Kind::Float) + delta).to_kind(w.kind())
            }
            None => w,
        }
    }
}

/// How fresh variables are initialised (loading overwrites them).
#[derive(Debug, Clone, Copy)]
pub enum WeightInit {
    /// Cheap zeros/ones, to be overwritten by a checkpoint.
    ForLoad,
    /// HF's init: normal(0, std) for linears and embeddings, ones for norms, zeros for biases.
    Random {
        /// `initializer_range` (0.02 in HF configs).
        std: f64,
    },
}

impl WeightInit {
    fn linear(&self) -> Init {
        match self {
            WeightInit::ForLoad => Init::Const(0.),
            WeightInit::Random { std } => Init::Randn {
                mean: 0.,
                stdev: *std,
            },
        }
    }
}

/// RMSNorm as HF computes it: in f32, `w · (x / sqrt(mean(x²) + eps))` cast back.
#[derive(Debug)]
pub struct RmsNorm {
    /// `[hidden]`.
    pub weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(p: &Path, dim: i64, eps: f64) -> RmsNorm {
        RmsNorm {
            weight: p.var("weight", &[dim], Init::Const(1.)),
            eps,
        }
    }
    /// Normalise the last dimension.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let xf = x.to_kind(Kind::Float);
        let var = xf.square().mean_dim(-1, true, Kind::Float);
        let y = (xf * (var + self.eps).rsqrt()).to_kind(kind);
        &self.weight * y
    }
}

/// Per-layer key/value cache: `[B, kv_heads, capacity, head_dim]` each.
#[derive(Debug)]
pub struct LayerCache {
    k: Tensor,
    v: Tensor,
}

/// A batched KV cache with a fixed capacity; `len` positions are filled (the same for every
/// row: rows are left-padded and masked).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// Preallocate for `batch` rows and `capacity` positions.
    pub fn new(
        cfg: &ModelConfig,
        batch: i64,
        capacity: i64,
        kind: Kind,
        device: tch::Device,
    ) -> Self {
        let shape = [batch, cfg.kv_heads(), capacity, cfg.head_dim()];
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| LayerCache {
                k: Tensor::zeros(shape, (kind, device)),
                v: Tensor::zeros(shape, (kind, device)),
            })
            .collect();
        KvCache {
            layers,
            len: 0,
            capacity,
        }
    }
    /// Filled positions.
    pub fn len(&self) -> i64 {
        self.len
    }
    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Capacity in positions.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }
    /// Keep only the rows `index` (1-D int64), in that order (rows may repeat).
    pub fn select_rows(&mut self, index: &Tensor) {
        for l in &mut self.layers {
            l.k = l.k.index_select(0, index);
            l.v = l.v.index_select(0, index);
        }
    }
}

/// Self-attention with grouped-query heads and rotary embeddings.
#[derive(Debug)]
pub struct Attention {
    /// `q_proj`.
    pub q_proj: Linear,
    /// `k_proj`.
    pub k_proj: Linear,
    /// `v_proj`.
    pub v_proj: Linear,
    /// `o_proj`.
    pub o_proj: Linear,
    n_heads: i64,
    n_kv: i64,
    head_dim: i64,
}

fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size()[x.dim() - 1] / 2;
    let x1 = x.narrow(-1, 0, half);
    let x2 = x.narrow(-1, half, half);
    Tensor::cat(&[x2.neg(), x1], -1)
}

fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

impl Attention {
    fn new(p: &Path, cfg: &ModelConfig, init: &WeightInit) -> Attention {
        let (h, d, nh, nkv) = (
            cfg.hidden_size,
            cfg.head_dim(),
            cfg.num_attention_heads,
            cfg.kv_heads(),
        );
        let bias = cfg.qkv_bias();
        Attention {
            q_proj: Linear::new(&(p / "q_proj"), h, nh * d, bias, init),
            k_proj: Linear::new(&(p / "k_proj"), h, nkv * d, bias, init),
            v_proj: Linear::new(&(p / "v_proj"), h, nkv * d, bias, init),
            o_proj: Linear::new(&(p / "o_proj"), nh * d, h, false, init),
            n_heads: nh,
            n_kv: nkv,
            head_dim: d,
        }
    }

    /// `x` `[B, T, H]`; `cos`/`sin` `[B, 1, T, D]`; `mask` boolean `[B, 1, T, S]` (true = attend)
    /// where S = cached + T, or `None` for plain causal attention without padding.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut LayerCache, i64)>,
    ) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let q = self
            .q_proj
            .forward(x)
            .view([b, t, self.n_heads, self.head_dim])
            .transpose(1, 2);
        let k = self
            .k_proj
            .forward(x)
            .view([b, t, self.n_kv, self.head_dim])
            .transpose(1, 2);
        let v = self
            .v_proj
            .forward(x)
            .view([b, t, self.n_kv, self.head_dim])
            .transpose(1, 2);
        let q = apply_rope(&q, cos, sin);
        let k = apply_rope(&k, cos, sin);
        let (k, v, past) = match cache {
            Some((c, past)) => {
                c.k.narrow(2, past, t).copy_(&k);
                c.v.narrow(2, past, t).copy_(&v);
                (c.k.narrow(2, 0, past + t), c.v.narrow(2, 0, past + t), past)
            }
            None => (k, v, 0),
        };
        // Without a mask: causal (top-left aligned, so only valid with nothing cached, or a
        // single query that may see every cached key).
        let is_causal = mask.is_none() && t > 1;
        assert!(
            !(is_causal && past > 0),
            "attention without a mask over a cache needs t == 1"
        );
        let y = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            mask,
            0.0,
            is_causal,
            None::<f64>,
            self.n_kv != self.n_heads,
        );
        let y = y
            .transpose(1, 2)
            .reshape([b, t, self.n_heads * self.head_dim]);
        self.o_proj.forward(&y)
    }
}

/// SwiGLU MLP: `down(silu(gate(x)) · up(x))`.
#[derive(Debug)]
pub struct Mlp {
    /// `gate_proj`.
    pub gate_proj: Linear,
    /// `up_proj`.
    pub up_proj: Linear,
    /// `down_proj`.
    pub down_proj: Linear,
}

impl Mlp {
    fn new(p: &Path, cfg: &ModelConfig, init: &WeightInit) -> Mlp {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Mlp {
            gate_proj: Linear::new(&(p / "gate_proj"), h, i, false, init),
            up_proj: Linear::new(&(p / "up_proj"), h, i, false, init),
            down_proj: Linear::new(&(p / "down_proj"), i, h, false, init),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj
            .forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
    }
}

/// One decoder block.
#[derive(Debug)]
pub struct Block {
    /// `input_layernorm`.
    pub input_layernorm: RmsNorm,
    /// `self_attn`.
    pub self_attn: Attention,
    /// `post_attention_layernorm`.
    pub post_attention_layernorm: RmsNorm,
    /// `mlp`.
    pub mlp: Mlp,
}

impl Block {
    /// `x + attn(norm(x))`, then `+ mlp(norm(·))`.
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut LayerCache, i64)>,
    ) -> Tensor {
        let h = self
            .self_attn
            .forward(&self.input_layernorm.forward(x), cos, sin, mask, cache);
        let x = x + h; // not `+=`: autograd needs the old x
        let h = self.mlp.forward(&self.post_attention_layernorm.forward(&x));
        x + h
    }
}

/// The whole model.
#[derive(Debug)]
pub struct Transformer {
    /// `model.embed_tokens.weight`, `[V, H]`.
    pub embed_tokens: Tensor,
    /// `model.layers.*`.
    pub layers: Vec<Block>,
    /// `model.norm`.
    pub norm: RmsNorm,
    /// `lm_head` (None when tied to the embedding).
    pub lm_head: Option<Linear>,
    inv_freq: Tensor,
    kind: Kind,
}

impl Transformer {
    /// Create every variable under `root` with HF names.
    pub fn new(root: &Path, cfg: &ModelConfig, init: WeightInit) -> Transformer {
        let m = root / "model";
        let emb_init = match init {
            WeightInit::ForLoad => Init::Const(0.),
            WeightInit::Random { std } => Init::Randn {
                mean: 0.,
                stdev: std,
            },
        };
        let embed_tokens =
            (&m / "embed_tokens").var("weight", &[cfg.vocab_size, cfg.hidden_size], emb_init);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = &m / "layers" / i;
                Block {
                    input_layernorm: RmsNorm::new(
                        &(&p / "input_layernorm"),
                        cfg.hidden_size,
                        cfg.rms_norm_eps,
                    ),
                    self_attn: Attention::new(&(&p / "self_attn"), cfg, &init),
                    post_attention_layernorm: RmsNorm::new(
                        &(&p / "post_attention_layernorm"),
                        cfg.hidden_size,
                        cfg.rms_norm_eps,
                    ),
                    mlp: Mlp::new(&(&p / "mlp"), cfg, &init),
                }
            })
            .collect();
        let norm = RmsNorm::new(&(&m / "norm"), cfg.hidden_size, cfg.rms_norm_eps);
        let lm_head = (!cfg.tie_word_embeddings).then(|| {
            Linear::new(
                &(root / "lm_head"),
                cfg.hidden_size,
                cfg.vocab_size,
                false,
                &init,
            )
        });
        let d = cfg.head_dim();
        let inv_freq: Vec<f32> = (0..d / 2)
            .map(|i| (1.0 / cfg.rope_theta.powf((2 * i) as f64 / d as f64)) as f32)
            .collect();
        let inv_freq = Tensor::from_slice(&inv_freq).to_device(root.device());
        Transformer {
            embed_tokens,
            layers,
            norm,
            lm_head,
            inv_freq,
            kind: root.kind(),
        }
    }

    /// Tell the model its parameters' kind changed (after `VarStore::set_kind`).
    pub fn set_kind(&mut self, kind: Kind) {
        self.kind = kind;
    }

    /// `cos`, `sin` `[B, 1, T, D]` for integer positions `[B, T]` (computed in f32, as HF).
    fn rope(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (
            emb.cos().to_kind(self.kind).unsqueeze(1),
            emb.sin().to_kind(self.kind).unsqueeze(1),
        )
    }

    /// Final hidden states `[B, T, H]` (after `model.norm`).
    ///
    /// `input_ids` `[B, T]`, `positions` `[B, T]` (int64), `mask` boolean `[B, 1, T, S]`
    /// (true = may attend; S = cached + T), or `None` for causal attention over unpadded rows
    /// (then with a non-empty cache T must be 1). With a cache, keys/values of these T
    /// positions are written at `cache.len()` and the cache grows by T.
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let t = input_ids.size()[1];
        let mut x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        let (cos, sin) = self.rope(positions);
        let past = cache.as_ref().map_or(0, |c| c.len);
        for (i, layer) in self.layers.iter().enumerate() {
            let lc = cache.as_deref_mut().map(|c| (&mut c.layers[i], past));
            x = layer.forward(&x, &cos, &sin, mask, lc);
        }
        if let Some(c) = cache {
            c.len = past + t;
        }
        self.norm.forward(&x)
    }

    /// A training pass through the decoder (no cache). `head` receives the final hidden states
    /// `[B, T, H]` as a leaf that requires grad; it must `backward` whatever loss it computes
    /// from them (in as many pieces as it likes: the gradient accumulates in the leaf) and
    /// returns its result. The gradient is then carried into the parameters: through the graph
    /// kept by the forward, or with `checkpoint`, block by block, recomputing each block's
    /// activations from its saved input (only one block's activations live at a time, plus
    /// one `[B, T, H]` input per block).
    pub fn train_pass<R>(
        &self,
        input_ids: &Tensor,
        positions: &Tensor,
        mask: Option<&Tensor>,
        checkpoint: bool,
        head: impl FnOnce(&Tensor) -> anyhow::Result<R>,
    ) -> anyhow::Result<R> {
        use anyhow::Context;
        let backward_into = |out: &Tensor, grad: &Tensor| -> anyhow::Result<()> {
            // d/d(out) of Σ out·grad is grad: a backward that seeds `out` with `grad`.
            (out * grad)
                .sum(Kind::Float)
                .f_backward()
                .context("backward pass")
        };
        if !checkpoint {
            let h = self.forward_hidden(input_ids, positions, mask, None);
            let leaf = h.detach().set_requires_grad(true);
            let r = head(&leaf)?;
            let g = leaf.grad();
            if g.defined() {
                backward_into(&h, &g)?;
            }
            return Ok(r);
        }
        let (cos, sin) = self.rope(positions);
        // Forward without a graph, keeping every block's input.
        let mut inputs = Vec::with_capacity(self.layers.len() + 1);
        tch::no_grad(|| {
            let mut x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
            for layer in &self.layers {
                let y = layer.forward(&x, &cos, &sin, mask, None);
                inputs.push(x);
                x = y;
            }
            inputs.push(x);
        });
        // Final norm, then the head.
        let Some(last) = inputs.pop() else {
            anyhow::bail!("train_pass: model without layers");
        };
        let x_last = last.set_requires_grad(true);
        let h = self.norm.forward(&x_last);
        let leaf = h.detach().set_requires_grad(true);
        let r = head(&leaf)?;
        let g = leaf.grad();
        if !g.defined() {
            return Ok(r);
        }
        backward_into(&h, &g)?;
        let mut g = x_last.grad();
        // Blocks in reverse, recomputed from their inputs.
        for (layer, x) in self.layers.iter().zip(inputs).rev() {
            let x = x.set_requires_grad(true);
            let y = layer.forward(&x, &cos, &sin, mask, None);
            backward_into(&y, &g)?;
            g = x.grad();
        }
        let x0 = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        if x0.requires_grad() {
            backward_into(&x0, &g)?;
        }
        Ok(r)
    }

    /// Logits for hidden states `[..., H]` → `[..., V]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        match &self.lm_head {
            Some(l) => l.forward(hidden),
            None => hidden.linear::<Tensor>(&self.embed_tokens, None),
        }
    }

    /// All linears of layer `i` with their HF module names (`q_proj`, ..., `down_proj`).
    pub fn layer_linears_mut(&mut self, i: usize) -> Vec<(&'static str, &mut Linear)> {
        let l = &mut self.layers[i];
        vec![
            ("q_proj", &mut l.self_attn.q_proj),
            ("k_proj", &mut l.self_attn.k_proj),
            ("v_proj", &mut l.self_attn.v_proj),
            ("o_proj", &mut l.self_attn.o_proj),
            ("gate_proj", &mut l.mlp.gate_proj),
            ("up_proj", &mut l.mlp.up_proj),
            ("down_proj", &mut l.mlp.down_proj),
        ]
    }

    /// Every parameter with its HF name, in checkpoint (layer) order; linears with adapters
    /// give their merged weight.
    pub fn named_tensors(&self, merged: bool) -> Vec<(String, Tensor)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.detach(),
        )];
        let lin = |out: &mut Vec<(String, Tensor)>, name: String, l: &Linear| {
            let w = if merged {
                l.merged_weight()
            } else {
                l.weight.detach()
            };
            out.push((format!("{name}.weight"), w));
            if let Some(b) = &l.bias {
                out.push((format!("{name}.bias"), b.detach()));
            }
        };
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((
                format!("{p}.input_layernorm.weight"),
                l.input_layernorm.weight.detach(),
            ));
            for (n, m) in [
                ("q_proj", &l.self_attn.q_proj),
                ("k_proj", &l.self_attn.k_proj),
                ("v_proj", &l.self_attn.v_proj),
                ("o_proj", &l.self_attn.o_proj),
            ] {
                lin(&mut out, format!("{p}.self_attn.{n}"), m);
            }
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.weight.detach(),
            ));
            for (n, m) in [
                ("gate_proj", &l.mlp.gate_proj),
                ("up_proj", &l.mlp.up_proj),
                ("down_proj", &l.mlp.down_proj),
            ] {
                lin(&mut out, format!("{p}.mlp.{n}"), m);
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.detach()));
        if let Some(h) = &self.lm_head {
            lin(&mut out, "lm_head".to_string(), h);
        }
        out
    }
}

/// Positions from a `[B, T]` 0/1 attention mask: `cumsum - 1`, clamped at 0 (works for left
/// and right padding).
pub fn positions_from_mask(mask: &Tensor) -> Tensor {
    (mask.to_kind(Kind::Int64).cumsum(1, Kind::Int64) - 1).clamp_min(0)
}

/// Boolean `[B, 1, T, T]` mask for a fresh (uncached) batch: causal ∧ key not padding, plus
/// the diagonal (so padding queries attend to themselves and never produce NaN).
pub fn causal_mask(mask: &Tensor) -> Tensor {
    let t = mask.size()[1];
    let dev = mask.device();
    let causal = Tensor::ones([t, t], (Kind::Bool, dev)).tril(0);
    let eye = Tensor::eye(t, (Kind::Bool, dev));
    let keys = mask.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1);
    causal.logical_and(&keys).logical_or(&eye)
}
