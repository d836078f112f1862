//! Typed config sections. Each mapping of a config file (loops.yaml's `limits:`, a channel,
//! a loop's `retry:`) is read into a `#[derive(Deserialize)]` struct of [`Field`]s: serde
//! reads every value as the type its setting takes (a whole number of at least 1, a
//! command, a list of variable names), and a value that is not that type is kept as
//! written, so that one wrong value becomes a diagnostic instead of the end of reading.
//!
//! A [`Section`] does the reading: it gives the struct the mapping's text keys, knows which
//! keys the struct does not name (serde's own field list, not a second list kept by hand),
//! and collects the section's diagnostics, each at its key's place in the file (found by
//! [`YamlLocator`]) and in the order the keys are written, whatever order they are checked
//! in.

use crate::diag::{near_miss, Diagnostic, Pos, YamlLocator};
use crate::duration::{parse_duration, DurationError};
use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer};
use std::path::Path;
use std::time::Duration;
use yaml_serde::{Mapping, Value};

/// What one key of a section says. `Raw` is the document's own value type: YAML's for
/// config files, JSON's for job params.
#[derive(Debug, Clone, Default)]
pub(crate) enum Field<T, Raw = Value> {
    /// The key is not written.
    #[default]
    Absent,
    /// The value, as the type the setting takes.
    Ok(T),
    /// A value that is not that type, as written (for the message that says so).
    Bad(Raw),
}

impl<'de, T, Raw> Deserialize<'de> for Field<T, Raw>
where
    T: DeserializeOwned,
    Raw: Deserialize<'de> + Deserializer<'de> + Clone,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let written = Raw::deserialize(d)?;
        Ok(match T::deserialize(written.clone()) {
            Ok(t) => Field::Ok(t),
            Err(_) => Field::Bad(written),
        })
    }
}

impl<T, Raw> Field<T, Raw> {
    /// `None` when absent; else the typed value or what was written instead.
    pub(crate) fn written(self) -> Option<Result<T, Raw>> {
        match self {
            Field::Absent => None,
            Field::Ok(t) => Some(Ok(t)),
            Field::Bad(v) => Some(Err(v)),
        }
    }
}

/// A duration setting as written.
pub(crate) enum DurationField {
    Ok(Duration),
    /// Text that is not a duration.
    Invalid(DurationError),
    /// Not text.
    NotText,
}

/// Reads a duration setting (`30s`, `10m`) from its text.
pub(crate) fn duration_of(f: Field<String>) -> Option<DurationField> {
    Some(match f.written()? {
        Ok(t) => match parse_duration(&t) {
            Ok(d) => DurationField::Ok(d),
            Err(e) => DurationField::Invalid(e),
        },
        Err(_) => DurationField::NotText,
    })
}

/// A whole number from `MIN` to `MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "u64")]
pub(crate) struct Whole<const MIN: u64, const MAX: u64 = { u64::MAX }>(pub(crate) u64);

impl<const MIN: u64, const MAX: u64> TryFrom<u64> for Whole<MIN, MAX> {
    type Error = &'static str;
    fn try_from(n: u64) -> Result<Self, Self::Error> {
        if (MIN..=MAX).contains(&n) {
            Ok(Whole(n))
        } else {
            Err("out of range")
        }
    }
}

impl<const MIN: u64, const MAX: u64> Whole<MIN, MAX> {
    /// As a `u32`, a count past it meaning "no limit" rather than its low 32 bits.
    pub(crate) fn saturating_u32(self) -> u32 {
        u32::try_from(self.0).unwrap_or(u32::MAX)
    }
}

/// Text with something in it besides spaces (kept as written).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct NonEmpty(pub(crate) String);

impl TryFrom<String> for NonEmpty {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if s.trim().is_empty() {
            Err("empty")
        } else {
            Ok(NonEmpty(s))
        }
    }
}

/// The name of an environment variable: letters, digits and `_`, not starting with a digit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct EnvName(pub(crate) String);

impl TryFrom<String> for EnvName {
    type Error = &'static str;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        if valid_env_name(&s) {
            Ok(EnvName(s))
        } else {
            Err("not a variable name")
        }
    }
}

/// Whether `k` can name an environment variable: letters, digits and `_`, not starting
/// with a digit.
pub fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A YAML scalar as text (a string, number or boolean).
pub fn yaml_scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Names of environment variables, as a list.
pub(crate) fn env_names(list: Vec<EnvName>) -> Vec<String> {
    list.into_iter().map(|e| e.0).collect()
}

