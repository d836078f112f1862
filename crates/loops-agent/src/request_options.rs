//! Request options (loops.yaml `providers.X.tool_choice`, `temperature`, … and a loop's
//! `payload:` over them; read and checked in `loops_core::request_options`) written into
//! each wire format's request body.
//!
//! | option                | OpenAI Chat Completions     | Anthropic Messages                              |
//! |-----------------------|-----------------------------|-------------------------------------------------|
//! | `tool_choice`         | `"auto"`/`"required"`/`"none"` | `{"type": "auto"/"any"/"none"}`              |
//! | `parallel_tool_calls` | `parallel_tool_calls`       | `false`: `tool_choice.disable_parallel_tool_use` |
//! | `temperature`, `top_p`| as written                  | as written                                      |
//! | `seed`                | `seed`                      | ignored (the API has none; `loops check` warns) |
//! | `reasoning_effort`    | `reasoning_effort`          | ignored (`loops check` warns)                   |
//! | `thinking_budget`     | ignored (`loops check` warns) | `thinking: {"type": "enabled", "budget_tokens": N}` |
//! | `extra_body`          | merged into the top level   | merged into the top level                       |
//!
//! `tool_choice` and `parallel_tool_calls` go only into a request that offers tools:
//! both APIs refuse them otherwise.
//!
//! The body's own bytes are kept: the options are written as one block just before
//! `messages`, so the stable-first layout holds (a request that only adds messages
//! still starts with the previous one's bytes, which is what prompt caches key on), and
//! a request with no options is byte for byte what it was before options existed.

use loops_core::request_options::{RequestOptions, ToolChoice};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// The request format a body is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
}

