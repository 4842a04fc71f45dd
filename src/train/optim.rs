//! AdamW with PyTorch's semantics (decoupled decay, bias correction) and the training precisions
//! of `train.precision`.
//!
//! - `bf16_mixed` (the default for bf16/f16 weights): the model's tensors are the *compute*
//!   weights (bf16); the optimiser keeps fp32 master weights, fp32 moments and fp32 gradient
//!   accumulators. After each micro-batch's backward, [`AdamW::accumulate`] adds the bf16
//!   gradients into the fp32 accumulators; [`AdamW::step`] updates the masters and refreshes the
//!   compute weights from them. An update far below bf16's resolution (lr 1e-6 on a weight of
//!   0.02) still moves the master, and reaches the compute weight once it adds up.
//! - `fp32`: f32 weights, f32 moments (no copies needed).
//! - `pure`: moments and updates in the weights' own dtype (what a plain bf16 AdamW does; loses
//!   updates below the dtype's resolution, see [`pure_precision_loss`]).
//!
//! The whole state (masters, moments, step) is checkpointed as named safetensors, so a resume
//! is bit-exact.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// `train.precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// `bf16_mixed` when `model.dtype` is bf16/f16, else `fp32`.
    #[default]
    Auto,
    /// fp32 masters, moments and gradient accumulation; bf16/f16 compute weights.
    Bf16Mixed,
    /// Everything in f32 (`model.dtype` must be f32).
    Fp32,
    /// Weights, moments and updates in `model.dtype` (no master copy).
    Pure,
}

impl Precision {
    /// The precision a run with weights of `kind` trains in (`Auto` resolved). Errors name the
    /// combination that cannot work.
    pub fn resolve(self, kind: Kind) -> Result<Precision, String> {
        let low = matches!(kind, Kind::BFloat16 | Kind::Half);
        match (self, low) {
            (Precision::Auto, true) => Ok(Precision::Bf16Mixed),
            (Precision::Auto, false) => Ok(Precision::Fp32),
            (Precision::Bf16Mixed, false) => Err(
                "bf16_mixed computes in bf16 from fp32 masters: set model.dtype = \"bf16\" \
                 (or train.precision = \"fp32\" for f32 weights)"
                    .into(),
            ),
            (Precision::Fp32, true) => Err(format!(
                "fp32 trains f32 weights, but model.dtype is {kind:?}: set model.dtype = \"f32\" \
                 (or train.precision = \"bf16_mixed\")"
            )),
            (p, _) => Ok(p),
        }
    }

    /// Config spelling.
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::Bf16Mixed => "bf16_mixed",
            Precision::Fp32 => "fp32",
            Precision::Pure => "pure",
        }
    }
}

/// Relative resolution (machine epsilon) of a floating dtype.
pub fn dtype_epsilon(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => 2f64.powi(-7),
        Kind::Half => 2f64.powi(-10),
        Kind::Double => f64::EPSILON,
        _ => f64::from(f32::EPSILON),
    }
}

/// Fraction of the elements of `params` that an update of magnitude `lr` cannot change in their
/// own dtype (|w|·ε/2 > lr: the update rounds away). An AdamW step moves a weight by about lr.
pub fn pure_precision_loss<'a>(params: impl IntoIterator<Item = &'a Tensor>, lr: f64) -> f64 {
    let (mut lost, mut total) = (0f64, 0f64);
    tch::no_grad(|| {
        for p in params {
            let half_ulp = dtype_epsilon(p.kind()) / 2.0;
            let n = p.numel() as f64;
            if n == 0.0 {
                continue;
            }
            let big = p
                .abs()
                .to_kind(Kind::Float)
                .gt(lr / half_ulp)
                .sum(Kind::Double)
                .double_value(&[]);
            lost += big;
            total += n;
        }
    });
    if total == 0.0 {
        0.0
    } else {
        lost / total
    }
}

/// The optimiser's hyper-parameters for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// Learning rate.
    pub lr: f64,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// Elements per piece of the flat AdamW arithmetic on a GPU: its temporaries are this size,