/// A command as loops.yaml writes one (`main.command`, a provider's or a channel's
/// `command`): a non-empty argv list of texts, or a line of shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommandLine(pub(crate) Vec<String>);

impl<'de> Deserialize<'de> for CommandLine {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) if !s.trim().is_empty() => {
                Ok(CommandLine(vec!["sh".into(), "-c".into(), s]))
            }
            Value::Sequence(seq) if !seq.is_empty() && seq.iter().all(|a| a.as_str().is_some()) => {
                Ok(CommandLine(
                    seq.iter()
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect(),
                ))
            }
            _ => Err(serde::de::Error::custom("not a command")),
        }
    }
}

/// A list, as YAML writes one: not nothing (serde reads `key:` with no value as an empty
/// list, where a setting that takes a list says it wants one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct List<T>(pub(crate) Vec<T>);

impl<'de, T: DeserializeOwned> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match untag(Value::deserialize(d)?) {
            Value::Sequence(seq) => seq
                .into_iter()
                .map(|v| T::deserialize(v).map_err(serde::de::Error::custom))
                .collect::<Result<Vec<T>, D::Error>>()
                .map(List),
            _ => Err(serde::de::Error::custom("not a list")),
        }
    }
}

/// A mapping, as YAML writes one: not nothing (see [`List`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Map(pub(crate) Mapping);

impl<'de> Deserialize<'de> for Map {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match untag(Value::deserialize(d)?) {
            Value::Mapping(m) => Ok(Map(m)),
            _ => Err(serde::de::Error::custom("not a mapping")),
        }
    }
}

/// The value under its tags (`!tag value`), as `Value::as_str` and the rest read it.
pub(crate) fn untag(mut v: Value) -> Value {
    while let Value::Tagged(t) = v {
        v = t.value;
    }
    v
}

/// A value that is text, a number or a boolean, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Scalar(pub(crate) String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        match yaml_scalar(&v) {
            Some(s) => Ok(Scalar(s)),
            None => Err(serde::de::Error::custom("not a scalar")),
        }
    }
}

/// The keys a serde struct reads (its field names and their aliases), from serde itself.
pub(crate) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    struct Ask(Option<&'static [&'static str]>);
    #[derive(Debug)]
    struct Stop;
    impl std::fmt::Display for Stop {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("stop")
        }
    }
    impl std::error::Error for Stop {}
    impl serde::de::Error for Stop {
        fn custom<M: std::fmt::Display>(_: M) -> Self {
            Stop
        }
    }
    impl<'de> Deserializer<'de> for &mut Ask {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Stop> {
            self.0 = Some(fields);
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }
    let mut ask = Ask(None);
    let _ = T::deserialize(&mut ask);
    ask.0.unwrap_or(&[])
}

/// One mapping of a config file, being read: where it is, its keys in the order written,
/// the keys its struct does not name, and the diagnostics found so far (each with the
/// place of its key in that order).
pub(crate) struct Section<'a> {
    pub(crate) file: &'a Path,
    pub(crate) loc: &'a YamlLocator<'a>,
    path: Vec<String>,
    keys: Vec<String>,
    unknown: Vec<String>,
    /// Keys read by a second struct from the same mapping ([`Section::read_also`]).
    also_known: Vec<&'static str>,
    found: Vec<(usize, Diagnostic)>,
}

impl<'a> Section<'a> {
    /// Reads the mapping at `path` as `T`. Keys that are not text name no setting and are
    /// left out, as serde would otherwise take a number for a field's position.
    pub(crate) fn read<T: DeserializeOwned + Default>(
        file: &'a Path,
        loc: &'a YamlLocator<'a>,
        path: &[&str],
        map: &Mapping,
    ) -> (T, Section<'a>) {
        let text_keyed = text_keyed(map);
        let names = field_names::<T>();
        let keys: Vec<String> = text_keyed
            .keys()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect();
        let unknown = keys
            .iter()
            .filter(|k| !names.contains(&k.as_str()))
            .cloned()
            .collect();
        let t = T::deserialize(Value::Mapping(text_keyed)).unwrap_or_default();
        let section = Section {
            file,
            loc,
            path: path.iter().map(|s| s.to_string()).collect(),
            keys,
            unknown,
            also_known: Vec::new(),
            found: Vec::new(),
        };
        (t, section)
    }

