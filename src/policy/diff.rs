//! `cures diff A B`: how much of a model moved between two HF checkpoints (e.g. the same run
//! at two learning rates, or two steps of one run): the share of weight elements that differ,
//! overall and per tensor class, and the relative size of the change. The check a user makes
//! when a run "looks healthy and learns nothing".

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;
use tch::{Kind, Tensor};

use super::weights::{checkpoint_files, read_file};

/// Arguments of `cures diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// First HF checkpoint directory (e.g. run_a/checkpoints/step_0000002/policy).
    pub a: PathBuf,
    /// Second HF checkpoint directory (same tensor names and shapes).
    pub b: PathBuf,
    /// One line per tensor as well.
    #[arg(long)]
    pub per_tensor: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
}

/// Elements that differ in one group of tensors.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DiffCount {
    /// Elements compared.
    pub elements: u64,
    /// Elements whose values differ (compared in f32).
    pub differ: u64,
    /// Largest |a − b|.
    pub max_abs: f64,
    /// ‖a − b‖ / ‖a‖.
    pub rel_change: f64,
    #[serde(skip)]
    sq_diff: f64,
    #[serde(skip)]
    sq_a: f64,
}

impl DiffCount {
    /// `differ / elements` (0 when empty).
    pub fn share(&self) -> f64 {
        if self.elements == 0 {
            0.0
        } else {
            self.differ as f64 / self.elements as f64
        }
    }

    fn add(&mut self, o: &DiffCount) {
        self.elements += o.elements;
        self.differ += o.differ;
        self.max_abs = self.max_abs.max(o.max_abs);
        self.sq_diff += o.sq_diff;
        self.sq_a += o.sq_a;
        self.rel_change = if self.sq_a > 0.0 {
            (self.sq_diff / self.sq_a).sqrt()
        } else {
            0.0
        };
    }
}

/// The comparison of two checkpoints.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    /// Every tensor.
    pub total: DiffCount,
    /// By class: `embedding`, `norm`, `attention`, `mlp`, `lm_head`, `other`.
    pub classes: BTreeMap<String, DiffCount>,
    /// By tensor name.
    pub tensors: BTreeMap<String, DiffCount>,
}

/// The class of a tensor name (for the per-class lines).
pub fn tensor_class(name: &str) -> &'static str {
    if name.contains("norm") {
        "norm"
    } else if name.contains("embed_tokens") {
        "embedding"
    } else if name.contains("lm_head") {
        "lm_head"
    } else if name.contains("self_attn") {
        "attention"
    } else if name.contains("mlp") {
        "mlp"
    } else {
        "other"
    }
}

fn read_all(dir: &Path) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for f in checkpoint_files(dir)? {
        for (name, t) in read_file(&f)? {
            out.insert(name, t);
        }
    }
    Ok(out)
}

/// Compare one pair of tensors in f32.
pub fn diff_tensors(a: &Tensor, b: &Tensor) -> Result<DiffCount> {
    let a = a.f_to_kind(Kind::Float)?;
    let b = b.f_to_kind(Kind::Float)?;
    let d = a.f_sub(&b)?;
    let differ = d.f_ne(0.0)?.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    let elements = a.numel() as u64;
    let max_abs = if elements == 0 {
        0.0
    } else {
        d.f_abs()?.f_max()?.f_double_value(&[])?
    };
    let sq = |t: &Tensor| -> Result<f64> {
        Ok(t.f_to_kind(Kind::Double)?
            .f_square()?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?)
    };
    let (sq_diff, sq_a) = (sq(&d)?, sq(&a)?);
    Ok(DiffCount {
        elements,
        differ: differ as u64,
        max_abs,
        rel_change: if sq_a > 0.0 {
            (sq_diff / sq_a).sqrt()
        } else {
            0.0
        },
        sq_diff,
        sq_a,
    })
}

/// Compare two checkpoint directories: same tensor names and shapes, or an error naming the
/// first that is not.
pub fn diff_dirs(a: &Path, b: &Path) -> Result<DiffReport> {
    let ta = read_all(a).with_context(|| format!("checkpoint {}", a.display()))?;
    let tb = read_all(b).with_context(|| format!("checkpoint {}", b.display()))?;
    for name in tb.keys() {
        if !ta.contains_key(name) {
            bail!(
                "tensor {name} is in {} but not in {}",
                b.display(),
                a.display()
            );
        }
    }
    let mut total = DiffCount::default();
    let mut classes: BTreeMap<String, DiffCount> = BTreeMap::new();
    let mut tensors = BTreeMap::new();
    for (name, x) in &ta {
        let y = tb.get(name).with_context(|| {
            format!(
                "tensor {name} is in {} but not in {}",
                a.display(),
                b.display()
            )
        })?;
        if x.size() != y.size() {
            bail!(
                "tensor {name}: shape {:?} in {}, {:?} in {}",
                x.size(),
                a.display(),
                y.size(),
                b.display()
            );
        }
        let c = diff_tensors(x, y).with_context(|| format!("comparing {name}"))?;
        total.add(&c);
        classes
            .entry(tensor_class(name).to_string())
            .or_default()
            .add(&c);
        tensors.insert(name.clone(), c);
    }
    Ok(DiffReport {
        total,
        classes,
        tensors,
    })
}

/// `cures diff`.
pub fn run(args: &DiffArgs) -> Result<()> {
    let r = diff_dirs(&args.a, &args.b)?;
    let line = |what: &str, c: &DiffCount| {
        println!(
            "  {what:<44} {:>12} elements  {:>7.3}% differ  max |Δ| {:.3e}  ‖Δ‖/‖a‖ {:.3e}",
            c.elements,
            100.0 * c.share(),
            c.max_abs,
            c.rel_change
        );
    };
    println!("{} vs {}:", args.a.display(), args.b.display());
    line("all tensors", &r.total);
    for (k, c) in &r.classes {
        line(k, c);
    }
    if args.per_tensor {
        for (k, c) in &r.tensors {
            line(k, c);
        }
    }
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_differences_and_relative_change() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
        let b = Tensor::from_slice(&[1.0f32, 2.5, 3.0, 4.0]);
        let c = diff_tensors(&a, &b).expect("diff");
        assert_eq!((c.elements, c.differ), (4, 1));
        assert!((c.max_abs - 0.5).abs() < 1e-12);
        assert!((c.rel_change - 0.5 / 30f64.sqrt()).abs() < 1e-9);
        assert_eq!(
            tensor_class("model.layers.0.input_layernorm.weight"),
            "norm"
        );
        assert_eq!(tensor_class("model.layers.3.mlp.up_proj.weight"), "mlp");
    }
}