/// never the model's (128 MiB of fp32 each; a 1.5 B model takes 46 pieces of ~8 whole-range
/// kernels).
const FLAT_CHUNK_GPU: i64 = 1 << 25;
/// On a CPU: pieces that stay in cache between the ~8 passes (measured with `cures bench optim`
/// on 2 cores: 1 M elements 83 ms, 256 K 90 ms, 32 M 153 ms per step of 32 M parameters).
const FLAT_CHUNK_CPU: i64 = 1 << 20;

fn flat_chunk(device: tch::Device) -> i64 {
    if device.is_cuda() {
        FLAT_CHUNK_GPU
    } else {
        FLAT_CHUNK_CPU
    }
}

/// One trainable tensor.
struct Slot {
    name: String,
    /// The model's tensor (the compute weights).
    param: Tensor,
    /// Where it sits in the flat buffers (`bf16_mixed`).
    offset: i64,
    numel: i64,
}

/// `bf16_mixed` state: one fp32 buffer each, every parameter a contiguous range of it.
struct Flat {
    master: Tensor,
    m: Tensor,
    v: Tensor,
    /// fp32 gradient accumulator.
    acc: Tensor,
}

/// `fp32` / `pure` state: moments per parameter.
struct PerParam {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

enum State {
    Flat(Flat),
    PerParam(PerParam),
}

/// AdamW over the trainable variables of a store (see the module docs).
///
/// In `bf16_mixed` the masters, moments and gradient accumulator are single flat fp32 buffers,
/// so a step is a handful of whole-buffer kernels (in pieces of [`FLAT_CHUNK_GPU`] elements) plus
/// one copy per parameter to refresh the compute weights, not a dozen kernels per parameter.
pub struct AdamW {
    slots: Vec<Slot>,
    state: State,
    step: i64,
    precision: Precision,
}

fn ctx<T>(r: Result<T, tch::TchError>, what: &str) -> Result<T> {
    r.with_context(|| format!("optimiser: {what}"))
}

/// [`ctx`] for an in-place op whose returned handle is not needed.
fn ok<T>(r: Result<T, tch::TchError>, what: &str) -> Result<()> {
    ctx(r, what).map(drop)
}

impl AdamW {
    /// Over every variable of `vs` that requires grad, in name order, in `precision` (already
    /// resolved: `Auto` acts as `Bf16Mixed` for low-precision weights). Errors when libtorch
    /// cannot allocate the state (the message names its size).
    pub fn new(vs: &tch::nn::VarStore, precision: Precision) -> Result<Self> {
        let vars: BTreeMap<String, Tensor> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        let low = vars
            .values()
            .any(|p| !matches!(p.kind(), Kind::Float | Kind::Double));
        let flat = matches!(precision, Precision::Bf16Mixed | Precision::Auto) && low;
        let mut offset = 0i64;
        let slots: Vec<Slot> = vars
            .into_iter()
            .map(|(name, param)| {
                let numel = param.numel() as i64;
                let s = Slot {
                    name,
                    param,
                    offset,
                    numel,
                };
                offset += numel;
                s
            })
            .collect();
        let state = tch::no_grad(|| -> Result<State> {
            if flat {
                let device = slots.first().map_or(tch::Device::Cpu, |s| s.param.device());
                let opts = (Kind::Float, device);
                let gib = offset as f64 * 4.0 / (1u64 << 30) as f64;
                let alloc = |what: &str| {
                    Tensor::f_zeros([offset], opts).with_context(|| {
                        format!(
                            "optimiser: cannot allocate the fp32 {what} ({offset} elements, \
                             {gib:.2} GiB on {device:?}); train.precision = \"bf16_mixed\" keeps \
                             four such buffers"
                        )
                    })
                };
                let master = alloc("master weights")?;
                for s in &slots {
                    ok(
                        master
                            .narrow(0, s.offset, s.numel)
                            .f_copy_(&s.param.detach().reshape([-1])),
                        "copying the weights into the masters",
                    )?;
                }
                Ok(State::Flat(Flat {
                    master,
                    m: alloc("first moments")?,
                    v: alloc("second moments")?,
                    acc: alloc("gradient accumulator")?,
                }))
            } else {
                let mut m = Vec::with_capacity(slots.len());
                let mut v = Vec::with_capacity(slots.len());
                for s in &slots {
                    // fp32 moments unless `pure` (then the weights' dtype; f64 stays f64).
                    let kind = match s.param.kind() {
                        Kind::Double => Kind::Double,
                        k if precision == Precision::Pure => k,
                        _ => Kind::Float,
                    };
                    let z = || {
                        ctx(
                            Tensor::f_zeros(s.param.size(), (kind, s.param.device())),
                            &format!("allocating the moments of {}", s.name),
                        )
                    };
                    m.push(z()?);
                    v.push(z()?);
                }
                Ok(State::PerParam(PerParam { m, v }))
            }
        })?;
        Ok(Self {
            slots,
            state,
            step: 0,
            precision,
        })
    }

