//! A checkpoint's chat template: the Jinja program that turns `{"messages": [...]}` into
//! the text its reward model was trained on, rendered the way transformers'
//! `apply_chat_template` renders it, so the token ids are the same.
//!
//! transformers compiles templates in a sandboxed Jinja2 environment with `trim_blocks`
//! and `lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that is Python's
//! `json.dumps` (not Jinja's HTML-safe one), and the globals `raise_exception` and
//! `strftime_now`; the special tokens (`bos_token`, `eos_token`, ...) are variables.
//! minijinja with its Python-compatibility methods (`str.strip`, `dict.items`, ...)
//! does the same here.

use crate::memory_budget::{self, OverBudget};
use anyhow::{Context, Result, anyhow, bail};
use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};
use serde_json::Value as Json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use steerlm_core::pyjson::{Ascii, write_float, write_str};
use steerlm_core::pyvalue::PyValue;

/// Most template instructions one rendering may run: far above any real template over
/// a long conversation, and a bound on a template that loops forever.
const FUEL: u64 = 50_000_000;

/// Memory one rendering may hold, beyond [`BUDGET_PER_INPUT_BYTE`] per byte of the
/// messages' text: far above what a real template needs, a bound on one that builds
/// strings without end (see [`crate::memory_budget`]).
const RENDER_BUDGET: usize = 256 << 20;
/// Rendering copies the messages into the text a few times over.
const BUDGET_PER_INPUT_BYTE: usize = 16;

/// The messages of one conversation, checked to be a list of objects with a `role`.
#[derive(Clone, Debug)]
pub struct Messages {
    value: Value,
    /// The bytes of its strings, which size the rendering's memory budget.
    text_bytes: usize,
}

impl Messages {
    fn new(value: Value) -> Result<Self> {
        let count = value.len().filter(|_| value.kind() == ValueKind::Seq);
        let Some(count) = count else {
            bail!("`messages` must be a list of {{\"role\", \"content\"}} objects");
        };
        if count == 0 {
            bail!("`messages` is empty");
        }
        let mut messages = Vec::with_capacity(count);
        for (i, message) in value.try_iter().map_err(|e| anyhow!("{e}"))?.enumerate() {
            let role = message.get_attr("role").ok().filter(|r| r.kind() == ValueKind::String);
            if message.kind() != ValueKind::Map || role.is_none() {
                bail!("message {i} must be an object with a string `role`");
            }
            messages.push(alias_reasoning(&message).map_err(|e| anyhow!("message {i}: {e}"))?);
        }
        let value = Value::from(messages);
        Ok(Messages { text_bytes: text_bytes(&value), value })
    }

    /// Messages from a request body.
    pub fn from_json(value: &Json) -> Result<Self> {
        Self::new(Value::from_serialize(value))
    }

    /// Messages from an input line, keys in their written order.
    pub fn from_py(value: &PyValue) -> Result<Self> {
        Self::new(py_to_value(value))
    }
}

/// The bytes of the strings (keys and values) in a value.
fn text_bytes(value: &Value) -> usize {
    if let Some(text) = value.as_str() {
        return text.len();
    }
    let Ok(items) = value.try_iter() else { return 0 };
    match value.kind() {
        ValueKind::Map => {
            items.map(|key| text_bytes(&key) + text_bytes(&value.get_item(&key).unwrap_or_default())).sum()
        }
        ValueKind::Seq => items.map(|item| text_bytes(&item)).sum(),
        _ => 0,
    }
}

/// The names a message's reasoning goes by; transformers copies the first one present
/// to `thinking` and `reasoning_content`, so templates reading either see it.
const REASONING_FIELDS: [&str; 3] = ["reasoning_content", "thinking", "reasoning"];

/// transformers' `{"thinking": r, **message, "reasoning_content": r}`, key order included.
fn alias_reasoning(message: &Value) -> Result<Value, Error> {
    let reasoning = REASONING_FIELDS
        .iter()
        .map(|name| message.get_attr(name))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|v| !v.is_none() && !v.is_undefined());
    let Some(reasoning) = reasoning else {
        return Ok(message.clone());
    };
    let mut fields: Vec<(Value, Value)> = vec![(Value::from("thinking"), reasoning.clone())];
    for key in message.try_iter()? {
        let item = message.get_item(&key)?;
        match fields.iter_mut().find(|(k, _)| *k == key) {
            Some(field) => field.1 = item,
            None => fields.push((key, item)),
        }
    }
    match fields.iter_mut().find(|(k, _)| k.as_str() == Some("reasoning_content")) {
        Some(field) => field.1 = reasoning,
        None => fields.push((Value::from("reasoning_content"), reasoning)),
    }
    Ok(Value::from_iter(fields))
}

