//! audit-consumer against hostile and malformed payloads, on a real nats-server: every one is
//! logged on exactly one parseable line, in both formats, and acked.

mod consumer_support;

use std::time::Duration;

use async_nats::jetstream;
use audit_tests::nats::NatsServer;
use base64::Engine;
use consumer_support::*;

/// (name, payload): the name travels as the subject's last token.
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let deep = format!("{}1{}", "{\"a\":".repeat(500), "}".repeat(500));
    vec![
        ("invalid_json", b"{\"id\": 1,".to_vec()),
        ("array", b"[1,2,3]".to_vec()),
        ("string", b"\"just a string\"".to_vec()),
        ("deep", deep.into_bytes()),
        ("invalid_utf8", b"{\"id\":\"\xff\xfe\"}".to_vec()),
        ("binary", (0u8..=255).collect()),
        ("huge", vec![b'x'; 1024 * 1024]),
        ("empty", Vec::new()),
        ("newlines", b"first line\nsecond line\r\nthird".to_vec()),
        ("quotes", b"say \"hi\" and \\ backslash".to_vec()),
        (
            "ansi",
            b"\x1b[31mred\x1b[0m \x1b]0;title\x07 \xc2\x9b2J".to_vec(),
        ),
        (
            "forged",
            b"ok\" subject=forged delivered=99 kind=structured".to_vec(),
        ),
        (
            "forged_json",
            b"x\"}\n{\"kind\":\"structured\",\"subject\":\"forged\"}".to_vec(),
        ),
        (
            "pretty_object",
            b"{\n  \"id\": \"p\",\n  \"note\": \"line\\nbreak \\u001b[2J\"\n}\n".to_vec(),
        ),
    ]
}

async fn publish_corpus(js: &jetstream::Context) -> anyhow::Result<()> {
    for (name, payload) in corpus() {
        js.publish(format!("audit.bad.{name}"), payload.into())
            .await?
            .await?;
    }
    Ok(())
}

async fn server_with_big_payloads() -> anyhow::Result<NatsServer> {
    NatsServer::start_with_config("max_payload: 4MB\n").await
}

#[tokio::test]
async fn json_format_keeps_every_payload_on_one_parseable_line() -> anyhow::Result<()> {
    let server = server_with_big_payloads().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "json", Duration::from_secs(30)).await?;
    publish_corpus(&js).await?;

    let mut consumer = ConsumerProcess::start(&server.url(), "json", &["--format", "json"])?;
    let lines = consumer
        .read_lines(corpus().len(), Duration::from_secs(60))
        .await?;
    wait_until_drained(&js, "json").await?;
    for ((name, payload), line) in corpus().into_iter().zip(&lines) {
        let line = parse_json_line(line);
        assert_eq!(
            line["subject"],
            format!("audit.bad.{name}"),
            "{name}: metadata intact"
        );
        assert_eq!(line["delivered"], 1, "{name}");
        match std::str::from_utf8(&payload) {
            Ok(_) if name == "pretty_object" => {
                assert_eq!(line["kind"], "structured");
                assert_eq!(line["event"]["note"], "line\nbreak \u{1b}[2J");
            }
            Ok(text) => {
                assert_eq!(line["kind"], "raw", "{name}");
                assert_eq!(line["raw"], text, "{name}: raw text round-trips");
            }
            Err(_) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(line["raw_base64"].as_str().unwrap())?;
                assert_eq!(decoded, payload, "{name}: binary round-trips");
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn text_format_keeps_every_payload_inside_its_value() -> anyhow::Result<()> {
    let server = server_with_big_payloads().await?;
    let js = jetstream::new(server.client().await?);
    create_stream_and_consumer(&js, "text", Duration::from_secs(30)).await?;
    publish_corpus(&js).await?;

    let mut consumer = ConsumerProcess::start(&server.url(), "text", &["--format", "text"])?;
    let lines = consumer
        .read_lines(corpus().len(), Duration::from_secs(60))
        .await?;
    wait_until_drained(&js, "text").await?;
    for ((name, _), line) in corpus().into_iter().zip(&lines) {
        let fields = parse_logfmt(line).unwrap_or_else(|| panic!("{name}: unparseable {line:?}"));
        let get = |key: &str| -> Vec<&String> {
            fields
                .iter()
                .filter(|(k, _)| k == key)
                .map(|(_, v)| v)
                .collect()
        };
        assert_eq!(
            get("subject"),
            [&format!("audit.bad.{name}")],
            "{name}: {line}"
        );
        assert_eq!(get("delivered"), [&"1".to_owned()], "{name}: {line}");
        assert_eq!(get("kind").len(), 1, "{name}: {line}");
        assert!(!line.contains('\u{1b}'), "{name}: raw ESC in {line:?}");
    }
    Ok(())
}

/// A strict logfmt reader: `key=value` pairs separated by single spaces, where a value is bare
/// (no space, quote or `=`) or a JSON string literal. Returns `None` on anything else.
fn parse_logfmt(line: &str) -> Option<Vec<(String, String)>> {
    let mut fields = Vec::new();
    let mut rest = line;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || key.contains([' ', '"']) {
            return None;
        }
        let (value, after) = if after.starts_with('"') {
            let mut deserializer = serde_json::Deserializer::from_str(after).into_iter::<String>();
            let value = deserializer.next()?.ok()?;
            (value, &after[deserializer.byte_offset()..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let value = &after[..end];
            if value.is_empty() || value.contains(['"', '=']) {
                return None;
            }
            (value.to_owned(), &after[end..])
        };
        fields.push((key.to_owned(), value));
        rest = match after.strip_prefix(' ') {
            Some(next) if !next.is_empty() => next,
            Some(_) => return None,
            None if after.is_empty() => after,
            None => return None,
        };
    }
    Some(fields)
}
