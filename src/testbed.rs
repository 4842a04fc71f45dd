//! The CPU testbed: a procedurally generated arithmetic task family with exact answers and a
//! controllable spread of difficulty, plus the tiny tokenizer its policy uses.
//!
//! Each level is one kind of problem (single-digit sums up to three-number sums and products);
//! a warm-started tiny policy solves the first levels almost always, the middle ones sometimes
//! and the last ones rarely: the regime where a curriculum matters. Problems are drawn without
//! duplicates and split into disjoint train and held-out sets, all from one seed. Answers are
//! expected as `\boxed{...}`, like real math data.

use std::collections::HashSet;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::data::Example;

/// One difficulty level: a problem shape over operand ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// a+b with one-digit operands.
    Add1,
    /// a+b, two digits + one digit.
    Add21,
    /// a+b, two digits each.
    Add22,
    /// a−b, two digits each, a ≥ b.
    Sub22,
    /// a×b, two digits × one digit (b ≥ 2).
    Mul21,
    /// a+b+c, two digits each.
    Add222,
    /// a+b, three digits each.
    Add33,
}

impl Level {
    /// All levels, easiest first.
    pub const ALL: [Level; 7] = [
        Level::Add1,
        Level::Add21,
        Level::Add22,
        Level::Sub22,
        Level::Mul21,
        Level::Add222,
        Level::Add33,
    ];

    /// How many distinct problems the level has.
    pub fn space(self) -> u64 {
        match self {
            Level::Add1 => 100,
            Level::Add21 => 900,
            Level::Add22 => 8100,
            Level::Sub22 => 4095,
            Level::Mul21 => 720,
            Level::Add222 => 729_000,
            Level::Add33 => 810_000,
        }
    }

    /// A random problem of this level: (text, answer).
    pub fn draw(self, rng: &mut ChaCha8Rng) -> (String, i64) {
        let mut r = |lo: i64, hi: i64| rng.random_range(lo..=hi);
        match self {
            Level::Add1 => {
                let (a, b) = (r(0, 9), r(0, 9));
                (format!("{a}+{b}"), a + b)
            }
            Level::Add21 => {
                let (a, b) = (r(10, 99), r(0, 9));
                (format!("{a}+{b}"), a + b)
            }
            Level::Add22 => {
                let (a, b) = (r(10, 99), r(10, 99));
                (format!("{a}+{b}"), a + b)
            }
            Level::Sub22 => {
                let (a, b) = (r(10, 99), r(10, 99));
                let (a, b) = (a.max(b), a.min(b));
                (format!("{a}-{b}"), a - b)
            }
            Level::Mul21 => {
                let (a, b) = (r(10, 99), r(2, 9));
                (format!("{a}*{b}"), a * b)
            }
            Level::Add222 => {
                let (a, b, c) = (r(10, 99), r(10, 99), r(10, 99));
                (format!("{a}+{b}+{c}"), a + b + c)
            }
            Level::Add33 => {
                let (a, b) = (r(100, 999), r(100, 999));
                (format!("{a}+{b}"), a + b)
            }
        }
    }
}

/// `[testbed]`: which levels, how many problems, which seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TestbedConfig {
    /// Levels in the task family, easiest first.
    pub levels: Vec<Level>,
    /// Training prompts per level (capped by what the level has after the held-out split).
    pub train_per_level: usize,
    /// Held-out prompts per level.
    pub heldout_per_level: usize,
    /// Seed of the problem generator (independent of the run seed, so runs share data).
    pub seed: u64,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        Self {
            levels: Level::ALL.to_vec(),
            train_per_level: 400,
            heldout_per_level: 50,
            seed: 1234,
        }
    }
}

/// Train and held-out sets of the testbed.
#[derive(Debug, Clone)]
pub struct Testbed {
    /// Training prompts (ids `train-<level>-<k>`).
    pub train: Vec<Example>,
    /// Held-out prompts, disjoint from `train`.
    pub heldout: Vec<Example>,
}