fn py_to_value(value: &PyValue) -> Value {
    match value {
        PyValue::Null => Value::from(()),
        PyValue::Bool(b) => Value::from(*b),
        // minijinja's widest integer is i128; beyond it Python's exact int becomes a float.
        PyValue::Int(n) => {
            n.as_str().parse::<i128>().map_or_else(|_| Value::from(value.as_f64().unwrap_or(f64::NAN)), Value::from)
        }
        PyValue::Float(x) => Value::from(*x),
        PyValue::Str(s) => Value::from(s.as_str()),
        PyValue::Array(items) => Value::from(items.iter().map(py_to_value).collect::<Vec<_>>()),
        PyValue::Object(object) => {
            Value::from_iter(object.iter().map(|(key, item)| (key.to_owned(), py_to_value(item))))
        }
    }
}

pub struct ChatTemplate {
    /// Shared with the thread each rendering runs on (see [`Self::render`]).
    env: Arc<Environment<'static>>,
    /// `bos_token`, `eos_token`, ... as the template sees them.
    special_tokens: BTreeMap<String, String>,
    /// Where the template came from, for errors.
    pub source: PathBuf,
    /// Why the template no longer renders: it overran its memory budget once.
    disabled: OnceLock<String>,
}

impl ChatTemplate {
    /// The template of the checkpoint in `dir`: `chat_template.jinja` if there is one
    /// (transformers 4.43+ writes it there), else `chat_template` in
    /// `tokenizer_config.json` (a string, or a list of named templates of which
    /// `default` is used). `None` when the checkpoint has neither.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let config_path = dir.join("tokenizer_config.json");
        let config: Json = match std::fs::read_to_string(&config_path) {
            Ok(text) => {
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", config_path.display()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Json::Null,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", config_path.display())),
        };
        let jinja_path = dir.join("chat_template.jinja");
        let (source, text) = if jinja_path.is_file() {
            let text = std::fs::read_to_string(&jinja_path)
                .with_context(|| format!("cannot read {}", jinja_path.display()))?;
            (jinja_path, text)
        } else {
            match config.get("chat_template") {
                None | Some(Json::Null) => return Ok(None),
                Some(Json::String(text)) => (config_path.clone(), text.clone()),
                Some(Json::Array(named)) => {
                    let default = named.iter().find(|t| t.get("name").and_then(Json::as_str) == Some("default"));
                    let text = default.and_then(|t| t.get("template")).and_then(Json::as_str).ok_or_else(|| {
                        anyhow!("{}: `chat_template` is a list without a `default` template", config_path.display())
                    })?;
                    (config_path.clone(), text.to_owned())
                }
                Some(other) => bail!("{}: `chat_template` must be a string, got {other}", config_path.display()),
            }
        };
        let special_tokens = special_tokens(&config);
        Self::compile(&text, special_tokens, source).map(Some)
    }

    fn compile(text: &str, special_tokens: BTreeMap<String, String>, source: PathBuf) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        // transformers' `{% generation %}` marks assistant text for its masks and
        // renders nothing itself.
        let text = strip_generation_tags(text);
        env.add_template_owned("chat", text)
            .map_err(|e| anyhow!("{}: the chat template does not compile: {e:#}", source.display()))?;
        Ok(ChatTemplate { env: Arc::new(env), special_tokens, source, disabled: OnceLock::new() })
    }

    /// The conversation as the model's text (no generation prompt: a reward is read
    /// at the end of the last message). The rendering runs within a memory budget (see
    /// [`crate::memory_budget`]); a template that overruns it is disabled from then on.
    pub fn render(&self, messages: &Messages) -> Result<String> {
        if let Some(why) = self.disabled.get() {
            bail!("{why}");
        }
        let mut context: BTreeMap<String, Value> =
            self.special_tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        context.insert("messages".into(), messages.value.clone());
        context.insert("add_generation_prompt".into(), Value::from(false));
        context.insert("tools".into(), Value::from(()));
        context.insert("documents".into(), Value::from(()));
        let (env, source) = (Arc::clone(&self.env), self.source.clone());
        let budget = RENDER_BUDGET.saturating_add(messages.text_bytes.saturating_mul(BUDGET_PER_INPUT_BYTE));
        let rendered = memory_budget::run_within(budget, move || {
            let template = env.get_template("chat").expect("compiled at load");
            template.render(context).map_err(|e| match e.kind() {
                ErrorKind::InvalidOperation if e.detail().is_some_and(|d| d.starts_with(RAISED)) => {
                    anyhow!(
                        "the chat template refused the messages: {}",
                        &e.detail().unwrap_or_default()[RAISED.len()..]
                    )
                }
                _ => anyhow!("rendering the chat template of {}: {e:#}", source.display()),
            })
        });
        match rendered {
            Ok(text) => text,
            Err(e) if e.is::<OverBudget>() => {
                let why = format!(
                    "the chat template of {} is disabled: rendering a conversation, {e}; a template that \
                     builds text without bound is broken or hostile (restart after fixing it)",
                    self.source.display()
                );
                Err(anyhow!("{}", self.disabled.get_or_init(|| why)))
            }
            Err(e) => Err(e.context("rendering the chat template")),
        }
    }
}

