//! `--sink kafka://BROKERS[?options]`: what a Kafka sink is asked to do, validated before any
//! I/O.

use crate::error::{Error, Result};

/// How a change is written as a Kafka message value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KafkaEnvelope {
    /// The event's own JSON (`schemas/event.schema.json`).
    Native,
    /// Debezium's change-event envelope, schemaless (`schemas/debezium.schema.json`).
    Debezium,
}

/// A parsed `kafka://` sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KafkaSpec {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic per table: `{schema}` and `{table}` are replaced.
    pub topic: String,
    pub envelope: KafkaEnvelope,
    /// A null-valued message after each DELETE, for compacted topics.
    pub tombstones: bool,
    /// Where BEGIN and COMMIT go; `None`: nowhere.
    pub tx_topic: Option<String>,
    /// Where MESSAGE events (`pg_logical_emit_message`) go; `None`: nowhere.
    pub message_topic: Option<String>,
    /// The logical server name in Debezium's `source.name` (Debezium's `topic.prefix`).
    pub name: String,
}

/// The default topic template.
pub const DEFAULT_TOPIC: &str = "walwatch.{schema}.{table}";

impl KafkaSpec {
    /// Parses `kafka://host:port[,host:port...][?key=value&...]` (without the `kafka://`).
    pub fn parse(rest: &str) -> Result<KafkaSpec> {
        let bad = |msg: String| Error::Config(format!("--sink kafka://{rest}: {msg}"));
        let (brokers, query) = rest.split_once('?').unwrap_or((rest, ""));
        let brokers = brokers.trim_end_matches('/');
        if brokers.is_empty() || brokers.split(',').any(|b| b.trim().is_empty()) {
            return Err(bad(
                "name the brokers: kafka://127.0.0.1:9092 or kafka://b1:9092,b2:9092".into(),
            ));
        }
        let mut spec = KafkaSpec {
            brokers: brokers.to_string(),
            topic: DEFAULT_TOPIC.to_string(),
            envelope: KafkaEnvelope::Native,
            tombstones: false,
            tx_topic: None,
            message_topic: None,
            name: "walwatch".to_string(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad(format!("option `{pair}` needs a value (key=value)")))?;
            let v = percent_decode(v).map_err(|e| bad(format!("option `{k}`: {e}")))?;
            match k {
                "topic" => {
                    check_template(&v).map_err(|e| bad(format!("topic `{v}`: {e}")))?;
                    spec.topic = v;
                }
                "envelope" => {
                    spec.envelope = match v.as_str() {
                        "native" => KafkaEnvelope::Native,
                        "debezium" => KafkaEnvelope::Debezium,
                        _ => return Err(bad(format!("envelope `{v}`: native or debezium"))),
                    }
                }
                "tombstones" => {
                    spec.tombstones = match v.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad(format!("tombstones `{v}`: true or false"))),
                    }
                }
                "tx_topic" => spec.tx_topic = Some(non_empty(k, v).map_err(bad)?),
                "message_topic" => spec.message_topic = Some(non_empty(k, v).map_err(bad)?),
                "name" => spec.name = non_empty(k, v).map_err(bad)?,
                _ => {
                    return Err(bad(format!(
                        "unknown option `{k}`; the options are topic, envelope, tombstones, \
                         tx_topic, message_topic, name (librdkafka properties go in -X key=value)"
                    )));
                }
            }
        }
        Ok(spec)
    }

    /// The topic of a table's changes.
    pub fn topic_for(&self, schema: &str, table: &str) -> String {
        self.topic
            .replace("{schema}", schema)
            .replace("{table}", table)
    }
}

fn non_empty(key: &str, v: String) -> std::result::Result<String, String> {
    if v.is_empty() {
        Err(format!("option `{key}` is empty"))
    } else {
        Ok(v)
    }
}

/// Only `{schema}` and `{table}` may appear in braces.
fn check_template(t: &str) -> std::result::Result<(), String> {
    let mut rest = t;
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| "an unclosed `{`".to_string())?;
        let name = &rest[open + 1..open + close];
        if name != "schema" && name != "table" {
            return Err(format!(
                "unknown placeholder `{{{name}}}`: use {{schema}} and {{table}}"
            ));
        }
        rest = &rest[open + close + 1..];
    }
    if t.is_empty() {
        return Err("empty".into());
    }
    Ok(())
}

/// `%7B` -> `{`: shells and URLs may escape the braces of a template.
fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape at `{}`", &s[i..]))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "not UTF-8 once decoded".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_options() {
        let s = KafkaSpec::parse("127.0.0.1:9092").unwrap();
        assert_eq!(s.brokers, "127.0.0.1:9092");
        assert_eq!(s.topic_for("public", "orders"), "walwatch.public.orders");
        assert_eq!(s.envelope, KafkaEnvelope::Native);
        let s = KafkaSpec::parse(
            "b1:9092,b2:9092?topic={schema}.{table}&envelope=debezium&tombstones=true&tx_topic=tx&message_topic=msgs&name=shop",
        )
        .unwrap();
        assert_eq!(s.brokers, "b1:9092,b2:9092");
        assert_eq!(s.topic_for("sales", "orders"), "sales.orders");
        assert_eq!(
            (
                s.envelope,
                s.tombstones,
                s.tx_topic.as_deref(),
                s.message_topic.as_deref()
            ),
            (KafkaEnvelope::Debezium, true, Some("tx"), Some("msgs"))
        );
        assert_eq!(s.name, "shop");
        let s = KafkaSpec::parse("b:1?topic=cdc.%7Btable%7D").unwrap();
        assert_eq!(s.topic_for("p", "t"), "cdc.t");
    }

    #[test]
    fn mistakes_are_named() {
        for (spec, says) in [
            ("", "name the brokers"),
            ("b:1?topic={db}.x", "unknown placeholder `{db}`"),
            ("b:1?envelope=avro", "native or debezium"),
            ("b:1?tombstones=yes", "true or false"),
            ("b:1?acks=all", "-X key=value"),
            ("b:1?topic", "needs a value"),
        ] {
            let e = KafkaSpec::parse(spec).unwrap_err().to_string();
            assert!(e.contains(says), "{spec}: {e}");
        }
    }
}