/// Generate the testbed: per level, distinct problems, the held-out share first so that small
/// levels keep their held-out size.
pub fn generate(cfg: &TestbedConfig) -> Testbed {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut train = Vec::new();
    let mut heldout = Vec::new();
    for (li, &level) in cfg.levels.iter().enumerate() {
        let want = cfg.train_per_level + cfg.heldout_per_level;
        let space = level.space() as usize;
        let problems: Vec<(String, i64)> = if want * 2 >= space {
            // Small level: enumerate by rejection until every problem is found, then shuffle.
            let mut seen = HashSet::new();
            let mut all = Vec::new();
            let mut tries = 0usize;
            while all.len() < space && tries < space * 64 {
                tries += 1;
                let (text, ans) = level.draw(&mut rng);
                if seen.insert(text.clone()) {
                    all.push((text, ans));
                }
            }
            all.sort();
            all.shuffle(&mut rng);
            all.truncate(want);
            all
        } else {
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(want);
            while out.len() < want {
                let (text, ans) = level.draw(&mut rng);
                if seen.insert(text.clone()) {
                    out.push((text, ans));
                }
            }
            out
        };
        let n_held = cfg.heldout_per_level.min(problems.len() / 2);
        let level_no = li as u32 + 1;
        for (k, (text, ans)) in problems.into_iter().enumerate() {
            let (set, id) = if k < n_held {
                (&mut heldout, format!("heldout-{level_no}-{k}"))
            } else {
                (&mut train, format!("train-{level_no}-{}", k - n_held))
            };
            set.push(Example {
                id,
                problem: text,
                answer: ans.to_string(),
                level: Some(level_no),
            });
        }
    }
    Testbed { train, heldout }
}

/// The prompt the testbed policy sees for a problem.
pub fn prompt(problem: &str) -> String {
    format!("{problem}=")
}

/// The target completion for supervised warm start.
pub fn target(answer: &str) -> String {
    format!("\\boxed{{{answer}}}")
}

/// The multi-character token of the testbed tokenizer.
const BOX_TOKEN: &str = "\\boxed{";

/// Special tokens of the testbed tokenizer, at ids 0..4.
pub const SPECIALS: [&str; 4] = ["<pad>", "<s>", "</s>", "<unk>"];

/// A `tokenizer.json` (HF `tokenizers` format) for the testbed: one token per printable ASCII
/// character plus `\boxed{` as a single token, `<s>` prepended, `</s>` as EOS. Word-level model
/// over a regex split, so it loads with the same code as real tokenizers.
pub fn tokenizer_json() -> serde_json::Value {
    let mut vocab = serde_json::Map::new();
    let mut id = 0u32;
    let mut push = |tok: &str, vocab: &mut serde_json::Map<String, serde_json::Value>| {
        vocab.insert(tok.to_string(), serde_json::Value::from(id));
        id += 1;
    };
    for s in SPECIALS {
        push(s, &mut vocab);
    }
    push(BOX_TOKEN, &mut vocab);
    for c in ' '..='~' {
        push(&c.to_string(), &mut vocab);
    }
    push("\n", &mut vocab);
    let added: Vec<serde_json::Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                               "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Split",
            "pattern": {"Regex": "\\\\boxed\\{|[\\s\\S]"},
            "behavior": "Isolated",
            "invert": false
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    })
}

/// `tokenizer_config.json` for the testbed tokenizer (no chat template: raw prompts).
pub fn tokenizer_config_json() -> serde_json::Value {
    serde_json::json!({
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "model_max_length": 64,
        "tokenizer_class": "PreTrainedTokenizerFast"
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_exact_and_sets_disjoint() {
        let tb = generate(&TestbedConfig::default());
        assert!(!tb.train.is_empty() && !tb.heldout.is_empty());
        for e in tb.train.iter().chain(&tb.heldout) {
            let v: i64 = e.answer.parse().expect("integer answer");
            let p = &e.problem;
            let got = if let Some((a, b)) = p.split_once('*') {
                a.parse::<i64>().expect("a") * b.parse::<i64>().expect("b")
            } else if let Some((a, b)) = p.split_once('-') {
                a.parse::<i64>().expect("a") - b.parse::<i64>().expect("b")
            } else {
                p.split('+').map(|x| x.parse::<i64>().expect("term")).sum()
            };
            assert_eq!(got, v, "{p}");
        }
        let train: HashSet<_> = tb.train.iter().map(|e| &e.problem).collect();
        assert_eq!(train.len(), tb.train.len(), "no duplicates");
        assert!(tb.heldout.iter().all(|e| !train.contains(&e.problem)));
        // Every level is present in both sets; the small level keeps its held-out share.
        for l in 1..=7 {
            assert!(tb.heldout.iter().any(|e| e.level == Some(l)), "level {l}");
            assert!(tb.train.iter().any(|e| e.level == Some(l)), "level {l}");
        }
        assert_eq!(tb.train.iter().filter(|e| e.level == Some(1)).count(), 50);
    }

    #[test]
    fn deterministic_in_seed() {
        let a = generate(&TestbedConfig::default());
        let b = generate(&TestbedConfig::default());
        assert_eq!(a.train, b.train);
        let c = generate(&TestbedConfig {
            seed: 9,
            ..Default::default()
        });
        assert_ne!(a.train, c.train);
    }
}
