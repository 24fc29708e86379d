//! Chat templates: the Jinja templates that Hugging Face models ship, rendered with `minijinja`.

use std::borrow::Cow;
use std::sync::OnceLock;

use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::budget::{with_budget, Budget, Overrun};
use crate::error::{HearthError, Result};
use crate::tools::{call_text, ToolCall, Tools};

/// One message of a chat, in OpenAI's shape: an assistant's may carry `tool_calls`, and a `tool`
/// message answers the call `tool_call_id` names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// `null` (an assistant message that only calls tools) reads as empty.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub content: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        ChatMessage { role: role.to_string(), content: content.to_string(), tool_calls: Vec::new(), tool_call_id: None }
    }
}

/// What one render of a chat template may spend. A model file's template is someone else's code:
/// without these a few hundred bytes of nested loops run for hours or build gigabytes. Each limit is
/// far above what real templates need (`tests::real_templates_stay_far_below_the_limits`).
pub mod limits {
    /// Largest template source accepted (real ones are 1–20 KB).
    pub const SOURCE_BYTES: usize = 256 * 1024;
    /// minijinja instructions per render: a fixed allowance plus one per byte of the chat, so a long
    /// chat never runs out while a template that loops over nothing in particular stops in well
    /// under a second.
    pub const FUEL_BASE: u64 = 1_000_000;
    pub const FUEL_PER_INPUT_BYTE: u64 = 16;
    /// Output bytes per render: a fixed allowance plus a multiple of the chat's own bytes (a template
    /// writes each message once, with a few tags around it).
    pub const OUTPUT_BASE: usize = 1024 * 1024;
    pub const OUTPUT_PER_INPUT_BYTE: usize = 4;
    /// Bytes a render may hold at once (`crate::budget`): a fixed allowance plus a multiple of the
    /// chat's bytes. Fuel counts one step per operation however large, so without this a string
    /// doubled a few dozen times takes all memory within a few steps.
    pub const MEMORY_BASE: u64 = 64 << 20;
    pub const MEMORY_PER_INPUT_BYTE: u64 = 64;
    /// Bytes a render may allocate in all, freed or not, as a multiple of what it may hold: this
    /// bounds the time spent building strings that are thrown away.
    pub const MEMORY_TOTAL_FACTOR: u64 = 16;
    /// Seconds a compile or render may take natively (real templates take milliseconds); in the
    /// browser the bound is the worker, which `dispose()` ends.
    pub const SECONDS: f64 = 2.0;
    /// Macro and include nesting (minijinja allows 500; each level costs native stack, which a wasm
    /// module has little of).
    pub const RECURSION: usize = 64;