    /// Optimiser steps taken.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// The precision it was built with.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// True when fp32 master weights are kept.
    pub fn has_masters(&self) -> bool {
        matches!(self.state, State::Flat(_)) && !self.slots.is_empty()
    }

    /// Bytes of optimiser state (masters, moments, accumulator) beside the model.
    pub fn state_bytes(&self) -> u64 {
        let bytes = |t: &Tensor| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
        match &self.state {
            State::Flat(f) => [&f.master, &f.m, &f.v, &f.acc].into_iter().map(bytes).sum(),
            State::PerParam(p) => p.m.iter().chain(&p.v).map(bytes).sum(),
        }
    }

    /// The fp32 master weights by parameter name, shaped like the parameters (views of the
    /// flat buffer; empty unless masters are kept).
    pub fn masters(&self) -> BTreeMap<String, Tensor> {
        let State::Flat(f) = &self.state else {
            return BTreeMap::new();
        };
        self.slots
            .iter()
            .map(|s| (s.name.clone(), Self::view(&f.master, s)))
            .collect()
    }

    /// Slot `s`'s range of a flat buffer, shaped like its parameter.
    fn view(flat: &Tensor, s: &Slot) -> Tensor {
        flat.narrow(0, s.offset, s.numel)
            .view(s.param.size().as_slice())
    }

    /// Zero every parameter's gradient (and the fp32 accumulator).
    pub fn zero_grad(&mut self) -> Result<()> {
        tch::no_grad(|| {
            for s in &self.slots {
                let mut g = s.param.grad();
                if g.defined() {
                    ok(g.f_zero_(), "zeroing gradients")?;
                }
            }
            if let State::Flat(f) = &mut self.state {
                ok(f.acc.f_zero_(), "zeroing the gradient accumulator")?;
            }
            Ok(())
        })
    }

    /// Move the gradients of the last backward into the fp32 accumulator and zero them (no-op
    /// without masters). Call after every micro-batch's backward: accumulating many
    /// micro-batches in bf16 would round away their small contributions. ([`AdamW::step`] and
    /// [`AdamW::clip_grad_norm`] call it too, so a forgotten call loses nothing.)
    pub fn accumulate(&mut self) -> Result<()> {
        let State::Flat(f) = &mut self.state else {
            return Ok(());
        };
        tch::no_grad(|| {
            for s in &self.slots {
                let mut g = s.param.grad();
                if g.defined() {
                    let mut dst = Self::view(&f.acc, s);
                    ok(dst.f_add_(&g), "accumulating gradients in fp32")?;
                    ok(g.f_zero_(), "zeroing gradients")?;
                }
            }
            Ok(())
        })
    }

