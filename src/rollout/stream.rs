//! Assembling one `/v1/completions` reply from the bytes a server sends: either one JSON
//! object (`stream: false`, or a server that ignores `stream`) or server-sent events
//! (`data: {chunk}` lines ending with `data: [DONE]`), whose chunks are merged into the shape of
//! a non-streamed reply so that one parser reads both.
//!
//! Pure: bytes in, a `serde_json::Value` out; no network.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::{Map, Value};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Nothing but whitespace seen yet.
    #[default]
    Unknown,
    /// One JSON document.
    Json,
    /// Server-sent events.
    Sse,
}

/// Collects a reply chunk by chunk; [`ReplyReader::finish`] gives the reply as one JSON value.
#[derive(Debug, Default)]
pub(crate) struct ReplyReader {
    /// Bytes received so far (the caller bounds it).
    pub bytes: usize,
    /// JSON mode: the body so far; otherwise its start, for messages (the caller also keeps
    /// an error reply's start here).
    pub raw: Vec<u8>,
    mode: Mode,
    /// The SSE line being received.
    line: Vec<u8>,
    /// The `data:` lines of the SSE event being received.
    data: String,
    events: usize,
    done: bool,
    merged: Merged,
}

impl ReplyReader {
    /// Take the next bytes of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        if self.mode == Mode::Unknown {
            match chunk.iter().find(|b| !b.is_ascii_whitespace()) {
                None => return Ok(()),
                Some(b'{') | Some(b'[') => self.mode = Mode::Json,
                Some(_) => self.mode = Mode::Sse,
            }
        }
        if self.mode == Mode::Json {
            self.raw.extend_from_slice(chunk);
            return Ok(());
        }
        if self.raw.len() < 256 {
            self.raw.extend_from_slice(&chunk[..chunk.len().min(256)]);
        }
        let mut rest = chunk;
        while let Some(k) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..k]);
            rest = &rest[k + 1..];
            let line = std::mem::take(&mut self.line);
            self.line_done(&line)?;
        }
        self.line.extend_from_slice(rest);
        Ok(())
    }

    fn line_done(&mut self, line: &[u8]) -> Result<()> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.event_done();
        }
        if self.done {
            return Ok(());
        }
        if let Some(d) = line.strip_prefix(b"data:") {
            let d = std::str::from_utf8(d)
                .map_err(|e| anyhow::anyhow!("a streamed event is not UTF-8 ({e})"))?;
            if !self.data.is_empty() {
                self.data.push('\n');
            }
            self.data.push_str(d.strip_prefix(' ').unwrap_or(d));
        }
        // `event:`, `id:`, `retry:` and `:` comments carry nothing a completion needs.
        Ok(())
    }

    fn event_done(&mut self) -> Result<()> {
        let data = std::mem::take(&mut self.data);
        let data = data.trim();
        if data.is_empty() || self.done {
            return Ok(());
        }
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        self.events += 1;
        let v: Value = serde_json::from_str(data).map_err(|e| {
            anyhow::anyhow!(
                "streamed event {} is not JSON ({e}): {:?}",
                self.events,
                super::openai::snippet(data.as_bytes())
            )
        })?;
        if let Some(err) = error_of(&v) {
            bail!("the server failed mid-reply: {err}");
        }
        self.merged.add(v, self.events)
    }

    /// The whole reply, as if it had not been streamed.
    pub fn finish(mut self) -> Result<Value> {
        match self.mode {
            Mode::Unknown => bail!("the reply is empty"),
            Mode::Json => serde_json::from_slice(&self.raw).map_err(|e| {
                anyhow::anyhow!(
                    "the reply is not JSON ({e}): {:?}",
                    super::openai::snippet(&self.raw)
                )
            }),
            Mode::Sse => {
                let line = std::mem::take(&mut self.line);
                if !line.is_empty() {
                    self.line_done(&line)?;
                }
                self.event_done()?;
                if !self.done && self.events == 0 {
                    bail!(
                        "the reply is not JSON (nor server-sent events): {:?}",
                        super::openai::snippet(&self.raw)
                    );
                }
                if !self.done {
                    bail!(
                        "the stream ended after {} event{} without `data: [DONE]`: the connection was cut or the server stopped mid-reply",
                        self.events,
                        if self.events == 1 { "" } else { "s" }
                    );
                }
                Ok(self.merged.finish())
            }
        }
    }
}