/// The special tokens of `tokenizer_config.json` as template variables; each is a
/// string or an `{"content": ...}` object.
fn special_tokens(config: &Json) -> BTreeMap<String, String> {
    let names = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];
    names
        .iter()
        .filter_map(|name| {
            let value = config.get(*name)?;
            let text = value.as_str().or_else(|| value.get("content").and_then(Json::as_str))?;
            Some(((*name).to_owned(), text.to_owned()))
        })
        .collect()
}

/// `{% generation %}` / `{% endgeneration %}` in their whitespace-control spellings.
fn strip_generation_tags(text: &str) -> String {
    let mut out = text.to_owned();
    for tag in ["generation", "endgeneration"] {
        for (open, close) in [("{%", "%}"), ("{%-", "%}"), ("{%", "-%}"), ("{%-", "-%}")] {
            for space in [" ", ""] {
                out = out.replace(&format!("{open}{space}{tag}{space}{close}"), "");
            }
        }
    }
    out
}

const RAISED: &str = "raise_exception: ";

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, format!("{RAISED}{message}")))
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, as transformers'
/// `tojson` filter: `", "` and `": "` between items, or newlines and `indent` spaces.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    write_json(&mut out, value, indent, 0)?;
    let text = String::from_utf8(out).expect("JSON of UTF-8 strings");
    Ok(Value::from_safe_string(text))
}

fn write_json(out: &mut Vec<u8>, value: &Value, indent: Option<usize>, depth: usize) -> Result<(), Error> {
    let bad = |why: String| Error::new(ErrorKind::InvalidOperation, format!("tojson: {why}"));
    if depth > 128 {
        return Err(bad("nested too deeply".into()));
    }
    let newline = |out: &mut Vec<u8>, depth: usize| {
        if let Some(width) = indent {
            out.push(b'\n');
            out.extend(std::iter::repeat_n(b' ', width * depth));
        }
    };
    let separator: &[u8] = if indent.is_some() { b"," } else { b", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.extend_from_slice(b"null"),
        ValueKind::Bool => out.extend_from_slice(if value.is_true() { b"true" } else { b"false" }),
        ValueKind::Number if value.is_integer() => out.extend_from_slice(value.to_string().as_bytes()),
        ValueKind::Number => {
            let x = f64::try_from(value.clone()).map_err(|e| bad(e.to_string()))?;
            write_float(out, x).map_err(bad)?;
        }
        ValueKind::String => write_str(out, value.as_str().unwrap_or_default(), Ascii::Raw),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(separator);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, depth + 1)?;
            }
            if !items.is_empty() {
                newline(out, depth);
            }
            out.push(b']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = value.try_iter()?.collect();
            out.push(b'{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(separator);
                }
                newline(out, depth + 1);
                write_str(out, &key.to_string(), Ascii::Raw);
                out.extend_from_slice(b": ");
                write_json(out, &value.get_item(key)?, indent, depth + 1)?;
            }
            if !keys.is_empty() {
                newline(out, depth);
            }
            out.push(b'}');
        }
        other => return Err(bad(format!("cannot write a {other:?} as JSON"))),
    }
    Ok(())
}