    /// Reads the same mapping as a second struct `T`, a block of settings kept in a file
    /// of its own (request options, under a provider and under `payload:`); its keys then
    /// count as known here, and typos are matched against them too.
    pub(crate) fn read_also<T: DeserializeOwned + Default>(&mut self, map: &Mapping) -> T {
        let names = field_names::<T>();
        self.unknown.retain(|k| !names.contains(&k.as_str()));
        self.also_known.extend(names);
        T::deserialize(Value::Mapping(text_keyed(map))).unwrap_or_default()
    }

    /// The path of `key` in this section.
    pub(crate) fn path_of<'k>(&'k self, key: &'k str) -> Vec<&'k str> {
        let mut p: Vec<&str> = self.path.iter().map(String::as_str).collect();
        p.push(key);
        p
    }

    /// Where the value of `key` is written.
    pub(crate) fn value_pos(&self, key: &str) -> Option<Pos> {
        self.loc.value(&self.path_of(key))
    }

    /// Where `key` itself is written.
    pub(crate) fn key_pos(&self, key: &str) -> Option<Pos> {
        self.loc.key(&self.path_of(key))
    }

    /// The keys the section's struct does not name, in the order written.
    pub(crate) fn unknown(&self) -> Vec<String> {
        self.unknown.clone()
    }

    /// Whether `a` is written after `b` (the later of two spellings of a setting counts).
    pub(crate) fn later(&self, a: &str, b: &str) -> bool {
        let at = |k: &str| self.keys.iter().position(|x| x == k);
        at(a) > at(b)
    }

    /// A diagnostic about `key`, placed among the others by where `key` is written.
    pub(crate) fn push(&mut self, key: &str, d: Diagnostic) {
        let at = self
            .keys
            .iter()
            .position(|k| k == key)
            .unwrap_or(self.keys.len());
        self.found.push((at, d));
    }

    /// An error at the value of `key`.
    pub(crate) fn error(&mut self, key: &str, message: impl Into<String>, help: impl Into<String>) {
        let d = Diagnostic::error(self.file, message)
            .at(self.value_pos(key))
            .help(help);
        self.push(key, d);
    }

    /// An error at the value of `key`, with no help line.
    pub(crate) fn error_bare(&mut self, key: &str, message: impl Into<String>) {
        let d = Diagnostic::error(self.file, message).at(self.value_pos(key));
        self.push(key, d);
    }