    /// The budget of a render of a chat of `input_bytes` bytes (0: compiling the template).
    pub fn budget(input_bytes: u64) -> crate::budget::Budget {
        let live = MEMORY_BASE + MEMORY_PER_INPUT_BYTE * input_bytes;
        crate::budget::Budget { live, total: live * MEMORY_TOTAL_FACTOR, seconds: SECONDS }
    }
}

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template reads a `tools` variable (Hugging Face's convention for tool use); one that
    /// does not gets the tools in a system message and calls and results as text.
    takes_tools: bool,
    /// How a render passed its budget, once one did: natively its thread sleeps holding that memory
    /// (or runs on to its fuel), so this template is not run again (each render would leave another).
    overran: OnceLock<Overrun>,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        if source.len() > limits::SOURCE_BYTES {
            return Err(HearthError::ChatTemplate(format!(
                "the model's chat template is {} bytes, over the limit of {} bytes",
                source.len(),
                limits::SOURCE_BYTES
            )));
        }
        // Compiled on the render's budget too: minijinja folds constant expressions as it compiles,
        // so `'x' * 100000000` costs its 100 MB before any render.
        let source = source.to_string();
        let compile = move || {
            let mut env = Environment::new();
            env.set_recursion_limit(limits::RECURSION);
            // Python string and dict methods (`.strip()`, `.items()`, ...) that HF templates call.
            env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
            minijinja_contrib::add_to_environment(&mut env);
            env.add_function("raise_exception", |msg: String| -> std::result::Result<String, Error> {
                Err(Error::new(ErrorKind::InvalidOperation, msg))
            });
            env.add_template_owned(TEMPLATE_NAME, source).map_err(|e| e.to_string())?;
            let takes_tools = env
                .get_template(TEMPLATE_NAME)
                .map(|t| t.undeclared_variables(false).contains("tools"))
                .unwrap_or(false);
            Ok::<_, String>((env, takes_tools))
        };
        let (compiled, _) = with_budget(limits::budget(0), compile).map_err(|o| overrun_error("compiling", o, 0))?;
        let (env, takes_tools) =
            compiled.map_err(|e| HearthError::ChatTemplate(format!("cannot parse the model's chat template: {e}")))?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            takes_tools,
            overran: OnceLock::new(),
        })
    }

    /// The chat as the model reads it, `tools` shown as the template shows them (or, when it has
    /// no place for them, in the system message: see [`with_tools_as_text`]).
    pub fn render(&self, messages: &[ChatMessage], tools: &Tools, add_generation_prompt: bool) -> Result<String> {
        self.render_with_cost(messages, tools, add_generation_prompt).map(|(text, _)| text)
    }

    /// [`render`](Self::render), also saying what the render spent against its [`limits`].
    pub fn render_with_cost(
        &self,
        messages: &[ChatMessage],
        tools: &Tools,
        add_generation_prompt: bool,
    ) -> Result<(String, RenderCost)> {
        let (messages, tools) = match self.takes_tools {
            true => (Cow::Borrowed(messages), (!tools.tools.is_empty()).then(|| tools.template_value())),
            false => (Cow::Owned(with_tools_as_text(messages, tools)), None),
        };
        let input_bytes = serde_json::to_string(&*messages).map_or(0, |s| s.len())
            + tools.as_ref().and_then(|t| serde_json::to_string(t).ok()).map_or(0, |s| s.len());
        let messages = messages_value(&messages);
        let tools = minijinja::Value::from(Serde(tools));
        let fuel = limits::FUEL_BASE + limits::FUEL_PER_INPUT_BYTE * input_bytes as u64;
        let cap = limits::OUTPUT_BASE + limits::OUTPUT_PER_INPUT_BYTE * input_bytes;
        let budget = limits::budget(input_bytes as u64);
        let mut env = self.env.clone();
        env.set_fuel(Some(fuel));
        let globals = context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.clone(),
            eos_token => self.eos_token.clone(),
        };
        // The render on its own budget of memory (crate::budget): a step of minijinja may allocate
        // without bound (a string doubled), which fuel does not see.
        let render = move || {
            let template = env.get_template(TEMPLATE_NAME).map_err(|e| e.to_string())?;
            let mut out = CappedWriter { bytes: Vec::new(), cap, over: false };
            let rendered = template.render_captured_to(globals, &mut out);
            let fuel_used = rendered.as_ref().ok().and_then(|c| c.state().fuel_levels()).map_or(0, |(used, _)| used);
            Ok::<_, String>((rendered.map(drop), fuel_used, out))
        };
        if let Some(&overrun) = self.overran.get() {
            return Err(overrun_error("rendering", overrun, input_bytes as u64));
        }
        let (rendered, spent) = with_budget(budget, render).map_err(|overrun| {
            if overrun != Overrun::Panic {
                let _ = self.overran.set(overrun);
            }
            overrun_error("rendering", overrun, input_bytes as u64)
        })?;
        let (rendered, fuel_used, out) = rendered.map_err(HearthError::ChatTemplate)?;
        match rendered {
            Ok(()) => {
                let cost = RenderCost {
                    fuel_used,
                    fuel_limit: fuel,
                    output_bytes: out.bytes.len(),
                    output_limit: cap,
                    memory_peak: spent.peak,
                    memory_total: spent.total,
                    budget,
                };
                let text = String::from_utf8(out.bytes)
                    .map_err(|_| HearthError::ChatTemplate("the chat template wrote invalid UTF-8".into()))?;
                Ok((text, cost))
            }
            Err(_) if out.over => Err(HearthError::ChatTemplate(format!(
                "the chat template's output passed the limit of {cap} bytes for this chat \
                 ({} + {} per byte of messages and tools)",
                limits::OUTPUT_BASE,
                limits::OUTPUT_PER_INPUT_BYTE
            ))),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(HearthError::ChatTemplate(format!(
                "the chat template ran past its limit of {fuel} steps for this chat ({} + {} per byte \
                 of messages and tools): it loops too much to be a chat template",
                limits::FUEL_BASE,
                limits::FUEL_PER_INPUT_BYTE
            ))),
            Err(e) => Err(HearthError::ChatTemplate(format!("cannot render the chat: {e}"))),
        }
    }
}

