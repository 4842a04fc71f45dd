//! Tokenizer (`tokenizer.json`, pure-Rust `tokenizers`) and chat template
//! (`tokenizer_config.json`'s Jinja `chat_template`, rendered with `minijinja` the way
//! transformers' `apply_chat_template` renders it: `trim_blocks`, `lstrip_blocks`,
//! `raise_exception`, `strftime_now`, Python-style `tojson`, Python string methods).

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use super::config::TokenIds;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The text.
    pub content: String,
}

impl ChatMessage {
    /// Shorthand constructor.
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A chat template plus the special-token strings it may refer to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    specials: Vec<(String, String)>,
}

fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(m) => m.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

impl ChatTemplate {
    /// From a parsed `tokenizer_config.json` (`chat_template` string, or the list form
    /// `[{"name": "default", "template": ...}]`). `None` when the file has no template.
    pub fn from_tokenizer_config(cfg: &serde_json::Value, origin: &str) -> Result<Option<Self>> {
        let source = match cfg.get("chat_template") {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template"))
                .and_then(|t| t.as_str())
                .map(String::from)
                .with_context(|| format!("{origin}: `chat_template` list has no template"))?,
            Some(other) => {
                bail!("{origin}: `chat_template` is neither a string nor a list: {other}")
            }
        };
        let mut specials = Vec::new();
        for key in [
            "bos_token",
            "eos_token",
            "unk_token",
            "pad_token",
            "sep_token",
            "cls_token",
            "mask_token",
        ] {
            if let Some(s) = token_string(cfg.get(key)) {
                specials.push((key.to_string(), s));
            }
        }
        let t = ChatTemplate { source, specials };
        t.env()
            .with_context(|| format!("{origin}: invalid chat_template"))?;
        Ok(Some(t))
    }

    /// A template from source text, with the given special-token strings.
    pub fn new(source: &str, specials: &[(&str, &str)]) -> Result<Self> {
        let t = ChatTemplate {
            source: source.to_string(),
            specials: specials
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        t.env().context("invalid chat template")?;
        Ok(t)
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn env(&self) -> Result<Environment<'static>> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function(
            "strftime_now",
            |fmt: String| -> Result<Value, minijinja::Error> {
                Ok(Value::from(chrono::Local::now().format(&fmt).to_string()))
            },
        );
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", self.source.clone())
            .map_err(|e| anyhow!("{e:#}"))?;
        Ok(env)
    }

    /// Render `messages` (any JSON array of message objects) with extra context variables
    /// (`tools`, `enable_thinking`, ...).
    pub fn render_json(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let env = self.env()?;
        let tmpl = env.get_template("chat").map_err(|e| anyhow!("{e:#}"))?;
        let mut ctx = serde_json::Map::new();
        for (k, v) in &self.specials {
            ctx.insert(k.clone(), v.clone().into());
        }
        ctx.insert("messages".into(), messages.clone());
        ctx.insert("add_generation_prompt".into(), add_generation_prompt.into());
        for (k, v) in extra {
            ctx.insert(k.clone(), v.clone());
        }
        tmpl.render(Value::from_serialize(&ctx))
            .map_err(|e| anyhow!("rendering chat template: {e:#}"))
    }