    /// Global L2 norm of the gradients; when above `max_norm` (> 0), scale them down to it.
    /// Returns the norm before clipping (one device→host transfer).
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64> {
        self.accumulate()?;
        let norm = tch::no_grad(|| -> Result<f64> {
            match &mut self.state {
                State::Flat(f) => {
                    let n = ctx(f.acc.f_norm(), "gradient norm")?;
                    let norm = ctx(n.f_double_value(&[]), "gradient norm")?;
                    if max_norm > 0.0 && norm > max_norm {
                        ok(
                            f.acc.f_mul_scalar_(max_norm / (norm + 1e-6)),
                            "clipping gradients",
                        )?;
                    }
                    Ok(norm)
                }
                State::PerParam(_) => {
                    let grads: Vec<Tensor> = self
                        .slots
                        .iter()
                        .map(|s| s.param.grad())
                        .filter(Tensor::defined)
                        .collect();
                    if grads.is_empty() {
                        return Ok(0.0);
                    }
                    let mut sq = Vec::with_capacity(grads.len());
                    for g in &grads {
                        let g = ctx(g.f_to_kind(Kind::Float), "gradient norm")?;
                        sq.push(ctx(g.f_square(), "gradient norm")?.sum(Kind::Double));
                    }
                    let total = ctx(Tensor::f_stack(&sq, 0), "gradient norm")?;
                    let norm =
                        ctx(total.sum(Kind::Double).f_double_value(&[]), "gradient norm")?.sqrt();
                    if max_norm > 0.0 && norm > max_norm {
                        let scale = max_norm / (norm + 1e-6);
                        for mut g in grads {
                            ok(g.f_mul_scalar_(scale), "clipping gradients")?;
                        }
                    }
                    Ok(norm)
                }
            }
        })?;
        Ok(norm)
    }

    /// One AdamW update: `bf16_mixed` updates the flat masters and refreshes the compute
    /// weights from them; `fp32`/`pure` update each parameter in place.
    pub fn step(&mut self, h: &AdamWParams) -> Result<()> {
        self.accumulate()?;
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - h.beta1.powi(t);
        let bc2 = 1.0 - h.beta2.powi(t);
        tch::no_grad(|| match &mut self.state {
            State::Flat(f) => {
                let n = f.master.size()[0];
                let chunk = flat_chunk(f.master.device());
                let mut a = 0;
                while a < n {
                    let len = chunk.min(n - a);
                    flat_adamw(f, a, len, h, bc1, bc2)?;
                    a += len;
                }
                for s in &mut self.slots {
                    let w = Self::view(&f.master, s);
                    ok(s.param.f_copy_(&w), "refreshing the compute weights")?;
                }
                Ok(())
            }
            State::PerParam(p) => {
                for (i, s) in self.slots.iter_mut().enumerate() {
                    let g = s.param.grad();
                    if !g.defined() {
                        continue;
                    }
                    param_adamw(&mut s.param, &g, &mut p.m[i], &mut p.v[i], h, bc1, bc2)
                        .with_context(|| format!("optimiser step on {}", s.name))?;
                }
                Ok(())
            }
        })
    }

    /// Save masters, moments and the step count as safetensors (`<name>.master`, `<name>.m`,
    /// `<name>.v`, `__step__`): one tensor per parameter whatever the layout in memory.
    pub fn save(&self, path: &Path) -> Result<()> {
        let step = Tensor::from_slice(&[self.step]);
        let mut named: Vec<(String, Tensor)> = vec![("__step__".to_string(), step)];
        for (i, s) in self.slots.iter().enumerate() {
            match &self.state {
                State::Flat(f) => {
                    named.push((format!("{}.master", s.name), Self::view(&f.master, s)));
                    named.push((format!("{}.m", s.name), Self::view(&f.m, s)));
                    named.push((format!("{}.v", s.name), Self::view(&f.v, s)));
                }
                State::PerParam(p) => {
                    named.push((format!("{}.m", s.name), p.m[i].shallow_clone()));
                    named.push((format!("{}.v", s.name), p.v[i].shallow_clone()));
                }
            }
        }
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
        Tensor::write_safetensors(&refs, path)
            .with_context(|| format!("cannot write optimiser state {}", path.display()))
    }