/// The error for a compile or render of a template that passed its [`limits::budget`].
fn overrun_error(doing: &str, overrun: Overrun, input_bytes: u64) -> HearthError {
    let b = limits::budget(input_bytes);
    HearthError::ChatTemplate(match overrun {
        Overrun::Memory => format!(
            "{doing} the chat template allocated past its limits of {} bytes at once and {} in all \
             ({} + {} per byte of messages and tools, and {} times that)",
            b.live,
            b.total,
            limits::MEMORY_BASE,
            limits::MEMORY_PER_INPUT_BYTE,
            limits::MEMORY_TOTAL_FACTOR
        ),
        Overrun::Time => format!("{doing} the chat template took longer than its limit of {} s", b.seconds),
        Overrun::Panic => format!("{doing} the chat template failed inside minijinja"),
    })
}

/// What one render spent, and what it was allowed.
#[derive(Debug, Clone, Copy)]
pub struct RenderCost {
    pub fuel_used: u64,
    pub fuel_limit: u64,
    pub output_bytes: usize,
    pub output_limit: usize,
    /// The most bytes the render held at once, and the bytes it allocated in all (both 0 where
    /// `crate::budget::BudgetedAlloc` is not the global allocator, which also enforces `budget`).
    pub memory_peak: u64,
    pub memory_total: u64,
    pub budget: Budget,
}