/// An error object a server sends in place of a chunk (vLLM: `{"error": {...}}` or
/// `{"object": "error", "message": ...}`).
fn error_of(v: &Value) -> Option<String> {
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        return Some(match e.get("message").and_then(Value::as_str) {
            Some(m) => m.to_string(),
            None => e.to_string(),
        });
    }
    if v.get("object").and_then(Value::as_str) == Some("error") {
        return Some(
            v.get("message")
                .and_then(Value::as_str)
                .map_or_else(|| v.to_string(), str::to_string),
        );
    }
    None
}

/// Fields whose first value stands (the weight version a reply started under).
const KEEP_FIRST: &[&str] = &[
    "weight_version",
    "weight_versions",
    "metadata",
    "prompt_token_ids",
    "prompt_logprobs",
];

/// The chunks of one streamed reply, merged.
#[derive(Debug, Default)]
struct Merged {
    top: Map<String, Value>,
    choices: BTreeMap<u64, Map<String, Value>>,
}

impl Merged {
    fn add(&mut self, chunk: Value, event: usize) -> Result<()> {
        let Value::Object(chunk) = chunk else {
            bail!("streamed event {event} is not a JSON object");
        };
        for (k, v) in chunk {
            if k == "choices" {
                let Value::Array(cs) = v else {
                    bail!("streamed event {event}: `choices` is not an array");
                };
                for (pos, c) in cs.into_iter().enumerate() {
                    let Value::Object(c) = c else {
                        bail!("streamed event {event}: choices[{pos}] is not an object");
                    };
                    let index = c.get("index").and_then(Value::as_u64).unwrap_or(pos as u64);
                    merge_choice(self.choices.entry(index).or_default(), c);
                }
            } else if !(v.is_null()
                || KEEP_FIRST.contains(&k.as_str()) && self.top.contains_key(&k))
            {
                self.top.insert(k, v);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Value {
        let choices = self.choices.into_values().map(Value::Object).collect();
        self.top.insert("choices".into(), Value::Array(choices));
        Value::Object(self.top)
    }
}

/// One chunk's part of a choice into the choice so far: text appended, token and log-prob
/// arrays extended, the finish reason kept once it is set.
fn merge_choice(acc: &mut Map<String, Value>, c: Map<String, Value>) {
    for (k, v) in c {
        match (k.as_str(), v) {
            (_, Value::Null) => {}
            ("text", Value::String(s)) => match acc.get_mut("text") {
                Some(Value::String(t)) => t.push_str(&s),
                _ => {
                    acc.insert(k, Value::String(s));
                }
            },
            ("token_ids" | "tokens", Value::Array(a)) => extend(acc, k, a),
            ("logprobs", Value::Object(lp)) => {
                let slot = acc
                    .entry("logprobs")
                    .or_insert_with(|| Value::Object(Map::new()));
                if !slot.is_object() {
                    *slot = Value::Object(Map::new());
                }
                if let Value::Object(m) = slot {
                    for (lk, lv) in lp {
                        match lv {
                            Value::Null => {}
                            Value::Array(a) => extend(m, lk, a),
                            other => {
                                m.insert(lk, other);
                            }
                        }
                    }
                }
            }
            (key, v) if KEEP_FIRST.contains(&key) => {
                acc.entry(k).or_insert(v);
            }
            (_, v) => {
                acc.insert(k, v);
            }
        }
    }
}

fn extend(m: &mut Map<String, Value>, k: String, a: Vec<Value>) {
    match m.get_mut(&k) {
        Some(Value::Array(have)) => have.extend(a),
        _ => {
            m.insert(k, Value::Array(a));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn read(parts: &[&[u8]]) -> Result<Value> {
        let mut r = ReplyReader::default();
        for p in parts {
            r.feed(p)?;
        }
        r.finish()
    }

    fn sse(chunks: &[Value]) -> String {
        let mut s = String::new();
        for c in chunks {
            s.push_str(&format!("data: {c}\n\n"));
        }
        s.push_str("data: [DONE]\n\n");
        s
    }

    /// llama-server's stream (as captured from b1-0c1e570, trimmed): one token per event,
    /// the finish reason in a last event with empty text and null log-probs.
    #[test]
    fn llama_server_stream_merges_to_its_unstreamed_shape() {
        let tok = |id: i64, t: &str, lp: f64| {
            json!({"choices": [{"text": t, "index": 0, "finish_reason": null,
                "logprobs": {"content": [{"id": id, "token": t, "logprob": lp}]}}],
                "object": "text_completion"})
        };
        let body = sse(&[
            tok(442, " N", -5.1),
            tok(520, "ass", -2.1),
            json!({"choices": [{"text": "", "index": 0, "logprobs": null,
                "finish_reason": "length"}], "usage": {"completion_tokens": 2}}),
        ]);
        let v = read(&[body.as_bytes()]).expect("merged");
        let (c, _) = super::super::openai::parse_completion_response(&v).expect("parsed");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].text, " Nass");
        assert_eq!(c[0].token_ids, Some(vec![442, 520]));
        assert_eq!(c[0].logprobs, Some(vec![-5.1, -2.1]));
        assert_eq!(c[0].finish_reason, crate::policy::FinishReason::Length);
        assert_eq!(v["usage"]["completion_tokens"], 2);
    }

    /// vLLM's shape: `n` choices interleaved by index, `token_ids` and `token_logprobs` per
    /// chunk; cut at every byte boundary the result is the same.
    #[test]
    fn interleaved_choices_merge_by_index_at_any_chunk_boundary() {
        let c = |i: u64, t: &str, id: i64, lp: f64, fin: Value| {
            json!({"choices": [{"index": i, "text": t, "token_ids": [id],
                "logprobs": {"tokens": [t], "token_logprobs": [lp]}, "finish_reason": fin}],
                "weight_version": 3 + i})
        };
        let body = sse(&[
            c(1, "a", 10, -0.5, Value::Null),
            c(0, "x", 20, -1.0, Value::Null),
            c(1, "b", 11, -0.25, json!("stop")),
            c(0, "y", 21, -2.0, json!("length")),
        ])
        .replace("\n\n", "\r\n\r\n");
        let whole = read(&[body.as_bytes()]).expect("merged");
        let bytes: Vec<&[u8]> = body.as_bytes().chunks(1).collect();
        assert_eq!(read(&bytes).expect("byte by byte"), whole);
        let (cs, ver) = super::super::openai::parse_completion_response(&whole).expect("parsed");
        assert_eq!(ver, Some(4), "the first chunk's version stands");
        assert_eq!(cs[0].index, 0);
        assert_eq!(cs[0].text, "xy");
        assert_eq!(cs[0].token_ids, Some(vec![20, 21]));
        assert_eq!(cs[0].logprobs, Some(vec![-1.0, -2.0]));
        assert_eq!(cs[0].finish_reason, crate::policy::FinishReason::Length);
        assert_eq!(cs[1].text, "ab");
        assert_eq!(cs[1].token_ids, Some(vec![10, 11]));
        assert_eq!(cs[1].finish_reason, crate::policy::FinishReason::Stop);
    }

    #[test]
    fn a_cut_stream_or_an_error_event_is_an_error_not_a_short_completion() {
        let ok = json!({"choices": [{"index": 0, "text": "1", "token_ids": [5]}]});
        let cut = format!("data: {ok}\n\n");
        let e = read(&[cut.as_bytes()]).unwrap_err().to_string();
        assert!(e.contains("without `data: [DONE]`"), "{e}");
        let err = format!(
            "data: {ok}\n\ndata: {}\n\ndata: [DONE]\n\n",
            json!({"error": {"message": "CUDA out of memory", "code": 500}})
        );
        let e = read(&[err.as_bytes()]).unwrap_err().to_string();
        assert!(e.contains("mid-reply: CUDA out of memory"), "{e}");
        let e = read(&[b"data: {not json\n\n"]).unwrap_err().to_string();
        assert!(e.contains("streamed event 1 is not JSON"), "{e}");
        let e = read(&[b"  \n"]).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn a_plain_json_reply_passes_through() {
        let v = json!({"choices": [{"index": 0, "text": "hi"}], "weight_version": 2});
        let s = v.to_string();
        let (a, b) = s.as_bytes().split_at(5);
        assert_eq!(read(&[b"\n", a, b]).expect("json"), v);
        let e = read(&[b"{\"choices\": ["]).unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
    }
}