    /// Restore what [`AdamW::save`] wrote (the parameter set must match). Masters are restored
    /// and the compute weights refreshed from them, so training goes on bit-exactly.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let loaded: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
            .with_context(|| format!("cannot read optimiser state {}", path.display()))?
            .into_iter()
            .collect();
        let step = loaded
            .get("__step__")
            .with_context(|| format!("{}: no __step__ tensor", path.display()))?;
        let step = step
            .f_int64_value(&[0])
            .with_context(|| format!("{}: __step__", path.display()))?;
        let saved_masters = loaded.keys().any(|k| k.ends_with(".master"));
        if saved_masters != self.has_masters() {
            bail!(
                "{}: the checkpoint was trained {} fp32 master weights, this run {} (train.precision \
                 = {}): resume with the checkpoint's train.precision and model.dtype",
                path.display(),
                if saved_masters { "with" } else { "without" },
                if self.has_masters() { "keeps them" } else { "keeps none" },
                self.precision.name()
            );
        }
        // Copy `name.suffix` into `dst` (same shape; converted to dst's dtype and device).
        let restore = |name: &str, suffix: &str, dst: &mut Tensor| -> Result<()> {
            let src = loaded.get(&format!("{name}.{suffix}")).with_context(|| {
                format!("{}: no optimiser state {name}.{suffix}", path.display())
            })?;
            if src.size() != dst.size() {
                bail!(
                    "{}: optimiser state {name}.{suffix} has shape {:?}, the parameter {:?}",
                    path.display(),
                    src.size(),
                    dst.size()
                );
            }
            tch::no_grad(|| dst.f_copy_(src))
                .with_context(|| format!("{}: loading {name}.{suffix}", path.display()))
        };
        for (i, s) in self.slots.iter_mut().enumerate() {
            match &mut self.state {
                State::Flat(f) => {
                    restore(&s.name, "master", &mut Self::view(&f.master, s))?;
                    restore(&s.name, "m", &mut Self::view(&f.m, s))?;
                    restore(&s.name, "v", &mut Self::view(&f.v, s))?;
                    let w = Self::view(&f.master, s);
                    tch::no_grad(|| s.param.f_copy_(&w))
                        .with_context(|| format!("{}: refreshing {}", path.display(), s.name))?;
                }
                State::PerParam(p) => {
                    restore(&s.name, "m", &mut p.m[i])?;
                    restore(&s.name, "v", &mut p.v[i])?;
                }
            }
        }
        self.step = step;
        Ok(())
    }
}

/// AdamW on elements `[a, a+len)` of the flat buffers (fp32): about eight whole-range kernels,
/// temporaries of `len` elements.
fn flat_adamw(f: &mut Flat, a: i64, len: i64, h: &AdamWParams, bc1: f64, bc2: f64) -> Result<()> {
    let g = f.acc.narrow(0, a, len);
    let mut m = f.m.narrow(0, a, len);
    let mut v = f.v.narrow(0, a, len);
    let mut w = f.master.narrow(0, a, len);
    // m ← β₁m + (1−β₁)g ;  v ← β₂v + (1−β₂)g²
    ok(m.f_lerp_(&g, 1.0 - h.beta1), "first moment")?;
    let g2 = ctx(g.f_square(), "second moment")?;
    ok(v.f_lerp_(&g2, 1.0 - h.beta2), "second moment")?;
    drop(g2);
    // w ← w(1 − lr·wd) − lr/bc1 · m / (√v/√bc2 + ε)
    //   = w(1 − lr·wd) + m / ((√v + ε√bc2) · (−bc1 / (lr·√bc2)))
    let mut d = ctx(v.f_sqrt(), "denominator")?;
    ok(d.f_add_scalar_(h.eps * bc2.sqrt()), "denominator")?;
    if h.weight_decay != 0.0 {
        ok(w.f_mul_scalar_(1.0 - h.lr * h.weight_decay), "weight decay")?;
    }
    if h.lr != 0.0 {
        ok(d.f_mul_scalar_(-bc1 / (h.lr * bc2.sqrt())), "step size")?;
        ok(w.f_addcdiv_(&m, &d), "update")?;
    }
    Ok(())
}