/// The top-level entries `opts` add to a body of `wire`, in a fixed order. `has_tools`:
/// whether the body offers tools.
pub fn entries(wire: Wire, opts: &RequestOptions, has_tools: bool) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = Vec::new();
    let mut put = |k: &str, v: Value| out.push((k.to_string(), v));
    match wire {
        Wire::OpenAi => {
            if has_tools {
                if let Some(t) = opts.tool_choice {
                    put("tool_choice", json!(t.as_str()));
                }
                if let Some(p) = opts.parallel_tool_calls {
                    put("parallel_tool_calls", json!(p));
                }
            }
            if let Some(t) = opts.temperature {
                put("temperature", json!(t));
            }
            if let Some(t) = opts.top_p {
                put("top_p", json!(t));
            }
            if let Some(s) = opts.seed {
                put("seed", json!(s));
            }
            if let Some(r) = opts.reasoning_effort {
                put("reasoning_effort", json!(r.as_str()));
            }
        }
        Wire::Anthropic => {
            let single = opts.parallel_tool_calls == Some(false);
            if has_tools && (opts.tool_choice.is_some() || single) {
                let kind = match opts.tool_choice.unwrap_or(ToolChoice::Auto) {
                    ToolChoice::Auto => "auto",
                    ToolChoice::Required => "any",
                    ToolChoice::None => "none",
                };
                let mut choice = json!({ "type": kind });
                // `none` calls no tool at all, so it takes no limit on how many.
                if single && kind != "none" {
                    choice["disable_parallel_tool_use"] = json!(true);
                }
                put("tool_choice", choice);
            }
            if let Some(t) = opts.temperature {
                put("temperature", json!(t));
            }
            if let Some(t) = opts.top_p {
                put("top_p", json!(t));
            }
            if let Some(b) = opts.thinking_budget {
                put("thinking", json!({ "type": "enabled", "budget_tokens": b }));
            }
        }
    }
    for (k, v) in &opts.extra_body {
        // `loops check` refuses extra_body keys the typed options write; were one to get
        // here another way, the typed option wins.
        if !out.iter().any(|(have, _)| have == k) {
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// The bytes of `body` (a wire format's request body) with `opts` merged in: each entry
/// of [`entries`] the body does not already have (loops' own keys win), placed just
/// before `messages`.
pub fn body_bytes<B: Serialize>(wire: Wire, body: &B, opts: &RequestOptions) -> Vec<u8> {
    // Serializing strings, JSON values and integers cannot fail.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    if opts.is_empty() {
        return bytes;
    }
    let Ok(Fields(fields)) = serde_json::from_slice::<Fields>(&bytes) else {
        return bytes;
    };
    let has_tools = fields.iter().any(|(k, v)| k == "tools" && v.get() != "[]");
    let mut add = entries(wire, opts, has_tools);
    add.retain(|(k, _)| !fields.iter().any(|(have, _)| have == k));
    if add.is_empty() {
        return bytes;
    }
    let at = fields
        .iter()
        .position(|(k, _)| k == "messages")
        .unwrap_or(fields.len());
    let mut out = Vec::with_capacity(bytes.len() + 64 * add.len());
    out.push(b'{');
    let mut first = true;
    let mut entry = |out: &mut Vec<u8>, k: &str, v: &[u8]| {
        if !first {
            out.push(b',');
        }
        first = false;
        out.extend(serde_json::to_vec(k).unwrap_or_default());
        out.push(b':');
        out.extend(v);
    };
    for (k, v) in &fields[..at] {
        entry(&mut out, k, v.get().as_bytes());
    }
    for (k, v) in &add {
        entry(&mut out, k, &serde_json::to_vec(v).unwrap_or_default());
    }
    for (k, v) in &fields[at..] {
        entry(&mut out, k, v.get().as_bytes());
    }
    out.push(b'}');
    out
}

/// A JSON object's top-level entries in the order written, each value as its own bytes.
struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Fields<'de>, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = m.next_entry::<String, &'de RawValue>()? {
                    out.push(e);
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(Entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loops_core::request_options::ReasoningEffort;

    fn opts() -> RequestOptions {
        RequestOptions {
            tool_choice: Some(ToolChoice::Required),
            temperature: Some(0.2),
            seed: Some(7),
            parallel_tool_calls: Some(false),
            reasoning_effort: Some(ReasoningEffort::Low),
            thinking_budget: Some(2048),
            ..Default::default()
        }
    }

    #[test]
    fn no_options_leave_the_bytes_as_they_were() {
        let body = json!({"model": "m", "messages": []});
        let plain = serde_json::to_vec(&body).unwrap();
        let none = RequestOptions::default();
        assert_eq!(body_bytes(Wire::OpenAi, &body, &none), plain);
    }

    #[test]
    fn options_go_just_before_the_messages() {
        #[derive(Serialize)]
        struct Body {
            model: &'static str,
            tools: Vec<u8>,
            messages: Vec<u8>,
        }
        let body = Body {
            model: "m",
            tools: vec![1],
            messages: vec![],
        };
        let got = String::from_utf8(body_bytes(Wire::OpenAi, &body, &opts())).unwrap();
        assert_eq!(
            got,
            r#"{"model":"m","tools":[1],"tool_choice":"required","parallel_tool_calls":false,"temperature":0.2,"seed":7,"reasoning_effort":"low","messages":[]}"#
        );
        let got = String::from_utf8(body_bytes(Wire::Anthropic, &body, &opts())).unwrap();
        assert_eq!(
            got,
            r#"{"model":"m","tools":[1],"tool_choice":{"disable_parallel_tool_use":true,"type":"any"},"temperature":0.2,"thinking":{"budget_tokens":2048,"type":"enabled"},"messages":[]}"#
        );
    }

    #[test]
    fn tool_options_need_tools_and_the_body_keeps_its_own_keys() {
        let body = json!({"model": "m", "messages": []});
        let mut o = opts();
        o.extra_body.insert("model".into(), json!("other"));
        o.extra_body.insert("top_k".into(), json!(40));
        let got: Value = serde_json::from_slice(&body_bytes(Wire::OpenAi, &body, &o)).unwrap();
        assert_eq!(got["model"], "m");
        assert_eq!(got["top_k"], 40);
        assert!(got.get("tool_choice").is_none(), "{got}");
        assert!(got.get("parallel_tool_calls").is_none(), "{got}");
    }
}