/// Python's `datetime.now().strftime(format)` for the directives templates use (Llama
/// 3's `"%d %b %Y"` date line), in UTC.
fn strftime_now(format: String) -> Result<Value, Error> {
    let seconds = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    Ok(Value::from(strftime(&format, seconds)?))
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

fn strftime(format: &str, unix_seconds: i64) -> Result<String, Error> {
    let days = unix_seconds.div_euclid(86_400);
    let second_of_day = unix_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (hour, minute, second) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let month_name = MONTHS[month as usize - 1];
        match chars.next() {
            Some('d') => out += &format!("{day:02}"),
            Some('m') => out += &format!("{month:02}"),
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year.rem_euclid(100)),
            Some('b') => out += &month_name[..3],
            Some('B') => out += month_name,
            Some('a') => out += &WEEKDAYS[weekday][..3],
            Some('A') => out += WEEKDAYS[weekday],
            Some('H') => out += &format!("{hour:02}"),
            Some('M') => out += &format!("{minute:02}"),
            Some('S') => out += &format!("{second:02}"),
            Some('j') => out += &format!("{:03}", days - days_from_civil(year, 1, 1) + 1),
            Some('%') => out.push('%'),
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "strftime_now: the directive %{} is not supported",
                        other.map_or(String::new(), String::from)
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// (year, month, day) of a day count since 1970-01-01, proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(text: &str) -> ChatTemplate {
        let tokens = BTreeMap::from([("bos_token".to_owned(), "<s>".to_owned())]);
        ChatTemplate::compile(text, tokens, PathBuf::from("test")).unwrap()
    }

    fn messages(value: Json) -> Messages {
        Messages::from_json(&value).unwrap()
    }

    #[test]
    fn renders_like_transformers_jinja_settings() {
        // trim_blocks and lstrip_blocks: block tags leave no lines behind.
        let t = template(
            "{{ bos_token }}\n  {% for m in messages %}\n[{{ m.role }}] {{ m['content'].strip() }}\n  {% endfor %}\n",
        );
        let m = messages(json!([{"role": "user", "content": " hi "}, {"role": "assistant", "content": "yo"}]));
        assert_eq!(t.render(&m).unwrap(), "<s>\n[user] hi\n[assistant] yo\n");
    }

    #[test]
    fn tojson_is_pythons_json_dumps() {
        let t = template(
            "{{ messages[0] | tojson }}|{{ [1, 2.5, 1e20, none, true, 'é<'] | tojson }}|{{ {'a': [1]} | tojson(indent=2) }}",
        );
        // Keys stay in the order the line wrote them, as Python's dicts keep them.
        let line = PyValue::parse(r#"[{"role": "user", "content": "x", "n": 12345678901}]"#).unwrap();
        let m = Messages::from_py(&line).unwrap();
        assert_eq!(
            t.render(&m).unwrap(),
            "{\"role\": \"user\", \"content\": \"x\", \"n\": 12345678901}|[1, 2.5, 1e+20, null, true, \"é<\"]|{\n  \"a\": [\n    1\n  ]\n}"
        );
    }

    #[test]
    fn raise_exception_becomes_a_clear_error() {
        let t = template(
            "{% if messages[0].role != 'system' %}{{ raise_exception('a system message comes first') }}{% endif %}",
        );
        let e = t.render(&messages(json!([{"role": "user", "content": "x"}]))).unwrap_err().to_string();
        assert_eq!(e, "the chat template refused the messages: a system message comes first");
    }

    #[test]
    fn messages_must_be_role_objects() {
        for bad in [json!([]), json!("hi"), json!([{"content": "x"}]), json!([{"role": 3}]), json!([1])] {
            assert!(Messages::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_endless_template_runs_out_of_fuel() {
        let t = template("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}");
        let e = t.render(&messages(json!([{"role": "user", "content": "x"}]))).unwrap_err();
        assert!(format!("{e:#}").contains("fuel"), "{e:#}");
    }

    /// Templates that build text without bound, in a loop through a namespace and in a
    /// recursive macro, each a terabyte in a few dozen instructions: refused within the
    /// budget, and the template is disabled from then on.
    #[test]
    fn a_template_that_builds_text_without_bound_is_stopped_and_disabled() {
        let conversation = messages(json!([{"role": "user", "content": "x"}]));
        for source in [
            "{% set ns = namespace(t='x') %}{% for i in range(40) %}{% set ns.t = ns.t ~ ns.t %}{% endfor %}{{ ns.t|length }}",
            "{% macro grow(t, n) %}{% if n %}{{ grow(t ~ t, n - 1) }}{% else %}{{ t|length }}{% endif %}{% endmacro %}{{ grow('x', 40) }}",
        ] {
            let t = template(source);
            let e = t.render(&conversation).unwrap_err().to_string();
            assert!(e.contains("is disabled: rendering a conversation, it asked for"), "{e}");
            assert!(e.contains("past its budget of 256 MiB"), "{e}");
            // Refused at once from then on, with the same reason.
            assert_eq!(t.render(&conversation).unwrap_err().to_string(), e);
        }
    }

    /// A long conversation gets a budget in proportion: 20 MB of messages render.
    #[test]
    fn long_conversations_render_within_their_budget() {
        let long = "word ".repeat(4 << 20);
        let t = template("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}");
        let text = t.render(&messages(json!([{"role": "user", "content": long}]))).unwrap();
        assert_eq!(text.len(), "user: ".len() + long.len() + 1);
    }

    #[test]
    fn strftime_matches_python() {
        // 2024-07-26 13:05:09 UTC, a Friday (Llama 3.1's default date line).
        let t = 1_721_999_109;
        assert_eq!(strftime("%d %b %Y", t).unwrap(), "26 Jul 2024");
        assert_eq!(strftime("%A %B %j %H:%M:%S %y %m %%", t).unwrap(), "Friday July 208 13:05:09 24 07 %");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(days_from_civil(2000, 2, 29)), (2000, 2, 29));
    }
}