/// AdamW on one parameter in place (moments in their own dtype).
fn param_adamw(
    p: &mut Tensor,
    g: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    h: &AdamWParams,
    bc1: f64,
    bc2: f64,
) -> Result<()> {
    let g = g.f_to_kind(m.kind())?;
    let _ = m.f_mul_scalar_(h.beta1)?;
    let _ = m.f_add_(&g.f_mul_scalar(1.0 - h.beta1)?)?;
    let _ = v.f_mul_scalar_(h.beta2)?;
    let _ = v.f_add_(&g.f_square()?.f_mul_scalar(1.0 - h.beta2)?)?;
    let denom = v.f_sqrt()?.f_div_scalar(bc2.sqrt())?.f_add_scalar(h.eps)?;
    let upd = m.f_div(&denom)?.f_mul_scalar(h.lr / bc1)?;
    let _ = p.f_mul_scalar_(1.0 - h.lr * h.weight_decay)?;
    let _ = p.f_sub_(&upd.f_to_kind(p.kind())?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::Device;

    fn store(kind: Kind) -> VarStore {
        let mut vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = root.var("w", &[64], tch::nn::Init::Const(0.02));
        let _ = root.var("b", &[8], tch::nn::Init::Const(1.0));
        vs.set_kind(kind);
        vs
    }

    fn hp(lr: f64) -> AdamWParams {
        AdamWParams {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }

    fn set_grads(vs: &VarStore) {
        for (_, p) in vs.variables() {
            let loss = (&p * p.ones_like()).sum(Kind::Float);
            loss.backward();
        }
    }

    fn changed(vs: &VarStore, before: &BTreeMap<String, Tensor>) -> f64 {
        let (mut c, mut n) = (0.0, 0.0);
        for (k, p) in vs.variables() {
            let d = p.ne_tensor(&before[&k]).sum(Kind::Double).double_value(&[]);
            c += d;
            n += p.numel() as f64;
        }
        c / n
    }

    #[test]
    fn resolve_picks_and_refuses() {
        assert_eq!(
            Precision::Auto.resolve(Kind::BFloat16),
            Ok(Precision::Bf16Mixed)
        );
        assert_eq!(Precision::Auto.resolve(Kind::Float), Ok(Precision::Fp32));
        assert!(Precision::Fp32
            .resolve(Kind::BFloat16)
            .unwrap_err()
            .contains("model.dtype"));
        assert!(Precision::Bf16Mixed.resolve(Kind::Float).is_err());
        assert_eq!(Precision::Pure.resolve(Kind::BFloat16), Ok(Precision::Pure));
    }

    #[test]
    fn masters_carry_updates_bf16_cannot_hold() {
        // lr 1e-4 on weights 0.02 and 1.0: below bf16's half-ulp for both.
        for (precision, expect_change) in [(Precision::Bf16Mixed, true), (Precision::Pure, false)] {
            let vs = store(Kind::BFloat16);
            let before: BTreeMap<String, Tensor> = vs
                .variables()
                .into_iter()
                .map(|(k, v)| (k, v.detach().copy()))
                .collect();
            let mut opt = AdamW::new(&vs, precision).expect("optimiser");
            assert_eq!(opt.has_masters(), precision == Precision::Bf16Mixed);
            let mut moved = 0.0;
            for _ in 0..3 {
                opt.zero_grad().expect("zero");
                set_grads(&vs);
                opt.accumulate().expect("accumulate");
                opt.step(&hp(1e-5)).expect("step");
            }
            for (k, w) in opt.masters() {
                moved += w
                    .ne_tensor(&before[&k].to_kind(Kind::Float))
                    .sum(Kind::Double)
                    .double_value(&[])
                    / w.numel() as f64;
            }
            let frac = changed(&vs, &before);
            assert!(frac < 0.01, "{precision:?}: bf16 weights moved ({frac})");
            if expect_change {
                assert!(moved > 0.99, "masters moved {moved}");
            }
            let lost = pure_precision_loss(vs.variables().values(), 1e-5);
            assert!(lost > 0.99, "{lost}");
        }
    }

    #[test]
    fn accumulation_is_fp32() {
        let vs = store(Kind::BFloat16);
        let mut opt = AdamW::new(&vs, Precision::Bf16Mixed).expect("optimiser");
        opt.zero_grad().expect("zero");
        // 1 + 300 × 2⁻¹⁰ per element: bf16 accumulation would stop at 1 (half-ulp 2⁻⁸).
        for i in 0..301 {
            for (_, p) in vs.variables() {
                let c = if i == 0 { 1.0 } else { 2f64.powi(-10) };
                (&p * c).sum(Kind::Float).backward();
            }
            opt.accumulate().expect("accumulate");
        }
        // 72 elements, each with that gradient.
        let norm = opt.clip_grad_norm(0.0).expect("norm");
        let want = 72f64.sqrt() * (1.0 + 300.0 * 2f64.powi(-10));
        assert!((norm - want).abs() < 1e-5, "{norm} vs {want}");
    }

    /// Gradients that bf16 holds exactly, so a bf16 and an f32 model see the same ones (from
    /// a seeded ChaCha stream, not libtorch's global generator, which other tests share).
    fn exact_grads(vs: &VarStore, seed: u64) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
        for p in vars.values() {
            let r: Vec<f32> = (0..p.numel())
                .map(|_| rng.random_range(-2.0f32..2.0))
                .collect();
            let r = Tensor::from_slice(&r)
                .view(p.size().as_slice())
                .to_kind(Kind::BFloat16)
                .to_kind(p.kind());
            (p * r).sum(Kind::Float).backward();
        }
    }

    #[test]
    fn flat_bf16_mixed_equals_per_parameter_fp32() {
        // Same start (bf16-representable), same gradients: the flat fp32 masters must follow
        // the per-parameter fp32 AdamW to fp32 rounding, clipping and weight decay included.
        let mixed = store(Kind::BFloat16);
        let mut full = store(Kind::BFloat16);
        full.set_kind(Kind::Float);
        let init: BTreeMap<String, Tensor> = full
            .variables()
            .into_iter()
            .map(|(k, v)| (k, v.detach().copy()))
            .collect();
        let mut a = AdamW::new(&mixed, Precision::Bf16Mixed).expect("mixed");
        let mut b = AdamW::new(&full, Precision::Fp32).expect("fp32");
        assert!(a.has_masters() && !b.has_masters());
        let h = AdamWParams {
            weight_decay: 0.1,
            ..hp(1e-3)
        };
        for step in 0..5 {
            for (opt, vs) in [(&mut a, &mixed), (&mut b, &full)] {
                opt.zero_grad().expect("zero");
                exact_grads(vs, step);
                let na = opt.clip_grad_norm(2.0).expect("clip");
                assert!(na > 2.0, "the test must clip ({na})");
                opt.step(&h).expect("step");
            }
        }
        let vars = full.variables();
        for (k, w) in a.masters() {
            let want = &vars[&k];
            let d = (&w - want).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]);
            assert!(
                d <= 1e-6 * scale,
                "{k}: flat master off by {d} (scale {scale})"
            );
            let moved = (&w - &init[&k]).abs().min().double_value(&[]);
            assert!(moved > 1e-7, "{k} did not move everywhere ({moved})");
        }
        // The compute weights are the masters rounded to bf16.
        for (k, p) in mixed.variables() {
            let want = a.masters()[&k].to_kind(Kind::BFloat16);
            assert!(p.equal(&want), "{k}: compute weights not refreshed");
        }
    }

    #[test]
    fn save_load_round_trip_is_exact() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("opt.safetensors");
        let vs = store(Kind::BFloat16);
        let mut opt = AdamW::new(&vs, Precision::Bf16Mixed).expect("optimiser");
        for _ in 0..2 {
            opt.zero_grad().expect("zero");
            set_grads(&vs);
            opt.accumulate().expect("accumulate");
            opt.step(&hp(1e-3)).expect("step");
        }
        opt.save(&path).expect("save");
        let vs2 = store(Kind::BFloat16);
        let mut opt2 = AdamW::new(&vs2, Precision::Bf16Mixed).expect("optimiser");
        opt2.load(&path).expect("load");
        for (k, w) in opt.masters() {
            let w2 = &opt2.masters()[&k];
            assert!(w.equal(w2), "{k}");
        }
        for (k, p) in vs.variables() {
            assert!(p.equal(&vs2.variables()[&k]), "{k}");
        }
        // A pure optimiser refuses the mixed checkpoint.
        let vs3 = store(Kind::BFloat16);
        let mut opt3 = AdamW::new(&vs3, Precision::Pure).expect("optimiser");
        let e = opt3.load(&path).unwrap_err().to_string();
        assert!(e.contains("master"), "{e}");
    }
}