    /// The value of `key` when it is the setting's type; otherwise an error at it.
    pub(crate) fn take<T>(
        &mut self,
        key: &str,
        f: Field<T>,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Option<T> {
        match f {
            Field::Ok(t) => Some(t),
            Field::Bad(_) => {
                self.error(key, message, help);
                None
            }
            Field::Absent => None,
        }
    }

    /// The duration written at `key`, or an error naming the setting (`limits.x: …`).
    pub(crate) fn duration(&mut self, key: &str, field: Field<String>) -> Option<Duration> {
        let full = self.path_of(key).join(".");
        let help = crate::duration::DURATION_HELP;
        match duration_of(field)? {
            DurationField::Ok(d) => Some(d),
            DurationField::Invalid(e) => {
                self.error(key, format!("{full}: {e}"), help);
                None
            }
            DurationField::NotText => {
                self.error(key, format!("{full} must be a duration"), help);
                None
            }
        }
    }

    /// [`Section::take`] with no help line.
    pub(crate) fn take_bare<T>(
        &mut self,
        key: &str,
        f: Field<T>,
        message: impl Into<String>,
    ) -> Option<T> {
        match f {
            Field::Ok(t) => Some(t),
            Field::Bad(_) => {
                self.error_bare(key, message);
                None
            }
            Field::Absent => None,
        }
    }

    /// `unknown key `a.b.c`` for each key the struct does not name, with the known key
    /// closest to it (or the list of them, `known`, in the order people read them).
    pub(crate) fn unknown_keys(&mut self, known: &[&str]) {
        let all: Vec<&str> = known.iter().chain(&self.also_known).copied().collect();
        let known = all.as_slice();
        for key in self.unknown() {
            let full = self.path_of(&key).join(".");
            let d = Diagnostic::error(self.file, format!("unknown key `{full}`"))
                .at(self.key_pos(&key));
            let d = match near_miss(&key, known) {
                Some(k) => d.help(format!("did you mean `{k}`?")),
                None => d.help(format!("known keys here: {}", known.join(", "))),
            };
            self.push(&key, d);
        }
    }

    /// Diagnostics of a section nested under `key`, placed at `key`.
    pub(crate) fn extend(&mut self, key: &str, diags: Vec<Diagnostic>) {
        for d in diags {
            self.push(key, d);
        }
    }

    /// The diagnostics with the key each is about, in the order the keys are written.
    pub(crate) fn finish_keyed(mut self) -> Vec<(Option<String>, Diagnostic)> {
        self.found.sort_by_key(|(at, _)| *at);
        let keys = self.keys;
        self.found
            .into_iter()
            .map(|(at, d)| (keys.get(at).cloned(), d))
            .collect()
    }

    /// The diagnostics in the order their keys are written.
    pub(crate) fn finish(self) -> Vec<Diagnostic> {
        self.finish_keyed().into_iter().map(|(_, d)| d).collect()
    }
}

/// The entries of `map` whose keys are text: other keys name no setting, and serde would
/// take a number for a field's position.
fn text_keyed(map: &Mapping) -> Mapping {
    let mut out = Mapping::new();
    for (k, v) in map {
        if k.as_str().is_some() {
            out.insert(k.clone(), v.clone());
        }
    }
    out
}

/// A value's YAML type with the value, for "must be X, not …" messages.
pub(crate) fn describe_type(v: &Value) -> String {
    match v {
        Value::Number(n) => format!("the number `{n}`"),
        Value::Bool(b) => format!("the boolean `{b}`"),
        other => show(other),
    }
}

/// A value as a message shows it: text and numbers quoted, containers by their kind.
pub(crate) fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("`{s}`"),
        Value::Number(n) => format!("`{n}`"),
        Value::Bool(b) => format!("`{b}`"),
        Value::Null => "nothing".into(),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(_) => "a tagged value".into(),
    }
}

/// In tests: the keys a message lists are the keys the struct reads, in any order.
#[cfg(test)]
pub(crate) fn same_keys(read: &[&str], listed: &[&str]) {
    let mut a = read.to_vec();
    let mut b = listed.to_vec();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

/// Whether `name` is a name git accepts for a branch.
pub(crate) fn valid_branch(name: &str) -> bool {
    let full = if name.starts_with("refs/heads/") {
        name.to_string()
    } else {
        format!("refs/heads/{name}")
    };
    !name.is_empty() && git2::Reference::is_valid_name(&full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Demo {
        count: Field<Whole<1>>,
        name: Field<NonEmpty>,
        #[serde(alias = "cmd")]
        command: Field<CommandLine>,
        list: Field<List<String>>,
    }

    #[test]
    fn serde_names_the_fields_and_their_aliases() {
        assert_eq!(
            field_names::<Demo>(),
            &["count", "name", "cmd", "command", "list"]
        );
    }

    #[test]
    fn a_wrong_value_is_kept_and_the_rest_read() {
        let text = "count: 0\nname: x\nzzz: 1\n3: y\ncommand: [a, b]\nlist:\n";
        let loc = YamlLocator::new(text);
        let map: Mapping = yaml_serde::from_str(text).unwrap();
        let (d, sec) = Section::read::<Demo>(Path::new("f.yaml"), &loc, &[], &map);
        assert!(matches!(d.count, Field::Bad(Value::Number(_))));
        assert!(matches!(d.name, Field::Ok(NonEmpty(ref n)) if n == "x"));
        assert!(matches!(d.command, Field::Ok(CommandLine(ref a)) if a == &["a", "b"]));
        // `list:` with nothing after it is not a list.
        assert!(matches!(d.list, Field::Bad(Value::Null)));
        assert_eq!(sec.unknown(), ["zzz"]);
    }

    #[test]
    fn diagnostics_come_out_in_the_order_keys_are_written() {
        let text = "b: 1\na: 2\n";
        let loc = YamlLocator::new(text);
        let map: Mapping = yaml_serde::from_str(text).unwrap();
        let (_, mut sec) = Section::read::<Demo>(Path::new("f.yaml"), &loc, &[], &map);
        sec.error_bare("a", "about a");
        sec.error_bare("b", "about b");
        let got: Vec<String> = sec.finish().into_iter().map(|d| d.message).collect();
        assert_eq!(got, ["about b", "about a"]);
    }
}
