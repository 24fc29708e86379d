//! Chat templates: the Jinja templates that Hugging Face models ship, rendered with `minijinja`.

use std::borrow::Cow;

use minijinja::value::Serde;
use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

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

pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The template reads a `tools` variable (Hugging Face's convention for tool use); one that
    /// does not gets the tools in a system message and calls and results as text.
    takes_tools: bool,
}

const TEMPLATE_NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        // Python string and dict methods (`.strip()`, `.items()`, ...) that HF templates call.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function("raise_exception", |msg: String| -> std::result::Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| HearthError::ChatTemplate(format!("cannot parse the model's chat template: {e}")))?;
        let takes_tools =
            env.get_template(TEMPLATE_NAME).map(|t| t.undeclared_variables(false).contains("tools")).unwrap_or(false);
        Ok(ChatTemplate { env, bos_token: bos_token.to_string(), eos_token: eos_token.to_string(), takes_tools })
    }

    /// The chat as the model reads it, `tools` shown as the template shows them (or, when it has
    /// no place for them, in the system message: see [`with_tools_as_text`]).
    pub fn render(&self, messages: &[ChatMessage], tools: &Tools, add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(TEMPLATE_NAME).map_err(|e| HearthError::ChatTemplate(e.to_string()))?;
        let (messages, tools) = match self.takes_tools {
            true => (Cow::Borrowed(messages), (!tools.tools.is_empty()).then(|| tools.template_value())),
            false => (Cow::Owned(with_tools_as_text(messages, tools)), None),
        };
        template
            .render(context! {
                messages => messages_value(&messages),
                tools => minijinja::Value::from(Serde(tools)),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| HearthError::ChatTemplate(format!("cannot render the chat: {e}")))
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
}