/// The render's output, refusing bytes past `cap` (minijinja then stops with a write error).
struct CappedWriter {
    bytes: Vec<u8>,
    cap: usize,
    over: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > self.cap {
            self.over = true;
            return Err(std::io::Error::other("chat template output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// For a template without tool support, the Hermes convention in plain messages: the tools
/// listed in the system message, an assistant's calls written as the model writes them (so the
/// history is the very text that was generated, and the cache of it is reused), and each tool
/// result a user message in `<tool_response>` tags.
fn with_tools_as_text(messages: &[ChatMessage], tools: &Tools) -> Vec<ChatMessage> {
    let mut out = Vec::with_capacity(messages.len() + 1);
    let mut rest = messages;
    if !tools.tools.is_empty() {
        let prompt = tools.system_prompt();
        match messages.first() {
            Some(first) if first.role == "system" => {
                out.push(ChatMessage::new("system", &format!("{}\n\n{prompt}", first.content)));
                rest = &messages[1..];
            }
            _ => out.push(ChatMessage::new("system", &prompt)),
        }
    }
    for m in rest {
        out.push(match m.role.as_str() {
            "tool" => ChatMessage::new("user", &format!("<tool_response>\n{}\n</tool_response>", m.content)),
            _ if !m.tool_calls.is_empty() => {
                let calls: Vec<String> =
                    m.tool_calls.iter().map(|c| call_text(&c.function.name, &c.function.arguments)).collect();
                ChatMessage::new(&m.role, &format!("{}{}", m.content, calls.join("\n")))
            }
            _ => ChatMessage::new(&m.role, &m.content),
        });
    }
    out
}

/// Messages as template values: `{role, content}` maps, with `tool_calls` (their arguments as
/// objects, which is what Hugging Face templates expect) and `tool_call_id` where present.
fn messages_value(messages: &[ChatMessage]) -> minijinja::Value {
    messages
        .iter()
        .map(|m| {
            let mut map = serde_json::Map::new();
            map.insert("role".into(), m.role.clone().into());
            map.insert("content".into(), m.content.clone().into());
            if !m.tool_calls.is_empty() {
                let calls = m.tool_calls.iter().map(|c| {
                    let arguments = serde_json::from_str::<Value>(&c.function.arguments)
                        .unwrap_or_else(|_| c.function.arguments.clone().into());
                    serde_json::json!({
                        "id": c.id,
                        "type": "function",
                        "function": { "name": c.function.name, "arguments": arguments },
                    })
                });
                map.insert("tool_calls".into(), calls.collect());
            }
            if let Some(id) = &m.tool_call_id {
                map.insert("tool_call_id".into(), id.clone().into());
            }
            minijinja::Value::from(Serde(Value::Object(map)))
        })
        .collect::<Vec<_>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] | trim + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let out = t.render(&[ChatMessage::new("user", " Hi there ")], &Tools::default(), true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    fn weather_tools() -> Tools {
        serde_json::from_value(serde_json::json!({"tools": [{"type": "function", "function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]}))
        .unwrap()
    }

    fn tool_history() -> Vec<ChatMessage> {
        let call: ToolCall = serde_json::from_value(serde_json::json!({"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}))
        .unwrap();
        let mut assistant = ChatMessage::new("assistant", "");
        assistant.tool_calls.push(call);
        let mut result = ChatMessage::new("tool", "18 C");
        result.tool_call_id = Some("call_1".into());
        vec![ChatMessage::new("user", "Weather in Paris?"), assistant, result]
    }

    #[test]
    fn a_template_without_tools_gets_them_as_hermes_text() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let out = t.render(&tool_history(), &weather_tools(), true).unwrap();
        let expected = format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n{}<|im_end|>\n<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
            weather_tools().system_prompt().trim(),
            crate::tools::call_text("get_weather", "{\"city\": \"Paris\"}"),
        );
        assert_eq!(out, expected);
        assert!(out.contains("\"name\":\"get_weather\""), "the tool's definition is shown: {out}");
    }

    #[test]
    fn a_template_with_tools_gets_them_and_calls_as_values() {
        let src = "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}{% for m in messages %}[{{ m.role }}]{% if m.tool_calls %}{% for c in m.tool_calls %}{{ c.function.name }}({{ c.function.arguments.city }}){% endfor %}{% else %}{{ m.content }}{% endif %}{% if m.tool_call_id %}#{{ m.tool_call_id }}{% endif %}\n{% endfor %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let out = t.render(&tool_history(), &weather_tools(), false).unwrap();
        assert_eq!(
            out,
            "TOOLS:get_weather;\n[user]Weather in Paris?\n[assistant]get_weather(Paris)\n[tool]18 C#call_1\n"
        );
        let without = t.render(&tool_history()[..1], &Tools::default(), false).unwrap();
        assert_eq!(without, "[user]Weather in Paris?\n");
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role == 'bad' %}{{ raise_exception('roles must alternate') }}{% endif %}{{ bos_token }}{% for m in messages %}{{ m.content.strip().upper() }}{% endfor %}";
        let t = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        assert_eq!(t.render(&[ChatMessage::new("user", "  ok ")], &Tools::default(), false).unwrap(), "<s>OK");
        let err = t.render(&[ChatMessage::new("bad", "x")], &Tools::default(), false).unwrap_err();
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }

    fn render_err(src: &str) -> String {
        let t = ChatTemplate::new(src, "", "").unwrap();
        t.render(&[ChatMessage::new("user", "hi")], &Tools::default(), true).unwrap_err().to_string()
    }

    #[test]
    fn nested_loops_run_out_of_fuel() {
        // 10^10 iterations unbounded; the fuel stops it after about a million steps.
        let err =
            render_err("{% for a in range(100000) %}{% for b in range(100000) %}{{ '' }}{% endfor %}{% endfor %}");
        assert!(err.contains("limit of") && err.contains("steps"), "{err}");
    }

    #[test]
    fn output_past_the_cap_is_refused() {
        // 100 MB of output; each step is cheap, so it is the output cap (about 1 MB here) that stops it.
        let err = render_err("{% for a in range(100000) %}{{ 'x' * 1000 }}{% endfor %}");
        assert!(err.contains("output passed the limit"), "{err}");
    }

    #[test]
    fn deep_macro_recursion_is_refused() {
        let err = render_err("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
        assert!(err.contains("recursion"), "{err}");
    }

    #[test]
    fn an_oversized_template_is_refused_with_its_size() {
        let src = "x".repeat(limits::SOURCE_BYTES + 1);
        let err = ChatTemplate::new(&src, "", "").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains(&format!("{} bytes", limits::SOURCE_BYTES + 1)), "{err}");
    }

    #[test]
    fn a_long_chat_gets_fuel_and_output_in_proportion() {
        // 400 messages of 2 KB: 800 KB of chat, so the fixed allowances alone would not do.
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let chat: Vec<_> =
            (0..400).map(|i| ChatMessage::new(["user", "assistant"][i % 2], &"word ".repeat(400))).collect();
        let (text, cost) = t.render_with_cost(&chat, &Tools::default(), true).unwrap();
        assert!(text.len() > 800_000);
        assert!(cost.output_bytes * 2 < cost.output_limit, "{cost:?}");
        assert!(cost.fuel_used * 10 < cost.fuel_limit, "{cost:?}");
    }
}