    /// Render plain messages.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        self.render_json(
            &serde_json::to_value(messages)?,
            add_generation_prompt,
            &serde_json::Map::new(),
        )
    }
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=None, sort_keys=False)` — Python's separators `", "` and `": "`.
fn tojson(value: Value, kwargs: minijinja::value::Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("ensure_ascii")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let v = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    py_dumps(&v, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

fn py_dumps(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let nl = |out: &mut String, lvl: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * lvl));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        J::Array(a) if !a.is_empty() => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                py_dumps(x, indent, level + 1, out);
            }
            nl(out, level);
            out.push(']');
        }
        J::Object(m) if !m.is_empty() => {
            out.push('{');
            for (i, (k, x)) in m.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                nl(out, level + 1);
                out.push_str(&serde_json::to_string(k).unwrap_or_default());
                out.push_str(": ");
                py_dumps(x, indent, level + 1, out);
            }
            nl(out, level);
            out.push('}');
        }
        other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
    }
}

/// A tokenizer plus what generation needs from the model directory: EOS/pad ids and the chat
/// template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_ids: Vec<i64>,
    pad_id: Option<i64>,
    bos_id: Option<i64>,
    chat: Option<ChatTemplate>,
    /// Files copied into a saved checkpoint (name, bytes).
    files: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("eos_ids", &self.eos_ids)
            .field("pad_id", &self.pad_id)
            .finish()
    }
}

/// Files of a model directory that belong to the tokenizer / generation setup.
pub const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
];

fn read_json(p: &Path) -> Result<Option<serde_json::Value>> {
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| {
        format!("{}: invalid JSON", p.display())
    })?))
}

impl Tokenizer {
    /// Load from a model directory: `tokenizer.json` (required), `tokenizer_config.json` and
    /// `generation_config.json` (optional); `config_eos` are the EOS ids from `config.json`.
    pub fn load(dir: &Path, config_eos: &[i64], config_pad: Option<i64>) -> Result<Self> {
        let tj = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&tj)
            .map_err(|e| anyhow!("loading {}: {e}", tj.display()))?;
        let tc_path = dir.join("tokenizer_config.json");
        let tc = read_json(&tc_path)?.unwrap_or(serde_json::Value::Null);
        let mut chat = ChatTemplate::from_tokenizer_config(&tc, &tc_path.display().to_string())?;
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            let src = std::fs::read_to_string(&jinja)
                .with_context(|| format!("reading {}", jinja.display()))?;
            let specials: Vec<(String, String)> = chat.map(|c| c.specials).unwrap_or_default();
            chat = Some(ChatTemplate {
                source: src,
                specials,
            });
        }
        let gc_path = dir.join("generation_config.json");
        let gc = read_json(&gc_path)?.unwrap_or(serde_json::Value::Null);
        let ids = |v: Option<&serde_json::Value>| -> Vec<i64> {
            v.and_then(|v| serde_json::from_value::<TokenIds>(v.clone()).ok())
                .map(|t| t.to_vec())
                .unwrap_or_default()
        };
        let mut eos_ids = ids(gc.get("eos_token_id"));
        eos_ids.extend_from_slice(config_eos);
        let tok_id = |key: &str| {
            token_string(tc.get(key))
                .and_then(|s| inner.token_to_id(&s))
                .map(i64::from)
        };
        if let Some(id) = tok_id("eos_token") {
            eos_ids.push(id);
        }
        let mut seen = std::collections::HashSet::new();
        eos_ids.retain(|x| seen.insert(*x));
        let pad_id = tok_id("pad_token")
            .or_else(|| ids(gc.get("pad_token_id")).first().copied())
            .or(config_pad)
            .or_else(|| eos_ids.first().copied());
        let bos_id = tok_id("bos_token").or_else(|| ids(gc.get("bos_token_id")).first().copied());
        let mut files = Vec::new();
        for name in TOKENIZER_FILES {
            let p = dir.join(name);
            if p.exists() {
                files.push((
                    name.to_string(),
                    std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
                ));
            }
        }
        Ok(Tokenizer {
            inner,
            eos_ids,
            pad_id,
            bos_id,
            chat,
            files,
        })
    }

    /// A tokenizer built in code (e.g. for a fresh testbed model). `files` are written by
    /// [`Tokenizer::save`] (at least `("tokenizer.json", bytes)` for a loadable checkpoint).
    pub fn from_parts(
        inner: tokenizers::Tokenizer,
        eos_ids: Vec<i64>,
        pad_id: Option<i64>,
        chat: Option<ChatTemplate>,
        files: Vec<(String, Vec<u8>)>,
    ) -> Self {
        let bos_id = None;
        Tokenizer {
            inner,
            eos_ids,
            pad_id,
            bos_id,
            chat,
            files,
        }
    }

    /// The wrapped `tokenizers::Tokenizer`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
    /// Encode text; `add_special_tokens` applies the tokenizer's post-processor (BOS etc.).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<i64>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| anyhow!("encoding {text:?}: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i64::from(i)).collect())
    }
    /// Decode ids (ids outside the vocabulary are an error).
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .map(|&i| u32::try_from(i).map_err(|_| anyhow!("token id {i} out of range")))
            .collect::<Result<_>>()?;
        self.inner
            .decode(&ids, skip_special_tokens)
            .map_err(|e| anyhow!("decoding {} ids: {e}", ids.len()))
    }
    /// EOS ids (generation_config, config.json and tokenizer_config's `eos_token`, deduplicated).
    pub fn eos_ids(&self) -> &[i64] {
        &self.eos_ids
    }
    /// Pad id (falls back to the first EOS id).
    pub fn pad_id(&self) -> Option<i64> {
        self.pad_id
    }
    /// BOS id, when the tokenizer config names one.
    pub fn bos_id(&self) -> Option<i64> {
        self.bos_id
    }
    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    /// The chat template, when the directory has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }
    /// Render messages with the chat template (error when there is none).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.chat
            .as_ref()
            .context("this tokenizer has no chat_template (tokenizer_config.json)")?
            .render(messages, add_generation_prompt)
    }
    /// Render and encode (no extra special tokens, as transformers does for chat prompts).
    pub fn encode_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<Vec<i64>> {
        let text = self.apply_chat_template(messages, add_generation_prompt)?;
        self.encode(&text, false)
    }
    /// Write the tokenizer files this tokenizer was loaded from into `dir`.
    /// A tokenizer built in code without files gets `tokenizer.json` serialised from the
    /// tokenizer and a `generation_config.json` with its EOS/pad ids.
    pub fn save(&self, dir: &Path) -> Result<()> {
        for (name, bytes) in &self.files {
            let p = dir.join(name);
            std::fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        }
        let has = |n: &str| self.files.iter().any(|(f, _)| f == n);
        if !has("tokenizer.json") {
            let p = dir.join("tokenizer.json");
            let text = self
                .inner
                .to_string(true)
                .map_err(|e| anyhow!("serialising tokenizer: {e}"))?;
            std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
        }
        if !has("generation_config.json") {
            let p = dir.join("generation_config.json");
            let mut g = serde_json::Map::new();
            match self.eos_ids.as_slice() {
                [] => {}
                [one] => {
                    g.insert("eos_token_id".into(), (*one).into());
                }
                many => {
                    g.insert("eos_token_id".into(), many.to_vec().into());
                }
            }
            if let Some(pad) = self.pad_id {
                g.insert("pad_token_id".into(), pad.into());
            }
            if let Some(bos) = self.bos_id {
                g.insert("bos_token_id".into(), bos.into());
            }
            std::fs::write(&p, serde_json::to_string_pretty(&g)?)
                .with_context(|| format!("writing {}", p.display()))?;
        }
        if !has("tokenizer_config.json") {
            if let Some(chat) = &self.chat {
                let p = dir.join("tokenizer_config.json");
                let mut c = serde_json::Map::new();
                c.insert("chat_template".into(), chat.source.clone().into());
                for (k, v) in &chat.specials {
                    c.insert(k.clone(), v.clone().into());
                }
                std::fs::write(&p, serde_json::to_string_pretty(&c)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
        }
        Ok(())
    }
}
