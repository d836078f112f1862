//! Server-sent events, as both wire formats stream a reply (`stream: true`): the bytes
//! arrive in pieces of any size, and an event is complete at its blank line. Only what
//! the formats use is read: `event:` and `data:` lines (several `data:` lines joined by a
//! newline); comments (`:`), `id:` and `retry:` are skipped.

/// One complete event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` name (Anthropic names every event; OpenAI names none).
    pub name: Option<String>,
    pub data: String,
}

/// Cuts a byte stream into events.
#[derive(Debug, Default)]
pub struct Splitter {
    /// Bytes of the event not yet ended (a piece may end mid-line, even mid-character).
    pending: Vec<u8>,
}

impl Splitter {
    /// The events `piece` completes.
    pub fn push(&mut self, piece: &[u8]) -> Vec<Event> {
        self.pending.extend_from_slice(piece);
        let mut out = Vec::new();
        while let Some((end, skip)) = event_end(&self.pending) {
            let raw: Vec<u8> = self.pending.drain(..end + skip).take(end).collect();
            if let Some(e) = parse_event(&String::from_utf8_lossy(&raw)) {
                out.push(e);
            }
        }
        out
    }

    /// The last event, when the stream ended without its blank line.
    pub fn finish(&mut self) -> Option<Event> {
        let raw = std::mem::take(&mut self.pending);
        parse_event(&String::from_utf8_lossy(&raw))
    }
}

/// Where the first event in `buf` ends, and how long its blank line is.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some((i, 2));
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, 3));
            }
        }
        i += 1;
    }
    None
}

fn parse_event(raw: &str) -> Option<Event> {
    let mut name = None;
    let mut data: Vec<&str> = Vec::new();
    for line in raw.lines() {
        let line = line.trim_end_matches('\r');
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => name = Some(value.to_string()),
            "data" => data.push(value),
            _ => {}
        }
    }
    (!data.is_empty()).then(|| Event {
        name,
        data: data.join("\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_pieces_and_line_endings() {
        let mut s = Splitter::default();
        assert!(s.push(b"event: ping\nda").is_empty());
        let got = s.push(b"ta: {}\n\n: a comment\n\ndata: one\r\ndata: two\r\n\r\ndata: [DONE]");
        assert_eq!(
            got,
            vec![
                Event {
                    name: Some("ping".into()),
                    data: "{}".into()
                },
                Event {
                    name: None,
                    data: "one\ntwo".into()
                },
            ]
        );
        assert_eq!(
            s.finish(),
            Some(Event {
                name: None,
                data: "[DONE]".into()
            })
        );
    }

    #[test]
    fn a_character_cut_between_pieces_is_whole() {
        let text = "data: é\n\n".as_bytes();
        let mut s = Splitter::default();
        assert!(s.push(&text[..7]).is_empty());
        assert_eq!(s.push(&text[7..])[0].data, "é");
    }
}
